//! WebSocket framing for the server side (RFC 6455 §5): encoding the frames we
//! send and decoding the frames clients send.
//!
//! This module owns the wire format only: frame headers, masking, fragmentation,
//! the UTF-8 rule for text, and the close-frame payload. It does no I/O, holds no
//! clock and knows nothing of connections, users or rooms.
//!
//! Callers:
//! - the client codecs (`protocol`) call [`encode`] once per delivery per codec
//!   (`hub::frames`), and the hub clones the resulting `Bytes` into every
//!   recipient's queue.
//! - `conn` keeps one [`Decoder`] per connection and calls [`Decoder::feed`]
//!   with every read; on `Err` it sends [`encode_close`] with
//!   [`Error::close_code`] and drops the connection.
//!
//! permessage-deflate (RFC 7692) touches this module in one place: with
//! [`Decoder::feed_ext`]`(.., rsv1_allowed = true, ..)`, a data message whose
//! first frame has RSV1 set is assembled like any other (bounded by
//! `message_bytes_max` compressed) and handed out as [`Event::Compressed`],
//! unchecked; `ws::deflate` inflates it. Everything else stays as in RFC 6455.
//!
//! Memory: an idle [`Decoder`] is one null pointer. Bytes are copied into its
//! boxed state only when a read ends inside a frame or inside a fragmented
//! message, and that box is freed as soon as the message completes.

use std::fmt;
use std::ops::ControlFlow;

use bytes::Bytes;

/// RFC 6455 §5.2: 2 bytes of fixed header, up to 8 bytes of extended length and
/// a 4-byte masking key.
const HEADER_BYTES_MAX: usize = 14;

/// RFC 6455 §5.5: "All control frames MUST have a payload length of 125 bytes or less".
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// RFC 6455 §5.5.1: a close payload is a 2-byte code followed by a reason, so
/// the reason may use at most 123 of the 125 control-frame bytes.
pub const CLOSE_REASON_BYTES_MAX: usize = CONTROL_PAYLOAD_BYTES_MAX - 2;

/// RFC 6455 §5.2 opcodes. The reserved values 0x3-0x7 and 0xB-0xF have no
/// variant: a frame carrying one is a protocol error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: the next fragment of a message started by Text or Binary.
    Continuation,
    /// 0x1: the first (or only) frame of a UTF-8 text message.
    Text,
    /// 0x2: the first (or only) frame of a binary message.
    Binary,
    /// 0x8: RFC 6455 §5.5.1, the closing handshake.
    Close,
    /// 0x9: RFC 6455 §5.5.2, the peer must answer with a Pong.
    Ping,
    /// 0xA: RFC 6455 §5.5.3, the answer to a Ping (or an unsolicited heartbeat).
    Pong,
}

impl OpCode {
    /// The 4-bit value this opcode has on the wire.
    pub const fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// The opcode for a 4-bit wire value, or `None` for a reserved value.
    const fn from_u8(bits: u8) -> Option<OpCode> {
        match bits {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// RFC 6455 §5.5: opcodes with the high bit set are control frames.
    pub const fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// Close status codes we send (RFC 6455 §7.4.1).
pub mod close_code {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: u16 = 1000;
    /// 1001: the server is shutting down or the client navigated away.
    pub const GOING_AWAY: u16 = 1001;
    /// 1002: the peer broke the protocol (bad framing, unmasked frame, ...).
    pub const PROTOCOL: u16 = 1002;
    /// 1003: the peer sent a kind of data we do not accept.
    pub const UNSUPPORTED: u16 = 1003;
    /// 1007: a text message or close reason was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// 1008: the message violates our policy (generic).
    pub const POLICY: u16 = 1008;
    /// 1009: the message is larger than we are willing to hold.
    pub const TOO_BIG: u16 = 1009;
    /// 1011: we hit an unexpected condition (our bug or resource exhaustion).
    pub const INTERNAL: u16 = 1011;
    /// 1013 (IANA registry, "Try Again Later"): the server is overloaded; reconnect later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Whether `code` may appear in a close frame on the wire.
///
/// RFC 6455 §7.4.1 defines 1000-1003 and 1007-1011; the IANA registry that
/// §7.4.2 sets up adds 1012-1014. 1004 is reserved, 1005, 1006 and 1015 "MUST
/// NOT be set as a status code in a Close control frame". 0-999 are unused,
/// 1016-2999 are reserved for future RFCs, 3000-3999 are registered for
/// libraries and 4000-4999 are private. Anything from 5000 up is undefined.
pub const fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Encodes one unfragmented, unmasked server frame (RFC 6455 §5.2: FIN set,
/// RSV bits clear, MASK clear because "a server MUST NOT mask any frames").
///
/// The frame is written into exactly one buffer sized to fit, so fan-out can
/// clone the returned `Bytes` to every recipient without copying. (`Bytes`
/// adds its small reference-count block on the first clone.)
///
/// A control opcode with a payload over 125 bytes is a caller bug (RFC 6455
/// §5.5) and trips a debug assertion.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    debug_assert!(
        !opcode.is_control() || payload.len() <= CONTROL_PAYLOAD_BYTES_MAX,
        "RFC 6455 §5.5: control payload over 125 bytes"
    );
    let len = payload.len();
    // RFC 6455 §5.2: 7-bit length up to 125, 126 + 16-bit length up to 65535,
    // otherwise 127 + 64-bit length; the minimal form MUST be used.
    let len_bytes = match len {
        0..=125 => 0,
        126..=0xFFFF => 2,
        _ => 8,
    };
    let mut out = Vec::with_capacity(2 + len_bytes + len);
    out.push(0x80 | opcode.as_u8());
    match len {
        // The arm bounds make each cast lossless; usize is at most 64 bits on
        // every target Rust supports.
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    debug_assert_eq!(out.len(), out.capacity(), "frame buffer sized exactly");
    Bytes::from(out)
}

/// The opcode and payload of one unfragmented server frame that [`encode`]
/// made, or `None` when `frame` is not one (fragmented, RSV bits set, masked,
/// or its length disagrees). `hub::frames` uses it to compress a codec's frame
/// without asking the codec for its payload again.
pub fn server_frame_payload(frame: &[u8]) -> Option<(OpCode, &[u8])> {
    let (&b0, rest) = frame.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    if b0 & 0xF0 != 0x80 || b1 & 0x80 != 0 {
        return None;
    }
    let opcode = OpCode::from_u8(b0 & 0x0F)?;
    let (len, payload) = match b1 {
        126 => {
            let (len, payload) = rest.split_first_chunk::<2>()?;
            (u64::from(u16::from_be_bytes(*len)), payload)
        }
        127 => {
            let (len, payload) = rest.split_first_chunk::<8>()?;
            (u64::from_be_bytes(*len), payload)
        }
        n => (u64::from(n), rest),
    };
    (payload.len() as u64 == len).then_some((opcode, payload))
}

/// Encodes a Close frame with `code` and a human-readable `reason`
/// (RFC 6455 §5.5.1). The reason is cut at a char boundary so the payload
/// stays within the 125-byte control-frame limit and stays valid UTF-8.
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    debug_assert!(
        is_valid_close_code(code),
        "close code {code} not allowed on the wire"
    );
    let mut end = reason.len().min(CLOSE_REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        // `end` > 0 here: index 0 is always a char boundary.
        end -= 1;
    }
    let mut payload = [0u8; CONTROL_PAYLOAD_BYTES_MAX];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Close, &payload[..2 + end])
}

/// A protocol violation by the client. The caller sends
/// `encode_close(err.close_code(), &err.to_string())` and drops the connection;
/// the decoder has already freed its buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// RFC 6455 §5.1: "a client MUST mask all frames that it sends to the
    /// server"; close with 1002.
    Unmasked,
    /// RFC 6455 §5.2: RSV1-3 set without a negotiated extension, or RSV1 on a
    /// continuation or control frame of a connection that negotiated
    /// permessage-deflate (RFC 7692 §6.1); close with 1002.
    ReservedBits,
    /// RFC 6455 §5.2: opcode 0x3-0x7 or 0xB-0xF; close with 1002.
    ReservedOpcode(u8),
    /// RFC 6455 §5.5: a control frame longer than 125 bytes; close with 1002.
    ControlTooLong,
    /// RFC 6455 §5.5: "Control frames themselves MUST NOT be fragmented";
    /// close with 1002.
    ControlFragmented,
    /// RFC 6455 §5.4: a continuation frame with no message in progress;
    /// close with 1002.
    UnexpectedContinuation,
    /// RFC 6455 §5.4: a new Text or Binary frame while a fragmented message is
    /// still in progress; close with 1002.
    ExpectedContinuation,
    /// RFC 6455 §5.2: "the most significant bit MUST be 0" in a 64-bit
    /// length; close with 1002.
    LengthHighBit,
    /// The message (one frame, or the sum of its fragments) would exceed
    /// `Limits::message_bytes_max`; close with 1009 (RFC 6455 §7.4.1).
    TooBig {
        /// Bytes the message would have had once this frame arrived.
        len_bytes: u64,
        /// The limit in force.
        max_bytes: usize,
    },
    /// A data message split into more than `Limits::message_fragments_max`
    /// frames; close with 1009 (RFC 6455 §7.4.1: a message "too big for it to
    /// process"), the same as for too many bytes, since the fix on the client's
    /// side is the same: send the message in fewer, larger frames.
    TooManyFragments {
        /// The limit in force.
        max_fragments: usize,
    },
    /// RFC 6455 §8.1: a text message or close reason that is not UTF-8;
    /// close with 1007.
    InvalidUtf8,
    /// RFC 6455 §5.5.1: a close payload of exactly 1 byte cannot hold a
    /// status code; close with 1002.
    CloseTruncated,
    /// RFC 6455 §7.4: a close code that may not appear on the wire;
    /// close with 1002.
    InvalidCloseCode(u16),
}

impl Error {
    /// The status code to put in the close frame we answer with.
    pub const fn close_code(&self) -> u16 {
        match self {
            Error::TooBig { .. } | Error::TooManyFragments { .. } => close_code::TOO_BIG,
            Error::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            Error::Unmasked
            | Error::ReservedBits
            | Error::ReservedOpcode(_)
            | Error::ControlTooLong
            | Error::ControlFragmented
            | Error::UnexpectedContinuation
            | Error::ExpectedContinuation
            | Error::LengthHighBit
            | Error::CloseTruncated
            | Error::InvalidCloseCode(_) => close_code::PROTOCOL,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unmasked => f.write_str("client frame not masked"),
            Error::ReservedBits => f.write_str("reserved bits set"),
            Error::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            Error::ControlTooLong => f.write_str("control frame over 125 bytes"),
            Error::ControlFragmented => f.write_str("fragmented control frame"),
            Error::UnexpectedContinuation => f.write_str("continuation without a message"),
            Error::ExpectedContinuation => f.write_str("new message inside a fragmented one"),
            Error::LengthHighBit => f.write_str("64-bit length with the high bit set"),
            Error::TooBig {
                len_bytes,
                max_bytes,
            } => {
                write!(
                    f,
                    "message of {len_bytes} bytes over the {max_bytes}-byte limit"
                )
            }
            Error::TooManyFragments { max_fragments } => {
                write!(f, "message in more than {max_fragments} fragments")
            }
            Error::InvalidUtf8 => f.write_str("invalid UTF-8"),
            Error::CloseTruncated => f.write_str("close payload of 1 byte"),
            Error::InvalidCloseCode(code) => write!(f, "invalid close code {code}"),
        }
    }
}

impl std::error::Error for Error {}

/// One complete thing the client said. Borrowed payloads point either into
/// the caller's read buffer (fast path) or into the decoder's own buffer; both
/// are valid only during the callback.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message, already checked to be UTF-8.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// RFC 6455 §5.5.2: answer with a Pong carrying the same payload.
    Ping(&'a [u8]),
    /// RFC 6455 §5.5.3: a Pong may be unsolicited; treat it as a heartbeat.
    Pong(&'a [u8]),
    /// RFC 7692 §6: a complete data message whose first frame had RSV1 set
    /// (only on a connection that negotiated permessage-deflate). `payload`
    /// is the joined DEFLATE data, not yet inflated and not checked for UTF-8:
    /// the caller inflates it (`ws::deflate::Inflater::message`), which checks
    /// the size cap and, for text, UTF-8.
    Compressed { text: bool, payload: &'a [u8] },
    /// RFC 6455 §5.5.1: the client is closing. `None` when the payload was
    /// empty, else the (valid) code and the UTF-8 reason. Answer with a Close
    /// and stop reading.
    Close(Option<(u16, &'a str)>),
}

/// Decoder limits, checked before any byte of an oversized message is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest message (the sum of all its fragments) we accept; a larger
    /// one is refused with 1009 as soon as a frame header announces it. It also
    /// bounds the capacity of the buffer a fragmented message is joined in.
    pub message_bytes_max: usize,
    /// Most frames one data message may be split into (the first frame and
    /// every continuation); the next one is refused with 1009 as soon as its
    /// header arrives, see [`Error::TooManyFragments`]. RFC 6455 §5.4 sets no
    /// bound, so without one a client could keep a message open forever with
    /// empty continuation frames: each costs a header parse and a wakeup but
    /// adds no byte to `message_bytes_max`. Control frames between fragments
    /// do not count. `--message-fragments-max` (config.rs) sets it.
    pub message_fragments_max: usize,
}

/// Streaming decoder of client frames, one per connection.
///
/// Its idle size is one pointer because the server holds one per connection
/// and 100k+ idle connections must cost almost nothing.
#[derive(Debug, Default)]
pub struct Decoder {
    /// `None` between messages. Holds only what a read left unfinished: part
    /// of a header, part of a control frame, or a data message in progress.
    partial: Option<Box<Partial>>,
}

const _: () = assert!(std::mem::size_of::<Decoder>() == 8);

/// The state a read left unfinished. At most one frame is in progress at a
/// time: either `control` is set, or `message.frame` is, or neither.
#[derive(Debug)]
struct Partial {
    /// The first bytes of a frame header that did not fully arrive.
    head: [u8; HEADER_BYTES_MAX],
    /// How many bytes of `head` are filled; 0 when no header is pending.
    head_len: usize,
    /// A control frame whose payload did not fully arrive.
    control: Option<ControlFrame>,
    /// A data message that is fragmented or whose frame did not fully arrive.
    message: Option<Message>,
}

impl Partial {
    fn new() -> Self {
        Partial {
            head: [0; HEADER_BYTES_MAX],
            head_len: 0,
            control: None,
            message: None,
        }
    }

    /// True when nothing is held, so the box can be freed.
    fn is_empty(&self) -> bool {
        self.head_len == 0 && self.control.is_none() && self.message.is_none()
    }
}

/// A control frame received in pieces. Control payloads are at most 125 bytes
/// (RFC 6455 §5.5), so they live inline.
#[derive(Debug)]
struct ControlFrame {
    opcode: OpCode,
    mask: [u8; 4],
    len: usize,
    received: usize,
    payload: [u8; CONTROL_PAYLOAD_BYTES_MAX],
}

/// A data message being assembled.
#[derive(Debug)]
struct Message {
    text: bool,
    /// RFC 7692 §6: the first frame had RSV1 set, so `payload` is DEFLATE
    /// data: no UTF-8 check here, the inflater does it.
    compressed: bool,
    /// The unmasked payload of every fragment so far. Its capacity follows
    /// the bytes that actually arrived, so a header that merely claims a large
    /// length costs nothing until the bytes come, and never exceeds
    /// `Limits::message_bytes_max` (see [`Message::append`]).
    payload: Vec<u8>,
    /// Incremental UTF-8 state for text, so an invalid byte fails at once.
    utf8: Utf8Stream,
    /// The data frame whose payload is still arriving, if any.
    frame: Option<DataFrame>,
    /// Data frames of this message whose header has arrived, at most
    /// `Limits::message_fragments_max` (checked in `check_sequence`).
    fragments: usize,
}

impl Message {
    fn new(text: bool, compressed: bool) -> Self {
        Message {
            text,
            compressed,
            payload: Vec::new(),
            utf8: Utf8Stream::default(),
            frame: None,
            fragments: 0,
        }
    }

    /// Appends unmasked payload bytes, checking UTF-8 as they come.
    ///
    /// The buffer doubles as it fills, so joining a message costs amortised
    /// O(1) per byte however many fragments it comes in, but it is capped at
    /// `bytes_max`: `Vec`'s own doubling would take a message just over a
    /// power of two (or one whose first read was not one) to nearly twice the
    /// limit. `check_sequence` already made sure the message fits `bytes_max`.
    fn append(&mut self, chunk: &[u8], bytes_max: usize) -> Result<(), Error> {
        if self.text && !self.compressed {
            self.utf8.push(chunk)?;
        }
        let needed = self.payload.len() + chunk.len();
        if needed > self.payload.capacity() {
            debug_assert!(needed <= bytes_max, "check_sequence bounds the message");
            let target = (self.payload.capacity() * 2).min(bytes_max).max(needed);
            self.payload.reserve_exact(target - self.payload.len());
        }
        self.payload.extend_from_slice(chunk);
        Ok(())
    }

    /// Emits the finished message.
    fn finish(
        self,
        on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        if self.compressed {
            return Ok(on_event(Event::Compressed {
                text: self.text,
                payload: &self.payload,
            }));
        }
        if !self.text {
            return Ok(on_event(Event::Binary(&self.payload)));
        }
        self.utf8.finish()?;
        // The incremental check above already passed, so this cannot fail; the
        // second scan runs only on the slow path and spares us `unsafe`.
        let text = std::str::from_utf8(&self.payload).map_err(|_| Error::InvalidUtf8)?;
        Ok(on_event(Event::Text(text)))
    }
}

/// Progress through the payload of one data frame.
#[derive(Debug)]
struct DataFrame {
    fin: bool,
    mask: [u8; 4],
    len: usize,
    received: usize,
}

/// A parsed frame header.
#[derive(Debug)]
struct Header {
    fin: bool,
    /// RFC 7692 §6: the Per-Message Compressed bit; only ever true on the
    /// first frame of a data message when RSV1 was allowed.
    rsv1: bool,
    opcode: OpCode,
    mask: [u8; 4],
    len: u64,
}

/// Parses a client frame header from the start of `bytes`.
///
/// Returns `Ok(None)` when more bytes are needed, and the header with its
/// length in bytes otherwise. Each rule is checked as soon as the byte it
/// depends on is present, so a bad frame fails before its header completes.
fn parse_header(bytes: &[u8], rsv1_allowed: bool) -> Result<Option<(Header, usize)>, Error> {
    let Some(&b0) = bytes.first() else {
        return Ok(None);
    };
    // RFC 6455 §5.2: "MUST be 0 unless an extension is negotiated". RSV2 and
    // RSV3 have no extension here.
    if b0 & 0x30 != 0 {
        return Err(Error::ReservedBits);
    }
    let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(Error::ReservedOpcode(b0 & 0x0F))?;
    // RFC 7692 §6.1: RSV1 only with permessage-deflate negotiated, and then
    // only on the first frame of a data message.
    let rsv1 = b0 & 0x40 != 0;
    if rsv1 && (!rsv1_allowed || opcode.is_control() || opcode == OpCode::Continuation) {
        return Err(Error::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    // RFC 6455 §5.5: "Control frames themselves MUST NOT be fragmented."
    if opcode.is_control() && !fin {
        return Err(Error::ControlFragmented);
    }
    let Some(&b1) = bytes.get(1) else {
        return Ok(None);
    };
    // RFC 6455 §5.1: "The server MUST close the connection upon receiving a
    // frame that is not masked."
    if b1 & 0x80 == 0 {
        return Err(Error::Unmasked);
    }
    let len7 = b1 & 0x7F;
    // A 16- or 64-bit length form on a control frame is refused here too: it
    // is either over 125 bytes or not the minimal form §5.2 requires.
    if opcode.is_control() && usize::from(len7) > CONTROL_PAYLOAD_BYTES_MAX {
        return Err(Error::ControlTooLong);
    }
    let len_bytes = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    // RFC 6455 §5.2: in the 64-bit form "the most significant bit MUST be 0".
    if len7 == 127 && bytes.get(2).is_some_and(|b| b & 0x80 != 0) {
        return Err(Error::LengthHighBit);
    }
    let header_len = 2 + len_bytes + 4;
    let Some(rest) = bytes.get(2..header_len) else {
        return Ok(None);
    };
    let (len_field, mask_field) = rest.split_at(len_bytes);
    // RFC 6455 §5.2 asks senders for the minimal length form; for data frames
    // we accept a longer form, as it is unambiguous and costs nothing.
    let len = match len_bytes {
        0 => u64::from(len7),
        _ => len_field
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
    };
    let mut mask = [0u8; 4];
    mask.copy_from_slice(mask_field);
    Ok(Some((
        Header {
            fin,
            rsv1,
            opcode,
            mask,
            len,
        },
        header_len,
    )))
}

/// XORs `buf` with the masking key (RFC 6455 §5.3), where `buf` starts
/// `offset` bytes into the frame payload, so the key stays in phase across
/// reads. Works 8 bytes at a time.
fn unmask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = mask;
    // Byte i of `buf` is payload byte offset + i, masked with
    // mask[(offset + i) % 4] = key[i % 4] after this rotation.
    key.rotate_left(offset % 4);
    let key64 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ key64).to_ne_bytes());
    }
    // Whole words kept the phase (8 is a multiple of 4), so the tail starts at
    // key[0] again.
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// RFC 6455 §5.5.1: an empty close payload, or a 2-byte code plus a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, Error> {
    match payload {
        [] => Ok(None),
        [_] => Err(Error::CloseTruncated),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(Error::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Error::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// Emits one complete, unmasked control frame.
fn emit_control(
    opcode: OpCode,
    payload: &[u8],
    on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, Error> {
    let event = match opcode {
        OpCode::Ping => Event::Ping(payload),
        OpCode::Pong => Event::Pong(payload),
        OpCode::Close => Event::Close(parse_close(payload)?),
        // Callers pass control opcodes only; treating a data opcode as a
        // protocol error keeps this total without a panic.
        OpCode::Continuation | OpCode::Text | OpCode::Binary => {
            return Err(Error::ReservedOpcode(opcode.as_u8()))
        }
    };
    Ok(on_event(event))
}

/// Incremental UTF-8 check that tolerates a char split across chunks.
#[derive(Debug, Default)]
struct Utf8Stream {
    /// The start of a char that the last chunk cut off (at most 3 bytes).
    pending: [u8; 4],
    pending_len: usize,
}

impl Utf8Stream {
    /// Checks the next chunk. An invalid sequence fails at once; a valid but
    /// unfinished char at the end is kept to be finished by the next chunk.
    fn push(&mut self, mut chunk: &[u8]) -> Result<(), Error> {
        if self.pending_len > 0 {
            let have = self.pending_len;
            // `pending[0]` passed std's check as the start of a multi-byte char.
            let width = match self.pending[0] {
                0xF0.. => 4,
                0xE0.. => 3,
                _ => 2,
            };
            let take = (width - have).min(chunk.len());
            self.pending[have..have + take].copy_from_slice(&chunk[..take]);
            match std::str::from_utf8(&self.pending[..have + take]) {
                Ok(_) => self.pending_len = 0,
                // Still a valid prefix, and the chunk is used up.
                Err(e) if e.error_len().is_none() => {
                    self.pending_len = have + take;
                    return Ok(());
                }
                Err(_) => return Err(Error::InvalidUtf8),
            }
            chunk = &chunk[take..];
        }
        match std::str::from_utf8(chunk) {
            Ok(_) => Ok(()),
            // std reports `error_len() == None` only for a valid but
            // unfinished char at the very end, which is at most 3 bytes.
            Err(e) if e.error_len().is_none() => {
                let tail = &chunk[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len();
                Ok(())
            }
            Err(_) => Err(Error::InvalidUtf8),
        }
    }

    /// At the end of the message no char may be left unfinished.
    fn finish(&self) -> Result<(), Error> {
        if self.pending_len == 0 {
            Ok(())
        } else {
            Err(Error::InvalidUtf8)
        }
    }
}

/// Takes the first `n` bytes off the front of `rest`.
fn advance<'a>(rest: &mut &'a mut [u8], n: usize) -> &'a mut [u8] {
    let (head, tail) = std::mem::take(rest).split_at_mut(n);
    *rest = tail;
    head
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub const fn new() -> Self {
        Decoder { partial: None }
    }

    /// Decodes `input`, what was just read from the socket; the decoder may
    /// unmask it in place.
    ///
    /// Calls `on_event` for every complete event, in order. `on_event` returns
    /// `ControlFlow::Break(())` to stop (e.g. after Close); remaining input is
    /// then dropped and the decoder frees its buffers, so it has lost its
    /// place in the stream and must not be fed again.
    ///
    /// Returns `Err` on a protocol violation; the caller sends a close frame
    /// with `err.close_code()` and drops the connection. The decoder has then
    /// freed its buffers too.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
        on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        self.feed_ext(input, limits, false, on_event)
    }

    /// [`Decoder::feed`] for a connection that may have negotiated
    /// permessage-deflate: with `rsv1_allowed`, a data message whose first
    /// frame has RSV1 set comes out as [`Event::Compressed`]; without it, RSV1
    /// is [`Error::ReservedBits`] (1002) as on any connection.
    pub fn feed_ext(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
        rsv1_allowed: bool,
        on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        match self.run(input, limits, rsv1_allowed, on_event) {
            Ok(ControlFlow::Continue(())) => {
                if self.partial.as_deref().is_some_and(Partial::is_empty) {
                    self.partial = None;
                }
                Ok(())
            }
            Ok(ControlFlow::Break(())) => {
                self.partial = None;
                Ok(())
            }
            Err(err) => {
                self.partial = None;
                Err(err)
            }
        }
    }

    /// True when nothing is buffered, i.e. the decoder holds no allocation.
    pub fn is_idle(&self) -> bool {
        self.partial.is_none()
    }

    /// Payload and header bytes currently held for unfinished frames and
    /// messages (not counting spare capacity).
    pub fn buffered_bytes(&self) -> usize {
        self.partial.as_deref().map_or(0, |p| {
            p.head_len
                + p.control.as_ref().map_or(0, |c| c.received)
                + p.message.as_ref().map_or(0, |m| m.payload.len())
        })
    }

    fn run(
        &mut self,
        mut rest: &mut [u8],
        limits: &Limits,
        rsv1_allowed: bool,
        on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        loop {
            // 1. A frame whose payload began in an earlier read comes first.
            if let Some(partial) = self.partial.as_deref_mut() {
                if partial.control.is_some()
                    || partial.message.as_ref().is_some_and(|m| m.frame.is_some())
                {
                    if continue_frame(partial, &mut rest, limits, on_event)?.is_break() {
                        return Ok(ControlFlow::Break(()));
                    }
                    if !rest.is_empty() {
                        continue;
                    }
                }
            }
            if rest.is_empty() {
                return Ok(ControlFlow::Continue(()));
            }

            // 2. The next header.
            let Some(header) = self.take_header(&mut rest, rsv1_allowed)? else {
                return Ok(ControlFlow::Continue(()));
            };
            let len = self.check_sequence(&header, limits)?;

            // 3. Fast path: the whole payload is in this read, so unmask it in
            // place and hand out events that borrow the read buffer.
            if rest.len() >= len {
                let payload = advance(&mut rest, len);
                unmask(payload, header.mask, 0);
                if self
                    .complete_frame(&header, payload, limits, on_event)?
                    .is_break()
                {
                    return Ok(ControlFlow::Break(()));
                }
                continue;
            }

            // 4. Slow path: the payload continues in later reads.
            let partial = self.partial.get_or_insert_with(|| Box::new(Partial::new()));
            match header.opcode {
                OpCode::Close | OpCode::Ping | OpCode::Pong => {
                    partial.control = Some(ControlFrame {
                        opcode: header.opcode,
                        mask: header.mask,
                        len,
                        received: 0,
                        payload: [0; CONTROL_PAYLOAD_BYTES_MAX],
                    });
                }
                OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                    let message = partial.message.get_or_insert_with(|| {
                        Message::new(header.opcode == OpCode::Text, header.rsv1)
                    });
                    message.fragments += 1;
                    message.frame = Some(DataFrame {
                        fin: header.fin,
                        mask: header.mask,
                        len,
                        received: 0,
                    });
                }
            }
        }
    }

    /// Takes the next frame header from a pending partial header and/or the
    /// front of `rest`; stashes an incomplete one and returns `None`.
    fn take_header(
        &mut self,
        rest: &mut &mut [u8],
        rsv1_allowed: bool,
    ) -> Result<Option<Header>, Error> {
        if let Some(partial) = self.partial.as_deref_mut().filter(|p| p.head_len > 0) {
            let have = partial.head_len;
            let take = (HEADER_BYTES_MAX - have).min(rest.len());
            partial.head[have..have + take].copy_from_slice(&rest[..take]);
            return match parse_header(&partial.head[..have + take], rsv1_allowed)? {
                Some((header, header_len)) => {
                    partial.head_len = 0;
                    advance(rest, header_len - have);
                    Ok(Some(header))
                }
                None => {
                    partial.head_len = have + take;
                    advance(rest, take);
                    Ok(None)
                }
            };
        }
        match parse_header(rest, rsv1_allowed)? {
            Some((header, header_len)) => {
                advance(rest, header_len);
                Ok(Some(header))
            }
            None => {
                // parse_header succeeds on any 14 bytes, so this tail is shorter.
                let tail = advance(rest, rest.len());
                let partial = self.partial.get_or_insert_with(|| Box::new(Partial::new()));
                partial.head[..tail.len()].copy_from_slice(tail);
                partial.head_len = tail.len();
                Ok(None)
            }
        }
    }

    /// Checks a data frame against the message in progress and the size
    /// limit (RFC 6455 §5.4), and returns its payload length.
    fn check_sequence(&self, header: &Header, limits: &Limits) -> Result<usize, Error> {
        let in_progress = self
            .partial
            .as_deref()
            .and_then(|p| p.message.as_ref())
            .map(|m| (m.payload.len(), m.fragments));
        let so_far = match (header.opcode, in_progress) {
            // Control payloads are bounded by 125 (checked in parse_header),
            // not by the message limit, so a small limit never blocks a Ping.
            (OpCode::Close | OpCode::Ping | OpCode::Pong, _) => {
                return Ok(usize::from(header.len as u8))
            }
            (OpCode::Continuation, None) => return Err(Error::UnexpectedContinuation),
            (OpCode::Continuation, Some((_, fragments)))
                if fragments >= limits.message_fragments_max =>
            {
                return Err(Error::TooManyFragments {
                    max_fragments: limits.message_fragments_max,
                })
            }
            (OpCode::Continuation, Some((len, _))) => len,
            (OpCode::Text | OpCode::Binary, Some(_)) => return Err(Error::ExpectedContinuation),
            (OpCode::Text | OpCode::Binary, None) => 0,
        };
        // `so_far` is at most `message_bytes_max`, and a u64 holds any usize.
        let total = (so_far as u64).saturating_add(header.len);
        let too_big = Error::TooBig {
            len_bytes: total,
            max_bytes: limits.message_bytes_max,
        };
        if total > limits.message_bytes_max as u64 {
            return Err(too_big);
        }
        usize::try_from(header.len).map_err(|_| too_big)
    }

    /// Handles a frame whose whole payload (already unmasked) is in `payload`.
    fn complete_frame(
        &mut self,
        header: &Header,
        payload: &[u8],
        limits: &Limits,
        on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        match header.opcode {
            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                emit_control(header.opcode, payload, on_event)
            }
            // The common case: a whole unfragmented message, no copy at all.
            OpCode::Text | OpCode::Binary if header.fin => {
                if header.rsv1 {
                    return Ok(on_event(Event::Compressed {
                        text: header.opcode == OpCode::Text,
                        payload,
                    }));
                }
                if header.opcode == OpCode::Binary {
                    return Ok(on_event(Event::Binary(payload)));
                }
                let text = std::str::from_utf8(payload).map_err(|_| Error::InvalidUtf8)?;
                Ok(on_event(Event::Text(text)))
            }
            // check_sequence made sure no message is in progress for Text and
            // Binary, and that one is for Continuation.
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                let partial = self.partial.get_or_insert_with(|| Box::new(Partial::new()));
                let message = partial.message.get_or_insert_with(|| {
                    Message::new(header.opcode == OpCode::Text, header.rsv1)
                });
                message.fragments += 1;
                message.append(payload, limits.message_bytes_max)?;
                match partial.message.take() {
                    Some(message) if header.fin => message.finish(on_event),
                    unfinished => {
                        partial.message = unfinished;
                        Ok(ControlFlow::Continue(()))
                    }
                }
            }
        }
    }
}

/// Feeds the front of `rest` into the frame in progress in `partial`, taking
/// at most what that frame still needs, and emits the event if it completes.
fn continue_frame(
    partial: &mut Partial,
    rest: &mut &mut [u8],
    limits: &Limits,
    on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, Error> {
    if let Some(control) = partial.control.as_mut() {
        let take = (control.len - control.received).min(rest.len());
        let chunk = advance(rest, take);
        unmask(chunk, control.mask, control.received);
        control.payload[control.received..control.received + take].copy_from_slice(chunk);
        control.received += take;
        if control.received < control.len {
            return Ok(ControlFlow::Continue(()));
        }
        let flow = emit_control(control.opcode, &control.payload[..control.len], on_event)?;
        partial.control = None;
        return Ok(flow);
    }
    let Some(message) = partial.message.as_mut() else {
        return Ok(ControlFlow::Continue(()));
    };
    let Some(frame) = message.frame.as_mut() else {
        return Ok(ControlFlow::Continue(()));
    };
    let take = (frame.len - frame.received).min(rest.len());
    let chunk = advance(rest, take);
    unmask(chunk, frame.mask, frame.received);
    frame.received += take;
    let (done, fin) = (frame.received == frame.len, frame.fin);
    // Stream the unmasked bytes straight into the message; the frame itself
    // is never buffered.
    message.append(chunk, limits.message_bytes_max)?;
    if !done {
        return Ok(ControlFlow::Continue(()));
    }
    message.frame = None;
    if !fin {
        return Ok(ControlFlow::Continue(()));
    }
    match partial.message.take() {
        Some(message) => message.finish(on_event),
        None => Ok(ControlFlow::Continue(())),
    }
}

/// Fuzz entry point: decodes `data` in several split patterns with small
/// limits. It must never panic on any input; it does assert that every split
/// gives the same events and the same outcome, since a difference is a
/// decoder bug.
pub fn fuzz_one(data: &[u8]) {
    // Few enough fragments that mutated streams of up to six frames reach the cap.
    let limits = Limits {
        message_bytes_max: 64,
        message_fragments_max: 4,
    };
    // Split sizes driven by the data itself, so mutated inputs also mutate the splits.
    let seed = data.first().copied().unwrap_or(0);
    // Both kinds of connection: without and with permessage-deflate (RSV1).
    for rsv1_allowed in [false, true] {
        let whole = fuzz_decode(data, &limits, rsv1_allowed, |_| data.len().max(1));
        let bytewise = fuzz_decode(data, &limits, rsv1_allowed, |_| 1);
        assert_eq!(
            whole, bytewise,
            "split into single bytes changed the outcome"
        );
        let jagged = fuzz_decode(data, &limits, rsv1_allowed, |i| {
            usize::from(seed ^ (i as u8)) % 17 + 1
        });
        assert_eq!(whole, jagged, "jagged split changed the outcome");
    }
    let small = Limits {
        message_bytes_max: 3,
        message_fragments_max: 2,
    };
    let _ = fuzz_decode(data, &small, seed & 1 == 1, |i| i % 5 + 1);
}

/// What a fuzz run saw: events in an owned form, then the close code of the
/// error, if any.
type FuzzOutcome = (Vec<(u8, Vec<u8>)>, Option<u16>);

fn fuzz_decode(
    data: &[u8],
    limits: &Limits,
    rsv1_allowed: bool,
    mut chunk_len: impl FnMut(usize) -> usize,
) -> FuzzOutcome {
    let mut input = data.to_vec();
    let mut decoder = Decoder::new();
    let mut events = Vec::new();
    // Set by a Close: the server stops reading there, whatever follows.
    let closed = std::cell::Cell::new(false);
    let mut on_event = |event: Event<'_>| {
        let (kind, bytes) = match event {
            Event::Text(t) => (1, t.as_bytes().to_vec()),
            Event::Binary(b) => (2, b.to_vec()),
            Event::Compressed { text, payload } => (0x40 | u8::from(text), payload.to_vec()),
            Event::Ping(b) => (9, b.to_vec()),
            Event::Pong(b) => (10, b.to_vec()),
            Event::Close(None) => (8, Vec::new()),
            Event::Close(Some((code, reason))) => {
                let mut bytes = code.to_be_bytes().to_vec();
                bytes.extend_from_slice(reason.as_bytes());
                (8, bytes)
            }
        };
        events.push((kind, bytes));
        if kind == 8 {
            closed.set(true);
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let mut start = 0;
    let mut call = 0;
    while start < input.len() && !closed.get() {
        let end = input.len().min(start + chunk_len(call).max(1));
        let chunk = &mut input[start..end];
        if let Err(err) = decoder.feed_ext(chunk, limits, rsv1_allowed, &mut on_event) {
            assert!(decoder.is_idle(), "decoder keeps buffers after an error");
            return (events, Some(err.close_code()));
        }
        assert!(
            decoder.buffered_bytes()
                <= limits.message_bytes_max + HEADER_BYTES_MAX + CONTROL_PAYLOAD_BYTES_MAX,
            "decoder holds more than its limits allow"
        );
        start = end;
        call += 1;
    }
    (events, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Builds a masked client frame by hand (RFC 6455 §5.2), including
    /// non-minimal length forms when `len_form` asks for one.
    fn client_frame_with(b0: u8, payload: &[u8], mask: [u8; 4], len_form: u8) -> Vec<u8> {
        let mut out = vec![b0];
        match len_form {
            0 => out.push(0x80 | payload.len() as u8),
            2 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let form = match payload.len() {
            0..=125 => 0,
            126..=0xFFFF => 2,
            _ => 8,
        };
        client_frame_with(if fin { 0x80 } else { 0 } | opcode, payload, MASK, form)
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
        Compressed(bool, Vec<u8>),
    }

    fn own(event: Event<'_>) -> Owned {
        match event {
            Event::Text(t) => Owned::Text(t.to_owned()),
            Event::Binary(b) => Owned::Binary(b.to_vec()),
            Event::Ping(b) => Owned::Ping(b.to_vec()),
            Event::Pong(b) => Owned::Pong(b.to_vec()),
            Event::Close(c) => Owned::Close(c.map(|(code, reason)| (code, reason.to_owned()))),
            Event::Compressed { text, payload } => Owned::Compressed(text, payload.to_vec()),
        }
    }

    /// Decodes `data` on a connection that negotiated permessage-deflate, in
    /// one read and byte by byte (both must agree).
    fn decode_rsv1(data: &[u8]) -> (Vec<Owned>, Result<(), Error>) {
        let mut outcomes = Vec::new();
        for step in [data.len().max(1), 1] {
            let mut buf = data.to_vec();
            let mut decoder = Decoder::new();
            let mut events = Vec::new();
            let mut result = Ok(());
            for chunk in buf.chunks_mut(step) {
                result = decoder.feed_ext(chunk, &LIMITS, true, &mut |e| {
                    events.push(own(e));
                    ControlFlow::Continue(())
                });
                if result.is_err() {
                    break;
                }
            }
            outcomes.push((events, result));
        }
        assert_eq!(outcomes[0], outcomes[1], "split changed the outcome");
        outcomes.swap_remove(0)
    }

    #[test]
    fn server_frame_payload_inverts_encode() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536] {
            let payload = vec![7u8; len];
            let frame = encode(OpCode::Text, &payload);
            assert_eq!(
                server_frame_payload(&frame),
                Some((OpCode::Text, &payload[..]))
            );
            assert_eq!(server_frame_payload(&frame[..frame.len() - 1]), None);
        }
        assert_eq!(server_frame_payload(&client_frame(true, 1, b"x")), None);
        assert_eq!(server_frame_payload(&[0x01, 0x00]), None, "not FIN");
    }

    #[test]
    fn rsv1_only_with_deflate_and_only_on_first_data_frames() {
        // Not valid UTF-8 and not checked: it is DEFLATE data.
        let whole = client_frame_with(0x80 | 0x40 | 1, &[0xff, 0xfe], MASK, 0);
        assert_eq!(
            decode_rsv1(&whole),
            (vec![Owned::Compressed(true, vec![0xff, 0xfe])], Ok(()))
        );
        // Without the extension the same frame is a protocol error (1002).
        assert_eq!(decode_err(&whole), Error::ReservedBits);
        assert_eq!(Error::ReservedBits.close_code(), 1002);
        // Fragmented: RSV1 on the first frame only, payloads joined.
        let mut data = client_frame_with(0x40 | 2, b"ab", MASK, 0);
        data.extend(client_frame(false, 0, b"cd"));
        data.extend(client_frame(true, 9, b"p"));
        data.extend(client_frame(true, 0, b"e"));
        assert_eq!(
            decode_rsv1(&data),
            (
                vec![
                    Owned::Ping(b"p".to_vec()),
                    Owned::Compressed(false, b"abcde".to_vec())
                ],
                Ok(())
            )
        );
        // RFC 7692 §6.1: never on a continuation or a control frame.
        let mut data = client_frame(false, 1, b"a");
        data.extend(client_frame_with(0x80 | 0x40, b"b", MASK, 0));
        assert_eq!(decode_rsv1(&data).1, Err(Error::ReservedBits));
        let ping = client_frame_with(0x80 | 0x40 | 9, b"", MASK, 0);
        assert_eq!(decode_rsv1(&ping).1, Err(Error::ReservedBits));
        // RSV2 and RSV3 stay reserved.
        let rsv2 = client_frame_with(0x80 | 0x20 | 1, b"x", MASK, 0);
        assert_eq!(decode_rsv1(&rsv2).1, Err(Error::ReservedBits));
        // A plain text message on a deflate connection is still checked.
        let bad = client_frame(true, 1, &[0xff]);
        assert_eq!(decode_rsv1(&bad).1, Err(Error::InvalidUtf8));
    }

    const LIMITS: Limits = Limits {
        message_bytes_max: 1 << 20,
        message_fragments_max: FRAGMENTS_MAX,
    };
    /// The default fragment cap, which the tests below reach.
    const FRAGMENTS_MAX: usize = crate::config::MESSAGE_FRAGMENTS_MAX_DEFAULT;

    /// Feeds `data` split at the given points; returns the events and the
    /// error, stopping at the first error.
    fn decode_split(
        data: &[u8],
        splits: &[usize],
        limits: &Limits,
    ) -> (Vec<Owned>, Result<(), Error>) {
        let mut buf = data.to_vec();
        let mut decoder = Decoder::new();
        let mut events = Vec::new();
        let mut bounds: Vec<usize> = splits.to_vec();
        bounds.push(buf.len());
        let mut start = 0;
        for end in bounds {
            let result = decoder.feed(&mut buf[start..end], limits, &mut |e| {
                events.push(own(e));
                ControlFlow::Continue(())
            });
            if result.is_err() {
                return (events, result);
            }
            start = end;
        }
        (events, Ok(()))
    }

    fn decode(data: &[u8]) -> (Vec<Owned>, Result<(), Error>) {
        decode_split(data, &[], &LIMITS)
    }

    fn decode_err(data: &[u8]) -> Error {
        match decode(data).1 {
            Err(e) => e,
            Ok(()) => panic!("expected an error"),
        }
    }

    fn tungstenite_server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        use tungstenite::protocol::frame::coding::{Control, Data, OpCode as TOp};
        use tungstenite::protocol::frame::{Frame, FrameHeader};
        let op = match opcode {
            OpCode::Continuation => TOp::Data(Data::Continue),
            OpCode::Text => TOp::Data(Data::Text),
            OpCode::Binary => TOp::Data(Data::Binary),
            OpCode::Close => TOp::Control(Control::Close),
            OpCode::Ping => TOp::Control(Control::Ping),
            OpCode::Pong => TOp::Control(Control::Pong),
        };
        let header = FrameHeader {
            opcode: op,
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        Frame::from_payload(header, Bytes::copy_from_slice(payload))
            .format(&mut out)
            .expect("Vec write");
        out
    }

    fn tungstenite_client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        use tungstenite::protocol::frame::coding::OpCode as TOp;
        use tungstenite::protocol::frame::{Frame, FrameHeader};
        let header = FrameHeader {
            is_final: fin,
            opcode: TOp::from(opcode),
            mask: Some(mask),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        Frame::from_payload(header, Bytes::copy_from_slice(payload))
            .format(&mut out)
            .expect("Vec write");
        out
    }

    #[test]
    fn decoder_idle_size_is_one_pointer() {
        assert_eq!(std::mem::size_of::<Decoder>(), std::mem::size_of::<usize>());
        assert!(Decoder::new().is_idle());
    }

    #[test]
    fn encode_matches_tungstenite_for_every_length_form() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            for opcode in [OpCode::Binary, OpCode::Text] {
                let ours = encode(opcode, &payload);
                assert_eq!(
                    &ours[..],
                    &tungstenite_server_frame(opcode, &payload)[..],
                    "len {len}"
                );
                let expected_header = match len {
                    0..=125 => 2,
                    126..=65535 => 4,
                    _ => 10,
                };
                assert_eq!(ours.len(), expected_header + len);
            }
        }
        for opcode in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
            assert_eq!(
                &encode(opcode, b"hi")[..],
                &tungstenite_server_frame(opcode, b"hi")[..]
            );
        }
    }

    #[test]
    fn encode_close_truncates_on_char_boundary() {
        let frame = encode_close(close_code::GOING_AWAY, "bye");
        assert_eq!(&frame[..], &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
        // 61 two-byte chars = 122 bytes fit; the 62nd would need bytes 123-124.
        let reason = "é".repeat(100);
        let frame = encode_close(close_code::NORMAL, &reason);
        let payload_len = usize::from(frame[1]);
        assert_eq!(payload_len, 2 + 122);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
        let ascii = "x".repeat(300);
        assert_eq!(
            usize::from(encode_close(close_code::NORMAL, &ascii)[1]),
            125
        );
    }

    #[test]
    fn close_code_validity() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000,
            4999,
        ] {
            assert!(is_valid_close_code(code), "{code}");
        }
        for code in [
            0,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            2000,
            2999,
            5000,
            u16::MAX,
        ] {
            assert!(!is_valid_close_code(code), "{code}");
        }
    }

    #[test]
    fn unmask_keeps_phase_for_every_offset_and_length() {
        let mask = [1, 2, 4, 8];
        let plain: Vec<u8> = (0..40u8).collect();
        let masked: Vec<u8> = plain
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        for split in 0..=plain.len() {
            let mut buf = masked.clone();
            let (a, b) = buf.split_at_mut(split);
            unmask(a, mask, 0);
            unmask(b, mask, split);
            assert_eq!(buf, plain, "split at {split}");
        }
    }

    #[test]
    fn decodes_every_event_kind() {
        let mut data = client_frame(true, 1, "héllo".as_bytes());
        data.extend(client_frame(true, 2, &[0, 1, 2]));
        data.extend(client_frame(true, 9, b"p"));
        data.extend(client_frame(true, 10, b""));
        data.extend(client_frame(true, 8, b""));
        data.extend(client_frame(true, 8, &[0x03, 0xE8, b'o', b'k']));
        let (events, result) = decode(&data);
        assert_eq!(result, Ok(()));
        assert_eq!(
            events,
            vec![
                Owned::Text("héllo".into()),
                Owned::Binary(vec![0, 1, 2]),
                Owned::Ping(b"p".to_vec()),
                Owned::Pong(vec![]),
                Owned::Close(None),
                Owned::Close(Some((1000, "ok".into()))),
            ]
        );
    }

    #[test]
    fn decodes_frames_masked_by_tungstenite() {
        for len in [0usize, 5, 125, 126, 300, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let frame = tungstenite_client_frame(true, 2, &payload, [9, 8, 7, 6]);
            assert_eq!(
                frame,
                client_frame_with(
                    0x82,
                    &payload,
                    [9, 8, 7, 6],
                    match frame[1] & 0x7F {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    }
                ),
                "helper agrees"
            );
            let (events, result) = decode(&frame);
            assert_eq!(result, Ok(()));
            assert_eq!(events, vec![Owned::Binary(payload.clone())]);
            // And the same frame arriving in three pieces.
            let (events, result) = decode_split(&frame, &[1, frame.len() / 2], &LIMITS);
            assert_eq!(result, Ok(()));
            assert_eq!(events, vec![Owned::Binary(payload)]);
        }
    }

    #[test]
    fn accepts_non_minimal_length_forms() {
        let data = client_frame_with(0x81, b"abc", MASK, 8);
        assert_eq!(decode(&data).0, vec![Owned::Text("abc".into())]);
        let data = client_frame_with(0x81, b"abc", MASK, 2);
        assert_eq!(decode(&data).0, vec![Owned::Text("abc".into())]);
    }

    fn multi_frame_input() -> Vec<u8> {
        let mut data = client_frame(true, 1, "one ☃".as_bytes());
        data.extend(client_frame(false, 1, "fr".as_bytes()));
        data.extend(client_frame(true, 9, b"mid"));
        data.extend(client_frame(false, 0, "ag 𝄞".as_bytes()));
        data.extend(client_frame(true, 0, b"!"));
        data.extend(client_frame(true, 2, &[7u8; 300]));
        data.extend(client_frame(true, 10, &[1u8; 125]));
        data.extend(client_frame(true, 8, &[0x0F, 0xA0, b'x']));
        data
    }

    #[test]
    fn every_split_gives_the_same_events() {
        let data = multi_frame_input();
        let (expected, result) = decode(&data);
        assert_eq!(result, Ok(()));
        assert_eq!(expected.len(), 6);
        assert_eq!(expected[1], Owned::Ping(b"mid".to_vec()));
        assert_eq!(expected[2], Owned::Text("frag 𝄞!".into()));
        for split in 0..=data.len() {
            assert_eq!(
                decode_split(&data, &[split], &LIMITS),
                (expected.clone(), Ok(())),
                "split {split}"
            );
        }
        for a in (0..data.len()).step_by(7) {
            for b in (a..data.len()).step_by(5) {
                assert_eq!(
                    decode_split(&data, &[a, b], &LIMITS),
                    (expected.clone(), Ok(())),
                    "splits {a} {b}"
                );
            }
        }
        let every_byte: Vec<usize> = (1..data.len()).collect();
        assert_eq!(
            decode_split(&data, &every_byte, &LIMITS),
            (expected, Ok(()))
        );
    }

    #[test]
    fn decoder_is_idle_after_complete_messages() {
        let data = multi_frame_input();
        let mut buf = data.clone();
        let mut decoder = Decoder::new();
        for chunk in buf.chunks_mut(3) {
            decoder
                .feed(chunk, &LIMITS, &mut |_| ControlFlow::Continue(()))
                .expect("valid input");
        }
        assert!(decoder.is_idle());
        assert_eq!(decoder.buffered_bytes(), 0);

        // Mid-message it holds exactly the fragment so far.
        let mut first = client_frame(false, 2, b"abcd");
        let mut decoder = Decoder::new();
        decoder
            .feed(&mut first, &LIMITS, &mut |_| ControlFlow::Continue(()))
            .expect("valid");
        assert!(!decoder.is_idle());
        assert_eq!(decoder.buffered_bytes(), 4);
        let mut last = client_frame(true, 0, b"e");
        let mut got = Vec::new();
        decoder
            .feed(&mut last, &LIMITS, &mut |e| {
                got.push(own(e));
                ControlFlow::Continue(())
            })
            .expect("valid");
        assert_eq!(got, vec![Owned::Binary(b"abcde".to_vec())]);
        assert!(decoder.is_idle());
    }

    #[test]
    fn split_frame_streams_into_message_buffer() {
        let payload = vec![5u8; 1000];
        let mut frame = client_frame(true, 2, &payload);
        let mut decoder = Decoder::new();
        let (a, b) = frame.split_at_mut(500);
        decoder
            .feed(a, &LIMITS, &mut |_| ControlFlow::Continue(()))
            .expect("valid");
        // 4 header bytes + 4 mask bytes came before the payload.
        assert_eq!(decoder.buffered_bytes(), 500 - 8);
        let mut n = 0;
        decoder
            .feed(b, &LIMITS, &mut |e| {
                assert_eq!(e, Event::Binary(&payload));
                n += 1;
                ControlFlow::Continue(())
            })
            .expect("valid");
        assert_eq!(n, 1);
        assert!(decoder.is_idle());
    }

    #[test]
    fn break_stops_and_drops_the_rest() {
        let mut data = client_frame(true, 8, &[0x03, 0xE8]);
        data.extend(client_frame(true, 1, b"after close"));
        let mut decoder = Decoder::new();
        let mut events = Vec::new();
        decoder
            .feed(&mut data, &LIMITS, &mut |e| {
                events.push(own(e));
                ControlFlow::Break(())
            })
            .expect("valid");
        assert_eq!(events, vec![Owned::Close(Some((1000, String::new())))]);
        assert!(decoder.is_idle());
    }

    #[test]
    fn rejects_unmasked_frames() {
        assert_eq!(decode_err(&[0x81, 0x02, b'h', b'i']), Error::Unmasked);
        assert_eq!(Error::Unmasked.close_code(), 1002);
    }

    #[test]
    fn rejects_reserved_bits_and_opcodes() {
        for rsv in [0x40, 0x20, 0x10] {
            let data = client_frame_with(0x80 | rsv | 1, b"x", MASK, 0);
            assert_eq!(decode_err(&data), Error::ReservedBits);
        }
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let data = client_frame(true, op, b"");
            assert_eq!(decode_err(&data), Error::ReservedOpcode(op));
            assert_eq!(Error::ReservedOpcode(op).close_code(), 1002);
        }
        // Fails on the first byte, before the rest of the header arrives.
        assert_eq!(decode(&[0xC1]).1, Err(Error::ReservedBits));
    }

    #[test]
    fn rejects_bad_control_frames() {
        let data = client_frame(true, 9, &[0u8; 126]);
        assert_eq!(decode_err(&data), Error::ControlTooLong);
        let data = client_frame(false, 9, b"x");
        assert_eq!(decode_err(&data), Error::ControlFragmented);
        assert_eq!(Error::ControlTooLong.close_code(), 1002);
        assert_eq!(Error::ControlFragmented.close_code(), 1002);
        // An extended length form on a control frame is refused at byte two:
        // it is either over 125 bytes or not minimally encoded (§5.2).
        let data = client_frame_with(0x89, b"ok", MASK, 2);
        assert_eq!(decode(&data[..2]).1, Err(Error::ControlTooLong));
    }

    #[test]
    fn rejects_bad_fragment_sequences() {
        assert_eq!(
            decode_err(&client_frame(true, 0, b"x")),
            Error::UnexpectedContinuation
        );
        let mut data = client_frame(false, 1, b"a");
        data.extend(client_frame(true, 2, b"b"));
        assert_eq!(decode_err(&data), Error::ExpectedContinuation);
        let mut data = client_frame(false, 2, b"a");
        data.extend(client_frame(false, 1, b"b"));
        assert_eq!(decode_err(&data), Error::ExpectedContinuation);
        assert_eq!(Error::UnexpectedContinuation.close_code(), 1002);
        assert_eq!(Error::ExpectedContinuation.close_code(), 1002);
    }

    /// A message of `fragments` frames: a text start, empty continuations, a
    /// final "!" continuation.
    fn fragmented(fragments: usize) -> Vec<u8> {
        let mut data = client_frame(false, 1, b"a");
        for _ in 0..fragments - 2 {
            data.extend(client_frame(false, 0, b""));
        }
        data.extend(client_frame(true, 0, b"!"));
        data
    }

    #[test]
    fn fragment_count_is_bounded() {
        // Exactly FRAGMENTS_MAX frames make one message, whole or split anywhere.
        let data = fragmented(FRAGMENTS_MAX);
        assert_eq!(decode(&data), (vec![Owned::Text("a!".into())], Ok(())));
        let splits: Vec<usize> = (1..data.len()).step_by(5).collect();
        assert_eq!(
            decode_split(&data, &splits, &LIMITS),
            (vec![Owned::Text("a!".into())], Ok(()))
        );
        // One more is refused with 1009 when its header arrives, before the final
        // frame, and the decoder frees what it held.
        let data = fragmented(FRAGMENTS_MAX + 1);
        let (events, result) = decode(&data);
        assert!(events.is_empty());
        let too_many = Error::TooManyFragments {
            max_fragments: FRAGMENTS_MAX,
        };
        assert_eq!(result, Err(too_many));
        assert_eq!(too_many.close_code(), 1009);
        // Never finished: a start and FRAGMENTS_MAX empty continuations, split anywhere.
        let mut endless = client_frame(false, 1, b"a");
        for _ in 0..FRAGMENTS_MAX {
            endless.extend(client_frame(false, 0, b""));
        }
        for splits in [vec![], (1..endless.len()).collect::<Vec<_>>()] {
            let mut buf = endless.clone();
            let mut decoder = Decoder::new();
            let mut start = 0;
            let mut result = Ok(());
            for end in splits.into_iter().chain([buf.len()]) {
                result = decoder.feed(&mut buf[start..end], &LIMITS, &mut |_| {
                    ControlFlow::Continue(())
                });
                if result.is_err() {
                    break;
                }
                start = end;
            }
            assert_eq!(result, Err(too_many));
            assert!(decoder.is_idle());
        }
        // Control frames between fragments do not count.
        let mut data = client_frame(false, 2, b"a");
        for i in 0..FRAGMENTS_MAX - 2 {
            data.extend(client_frame(false, 0, b""));
            if i % 100 == 0 {
                data.extend(client_frame(true, 9, b"p"));
            }
        }
        data.extend(client_frame(true, 0, b"b"));
        let (events, result) = decode(&data);
        assert_eq!(result, Ok(()));
        assert_eq!(events.last(), Some(&Owned::Binary(b"ab".to_vec())));
        // The count is per message: the next message starts again at zero.
        let mut data = fragmented(FRAGMENTS_MAX);
        data.extend(fragmented(FRAGMENTS_MAX));
        assert_eq!(decode(&data).0.len(), 2);
        assert_eq!(decode(&data).1, Ok(()));
    }

    /// Feeds `data` in reads of `read_bytes` and returns the events, the outcome,
    /// and the capacity of the buffer the message is joined in after each read.
    fn decode_in_reads(
        data: &[u8],
        read_bytes: usize,
        limits: &Limits,
    ) -> (Vec<Owned>, Result<(), Error>, Vec<usize>) {
        let mut buf = data.to_vec();
        let mut decoder = Decoder::new();
        let mut events = Vec::new();
        let mut capacities = Vec::new();
        for read in buf.chunks_mut(read_bytes) {
            let result = decoder.feed(read, limits, &mut |e| {
                events.push(own(e));
                ControlFlow::Continue(())
            });
            if result.is_err() {
                return (events, result, capacities);
            }
            let joining = decoder.partial.as_deref().and_then(|p| p.message.as_ref());
            capacities.extend(joining.map(|m| m.payload.capacity()));
        }
        (events, Ok(()), capacities)
    }

    /// `payload` as a message in `fragment_bytes` frames (the first Text or
    /// Binary, then continuations), as Autobahn 9.3 and 9.4 send it.
    fn in_fragments(opcode: u8, payload: &[u8], fragment_bytes: usize) -> Vec<u8> {
        let chunks: Vec<&[u8]> = payload.chunks(fragment_bytes).collect();
        let mut data = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let op = if i == 0 { opcode } else { 0 };
            data.extend(client_frame(i + 1 == chunks.len(), op, chunk));
        }
        data
    }

    #[test]
    fn fragment_cap_is_the_configured_one() {
        // Autobahn 9.3.1's shape, scaled to 1 MiB: 64-byte fragments, 16,384 frames.
        let text = vec![b'*'; 1 << 20];
        let data = in_fragments(1, &text, 64);
        let frames = text.len() / 64;
        let limits = Limits {
            message_bytes_max: text.len(),
            message_fragments_max: frames,
        };
        let (events, result, _) = decode_in_reads(&data, 64 * 1024, &limits);
        assert_eq!(result, Ok(()));
        assert_eq!(events.len(), 1);
        assert!(matches!(&events[0], Owned::Text(t) if t.len() == text.len()));
        // One frame fewer allowed: refused at the last frame's header.
        let tight = Limits {
            message_fragments_max: frames - 1,
            ..limits
        };
        let (events, result, _) = decode_in_reads(&data, 64 * 1024, &tight);
        assert!(events.is_empty());
        assert_eq!(
            result,
            Err(Error::TooManyFragments {
                max_fragments: frames - 1
            })
        );
        // A cap of 1 refuses every fragmented message and nothing else.
        let single = Limits {
            message_fragments_max: 1,
            ..LIMITS
        };
        assert_eq!(
            decode_in_reads(&client_frame(true, 2, b"whole"), 3, &single).1,
            Ok(())
        );
        assert_eq!(
            decode_in_reads(&in_fragments(2, b"split", 3), 64, &single).1,
            Err(Error::TooManyFragments { max_fragments: 1 })
        );
    }

    #[test]
    fn joining_many_fragments_grows_the_buffer_a_logarithmic_number_of_times() {
        // One read per frame, so every capacity the buffer takes is seen: 16,384
        // fragments must not mean 16,384 reallocations and copies (a quadratic
        // join), only a doubling now and then.
        let binary = vec![0xfe; 1 << 20];
        let data = in_fragments(2, &binary, 64);
        let limits = Limits {
            message_bytes_max: binary.len(),
            message_fragments_max: binary.len() / 64,
        };
        let (events, result, capacities) = decode_in_reads(&data, 64 + 6, &limits);
        assert_eq!(result, Ok(()));
        assert_eq!(events, vec![Owned::Binary(binary)]);
        let mut growths = capacities.clone();
        growths.dedup();
        assert!(growths.len() <= 20, "{} capacities", growths.len());
    }

    #[test]
    fn joined_message_capacity_stays_within_the_limit() {
        // A limit that is not a power of two, and reads that do not line up with
        // it: Vec's own doubling passes it (111,888 bytes for the single frame
        // below, without the cap in `Message::append`).
        let limits = Limits {
            message_bytes_max: 100_000,
            ..LIMITS
        };
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        // One frame over many reads (the frame-in-progress path) and many
        // fragments in few reads (the whole-frame path).
        for (data, read_bytes) in [
            (client_frame(true, 2, &payload), 7_000),
            (in_fragments(2, &payload, 1_000), 7_000),
            (in_fragments(2, &payload, 1_000), 64 * 1024),
        ] {
            let (events, result, capacities) = decode_in_reads(&data, read_bytes, &limits);
            assert_eq!(result, Ok(()));
            assert_eq!(events, vec![Owned::Binary(payload.clone())]);
            let most = capacities.iter().max().copied().unwrap_or(0);
            assert!(
                most <= limits.message_bytes_max,
                "capacity {most} over the {}-byte limit",
                limits.message_bytes_max
            );
        }
    }

    #[test]
    fn rejects_oversized_messages_before_buffering() {
        let limits = Limits {
            message_bytes_max: 10,
            ..LIMITS
        };
        // Only the header of an 11-byte frame arrives: refused already.
        let frame = client_frame(true, 2, &[0u8; 11]);
        let (_, result) = decode_split(&frame[..6], &[], &limits);
        assert_eq!(
            result,
            Err(Error::TooBig {
                len_bytes: 11,
                max_bytes: 10
            })
        );
        // Exactly at the limit is fine.
        let frame = client_frame(true, 2, &[0u8; 10]);
        assert_eq!(decode_split(&frame, &[], &limits).1, Ok(()));
        // The sum of fragments counts.
        let mut data = client_frame(false, 1, b"123456");
        data.extend(client_frame(true, 0, b"12345"));
        let (events, result) = decode_split(&data, &[], &limits);
        assert!(events.is_empty());
        assert_eq!(
            result,
            Err(Error::TooBig {
                len_bytes: 11,
                max_bytes: 10
            })
        );
        assert_eq!(result.unwrap_err().close_code(), 1009);
        // Control frames are bounded by 125 bytes, not by the message limit.
        let ping = client_frame(true, 9, &[1u8; 100]);
        assert_eq!(decode_split(&ping, &[50], &limits).1, Ok(()));
        // A huge 64-bit length without the high bit.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        huge.extend_from_slice(&MASK);
        assert!(matches!(
            decode_split(&huge, &[], &limits).1,
            Err(Error::TooBig { .. })
        ));
    }

    #[test]
    fn rejects_64_bit_length_with_high_bit() {
        let mut data = vec![0x82, 0x80 | 127];
        data.extend_from_slice(&(1u64 << 63).to_be_bytes());
        data.extend_from_slice(&MASK);
        assert_eq!(decode_err(&data), Error::LengthHighBit);
        // Detected as soon as the first length byte arrives.
        assert_eq!(decode(&data[..3]).1, Err(Error::LengthHighBit));
        assert_eq!(Error::LengthHighBit.close_code(), 1002);
    }

    #[test]
    fn rejects_invalid_utf8_text() {
        assert_eq!(
            decode_err(&client_frame(true, 1, &[b'a', 0xFF])),
            Error::InvalidUtf8
        );
        // A char cut off by the end of the message.
        assert_eq!(
            decode_err(&client_frame(true, 1, &[0xE2, 0x98])),
            Error::InvalidUtf8
        );
        let mut data = client_frame(false, 1, &[0xE2, 0x98]);
        data.extend(client_frame(true, 0, b""));
        assert_eq!(decode_err(&data), Error::InvalidUtf8);
        assert_eq!(Error::InvalidUtf8.close_code(), 1007);
        // Binary is not checked.
        assert_eq!(decode(&client_frame(true, 2, &[0xFF])).1, Ok(()));
    }

    #[test]
    fn four_byte_char_split_across_fragments() {
        let clef = "𝄞".as_bytes(); // F0 9D 84 9E
        for cut in 1..4 {
            let mut data = client_frame(false, 1, &clef[..cut]);
            data.extend(client_frame(true, 9, b"ping"));
            data.extend(client_frame(true, 0, &clef[cut..]));
            let (events, result) = decode(&data);
            assert_eq!(result, Ok(()), "cut {cut}");
            assert_eq!(
                events,
                vec![Owned::Ping(b"ping".to_vec()), Owned::Text("𝄞".into())]
            );
            // Also byte by byte.
            let every: Vec<usize> = (1..data.len()).collect();
            assert_eq!(decode_split(&data, &every, &LIMITS).0.len(), 2);
        }
        // Three fragments, one byte of the char in the middle one.
        let mut data = client_frame(false, 1, &clef[..1]);
        data.extend(client_frame(false, 0, &clef[1..2]));
        data.extend(client_frame(true, 0, &clef[2..]));
        assert_eq!(decode(&data).0, vec![Owned::Text("𝄞".into())]);
    }

    #[test]
    fn invalid_utf8_fails_before_the_message_ends() {
        // The first fragment holds an invalid byte; the last never arrives.
        let data = client_frame(false, 1, &[b'o', b'k', 0xC0, 0x80]);
        assert_eq!(decode(&data).1, Err(Error::InvalidUtf8));
        // A bad continuation byte after a valid lead in the next fragment.
        let mut data = client_frame(false, 1, &[0xF0]);
        data.extend(client_frame(false, 0, &[0x41]));
        assert_eq!(decode(&data).1, Err(Error::InvalidUtf8));
        // Within one frame that is still arriving: the invalid byte is in
        // the first half, the rest of the payload never comes.
        let mut payload = vec![b'a'; 200];
        payload[10] = 0xFF;
        let frame = client_frame(true, 1, &payload);
        assert_eq!(decode(&frame[..40]).1, Err(Error::InvalidUtf8));
        // An invalid lead pair (E0 followed by 80 is overlong) fails at byte two.
        let frame = client_frame(true, 1, &[0xE0, 0x80, 0x80, b'x', b'y']);
        assert_eq!(decode(&frame[..10]).1, Err(Error::InvalidUtf8));
    }

    #[test]
    fn close_payload_rules() {
        assert_eq!(
            decode(&client_frame(true, 8, b"")).0,
            vec![Owned::Close(None)]
        );
        assert_eq!(
            decode_err(&client_frame(true, 8, &[0x03])),
            Error::CloseTruncated
        );
        assert_eq!(Error::CloseTruncated.close_code(), 1002);
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 2000, 5000] {
            let data = client_frame(true, 8, &code.to_be_bytes());
            assert_eq!(decode_err(&data), Error::InvalidCloseCode(code));
            assert_eq!(Error::InvalidCloseCode(code).close_code(), 1002);
        }
        let data = client_frame(true, 8, &[0x03, 0xE8, 0xFF]);
        assert_eq!(decode_err(&data), Error::InvalidUtf8);
        let data = client_frame(true, 8, &[0x0F, 0xA0]);
        assert_eq!(
            decode(&data).0,
            vec![Owned::Close(Some((4000, String::new())))]
        );
    }

    #[test]
    fn error_display_is_words() {
        assert_eq!(Error::Unmasked.to_string(), "client frame not masked");
        assert_eq!(
            Error::TooBig {
                len_bytes: 11,
                max_bytes: 10
            }
            .to_string(),
            "message of 11 bytes over the 10-byte limit"
        );
        assert_eq!(
            Error::TooManyFragments {
                max_fragments: 1024
            }
            .to_string(),
            "message in more than 1024 fragments"
        );
    }

    /// xorshift64*: a tiny seeded PRNG so the fuzz test is reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A sequence of mostly well-formed client frames (fragments in a valid
    /// order, sizes around the fuzz limit), to be mutated.
    fn plausible_stream(rng: &mut Rng) -> Vec<u8> {
        let mut data = Vec::new();
        let mut in_message = false;
        for _ in 0..rng.below(6) + 1 {
            let control = rng.below(4) == 0;
            let opcode = match (control, in_message) {
                (true, _) => [8u8, 9, 10][rng.below(3)],
                (false, true) => 0,
                (false, false) => [1u8, 2][rng.below(2)],
            };
            let fin = control || rng.below(2) == 0;
            if !control {
                in_message = !fin;
            }
            let len = [0, 1, 3, 10, 20, 40, 70][rng.below(7)];
            let payload: Vec<u8> = match rng.below(3) {
                0 => (0..len).map(|_| rng.next() as u8).collect(),
                1 => "aé☃𝄞".bytes().cycle().take(len).collect(),
                _ => {
                    let mut p = vec![0x03, 0xE8];
                    p.extend((0..len).map(|_| b'r'));
                    p
                }
            };
            let mask = (rng.next() as u32).to_be_bytes();
            let form = [0u8, 0, 0, 0, 2, 8][rng.below(6)];
            let form = if payload.len() > 125 && form == 0 {
                2
            } else {
                form
            };
            data.extend(client_frame_with(
                if fin { 0x80 } else { 0 } | opcode,
                &payload,
                mask,
                form,
            ));
        }
        data
    }

    #[test]
    fn fuzz_one_on_seeded_random_and_mutated_inputs() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..20_000 {
            let data = match round % 4 {
                0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
                1 => plausible_stream(&mut rng),
                _ => {
                    let mut data = plausible_stream(&mut rng);
                    for _ in 0..rng.below(3) + 1 {
                        if data.is_empty() {
                            break;
                        }
                        let at = rng.below(data.len());
                        match rng.below(3) {
                            0 => data[at] ^= 1 << rng.below(8),
                            1 => data[at] = rng.next() as u8,
                            _ => data.truncate(at),
                        }
                    }
                    data
                }
            };
            fuzz_one(&data);
        }
    }
}
