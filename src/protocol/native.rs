//! The native client protocol codec: JSON text frames, documented for client authors in
//! docs/PROTOCOL.md. Sans-IO: `decode_op` turns one client text message into a [`Request`],
//! [`Native`] (the `ClientCodec`) maps it onto a protocol-neutral `ClientOp` and encodes
//! messages, replies and recovery markers.
//!
//! Owns the wire format only: which ops exist, their field names, the checks on each field,
//! the JSON escaping of everything volley writes. It does not own what an op does (joining a
//! room, authorising a publish, rate limits): `protocol::handle` decides that.
//!
//! Called through `protocol::Codec::Native` by `protocol` (decode what a client sent),
//! `hub::frames` (one message frame per delivery, shared by every recipient) and
//! `services::recovery` (replayed messages and the `recovered` event).
//!
//! Decisions (also in docs/PROTOCOL.md):
//! - Unknown fields are ignored, so a newer client works with an older volley.
//! - A field given twice is `bad_json`: taking the first or the last would let two parsers
//!   on the path (a proxy and volley) see two different ops.
//! - Names (room, user) may contain ':'; a channel `room:a:b` splits on the first ':' only,
//!   so it names the room `a:b`.
//! - `data` is kept as the raw JSON text the client sent (never re-serialized) and counted in
//!   those bytes; it must be JSON that strict parsers accept too (no lone UTF-16 surrogate
//!   escapes), so every message volley sends parses everywhere.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

pub use super::ops::{ErrorCode, OpError, Ref};
use super::{ClientCodec, ClientOp, Decoded, Inbound, Message, OpLimits, Recovered, Since};
use crate::envelope::PayloadKind;
use crate::json;
use crate::ws::frame::{self, OpCode};

/// Longest string `ref`, in bytes: enough for a UUID with a prefix, small enough that an
/// echoed ref never dominates a reply.
pub const REF_BYTES_MAX: usize = 64;

/// Bytes of a server message besides its channel, id, from and data: the fixed keys and
/// punctuation, a 20-digit seq, a 16-digit epoch, and slack, so `message_json` allocates once.
const MESSAGE_OVERHEAD_BYTES: usize = 140;

/// Bytes of a reply besides its ref, result or message.
const REPLY_OVERHEAD_BYTES: usize = 96;

/// Limits the server applies to every op; checked values come from `Config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest room name or user id, in bytes (UTF-8, after JSON unescaping).
    pub name_bytes_max: usize,
    /// Longest `data` of a publish, in bytes of the JSON text as the client sent it.
    pub data_bytes_max: usize,
}

/// Who a client publish is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    Room(Cow<'a, str>),
    User(Cow<'a, str>),
}

/// A parsed channel name: `all`, `user:<id>` or `room:<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel<'a> {
    All,
    User(&'a str),
    Room(&'a str),
}

impl<'a> Channel<'a> {
    /// Splits on the first ':' only, so `room:a:b` is the room `a:b`. The name is not checked
    /// against [`Limits`] here; `decode_op` does that for acks.
    pub fn parse(text: &'a str) -> Option<Channel<'a>> {
        if text == "all" {
            return Some(Channel::All);
        }
        let (kind, name) = text.split_once(':')?;
        if name.is_empty() {
            return None;
        }
        match kind {
            "user" => Some(Channel::User(name)),
            "room" => Some(Channel::Room(name)),
            _ => None,
        }
    }
}

/// One client op. Strings borrow from the message text when it holds them without JSON
/// escapes (the common case) and are owned only when unescaping had to build a new string.
#[derive(Debug, Clone)]
pub enum Op<'a> {
    Join {
        room: Cow<'a, str>,
        /// Recovery: the last seq of the room the client saw; missed messages are replayed.
        since: Option<u64>,
        /// The epoch `since` belongs to (from the messages the client saw), if it sent one.
        epoch: Option<u64>,
    },
    Leave {
        room: Cow<'a, str>,
    },
    Publish {
        target: Target<'a>,
        /// The client's JSON exactly as sent; embed it with [`Payload::Json`].
        data: &'a RawValue,
        /// The event name recipients get it as (`envelope::event_name`: None is `message`).
        event: Option<String>,
    },
    Ack {
        /// `all`, `user:<id>` or `room:<name>`, checked; [`Channel::parse`] splits it.
        channel: Cow<'a, str>,
        seq: u64,
    },
    /// Replay what the client missed on a channel it already receives (`all`, its own
    /// `user:<id>`, or a room it is in) after `since`.
    Recover {
        channel: Cow<'a, str>,
        since: u64,
        epoch: Option<u64>,
    },
    /// An application-level keepalive (a habit from other libraries): answered at once
    /// with `{"type":"pong","ref":..}`, never a strike.
    Ping,
}

impl Ref {
    /// Reads a ref from its JSON text; `None` when it is not an integer in i64/u64 range or
    /// a string of at most [`REF_BYTES_MAX`] bytes.
    pub fn from_json(raw: &str) -> Option<Ref> {
        if raw.starts_with('"') {
            let text: String = serde_json::from_str(raw).ok()?;
            return (text.len() <= REF_BYTES_MAX).then_some(Ref::Str(text));
        }
        // JSON has no leading zeros or '+', and serde_json reads `-0`, fractions and
        // exponents as floats, so an integer that parses has one spelling: echoing it
        // writes back the very text the client sent.
        if let Ok(n) = serde_json::from_str::<i64>(raw) {
            return Some(Ref::Int(n));
        }
        serde_json::from_str::<u64>(raw).ok().map(Ref::UInt)
    }

    /// Appends the ref as JSON.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Ref::Int(n) => write_i64(out, *n),
            Ref::UInt(n) => write_u64(out, *n),
            Ref::Str(s) => write_json_str(out, s),
        }
    }

    fn json_len_max(&self) -> usize {
        match self {
            Ref::Int(_) | Ref::UInt(_) => 20,
            // Worst case: every byte a 6-byte \u00XX escape, plus quotes.
            Ref::Str(s) => 6 * s.len() + 2,
        }
    }
}

/// One decoded client op with its ref.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub reference: Option<Ref>,
    pub op: Op<'a>,
}

// ---------------------------------------------------------------------------------------
// Decoding client ops.

/// The known fields of an op, each as the raw JSON the client sent. Filled while serde
/// walks the object, so what was read before a syntax error (the ref) survives it.
#[derive(Default)]
struct Fields<'a> {
    op: Option<&'a RawValue>,
    reference: Option<&'a RawValue>,
    room: Option<&'a RawValue>,
    user: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    channel: Option<&'a RawValue>,
    seq: Option<&'a RawValue>,
    since: Option<&'a RawValue>,
    epoch: Option<&'a RawValue>,
    event: Option<&'a RawValue>,
}

/// A key of the op object; anything else is `Other` and skipped.
#[derive(Clone, Copy)]
enum Key {
    Op,
    Ref,
    Room,
    User,
    Data,
    Channel,
    Seq,
    Since,
    Epoch,
    Event,
    Other,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Op => "op",
            Key::Ref => "ref",
            Key::Room => "room",
            Key::User => "user",
            Key::Data => "data",
            Key::Channel => "channel",
            Key::Seq => "seq",
            Key::Since => "since",
            Key::Epoch => "epoch",
            Key::Event => "event",
            Key::Other => "?",
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "op" => Key::Op,
                    "ref" => Key::Ref,
                    "room" => Key::Room,
                    "user" => Key::User,
                    "data" => Key::Data,
                    "channel" => Key::Channel,
                    "seq" => Key::Seq,
                    "since" => Key::Since,
                    "epoch" => Key::Epoch,
                    "event" => Key::Event,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// Walks the op object into a `Fields` the caller owns.
struct FieldsSeed<'s, 'a>(&'s mut Fields<'a>);

impl<'de> DeserializeSeed<'de> for FieldsSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"an op object such as {"op":"join","room":"lobby"}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::Op => &mut self.0.op,
                Key::Ref => &mut self.0.reference,
                Key::Room => &mut self.0.room,
                Key::User => &mut self.0.user,
                Key::Data => &mut self.0.data,
                Key::Channel => &mut self.0.channel,
                Key::Seq => &mut self.0.seq,
                Key::Since => &mut self.0.since,
                Key::Epoch => &mut self.0.epoch,
                Key::Event => &mut self.0.event,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value: &'de RawValue = map.next_value()?;
            if slot.is_some() {
                return Err(de::Error::custom(format_args!(
                    "duplicate field `{}`",
                    key.name()
                )));
            }
            *slot = Some(value);
        }
        Ok(())
    }
}

/// A JSON string field, borrowed when it has no escapes.
fn json_str<'a>(raw: &'a RawValue, field: &str) -> Result<Cow<'a, str>, (ErrorCode, String)> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Err((
            ErrorCode::BadField,
            format!("`{field}` must be a string, not {text:.32}"),
        ));
    }
    // The parse succeeded, so `text` is a whole JSON string: at least two quote bytes.
    let inner = &text[1..text.len() - 1];
    if !inner.contains('\\') {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text)
        .map(Cow::Owned)
        .map_err(|e| {
            (
                ErrorCode::BadField,
                format!("`{field}` is not a valid string: {e}"),
            )
        })
}

/// At most `bytes_max` bytes of `s`, cut at a char boundary, for quoting client input in
/// an error message (`{:.N?}` does not truncate a `str`).
fn clip(s: &str, bytes_max: usize) -> &str {
    let mut end = s.len().min(bytes_max);
    while !s.is_char_boundary(end) {
        // `end` > 0 here: index 0 is always a char boundary.
        end -= 1;
    }
    &s[..end]
}

/// Checks a room name or user id.
fn check_name(name: &str, field: &str, limits: &Limits) -> Result<(), (ErrorCode, String)> {
    super::check_name(name, limits.name_bytes_max)
        .map_err(|e| (e.code(), e.message(&format!("`{field}`"))))
}

/// A required field, or the error that says it is missing.
fn required<'a>(
    raw: Option<&'a RawValue>,
    field: &str,
    op: &str,
) -> Result<&'a RawValue, (ErrorCode, String)> {
    raw.ok_or_else(|| (ErrorCode::BadField, format!("`{op}` needs `{field}`")))
}

/// A checked name field.
fn name_field<'a>(
    raw: Option<&'a RawValue>,
    field: &str,
    op: &str,
    limits: &Limits,
) -> Result<Cow<'a, str>, (ErrorCode, String)> {
    let name = json_str(required(raw, field, op)?, field)?;
    check_name(&name, field, limits)?;
    Ok(name)
}

/// The op from the known fields, once the object parsed and the ref is known.
fn build_op<'a>(fields: &Fields<'a>, limits: &Limits) -> Result<Op<'a>, (ErrorCode, String)> {
    let op = fields.op.ok_or((
        ErrorCode::BadField,
        "missing `op` (join, leave, publish or ack)".to_string(),
    ))?;
    let op = json_str(op, "op")?;
    match &*op {
        "join" => Ok(Op::Join {
            room: name_field(fields.room, "room", "join", limits)?,
            since: fields
                .since
                .map(|since| u64_field(since, "since"))
                .transpose()?,
            epoch: fields
                .epoch
                .map(|epoch| u64_field(epoch, "epoch"))
                .transpose()?,
        }),
        "leave" => Ok(Op::Leave {
            room: name_field(fields.room, "room", "leave", limits)?,
        }),
        "publish" => {
            let target = match (fields.room, fields.user) {
                (Some(_), None) => {
                    Target::Room(name_field(fields.room, "room", "publish", limits)?)
                }
                (None, Some(_)) => {
                    Target::User(name_field(fields.user, "user", "publish", limits)?)
                }
                _ => {
                    return Err((
                        ErrorCode::BadField,
                        "`publish` needs exactly one of `room` and `user`".to_string(),
                    ))
                }
            };
            let data = required(fields.data, "data", "publish")?;
            let data_bytes = data.get().len();
            if data_bytes > limits.data_bytes_max {
                return Err((
                    ErrorCode::TooLarge,
                    format!(
                        "`data` is {data_bytes} bytes; the limit is {} bytes",
                        limits.data_bytes_max
                    ),
                ));
            }
            json::is_strict(data.get())
                .map_err(|e| (ErrorCode::BadJson, format!("`data`: {e}")))?;
            let event = match fields.event {
                None => None,
                Some(raw) => crate::envelope::event_name(Some(&json_str(raw, "event")?))
                    .map_err(|e| (ErrorCode::BadField, e))?,
            };
            Ok(Op::Publish {
                target,
                data,
                event,
            })
        }
        "ack" => {
            let channel = channel_field(fields.channel, "ack", limits)?;
            let seq = u64_field(required(fields.seq, "seq", "ack")?, "seq")?;
            Ok(Op::Ack { channel, seq })
        }
        "recover" => {
            let channel = channel_field(fields.channel, "recover", limits)?;
            let since = u64_field(required(fields.since, "since", "recover")?, "since")?;
            let epoch = fields
                .epoch
                .map(|epoch| u64_field(epoch, "epoch"))
                .transpose()?;
            Ok(Op::Recover {
                channel,
                since,
                epoch,
            })
        }
        "ping" => Ok(Op::Ping),
        other => Err((
            ErrorCode::UnknownOp,
            format!(
                "unknown op {:?}; this server knows join, leave, publish, ack, recover and ping",
                clip(other, 64)
            ),
        )),
    }
}

/// A required `channel` field: `all`, `user:<id>` or `room:<name>`, names checked.
fn channel_field<'a>(
    raw: Option<&'a RawValue>,
    op: &str,
    limits: &Limits,
) -> Result<Cow<'a, str>, (ErrorCode, String)> {
    let channel = json_str(required(raw, "channel", op)?, "channel")?;
    match Channel::parse(&channel) {
        Some(Channel::All) => {}
        Some(Channel::User(id)) => check_name(id, "channel", limits)?,
        Some(Channel::Room(name)) => check_name(name, "channel", limits)?,
        None => {
            return Err((
                ErrorCode::BadField,
                "`channel` must be all, user:<id> or room:<name>".to_string(),
            ))
        }
    }
    Ok(channel)
}

/// An unsigned 64-bit integer field.
fn u64_field(raw: &RawValue, name: &str) -> Result<u64, (ErrorCode, String)> {
    serde_json::from_str::<u64>(raw.get()).map_err(|_| {
        (
            ErrorCode::BadField,
            format!(
                "`{name}` must be an integer 0..=18446744073709551615, not {:.32}",
                raw.get()
            ),
        )
    })
}

/// Parses one client text message. Borrowed: names point into `text` unless they held JSON
/// escapes, and `data` stays the client's raw JSON, never re-serialized.
pub fn decode_op<'a>(text: &'a str, limits: &Limits) -> Result<Request<'a>, OpError> {
    let mut fields = Fields::default();
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = FieldsSeed(&mut fields)
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
    let reference = fields.reference.and_then(|raw| Ref::from_json(raw.get()));
    if let Err(e) = parsed {
        return Err(OpError {
            reference,
            code: ErrorCode::BadJson,
            message: e.to_string(),
        });
    }
    if let (Some(raw), None) = (fields.reference, &reference) {
        return Err(OpError {
            reference: None,
            code: ErrorCode::BadField,
            message: format!(
                "`ref` must be an integer or a string of at most {REF_BYTES_MAX} bytes, not {:.32}",
                raw.get()
            ),
        });
    }
    match build_op(&fields, limits) {
        Ok(op) => Ok(Request { reference, op }),
        Err((code, message)) => Err(OpError {
            reference,
            code,
            message,
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Encoding server replies and messages.

/// What `\` escape each byte needs inside a JSON string: 0 for none, `u` for `\u00XX`, a
/// letter for its short form, and `L` for 0xE2, the first byte of U+2028 and U+2029.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0A] = b'n';
    table[0x0C] = b'f';
    table[0x0D] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table[0xE2] = b'L';
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a quoted JSON string. Escapes what RFC 8259 §7 requires (quote, backslash,
/// U+0000..U+001F) and also U+2028 and U+2029, which JavaScript before ES2019 refuses in
/// string literals (JSONP, `eval`, inline `<script>`). Unescaped runs are copied at once.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let escape = ESCAPE[bytes[i] as usize];
        if escape == 0 {
            i += 1;
            continue;
        }
        if escape == b'L' {
            // U+2028 is E2 80 A8 and U+2029 is E2 80 A9; other chars starting with E2 pass.
            match bytes.get(i + 1..i + 3) {
                Some([0x80, last @ (0xA8 | 0xA9)]) => {
                    out.extend_from_slice(&bytes[run_start..i]);
                    out.extend_from_slice(if *last == 0xA8 {
                        b"\\u2028"
                    } else {
                        b"\\u2029"
                    });
                    i += 3;
                    run_start = i;
                }
                _ => i += 1,
            }
            continue;
        }
        out.extend_from_slice(&bytes[run_start..i]);
        if escape == b'u' {
            let b = bytes[i];
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xF) as usize],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        i += 1;
        run_start = i;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn write_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    write_u64(out, n.unsigned_abs());
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Appends standard base64 (RFC 4648 §4, with '=' padding).
fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len().div_ceil(3) * 4);
    let mut chunks = bytes.chunks_exact(3);
    for c in &mut chunks {
        let n = (c[0] as u32) << 16 | (c[1] as u32) << 8 | c[2] as u32;
        out.extend_from_slice(&[
            BASE64[(n >> 18) as usize & 63],
            BASE64[(n >> 12) as usize & 63],
            BASE64[(n >> 6) as usize & 63],
            BASE64[n as usize & 63],
        ]);
    }
    match *chunks.remainder() {
        [a] => {
            let n = (a as u32) << 16;
            out.extend_from_slice(&[
                BASE64[(n >> 18) as usize & 63],
                BASE64[(n >> 12) as usize & 63],
                b'=',
                b'=',
            ]);
        }
        [a, b] => {
            let n = (a as u32) << 16 | (b as u32) << 8;
            out.extend_from_slice(&[
                BASE64[(n >> 18) as usize & 63],
                BASE64[(n >> 12) as usize & 63],
                BASE64[(n >> 6) as usize & 63],
                b'=',
            ]);
        }
        _ => {}
    }
}

fn write_ref(out: &mut Vec<u8>, reference: Option<&Ref>) {
    out.extend_from_slice(b"{\"type\":\"reply\",\"ref\":");
    match reference {
        Some(r) => r.write_json(out),
        None => out.extend_from_slice(b"null"),
    }
}

/// The JSON text of a success reply: `{"type":"reply","ref":..,"ok":true[,"result":..]}`.
pub fn reply_ok_json(reference: Option<&Ref>, result: Option<&serde_json::Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(REPLY_OVERHEAD_BYTES + reference.map_or(0, Ref::json_len_max));
    write_ref(&mut out, reference);
    out.extend_from_slice(b",\"ok\":true");
    if let Some(result) = result {
        out.extend_from_slice(b",\"result\":");
        // Writing a Value into a Vec cannot fail: the Vec writer never errors and a Value
        // holds only string keys and finite numbers.
        let _ = serde_json::to_writer(&mut out, result);
    }
    out.push(b'}');
    out
}

/// The JSON text of an error reply:
/// `{"type":"reply","ref":..,"ok":false,"error":{"code":..,"message":..}}`.
pub fn reply_err_json(reference: Option<&Ref>, code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        REPLY_OVERHEAD_BYTES + reference.map_or(0, Ref::json_len_max) + message.len() + 2,
    );
    write_ref(&mut out, reference);
    out.extend_from_slice(b",\"ok\":false,\"error\":{\"code\":\"");
    out.extend_from_slice(code.as_str().as_bytes());
    out.extend_from_slice(b"\",\"message\":");
    write_json_str(&mut out, message);
    out.extend_from_slice(b"}}");
    out
}

/// A success reply as a complete WebSocket text frame.
pub fn encode_reply_ok(reference: Option<&Ref>, result: Option<&serde_json::Value>) -> Bytes {
    frame::encode(OpCode::Text, &reply_ok_json(reference, result))
}

/// The answer to `{"op":"ping"}`: `{"type":"pong","ref":..}` as a complete text frame,
/// sent whether or not the ping had a ref (a ping exists to be answered).
pub fn encode_pong(reference: Option<&Ref>) -> Bytes {
    let mut out = Vec::with_capacity(32 + reference.map_or(0, Ref::json_len_max));
    out.extend_from_slice(b"{\"type\":\"pong\",\"ref\":");
    match reference {
        Some(r) => r.write_json(&mut out),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    frame::encode(OpCode::Text, &out)
}

/// An error reply as a complete WebSocket text frame.
pub fn encode_reply_err(reference: Option<&Ref>, code: ErrorCode, message: &str) -> Bytes {
    frame::encode(OpCode::Text, &reply_err_json(reference, code, message))
}

/// A published body, as a server message carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// Valid JSON (strict: `crate::json::is_strict`): embedded as is in `data`.
    Json(&'a str),
    /// UTF-8 text that is not JSON: becomes a JSON string in `data`.
    Text(&'a str),
    /// Anything else: standard base64 in `data_base64`, and no `data`.
    Binary(&'a [u8]),
}

impl<'a> Payload<'a> {
    /// A body as its publisher's classification (`crate::json::classify`) says. Json and
    /// Text were checked to be UTF-8 when published; bytes that somehow are not travel as
    /// Binary rather than be altered.
    pub fn of(kind: PayloadKind, body: &'a [u8]) -> Payload<'a> {
        match (kind, std::str::from_utf8(body)) {
            (PayloadKind::Json, Ok(text)) => Payload::Json(text),
            (PayloadKind::Text, Ok(text)) => Payload::Text(text),
            _ => Payload::Binary(body),
        }
    }
}

/// The JSON text of a server message, written once per publish and shared by every
/// recipient: `{"type":"message","channel":..,"seq":..,"id":..,"from":..,"data":..}`, with
/// `"data_base64"` instead of `"data"` for a binary payload. Wrap it with
/// `ws::frame::encode(OpCode::Text, ..)` (or [`encode_message`]). A message published
/// with an event name: [`message_json_named`].
pub fn message_json(
    channel: &str,
    seq: Option<u64>,
    epoch: Option<u64>,
    id: &str,
    from: Option<&str>,
    payload: Payload<'_>,
) -> Vec<u8> {
    message_json_named(channel, seq, epoch, id, from, None, payload)
}

/// [`message_json`] with the event name the publisher gave: `"event":..` after `from`,
/// only when there is one (None is the default, `message`, and adds nothing).
pub fn message_json_named(
    channel: &str,
    seq: Option<u64>,
    epoch: Option<u64>,
    id: &str,
    from: Option<&str>,
    event: Option<&str>,
    payload: Payload<'_>,
) -> Vec<u8> {
    debug_assert!(
        !matches!(payload, Payload::Json(json) if json::is_strict(json).is_err()),
        "Payload::Json must hold valid JSON"
    );
    let payload_bytes = match payload {
        Payload::Json(json) => json.len(),
        // Quotes plus a little room for escapes; a string full of them grows the Vec once.
        Payload::Text(text) => text.len() + text.len() / 16 + 2,
        Payload::Binary(bytes) => bytes.len().div_ceil(3) * 4 + 2,
    };
    let mut out = Vec::with_capacity(
        MESSAGE_OVERHEAD_BYTES
            + channel.len()
            + id.len()
            + from.map_or(0, str::len)
            + event.map_or(0, |e| e.len() + 12)
            + payload_bytes,
    );
    out.extend_from_slice(b"{\"type\":\"message\",\"channel\":");
    write_json_str(&mut out, channel);
    out.extend_from_slice(b",\"seq\":");
    match seq {
        Some(seq) => write_u64(&mut out, seq),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(epoch) = epoch {
        out.extend_from_slice(b",\"epoch\":");
        write_u64(&mut out, epoch);
    }
    out.extend_from_slice(b",\"id\":");
    write_json_str(&mut out, id);
    out.extend_from_slice(b",\"from\":");
    match from {
        Some(from) => write_json_str(&mut out, from),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(event) = event {
        out.extend_from_slice(b",\"event\":");
        write_json_str(&mut out, event);
    }
    match payload {
        Payload::Json(json) => {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(json.as_bytes());
        }
        Payload::Text(text) => {
            out.extend_from_slice(b",\"data\":");
            write_json_str(&mut out, text);
        }
        Payload::Binary(bytes) => {
            out.extend_from_slice(b",\"data_base64\":\"");
            write_base64(&mut out, bytes);
            out.push(b'"');
        }
    }
    out.push(b'}');
    out
}

/// An op this codec does not know, as an event for the application's hook: the name is the
/// `op`, the one argument is the op object without `op` and `ref` (docs/PROTOCOL.md,
/// "Application events"). A name that is no valid name stays the `unknown_op` error.
fn event_op(text: &str, unknown: OpError, limits: &Limits) -> Decoded {
    let Ok(mut object) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
    else {
        return Decoded::Refused(unknown);
    };
    let name = match object.remove("op") {
        Some(serde_json::Value::String(name))
            if super::check_name(&name, limits.name_bytes_max).is_ok() =>
        {
            name
        }
        _ => return Decoded::Refused(unknown),
    };
    object.remove("ref");
    Decoded::Op(super::Request {
        reference: unknown.reference,
        op: ClientOp::Event {
            name,
            args: serde_json::Value::Array(vec![serde_json::Value::Object(object)]),
        },
    })
}

/// The JSON text of an event the application emits: `{"type":"event","event":..,"args":[..]}`.
pub fn event_json(name: &str, args: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + name.len());
    out.extend_from_slice(b"{\"type\":\"event\",\"event\":");
    write_json_str(&mut out, name);
    out.extend_from_slice(b",\"args\":");
    // Writing a Value into a Vec cannot fail (see `reply_ok_json`).
    let _ = serde_json::to_writer(&mut out, args);
    out.push(b'}');
    out
}

/// The native codec: JSON text frames (docs/PROTOCOL.md).
pub struct Native;

impl ClientCodec for Native {
    fn message(&self, message: &Message<'_>) -> Bytes {
        let json = message_json_named(
            &message.channel.to_string(),
            message.seq,
            message.epoch,
            message.id,
            message.from,
            message.event,
            Payload::of(message.kind, message.payload),
        );
        frame::encode(OpCode::Text, &json)
    }

    fn decode(&self, inbound: &Inbound, limits: &OpLimits) -> Decoded {
        let text = match inbound {
            Inbound::Text(text) => text,
            Inbound::Binary(_) => {
                return Decoded::Refused(OpError {
                    reference: None,
                    code: ErrorCode::BadJson,
                    message: "binary frames are not ops; send JSON text (docs/PROTOCOL.md)".into(),
                })
            }
        };
        let limits = Limits {
            name_bytes_max: limits.name_bytes_max,
            data_bytes_max: limits.data_bytes_max,
        };
        let request = match decode_op(text, &limits) {
            Ok(request) => request,
            Err(e) if e.code == ErrorCode::UnknownOp => return event_op(text, e, &limits),
            Err(e) => return Decoded::Refused(e),
        };
        let reference = request.reference;
        let refused = |code, message: String| OpError {
            reference: reference.clone(),
            code,
            message,
        };
        let op = match request.op {
            Op::Join { room, since, epoch } => ClientOp::Join {
                room: room.into_owned(),
                since: since.map(|seq| Since { seq, epoch }),
            },
            Op::Leave { room } => ClientOp::Leave {
                room: room.into_owned(),
            },
            Op::Publish {
                target,
                data,
                event,
            } => ClientOp::Publish {
                target: match target {
                    Target::Room(room) => crate::envelope::Target::Room(room.into_owned()),
                    Target::User(user) => crate::envelope::Target::User(user.into_owned()),
                },
                data: Bytes::copy_from_slice(data.get().as_bytes()),
                event,
            },
            Op::Ack { channel, seq } => match crate::envelope::Target::parse(&channel) {
                Some(target) => ClientOp::Ack { target, seq },
                None => {
                    let message =
                        format!("channel {channel:?} is not all, user:<id> or room:<name>");
                    return Decoded::Refused(refused(ErrorCode::BadField, message));
                }
            },
            Op::Recover {
                channel,
                since,
                epoch,
            } => match crate::envelope::Target::parse(&channel) {
                Some(target) => ClientOp::Recover {
                    target,
                    since: Since { seq: since, epoch },
                },
                None => {
                    return Decoded::Refused(refused(ErrorCode::BadField, "bad channel".into()))
                }
            },
            Op::Ping => return Decoded::Reply(encode_pong(reference.as_ref())),
        };
        Decoded::Op(super::Request { reference, op })
    }

    fn reply_ok(
        &self,
        reference: Option<&Ref>,
        result: Option<&serde_json::Value>,
    ) -> Option<Bytes> {
        // An op sent without a ref and answered without a result needs no reply.
        (reference.is_some() || result.is_some()).then(|| encode_reply_ok(reference, result))
    }

    fn reply_err(&self, error: &OpError) -> Option<Bytes> {
        Some(encode_reply_err(
            error.reference.as_ref(),
            error.code,
            &error.message,
        ))
    }

    fn event(&self, name: &str, args: &serde_json::Value) -> Option<Bytes> {
        Some(frame::encode(OpCode::Text, &event_json(name, args)))
    }

    fn recovered(&self, recovered: &Recovered<'_>) -> Option<Bytes> {
        let mut event = serde_json::json!({
            "type": "recovered",
            "channel": recovered.channel.to_string(),
            "recovered": recovered.recovered,
            "replayed": recovered.replayed,
            "seq": recovered.seq,
        });
        if let Some(epoch) = recovered.epoch {
            event["epoch"] = epoch.into();
        }
        if let Some(error) = recovered.error {
            event["error"] = error.into();
        }
        if let Some(reason) = recovered.reason {
            event["reason"] = reason.into();
        }
        Some(frame::encode(OpCode::Text, event.to_string().as_bytes()))
    }
}

impl OpError {
    /// The native error reply frame for this error.
    pub fn encode_reply(&self) -> Bytes {
        encode_reply_err(self.reference.as_ref(), self.code, &self.message)
    }
}

// ---------------------------------------------------------------------------------------
// Fuzzing.

/// Checks what must hold for any decode result: accepted ops obey the limits, and every
/// reply volley would send parses back with the ref echoed.
fn fuzz_text(text: &str) {
    for limits in [
        Limits {
            name_bytes_max: 8,
            data_bytes_max: 16,
        },
        Limits {
            name_bytes_max: 128,
            data_bytes_max: 64 * 1024,
        },
    ] {
        let (reference, reply) = match decode_op(text, &limits) {
            Ok(request) => {
                match &request.op {
                    Op::Join { room, .. } | Op::Leave { room } => {
                        assert!(check_name(room, "room", &limits).is_ok());
                    }
                    Op::Publish { target, data, .. } => {
                        let (Target::Room(name) | Target::User(name)) = target;
                        assert!(check_name(name, "name", &limits).is_ok());
                        assert!(data.get().len() <= limits.data_bytes_max);
                        assert!(json::is_strict(data.get()).is_ok());
                    }
                    Op::Ack { channel, .. } | Op::Recover { channel, .. } => {
                        assert!(Channel::parse(channel).is_some())
                    }
                    Op::Ping => {
                        let pong = encode_pong(request.reference.as_ref());
                        assert!(pong.len() > 2, "a pong is a whole frame");
                    }
                }
                let reply = reply_ok_json(request.reference.as_ref(), None);
                (request.reference, reply)
            }
            Err(e) => {
                let reply = reply_err_json(e.reference.as_ref(), e.code, &e.message);
                (e.reference, reply)
            }
        };
        let parsed = serde_json::from_slice::<serde_json::Value>(&reply);
        assert!(parsed.is_ok(), "every reply is valid JSON: {parsed:?}");
        let parsed = parsed.unwrap_or_default();
        let echoed = &parsed["ref"];
        match reference {
            None => assert!(echoed.is_null()),
            Some(Ref::Int(n)) => assert_eq!(echoed.as_i64(), Some(n)),
            Some(Ref::UInt(n)) => assert_eq!(echoed.as_u64(), Some(n)),
            Some(Ref::Str(s)) => assert_eq!(echoed.as_str(), Some(s.as_str())),
        }
    }
}

/// Decodes arbitrary bytes as a client op (as lossy UTF-8, and as the raw text when the
/// bytes are UTF-8) and as a published body; must never panic.
pub fn fuzz_one(data: &[u8]) {
    match std::str::from_utf8(data) {
        Ok(text) => fuzz_text(text),
        Err(_) => fuzz_text(&String::from_utf8_lossy(data)),
    }
    let payload = Payload::of(json::classify(data), data);
    let message = message_json("room:a", Some(1), None, "n-1", None, payload);
    let parsed = serde_json::from_slice::<serde_json::Value>(&message);
    assert!(parsed.is_ok(), "every message is valid JSON: {parsed:?}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const LIMITS: Limits = Limits {
        name_bytes_max: 16,
        data_bytes_max: 64,
    };

    fn decode(text: &str) -> Result<Request<'_>, OpError> {
        decode_op(text, &LIMITS)
    }

    fn classify_payload(body: &[u8]) -> Payload<'_> {
        Payload::of(json::classify(body), body)
    }

    fn err(text: &str) -> OpError {
        decode(text).expect_err(text)
    }

    /// The payload of an unmasked single text frame, checking the header on the way.
    fn frame_payload(frame: &[u8]) -> &[u8] {
        assert_eq!(frame[0], 0x81, "FIN + text");
        match frame[1] {
            126 => {
                let len = u16::from_be_bytes([frame[2], frame[3]]) as usize;
                assert_eq!(frame.len(), 4 + len);
                &frame[4..]
            }
            127 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&frame[2..10]);
                assert_eq!(frame.len(), 10 + u64::from_be_bytes(len) as usize);
                &frame[10..]
            }
            len => {
                assert_eq!(frame.len(), 2 + len as usize);
                &frame[2..]
            }
        }
    }

    fn frame_json(frame: &[u8]) -> Value {
        serde_json::from_slice(frame_payload(frame)).unwrap()
    }

    #[test]
    fn join_and_leave() {
        let request = decode(r#"{"op":"join","room":"lobby","ref":1}"#).unwrap();
        assert_eq!(request.reference, Some(Ref::Int(1)));
        assert!(matches!(
            request.op,
            Op::Join {
                room: Cow::Borrowed("lobby"),
                since: None,
                epoch: None,
            }
        ));
        let request = decode(r#"{"op":"join","room":"lobby","since":41}"#).unwrap();
        assert!(matches!(
            request.op,
            Op::Join {
                since: Some(41),
                ..
            }
        ));
        let request = decode(r#"{"op":"recover","channel":"user:ann","since":7}"#).unwrap();
        assert!(
            matches!(request.op, Op::Recover { ref channel, since: 7, epoch: None } if channel == "user:ann")
        );
        let request =
            decode(r#"{"op":"recover","channel":"all","since":7,"epoch":12345}"#).unwrap();
        assert!(matches!(
            request.op,
            Op::Recover {
                since: 7,
                epoch: Some(12345),
                ..
            }
        ));
        let request = decode(r#"{"op":"join","room":"r","since":3,"epoch":9}"#).unwrap();
        assert!(matches!(
            request.op,
            Op::Join {
                since: Some(3),
                epoch: Some(9),
                ..
            }
        ));
        let error = decode(r#"{"op":"recover","channel":"user:ann"}"#).unwrap_err();
        assert_eq!(error.code, ErrorCode::BadField);
        let error = decode(r#"{"op":"join","room":"r","since":-1}"#).unwrap_err();
        assert_eq!(error.code, ErrorCode::BadField);
        let request = decode(r#"{"op":"leave","room":"lobby","ref":2}"#).unwrap();
        assert!(matches!(request.op, Op::Leave { ref room } if room == "lobby"));
        let request = decode(r#"{"room":"lobby","op":"join"}"#).unwrap();
        assert_eq!(request.reference, None, "ref is optional");
    }

    #[test]
    fn publish_to_a_room_or_a_user() {
        let request =
            decode(r#"{"op":"publish","room":"lobby","data":{"a":[1,2]},"ref":3}"#).unwrap();
        let Op::Publish { target, data, .. } = request.op else {
            panic!("not a publish")
        };
        assert_eq!(target, Target::Room("lobby".into()));
        assert_eq!(data.get(), r#"{"a":[1,2]}"#);
        let request = decode(r#"{"op":"publish","user":"42","data":"hi","ref":4}"#).unwrap();
        let Op::Publish { target, data, .. } = request.op else {
            panic!("not a publish")
        };
        assert_eq!(target, Target::User("42".into()));
        assert_eq!(data.get(), r#""hi""#);
        // null is data too.
        assert!(decode(r#"{"op":"publish","user":"42","data":null}"#).is_ok());
    }

    #[test]
    fn a_publish_may_name_its_event_and_the_message_carries_it() {
        let request = decode(r#"{"op":"publish","room":"lobby","data":1,"event":"chat"}"#).unwrap();
        let Op::Publish { event, .. } = request.op else {
            panic!("not a publish")
        };
        assert_eq!(event.as_deref(), Some("chat"));
        let request =
            decode(r#"{"op":"publish","room":"lobby","data":1,"event":"message"}"#).unwrap();
        assert!(matches!(request.op, Op::Publish { event: None, .. }));
        let refused =
            decode(r#"{"op":"publish","room":"lobby","data":1,"event":"connect","ref":5}"#)
                .unwrap_err();
        assert_eq!(refused.code, ErrorCode::BadField);
        assert!(refused.message.contains("reserved"), "{}", refused.message);
        let refused = decode(r#"{"op":"publish","room":"lobby","data":1,"event":7}"#).unwrap_err();
        assert_eq!(refused.code, ErrorCode::BadField);
        let named = message_json_named(
            "room:lobby",
            Some(2),
            None,
            "n-1",
            None,
            Some("chat"),
            Payload::Json("{}"),
        );
        let parsed: serde_json::Value = serde_json::from_slice(&named).unwrap();
        assert_eq!(parsed["event"], "chat");
        let plain = message_json("all", Some(2), None, "n-1", None, Payload::Json("{}"));
        let parsed: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert!(parsed.get("event").is_none(), "only when set");
    }

    #[test]
    fn raw_data_is_kept_byte_exact_and_borrowed() {
        let data = r#"{ "b" : 1.50e3, "a":"\u00e9\n", "z" : [ true ,null ] }"#;
        let text = format!(r#"{{"op":"publish","room":"r","data":  {data}  ,"ref":"x"}}"#);
        let limits = Limits {
            name_bytes_max: 16,
            data_bytes_max: 1024,
        };
        let request = decode_op(&text, &limits).unwrap();
        let Op::Publish { data: raw, .. } = request.op else {
            panic!("not a publish")
        };
        assert_eq!(raw.get(), data);
        let offset = raw.get().as_ptr() as usize - text.as_ptr() as usize;
        assert!(offset < text.len(), "data points into the input");
        // And it travels unchanged into the message.
        let message = message_json(
            "room:r",
            Some(1),
            None,
            "n-1",
            None,
            Payload::Json(raw.get()),
        );
        let message = String::from_utf8(message).unwrap();
        assert!(
            message.ends_with(&format!(r#","data":{data}}}"#)),
            "{message}"
        );
    }

    #[test]
    fn ack() {
        let request = decode(r#"{"op":"ack","channel":"room:lobby","seq":17,"ref":5}"#).unwrap();
        assert!(matches!(request.op, Op::Ack { ref channel, seq: 17 } if channel == "room:lobby"));
        for channel in ["all", "user:42", "room:a:b"] {
            let text =
                format!(r#"{{"op":"ack","channel":"{channel}","seq":18446744073709551615}}"#);
            let request = decode(&text).unwrap();
            assert!(matches!(request.op, Op::Ack { seq: u64::MAX, .. }));
        }
        assert_eq!(Channel::parse("room:a:b"), Some(Channel::Room("a:b")));
        assert_eq!(Channel::parse("user:x"), Some(Channel::User("x")));
        assert_eq!(Channel::parse("all"), Some(Channel::All));
        for bad in ["", "room:", "room", "planet:x", "ALL", "all:"] {
            assert_eq!(Channel::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn escaped_names_are_unescaped_and_owned() {
        let request = decode(r#"{"op":"join","room":"caf\u00e9"}"#).unwrap();
        let Op::Join { room, .. } = request.op else {
            panic!("not a join")
        };
        assert!(matches!(room, Cow::Owned(_)));
        assert_eq!(room, "café");
        // An escaped control character is still a control character.
        assert_eq!(
            err(r#"{"op":"join","room":"a\u0000"}"#).code,
            ErrorCode::BadField
        );
        assert_eq!(
            err(r#"{"op":"join","room":"a\u007f"}"#).code,
            ErrorCode::BadField
        );
        // ':' inside a name is fine.
        assert!(decode(r#"{"op":"join","room":"team:ops"}"#).is_ok());
        // Escaped keys are still keys.
        assert!(decode(r#"{"\u006fp":"join","room":"x"}"#).is_ok());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let request = decode(
            r#"{"op":"join","v":2,"extra":{"deep":[1,{"x":null}]},"room":"lobby","seq":"n/a"}"#,
        )
        .unwrap();
        assert!(matches!(request.op, Op::Join { .. }));
    }

    #[test]
    fn ref_echo_number_and_string() {
        for (text, expected) in [
            (
                r#"{"op":"join","room":"a","ref":-9223372036854775808}"#,
                Ref::Int(i64::MIN),
            ),
            (
                r#"{"op":"join","room":"a","ref":18446744073709551615}"#,
                Ref::UInt(u64::MAX),
            ),
            (r#"{"op":"join","room":"a","ref":0}"#, Ref::Int(0)),
            (
                r#"{"op":"join","room":"a","ref":"abc-\"1\""}"#,
                Ref::Str("abc-\"1\"".into()),
            ),
            (
                r#"{"op":"join","room":"a","ref":""}"#,
                Ref::Str(String::new()),
            ),
        ] {
            let request = decode(text).unwrap();
            assert_eq!(request.reference.as_ref(), Some(&expected), "{text}");
            let reply = frame_json(&encode_reply_ok(request.reference.as_ref(), None));
            let sent: Value = serde_json::from_str(text).unwrap();
            assert_eq!(reply["ref"], sent["ref"], "{text}");
            assert_eq!(reply, json!({"type":"reply","ref":sent["ref"],"ok":true}));
        }
        // The number's text comes back exactly.
        let mut out = Vec::new();
        Ref::Int(-42).write_json(&mut out);
        Ref::UInt(u64::MAX).write_json(&mut out);
        assert_eq!(out, b"-4218446744073709551615");
        assert_eq!(Ref::from(7u64), Ref::Int(7));
        assert_eq!(Ref::from(u64::MAX), Ref::UInt(u64::MAX));
        let max = "r".repeat(REF_BYTES_MAX);
        assert_eq!(
            decode(&format!(r#"{{"op":"join","room":"a","ref":"{max}"}}"#))
                .unwrap()
                .reference,
            Some(Ref::Str(max))
        );
    }

    #[test]
    fn ref_is_echoed_when_the_op_is_invalid() {
        for (text, code) in [
            (r#"{"ref":7,"op":"join","room":"#, ErrorCode::BadJson),
            (
                r#"{"ref":7,"op":"join","room":"a"} trailing"#,
                ErrorCode::BadJson,
            ),
            (r#"{"ref":7,"op":"join","op":"leave"}"#, ErrorCode::BadJson),
            (r#"{"ref":7,"op":"dance"}"#, ErrorCode::UnknownOp),
            (r#"{"ref":7,"op":"join"}"#, ErrorCode::BadField),
            (
                r#"{"ref":7,"op":"join","room":"this-name-is-too-long"}"#,
                ErrorCode::TooLarge,
            ),
        ] {
            let e = err(text);
            assert_eq!(e.code, code, "{text}: {e}");
            assert_eq!(e.reference, Some(Ref::Int(7)), "{text}");
            let reply = frame_json(&e.encode_reply());
            assert_eq!(reply["ref"], 7);
            assert_eq!(reply["ok"], false);
            assert_eq!(reply["error"]["code"], code.as_str());
        }
        let e = err(r#"{"op":"nope","ref":"s-1"}"#);
        assert_eq!(e.reference, Some(Ref::Str("s-1".into())));
        assert_eq!(frame_json(&e.encode_reply())["ref"], "s-1");
    }

    #[test]
    fn bad_refs_are_bad_fields_without_an_echo() {
        let long = "r".repeat(REF_BYTES_MAX + 1);
        for bad in [
            "1.5".to_string(),
            "1e3".to_string(),
            "-0".to_string(),
            "18446744073709551616".to_string(),
            "-9223372036854775809".to_string(),
            "true".to_string(),
            "null".to_string(),
            "[1]".to_string(),
            "{}".to_string(),
            format!("\"{long}\""),
            r#""\ud800""#.to_string(),
        ] {
            let e = err(&format!(r#"{{"op":"join","room":"a","ref":{bad}}}"#));
            assert_eq!(e.code, ErrorCode::BadField, "{bad}");
            assert_eq!(e.reference, None, "{bad}");
            assert!(e.message.contains("`ref`"), "{}", e.message);
            assert_eq!(frame_json(&e.encode_reply())["ref"], Value::Null);
        }
    }

    #[test]
    fn bad_json() {
        for text in [
            "",
            "   ",
            "{",
            "not json",
            "[]",
            "5",
            "\"join\"",
            "null",
            r#"{"op":"join","room":"a",}"#,
            r#"{"op":"join","room":"a"}{}"#,
            r#"{"op":"join","room":"a","room":"b"}"#,
            r#"{"op":"publish","room":"a","data":1,"data":2}"#,
            r#"{"op":"publish","room":"a","data":"\ud800"}"#,
            r#"{"op":"publish","room":"a","data":{"k":[1,"\udc00x"]}}"#,
            "{\"op\":\"join\",\"room\":\"a\u{1}\"}",
        ] {
            let e = err(text);
            assert_eq!(e.code, ErrorCode::BadJson, "{text:?}: {e}");
            assert_eq!(e.reference, None);
        }
        // Deep nesting is refused by serde_json's recursion limit, not by a stack overflow.
        let deep = format!(
            r#"{{"op":"publish","room":"a","data":{}}}"#,
            "[".repeat(100_000)
        );
        assert_eq!(err(&deep).code, ErrorCode::BadJson);
        let deep_unknown = format!(r#"{{"ref":1,"x":{}}}"#, "[".repeat(100_000));
        assert_eq!(err(&deep_unknown).reference, Some(Ref::Int(1)));
    }

    #[test]
    fn unknown_ops_become_events_for_the_application() {
        let limits = OpLimits {
            name_bytes_max: 8,
            data_bytes_max: 64,
        };
        let decode = |text: &str| Native.decode(&Inbound::Text(text.into()), &limits);
        let Decoded::Op(request) = decode(r#"{"op":"chat","text":"hi","ref":7}"#) else {
            panic!("an unknown op is an event")
        };
        assert_eq!(request.reference, Some(Ref::Int(7)));
        assert_eq!(
            request.op,
            ClientOp::Event {
                name: "chat".into(),
                args: json!([{"text": "hi"}])
            }
        );
        for bad in [
            r#"{"op":"much too long"}"#,
            r#"{"op":""}"#,
            r#"{"op":"a\u0000"}"#,
        ] {
            let Decoded::Refused(e) = decode(bad) else {
                panic!("{bad} is refused")
            };
            assert_eq!(e.code, ErrorCode::UnknownOp, "{bad}");
        }
        let Decoded::Refused(e) = decode(r#"{"op":"join"}"#) else {
            panic!("a known op keeps its checks")
        };
        assert_eq!(e.code, ErrorCode::BadField);
        let frame = Native.event("hi", &json!([1, "a\u{2028}"])).unwrap();
        assert_eq!(
            frame_json(&frame),
            json!({"type": "event", "event": "hi", "args": [1, "a\u{2028}"]})
        );
    }

    #[test]
    fn unknown_op() {
        for op in ["\"dance\"", "\"JOIN\"", "\"\"", "\"join \""] {
            let e = err(&format!(r#"{{"op":{op},"room":"a"}}"#));
            assert_eq!(e.code, ErrorCode::UnknownOp, "{op}");
        }
    }

    #[test]
    fn error_messages_quote_client_input_briefly() {
        let long = "é".repeat(5_000);
        for text in [
            format!(r#"{{"op":"{long}"}}"#),
            format!(r#"{{"op":"join","room":{{"k":"{long}"}}}}"#),
            format!(r#"{{"op":"ack","channel":"all","seq":"{long}"}}"#),
            format!(r#"{{"op":"join","room":"a","ref":"{long}"}}"#),
        ] {
            let e = decode_op(&text, &LIMITS).unwrap_err();
            assert!(
                e.message.len() < 200,
                "{} bytes: {}",
                e.message.len(),
                e.message
            );
        }
        assert_eq!(clip("aé", 2), "a");
        assert_eq!(clip("aé", 3), "aé");
    }

    #[test]
    fn bad_fields() {
        for text in [
            r#"{"room":"a"}"#,
            r#"{"op":1,"room":"a"}"#,
            r#"{"op":null}"#,
            r#"{"op":"join"}"#,
            r#"{"op":"join","room":5}"#,
            r#"{"op":"join","room":null}"#,
            r#"{"op":"join","room":""}"#,
            r#"{"op":"join","room":"a\tb"}"#,
            r#"{"op":"leave"}"#,
            r#"{"op":"leave","room":["a"]}"#,
            r#"{"op":"publish","data":1}"#,
            r#"{"op":"publish","room":"a","user":"b","data":1}"#,
            r#"{"op":"publish","room":"a"}"#,
            r#"{"op":"publish","user":"","data":1}"#,
            r#"{"op":"publish","user":7,"data":1}"#,
            r#"{"op":"ack","seq":1}"#,
            r#"{"op":"ack","channel":"room:a"}"#,
            r#"{"op":"ack","channel":"lobby","seq":1}"#,
            r#"{"op":"ack","channel":"room:","seq":1}"#,
            r#"{"op":"ack","channel":"user:\u0001","seq":1}"#,
            r#"{"op":"ack","channel":7,"seq":1}"#,
            r#"{"op":"ack","channel":"all","seq":-1}"#,
            r#"{"op":"ack","channel":"all","seq":1.0}"#,
            r#"{"op":"ack","channel":"all","seq":"1"}"#,
            r#"{"op":"ack","channel":"all","seq":18446744073709551616}"#,
            r#"{"op":"ack","channel":"all","seq":null}"#,
        ] {
            let e = err(text);
            assert_eq!(e.code, ErrorCode::BadField, "{text}: {e}");
        }
        let e = err(r#"{"op":"publish","room":"a","user":"b","data":1}"#);
        assert!(e.message.contains("exactly one"), "{}", e.message);
    }

    #[test]
    fn limits() {
        let at_max = "n".repeat(LIMITS.name_bytes_max);
        let over = "n".repeat(LIMITS.name_bytes_max + 1);
        assert!(decode(&format!(r#"{{"op":"join","room":"{at_max}"}}"#)).is_ok());
        for text in [
            format!(r#"{{"op":"join","room":"{over}"}}"#),
            format!(r#"{{"op":"leave","room":"{over}"}}"#),
            format!(r#"{{"op":"publish","user":"{over}","data":1}}"#),
            format!(r#"{{"op":"ack","channel":"room:{over}","seq":1}}"#),
        ] {
            let e = err(&text);
            assert_eq!(e.code, ErrorCode::TooLarge, "{text}");
            assert!(e.message.contains("limit is 16 bytes"), "{}", e.message);
        }
        // Multi-byte names are measured in bytes: 6 x 3 bytes = 18 > 16.
        assert_eq!(
            err(r#"{"op":"join","room":"€€€€€€"}"#).code,
            ErrorCode::TooLarge
        );
        // `room:` does not count against the name.
        assert!(decode(&format!(
            r#"{{"op":"ack","channel":"room:{at_max}","seq":1}}"#
        ))
        .is_ok());

        let fits = format!("\"{}\"", "d".repeat(LIMITS.data_bytes_max - 2));
        let over = format!("\"{}\"", "d".repeat(LIMITS.data_bytes_max - 1));
        assert!(decode(&format!(r#"{{"op":"publish","room":"a","data":{fits}}}"#)).is_ok());
        let e = err(&format!(
            r#"{{"op":"publish","room":"a","data":{over},"ref":9}}"#
        ));
        assert_eq!(
            (e.code, e.reference),
            (ErrorCode::TooLarge, Some(Ref::Int(9)))
        );
    }

    #[test]
    fn error_replies_for_every_code() {
        for code in ErrorCode::ALL {
            for reference in [None, Some(Ref::Int(3)), Some(Ref::Str("q\"\\\n".into()))] {
                let frame = encode_reply_err(reference.as_ref(), code, "it \"broke\"\n\u{2028}");
                let reply = frame_json(&frame);
                let echoed = match &reference {
                    None => Value::Null,
                    Some(Ref::Int(n)) => json!(n),
                    Some(Ref::UInt(n)) => json!(n),
                    Some(Ref::Str(s)) => json!(s),
                };
                assert_eq!(
                    reply,
                    json!({"type":"reply","ref":echoed,"ok":false,
                           "error":{"code":code.as_str(),"message":"it \"broke\"\n\u{2028}"}})
                );
            }
        }
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            codes,
            [
                "bad_json",
                "unknown_op",
                "bad_field",
                "too_large",
                "forbidden",
                "rate_limited",
                "not_found",
                "internal"
            ]
        );
    }

    #[test]
    fn ok_replies_with_and_without_a_result() {
        let frame = encode_reply_ok(Some(&Ref::Int(1)), None);
        assert_eq!(
            frame_payload(&frame),
            br#"{"type":"reply","ref":1,"ok":true}"#
        );
        let frame = encode_reply_ok(None, None);
        assert_eq!(
            frame_payload(&frame),
            br#"{"type":"reply","ref":null,"ok":true}"#
        );
        let result = json!({"id":"node-0-5","seq":9});
        let frame = encode_reply_ok(Some(&Ref::Int(3)), Some(&result));
        assert_eq!(
            frame_json(&frame),
            json!({"type":"reply","ref":3,"ok":true,"result":{"id":"node-0-5","seq":9}})
        );
        // A result large enough for a 16-bit frame length.
        let big = json!({"blob": "x".repeat(70_000)});
        let frame = encode_reply_ok(Some(&Ref::Str("r".into())), Some(&big));
        assert_eq!(frame[1], 127);
        assert_eq!(frame_json(&frame)["result"], big);
        let frame = encode_reply_ok(None, Some(&json!({"blob": "y".repeat(300)})));
        assert_eq!(frame[1], 126);
    }

    #[test]
    fn messages_for_all_three_payload_kinds() {
        let json_body = br#"{"n":1,"s":"x"}"#;
        let payload = classify_payload(json_body);
        assert!(matches!(payload, Payload::Json(_)));
        let message = message_json(
            "room:lobby",
            Some(17),
            None,
            "node-0-5",
            Some("user:42"),
            payload,
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&message).unwrap(),
            json!({"type":"message","channel":"room:lobby","seq":17,"id":"node-0-5",
                   "from":"user:42","data":{"n":1,"s":"x"}})
        );

        let payload = classify_payload("héllo \"world\"".as_bytes());
        assert_eq!(payload, Payload::Text("héllo \"world\""));
        let message = message_json("all", None, None, "n-2", None, payload);
        assert_eq!(
            serde_json::from_slice::<Value>(&message).unwrap(),
            json!({"type":"message","channel":"all","seq":null,"id":"n-2","from":null,
                   "data":"héllo \"world\""})
        );

        let bytes = [0u8, 0xFF, 0xFE, 1, 2];
        let payload = classify_payload(&bytes);
        assert_eq!(payload, Payload::Binary(&bytes));
        let message = message_json("user:7", Some(u64::MAX), None, "n-3", None, payload);
        let parsed: Value = serde_json::from_slice(&message).unwrap();
        assert_eq!(
            parsed,
            json!({"type":"message","channel":"user:7","seq":u64::MAX,"id":"n-3","from":null,
                   "data_base64":"AP/+AQI="})
        );
        assert!(parsed.get("data").is_none());

        let frame = Native.message(&Message {
            channel: &crate::envelope::Target::All,
            seq: Some(1),
            epoch: None,
            id: "i",
            from: None,
            event: None,
            kind: PayloadKind::Text,
            payload: b"t",
        });
        assert_eq!(
            frame_payload(&frame),
            message_json("all", Some(1), None, "i", None, Payload::Text("t"))
        );
    }

    #[test]
    fn classify_edge_cases() {
        assert_eq!(classify_payload(b""), Payload::Text(""));
        assert_eq!(classify_payload(b" 42 \n"), Payload::Json(" 42 \n"));
        assert_eq!(classify_payload(b"null"), Payload::Json("null"));
        assert_eq!(classify_payload(b"{\"a\":1"), Payload::Text("{\"a\":1"));
        assert_eq!(classify_payload(b"1 2"), Payload::Text("1 2"));
        assert_eq!(classify_payload(b"NaN"), Payload::Text("NaN"));
        // Accepted by lenient skipping, refused by strict parsers: sent as text.
        assert_eq!(
            classify_payload(br#""\ud800""#),
            Payload::Text(r#""\ud800""#)
        );
        assert_eq!(
            classify_payload(br#""\ud83d\ude00""#),
            Payload::Json(r#""\ud83d\ude00""#)
        );
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(matches!(
            classify_payload(deep.as_bytes()),
            Payload::Text(_)
        ));
        // UTF-8 inside a JSON string is checked before JSON.
        assert!(matches!(classify_payload(b"\"\xff\""), Payload::Binary(_)));
        // Text payloads with JSON-looking content round-trip as strings.
        for body in ["{", "\"", "\\", "\u{0}", "a\u{2028}b"] {
            let message = message_json(
                "all",
                None,
                None,
                "i",
                None,
                classify_payload(body.as_bytes()),
            );
            let parsed: Value = serde_json::from_slice(&message).unwrap();
            assert_eq!(parsed["data"], body, "{body:?}");
        }
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = Vec::new();
            write_base64(&mut out, input.as_bytes());
            assert_eq!(out, expected.as_bytes(), "{input}");
        }
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        write_base64(&mut out, &all);
        assert!(out.starts_with(b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIj"));
        assert!(out.ends_with(b"+/w=="));
        assert_eq!(out.len(), 344);
    }

    #[test]
    fn nasty_strings_escape_correctly() {
        let mut nasty: Vec<String> = (0u32..0x80)
            .map(|c| char::from_u32(c).unwrap().to_string())
            .collect();
        nasty.extend(
            [
                "\"\\\"\\\\",
                "\u{2028}\u{2029}",
                "a\u{2028}b\u{2029}c\u{2027}\u{202a}",
                "\u{e2}\u{80}",
                "€ – “quoted” ✓",
                "\u{7f}\u{80}\u{9f}\u{a0}",
                "\u{feff}\u{fffd}\u{ffff}",
                "😀 \u{10ffff}",
                "</script><!--",
                "\r\n\t\u{8}\u{c}\u{b}\u{0}",
            ]
            .map(String::from),
        );
        for s in &nasty {
            let mut out = Vec::new();
            write_json_str(&mut out, s);
            let text = std::str::from_utf8(&out).unwrap();
            assert_eq!(serde_json::from_str::<String>(text).unwrap(), *s, "{s:?}");
            assert!(
                !text.contains('\u{2028}') && !text.contains('\u{2029}'),
                "{text}"
            );
            assert!(!text.bytes().any(|b| b < 0x20), "{text:?}");
            // The same string survives every field of a message.
            let message = message_json(s, Some(1), None, s, Some(s), Payload::Text(s));
            let parsed: Value = serde_json::from_slice(&message).unwrap();
            for field in ["channel", "id", "from", "data"] {
                assert_eq!(parsed[field], **s, "{field} {s:?}");
            }
        }
        let mut out = Vec::new();
        write_json_str(&mut out, "\n\"\\\u{1}\u{2028}");
        assert_eq!(out, br#""\n\"\\\u0001\u2028""#);
    }

    #[test]
    fn numbers_format_exactly() {
        for n in [0u64, 1, 9, 10, 99, 100, 12345, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for n in [0i64, -1, 7, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            write_i64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn message_json_allocates_once() {
        for payload in [
            Payload::Json(r#"{"k":[1,2,3]}"#),
            Payload::Text("plain text with one \" quote"),
            Payload::Binary(&[1, 2, 3, 4, 5, 6, 7]),
        ] {
            let message = message_json(
                "room:lobby",
                Some(u64::MAX),
                Some((1 << 53) - 1),
                "node-12-345",
                Some("user:42"),
                payload,
            );
            let capacity_needed = message.len();
            assert!(message.capacity() >= capacity_needed);
            assert!(
                message.capacity() <= capacity_needed + MESSAGE_OVERHEAD_BYTES,
                "{} vs {}",
                message.capacity(),
                capacity_needed
            );
        }
    }

    #[test]
    fn fuzz_one_on_seeded_random_and_mutated_inputs() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds: [&[u8]; 7] = [
            br#"{"op":"join","room":"lobby","ref":1}"#,
            br#"{"op":"leave","room":"lobby","ref":"r-2"}"#,
            br#"{"op":"publish","room":"lobby","data":{"a":[1,"\u00e9",null]},"ref":3}"#,
            br#"{"op":"publish","user":"42","data":"hi","ref":4}"#,
            br#"{"op":"ack","channel":"room:lobby","seq":17,"ref":5}"#,
            br#"{"op":"ack","channel":"all","seq":18446744073709551615}"#,
            br#"{"op":"join","room":"caf\u00e9\"","x":[{}],"ref":-9223372036854775808}"#,
        ];
        // Bytes that steer mutations toward JSON structure.
        const INTERESTING: &[u8] = b"{}[]\":,\\0123456789-.eE nutrfals\x00\x1f\x7f\xe2\x80\xa8\xff";
        for round in 0..20_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % (input.len() + 1);
                let byte = if next() % 2 == 0 {
                    INTERESTING[(next() as usize) % INTERESTING.len()]
                } else {
                    next() as u8
                };
                // Truncation is rare: a cut op is mostly bad_json, which is quick to reach.
                match next() % 8 {
                    0..=2 if at < input.len() => input[at] = byte,
                    3 => input.truncate(at),
                    4 | 5 if at < input.len() => {
                        input.remove(at);
                    }
                    _ => input.insert(at, byte),
                }
            }
            fuzz_one(&input);
            let random: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
            fuzz_one(&random);
        }
    }
}
