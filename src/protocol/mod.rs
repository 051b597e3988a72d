//! The client protocol boundary: what a connection speaks (`Codec`), who it is (`Session`),
//! and the one dispatch function every client data message goes through.
//!
//! `native` is volley's JSON protocol (docs/PROTOCOL.md); `Codec::Raw` connections are
//! push-only and receive bare payloads. A second codec (socket.io) will sit beside `native`;
//! routing (`index`, `fanout`) never looks inside a message.
//!
//! Called by `shard` after a connection's poll, outside any slab borrow, so handling an op
//! may touch the index, other connections and spawn publishes.

pub mod native;
pub mod socketio;

use std::rc::Rc;

use bytes::Bytes;

use crate::auth::Claims;
use crate::config::CLIENT_STRIKES_MAX;
use crate::conn::ConnKey;
use crate::envelope::Target;
use crate::metrics::Metrics;
use crate::shard::Shard;
use crate::ws::frame::close_code;
use native::{ErrorCode, Op, Ref};

/// What a connection speaks, chosen at upgrade (`?protocol=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// volley's JSON protocol: ops in, `message`/`reply` objects out.
    Native,
    /// Push-only: every message arrives as its bare payload; client messages are ignored.
    Raw,
}

impl Codec {
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
    pub recovering: Option<Box<crate::recovery::Recovering>>,
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

/// Checks a room or user name: non-empty, short, no control characters.
pub fn check_name(kind: &str, name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} name is empty"));
    }
    if name.len() > max {
        return Err(format!(
            "{kind} name is {} bytes; at most {max}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{kind} name contains control characters"));
    }
    Ok(())
}

/// Handles every data message one connection sent in one read.
pub fn dispatch(shard: &Rc<Shard>, key: ConnKey, inbound: Vec<Inbound>) {
    for message in inbound {
        Metrics::inc(&shard.metrics.messages_received_total);
        let Some(codec) = shard.session_codec(key) else {
            return;
        };
        if codec == Codec::Raw {
            // Push-only connections: client messages are counted, not interpreted.
            continue;
        }
        match message {
            Inbound::Text(text) => handle_text(shard, key, &text),
            Inbound::Binary(_) => reply_error(
                shard,
                key,
                None,
                ErrorCode::BadJson,
                "binary frames are not ops; send JSON text (docs/PROTOCOL.md)",
            ),
        }
    }
}

/// Sends an error reply and counts a strike; too many strikes close the client with 1008.
pub fn reply_error(
    shard: &Rc<Shard>,
    key: ConnKey,
    reference: Option<&Ref>,
    code: ErrorCode,
    message: &str,
) {
    let strikes = shard.with_session(key, |s| {
        s.strikes = s.strikes.saturating_add(1);
        s.strikes
    });
    shard.send_to_conn(key, native::encode_reply_err(reference, code, message));
    if strikes.is_some_and(|n| n > CLIENT_STRIKES_MAX) {
        shard.close_conn(key, close_code::POLICY, "too many protocol errors");
    }
}

pub fn reply_ok(
    shard: &Rc<Shard>,
    key: ConnKey,
    reference: Option<&Ref>,
    result: Option<&serde_json::Value>,
) {
    if reference.is_some() || result.is_some() {
        shard.send_to_conn(key, native::encode_reply_ok(reference, result));
    }
}

fn handle_text(shard: &Rc<Shard>, key: ConnKey, text: &str) {
    let limits = native::Limits {
        name_bytes_max: shard.config.name_bytes_max,
        data_bytes_max: shard.config.message_bytes_max,
    };
    let request = match native::decode_op(text, &limits) {
        Ok(request) => request,
        Err(e) => {
            reply_error(shard, key, e.reference.as_ref(), e.code, &e.message);
            return;
        }
    };
    let reference = request.reference;
    match request.op {
        Op::Join { room, since } => match shard.join_room(key, &room) {
            Ok(()) => {
                if let Some(since) = since {
                    // Joined and held back in one step: the replay then the live stream,
                    // with no gap and no duplicate between them.
                    shard.start_recovery(key, vec![(Target::Room(room.to_string()), since)], false);
                }
                // In cluster mode the reply waits until this shard's subscription to the
                // room is confirmed by Redis, so "ok" means the next message arrives.
                shard.reply_when_subscribed(key, reference, &format!("room:{room}"));
            }
            Err((code, message)) => reply_error(shard, key, reference.as_ref(), code, &message),
        },
        Op::Recover { channel, since } => {
            let Some(target) = Target::parse(&channel) else {
                reply_error(
                    shard,
                    key,
                    reference.as_ref(),
                    ErrorCode::BadField,
                    "bad channel",
                );
                return;
            };
            if let Err((code, message)) = shard.may_recover(key, &target) {
                reply_error(shard, key, reference.as_ref(), code, &message);
                return;
            }
            shard.start_recovery(key, vec![(target, since)], false);
            reply_ok(shard, key, reference.as_ref(), None);
        }
        Op::Leave { room } => match shard.leave_room(key, &room) {
            Ok(()) => reply_ok(shard, key, reference.as_ref(), None),
            Err((code, message)) => reply_error(shard, key, reference.as_ref(), code, &message),
        },
        Op::Ack { channel, seq } => {
            let Some(target) = Target::parse(&channel) else {
                let message = format!("channel {channel:?} is not all, user:<id> or room:<name>");
                reply_error(
                    shard,
                    key,
                    reference.as_ref(),
                    ErrorCode::BadField,
                    &message,
                );
                return;
            };
            if shard.ack(key, &target, seq) {
                reply_ok(shard, key, reference.as_ref(), None);
            } else {
                let message = format!("no recent message {seq} on {channel} to acknowledge");
                reply_error(
                    shard,
                    key,
                    reference.as_ref(),
                    ErrorCode::NotFound,
                    &message,
                );
            }
        }
        Op::Publish { target, data } => {
            let target = match target {
                native::Target::Room(room) => Target::Room(room.to_string()),
                native::Target::User(user) => Target::User(user.to_string()),
            };
            if let Err((code, message)) = shard.may_publish(key, &target) {
                reply_error(shard, key, reference.as_ref(), code, &message);
                return;
            }
            let payload = Bytes::copy_from_slice(data.get().as_bytes());
            shard.spawn_client_publish(key, reference, target, payload);
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
        assert!(check_name("room", "lobby", 8).is_ok());
        assert!(check_name("room", "", 8).is_err());
        assert!(check_name("room", "much too long", 8).is_err());
        assert!(check_name("room", "a\nb", 8).is_err());
    }
}
