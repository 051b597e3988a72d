//! One WebSocket connection after its upgrade: the socket, its bounded outbound queue, its
//! frame decoder, and the poll function that reads and writes it.
//!
//! A `Conn` lives in its shard's slab and knows nothing of users, rooms or other
//! connections. `hub` pushes shared `Bytes` into `Conn::push`; the shard's per-connection
//! task calls `Conn::poll`, which reads through the shard's scratch buffer (no connection owns
//! a read buffer) and joins queued frames into one send through the shard's write buffer.
//! `hub` owns the slab, `shard` the task and `ctx` the clock; `conn` never spawns or sleeps.
//!
//! Per-connection memory while idle (the 1 KiB budget of DESIGN.md), summed:
//!   size_of::<Conn<Session>>() in the slab (asserted in `hub`; 8 B of it
//!   the socket.io state pointer, None for native connections)             256 B
//! + the task: glommio header + `shard::conn_task` future (asserted)     ~ 100 B
//! + glommio's armed read `Source` (Rc<RefCell<InnerSource>>)            ~ 200 B
//! + waker clone held in `Conn::waker` (a refcount, no allocation)           0 B
//! + outbound queue: `VecDeque::new()` does not allocate and is reset
//!   to it when drained; the decoder's `Partial` exists only mid-message     0 B
//! + permessage-deflate: `Wire` (3 B) sits in padding; no deflate state per
//!   connection (one compressor and one inflater per shard, `ShardDeflate`)  0 B
//! + allocator rounding                                                  ~ 100 B
//!   The kernel's socket buffers come on top and are outside RSS (tuning/ keeps them small).

use std::collections::VecDeque;
use std::io;
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::metrics::Metrics;
use crate::ws::deflate::{self, Agreement, Compressor, Inflater, Level};
use crate::ws::frame::{self, close_code, Decoder, Event, OpCode};

/// Reads per poll before the task yields, so one flooding client cannot starve a shard.
const READS_PER_POLL: usize = 4;

/// Names a slot in a shard's slab. The generation makes a key stale once its connection is
/// gone, so a key kept by a timer or a message can never reach the next occupant of the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub index: u32,
    pub generation: u32,
}

/// A client data message handed up by `Conn::poll`, owned so it outlives the read buffer.
#[derive(Debug)]
pub enum Inbound {
    Text(Box<str>),
    /// A binary message's bytes (socket.io attachments need them; the native codec only
    /// refuses binary, so it reads the length).
    Binary(Box<[u8]>),
}

/// Where a connection is in its life. Only `Open` connections receive published messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Normal operation.
    Open,
    /// We queued a close frame (shutdown, idle, slow consumer) and wait for the client's
    /// close reply; data from the client is read and dropped.
    CloseSent,
    /// A close frame is the last thing queued (our echo of the client's close, or our
    /// failure close); once it is written, we shut down our side and drain.
    Finishing,
    /// Our side is shut down; read and drop until the client closes, or the deadline.
    Draining,
    /// Done: the task removes the connection at its next poll.
    Dead,
}

/// What the upgrade agreed about a connection's wire. 3 bytes: it lives in `Conn`'s padding,
/// so a compressed connection costs no more memory than a plain one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wire {
    /// permessage-deflate was negotiated (RFC 7692): RSV1 is allowed on the client's first
    /// data frames, and compressed frames may be sent.
    pub deflate: bool,
    /// The client asked `server_max_window_bits=N` (RFC 7692 §7.1.2.1): N, else 0. Our
    /// compressor always uses a 32 KiB window, so only messages of at most 2^N bytes are sent
    /// compressed to it (`deflate::Agreement::compressed_fits`).
    pub server_window_bits: u8,
    /// A conformance echo connection (`--echo-path`): its data messages are sent back and
    /// never reach the codec.
    pub echo: bool,
}

impl Wire {
    pub fn new(agreement: Option<&Agreement>, echo: bool) -> Wire {
        // The policy never grants client context takeover, so one shard-wide inflater with a
        // fresh state per message serves every connection.
        debug_assert!(agreement.is_none_or(|a| !a.client_context_takeover));
        Wire {
            deflate: agreement.is_some(),
            server_window_bits: agreement.and_then(|a| a.server_window_bits).unwrap_or(0),
            echo,
        }
    }

    /// Whether a message of `payload_len` bytes may go to this connection compressed.
    pub fn compressed_fits(self, payload_len: usize) -> bool {
        self.deflate
            && (self.server_window_bits == 0 || payload_len <= 1usize << self.server_window_bits)
    }
}

/// The shard's permessage-deflate state, shared by all its connections: one compressor (for
/// deliveries and echoes) and one inflater (for client messages). Clients never keep a
/// context (we answer `client_no_context_takeover`) and neither do we, so nothing of it
/// belongs to a connection.
pub struct ShardDeflate {
    /// ~312 KiB of miniz_oxide state, allocated on the first compressed message, so a shard
    /// that never meets a deflate client never pays for it.
    compressor: Option<Box<Compressor>>,
    level: Level,
    /// Payloads below this go plain (`--compression-min-bytes`).
    pub min_bytes: usize,
    /// Idle: 16 bytes and no heap; its 43 KiB state lives only while inflating a message.
    inflater: Inflater,
    /// The inflated message; capacity above `INFLATED_KEEP_BYTES_MAX` is given back after use.
    inflated: Vec<u8>,
}

/// The shard's inflate buffer keeps at most this much capacity between messages, so one
/// large client message does not pin its size.
const INFLATED_KEEP_BYTES_MAX: usize = 64 * 1024;

impl ShardDeflate {
    pub fn new(level: Level, min_bytes: usize) -> ShardDeflate {
        ShardDeflate {
            compressor: None,
            level,
            min_bytes,
            inflater: Inflater::default(),
            inflated: Vec::new(),
        }
    }

    /// The compressed frame of one message, or None when it should go plain: below the
    /// threshold, not smaller compressed, or a compressor failure (counted; our bug).
    pub fn compress(&mut self, opcode: OpCode, payload: &[u8], metrics: &Metrics) -> Option<Bytes> {
        if !deflate::worth_compressing(payload.len(), self.min_bytes) {
            return None;
        }
        let level = self.level;
        let compressor = self
            .compressor
            .get_or_insert_with(|| Box::new(Compressor::new(level)));
        match compressor.encode_frame(opcode, payload) {
            Ok(Some(frame)) => {
                Metrics::inc(&metrics.frames_compressed_total);
                Some(frame)
            }
            Ok(None) => None,
            Err(_) => {
                Metrics::inc(&metrics.compress_errors_total);
                None
            }
        }
    }

    /// The compressed frame of one echoed message (`--echo-path`), whatever its size: every
    /// echo on a deflate connection goes compressed, so a conformance run exercises the
    /// compressor on every message (and the kosoku runner, which hands uncompressed messages
    /// on a deflate connection to Autobahn's cases as `str`, sees only compressed ones; see
    /// docs/CONFORMANCE.md). A message larger than the client's `server_max_window_bits`
    /// window goes as stored DEFLATE blocks, which hold no back-reference at all.
    pub fn compress_echo(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        fits_window: bool,
        metrics: &Metrics,
    ) -> Bytes {
        Metrics::inc(&metrics.frames_compressed_total);
        if !fits_window {
            return deflate::encode_compressed(opcode, &deflate::stored_blocks(payload));
        }
        let level = self.level;
        let compressor = self
            .compressor
            .get_or_insert_with(|| Box::new(Compressor::new(level)));
        match compressor.compress(payload) {
            Ok(compressed) => deflate::encode_compressed(opcode, &compressed),
            Err(_) => {
                Metrics::inc(&metrics.compress_errors_total);
                deflate::encode_compressed(opcode, &deflate::stored_blocks(payload))
            }
        }
    }

    /// Inflates one compressed client message (RFC 7692 §7.2.2) into the shard's buffer, at
    /// most `inflated_bytes_max` bytes (1009 beyond), UTF-8 checked for text (1007).
    fn inflate(
        &mut self,
        text: bool,
        payload: &[u8],
        inflated_bytes_max: usize,
    ) -> Result<&[u8], deflate::Error> {
        if self.inflated.capacity() > INFLATED_KEEP_BYTES_MAX {
            self.inflated = Vec::new();
        }
        self.inflater
            .message(text, payload, inflated_bytes_max, &mut self.inflated)?;
        Ok(&self.inflated)
    }
}

/// Limits a connection is checked against, copied from `Config` once per shard.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub outbound_frames_max: usize,
    pub outbound_bytes_max: usize,
    pub decode: frame::Limits,
    /// Seconds a closing connection gets to finish its close handshake.
    pub close_timeout_s: u32,
}

/// What `Conn::poll` needs from its shard, borrowed for one poll.
pub struct PollEnv<'a> {
    pub read_buf: &'a mut [u8],
    pub write_buf: &'a mut [u8],
    pub limits: &'a ConnLimits,
    pub metrics: &'a Metrics,
    pub now_s: u32,
    /// Client data messages read in this poll, for the shard to dispatch afterwards.
    pub inbound: &'a mut Vec<Inbound>,
    pub deflate: &'a mut ShardDeflate,
}

/// Frames waiting to be written, oldest first. The frames are shared handles: the same
/// broadcast `Bytes` sits in every recipient's queue.
#[derive(Debug, Default)]
pub struct Outbox {
    frames: VecDeque<Bytes>,
    /// Sum of the unsent bytes in `frames`.
    pub bytes: u32,
    /// Bytes of `frames[0]` already written (a partial send).
    head_sent: u32,
}

impl Outbox {
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn push(&mut self, frame: Bytes) {
        debug_assert!(
            !frame.is_empty(),
            "an encoded frame has at least a 2-byte header"
        );
        self.bytes += frame.len() as u32;
        self.frames.push_back(frame);
    }

    /// Drops every frame not yet started, keeping a partly written head frame so the byte
    /// stream stays a valid sequence of frames.
    pub fn drop_unsent(&mut self) {
        let keep = if self.head_sent > 0 { 1 } else { 0 };
        while self.frames.len() > keep {
            self.frames.pop_back();
        }
        self.bytes = self
            .frames
            .front()
            .map_or(0, |f| f.len() as u32 - self.head_sent);
    }

    /// Accounts for `written` bytes sent from the front; returns whole frames completed.
    pub fn advance(&mut self, mut written: usize) -> u64 {
        debug_assert!(written <= self.bytes as usize);
        self.bytes -= written as u32;
        let mut completed = 0;
        while written > 0 {
            let Some(head) = self.frames.front() else {
                break;
            };
            let rest = head.len() - self.head_sent as usize;
            if written >= rest {
                written -= rest;
                self.frames.pop_front();
                self.head_sent = 0;
                completed += 1;
            } else {
                self.head_sent += written as u32;
                written = 0;
            }
        }
        if self.frames.is_empty() {
            // Give the ring back: an idle connection holds no queue memory.
            self.frames = VecDeque::new();
            debug_assert_eq!(self.bytes, 0);
        }
        completed
    }

    /// The bytes of the next send: the head frame alone when it is the only one (no copy),
    /// or as many queued frames as fit joined into `scratch`.
    pub fn next_send<'a>(&'a self, scratch: &'a mut [u8]) -> &'a [u8] {
        let head = &self.frames[0][self.head_sent as usize..];
        if self.frames.len() == 1 || head.len() >= scratch.len() {
            return head;
        }
        let mut len = 0;
        for (i, frame) in self.frames.iter().enumerate() {
            let part = if i == 0 { head } else { &frame[..] };
            let room = scratch.len() - len;
            if room == 0 {
                break;
            }
            let take = part.len().min(room);
            scratch[len..len + take].copy_from_slice(&part[..take]);
            len += take;
        }
        &scratch[..len]
    }
}

/// Queues the echo of one data message (`--echo-path`), compressed when the connection
/// negotiated deflate (`ShardDeflate::compress_echo`). The queue's limits are checked by the
/// caller after the read, as for Pongs.
fn echo(
    outbox: &mut Outbox,
    wire: Wire,
    deflate: &mut ShardDeflate,
    metrics: &Metrics,
    text: bool,
    data: &[u8],
) {
    let opcode = if text { OpCode::Text } else { OpCode::Binary };
    if wire.deflate {
        let fits_window = wire.compressed_fits(data.len());
        outbox.push(deflate.compress_echo(opcode, data, fits_window, metrics));
    } else {
        outbox.push(frame::encode(opcode, data));
    }
}

/// One upgraded WebSocket connection. `S` is whatever its owner keeps beside the socket
/// (the hub keeps the client's session there, for locality); `conn` never looks at it.
pub struct Conn<S> {
    stream: TcpStream,
    generation: u32,
    state: ConnState,
    /// Shard clock second of the last byte received; drives the idle timeout.
    last_rx_s: u32,
    /// Shard clock second after which a closing connection is cut off.
    deadline_s: u32,
    /// permessage-deflate and echo, as agreed at the upgrade.
    wire: Wire,
    decoder: Decoder,
    outbox: Outbox,
    /// The task's waker, so `push` can wake a writer that is parked on a read.
    waker: Option<Waker>,
    /// Who the client is and what it speaks: opaque here, read by the hub and services.
    pub session: S,
}

// The slab holds one per connection: keep it small (see the budget at the top; the hub
// asserts the size with its session inside).
const _: () = assert!(std::mem::size_of::<Conn<()>>() <= 208);

impl<S> Conn<S> {
    pub fn new(stream: TcpStream, generation: u32, now_s: u32, wire: Wire, session: S) -> Conn<S> {
        Conn {
            stream,
            generation,
            state: ConnState::Open,
            last_rx_s: now_s,
            deadline_s: 0,
            wire,
            decoder: Decoder::new(),
            outbox: Outbox::default(),
            waker: None,
            session,
        }
    }

    /// The session of a connection that is gone (its socket closes as it drops).
    pub fn into_session(self) -> S {
        self.session
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn wire(&self) -> Wire {
        self.wire
    }

    pub fn state(&self) -> ConnState {
        self.state
    }

    pub fn is_open(&self) -> bool {
        self.state == ConnState::Open
    }

    pub fn last_rx_s(&self) -> u32 {
        self.last_rx_s
    }

    pub fn deadline_s(&self) -> u32 {
        self.deadline_s
    }

    /// The queued frames, oldest first (for tests).
    #[cfg(test)]
    pub fn queued(&self) -> Vec<Bytes> {
        self.outbox.frames.iter().cloned().collect()
    }

    pub fn queued_frames(&self) -> usize {
        self.outbox.frames.len()
    }

    fn wake(&self) {
        if let Some(waker) = &self.waker {
            waker.wake_by_ref();
        }
    }

    /// Queues a shared frame for an open connection. When the queue is past its limits the
    /// client is a slow consumer: its unsent frames are dropped and it is closed with 1008.
    /// Returns false when the frame was not queued (not open, or just closed as slow).
    pub fn push(
        &mut self,
        frame: Bytes,
        limits: &ConnLimits,
        metrics: &Metrics,
        now_s: u32,
    ) -> bool {
        if self.state != ConnState::Open {
            return false;
        }
        let over_frames = self.outbox.frames.len() >= limits.outbound_frames_max;
        let over_bytes = self.outbox.bytes as usize + frame.len() > limits.outbound_bytes_max;
        if over_frames || over_bytes {
            self.close_slow(limits, metrics, now_s);
            return false;
        }
        let was_empty = self.outbox.is_empty();
        self.outbox.push(frame);
        if was_empty {
            self.wake();
        }
        true
    }

    /// A slow consumer: its unsent frames are dropped and it is closed with 1008.
    fn close_slow(&mut self, limits: &ConnLimits, metrics: &Metrics, now_s: u32) {
        Metrics::inc(&metrics.slow_consumer_closes_total);
        self.outbox.drop_unsent();
        self.close(
            close_code::POLICY,
            "slow consumer: outbound queue full",
            limits,
            now_s,
        );
    }

    /// Starts a server-initiated close: queue the close frame, then wait for the client's.
    pub fn close(&mut self, code: u16, reason: &str, limits: &ConnLimits, now_s: u32) {
        if self.state != ConnState::Open {
            return;
        }
        self.outbox.push(frame::encode_close(code, reason));
        self.state = ConnState::CloseSent;
        self.deadline_s = now_s + limits.close_timeout_s;
        self.wake();
    }

    /// Ends the connection at its next poll, whatever it was doing (deadline passed), with
    /// an abortive close (see [`Conn::abort`]).
    pub fn kill(&mut self) {
        self.abort();
        self.state = ConnState::Dead;
        self.wake();
    }

    /// Sets SO_LINGER {on, 0}, so dropping the socket sends RST and frees its kernel buffers
    /// at once. Without it, a client that stopped reading with a tiny window keeps our
    /// unsent bytes (up to the send buffer) trickling out of kernel memory for ~100 s of
    /// zero-window probes after we close. Used only for a connection cut off at its close
    /// deadline: its close handshake already failed, so nothing of value is lost.
    pub fn abort(&self) {
        // SAFETY: the fd is owned by `self.stream`, which outlives this borrow; SockRef only
        // calls setsockopt on it and never closes it.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.stream.as_raw_fd()) };
        // A failure (the fd already errored) only loses the early release; the drop still
        // closes the socket.
        let _ = socket2::SockRef::from(&fd).set_linger(Some(std::time::Duration::ZERO));
    }

    /// Fails the connection for a protocol violation: drop what is queued, send the close
    /// code, and stop reading (RFC 6455 §7.1.7).
    fn fail(
        &mut self,
        code: u16,
        reason: &str,
        limits: &ConnLimits,
        metrics: &Metrics,
        now_s: u32,
    ) {
        match self.state {
            ConnState::Open => {
                Metrics::inc(&metrics.protocol_error_closes_total);
                self.outbox.drop_unsent();
                self.outbox.push(frame::encode_close(code, reason));
            }
            // Our close is already queued; the client's violation only ends the wait.
            ConnState::CloseSent => {}
            _ => return,
        }
        self.state = ConnState::Finishing;
        self.deadline_s = now_s + limits.close_timeout_s;
    }

    /// Handles bytes the client sent: decode, answer control frames, dispatch messages.
    /// Also used for bytes that arrived together with the upgrade request.
    pub fn on_input(
        &mut self,
        input: &mut [u8],
        limits: &ConnLimits,
        metrics: &Metrics,
        now_s: u32,
        inbound: &mut Vec<Inbound>,
        deflate: &mut ShardDeflate,
    ) {
        self.last_rx_s = now_s;
        match self.state {
            ConnState::Open | ConnState::CloseSent => {}
            // Our side is done; whatever the client still sends is dropped unread.
            _ => return,
        }
        let open = self.state == ConnState::Open;
        let wire = self.wire;
        let outbox = &mut self.outbox;
        let mut peer_close: Option<Option<u16>> = None;
        let mut inflate_error: Option<deflate::Error> = None;
        let inflated_bytes_max = limits.decode.message_bytes_max;
        let mut on_event = |event: Event<'_>| -> ControlFlow<()> {
            match event {
                // RFC 7692 §7.2.2: inflate, then it is the message it would have been plain.
                Event::Compressed { text, payload } if open => {
                    let data = match deflate.inflate(text, payload, inflated_bytes_max) {
                        Ok(data) => data,
                        Err(e) => {
                            inflate_error = Some(e);
                            return ControlFlow::Break(());
                        }
                    };
                    if wire.echo {
                        // The compressor and the inflated buffer are both the shard's: copy
                        // the message out before compressing the echo.
                        let data = data.to_vec();
                        echo(outbox, wire, deflate, metrics, text, &data);
                    } else if text {
                        // `inflate` checked UTF-8 for text; a failure here cannot happen
                        // but is answered as the client's error, never a panic.
                        match std::str::from_utf8(data) {
                            Ok(text) => inbound.push(Inbound::Text(text.into())),
                            Err(_) => {
                                inflate_error = Some(deflate::Error::InvalidUtf8);
                                return ControlFlow::Break(());
                            }
                        }
                    } else {
                        inbound.push(Inbound::Binary(data.into()));
                    }
                }
                Event::Text(text) if open && wire.echo => {
                    echo(outbox, wire, deflate, metrics, true, text.as_bytes())
                }
                Event::Binary(data) if open && wire.echo => {
                    echo(outbox, wire, deflate, metrics, false, data)
                }
                Event::Text(text) if open => inbound.push(Inbound::Text(text.into())),
                Event::Binary(data) if open => inbound.push(Inbound::Binary(data.into())),
                // RFC 6455 §5.5.2: answer a Ping with a Pong carrying the same payload.
                Event::Ping(payload) if open => outbox.push(frame::encode(OpCode::Pong, payload)),
                // RFC 6455 §5.5.3: a Pong may be unsolicited; receiving anything is proof of life.
                Event::Close(close) => {
                    peer_close = Some(close.map(|(code, _)| code));
                    return ControlFlow::Break(());
                }
                _ => {}
            }
            ControlFlow::Continue(())
        };
        let result = self
            .decoder
            .feed_ext(input, &limits.decode, wire.deflate, &mut on_event);
        if let Some(e) = inflate_error {
            // The decoder stopped at the Break; it must not be fed again.
            self.decoder = Decoder::new();
            self.fail(e.close_code(), &e.to_string(), limits, metrics, now_s);
            return;
        }
        if let Err(e) = result {
            self.fail(e.close_code(), &e.to_string(), limits, metrics, now_s);
            return;
        }
        if let Some(code) = peer_close {
            if self.state == ConnState::Open {
                // RFC 6455 §5.5.1: echo the status code the client sent (none if it sent none).
                let reply = match code {
                    Some(code) => frame::encode_close(code, ""),
                    None => frame::encode(OpCode::Close, &[]),
                };
                self.outbox.push(reply);
            }
            self.state = ConnState::Finishing;
            self.deadline_s = now_s + limits.close_timeout_s;
        }
        let over_frames = wire.echo && self.outbox.len() > limits.outbound_frames_max;
        if self.state == ConnState::Open
            && (over_frames || self.outbox.bytes as usize > limits.outbound_bytes_max)
        {
            // Pongs (or echoes) the client never reads: it floods without reading.
            self.close_slow(limits, metrics, now_s);
        }
    }

    /// Drives the connection: read what arrived, write what is queued. `Ready` means the
    /// connection is over and the caller removes it.
    pub fn poll(&mut self, cx: &mut Context<'_>, env: &mut PollEnv<'_>) -> Poll<()> {
        if self.state == ConnState::Dead {
            return Poll::Ready(());
        }
        if matches!(
            self.state,
            ConnState::Open | ConnState::CloseSent | ConnState::Draining
        ) {
            let mut reads = 0;
            loop {
                if reads == READS_PER_POLL {
                    // Yield: come back after other tasks had their turn.
                    cx.waker().wake_by_ref();
                    break;
                }
                reads += 1;
                match Pin::new(&mut self.stream).poll_read(cx, env.read_buf) {
                    // The client closed TCP (or vanished): nothing more can be delivered.
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Ready(Ok(n)) => {
                        let input = &mut env.read_buf[..n];
                        self.on_input(
                            input,
                            env.limits,
                            env.metrics,
                            env.now_s,
                            env.inbound,
                            env.deflate,
                        );
                        if !matches!(
                            self.state,
                            ConnState::Open | ConnState::CloseSent | ConnState::Draining
                        ) {
                            break;
                        }
                    }
                    Poll::Pending => break,
                }
            }
        }
        match self.poll_flush(cx, env) {
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(())) if self.state == ConnState::Finishing => {
                // Everything, our close frame last, is written: half-close and drain, so the
                // client reads our close before it sees the end of the stream.
                let _ = Pin::new(&mut self.stream).poll_close(cx);
                self.state = ConnState::Draining;
                // Poll again at once so the drain read arms its readiness wait.
                cx.waker().wake_by_ref();
            }
            _ => {}
        }
        if self.state == ConnState::Dead {
            return Poll::Ready(());
        }
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Writes queued frames until the queue is empty or the socket is full.
    fn poll_flush(&mut self, cx: &mut Context<'_>, env: &mut PollEnv<'_>) -> Poll<io::Result<()>> {
        while !self.outbox.is_empty() {
            let buf = self.outbox.next_send(env.write_buf);
            match Pin::new(&mut self.stream).poll_write(cx, buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(written)) => {
                    Metrics::inc(&env.metrics.sends_total);
                    Metrics::add(&env.metrics.bytes_sent_total, written as u64);
                    let frames = self.outbox.advance(written);
                    Metrics::add(&env.metrics.frames_sent_total, frames);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(len: usize, byte: u8) -> Bytes {
        Bytes::from(vec![byte; len])
    }

    #[test]
    fn outbox_advances_across_frames_and_partial_sends() {
        let mut outbox = Outbox::default();
        outbox.push(frame_of(10, 1));
        outbox.push(frame_of(5, 2));
        outbox.push(frame_of(7, 3));
        assert_eq!(outbox.bytes, 22);
        assert_eq!(outbox.advance(4), 0);
        assert_eq!(outbox.head_sent, 4);
        assert_eq!(outbox.advance(6 + 5 + 1), 2);
        assert_eq!(outbox.head_sent, 1);
        assert_eq!(outbox.bytes, 6);
        assert_eq!(outbox.advance(6), 1);
        assert!(outbox.is_empty());
        assert_eq!(
            outbox.frames.capacity(),
            0,
            "a drained queue holds no memory"
        );
    }

    #[test]
    fn next_send_joins_frames_into_scratch() {
        let mut outbox = Outbox::default();
        outbox.push(frame_of(3, 1));
        outbox.push(frame_of(2, 2));
        outbox.advance(1);
        let mut scratch = [0u8; 16];
        assert_eq!(outbox.next_send(&mut scratch), &[1, 1, 2, 2]);
        let mut small = [0u8; 3];
        assert_eq!(outbox.next_send(&mut small), &[1, 1, 2]);
    }

    #[test]
    fn next_send_of_a_single_frame_does_not_copy() {
        let mut outbox = Outbox::default();
        let frame = frame_of(4, 9);
        outbox.push(frame.clone());
        let mut scratch = [0u8; 16];
        let send = outbox.next_send(&mut scratch);
        assert_eq!(send.as_ptr(), frame.as_ptr());
    }

    #[test]
    fn drop_unsent_keeps_a_started_frame() {
        let mut outbox = Outbox::default();
        outbox.push(frame_of(10, 1));
        outbox.push(frame_of(5, 2));
        outbox.advance(3);
        outbox.drop_unsent();
        assert_eq!(outbox.frames.len(), 1);
        assert_eq!(outbox.bytes, 7);
        let mut fresh = Outbox::default();
        fresh.push(frame_of(10, 1));
        fresh.drop_unsent();
        assert!(fresh.is_empty());
        assert_eq!(fresh.bytes, 0);
    }
}
