//! The Redis wire format of `@socket.io/redis-adapter` v8 and `@socket.io/redis-emitter`
//! v5, so volley can sit in a cluster of Node socket.io servers: read what they publish,
//! publish what they read. Sans-IO: bytes in, typed values out, and back.
//!
//! Checked against the packages' sources (`lib/index.ts` of both) and against bytes the real
//! packages produced (tools/socketio-fixtures). What they do:
//! - Broadcasts go to `<key>#<nsp>#`, or `<key>#<nsp>#<room>#` when the broadcast names
//!   exactly one room (always, not an option); adapters PSUBSCRIBE `<key>#<nsp>#*`. The
//!   message is notepack MessagePack of `[uid, packet, opts]`, packet `{type, data, nsp}`,
//!   opts `{rooms, except, flags}` (the emitter writes `{rooms, flags, except}`; readers
//!   take any order). Each server drops messages carrying its own uid.
//! - Requests go to `<key>-request#<nsp>#` as JSON text (`socketsJoin`, `socketsLeave`,
//!   `disconnectSockets`, `serverSideEmit`, `fetchSockets`, `allRooms`), except a broadcast
//!   that wants acks (type 7), which is MessagePack; readers tell them apart by a leading
//!   `{`. Responses go to `<key>-response#<nsp>#`; they are not decoded here.
//! - notepack writes integers in the smallest int form, other numbers as float 64, Buffers
//!   as bin, `undefined` as nil (object keys with `undefined` are left out); notepack 2
//!   wrote `undefined` as fixext 1 type 0, which is read here as nil. Dates (ext -1) are
//!   refused: socket.io payloads are JSON, and JSON has no dates.
//!
//! Not here: the sharded adapter (`createShardedAdapter`, SPUBLISH, a different message
//! shape), answering requests, and which rooms exist (the caller's index). Called by
//! `services::sio_adapter` (what arrives on these channels, with `--socketio-adapter`),
//! `backend::socketio` (volley's broadcasts in this format) and `broker::keys` (the channel
//! names). Knows nothing of Redis connections.

use std::fmt;

use rmp::Marker;

use super::packet::PacketType;
use super::Value;

/// The channel prefix both packages use unless configured (`key` option).
pub const KEY_DEFAULT: &str = "socket.io";

/// Deepest nesting a decoded value may have. Values are built recursively, so this is also
/// the recursion bound; more is refused whatever the caller asks.
pub const DEPTH_CEILING: usize = 64;

/// Request types (the `RequestType` enum of redis-adapter v8; the emitter uses 0-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    Sockets = 0,
    AllRooms = 1,
    RemoteJoin = 2,
    RemoteLeave = 3,
    RemoteDisconnect = 4,
    RemoteFetch = 5,
    ServerSideEmit = 6,
    Broadcast = 7,
    BroadcastClientCount = 8,
    BroadcastAck = 9,
}

/// Bounds on one decoded message; the caller takes them from its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most rooms in `rooms`, `except` or a join/leave list.
    pub rooms_max: usize,
    /// Longest room, uid, request id or namespace, in bytes.
    pub name_bytes_max: usize,
    /// Deepest nesting in a payload (at most [`DEPTH_CEILING`]).
    pub depth_max: usize,
    /// Most values (array items and map entries, all levels) in one message.
    pub values_max: usize,
}

/// Why a message was not read. In every case the caller drops it, counts it and logs
/// (rate-limited): another publisher on the channel sent something we do not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not MessagePack / JSON, truncated, or a field of the wrong type.
    Malformed(&'static str),
    /// Over one of the [`Limits`].
    TooLarge(&'static str),
    /// A MessagePack ext other than notepack's `undefined` (dates, custom types).
    Unsupported(&'static str),
    /// A request type this module does not read (responses, or a newer adapter).
    UnknownRequestType(u64),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed(what) => write!(f, "malformed socket.io adapter message: {what}"),
            Error::TooLarge(what) => {
                write!(f, "socket.io adapter message: too many or too long {what}")
            }
            Error::Unsupported(what) => {
                write!(f, "socket.io adapter message has unsupported {what}")
            }
            Error::UnknownRequestType(t) => {
                write!(f, "socket.io adapter request type {t} is not read here")
            }
        }
    }
}

impl std::error::Error for Error {}

/// `<key>#<nsp>#`, plus `<room>#` when the broadcast names exactly one room.
pub fn broadcast_channel(key: &str, nsp: &str, rooms: &[&str]) -> String {
    match rooms {
        [room] => format!("{key}#{nsp}#{room}#"),
        _ => format!("{key}#{nsp}#"),
    }
}

/// The pattern an adapter PSUBSCRIBEs for a namespace's broadcasts.
pub fn broadcast_pattern(key: &str, nsp: &str) -> String {
    format!("{key}#{nsp}#*")
}

pub fn request_channel(key: &str, nsp: &str) -> String {
    format!("{key}-request#{nsp}#")
}

pub fn response_channel(key: &str, nsp: &str) -> String {
    format!("{key}-response#{nsp}#")
}

/// Reads a broadcast channel of namespace `nsp`: `Some(None)` for the namespace-wide
/// channel, `Some(Some(room))` for a single-room one, `None` if it is not `nsp`'s. Like the
/// adapter, a server ignores a single-room channel for a room it has no member of.
pub fn channel_room<'a>(channel: &'a str, key: &str, nsp: &str) -> Option<Option<&'a str>> {
    let rest = channel.strip_prefix(key)?.strip_prefix('#')?;
    let rest = rest.strip_prefix(nsp)?.strip_prefix('#')?;
    if rest.is_empty() {
        return Some(None);
    }
    rest.strip_suffix('#').map(Some)
}

/// The socket.io packet inside a broadcast.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterPacket {
    /// EVENT for every broadcast socket.io makes (binary arguments stay inside `data` as
    /// bins; each server re-encodes them as BINARY_EVENT for its clients).
    pub kind: PacketType,
    /// `/` when absent, as the adapter defaults it.
    pub nsp: String,
    /// `[event, ...args]` for an EVENT.
    pub data: Value,
    /// Set when the broadcast wants acks (type 7 requests).
    pub id: Option<u64>,
}

/// Which sockets a broadcast or request is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomFilter {
    /// Sockets in any of these rooms; empty means every socket of the namespace.
    pub rooms: Vec<String>,
    /// Minus the sockets in any of these (socket ids are rooms too).
    pub except: Vec<String>,
}

/// Broadcast flags; unknown flags are ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// May be dropped for clients that are not ready.
    pub volatile: bool,
    pub compress: Option<bool>,
    /// Only the publishing server's sockets (never seen on Redis; kept for completeness).
    pub local: bool,
    /// For broadcasts with acks: how long the sender waits.
    pub timeout_ms: Option<u64>,
}

/// A broadcast from `<key>#<nsp>#...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    /// The publishing server (`emitter` for the emitter); drop your own.
    pub uid: String,
    pub packet: AdapterPacket,
    pub filter: RoomFilter,
    pub flags: Flags,
}

/// Which sockets a join/leave/disconnect request acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `opts: {rooms, except}`: every matching socket (what v8 and the emitter send).
    Matching(RoomFilter),
    /// `sid`: one socket (the older per-socket form, answered with a response).
    Socket(String),
}

/// A request from `<key>-request#<nsp>#`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The requesting server; absent from the emitter's join/leave/disconnect.
    pub uid: Option<String>,
    /// Present when the requester waits for responses.
    pub request_id: Option<String>,
    pub kind: RequestKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RequestKind {
    /// 0: the ids of matching sockets (`rooms` only).
    Sockets { rooms: Vec<String> },
    /// 1: every room name.
    AllRooms,
    /// 2: matching sockets join `rooms`.
    Join { target: Target, rooms: Vec<String> },
    /// 3: matching sockets leave `rooms`.
    Leave { target: Target, rooms: Vec<String> },
    /// 4: matching sockets disconnect; `close` also closes the Engine.IO session.
    Disconnect { target: Target, close: bool },
    /// 5: details of matching sockets.
    Fetch { filter: RoomFilter },
    /// 6: an event for the servers themselves: `[event, ...args]`.
    ServerSideEmit { data: Value },
    /// 7: a broadcast whose recipients' acks travel back as responses.
    Broadcast {
        packet: AdapterPacket,
        filter: RoomFilter,
        flags: Flags,
    },
}

/// Decodes a broadcast message.
pub fn decode_broadcast(input: &[u8], limits: &Limits) -> Result<Broadcast, Error> {
    let value = decode_msgpack(input, limits)?;
    let Value::Array(parts) = value else {
        return Err(Error::Malformed("broadcast is not an array"));
    };
    let [uid, packet, opts] = <[Value; 3]>::try_from(parts)
        .map_err(|_| Error::Malformed("broadcast is not [uid, packet, opts]"))?;
    let uid = name(&uid, "uid", limits)?;
    let packet = adapter_packet(packet, limits)?;
    let filter = room_filter(&opts, limits)?;
    let flags = flags(opts.get("flags"));
    Ok(Broadcast {
        uid,
        packet,
        filter,
        flags,
    })
}

/// Decodes a request: JSON text when it starts with `{`, MessagePack otherwise (as the
/// adapter tells them apart).
pub fn decode_request(input: &[u8], limits: &Limits) -> Result<Request, Error> {
    let value = if input.first() == Some(&b'{') {
        let json: serde_json::Value =
            serde_json::from_slice(input).map_err(|_| Error::Malformed("request is not JSON"))?;
        let value = Value::from_json(json);
        check_shape(&value, limits, 1, &mut 0)?;
        value
    } else {
        decode_msgpack(input, limits)?
    };
    if !matches!(value, Value::Object(_)) {
        return Err(Error::Malformed("request is not an object"));
    }
    let kind = match value.get("type") {
        Some(Value::Number(n)) => n.as_u64().ok_or(Error::Malformed("type"))?,
        _ => return Err(Error::Malformed("request has no type")),
    };
    let uid = optional_name(&value, "uid", limits)?;
    let request_id = optional_name(&value, "requestId", limits)?;
    let opts = value.get("opts");
    let filter = || match opts {
        Some(opts) => room_filter(opts, limits),
        None => Ok(RoomFilter::default()),
    };
    let target = || match (opts, value.get("sid")) {
        (Some(opts), _) => Ok(Target::Matching(room_filter(opts, limits)?)),
        (None, Some(sid)) => Ok(Target::Socket(name(sid, "sid", limits)?)),
        (None, None) => Err(Error::Malformed("request has neither opts nor sid")),
    };
    // The per-socket form names one `room`; the v8 form a `rooms` list.
    let rooms = || match (value.get("rooms"), value.get("room")) {
        (Some(rooms), _) => room_list(rooms, limits),
        (None, Some(room)) => Ok(vec![room_name(room, limits)?]),
        (None, None) => Ok(Vec::new()),
    };
    let kind = match kind {
        0 => RequestKind::Sockets { rooms: rooms()? },
        1 => RequestKind::AllRooms,
        2 => RequestKind::Join {
            target: target()?,
            rooms: rooms()?,
        },
        3 => RequestKind::Leave {
            target: target()?,
            rooms: rooms()?,
        },
        4 => RequestKind::Disconnect {
            target: target()?,
            close: matches!(value.get("close"), Some(Value::Bool(true))),
        },
        5 => RequestKind::Fetch { filter: filter()? },
        6 => RequestKind::ServerSideEmit {
            data: match value.get("data") {
                Some(data @ Value::Array(_)) => data.clone(),
                _ => return Err(Error::Malformed("serverSideEmit data is not an array")),
            },
        },
        7 => RequestKind::Broadcast {
            packet: adapter_packet(
                value
                    .get("packet")
                    .cloned()
                    .ok_or(Error::Malformed("broadcast request has no packet"))?,
                limits,
            )?,
            filter: filter()?,
            flags: flags(opts.and_then(|o| o.get("flags"))),
        },
        other => return Err(Error::UnknownRequestType(other)),
    };
    Ok(Request {
        uid,
        request_id,
        kind,
    })
}

fn adapter_packet(packet: Value, limits: &Limits) -> Result<AdapterPacket, Error> {
    let kind = match packet.get("type") {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|t| u8::try_from(t).ok())
            .and_then(|t| PacketType::from_byte(b'0'.checked_add(t)?))
            .ok_or(Error::Malformed("packet type"))?,
        _ => return Err(Error::Malformed("packet has no type")),
    };
    let nsp = match packet.get("nsp") {
        None | Some(Value::Null) => "/".to_string(),
        Some(nsp) => name(nsp, "nsp", limits)?,
    };
    let id = match packet.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_u64().ok_or(Error::Malformed("packet id"))?),
        Some(_) => return Err(Error::Malformed("packet id")),
    };
    let Value::Object(entries) = packet else {
        return Err(Error::Malformed("packet is not an object"));
    };
    let data = entries
        .into_iter()
        .find(|(k, _)| k == "data")
        .map_or(Value::Null, |(_, v)| v);
    Ok(AdapterPacket {
        kind,
        nsp,
        data,
        id,
    })
}

fn room_filter(opts: &Value, limits: &Limits) -> Result<RoomFilter, Error> {
    if !matches!(opts, Value::Object(_)) {
        return Err(Error::Malformed("opts is not an object"));
    }
    let list = |key| {
        opts.get(key)
            .map_or(Ok(Vec::new()), |v| room_list(v, limits))
    };
    Ok(RoomFilter {
        rooms: list("rooms")?,
        except: list("except")?,
    })
}

fn room_list(value: &Value, limits: &Limits) -> Result<Vec<String>, Error> {
    let Value::Array(items) = value else {
        return Err(Error::Malformed("rooms is not an array"));
    };
    if items.len() > limits.rooms_max {
        return Err(Error::TooLarge("rooms"));
    }
    items.iter().map(|room| room_name(room, limits)).collect()
}

/// A room is a string; socket.io also lets numbers be rooms, read here as their decimal.
fn room_name(value: &Value, limits: &Limits) -> Result<String, Error> {
    match value {
        Value::Number(n) => Ok(n.to_string()),
        other => name(other, "room", limits),
    }
}

fn name(value: &Value, what: &'static str, limits: &Limits) -> Result<String, Error> {
    let text = value.as_str().ok_or(Error::Malformed(what))?;
    if text.len() > limits.name_bytes_max {
        return Err(Error::TooLarge(what));
    }
    Ok(text.to_string())
}

fn optional_name(
    value: &Value,
    key: &'static str,
    limits: &Limits,
) -> Result<Option<String>, Error> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => name(v, key, limits).map(Some),
    }
}

fn flags(value: Option<&Value>) -> Flags {
    let Some(value) = value else {
        return Flags::default();
    };
    let flag = |key| match value.get(key) {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    };
    Flags {
        volatile: flag("volatile") == Some(true),
        compress: flag("compress"),
        local: flag("local") == Some(true),
        timeout_ms: match value.get("timeout") {
            Some(Value::Number(n)) => n.as_u64(),
            _ => None,
        },
    }
}

/// Applies the depth and value-count limits to a value built from JSON.
fn check_shape(
    value: &Value,
    limits: &Limits,
    depth: usize,
    values: &mut usize,
) -> Result<(), Error> {
    if depth > limits.depth_max.min(DEPTH_CEILING) {
        return Err(Error::TooLarge("nesting"));
    }
    let children: Box<dyn Iterator<Item = &Value>> = match value {
        Value::Array(items) => Box::new(items.iter()),
        Value::Object(entries) => Box::new(entries.iter().map(|(_, v)| v)),
        _ => return Ok(()),
    };
    for child in children {
        *values += 1;
        if *values > limits.values_max {
            return Err(Error::TooLarge("values"));
        }
        check_shape(child, limits, depth + 1, values)?;
    }
    Ok(())
}

/// Decodes one MessagePack value that must fill `input` exactly.
pub fn decode_msgpack(input: &[u8], limits: &Limits) -> Result<Value, Error> {
    let mut reader = Reader {
        buf: input,
        at: 0,
        values: 0,
        limits,
    };
    let value = reader.value(1)?;
    if reader.at != input.len() {
        return Err(Error::Malformed("bytes after the value"));
    }
    Ok(value)
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    /// Values read so far, against `limits.values_max`.
    values: usize,
    limits: &'a Limits,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.at.checked_add(n).ok_or(Error::Malformed("length"))?;
        let slice = self
            .buf
            .get(self.at..end)
            .ok_or(Error::Malformed("truncated"))?;
        self.at = end;
        Ok(slice)
    }

    fn be(&mut self, n: usize) -> Result<u64, Error> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
    }

    fn len(&mut self, n: usize) -> Result<usize, Error> {
        usize::try_from(self.be(n)?).map_err(|_| Error::Malformed("length"))
    }

    fn string(&mut self, len: usize) -> Result<Value, Error> {
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| Error::Malformed("str is not UTF-8"))?;
        Ok(Value::String(text.to_string()))
    }

    fn count(&mut self, items: usize) -> Result<(), Error> {
        // Every item takes at least one byte: refuse counts the input cannot hold.
        if items > self.buf.len() - self.at {
            return Err(Error::Malformed("container longer than the input"));
        }
        self.values = self.values.saturating_add(items);
        if self.values > self.limits.values_max {
            return Err(Error::TooLarge("values"));
        }
        Ok(())
    }

    fn array(&mut self, items: usize, depth: usize) -> Result<Value, Error> {
        self.count(items)?;
        let mut out = Vec::with_capacity(items);
        for _ in 0..items {
            out.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(out))
    }

    fn map(&mut self, entries: usize, depth: usize) -> Result<Value, Error> {
        self.count(entries.saturating_mul(2))?;
        let mut out = Vec::with_capacity(entries);
        for _ in 0..entries {
            let Value::String(key) = self.value(depth + 1)? else {
                return Err(Error::Malformed("map key is not a str"));
            };
            out.push((key, self.value(depth + 1)?));
        }
        Ok(Value::Object(out))
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > self.limits.depth_max.min(DEPTH_CEILING) {
            return Err(Error::TooLarge("nesting"));
        }
        let byte = *self.buf.get(self.at).ok_or(Error::Malformed("truncated"))?;
        self.at += 1;
        Ok(match Marker::from_u8(byte) {
            Marker::Null => Value::Null,
            Marker::True => Value::Bool(true),
            Marker::False => Value::Bool(false),
            Marker::FixPos(n) => Value::Number(n.into()),
            Marker::FixNeg(n) => Value::Number(n.into()),
            Marker::U8 => Value::Number(self.be(1)?.into()),
            Marker::U16 => Value::Number(self.be(2)?.into()),
            Marker::U32 => Value::Number(self.be(4)?.into()),
            Marker::U64 => Value::Number(self.be(8)?.into()),
            Marker::I8 => Value::Number((self.be(1)? as u8 as i8).into()),
            Marker::I16 => Value::Number((self.be(2)? as u16 as i16).into()),
            Marker::I32 => Value::Number((self.be(4)? as u32 as i32).into()),
            Marker::I64 => Value::Number((self.be(8)? as i64).into()),
            Marker::F32 => float(f64::from(f32::from_bits(self.be(4)? as u32))),
            Marker::F64 => float(f64::from_bits(self.be(8)?)),
            Marker::FixStr(n) => self.string(usize::from(n))?,
            Marker::Str8 => {
                let n = self.len(1)?;
                self.string(n)?
            }
            Marker::Str16 => {
                let n = self.len(2)?;
                self.string(n)?
            }
            Marker::Str32 => {
                let n = self.len(4)?;
                self.string(n)?
            }
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let width = match byte {
                    0xc4 => 1,
                    0xc5 => 2,
                    _ => 4,
                };
                let n = self.len(width)?;
                Value::Binary(bytes::Bytes::copy_from_slice(self.take(n)?))
            }
            Marker::FixArray(n) => self.array(usize::from(n), depth)?,
            Marker::Array16 => {
                let n = self.len(2)?;
                self.array(n, depth)?
            }
            Marker::Array32 => {
                let n = self.len(4)?;
                self.array(n, depth)?
            }
            Marker::FixMap(n) => self.map(usize::from(n), depth)?,
            Marker::Map16 => {
                let n = self.len(2)?;
                self.map(n, depth)?
            }
            Marker::Map32 => {
                let n = self.len(4)?;
                self.map(n, depth)?
            }
            // notepack 2's `undefined`: fixext 1, type 0, data 0.
            Marker::FixExt1 if self.buf.get(self.at..self.at + 2) == Some(&[0, 0]) => {
                self.at += 2;
                Value::Null
            }
            Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32 => return Err(Error::Unsupported("ext type (a Date?)")),
            Marker::Reserved => return Err(Error::Malformed("reserved marker 0xc1")),
        })
    }
}

/// A float as JSON sees it: NaN and infinities become null, as `JSON.stringify` makes them.
fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// What volley broadcasts to Node servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// One JSON document (parsed once here, to re-encode it as MessagePack).
    Json(&'a str),
    /// Text that is not JSON: a str.
    Text(&'a str),
    /// Bytes: a bin, which Node hands to clients as a Buffer (a binary attachment).
    Binary(&'a [u8]),
}

/// One volley broadcast, as an adapter would publish it.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// volley's uid: Node servers accept anything but their own; volley drops messages with
    /// this uid when they come back on its own subscription.
    pub uid: &'a str,
    pub nsp: &'a str,
    pub event: &'a str,
    pub payload: Payload<'a>,
    pub rooms: &'a [&'a str],
    pub except: &'a [&'a str],
}

/// Encodes a broadcast exactly as redis-adapter v8 does (`[uid, {type: 2, data: [event,
/// payload], nsp}, {rooms, except, flags: {}}]`, notepack's encodings), so Node servers
/// deliver it to their sockets. Publish it on [`broadcast_channel`]. Fails only for a
/// [`Payload::Json`] that is not JSON.
pub fn encode_broadcast(out: &Outgoing<'_>) -> Result<Vec<u8>, Error> {
    let data = match out.payload {
        Payload::Json(text) => Value::from_json(
            serde_json::from_str(text).map_err(|_| Error::Malformed("payload is not JSON"))?,
        ),
        Payload::Text(text) => Value::String(text.to_string()),
        Payload::Binary(bytes) => Value::Binary(bytes::Bytes::copy_from_slice(bytes)),
    };
    let mut buf = Vec::with_capacity(64 + out.uid.len() + out.nsp.len() + out.event.len());
    // Writes into a Vec cannot fail; rmp's errors come only from the writer.
    let _ = rmp::encode::write_array_len(&mut buf, 3);
    let _ = rmp::encode::write_str(&mut buf, out.uid);
    let _ = rmp::encode::write_map_len(&mut buf, 3);
    let _ = rmp::encode::write_str(&mut buf, "type");
    let _ = rmp::encode::write_uint(&mut buf, PacketType::Event as u64);
    let _ = rmp::encode::write_str(&mut buf, "data");
    let _ = rmp::encode::write_array_len(&mut buf, 2);
    let _ = rmp::encode::write_str(&mut buf, out.event);
    write_value(&mut buf, &data);
    let _ = rmp::encode::write_str(&mut buf, "nsp");
    let _ = rmp::encode::write_str(&mut buf, out.nsp);
    let _ = rmp::encode::write_map_len(&mut buf, 3);
    for (key, list) in [("rooms", out.rooms), ("except", out.except)] {
        let _ = rmp::encode::write_str(&mut buf, key);
        let _ = rmp::encode::write_array_len(&mut buf, list.len() as u32);
        for room in list {
            let _ = rmp::encode::write_str(&mut buf, room);
        }
    }
    let _ = rmp::encode::write_str(&mut buf, "flags");
    let _ = rmp::encode::write_map_len(&mut buf, 0);
    Ok(buf)
}

/// Writes a value as notepack does. Recursion depth is that of a value built from JSON,
/// which serde_json bounds at 128.
pub fn write_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => {
            let _ = rmp::encode::write_nil(buf);
        }
        Value::Bool(b) => {
            let _ = rmp::encode::write_bool(buf, *b);
        }
        Value::Number(n) => write_number(buf, n),
        Value::String(s) => {
            let _ = rmp::encode::write_str(buf, s);
        }
        Value::Binary(b) => {
            let _ = rmp::encode::write_bin(buf, b);
        }
        Value::Array(items) => {
            let _ = rmp::encode::write_array_len(buf, items.len() as u32);
            for item in items {
                write_value(buf, item);
            }
        }
        Value::Object(entries) => {
            let _ = rmp::encode::write_map_len(buf, entries.len() as u32);
            for (key, item) in entries {
                let _ = rmp::encode::write_str(buf, key);
                write_value(buf, item);
            }
        }
    }
}

/// notepack: a JS number with no fraction is written as the smallest int form, any other
/// as float 64. JSON `1.0` is the JS number 1, so it is an int here too.
fn write_number(buf: &mut Vec<u8>, n: &serde_json::Number) {
    if let Some(u) = n.as_u64() {
        let _ = rmp::encode::write_uint(buf, u);
    } else if let Some(i) = n.as_i64() {
        let _ = rmp::encode::write_sint(buf, i);
    } else {
        let f = n.as_f64().unwrap_or(0.0);
        // 2^63 and 2^64 as f64: integral values inside [-2^63, 2^64) fit an int form.
        if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) {
            let _ = rmp::encode::write_uint(buf, f as u64);
        } else if f.fract() == 0.0 && (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
            let _ = rmp::encode::write_sint(buf, f as i64);
        } else {
            let _ = rmp::encode::write_f64(buf, f);
        }
    }
}

/// Decodes arbitrary bytes as a broadcast and as a request; must never panic.
pub fn fuzz_one(data: &[u8]) {
    let limits = Limits {
        rooms_max: 4,
        name_bytes_max: 32,
        depth_max: 8,
        values_max: 64,
    };
    if let Ok(broadcast) = decode_broadcast(data, &limits) {
        assert!(broadcast.filter.rooms.len() <= 4 && broadcast.filter.except.len() <= 4);
        assert!(broadcast.uid.len() <= 32 && broadcast.packet.nsp.len() <= 32);
        // What decodes re-encodes and decodes again to the same payload.
        let mut again = Vec::new();
        write_value(&mut again, &broadcast.packet.data);
        let round = decode_msgpack(
            &again,
            &Limits {
                values_max: usize::MAX,
                ..limits
            },
        );
        assert!(round.is_ok());
    }
    if let Ok(request) = decode_request(data, &limits) {
        assert!(request.uid.as_ref().is_none_or(|u| u.len() <= 32));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    const LIMITS: Limits = Limits {
        rooms_max: 16,
        name_bytes_max: 256,
        depth_max: 16,
        values_max: 1024,
    };

    fn fixture_bytes(f: &serde_json::Value) -> Vec<u8> {
        match f.get("hex").and_then(|h| h.as_str()) {
            Some(hex) => testing::hex(hex),
            None => f["text"].as_str().unwrap().as_bytes().to_vec(),
        }
    }

    #[test]
    fn decodes_what_the_emitter_and_the_adapter_publish() {
        let mut seen = 0;
        for f in testing::fixtures() {
            let name = f["name"].as_str().unwrap();
            if !(name.starts_with("emitter_") || name.starts_with("adapter_")) {
                continue;
            }
            let channel = f["channel"].as_str().unwrap();
            let bytes = fixture_bytes(&f);
            let expect = &f["expect"];
            if let Some(room) = channel_room(channel, KEY_DEFAULT, "/")
                .or_else(|| channel_room(channel, KEY_DEFAULT, "/admin"))
            {
                let b = decode_broadcast(&bytes, &LIMITS).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(b.uid, expect[0], "{name}");
                assert_eq!(b.packet.kind as u64, expect[1]["type"].as_u64().unwrap());
                assert_eq!(b.packet.nsp, expect[1]["nsp"], "{name}");
                assert!(
                    testing::same(&testing::view(&b.packet.data), &expect[1]["data"]),
                    "{name}"
                );
                assert_eq!(
                    serde_json::json!(b.filter.rooms),
                    expect[2]["rooms"],
                    "{name}"
                );
                assert_eq!(
                    serde_json::json!(b.filter.except),
                    expect[2]["except"],
                    "{name}"
                );
                let flags = &expect[2]["flags"];
                assert_eq!(b.flags.volatile, flags["volatile"] == true, "{name}");
                assert_eq!(b.flags.compress, flags["compress"].as_bool(), "{name}");
                // The single-room channel names the broadcast's only room.
                match room {
                    Some(room) => assert_eq!(b.filter.rooms, vec![room.to_string()]),
                    None => assert_ne!(b.filter.rooms.len(), 1, "{name}"),
                }
            } else {
                assert_eq!(channel, request_channel(KEY_DEFAULT, "/"), "{name}");
                let r = decode_request(&bytes, &LIMITS).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(r.uid.as_deref(), expect["uid"].as_str(), "{name}");
                assert_eq!(
                    r.request_id.is_some(),
                    expect.get("requestId").is_some(),
                    "{name}"
                );
                let opts = RoomFilter {
                    rooms: serde_json::from_value(expect["opts"]["rooms"].clone())
                        .unwrap_or_default(),
                    except: serde_json::from_value(expect["opts"]["except"].clone())
                        .unwrap_or_default(),
                };
                let rooms: Vec<String> =
                    serde_json::from_value(expect["rooms"].clone()).unwrap_or_default();
                match (expect["type"].as_u64().unwrap(), &r.kind) {
                    (1, RequestKind::AllRooms) => {}
                    (2, RequestKind::Join { target, rooms: r })
                    | (3, RequestKind::Leave { target, rooms: r }) => {
                        assert_eq!(target, &Target::Matching(opts));
                        assert_eq!(r, &rooms);
                    }
                    (4, RequestKind::Disconnect { target, close }) => {
                        assert_eq!(target, &Target::Matching(opts));
                        assert_eq!(*close, expect["close"] == true);
                    }
                    (5, RequestKind::Fetch { filter }) => assert_eq!(filter, &opts),
                    (6, RequestKind::ServerSideEmit { data }) => {
                        assert!(
                            testing::same(&testing::view(data), &expect["data"]),
                            "{name}"
                        );
                    }
                    (
                        7,
                        RequestKind::Broadcast {
                            packet,
                            filter,
                            flags,
                        },
                    ) => {
                        assert!(testing::same(
                            &testing::view(&packet.data),
                            &expect["packet"]["data"]
                        ));
                        assert_eq!(filter, &opts);
                        assert_eq!(flags.timeout_ms, Some(5000));
                    }
                    (t, kind) => panic!("{name}: type {t} decoded as {kind:?}"),
                }
            }
            seen += 1;
        }
        assert!(seen >= 18, "only {seen} fixtures");
    }

    #[test]
    fn volley_s_broadcast_is_byte_for_byte_what_notepack_writes() {
        let cases = [
            (
                "volley_broadcast",
                Outgoing {
                    uid: "volley-node1",
                    nsp: "/",
                    event: "message",
                    payload: Payload::Json(r#"{"a": [1, 2.5, "s"]}"#),
                    rooms: &[],
                    except: &[],
                },
            ),
            (
                "volley_broadcast_room_text",
                Outgoing {
                    uid: "volley-node1",
                    nsp: "/chat",
                    event: "news",
                    payload: Payload::Text("hello"),
                    rooms: &["lobby"],
                    except: &[],
                },
            ),
            (
                "volley_broadcast_binary",
                Outgoing {
                    uid: "volley-node1",
                    nsp: "/",
                    event: "message",
                    payload: Payload::Binary(&[9, 8, 7]),
                    rooms: &["a", "b"],
                    except: &[],
                },
            ),
        ];
        for (name, out) in cases {
            let f = testing::fixture(name);
            let bytes = encode_broadcast(&out).unwrap();
            assert_eq!(
                testing::to_hex(&bytes),
                f["hex"].as_str().unwrap(),
                "{name}"
            );
            assert_eq!(
                broadcast_channel(KEY_DEFAULT, out.nsp, out.rooms),
                f["channel"],
                "{name}"
            );
            let back = decode_broadcast(&bytes, &LIMITS).unwrap();
            assert_eq!(back.uid, "volley-node1");
        }
        assert!(encode_broadcast(&Outgoing {
            uid: "v",
            nsp: "/",
            event: "m",
            payload: Payload::Json("{nope"),
            rooms: &[],
            except: &[],
        })
        .is_err());
    }

    #[test]
    fn numbers_are_written_as_notepack_writes_them() {
        // The emitter_numbers fixture, decoded then re-encoded, gives the same bytes.
        let f = testing::fixture("emitter_numbers");
        let bytes = fixture_bytes(&f);
        let value = decode_msgpack(&bytes, &LIMITS).unwrap();
        let mut again = Vec::new();
        write_value(&mut again, &value);
        assert_eq!(again, bytes);
        // JSON 1.0 is JS's 1; -0.5 stays a float; 2^53 stays an int.
        let json = Value::from_json(serde_json::json!([1.0, -0.5, 9007199254740992u64, -1e3]));
        let mut buf = Vec::new();
        write_value(&mut buf, &json);
        assert_eq!(
            testing::to_hex(&buf),
            "9401cbbfe0000000000000cf0020000000000000d1fc18"
        );
    }

    #[test]
    fn channels_are_built_and_read_like_the_adapter_s() {
        assert_eq!(broadcast_channel("socket.io", "/", &[]), "socket.io#/#");
        assert_eq!(
            broadcast_channel("socket.io", "/", &["r"]),
            "socket.io#/#r#"
        );
        assert_eq!(
            broadcast_channel("socket.io", "/", &["r", "s"]),
            "socket.io#/#"
        );
        assert_eq!(
            broadcast_pattern("socket.io", "/admin"),
            "socket.io#/admin#*"
        );
        assert_eq!(request_channel("socket.io", "/"), "socket.io-request#/#");
        assert_eq!(response_channel("socket.io", "/"), "socket.io-response#/#");
        assert_eq!(channel_room("socket.io#/#", "socket.io", "/"), Some(None));
        assert_eq!(
            channel_room("socket.io#/#a#b#", "socket.io", "/"),
            Some(Some("a#b"))
        );
        assert_eq!(channel_room("socket.io#/admin#", "socket.io", "/"), None);
        assert_eq!(channel_room("socket.io#/#room", "socket.io", "/"), None);
        assert_eq!(channel_room("socket.io-request#/#", "socket.io", "/"), None);
    }

    #[test]
    fn requests_in_every_form() {
        let r = decode_request(
            br#"{"uid":"u","requestId":"q","type":0,"rooms":["a",7]}"#,
            &LIMITS,
        )
        .unwrap();
        assert_eq!(
            r.kind,
            RequestKind::Sockets {
                rooms: vec!["a".into(), "7".into()]
            }
        );
        let r = decode_request(
            br#"{"uid":"u","requestId":"q","type":2,"sid":"s1","room":"r"}"#,
            &LIMITS,
        )
        .unwrap();
        assert_eq!(
            r.kind,
            RequestKind::Join {
                target: Target::Socket("s1".into()),
                rooms: vec!["r".into()]
            }
        );
        let r = decode_request(br#"{"type":4,"sid":"s1"}"#, &LIMITS).unwrap();
        assert_eq!(
            r.kind,
            RequestKind::Disconnect {
                target: Target::Socket("s1".into()),
                close: false
            }
        );
        // The same request as MessagePack.
        let mut mp = Vec::new();
        rmp::encode::write_map_len(&mut mp, 2).unwrap();
        rmp::encode::write_str(&mut mp, "type").unwrap();
        rmp::encode::write_uint(&mut mp, 1).unwrap();
        rmp::encode::write_str(&mut mp, "uid").unwrap();
        rmp::encode::write_str(&mut mp, "x").unwrap();
        assert_eq!(
            decode_request(&mp, &LIMITS).unwrap().kind,
            RequestKind::AllRooms
        );
    }

    #[test]
    fn bad_and_hostile_messages_are_refused() {
        let bad: &[(&[u8], Error)] = &[
            (b"", Error::Malformed("truncated")),
            (
                b"\x90",
                Error::Malformed("broadcast is not [uid, packet, opts]"),
            ),
            (b"\x80", Error::Malformed("broadcast is not an array")),
            (b"\x91\xc1", Error::Malformed("reserved marker 0xc1")),
            (
                b"\x93\xa1u\x81\xa4type\x02\x80\x00",
                Error::Malformed("bytes after the value"),
            ),
            (
                b"\xdd\xff\xff\xff\xff",
                Error::Malformed("container longer than the input"),
            ),
            (
                b"\x91\xd6\xff\x00\x00\x00\x00",
                Error::Unsupported("ext type (a Date?)"),
            ),
            (b"\x91\xa2\xff\xfe", Error::Malformed("str is not UTF-8")),
            (
                b"\x91\x81\x01\x02",
                Error::Malformed("map key is not a str"),
            ),
        ];
        for (input, want) in bad {
            let got = decode_broadcast(input, &LIMITS);
            assert_eq!(got.as_ref().err(), Some(want), "{input:?}");
        }
        // The smallest broadcast: opts without rooms is an empty filter, nsp defaults to /.
        let b = decode_broadcast(b"\x93\xa1u\x81\xa4type\x02\x80", &LIMITS).unwrap();
        assert_eq!(
            (b.packet.nsp.as_str(), b.filter),
            ("/", RoomFilter::default())
        );
        // Deep nesting, far past the limit, without recursing past it.
        let mut deep = vec![0x93, 0xa1, b'u'];
        deep.extend(std::iter::repeat_n(0x91, 100_000));
        assert_eq!(
            decode_broadcast(&deep, &LIMITS),
            Err(Error::TooLarge("nesting"))
        );
        // Too many rooms, too long a room.
        let many: Vec<String> = (0..17).map(|i| i.to_string()).collect();
        let json =
            serde_json::json!({"type": 5, "opts": {"rooms": many, "except": []}}).to_string();
        assert_eq!(
            decode_request(json.as_bytes(), &LIMITS),
            Err(Error::TooLarge("rooms"))
        );
        let json =
            serde_json::json!({"type": 3, "opts": {"rooms": ["x".repeat(257)]}, "rooms": []})
                .to_string();
        assert_eq!(
            decode_request(json.as_bytes(), &LIMITS),
            Err(Error::TooLarge("room"))
        );
        let json = format!(
            r#"{{"type":6,"data":["e",{}1{}]}}"#,
            "[".repeat(20),
            "]".repeat(20)
        );
        assert_eq!(
            decode_request(json.as_bytes(), &LIMITS),
            Err(Error::TooLarge("nesting"))
        );
        assert_eq!(
            decode_request(br#"{"type":9}"#, &LIMITS),
            Err(Error::UnknownRequestType(9))
        );
        assert_eq!(
            decode_request(br#"{"type":"1"}"#, &LIMITS),
            Err(Error::Malformed("request has no type"))
        );
        assert_eq!(
            decode_request(br#"{"type":2}"#, &LIMITS),
            Err(Error::Malformed("request has neither opts nor sid"))
        );
        assert_eq!(
            decode_request(b"{nope", &LIMITS),
            Err(Error::Malformed("request is not JSON"))
        );
        assert_eq!(
            decode_request(br#"{"type":6,"data":{}}"#, &LIMITS),
            Err(Error::Malformed("serverSideEmit data is not an array"))
        );
        // notepack 2's `undefined` reads as nil.
        assert_eq!(
            decode_msgpack(b"\x91\xd4\x00\x00", &LIMITS),
            Ok(Value::Array(vec![Value::Null]))
        );
        // A float NaN reads as null, as JSON.stringify writes it.
        assert_eq!(
            decode_msgpack(b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", &LIMITS),
            Ok(Value::Null)
        );
        assert!(Error::TooLarge("rooms").to_string().contains("rooms"));
    }

    #[test]
    fn fuzz_one_on_seeded_random_and_mutated_inputs() {
        let seeds: Vec<Vec<u8>> = testing::fixtures()
            .iter()
            .filter(|f| f.get("channel").is_some())
            .map(fixture_bytes)
            .collect();
        let dictionary: &[&[u8]] = &[
            b"\x91",
            b"\xdc\xff\xff",
            b"\xc4\x05",
            b"\xd4\x00\x00",
            b"\xc1",
            b"\xa4type",
            b"{",
            b"\"rooms\":[",
        ];
        testing::fuzz_mutations(&seeds, dictionary, 20_000, fuzz_one);
    }
}
