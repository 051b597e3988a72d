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
    pub fn new(stream: TcpStream, generation: u32, now_s: u32, session: S) -> Conn<S> {
        Conn {
            stream,
            generation,
            state: ConnState::Open,
            last_rx_s: now_s,
            deadline_s: 0,
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
    ) {
        self.last_rx_s = now_s;
        match self.state {
            ConnState::Open | ConnState::CloseSent => {}
            // Our side is done; whatever the client still sends is dropped unread.
            _ => return,
        }
        let open = self.state == ConnState::Open;
        let outbox = &mut self.outbox;
        let mut peer_close: Option<Option<u16>> = None;
        let mut on_event = |event: Event<'_>| -> ControlFlow<()> {
            match event {
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
        let result = self.decoder.feed(input, &limits.decode, &mut on_event);
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
        if self.state == ConnState::Open && self.outbox.bytes as usize > limits.outbound_bytes_max {
            // Pongs the client never reads: it is flooding pings without reading.
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
                        self.on_input(input, env.limits, env.metrics, env.now_s, env.inbound);
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
