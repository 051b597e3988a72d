//! The client protocol seam: what a connection speaks (`Codec`), the trait every codec
//! implements (`ClientCodec`: decode a client message into a protocol-neutral op; encode a
//! message, a reply, an error, a recovery marker), who a connection is (`Session`), and
//! [`dispatch`], the one place client ops are acted on, whatever codec carried them.
//!
//! `native` is volley's JSON protocol (docs/PROTOCOL.md); `Codec::Raw` connections are
//! push-only and receive bare payloads. Routing (`hub`) never looks inside a message: it
//! asks the connection's codec for a frame, once per codec per delivery.
//!
//! Called by `shard` after a connection's poll (outside any slab borrow, so an op may touch
//! the index, other connections and start publishes), and by `front` at upgrade.

pub mod native;
pub mod ops;
pub mod socketio;

use std::rc::Rc;

use bytes::Bytes;

use crate::auth::Claims;
use crate::config::CLIENT_STRIKES_MAX;
use crate::conn::ConnKey;
use crate::envelope::{PayloadKind, Target};
use crate::metrics::Metrics;
use crate::services::{Refusal, Services};
use crate::ws::frame::{self, close_code, OpCode};
pub use ops::{ClientOp, ErrorCode, OpError, Ref, Request};

/// What a connection speaks, chosen at upgrade (`?protocol=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// volley's JSON protocol: ops in, `message`/`reply` objects out.
    Native,
    /// Push-only: every message arrives as its bare payload; client messages are ignored.
    Raw,
}

impl Codec {
    /// Number of codecs: the size of a delivery's frame cache.
    pub const COUNT: usize = 2;

    /// This codec's slot in a frame cache, `0..COUNT`.
    pub const fn index(self) -> usize {
        match self {
            Codec::Native => 0,
            Codec::Raw => 1,
        }
    }

    /// The codec's implementation.
    pub fn get(self) -> &'static dyn ClientCodec {
        match self {
            Codec::Native => &native::Native,
            Codec::Raw => &Raw,
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
    pub id: &'a str,
    /// `user:<id>` of a publishing client; None for the HTTP API.
    pub from: Option<&'a str>,
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
    /// The channel's seq the client is now at.
    pub seq: u64,
    /// Why the history could not be read, when it could not.
    pub error: Option<&'a str>,
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

/// A token bucket in thousandths of a token, refilled from a millisecond clock.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens_milli: u32,
    last_ms: u32,
}

impl TokenBucket {
    pub fn full(burst: u32) -> TokenBucket {
        TokenBucket {
            tokens_milli: burst.saturating_mul(1000),
            last_ms: 0,
        }
    }

    /// Takes one token at `now_ms` if there is one.
    pub fn take(&mut self, now_ms: u32, rate_per_s: u32, burst: u32) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = now_ms;
        let refill = (elapsed as u64 * rate_per_s as u64).min(u32::MAX as u64) as u32;
        self.tokens_milli = self
            .tokens_milli
            .saturating_add(refill)
            .min(burst.saturating_mul(1000));
        if self.tokens_milli >= 1000 {
            self.tokens_milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// Who a connection is and what it may do; lives in the connection's slab entry.
#[derive(Debug)]
pub struct Session {
    pub codec: Codec,
    /// The user id (from the token's `sub`, or `?user=` in open mode); None = anonymous.
    pub user: Option<Rc<str>>,
    /// The token's permissions; None in open mode, where everything is allowed.
    pub claims: Option<Rc<Claims>>,
    /// Protocol errors so far; past `CLIENT_STRIKES_MAX` the client is closed with 1008.
    pub strikes: u8,
    pub publish_bucket: TokenBucket,
    /// Channels being recovered (replay under way, or a short grace after it); None for
    /// almost every connection, so it costs one pointer.
    pub recovering: Option<Box<crate::hub::recovery::Recovering>>,
}

impl Session {
    pub fn new(
        codec: Codec,
        user: Option<Rc<str>>,
        claims: Option<Rc<Claims>>,
        burst: u32,
    ) -> Session {
        Session {
            codec,
            user,
            claims,
            strikes: 0,
            publish_bucket: TokenBucket::full(burst),
            recovering: None,
        }
    }

    /// The `from` of messages this connection publishes: `user:<id>`, or None if anonymous.
    pub fn from(&self) -> Option<String> {
        self.user.as_ref().map(|u| format!("user:{u}"))
    }
}

/// A client data message handed up by `conn`, owned so it outlives the read buffer.
#[derive(Debug)]
pub enum Inbound {
    Text(Box<str>),
    Binary(usize),
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

/// Handles every data message one connection sent in one read.
pub fn dispatch(svc: &Rc<Services>, key: ConnKey, inbound: Vec<Inbound>) {
    let limits = OpLimits {
        name_bytes_max: svc.ctx.config.name_bytes_max,
        data_bytes_max: svc.ctx.config.message_bytes_max,
    };
    for message in inbound {
        Metrics::inc(&svc.ctx.metrics.messages_received_total);
        let Some(codec) = svc.hub.codec(key) else {
            return;
        };
        match codec.get().decode(&message, &limits) {
            Decoded::Ignored => {}
            Decoded::Op(request) => handle(svc, key, request),
            Decoded::Refused(error) => reply_error(svc, key, error),
        }
    }
}

/// Sends an error reply and counts a strike; too many strikes close the client with 1008.
pub fn reply_error(svc: &Services, key: ConnKey, error: OpError) {
    let Some((codec, strikes)) = svc.hub.with_session(key, |s| {
        s.strikes = s.strikes.saturating_add(1);
        (s.codec, s.strikes)
    }) else {
        return;
    };
    if let Some(frame) = codec.get().reply_err(&error) {
        svc.hub.send(key, frame);
    }
    if strikes > CLIENT_STRIKES_MAX {
        svc.hub
            .close(key, close_code::POLICY, "too many protocol errors");
    }
}

/// Sends a success reply, if the connection's codec sends one.
pub fn reply_ok(
    svc: &Services,
    key: ConnKey,
    reference: Option<&Ref>,
    result: Option<&serde_json::Value>,
) {
    let Some(codec) = svc.hub.codec(key) else {
        return;
    };
    if let Some(frame) = codec.get().reply_ok(reference, result) {
        svc.hub.send(key, frame);
    }
}

fn refuse(svc: &Services, key: ConnKey, reference: Option<Ref>, (code, message): Refusal) {
    reply_error(
        svc,
        key,
        OpError {
            reference,
            code,
            message,
        },
    );
}

/// Acts on one client op: the same for every codec.
pub fn handle(svc: &Rc<Services>, key: ConnKey, request: Request) {
    let reference = request.reference;
    match request.op {
        ClientOp::Join { room, since } => match svc.join_room(key, &room) {
            Ok(()) => {
                if let Some(since) = since {
                    // Joined and held back in one step: the replay then the live stream,
                    // with no gap and no duplicate between them.
                    svc.start_recovery(key, vec![(Target::Room(room.clone()), since)], false);
                }
                // In cluster mode the reply waits until this shard's subscription to the
                // room is confirmed by Redis, so "ok" means the next message arrives.
                svc.reply_when_subscribed(key, reference, format!("room:{room}"));
            }
            Err(refusal) => refuse(svc, key, reference, refusal),
        },
        ClientOp::Recover { target, since } => {
            if let Err(refusal) = svc.may_recover(key, &target) {
                refuse(svc, key, reference, refusal);
                return;
            }
            svc.start_recovery(key, vec![(target, since)], false);
            reply_ok(svc, key, reference.as_ref(), None);
        }
        ClientOp::Leave { room } => match svc.leave_room(key, &room) {
            Ok(()) => reply_ok(svc, key, reference.as_ref(), None),
            Err(refusal) => refuse(svc, key, reference, refusal),
        },
        ClientOp::Ack { target, seq } => {
            if svc.ack(key, &target, seq) {
                reply_ok(svc, key, reference.as_ref(), None);
            } else {
                let message = format!("no recent message {seq} on {target} to acknowledge");
                refuse(svc, key, reference, (ErrorCode::NotFound, message));
            }
        }
        ClientOp::Publish { target, data } => {
            if let Err(refusal) = svc.may_publish(key, &target) {
                refuse(svc, key, reference, refusal);
                return;
            }
            svc.client_publish(key, reference, target, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let mut bucket = TokenBucket::full(3);
        assert!((0..3).all(|_| bucket.take(0, 2, 3)));
        assert!(!bucket.take(0, 2, 3));
        assert!(bucket.take(500, 2, 3), "2/s refills one token in 500 ms");
        assert!(!bucket.take(500, 2, 3));
        assert!(bucket.take(10_000, 2, 3));
        assert!(bucket.take(10_000, 2, 3));
        assert!(bucket.take(10_000, 2, 3));
        assert!(!bucket.take(10_000, 2, 3), "never more than the burst");
    }

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
        let slots: std::collections::HashSet<usize> = [Codec::Native, Codec::Raw]
            .iter()
            .map(|c| c.index())
            .collect();
        assert_eq!(slots.len(), Codec::COUNT);
        assert!(slots.iter().all(|&s| s < Codec::COUNT));
    }

    #[test]
    fn raw_frames_are_text_for_utf8_kinds_and_binary_otherwise() {
        let message = |kind, payload: &'static [u8]| Message {
            channel: &Target::All,
            seq: Some(1),
            id: "n-0-1",
            from: None,
            kind,
            payload,
        };
        assert_eq!(Raw.message(&message(PayloadKind::Text, b"hi"))[0], 0x81);
        assert_eq!(Raw.message(&message(PayloadKind::Json, b"1"))[0], 0x81);
        assert_eq!(Raw.message(&message(PayloadKind::Binary, &[0xff]))[0], 0x82);
        assert_eq!(&Raw.message(&message(PayloadKind::Text, b"hi"))[2..], b"hi");
    }
}
