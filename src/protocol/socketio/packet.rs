//! Socket.IO 5 packets: what travels inside Engine.IO message packets. Sans-IO: a text
//! packet in, a [`Packet`] out; binary attachments put back in place by [`reconstruct`];
//! and the encoders, including [`encode_push`], the one a broadcast is encoded with once.
//!
//! Spec: socketio/socket.io-protocol (v5); validation as socket.io-parser v4 does it
//! (`decodeString`, `isPayloadValid`, `reconstructPacket`), with bounds it lacks.
//!
//! Owns the wire format: type digit, `<attachments>-` for binary types, `/nsp,` (omitted
//! for `/`), ack id digits, JSON payload. It does not own namespaces, auth, acks in flight
//! or what an event does: the socket.io client codec (beside `protocol::native`, not written
//! yet) decides that. It does not collect attachments either: the transport counts the
//! binary messages that follow a binary packet (keeping the packet's text) and calls
//! [`reconstruct`] once it has [`Packet::attachments`] of them.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{write_json_str, Value};

/// Largest ack id accepted: JavaScript's `Number.MAX_SAFE_INTEGER`. socket.io clients count
/// ack ids in JS numbers, so a larger one cannot come from a real client, and an id we echo
/// back must survive the client's `Number()`.
pub const ACK_ID_MAX: u64 = (1 << 53) - 1;

/// Event names socket.io-parser refuses in an EVENT (`RESERVED_EVENTS`): they mean
/// something to the socket.io libraries themselves.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Socket.IO packet types; the wire form is the ASCII digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// Client: join a namespace (payload: auth object, optional). Server: joined
    /// (payload `{"sid":..}`).
    Connect = 0,
    /// Either side: leave the namespace. No payload.
    Disconnect = 1,
    /// `[name, ...args]`, with an ack id if the sender wants an answer.
    Event = 2,
    /// The answer to an event with an ack id: `[...args]`.
    Ack = 3,
    /// Server: the namespace refused the connect (payload `{"message":..}`).
    ConnectError = 4,
    /// An EVENT with binary attachments following as separate binary messages.
    BinaryEvent = 5,
    /// An ACK with binary attachments.
    BinaryAck = 6,
}

impl PacketType {
    pub fn from_byte(byte: u8) -> Option<PacketType> {
        Some(match byte {
            b'0' => PacketType::Connect,
            b'1' => PacketType::Disconnect,
            b'2' => PacketType::Event,
            b'3' => PacketType::Ack,
            b'4' => PacketType::ConnectError,
            b'5' => PacketType::BinaryEvent,
            b'6' => PacketType::BinaryAck,
            _ => return None,
        })
    }

    pub fn as_byte(self) -> u8 {
        b'0' + self as u8
    }

    pub fn is_binary(self) -> bool {
        matches!(self, PacketType::BinaryEvent | PacketType::BinaryAck)
    }
}

/// Bounds the decoder applies; the caller takes them from its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most binary attachments one packet may announce. socket.io-parser defaults to 10;
    /// without a bound, `5999999999-[...]` makes the receiver wait for (and buffer)
    /// attachments forever.
    pub attachments_max: u32,
    /// Longest namespace, in bytes, `/` included.
    pub nsp_bytes_max: usize,
}

/// The first element of an EVENT payload.
#[derive(Debug, Clone, PartialEq)]
pub enum EventName<'a> {
    /// Borrowed when the JSON string has no escapes.
    Name(Cow<'a, str>),
    /// socket.io-parser also accepts a number as the event name.
    Number(f64),
}

/// One decoded packet; everything borrows the input text.
#[derive(Debug, Clone)]
pub struct Packet<'a> {
    pub kind: PacketType,
    /// `/` when the packet names none.
    pub nsp: &'a str,
    pub id: Option<u64>,
    /// Binary messages that must follow before the packet is whole; 0 unless binary.
    pub attachments: u32,
    /// The JSON payload exactly as sent (placeholders still in place for binary packets).
    pub data: Option<&'a RawValue>,
    /// The event name, for EVENT and BINARY_EVENT.
    pub event: Option<EventName<'a>>,
}

impl PartialEq for Packet<'_> {
    /// Payloads compare by their JSON text (`RawValue` has no `PartialEq`).
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.nsp == other.nsp
            && self.id == other.id
            && self.attachments == other.attachments
            && self.data.map(RawValue::get) == other.data.map(RawValue::get)
            && self.event == other.event
    }
}

/// Why a packet was refused. The caller closes the client: socket.io servers close the
/// Engine.IO session on a parse error ("parse error" disconnect reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An empty message.
    Empty,
    /// The first byte is not a type digit 0-6.
    UnknownType(u8),
    /// A binary packet without `<digits>-`, or with 0 attachments.
    BadAttachments,
    /// More attachments than [`Limits::attachments_max`] (an attachment bomb).
    TooManyAttachments { max: u32 },
    /// A namespace longer than [`Limits::nsp_bytes_max`].
    NamespaceTooLong { max_bytes: usize },
    /// An ack id over [`ACK_ID_MAX`].
    BadAckId,
    /// The payload is not JSON (or has more than serde_json's 128 levels of nesting).
    BadJson,
    /// The payload's shape is wrong for the type (`isPayloadValid`), or it is missing
    /// where the type needs one.
    InvalidPayload(PacketType),
    /// [`reconstruct`] got a different number of attachments than announced.
    AttachmentCount { expected: u32, got: usize },
    /// A placeholder whose `num` is not an index of the attachments.
    BadPlaceholder,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Empty => f.write_str("empty socket.io packet"),
            Error::UnknownType(b) => write!(f, "socket.io packet type {b:#04x} is not 0-6"),
            Error::BadAttachments => f.write_str("socket.io binary packet has no attachment count"),
            Error::TooManyAttachments { max } => {
                write!(f, "socket.io packet announces more than {max} attachments")
            }
            Error::NamespaceTooLong { max_bytes } => {
                write!(f, "socket.io namespace is longer than {max_bytes} bytes")
            }
            Error::BadAckId => write!(f, "socket.io ack id is over {ACK_ID_MAX}"),
            Error::BadJson => f.write_str("socket.io payload is not JSON"),
            Error::InvalidPayload(kind) => write!(f, "socket.io payload is invalid for {kind:?}"),
            Error::AttachmentCount { expected, got } => {
                write!(
                    f,
                    "socket.io packet announced {expected} attachments, got {got}"
                )
            }
            Error::BadPlaceholder => f.write_str("socket.io placeholder points at no attachment"),
        }
    }
}

impl std::error::Error for Error {}

/// Decodes one text packet (the data of an Engine.IO message packet).
pub fn decode<'a>(text: &'a str, limits: &Limits) -> Result<Packet<'a>, Error> {
    let bytes = text.as_bytes();
    let first = *bytes.first().ok_or(Error::Empty)?;
    let kind = PacketType::from_byte(first).ok_or(Error::UnknownType(first))?;
    // Every split below is at an ASCII byte, so every slice is at a char boundary.
    let mut at = 1;
    let mut attachments = 0u32;
    if kind.is_binary() {
        let dash = bytes[at..]
            .iter()
            .position(|&b| b == b'-')
            .ok_or(Error::BadAttachments)?;
        let digits = &bytes[at..at + dash];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Error::BadAttachments);
        }
        let too_many = Error::TooManyAttachments {
            max: limits.attachments_max,
        };
        for &d in digits {
            attachments = attachments
                .checked_mul(10)
                .and_then(|n| n.checked_add(u32::from(d - b'0')))
                .ok_or(too_many.clone())?;
        }
        if attachments == 0 {
            return Err(Error::BadAttachments);
        }
        if attachments > limits.attachments_max {
            return Err(too_many);
        }
        at += dash + 1;
    }
    let mut nsp = "/";
    if bytes.get(at) == Some(&b'/') {
        // The namespace runs to the first ',' or, with none, to the end (socket.io-parser).
        let end = bytes[at..]
            .iter()
            .position(|&b| b == b',')
            .map_or(bytes.len(), |comma| at + comma);
        nsp = &text[at..end];
        if nsp.len() > limits.nsp_bytes_max {
            return Err(Error::NamespaceTooLong {
                max_bytes: limits.nsp_bytes_max,
            });
        }
        at = (end + 1).min(bytes.len());
    }
    let mut id = None;
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits > 0 {
        let mut n = 0u64;
        for &d in &bytes[at..at + digits] {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .filter(|&n| n <= ACK_ID_MAX)
                .ok_or(Error::BadAckId)?;
        }
        id = Some(n);
        at += digits;
    }
    let data = if at < bytes.len() {
        Some(serde_json::from_str::<&RawValue>(&text[at..]).map_err(|_| Error::BadJson)?)
    } else {
        None
    };
    let event = check_payload(kind, data)?;
    Ok(Packet {
        kind,
        nsp,
        id,
        attachments,
        data,
        event,
    })
}

/// socket.io-parser's `isPayloadValid`, plus: an EVENT or ACK must have a payload (the
/// parser lets `2` through, and the server then has no event name to dispatch).
fn check_payload<'a>(
    kind: PacketType,
    data: Option<&'a RawValue>,
) -> Result<Option<EventName<'a>>, Error> {
    let invalid = Error::InvalidPayload(kind);
    let first = data.and_then(|d| d.get().as_bytes().first().copied());
    match kind {
        PacketType::Connect if data.is_none() || first == Some(b'{') => Ok(None),
        PacketType::Disconnect if data.is_none() => Ok(None),
        PacketType::ConnectError if data.is_none() || matches!(first, Some(b'{' | b'"')) => {
            Ok(None)
        }
        PacketType::Ack | PacketType::BinaryAck if first == Some(b'[') => Ok(None),
        PacketType::Event | PacketType::BinaryEvent if first == Some(b'[') => {
            let Some(raw) = data else {
                return Err(invalid);
            };
            let head =
                serde_json::from_str::<EventHead<'a>>(raw.get()).map_err(|_| invalid.clone())?;
            match head.0 {
                Some(EventName::Name(name)) if RESERVED_EVENTS.contains(&&*name) => Err(invalid),
                Some(name) => Ok(Some(name)),
                None => Err(invalid),
            }
        }
        _ => Err(invalid),
    }
}

/// The first element of a JSON array, if it is a string or a number; the rest is skipped
/// without building anything.
struct EventHead<'a>(Option<EventName<'a>>);

impl<'de> de::Deserialize<'de> for EventHead<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(HeadVisitor)
    }
}

struct HeadVisitor;

impl<'de> Visitor<'de> for HeadVisitor {
    type Value = EventHead<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let head = seq.next_element_seed(NameSeed)?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(EventHead(head))
    }
}

struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = EventName<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(NameVisitor)
    }
}

struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = EventName<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event name (string or number)")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(EventName::Name(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(EventName::Name(Cow::Owned(v.to_string())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(EventName::Name(Cow::Owned(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(EventName::Number(v as f64))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(EventName::Number(v as f64))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(EventName::Number(v))
    }
}

/// Puts a binary packet's attachments in place of its placeholders and returns the whole
/// payload as a [`Value`] (`Null` if the packet had none). `attachments` are the binary
/// messages that followed the packet, in order; their count must be exactly
/// [`Packet::attachments`]. Objects that are not placeholders are kept as they are; in a
/// packet that is not binary nothing is replaced (socket.io-parser only reconstructs
/// binary packets).
pub fn reconstruct(packet: &Packet<'_>, attachments: &[Bytes]) -> Result<Value, Error> {
    if attachments.len() != packet.attachments as usize {
        return Err(Error::AttachmentCount {
            expected: packet.attachments,
            got: attachments.len(),
        });
    }
    let Some(raw) = packet.data else {
        return Ok(Value::Null);
    };
    let json: serde_json::Value = serde_json::from_str(raw.get()).map_err(|_| Error::BadJson)?;
    if !packet.kind.is_binary() {
        return Ok(Value::from_json(json));
    }
    replace_placeholders(json, attachments)
}

/// Depth is bounded by serde_json's recursion limit (128), so this recursion is too.
fn replace_placeholders(json: serde_json::Value, attachments: &[Bytes]) -> Result<Value, Error> {
    use serde_json::Value as J;
    Ok(match json {
        J::Object(map) if map.get("_placeholder") == Some(&J::Bool(true)) => {
            let num = map
                .get("num")
                .and_then(J::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or(Error::BadPlaceholder)?;
            Value::Binary(attachments.get(num).ok_or(Error::BadPlaceholder)?.clone())
        }
        J::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| Ok((k, replace_placeholders(v, attachments)?)))
                .collect::<Result<_, Error>>()?,
        ),
        J::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| replace_placeholders(v, attachments))
                .collect::<Result<_, Error>>()?,
        ),
        other => Value::from_json(other),
    })
}

/// Writes the packet head: type, `<n>-` for binary types, `/nsp,` unless `/`, ack id.
fn write_head(out: &mut Vec<u8>, kind: PacketType, attachments: usize, nsp: &str, id: Option<u64>) {
    // socket.io-parser refuses to encode a namespace with a comma: it would end early on
    // the wire. Ours come from decoded packets (which cannot hold one) or from config.
    debug_assert!(!nsp.contains(','), "namespace {nsp:?} contains a comma");
    out.push(kind.as_byte());
    if kind.is_binary() {
        out.extend_from_slice(attachments.to_string().as_bytes());
        out.push(b'-');
    }
    if !nsp.is_empty() && nsp != "/" {
        out.extend_from_slice(nsp.as_bytes());
        out.push(b',');
    }
    if let Some(id) = id {
        out.extend_from_slice(id.to_string().as_bytes());
    }
}

fn into_string(out: Vec<u8>) -> String {
    // Everything written is ASCII or came from a &str.
    String::from_utf8(out).unwrap_or_default()
}

/// Encodes a text packet with a payload already serialized as JSON (or none). For EVENT
/// and ACK whose arguments may hold binary, use [`encode_event`] / [`encode_ack`].
pub fn encode_raw(kind: PacketType, nsp: &str, id: Option<u64>, data: Option<&RawValue>) -> String {
    debug_assert!(!kind.is_binary(), "binary packets need their attachments");
    let mut out = Vec::with_capacity(8 + nsp.len() + data.map_or(0, |d| d.get().len()));
    write_head(&mut out, kind, 0, nsp, id);
    if let Some(data) = data {
        out.extend_from_slice(data.get().as_bytes());
    }
    into_string(out)
}

/// The server's answer to a CONNECT: `0{"sid":"<sid>"}` (or `0/nsp,{"sid":..}`).
pub fn encode_connect(nsp: &str, sid: &str) -> String {
    let mut out = Vec::with_capacity(16 + nsp.len() + sid.len());
    write_head(&mut out, PacketType::Connect, 0, nsp, None);
    out.extend_from_slice(b"{\"sid\":");
    write_json_str(&mut out, sid);
    out.push(b'}');
    into_string(out)
}

/// A refused CONNECT: `4{"message":"<message>"}`, as socket.io servers send it.
pub fn encode_connect_error(nsp: &str, message: &str) -> String {
    let mut out = Vec::with_capacity(20 + nsp.len() + message.len());
    write_head(&mut out, PacketType::ConnectError, 0, nsp, None);
    out.extend_from_slice(b"{\"message\":");
    write_json_str(&mut out, message);
    out.push(b'}');
    into_string(out)
}

/// `1` or `1/nsp,`: the server closes the namespace for this client.
pub fn encode_disconnect(nsp: &str) -> String {
    let mut out = Vec::with_capacity(2 + nsp.len());
    write_head(&mut out, PacketType::Disconnect, 0, nsp, None);
    into_string(out)
}

/// Encodes an EVENT whose `args` (the whole array, event name first) may hold binary:
/// with none it is a plain EVENT, with some a BINARY_EVENT whose placeholders number the
/// returned attachments, which go out as binary messages right after it.
pub fn encode_event(nsp: &str, id: Option<u64>, args: &Value) -> (String, Vec<Bytes>) {
    encode_with_args(PacketType::Event, PacketType::BinaryEvent, nsp, id, args)
}

/// Encodes an ACK for `id` (see [`encode_event`] for binary).
pub fn encode_ack(nsp: &str, id: u64, args: &Value) -> (String, Vec<Bytes>) {
    encode_with_args(PacketType::Ack, PacketType::BinaryAck, nsp, Some(id), args)
}

fn encode_with_args(
    text: PacketType,
    binary: PacketType,
    nsp: &str,
    id: Option<u64>,
    args: &Value,
) -> (String, Vec<Bytes>) {
    let mut json = Vec::with_capacity(64);
    let mut attachments = Vec::new();
    args.write_json(&mut json, &mut attachments);
    let kind = if attachments.is_empty() { text } else { binary };
    let mut out = Vec::with_capacity(16 + nsp.len() + json.len());
    write_head(&mut out, kind, attachments.len(), nsp, id);
    out.extend_from_slice(&json);
    (into_string(out), attachments)
}

/// What a server push carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push<'a> {
    /// One JSON value, already serialized and checked (at publish); embedded as it is.
    Json(&'a str),
    /// Text that is not JSON: sent as a JSON string.
    Text(&'a str),
    /// Bytes: sent as attachment 0 of a BINARY_EVENT. The bytes themselves go out next as
    /// a binary message (a WebSocket binary frame, or `b`+base64 in a polling body).
    Binary,
}

/// Encodes a server push once, as the Engine.IO message packet every socket.io recipient
/// gets: `42["message",<payload>]`, `42/chat,["message",<payload>]`, or for binary
/// `451-["message",{"_placeholder":true,"num":0}]`. The bytes serve WebSocket text frames
/// and polling bodies alike, so the engine encodes each broadcast once per codec and shares
/// them. A JSON payload is copied, never parsed again.
pub fn encode_push(nsp: &str, event: &str, id: Option<u64>, payload: Push<'_>) -> Bytes {
    let payload_bytes = match payload {
        Push::Json(text) | Push::Text(text) => text.len(),
        Push::Binary => 32,
    };
    let mut out = Vec::with_capacity(16 + nsp.len() + event.len() + payload_bytes);
    out.push(super::engineio::PacketType::Message.as_byte());
    let kind = match payload {
        Push::Binary => PacketType::BinaryEvent,
        _ => PacketType::Event,
    };
    write_head(&mut out, kind, 1, nsp, id);
    out.push(b'[');
    write_json_str(&mut out, event);
    out.push(b',');
    match payload {
        Push::Json(json) => out.extend_from_slice(json.as_bytes()),
        Push::Text(text) => write_json_str(&mut out, text),
        Push::Binary => out.extend_from_slice(b"{\"_placeholder\":true,\"num\":0}"),
    }
    out.push(b']');
    Bytes::from(out)
}

/// Decodes arbitrary bytes as a packet and reconstructs it; must never panic.
pub fn fuzz_one(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits {
        attachments_max: 4,
        nsp_bytes_max: 64,
    };
    let Ok(packet) = decode(text, &limits) else {
        return;
    };
    assert!(packet.attachments <= 4 && packet.nsp.len() <= 64);
    assert!(packet.id.is_none_or(|id| id <= ACK_ID_MAX));
    let attachments: Vec<Bytes> = (0..packet.attachments)
        .map(|i| Bytes::from(vec![i as u8]))
        .collect();
    let _ = reconstruct(&packet, &attachments);
    let _ = reconstruct(&packet, &attachments[..attachments.len().saturating_sub(1)]);
    // What decodes re-encodes to a packet that decodes the same (namespaces without a
    // comma only: the wire cannot carry one back).
    if !packet.kind.is_binary() && !packet.nsp.contains(',') {
        let again = encode_raw(packet.kind, packet.nsp, packet.id, packet.data);
        let round = decode(&again, &limits);
        assert_eq!(
            round.as_ref().map(|p| (p.kind, p.nsp, p.id)),
            Ok((packet.kind, packet.nsp, packet.id))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    const LIMITS: Limits = Limits {
        attachments_max: 10,
        nsp_bytes_max: 64,
    };

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn decodes_every_fixture_socket_io_parser_wrote() {
        for fixture in testing::fixtures() {
            let name = fixture["name"].as_str().unwrap();
            if !name.starts_with("sio_") {
                continue;
            }
            let text = fixture["text"].as_str().unwrap();
            let expect = &fixture["expect"];
            let packet = decode(text, &LIMITS).unwrap_or_else(|e| panic!("{name}: {e}"));
            let attachments: Vec<Bytes> = fixture["attachments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| Bytes::from(testing::hex(h.as_str().unwrap())))
                .collect();
            // socket.io-parser hands binary packets up as EVENT/ACK once reconstructed.
            let kind = match packet.kind {
                PacketType::BinaryEvent => PacketType::Event,
                PacketType::BinaryAck => PacketType::Ack,
                other => other,
            };
            assert_eq!(kind as u64, expect["type"].as_u64().unwrap(), "{name}");
            assert_eq!(packet.nsp, expect["nsp"], "{name}");
            assert_eq!(packet.id, expect["id"].as_u64(), "{name}");
            let value = reconstruct(&packet, &attachments).unwrap();
            let want = expect
                .get("data")
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            assert!(testing::same(&testing::view(&value), &want), "{name}");
        }
    }

    #[test]
    fn encodes_what_socket_io_parser_encodes() {
        let f = |name: &str| testing::fixture(name)["text"].as_str().unwrap().to_string();
        assert_eq!(
            encode_raw(PacketType::Connect, "/", None, None),
            f("sio_connect")
        );
        assert_eq!(
            encode_raw(
                PacketType::Connect,
                "/admin",
                None,
                Some(raw(r#"{"token":"abc"}"#))
            ),
            f("sio_connect_nsp_auth")
        );
        assert_eq!(
            encode_connect("/", "oSO0OpakMV_3jnilAAAA"),
            f("sio_connect_reply")
        );
        assert_eq!(encode_disconnect("/admin"), f("sio_disconnect_nsp"));
        assert_eq!(
            encode_connect_error("/", "Not authorized"),
            f("sio_connect_error")
        );
        let hello = Value::Array(vec![Value::String("hello".into()), Value::Number(1.into())]);
        assert_eq!(encode_event("/", None, &hello), (f("sio_event"), vec![]));
        let delete = Value::from_json(serde_json::json!(["project:delete", 123]));
        assert_eq!(
            encode_event("/admin", Some(456), &delete).0,
            f("sio_event_ack")
        );
        assert_eq!(
            encode_ack("/admin", 456, &Value::Array(vec![])).0,
            f("sio_ack")
        );
        let binary = Value::Array(vec![
            Value::String("hello".into()),
            Value::Binary(Bytes::from_static(&[1, 2, 3])),
        ]);
        let (text, attachments) = encode_event("/", None, &binary);
        assert_eq!(text, f("sio_binary_event"));
        assert_eq!(attachments, vec![Bytes::from_static(&[1, 2, 3])]);
        let nested = Value::Array(vec![Value::Object(vec![
            ("a".into(), Value::Binary(Bytes::from_static(&[3]))),
            (
                "b".into(),
                Value::Array(vec![Value::Binary(Bytes::from_static(&[4, 5]))]),
            ),
        ])]);
        let (text, attachments) = encode_ack("/admin", 456, &nested);
        assert_eq!(text, f("sio_binary_ack"));
        assert_eq!(attachments.len(), 2);
        // And back: what we encode decodes and reconstructs to the same value.
        let packet = decode(&text, &LIMITS).unwrap();
        assert_eq!(reconstruct(&packet, &attachments).unwrap(), nested);
    }

    #[test]
    fn push_is_encoded_once_without_reparsing() {
        assert_eq!(
            encode_push("/", "message", None, Push::Json(r#"{"a":1}"#)),
            Bytes::from_static(br#"42["message",{"a":1}]"#)
        );
        assert_eq!(
            encode_push("/chat", "news", None, Push::Text("say \"hi\"\n")),
            Bytes::from_static(br#"42/chat,["news","say \"hi\"\n"]"#)
        );
        let binary = encode_push("/", "message", None, Push::Binary);
        assert_eq!(
            binary,
            Bytes::from_static(br#"451-["message",{"_placeholder":true,"num":0}]"#)
        );
        // Each decodes as the socket.io client would see it.
        let text = std::str::from_utf8(&binary[1..]).unwrap();
        let packet = decode(text, &LIMITS).unwrap();
        let value = reconstruct(&packet, &[Bytes::from_static(b"xyz")]).unwrap();
        assert_eq!(
            value,
            Value::Array(vec![
                Value::String("message".into()),
                Value::Binary(Bytes::from_static(b"xyz"))
            ])
        );
        let event = encode_push("/", "a\u{1e}b", None, Push::Json("[1]"));
        assert!(
            !event.contains(&0x1e),
            "the event name is escaped for polling bodies"
        );
    }

    #[test]
    fn parses_every_part_of_the_head() {
        let p = decode(r#"2/admin,456["project:delete",123]"#, &LIMITS).unwrap();
        assert_eq!(
            (p.kind, p.nsp, p.id, p.attachments),
            (PacketType::Event, "/admin", Some(456), 0)
        );
        assert_eq!(
            p.event,
            Some(EventName::Name(Cow::Borrowed("project:delete")))
        );
        let p = decode(r#"2["caf\u00e9"]"#, &LIMITS).unwrap();
        assert_eq!(p.event, Some(EventName::Name(Cow::Owned("café".into()))));
        let p = decode(r#"2[7,"x"]"#, &LIMITS).unwrap();
        assert_eq!(p.event, Some(EventName::Number(7.0)));
        let p = decode("0/admin", &LIMITS).unwrap();
        assert_eq!((p.nsp, p.data.is_none()), ("/admin", true));
        let p = decode("1/admin,", &LIMITS).unwrap();
        assert_eq!((p.kind, p.nsp), (PacketType::Disconnect, "/admin"));
        let p = decode(r#"3/admin,9007199254740991[]"#, &LIMITS).unwrap();
        assert_eq!(p.id, Some(ACK_ID_MAX));
        let p = decode(r#"510-/x,7["a",1]"#, &LIMITS).unwrap();
        assert_eq!((p.attachments, p.nsp, p.id), (10, "/x", Some(7)));
        let p = decode(r#"4"not allowed""#, &LIMITS).unwrap();
        assert_eq!(p.kind, PacketType::ConnectError);
        // JSON.parse takes whitespace around the value, so socket.io-parser does too.
        let p = decode(r#"0 {"token":1} "#, &LIMITS).unwrap();
        assert_eq!(p.data.map(RawValue::get), Some(r#"{"token":1}"#));
    }

    #[test]
    fn refuses_bad_packets_with_a_cause() {
        let cases: &[(&str, Error)] = &[
            ("", Error::Empty),
            ("7", Error::UnknownType(b'7')),
            ("x", Error::UnknownType(b'x')),
            (r#"5["a"]"#, Error::BadAttachments),
            (r#"5-["a"]"#, Error::BadAttachments),
            (r#"50-["a"]"#, Error::BadAttachments),
            (r#"5x-["a"]"#, Error::BadAttachments),
            (r#"5+1-["a"]"#, Error::BadAttachments),
            (r#"511-["a"]"#, Error::TooManyAttachments { max: 10 }),
            (
                r#"599999999999999999999-["a"]"#,
                Error::TooManyAttachments { max: 10 },
            ),
            (r#"29007199254740992["a"]"#, Error::BadAckId),
            (r#"2999999999999999999999999["a"]"#, Error::BadAckId),
            (r#"2["a""#, Error::BadJson),
            (r#"2["a"]x"#, Error::BadJson),
            ("2", Error::InvalidPayload(PacketType::Event)),
            ("2[]", Error::InvalidPayload(PacketType::Event)),
            ("2{}", Error::InvalidPayload(PacketType::Event)),
            (r#"2[{"a":1}]"#, Error::InvalidPayload(PacketType::Event)),
            (r#"2[null]"#, Error::InvalidPayload(PacketType::Event)),
            (
                r#"2["disconnect"]"#,
                Error::InvalidPayload(PacketType::Event),
            ),
            // After an EVENT type a digit starts an ack id, not an attachment count.
            (r#"21-["connect"]"#, Error::BadJson),
            (r#"0[]"#, Error::InvalidPayload(PacketType::Connect)),
            (r#"0"x""#, Error::InvalidPayload(PacketType::Connect)),
            (r#"1{}"#, Error::InvalidPayload(PacketType::Disconnect)),
            (r#"3{}"#, Error::InvalidPayload(PacketType::Ack)),
            ("3", Error::InvalidPayload(PacketType::Ack)),
            (r#"4[]"#, Error::InvalidPayload(PacketType::ConnectError)),
        ];
        for (text, want) in cases {
            assert_eq!(decode(text, &LIMITS).as_ref().err(), Some(want), "{text}");
        }
        let long = format!("0/{},", "n".repeat(64));
        assert_eq!(
            decode(&long, &LIMITS),
            Err(Error::NamespaceTooLong { max_bytes: 64 })
        );
        // Deep nesting: the raw payload is only skimmed (no recursion), and building a
        // value refuses it past serde_json's 128 levels instead of exhausting the stack.
        let deep = format!("2[\"a\",{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        let packet = decode(&deep, &LIMITS).unwrap();
        assert_eq!(reconstruct(&packet, &[]), Err(Error::BadJson));
        assert!(Error::TooManyAttachments { max: 10 }
            .to_string()
            .contains("10"));
    }

    #[test]
    fn reconstruction_refuses_hostile_placeholders() {
        fn packet(text: &str) -> Packet<'_> {
            decode(text, &LIMITS).unwrap()
        }
        let one = [Bytes::from_static(b"x")];
        let p = packet(r#"51-["a",{"_placeholder":true,"num":1}]"#);
        assert_eq!(reconstruct(&p, &one), Err(Error::BadPlaceholder));
        for bad in [r#"-1"#, r#"0.5"#, r#""0""#, "null", "1e30"] {
            let text = format!(r#"51-["a",{{"_placeholder":true,"num":{bad}}}]"#);
            assert_eq!(
                reconstruct(&packet(&text), &one),
                Err(Error::BadPlaceholder),
                "{bad}"
            );
        }
        let p = packet(r#"51-["a",{"_placeholder":true}]"#);
        assert_eq!(reconstruct(&p, &one), Err(Error::BadPlaceholder));
        let p = packet(r#"52-["a",[[{"k":{"_placeholder":true,"num":1}}]]]"#);
        assert_eq!(
            reconstruct(&p, &one),
            Err(Error::AttachmentCount {
                expected: 2,
                got: 1
            }),
            "missing attachments"
        );
        let two = [Bytes::from_static(b"x"), Bytes::from_static(b"y")];
        assert_eq!(
            reconstruct(&p, &two).unwrap(),
            Value::Array(vec![
                Value::String("a".into()),
                Value::Array(vec![Value::Array(vec![Value::Object(vec![(
                    "k".into(),
                    Value::Binary(Bytes::from_static(b"y"))
                )])])])
            ])
        );
        // `_placeholder` other than true is data; a placeholder in a non-binary EVENT too.
        let p = packet(r#"51-["a",{"_placeholder":"yes","num":0}]"#);
        assert!(matches!(reconstruct(&p, &one).unwrap(), Value::Array(_)));
        let p = packet(r#"2["a",{"_placeholder":true,"num":0}]"#);
        assert_eq!(
            reconstruct(&p, &one),
            Err(Error::AttachmentCount {
                expected: 0,
                got: 1
            })
        );
        assert!(!reconstruct(&p, &[]).unwrap().has_binary());
    }

    #[test]
    fn fuzz_one_on_seeded_random_and_mutated_inputs() {
        let seeds: Vec<Vec<u8>> = testing::fixtures()
            .iter()
            .filter(|f| f["name"].as_str().unwrap().starts_with("sio_"))
            .map(|f| f["text"].as_str().unwrap().as_bytes().to_vec())
            .chain([br#"53-/a,12[{"_placeholder":true,"num":2},"x"]"#.to_vec()])
            .collect();
        let dictionary: &[&[u8]] = &[
            b"-",
            b",",
            b"/",
            b"9",
            b"[",
            b"]",
            b"{\"_placeholder\":true,\"num\":3}",
            b"\"disconnect\"",
            b"99999999999999999999",
        ];
        testing::fuzz_mutations(&seeds, dictionary, 20_000, fuzz_one);
    }
}
