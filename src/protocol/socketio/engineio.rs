//! Engine.IO 4, the transport under Socket.IO: packet types, the open packet, HTTP
//! long-polling bodies, the query checks a request goes through before it reaches a
//! session, and session ids that name the shard owning them.
//!
//! Spec: socketio/engine.io-protocol (v4); behaviour checked against the reference server
//! (engine.io `lib/server.ts`, `lib/transports/polling.ts`) and engine.io-parser v5.
//!
//! Owns bytes and verdicts only. It does not own sessions (whether a sid is live, which
//! transport it uses now), timers (ping interval and timeout are numbers the caller puts in
//! the open packet and keeps itself), HTTP framing, or what a message means (that is
//! [`super::packet`]). Called by the socket.io front: the polling transport (GET/POST
//! bodies), the WebSocket transport (one packet per frame) and the upgrade path.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::{DecodePaddingMode, Engine};
use base64::prelude::BASE64_URL_SAFE_NO_PAD;

/// The protocol revision this module speaks (`EIO=4` in the query).
pub const PROTOCOL: u8 = 4;
/// The record separator between packets of a polling body (engine.io-protocol v4,
/// "Payload"): ASCII 30, which JSON never holds unescaped.
pub const SEPARATOR: u8 = 0x1e;
/// Prefix of a binary packet in a polling body: `b` then standard base64.
pub const BINARY_PREFIX: u8 = b'b';

/// Engine.IO packet types; the wire form is the ASCII digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// Server to client, once, right after the handshake: the JSON of [`Open`].
    Open = 0,
    /// Either side: the session ends (a polling client sends it to say goodbye).
    Close = 1,
    /// Server to client in v4 (the server pings, the client pongs); `2probe` from the client
    /// during an upgrade.
    Ping = 2,
    /// Client to server in v4; the server answers `2probe` with `3probe`.
    Pong = 3,
    /// The payload: a Socket.IO packet in text, or a binary attachment.
    Message = 4,
    /// Client to server on the new WebSocket: the upgrade is done, switch transports.
    Upgrade = 5,
    /// Server to client on the old polling request during an upgrade, so it returns.
    Noop = 6,
}

impl PacketType {
    pub fn from_byte(byte: u8) -> Option<PacketType> {
        Some(match byte {
            b'0' => PacketType::Open,
            b'1' => PacketType::Close,
            b'2' => PacketType::Ping,
            b'3' => PacketType::Pong,
            b'4' => PacketType::Message,
            b'5' => PacketType::Upgrade,
            b'6' => PacketType::Noop,
            _ => return None,
        })
    }

    pub fn as_byte(self) -> u8 {
        b'0' + self as u8
    }
}

/// One decoded packet. Text borrows from the input; binary borrows a WebSocket frame and
/// owns what base64 decoding of a polling packet produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A text packet: its type and what follows the type digit ("" if nothing).
    Text { kind: PacketType, data: &'a str },
    /// A binary message: a WebSocket binary frame, or `b<base64>` in a polling body.
    Binary(Cow<'a, [u8]>),
}

/// Why input is not Engine.IO. Over WebSocket the caller closes the session; in a polling
/// POST it answers [`Error::http_status`] and closes the session (engine.io closes it with
/// "parse error").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An empty packet (an empty frame, an empty body, or two separators in a row).
    Empty,
    /// The first byte is not a type digit 0-6 nor `b`.
    UnknownType(u8),
    /// `b` followed by bytes that are not base64.
    BadBase64,
    /// A polling body is not UTF-8 (it is text: binary travels as base64).
    NotUtf8,
    /// A polling body holds more packets than the caller allows.
    TooManyPackets { max: usize },
    /// A polling body is longer than maxPayload; engine.io answers 413.
    TooLarge { max_bytes: usize },
}

impl Error {
    /// The HTTP status for a polling POST that failed to decode.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::TooLarge { .. } => 413,
            _ => 400,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Empty => f.write_str("empty engine.io packet"),
            Error::UnknownType(b) => write!(f, "engine.io packet type {b:#04x} is not 0-6 or b"),
            Error::BadBase64 => f.write_str("engine.io binary packet is not base64"),
            Error::NotUtf8 => f.write_str("engine.io polling body is not UTF-8"),
            Error::TooManyPackets { max } => {
                write!(f, "engine.io polling body has more than {max} packets")
            }
            Error::TooLarge { max_bytes } => {
                write!(
                    f,
                    "engine.io polling body is over maxPayload ({max_bytes} bytes)"
                )
            }
        }
    }
}

impl std::error::Error for Error {}

/// Standard base64 that takes padding or not: engine.io-parser decodes with Node's
/// `Buffer.from(s, "base64")`, which does not insist on `=`.
const BASE64_ANY_PAD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes one text packet: a WebSocket text frame, or one packet of a polling body.
pub fn decode_text(text: &str) -> Result<Packet<'_>, Error> {
    let first = *text.as_bytes().first().ok_or(Error::Empty)?;
    if first == BINARY_PREFIX {
        let bytes = BASE64_ANY_PAD
            .decode(&text.as_bytes()[1..])
            .map_err(|_| Error::BadBase64)?;
        return Ok(Packet::Binary(Cow::Owned(bytes)));
    }
    let kind = PacketType::from_byte(first).ok_or(Error::UnknownType(first))?;
    // The type digit is ASCII, so byte 1 is a char boundary.
    Ok(Packet::Text {
        kind,
        data: &text[1..],
    })
}

/// A WebSocket binary frame is a message packet with no type byte (engine.io-protocol v4,
/// "Binary data").
pub fn decode_binary_frame(frame: &[u8]) -> Packet<'_> {
    Packet::Binary(Cow::Borrowed(frame))
}

/// Encodes a text packet: the type digit, then `data` (which must not hold 0x1e if it
/// will go into a polling body; JSON never does).
pub fn encode_text(kind: PacketType, data: &str) -> String {
    let mut out = String::with_capacity(1 + data.len());
    out.push(kind.as_byte() as char);
    out.push_str(data);
    out
}

/// What the open packet says (engine.io `Socket.onOpen`): exactly these five keys, in this
/// order, the numbers as JSON integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open<'a> {
    pub sid: &'a str,
    /// Transports the client may upgrade to: `["websocket"]` on polling, `[]` on WebSocket.
    pub upgrades: &'a [&'a str],
    pub ping_interval_ms: u32,
    pub ping_timeout_ms: u32,
    /// The largest polling body the server reads (engine.io's `maxHttpBufferSize`); the
    /// client splits its POSTs to stay under it.
    pub max_payload_bytes: u32,
}

/// Encodes the open packet, type digit included:
/// `0{"sid":"..","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}`.
pub fn encode_open(open: &Open<'_>) -> String {
    let mut out = Vec::with_capacity(128);
    out.push(PacketType::Open.as_byte());
    out.extend_from_slice(b"{\"sid\":");
    super::write_json_str(&mut out, open.sid);
    out.extend_from_slice(b",\"upgrades\":[");
    for (i, upgrade) in open.upgrades.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        super::write_json_str(&mut out, upgrade);
    }
    out.extend_from_slice(
        format!(
            "],\"pingInterval\":{},\"pingTimeout\":{},\"maxPayload\":{}}}",
            open.ping_interval_ms, open.ping_timeout_ms, open.max_payload_bytes
        )
        .as_bytes(),
    );
    // Every byte pushed is ASCII or came from a &str through serde_json.
    String::from_utf8(out).unwrap_or_default()
}

/// Bounds on one polling POST body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLimits {
    /// The maxPayload announced in the open packet.
    pub body_bytes_max: usize,
    /// Most packets one body may carry, so a body of separators cannot make a huge Vec.
    pub packets_max: usize,
}

/// Finds the first packet of a polling body of which `buf` is what has arrived so far.
/// Returns the packet and the bytes it used (its separator included), or `Ok(None)` when
/// no separator has arrived yet and `body_complete` is false: the packet may go on in the
/// next read, and a UTF-8 character may be split across reads.
pub fn next_in_payload(
    buf: &[u8],
    body_complete: bool,
) -> Result<Option<(Packet<'_>, usize)>, Error> {
    let (segment, used) = match buf.iter().position(|&b| b == SEPARATOR) {
        Some(at) => (&buf[..at], at + 1),
        None if body_complete => (buf, buf.len()),
        None => return Ok(None),
    };
    let text = std::str::from_utf8(segment).map_err(|_| Error::NotUtf8)?;
    Ok(Some((decode_text(text)?, used)))
}

/// Decodes a whole polling POST body into its packets. An empty body, an empty packet, or
/// any bad packet refuses the whole body, as engine.io-parser's `decodePayload` stops at
/// its first error packet and the server then closes the session.
pub fn decode_payload<'a>(
    body: &'a [u8],
    limits: &PayloadLimits,
) -> Result<Vec<Packet<'a>>, Error> {
    if body.len() > limits.body_bytes_max {
        return Err(Error::TooLarge {
            max_bytes: limits.body_bytes_max,
        });
    }
    let mut packets = Vec::new();
    let mut at = 0;
    loop {
        if packets.len() == limits.packets_max {
            return Err(Error::TooManyPackets {
                max: limits.packets_max,
            });
        }
        let rest = &body[at..];
        // A complete body always yields a packet or an error; None cannot happen.
        let (packet, used) = next_in_payload(rest, true)?.ok_or(Error::Empty)?;
        packets.push(packet);
        at += used;
        // No separator after this packet: it was the last. A separator at the very end
        // leaves one more, empty, packet, refused as Empty on the next turn, as
        // engine.io-parser refuses it.
        if rest.get(used - 1) != Some(&SEPARATOR) {
            return Ok(packets);
        }
    }
}

/// A packet waiting in a session's queue for the next polling GET, already encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued<'a> {
    /// A text packet, type digit included: the same bytes a WebSocket text frame carries,
    /// so a broadcast encoded once serves both transports.
    Text(&'a [u8]),
    /// A binary message; it goes out as `b` + base64.
    Binary(&'a [u8]),
}

impl Queued<'_> {
    /// Bytes this packet takes in a polling body, separator not included.
    pub fn body_bytes(&self) -> usize {
        match self {
            Queued::Text(t) => t.len(),
            Queued::Binary(b) => 1 + b.len().div_ceil(3) * 4,
        }
    }
}

/// Encodes queued packets into one polling GET body, `\x1e` between packets. Takes packets
/// while the body stays within `body_bytes_max`, but always at least one (a packet larger
/// than the bound still has to go out some time); returns how many it took, so the rest
/// wait for the next GET.
pub fn encode_payload(queue: &[Queued<'_>], body_bytes_max: usize, out: &mut Vec<u8>) -> usize {
    let mut taken = 0;
    let mut body_bytes = 0usize;
    for packet in queue {
        let add = packet.body_bytes() + usize::from(taken > 0);
        if taken > 0 && body_bytes.saturating_add(add) > body_bytes_max {
            break;
        }
        if taken > 0 {
            out.push(SEPARATOR);
        }
        match packet {
            Queued::Text(text) => {
                debug_assert!(!text.contains(&SEPARATOR), "a text packet holds 0x1e");
                out.extend_from_slice(text);
            }
            Queued::Binary(bytes) => {
                out.push(BINARY_PREFIX);
                let at = out.len();
                out.resize(at + bytes.len().div_ceil(3) * 4, 0);
                // The slice is sized exactly for padded base64 of `bytes`.
                let written = STANDARD.encode_slice(bytes, &mut out[at..]).unwrap_or(0);
                out.truncate(at + written);
            }
        }
        body_bytes += add;
        taken += 1;
    }
    taken
}

/// The two transports of Engine.IO 4 (WebTransport is not spoken here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    Websocket,
}

impl Transport {
    pub fn parse(name: &str) -> Option<Transport> {
        match name {
            "polling" => Some(Transport::Polling),
            "websocket" => Some(Transport::Websocket),
            _ => None,
        }
    }
}

/// The request method, as far as Engine.IO cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Other,
}

/// The query parameters Engine.IO reads; absent ones are `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Query<'a> {
    pub eio: Option<&'a str>,
    pub transport: Option<&'a str>,
    pub sid: Option<&'a str>,
}

/// What to do with a request that passed [`check_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// No sid: open a session on `transport` and answer with the open packet (a polling GET
    /// body, or the first frame after the WebSocket upgrade).
    Handshake { transport: Transport },
    /// A request for the session `sid`. The caller looks it up: unknown is
    /// [`RequestError::UnknownSid`]; then [`check_session_transport`].
    Session {
        sid: &'a str,
        transport: Transport,
        upgrade: bool,
    },
}

/// The reference server's request errors (engine.io `Server.errors` and `errorMessages`).
/// A polling request gets [`RequestError::http_status`] with [`RequestError::body`] as
/// `application/json`; a WebSocket upgrade gets `400 Bad Request` with
/// [`RequestError::message`] as a `text/html` body (engine.io's `abortUpgrade`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// 0: `transport` is missing or not one this server runs.
    UnknownTransport,
    /// 1: no live session has this sid (or it is not a sid at all).
    UnknownSid,
    /// 2: a handshake (no sid) that is not a GET.
    BadHandshakeMethod,
    /// 3: transport mismatch, a WebSocket handshake without an upgrade, bad origin, ...
    BadRequest,
    /// 4: the application refused the handshake; answered with 403, not 400.
    Forbidden,
    /// 5: `EIO` is not 4 (engine.io treats anything else as v3, which volley does not speak).
    UnsupportedProtocolVersion,
}

impl RequestError {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn message(self) -> &'static str {
        match self {
            RequestError::UnknownTransport => "Transport unknown",
            RequestError::UnknownSid => "Session ID unknown",
            RequestError::BadHandshakeMethod => "Bad handshake method",
            RequestError::BadRequest => "Bad request",
            RequestError::Forbidden => "Forbidden",
            RequestError::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// engine.io's `abortRequest`: 403 for Forbidden, 400 for everything else.
    pub fn http_status(self) -> u16 {
        match self {
            RequestError::Forbidden => 403,
            _ => 400,
        }
    }

    /// The exact JSON body engine.io writes (`JSON.stringify({code, message})`).
    pub fn body(self) -> &'static str {
        match self {
            RequestError::UnknownTransport => r#"{"code":0,"message":"Transport unknown"}"#,
            RequestError::UnknownSid => r#"{"code":1,"message":"Session ID unknown"}"#,
            RequestError::BadHandshakeMethod => r#"{"code":2,"message":"Bad handshake method"}"#,
            RequestError::BadRequest => r#"{"code":3,"message":"Bad request"}"#,
            RequestError::Forbidden => r#"{"code":4,"message":"Forbidden"}"#,
            RequestError::UnsupportedProtocolVersion => {
                r#"{"code":5,"message":"Unsupported protocol version"}"#
            }
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "engine.io error {}: {}", self.code(), self.message())
    }
}

impl std::error::Error for RequestError {}

/// Checks a request's query in the order engine.io's `verify` and `handshake` do:
/// transport, then (with a sid) the sid's shape, else (a handshake) method, upgrade,
/// protocol version. `upgrade` is true for a WebSocket upgrade request; `websocket_enabled`
/// false leaves polling only. Origin and `allowRequest` checks belong to the caller
/// ([`RequestError::BadRequest`], [`RequestError::Forbidden`]).
pub fn check_request<'a>(
    query: &Query<'a>,
    method: Method,
    upgrade: bool,
    websocket_enabled: bool,
) -> Result<Action<'a>, RequestError> {
    let transport = query
        .transport
        .and_then(Transport::parse)
        .filter(|&t| t == Transport::Polling || websocket_enabled)
        .ok_or(RequestError::UnknownTransport)?;
    // engine.io: an upgrade whose transport does not handle upgrades is closed.
    if upgrade && transport != Transport::Websocket {
        return Err(RequestError::BadRequest);
    }
    if let Some(sid) = query.sid.filter(|s| !s.is_empty()) {
        if owner_shard(sid).is_none() {
            return Err(RequestError::UnknownSid);
        }
        return Ok(Action::Session {
            sid,
            transport,
            upgrade,
        });
    }
    if method != Method::Get {
        return Err(RequestError::BadHandshakeMethod);
    }
    if transport == Transport::Websocket && !upgrade {
        return Err(RequestError::BadRequest);
    }
    if query.eio != Some("4") {
        return Err(RequestError::UnsupportedProtocolVersion);
    }
    Ok(Action::Handshake { transport })
}

/// The second half of engine.io's sid check, once the session is found: a plain request
/// must use the session's current transport; only an upgrade may name another.
pub fn check_session_transport(
    current: Transport,
    requested: Transport,
    upgrade: bool,
) -> Result<(), RequestError> {
    if !upgrade && current != requested {
        return Err(RequestError::BadRequest);
    }
    Ok(())
}

/// Characters in a sid: 15 bytes in base64url, the length engine.io's `base64id` makes.
pub const SID_CHARS: usize = 20;
/// Random bytes the caller supplies per sid: 96 bits, far past guessing.
pub const SID_RANDOM_BYTES: usize = 12;
/// First byte of a volley sid, so a sid from another server (or a made-up one) is
/// recognised as not ours rather than read as a shard number.
const SID_TAG: u8 = 0x76;

/// A session id: `base64url(tag, shard as u16 big-endian, 12 random bytes)`, 20 chars.
/// Any shard that receives a polling request can read the owner from it and forward.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sid([u8; SID_CHARS]);

impl Sid {
    /// Makes a sid for `shard`. `random` must come from a CSPRNG: the sid is the only thing
    /// that lets a polling request act as its session.
    pub fn new(shard: u16, random: &[u8; SID_RANDOM_BYTES]) -> Sid {
        let mut raw = [0u8; 15];
        raw[0] = SID_TAG;
        raw[1..3].copy_from_slice(&shard.to_be_bytes());
        raw[3..].copy_from_slice(random);
        let mut text = [0u8; SID_CHARS];
        // 15 bytes are exactly 20 base64 characters, so the buffer is the right size.
        let _ = BASE64_URL_SAFE_NO_PAD.encode_slice(raw, &mut text);
        Sid(text)
    }

    /// The sid a request names, if it is one [`Sid::new`] could have made.
    pub fn parse(text: &str) -> Option<Sid> {
        owner_shard(text)?;
        let mut raw = [0u8; SID_CHARS];
        raw.copy_from_slice(text.as_bytes());
        Some(Sid(raw))
    }

    /// The shard the sid names.
    pub fn owner(&self) -> u16 {
        owner_shard(self.as_str()).unwrap_or(0)
    }

    pub fn as_str(&self) -> &str {
        // base64url output is ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({})", self.as_str())
    }
}

/// The shard that owns `sid`, or `None` if it is not a sid [`Sid::new`] made.
pub fn owner_shard(sid: &str) -> Option<u16> {
    sid_parts(sid).map(|(shard, _)| shard)
}

/// The shard and the random bytes of a sid [`Sid::new`] made.
pub fn sid_parts(sid: &str) -> Option<(u16, [u8; SID_RANDOM_BYTES])> {
    if sid.len() != SID_CHARS {
        return None;
    }
    let mut raw = [0u8; 15];
    let n = BASE64_URL_SAFE_NO_PAD
        .decode_slice(sid.as_bytes(), &mut raw)
        .ok()?;
    if n != raw.len() || raw[0] != SID_TAG {
        return None;
    }
    let mut random = [0u8; SID_RANDOM_BYTES];
    random.copy_from_slice(&raw[3..]);
    Some((u16::from_be_bytes([raw[1], raw[2]]), random))
}

/// Decodes arbitrary bytes as a polling body, a text packet and a sid; must never panic.
pub fn fuzz_one(data: &[u8]) {
    let limits = PayloadLimits {
        body_bytes_max: 4096,
        packets_max: 16,
    };
    if let Ok(packets) = decode_payload(data, &limits) {
        assert!(!packets.is_empty() && packets.len() <= 16);
        // Re-encoding what was decoded gives a body that decodes to the same packets.
        let texts: Vec<Vec<u8>> = packets
            .iter()
            .map(|p| match p {
                Packet::Text { kind, data } => encode_text(*kind, data).into_bytes(),
                Packet::Binary(b) => b.to_vec(),
            })
            .collect();
        let queue: Vec<Queued<'_>> = packets
            .iter()
            .zip(&texts)
            .map(|(p, t)| match p {
                Packet::Text { .. } => Queued::Text(t),
                Packet::Binary(_) => Queued::Binary(t),
            })
            .collect();
        let mut body = Vec::new();
        assert_eq!(encode_payload(&queue, usize::MAX, &mut body), queue.len());
        let again = decode_payload(
            &body,
            &PayloadLimits {
                body_bytes_max: usize::MAX,
                packets_max: 16,
            },
        );
        assert_eq!(again.as_ref(), Ok(&packets));
    }
    let mut at = 0;
    while let Ok(Some((_, used))) = next_in_payload(&data[at..], false) {
        assert!(used > 0);
        at += used;
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_text(text);
        if let Some(shard) = owner_shard(text) {
            assert_eq!(text.len(), SID_CHARS);
            let _ = shard;
        }
        let query = Query {
            eio: Some("4"),
            transport: Some(text),
            sid: Some(text),
        };
        let _ = check_request(&query, Method::Get, false, true);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    #[test]
    fn packet_types_round_trip() {
        for byte in b'0'..=b'6' {
            assert_eq!(PacketType::from_byte(byte).unwrap().as_byte(), byte);
        }
        assert_eq!(PacketType::from_byte(b'7'), None);
        assert_eq!(PacketType::from_byte(b'b'), None);
    }

    #[test]
    fn decodes_text_and_binary_packets() {
        assert_eq!(
            decode_text("2probe"),
            Ok(Packet::Text {
                kind: PacketType::Ping,
                data: "probe"
            })
        );
        assert_eq!(
            decode_text("6"),
            Ok(Packet::Text {
                kind: PacketType::Noop,
                data: ""
            })
        );
        assert_eq!(
            decode_text("4héllo"),
            Ok(Packet::Text {
                kind: PacketType::Message,
                data: "héllo"
            })
        );
        assert_eq!(
            decode_text("bAQID"),
            Ok(Packet::Binary(Cow::Owned(vec![1, 2, 3])))
        );
        assert_eq!(
            decode_text("bAQIDBA=="),
            Ok(Packet::Binary(Cow::Owned(vec![1, 2, 3, 4])))
        );
        assert_eq!(decode_text("b"), Ok(Packet::Binary(Cow::Owned(vec![]))));
        assert_eq!(
            decode_binary_frame(&[9, 9]),
            Packet::Binary(Cow::Borrowed(&[9, 9][..]))
        );
        assert_eq!(decode_text(""), Err(Error::Empty));
        assert_eq!(decode_text("7"), Err(Error::UnknownType(b'7')));
        assert_eq!(decode_text("x4"), Err(Error::UnknownType(b'x')));
        assert_eq!(decode_text("b!!!"), Err(Error::BadBase64));
        assert_eq!(decode_text("bA"), Err(Error::BadBase64));
    }

    #[test]
    fn open_packet_is_exactly_the_five_keys() {
        let open = Open {
            sid: "lv_VI97HAXpY6yYWAAAC",
            upgrades: &["websocket"],
            ping_interval_ms: 25000,
            ping_timeout_ms: 20000,
            max_payload_bytes: 1_000_000,
        };
        // The first packet of engine.io-parser's encoding of the same open packet.
        let fixture = testing::fixture("eio_payload");
        let first = fixture["text"]
            .as_str()
            .unwrap()
            .split('\u{1e}')
            .next()
            .unwrap();
        assert_eq!(encode_open(&open), first);
        let ws = Open {
            upgrades: &[],
            ..open
        };
        assert_eq!(
            encode_open(&ws),
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
    }

    #[test]
    fn encodes_a_payload_like_engine_io_parser() {
        let fixture = testing::fixture("eio_payload");
        let open = encode_open(&Open {
            sid: "lv_VI97HAXpY6yYWAAAC",
            upgrades: &["websocket"],
            ping_interval_ms: 25000,
            ping_timeout_ms: 20000,
            max_payload_bytes: 1_000_000,
        });
        let queue = [
            Queued::Text(open.as_bytes()),
            Queued::Text(b"2"),
            Queued::Text(b"3probe"),
            Queued::Text(b"4hello"),
            Queued::Binary(&[1, 2, 3, 4]),
            Queued::Text(b"5"),
            Queued::Text(b"6"),
            Queued::Text(b"1"),
        ];
        let mut body = Vec::new();
        assert_eq!(encode_payload(&queue, 1_000_000, &mut body), queue.len());
        assert_eq!(body, fixture["text"].as_str().unwrap().as_bytes());
        let total: usize = queue.iter().map(Queued::body_bytes).sum::<usize>() + queue.len() - 1;
        assert_eq!(total, body.len(), "body_bytes predicts the encoding");
    }

    #[test]
    fn payload_encoding_stops_at_the_bound_but_takes_one() {
        let queue = [
            Queued::Text(b"4aaaa"),
            Queued::Text(b"4bb"),
            Queued::Text(b"4c"),
        ];
        let mut body = Vec::new();
        assert_eq!(encode_payload(&queue, 9, &mut body), 2);
        assert_eq!(body, b"4aaaa\x1e4bb");
        body.clear();
        assert_eq!(
            encode_payload(&queue, 1, &mut body),
            1,
            "one, even when over"
        );
        assert_eq!(body, b"4aaaa");
        body.clear();
        assert_eq!(encode_payload(&[], 100, &mut body), 0);
        assert!(body.is_empty());
    }

    #[test]
    fn decodes_the_payloads_engine_io_parser_decodes() {
        let limits = PayloadLimits {
            body_bytes_max: 1000,
            packets_max: 8,
        };
        for fixture in testing::fixtures() {
            if fixture["name"] != "eio_decode_payload" {
                continue;
            }
            let body = fixture["text"].as_str().unwrap();
            let packets = decode_payload(body.as_bytes(), &limits).unwrap();
            let expect = fixture["expect"].as_array().unwrap();
            assert_eq!(packets.len(), expect.len(), "{body:?}");
            for (packet, want) in packets.iter().zip(expect) {
                match packet {
                    Packet::Text { kind, data } => {
                        let name = [
                            "open", "close", "ping", "pong", "message", "upgrade", "noop",
                        ][*kind as usize];
                        assert_eq!(want["type"], name);
                        assert_eq!(want["data"].as_str().unwrap_or(""), *data);
                    }
                    Packet::Binary(bytes) => {
                        assert_eq!(want["type"], "message");
                        assert_eq!(want["data"]["$bin"], testing::to_hex(bytes));
                    }
                }
            }
        }
    }

    #[test]
    fn bad_payloads_are_refused_with_a_cause() {
        let limits = PayloadLimits {
            body_bytes_max: 16,
            packets_max: 3,
        };
        assert_eq!(decode_payload(b"", &limits), Err(Error::Empty));
        assert_eq!(decode_payload(b"4a\x1e", &limits), Err(Error::Empty));
        assert_eq!(decode_payload(b"\x1e4a", &limits), Err(Error::Empty));
        assert_eq!(decode_payload(b"4a\x1e\x1e4b", &limits), Err(Error::Empty));
        assert_eq!(
            decode_payload(b"4a\x1e9", &limits),
            Err(Error::UnknownType(b'9'))
        );
        assert_eq!(decode_payload(b"4\xff", &limits), Err(Error::NotUtf8));
        assert_eq!(decode_payload(b"b@@", &limits), Err(Error::BadBase64));
        assert_eq!(
            decode_payload(b"6\x1e6\x1e6\x1e6", &limits),
            Err(Error::TooManyPackets { max: 3 })
        );
        assert_eq!(decode_payload(b"6\x1e6\x1e6", &limits).unwrap().len(), 3);
        let long = [b'4'; 17];
        let err = decode_payload(&long, &limits).unwrap_err();
        assert_eq!(err, Error::TooLarge { max_bytes: 16 });
        assert_eq!(err.http_status(), 413);
        assert_eq!(Error::Empty.http_status(), 400);
        assert!(err.to_string().contains("16 bytes"));
    }

    #[test]
    fn incremental_payload_reads_wait_for_the_separator() {
        // "4é" split inside the two bytes of é: not complete, so not an error yet.
        let body = "4é\x1e2".as_bytes();
        assert_eq!(next_in_payload(&body[..2], false), Ok(None));
        assert_eq!(next_in_payload(&body[..2], true), Err(Error::NotUtf8));
        let (packet, used) = next_in_payload(body, false).unwrap().unwrap();
        assert_eq!(
            packet,
            Packet::Text {
                kind: PacketType::Message,
                data: "é"
            }
        );
        assert_eq!(used, 4);
        assert_eq!(next_in_payload(&body[used..], false), Ok(None));
        let (last, used_last) = next_in_payload(&body[used..], true).unwrap().unwrap();
        assert_eq!(
            last,
            Packet::Text {
                kind: PacketType::Ping,
                data: ""
            }
        );
        assert_eq!(used_last, 1);
    }

    #[test]
    fn request_errors_are_engine_io_s_bodies() {
        let all = [
            RequestError::UnknownTransport,
            RequestError::UnknownSid,
            RequestError::BadHandshakeMethod,
            RequestError::BadRequest,
            RequestError::Forbidden,
            RequestError::UnsupportedProtocolVersion,
        ];
        for (code, error) in all.into_iter().enumerate() {
            assert_eq!(error.code() as usize, code);
            let body: serde_json::Value = serde_json::from_str(error.body()).unwrap();
            assert_eq!(
                body,
                serde_json::json!({ "code": code, "message": error.message() })
            );
            assert_eq!(error.http_status(), if code == 4 { 403 } else { 400 });
        }
        assert_eq!(
            RequestError::UnknownSid.body(),
            r#"{"code":1,"message":"Session ID unknown"}"#
        );
    }

    #[test]
    fn request_checks_follow_engine_io_s_order() {
        let sid = Sid::new(3, &[7; SID_RANDOM_BYTES]);
        let q = |eio, transport, sid| Query {
            eio,
            transport,
            sid,
        };
        let polling = Some("polling");
        let ws = Some("websocket");
        let v4 = Some("4");
        assert_eq!(
            check_request(&q(v4, polling, None), Method::Get, false, true),
            Ok(Action::Handshake {
                transport: Transport::Polling
            })
        );
        assert_eq!(
            check_request(&q(v4, ws, None), Method::Get, true, true),
            Ok(Action::Handshake {
                transport: Transport::Websocket
            })
        );
        assert_eq!(
            check_request(
                &q(v4, polling, Some(sid.as_str())),
                Method::Post,
                false,
                true
            ),
            Ok(Action::Session {
                sid: sid.as_str(),
                transport: Transport::Polling,
                upgrade: false
            })
        );
        let cases = [
            (
                q(v4, None, None),
                Method::Get,
                false,
                RequestError::UnknownTransport,
            ),
            (
                q(v4, Some("flash"), None),
                Method::Get,
                false,
                RequestError::UnknownTransport,
            ),
            // The transport is checked before the version, as engine.io does.
            (
                q(Some("3"), Some("x"), None),
                Method::Get,
                false,
                RequestError::UnknownTransport,
            ),
            (
                q(v4, polling, Some("nope")),
                Method::Get,
                false,
                RequestError::UnknownSid,
            ),
            (
                q(v4, polling, None),
                Method::Post,
                false,
                RequestError::BadHandshakeMethod,
            ),
            (
                q(v4, ws, None),
                Method::Get,
                false,
                RequestError::BadRequest,
            ),
            (
                q(v4, polling, None),
                Method::Get,
                true,
                RequestError::BadRequest,
            ),
            (
                q(Some("3"), polling, None),
                Method::Get,
                false,
                RequestError::UnsupportedProtocolVersion,
            ),
            (
                q(None, polling, None),
                Method::Get,
                false,
                RequestError::UnsupportedProtocolVersion,
            ),
        ];
        for (query, method, upgrade, want) in cases {
            assert_eq!(
                check_request(&query, method, upgrade, true),
                Err(want),
                "{query:?} {method:?} upgrade={upgrade}"
            );
        }
        assert_eq!(
            check_request(&q(v4, ws, None), Method::Get, true, false),
            Err(RequestError::UnknownTransport),
            "websocket disabled"
        );
        // An empty sid is a handshake, as engine.io's `if (sid)` treats it.
        assert!(matches!(
            check_request(&q(v4, polling, Some("")), Method::Get, false, true),
            Ok(Action::Handshake { .. })
        ));
        assert_eq!(
            check_session_transport(Transport::Polling, Transport::Websocket, false),
            Err(RequestError::BadRequest)
        );
        assert_eq!(
            check_session_transport(Transport::Polling, Transport::Websocket, true),
            Ok(())
        );
    }

    #[test]
    fn sids_name_their_shard() {
        for shard in [0u16, 1, 255, 256, u16::MAX] {
            let sid = Sid::new(shard, &[0xa5; SID_RANDOM_BYTES]);
            assert_eq!(sid.as_str().len(), SID_CHARS);
            assert!(sid
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(owner_shard(sid.as_str()), Some(shard));
        }
        assert_ne!(
            Sid::new(1, &[1; SID_RANDOM_BYTES]),
            Sid::new(1, &[2; SID_RANDOM_BYTES])
        );
        // A Node engine.io sid (base64id), wrong lengths, bad characters: not ours.
        for bad in [
            "lv_VI97HAXpY6yYWAAAC",
            "",
            "dgAD",
            "dgADBwcHBwcHBwcHBwc",
            "dgADBwcHBwcHBwcHBwc!",
            "dgADBwcHBwcHBwcHBwcHB",
        ] {
            assert_eq!(owner_shard(bad), None, "{bad}");
        }
        assert_eq!(owner_shard("dgADBwcHBwcHBwcHBwcH"), Some(3));
    }

    #[test]
    fn fuzz_one_on_seeded_random_and_mutated_inputs() {
        let seeds: Vec<Vec<u8>> = vec![
            b"4hello\x1e2\x1ebAQID\x1e6".to_vec(),
            b"0{\"sid\":\"x\"}".to_vec(),
            b"bAQIDBA==".to_vec(),
            Sid::new(9, &[3; SID_RANDOM_BYTES])
                .as_str()
                .as_bytes()
                .to_vec(),
            "4é\x1e3probe".as_bytes().to_vec(),
        ];
        let dictionary: &[&[u8]] = &[b"\x1e", b"b", b"==", b"4", "é".as_bytes(), b"\xff"];
        testing::fuzz_mutations(&seeds, dictionary, 20_000, fuzz_one);
    }
}
