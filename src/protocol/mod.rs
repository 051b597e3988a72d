//! The client protocol seam: what a connection speaks (`Codec`) and the trait every codec
//! implements (`ClientCodec`: decode a client message into a protocol-neutral op; encode a
//! message, a reply, an error, a recovery marker), plus the one check of room and user
//! names. What an op does is `services::ops`'s business, whatever codec carried it.
//!
//! `native` is volley's JSON protocol (docs/PROTOCOL.md); `Codec::Raw` connections are
//! push-only and receive bare payloads; `socketio` holds the Engine.IO / Socket.IO packet
//! codecs. Routing (`hub`) never looks inside a message: it asks the connection's codec for
//! a frame, once per codec per delivery. Sans-IO; used by `hub`, `services`, `front`, `api`.

pub mod native;
pub mod ops;
pub mod socketio;

use bytes::Bytes;

pub use crate::conn::Inbound;
use crate::envelope::{PayloadKind, Target};
use crate::ws::frame::{self, OpCode};
pub use ops::{ClientOp, ErrorCode, OpError, Ref, Request, Since};

/// What a connection speaks, chosen at upgrade (`?protocol=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// volley's JSON protocol: ops in, `message`/`reply` objects out.
    Native,
    /// Push-only: every message arrives as its bare payload; client messages are ignored.
    Raw,
    /// A socket.io client (Engine.IO over WebSocket or polling); pushes go out on the
    /// interned namespace this names (`socketio::namespace_name`), the first the client
    /// connected to. Its client packets go to `services::socketio`, not `decode`.
    SocketIo(u8),
}

impl Codec {
    /// Number of codecs: the size of a delivery's frame cache.
    pub const COUNT: usize = 2 + socketio::NAMESPACES_MAX;

    /// This codec's slot in a frame cache, `0..COUNT`.
    pub const fn index(self) -> usize {
        match self {
            Codec::Native => 0,
            Codec::Raw => 1,
            Codec::SocketIo(nsp) => 2 + nsp as usize % socketio::NAMESPACES_MAX,
        }
    }

    /// The codec's implementation.
    pub fn get(self) -> &'static dyn ClientCodec {
        match self {
            Codec::Native => &native::Native,
            Codec::Raw => &Raw,
            Codec::SocketIo(nsp) => socketio::codec::for_namespace(nsp),
        }
    }

    pub fn parse(value: Option<&str>) -> Result<Codec, String> {
        match value {
            None | Some("json") | Some("native") => Ok(Codec::Native),
            Some("raw") => Ok(Codec::Raw),
            Some(other) => Err(format!(
                "protocol={other}: use protocol=json (default) or protocol=raw"
            )),
        }
    }
}

/// A published message as every codec sees it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub channel: &'a Target,
    /// The channel sequence number; None for messages from foreign publishers.
    pub seq: Option<u64>,
    /// The epoch of the channel's numbering `seq` belongs to.
    pub epoch: Option<u64>,
    pub id: &'a str,
    /// `user:<id>` of a publishing client; None for the HTTP API.
    pub from: Option<&'a str>,
    /// The event name the publisher gave; None for the default (`message`).
    pub event: Option<&'a str>,
    pub kind: PayloadKind,
    pub payload: &'a [u8],
}

/// The end of one channel's recovery, as the client is told.
#[derive(Debug, Clone, Copy)]
pub struct Recovered<'a> {
    pub channel: &'a Target,
    /// True only when every message after the client's seq was replayed.
    pub recovered: bool,
    pub replayed: usize,
    /// The channel's seq the client is now at, in `epoch`.
    pub seq: u64,
    pub epoch: Option<u64>,
    /// Why the history could not be read, when it could not.
    pub error: Option<&'a str>,
    /// Why it is not a recovery although history was read (the numbering restarted, the
    /// client's seq is ahead of the channel, the gap is older than the history).
    pub reason: Option<&'a str>,
}

/// Limits a decoded op must respect, from `Config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpLimits {
    pub name_bytes_max: usize,
    pub data_bytes_max: usize,
}

/// What a codec made of one client message.
#[derive(Debug)]
pub enum Decoded {
    /// Nothing to do (a push-only codec, or a codec-level message it answered itself).
    Ignored,
    Op(Request),
    /// Not an acceptable op: answered with the error and counted as a strike.
    Refused(OpError),
    /// A codec-level message the codec answers itself (native `ping`): send this frame
    /// back; no op, no strike.
    Reply(Bytes),
}

/// A client protocol. Encoders are called once per delivery per codec (their frame is
/// shared by every recipient), so they may allocate; decoders see each client message.
pub trait ClientCodec {
    /// A published message as one complete WebSocket frame.
    fn message(&self, message: &Message<'_>) -> Bytes;
    /// Decodes one client data message.
    fn decode(&self, inbound: &Inbound, limits: &OpLimits) -> Decoded;
    /// The success reply to an op, if this codec sends one.
    fn reply_ok(
        &self,
        reference: Option<&Ref>,
        result: Option<&serde_json::Value>,
    ) -> Option<Bytes>;
    /// The error reply to an op, if this codec sends one.
    fn reply_err(&self, error: &OpError) -> Option<Bytes>;
    /// The marker that ends a channel's recovery, if this codec sends one.
    fn recovered(&self, recovered: &Recovered<'_>) -> Option<Bytes>;
    /// An event the application emits to this client through its hook (`args` a JSON
    /// array), if this codec carries events.
    fn event(&self, _name: &str, _args: &serde_json::Value) -> Option<Bytes> {
        None
    }
}

/// The push-only codec: bare payloads, text (RFC 6455 §5.6 requires UTF-8) or binary.
pub struct Raw;

impl ClientCodec for Raw {
    fn message(&self, message: &Message<'_>) -> Bytes {
        let opcode = match message.kind {
            PayloadKind::Binary => OpCode::Binary,
            PayloadKind::Text | PayloadKind::Json => OpCode::Text,
        };
        frame::encode(opcode, message.payload)
    }

    fn decode(&self, _: &Inbound, _: &OpLimits) -> Decoded {
        // Push-only connections: client messages are counted, not interpreted.
        Decoded::Ignored
    }

    fn reply_ok(&self, _: Option<&Ref>, _: Option<&serde_json::Value>) -> Option<Bytes> {
        None
    }

    fn reply_err(&self, _: &OpError) -> Option<Bytes> {
        None
    }

    fn recovered(&self, _: &Recovered<'_>) -> Option<Bytes> {
        None
    }
}

/// Why a room or user name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong { bytes: usize, max: usize },
    Control,
}

impl NameError {
    /// The op error code: too long is `too_large`, the rest `bad_field`.
    pub fn code(self) -> ErrorCode {
        match self {
            NameError::TooLong { .. } => ErrorCode::TooLarge,
            NameError::Empty | NameError::Control => ErrorCode::BadField,
        }
    }

    /// Words for a human, naming what was checked (`room name`, `` `room` ``).
    pub fn message(self, what: &str) -> String {
        match self {
            NameError::Empty => format!("{what} must not be empty"),
            NameError::TooLong { bytes, max } => {
                format!("{what} is {bytes} bytes; the limit is {max} bytes")
            }
            NameError::Control => format!("{what} must not contain control characters"),
        }
    }
}

/// The one check of a room or user name: non-empty, at most `max` bytes, no control
/// characters (docs/PROTOCOL.md, "Names").
pub fn check_name(name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            bytes: name.len(),
            max,
        });
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_and_names() {
        assert_eq!(Codec::parse(None), Ok(Codec::Native));
        assert_eq!(Codec::parse(Some("raw")), Ok(Codec::Raw));
        assert!(Codec::parse(Some("xml"))
            .unwrap_err()
            .contains("protocol=xml"));
        assert!(check_name("lobby", 8).is_ok());
        assert_eq!(check_name("", 8), Err(NameError::Empty));
        assert_eq!(
            check_name("much too long", 8),
            Err(NameError::TooLong { bytes: 13, max: 8 })
        );
        assert_eq!(check_name("a\nb", 8), Err(NameError::Control));
        assert_eq!(NameError::Empty.code(), ErrorCode::BadField);
        assert_eq!(
            NameError::TooLong { bytes: 9, max: 8 }.code(),
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn every_codec_has_its_own_cache_slot() {
        let mut codecs = vec![Codec::Native, Codec::Raw];
        codecs.extend((0..socketio::NAMESPACES_MAX as u8).map(Codec::SocketIo));
        let slots: std::collections::HashSet<usize> = codecs.iter().map(|c| c.index()).collect();
        assert_eq!(slots.len(), Codec::COUNT);
        assert!(slots.iter().all(|&s| s < Codec::COUNT));
    }

    #[test]
    fn raw_frames_are_text_for_utf8_kinds_and_binary_otherwise() {
        let message = |kind, payload: &'static [u8]| Message {
            channel: &Target::All,
            seq: Some(1),
            epoch: None,
            id: "n-0-1",
            from: None,
            event: None,
            kind,
            payload,
        };
        assert_eq!(Raw.message(&message(PayloadKind::Text, b"hi"))[0], 0x81);
        assert_eq!(Raw.message(&message(PayloadKind::Json, b"1"))[0], 0x81);
        assert_eq!(Raw.message(&message(PayloadKind::Binary, &[0xff]))[0], 0x82);
        assert_eq!(&Raw.message(&message(PayloadKind::Text, b"hi"))[2..], b"hi");
    }
}
