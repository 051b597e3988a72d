//! The envelope a published message travels in between volley processes (Redis pub/sub),
//! and its MessagePack encoding. Sans-IO: bytes in, values out, and back.
//!
//! The format is documented for other languages in docs/ENVELOPE.md: a MessagePack map with
//! string keys, so a backend in any language can publish straight into Redis. Keys may come
//! in any order; unknown keys are skipped so newer publishers do not break older volleys.
//! Called by `backend::redis` (encode a publish, decode history and inbox entries) and
//! `services` (decode what arrives on a subscription).

use std::fmt;

use bytes::Bytes;
use rmp::Marker;

/// The only envelope version this volley reads and writes.
pub const VERSION: u64 = 1;
/// Longest origin, id or target string accepted, in bytes.
pub const NAME_BYTES_MAX: usize = 1024;
/// Longest event name a message may carry, in bytes: a name, not a document.
pub const EVENT_BYTES_MAX: usize = 128;
/// Event names socket.io keeps for itself: a server may not emit them (socket.io's
/// `RESERVED_EVENTS`), since a client's handler for them would fire with a push's payload
/// (`connect`, `connect_error` and `disconnect` on the client; the rest on servers).
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];
/// The event name of a message without one: what clients have always received.
pub const DEFAULT_EVENT: &str = "message";
/// Deepest nesting an unknown value may have before the envelope is refused.
const SKIP_DEPTH_MAX: usize = 32;
/// Most map entries an envelope may have (known keys plus unknown ones).
const ENTRIES_MAX: u32 = 64;

/// Who a message is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every connected client.
    All,
    /// Every connection of one user (used by the users/rooms step).
    User(String),
    /// Every member of one room (used by the users/rooms step).
    Room(String),
}

impl Target {
    /// Parses the wire form: `all`, `user:<id>`, `room:<name>`.
    pub fn parse(text: &str) -> Option<Target> {
        if text == "all" {
            return Some(Target::All);
        }
        let (kind, name) = text.split_once(':')?;
        if name.is_empty() {
            return None;
        }
        match kind {
            "user" => Some(Target::User(name.to_string())),
            "room" => Some(Target::Room(name.to_string())),
            _ => None,
        }
    }
}

/// The one check of a message's event name (docs/API.md, "Event names"): 1 to
/// [`EVENT_BYTES_MAX`] bytes, no control characters, none of [`RESERVED_EVENTS`]. Says what
/// is wrong in words a publisher can act on.
pub fn check_event(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("event must not be empty (omit it for the default event, message)".into());
    }
    if name.len() > EVENT_BYTES_MAX {
        return Err(format!(
            "event is {} bytes; the limit is {EVENT_BYTES_MAX} bytes",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("event must not contain control characters".into());
    }
    if RESERVED_EVENTS.contains(&name) {
        return Err(format!(
            "event {name:?} is reserved by socket.io ({}); pick another name",
            RESERVED_EVENTS.join(", ")
        ));
    }
    Ok(())
}

/// A publisher's event name as messages carry it: checked, and None for the default
/// (`message`), so a message named `message` and one with no name are the same bytes.
pub fn event_name(name: Option<&str>) -> Result<Option<String>, String> {
    match name {
        None => Ok(None),
        Some(DEFAULT_EVENT) => Ok(None),
        Some(name) => check_event(name).map(|()| Some(name.to_string())),
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("all"),
            Target::User(id) => write!(f, "user:{id}"),
            Target::Room(name) => write!(f, "room:{name}"),
        }
    }
}

/// What the payload is. Raw-protocol clients get text and JSON as text frames and binary as
/// binary frames; native-protocol clients get JSON embedded, text as a string, binary as base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// UTF-8 text that is not (known to be) JSON: a MessagePack str.
    Text,
    /// A JSON document: a MessagePack str with `FLAG_JSON` set.
    Json,
    /// Bytes: a MessagePack bin.
    Binary,
}

/// `flags` bit: the str payload is a JSON document (set by volley; optional for others).
pub const FLAG_JSON: u64 = 1;
/// `flags` bit: not for clients; a control message for volley itself (a JSON payload such
/// as `{"op":"join","room":"lobby"}` on a `user:<id>` channel: server-side room membership).
pub const FLAG_CONTROL: u64 = 2;

/// One published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The volley node that published it, or whatever a foreign publisher put there.
    pub origin: String,
    /// A message id unique per origin.
    pub id: String,
    pub target: Target,
    /// Bit `FLAG_JSON`; other bits reserved, carried, not interpreted.
    pub flags: u64,
    pub kind: PayloadKind,
    pub payload: Bytes,
    /// Sequence number in the target's channel, set by the publish script in Redis.
    pub seq: Option<u64>,
    /// The epoch of the channel's numbering (a new one whenever its counter is created,
    /// e.g. after Redis lost its data), set by the publish script beside `seq`.
    pub epoch: Option<u64>,
    /// `user:<id>` of a publishing client, if any.
    pub from: Option<String>,
    /// The event name clients receive it as (socket.io's event, native `event`); None for
    /// the default, `message`. Checked by [`check_event`] on both ends.
    pub event: Option<String>,
}

/// Why an envelope could not be decoded. In every case the caller drops the message,
/// counts it, and logs (rate-limited): a foreign publisher sent something we do not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not a MessagePack map, a truncated one, or a value of the wrong type for a key.
    Malformed(&'static str),
    /// `v` is not a version this volley reads.
    UnsupportedVersion(u64),
    /// A required key (`v`, `target`, `payload`) is missing.
    Missing(&'static str),
    /// `target` is not `all`, `user:<id>` or `room:<name>`.
    BadTarget(String),
    /// A string or the map is longer than the limits above.
    TooLarge(&'static str),
    /// `event` fails [`check_event`] (the words say why).
    BadEvent(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed(what) => write!(f, "malformed envelope: {what}"),
            Error::UnsupportedVersion(v) => write!(
                f,
                "envelope version {v} is not supported (this volley reads version {VERSION})"
            ),
            Error::Missing(key) => write!(f, "envelope has no `{key}`"),
            Error::BadTarget(t) => write!(
                f,
                "envelope target {t:?} is not all, user:<id> or room:<name>"
            ),
            Error::TooLarge(what) => write!(f, "envelope {what} is too large"),
            Error::BadEvent(why) => write!(f, "envelope {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// Bytes from the start of the `seq` value to the start of the `epoch` value: the 8 bytes
/// of `seq`, the fixstr `epoch` (1 + 5 bytes) and the uint64 marker.
pub const EPOCH_AFTER_SEQ: usize = 8 + 1 + 5 + 1;

/// Encodes an envelope as a MessagePack map (keys in a fixed order). Returns the bytes and
/// the offset of the 8 big-endian bytes of `seq`, which the publish script in Redis
/// overwrites with the channel's next sequence number (0 until then); the 8 bytes of
/// `epoch` follow at `EPOCH_AFTER_SEQ` from there, patched the same way.
pub fn encode(envelope: &Envelope) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(112 + envelope.payload.len());
    let entries = 8 + envelope.from.is_some() as u32 + envelope.event.is_some() as u32;
    let mut flags = envelope.flags & !FLAG_JSON;
    if envelope.kind == PayloadKind::Json {
        flags |= FLAG_JSON;
    }
    // Writing into a Vec cannot fail; rmp's write errors come only from the writer.
    let _ = rmp::encode::write_map_len(&mut out, entries);
    let _ = rmp::encode::write_str(&mut out, "v");
    let _ = rmp::encode::write_uint(&mut out, VERSION);
    let _ = rmp::encode::write_str(&mut out, "origin");
    let _ = rmp::encode::write_str(&mut out, &envelope.origin);
    let _ = rmp::encode::write_str(&mut out, "id");
    let _ = rmp::encode::write_str(&mut out, &envelope.id);
    let _ = rmp::encode::write_str(&mut out, "target");
    let _ = rmp::encode::write_str(&mut out, &envelope.target.to_string());
    let _ = rmp::encode::write_str(&mut out, "flags");
    let _ = rmp::encode::write_uint(&mut out, flags);
    if let Some(from) = &envelope.from {
        let _ = rmp::encode::write_str(&mut out, "from");
        let _ = rmp::encode::write_str(&mut out, from);
    }
    if let Some(event) = &envelope.event {
        let _ = rmp::encode::write_str(&mut out, "event");
        let _ = rmp::encode::write_str(&mut out, event);
    }
    let _ = rmp::encode::write_str(&mut out, "seq");
    // Always the fixed-width uint64 form, so the script can patch it in place.
    let _ = rmp::encode::write_u64(&mut out, envelope.seq.unwrap_or(0));
    let seq_at = out.len() - 8;
    let _ = rmp::encode::write_str(&mut out, "epoch");
    let _ = rmp::encode::write_u64(&mut out, envelope.epoch.unwrap_or(0));
    debug_assert_eq!(out.len() - 8, seq_at + EPOCH_AFTER_SEQ);
    let _ = rmp::encode::write_str(&mut out, "payload");
    match envelope.kind {
        PayloadKind::Text | PayloadKind::Json => {
            let _ = rmp::encode::write_str_len(&mut out, envelope.payload.len() as u32);
        }
        PayloadKind::Binary => {
            let _ = rmp::encode::write_bin_len(&mut out, envelope.payload.len() as u32);
        }
    }
    out.extend_from_slice(&envelope.payload);
    (out, seq_at)
}

/// A read position over the input; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Error> {
        let b = *self.buf.get(self.at).ok_or(Error::Malformed("truncated"))?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(Error::Malformed("length overflow"))?;
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
            .fold(0u64, |acc, &b| acc << 8 | b as u64))
    }

    fn marker(&mut self) -> Result<Marker, Error> {
        Ok(Marker::from_u8(self.byte()?))
    }

    /// Length of a str whose marker was just read, or None if the marker is not a str.
    fn str_len(&mut self, marker: Marker) -> Result<Option<usize>, Error> {
        Ok(Some(match marker {
            Marker::FixStr(n) => n as usize,
            Marker::Str8 => self.be(1)? as usize,
            Marker::Str16 => self.be(2)? as usize,
            Marker::Str32 => self.be(4)? as usize,
            _ => return Ok(None),
        }))
    }

    fn bin_len(&mut self, marker: Marker) -> Result<Option<usize>, Error> {
        Ok(Some(match marker {
            Marker::Bin8 => self.be(1)? as usize,
            Marker::Bin16 => self.be(2)? as usize,
            Marker::Bin32 => self.be(4)? as usize,
            _ => return Ok(None),
        }))
    }

    fn str(&mut self, what: &'static str, max: usize) -> Result<&'a str, Error> {
        let marker = self.marker()?;
        let len = self.str_len(marker)?.ok_or(Error::Malformed(what))?;
        if len > max {
            return Err(Error::TooLarge(what));
        }
        std::str::from_utf8(self.take(len)?).map_err(|_| Error::Malformed(what))
    }

    fn uint(&mut self, what: &'static str) -> Result<u64, Error> {
        match self.marker()? {
            Marker::FixPos(n) => Ok(n as u64),
            Marker::U8 => self.be(1),
            Marker::U16 => self.be(2),
            Marker::U32 => self.be(4),
            Marker::U64 => self.be(8),
            _ => Err(Error::Malformed(what)),
        }
    }

    /// Skips one value of any type, nested values included, without recursion.
    fn skip_value(&mut self) -> Result<(), Error> {
        // Values still to skip at each open nesting level.
        let mut pending: Vec<u64> = vec![1];
        while let Some(left) = pending.last_mut() {
            if *left == 0 {
                pending.pop();
                continue;
            }
            *left -= 1;
            let marker = self.marker()?;
            let nested = match marker {
                Marker::FixPos(_)
                | Marker::FixNeg(_)
                | Marker::Null
                | Marker::True
                | Marker::False => 0,
                Marker::U8 | Marker::I8 => {
                    self.take(1)?;
                    0
                }
                Marker::U16 | Marker::I16 => {
                    self.take(2)?;
                    0
                }
                Marker::U32 | Marker::I32 | Marker::F32 => {
                    self.take(4)?;
                    0
                }
                Marker::U64 | Marker::I64 | Marker::F64 => {
                    self.take(8)?;
                    0
                }
                Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                    let len = self.str_len(marker)?.unwrap_or(0);
                    self.take(len)?;
                    0
                }
                Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                    let len = self.bin_len(marker)?.unwrap_or(0);
                    self.take(len)?;
                    0
                }
                Marker::FixExt1 => self.take(2).map(|_| 0)?,
                Marker::FixExt2 => self.take(3).map(|_| 0)?,
                Marker::FixExt4 => self.take(5).map(|_| 0)?,
                Marker::FixExt8 => self.take(9).map(|_| 0)?,
                Marker::FixExt16 => self.take(17).map(|_| 0)?,
                Marker::Ext8 | Marker::Ext16 | Marker::Ext32 => {
                    let n = match marker {
                        Marker::Ext8 => 1,
                        Marker::Ext16 => 2,
                        _ => 4,
                    };
                    let len = self.be(n)? as usize;
                    self.take(len + 1)?;
                    0
                }
                Marker::FixArray(n) => n as u64,
                Marker::Array16 => self.be(2)?,
                Marker::Array32 => self.be(4)?,
                Marker::FixMap(n) => 2 * n as u64,
                Marker::Map16 => 2 * self.be(2)?,
                Marker::Map32 => 2 * self.be(4)?,
                Marker::Reserved => return Err(Error::Malformed("reserved marker 0xc1")),
            };
            if nested > 0 {
                // Each nested value needs at least one byte: refuse counts the input cannot hold.
                if nested > (self.buf.len() - self.at) as u64 {
                    return Err(Error::Malformed("container longer than the input"));
                }
                if pending.len() >= SKIP_DEPTH_MAX {
                    return Err(Error::TooLarge("nesting"));
                }
                pending.push(nested);
            }
        }
        Ok(())
    }
}

/// Decodes an envelope. `input` is shared so the payload is a slice of it, not a copy.
pub fn decode(input: &Bytes) -> Result<Envelope, Error> {
    let mut r = Reader { buf: input, at: 0 };
    let entries = match r.marker()? {
        Marker::FixMap(n) => n as u32,
        Marker::Map16 => r.be(2)? as u32,
        Marker::Map32 => r.be(4)? as u32,
        _ => return Err(Error::Malformed("not a map")),
    };
    if entries > ENTRIES_MAX {
        return Err(Error::TooLarge("map"));
    }
    let mut version = None;
    let mut origin = String::new();
    let mut id = String::new();
    let mut target = None;
    let mut flags = 0;
    let mut payload = None;
    let mut seq = None;
    let mut epoch = None;
    let mut from = None;
    let mut event = None;
    for _ in 0..entries {
        let key = r.str("key", 64)?;
        match key {
            "v" => version = Some(r.uint("v")?),
            "origin" => origin = r.str("origin", NAME_BYTES_MAX)?.to_string(),
            "id" => id = r.str("id", NAME_BYTES_MAX)?.to_string(),
            "target" => {
                let text = r.str("target", NAME_BYTES_MAX)?;
                target =
                    Some(Target::parse(text).ok_or_else(|| Error::BadTarget(text.to_string()))?);
            }
            "flags" => flags = r.uint("flags")?,
            // 0 means "not sequenced" (a volley envelope published without the script).
            "seq" => seq = Some(r.uint("seq")?).filter(|&s| s > 0),
            "epoch" => epoch = Some(r.uint("epoch")?).filter(|&e| e > 0),
            "from" => from = Some(r.str("from", NAME_BYTES_MAX)?.to_string()),
            // The default name written out is the same as none.
            "event" => match r.str("event", EVENT_BYTES_MAX)? {
                DEFAULT_EVENT => event = None,
                name => {
                    check_event(name).map_err(Error::BadEvent)?;
                    event = Some(name.to_string());
                }
            },
            "payload" => {
                let marker = r.marker()?;
                let (kind, len) = if let Some(len) = r.str_len(marker)? {
                    (PayloadKind::Text, len)
                } else if let Some(len) = r.bin_len(marker)? {
                    (PayloadKind::Binary, len)
                } else {
                    return Err(Error::Malformed("payload is neither str nor bin"));
                };
                let start = r.at;
                r.take(len)?;
                let bytes = input.slice(start..start + len);
                if kind == PayloadKind::Text && std::str::from_utf8(&bytes).is_err() {
                    return Err(Error::Malformed("payload str is not UTF-8"));
                }
                payload = Some((kind, bytes));
            }
            _ => r.skip_value()?,
        }
    }
    let version = version.ok_or(Error::Missing("v"))?;
    if version != VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    let target = target.ok_or(Error::Missing("target"))?;
    let (mut kind, payload) = payload.ok_or(Error::Missing("payload"))?;
    if kind == PayloadKind::Text && flags & FLAG_JSON != 0 {
        kind = PayloadKind::Json;
    }
    Ok(Envelope {
        origin,
        id,
        target,
        flags,
        kind,
        payload,
        seq,
        epoch,
        from,
        event,
    })
}

/// Decodes arbitrary bytes; must never panic.
pub fn fuzz_one(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(envelope) = decode(&bytes) {
        let (again, _) = encode(&envelope);
        let round = decode(&Bytes::from(again)).map(|round| round.payload);
        assert_eq!(round, Ok(envelope.payload), "a decoded envelope re-encodes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: PayloadKind, payload: &[u8]) -> Envelope {
        Envelope {
            origin: "node-1".into(),
            id: "node-1-0-7".into(),
            target: Target::All,
            flags: 0,
            kind,
            payload: Bytes::copy_from_slice(payload),
            seq: None,
            epoch: None,
            from: None,
            event: None,
        }
    }

    #[test]
    fn round_trips_text_and_binary() {
        for envelope in [
            sample(PayloadKind::Text, b"hello"),
            sample(PayloadKind::Binary, &[0, 255, 7]),
        ] {
            let bytes = Bytes::from(encode(&envelope).0);
            assert_eq!(decode(&bytes).unwrap(), envelope);
        }
        let mut json = sample(PayloadKind::Json, br#"{"a":1}"#);
        json.from = Some("user:7".into());
        json.seq = Some(41);
        let decoded = decode(&Bytes::from(encode(&json).0)).unwrap();
        assert_eq!(decoded.flags, FLAG_JSON);
        json.flags = FLAG_JSON;
        assert_eq!(decoded, json);
        let mut room = sample(PayloadKind::Text, &[b'x'; 70_000]);
        room.target = Target::Room("lobby".into());
        assert_eq!(decode(&Bytes::from(encode(&room).0)).unwrap(), room);
    }

    #[test]
    fn the_seq_slot_is_where_encode_says() {
        let mut envelope = sample(PayloadKind::Text, b"x");
        let (mut bytes, at) = encode(&envelope);
        bytes[at..at + 8].copy_from_slice(&77u64.to_be_bytes());
        envelope.seq = Some(77);
        assert_eq!(decode(&Bytes::from(bytes)).unwrap(), envelope);
    }

    #[test]
    fn payload_is_a_slice_of_the_input() {
        let bytes = Bytes::from(encode(&sample(PayloadKind::Text, b"shared")).0);
        let envelope = decode(&bytes).unwrap();
        let offset = envelope.payload.as_ptr() as usize - bytes.as_ptr() as usize;
        assert!(offset < bytes.len(), "no copy of the payload");
    }

    /// A map written by hand in another key order, with unknown keys of every shape.
    #[test]
    fn any_key_order_and_unknown_keys() {
        let mut out = Vec::new();
        rmp::encode::write_map_len(&mut out, 5).unwrap();
        rmp::encode::write_str(&mut out, "payload").unwrap();
        rmp::encode::write_str(&mut out, "hi").unwrap();
        rmp::encode::write_str(&mut out, "future").unwrap();
        rmp::encode::write_array_len(&mut out, 3).unwrap();
        rmp::encode::write_map_len(&mut out, 1).unwrap();
        rmp::encode::write_str(&mut out, "k").unwrap();
        rmp::encode::write_f64(&mut out, 1.5).unwrap();
        rmp::encode::write_sint(&mut out, -300).unwrap();
        rmp::encode::write_nil(&mut out).unwrap();
        rmp::encode::write_str(&mut out, "target").unwrap();
        rmp::encode::write_str(&mut out, "user:42").unwrap();
        rmp::encode::write_str(&mut out, "ext").unwrap();
        rmp::encode::write_ext_meta(&mut out, 3, 5).unwrap();
        out.extend_from_slice(&[1, 2, 3]);
        rmp::encode::write_str(&mut out, "v").unwrap();
        rmp::encode::write_uint(&mut out, 1).unwrap();
        let envelope = decode(&Bytes::from(out)).unwrap();
        assert_eq!(envelope.target, Target::User("42".into()));
        assert_eq!(envelope.kind, PayloadKind::Text);
        assert_eq!(&envelope.payload[..], b"hi");
        assert_eq!(envelope.origin, "");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let mut v2 = sample(PayloadKind::Text, b"x");
        v2.flags = 1;
        let (mut bytes, _) = encode(&v2);
        // "v" value is the byte after the fixstr "v" key: fixpos 1 -> 2.
        let at = bytes.iter().position(|&b| b == 0x01).unwrap();
        bytes[at] = 0x02;
        assert_eq!(
            decode(&Bytes::from(bytes)),
            Err(Error::UnsupportedVersion(2))
        );
        assert_eq!(
            decode(&Bytes::from_static(&[0x90])),
            Err(Error::Malformed("not a map"))
        );
        assert_eq!(
            decode(&Bytes::from_static(&[0x80])),
            Err(Error::Missing("v"))
        );
        assert!(matches!(
            decode(&Bytes::from_static(&[0x81, 0xa1])),
            Err(Error::Malformed(_))
        ));
        let mut bad_target = Vec::new();
        rmp::encode::write_map_len(&mut bad_target, 1).unwrap();
        rmp::encode::write_str(&mut bad_target, "target").unwrap();
        rmp::encode::write_str(&mut bad_target, "planet:mars").unwrap();
        assert_eq!(
            decode(&Bytes::from(bad_target)),
            Err(Error::BadTarget("planet:mars".into()))
        );
        assert!(Error::UnsupportedVersion(2)
            .to_string()
            .contains("version 2"));
    }

    #[test]
    fn an_event_name_travels_and_envelopes_without_one_still_decode() {
        let mut named = sample(PayloadKind::Json, b"{}");
        named.flags = FLAG_JSON;
        named.event = Some("chat".into());
        let (bytes, seq_at) = encode(&named);
        assert_eq!(decode(&Bytes::from(bytes.clone())).unwrap(), named);
        // The seq slot still is where encode says, with the extra key before it.
        let mut patched = bytes;
        patched[seq_at..seq_at + 8].copy_from_slice(&5u64.to_be_bytes());
        assert_eq!(decode(&Bytes::from(patched)).unwrap().seq, Some(5));
        // Written by hand, as another publisher would: `message` is the default.
        let by_hand = |event: &str| {
            let mut out = Vec::new();
            rmp::encode::write_map_len(&mut out, 4).unwrap();
            rmp::encode::write_str(&mut out, "v").unwrap();
            rmp::encode::write_uint(&mut out, 1).unwrap();
            rmp::encode::write_str(&mut out, "target").unwrap();
            rmp::encode::write_str(&mut out, "all").unwrap();
            rmp::encode::write_str(&mut out, "event").unwrap();
            rmp::encode::write_str(&mut out, event).unwrap();
            rmp::encode::write_str(&mut out, "payload").unwrap();
            rmp::encode::write_str(&mut out, "hi").unwrap();
            decode(&Bytes::from(out))
        };
        assert_eq!(by_hand("news").unwrap().event.as_deref(), Some("news"));
        assert_eq!(by_hand("message").unwrap().event, None);
        assert!(matches!(by_hand("connect"), Err(Error::BadEvent(_))));
        assert!(matches!(by_hand(""), Err(Error::BadEvent(_))));
        assert!(matches!(by_hand("a\nb"), Err(Error::BadEvent(_))));
        assert_eq!(by_hand(&"e".repeat(129)), Err(Error::TooLarge("event")));
    }

    #[test]
    fn event_names_are_checked_in_one_place() {
        assert_eq!(event_name(None), Ok(None));
        assert_eq!(event_name(Some("message")), Ok(None));
        assert_eq!(event_name(Some("chat")), Ok(Some("chat".into())));
        assert_eq!(event_name(Some("价格 更新")), Ok(Some("价格 更新".into())));
        for reserved in RESERVED_EVENTS {
            let why = event_name(Some(reserved)).unwrap_err();
            assert!(why.contains("reserved"), "{why}");
        }
        assert!(check_event("").unwrap_err().contains("empty"));
        assert!(check_event(&"x".repeat(EVENT_BYTES_MAX + 1))
            .unwrap_err()
            .contains("128"));
        assert!(check_event(&"x".repeat(EVENT_BYTES_MAX)).is_ok());
        assert!(check_event("tab\there").unwrap_err().contains("control"));
    }

    #[test]
    fn targets_parse_and_print() {
        for text in ["all", "user:7", "room:a:b"] {
            assert_eq!(Target::parse(text).unwrap().to_string(), text);
        }
        for bad in ["", "user:", "room", "x:y", "ALL"] {
            assert_eq!(Target::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn deep_or_huge_unknown_values_are_refused_without_recursion() {
        let mut deep = vec![0x81, 0xa1, b'x'];
        deep.extend(std::iter::repeat_n(0x91, 10_000));
        deep.push(0xc0);
        assert_eq!(decode(&Bytes::from(deep)), Err(Error::TooLarge("nesting")));
        // An array header claiming 2^32-1 entries in a 10-byte input.
        let huge = vec![0x81, 0xa1, b'x', 0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode(&Bytes::from(huge)),
            Err(Error::Malformed(_))
        ));
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
        let (seed, _) = encode(&sample(PayloadKind::Text, b"seed payload"));
        for _ in 0..20_000 {
            let mut input = seed.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % input.len();
                match next() % 3 {
                    0 => input[at] = next() as u8,
                    1 => input.truncate(at),
                    _ => input.insert(at, next() as u8),
                }
                if input.is_empty() {
                    break;
                }
            }
            fuzz_one(&input);
            let random: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
            fuzz_one(&random);
        }
    }
}
