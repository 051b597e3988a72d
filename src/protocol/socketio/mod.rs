//! Socket.IO wire formats, sans-IO: bytes in, values out, and back. Nothing here reads a
//! socket, a clock or a shard; every limit is an argument.
//!
//! - [`engineio`]: Engine.IO 4, the transport layer (packet types, the open packet, HTTP
//!   long-polling bodies, the query/handshake checks and their error bodies, session ids that
//!   name their owning shard).
//! - [`packet`]: Socket.IO 5, the packets inside Engine.IO message packets (namespaces, ack
//!   ids, binary attachments), and the encode-once server push.
//! - [`adapter`]: what `@socket.io/redis-adapter` v8 and `@socket.io/redis-emitter` publish
//!   on Redis (MessagePack broadcasts, JSON or MessagePack requests), so volley and Node
//!   socket.io servers can share one cluster.
//!
//! [`Value`] is the one data model the three share: JSON plus binary, which is what a
//! socket.io event argument can be once attachments are put back in place, and what a
//! notepack-encoded broadcast carries.
//!
//! - [`codec`]: the `ClientCodec` of socket.io connections (pushes, op replies), and
//!   [`session`]: the per-connection socket.io state the hub keeps in a `Session`.
//!
//! Called by `front::socketio` (HTTP polling and WebSocket transports), `services::socketio`
//! (what a client's packets do) and the hub (through the codec). Byte fixtures from the
//! real npm packages live in `tools/socketio-fixtures/fixtures.json` (with the script that
//! wrote them) and are checked by the tests of each module.

pub mod adapter;
pub mod codec;
pub mod engineio;
pub mod packet;
pub mod session;

use std::sync::{Mutex, OnceLock};

use bytes::Bytes;

/// Namespaces a process knows, `/` included: each is one `Codec::SocketIo` and one slot of
/// a delivery's frame cache, so the bound keeps that cache small.
pub const NAMESPACES_MAX: usize = 8;

/// Namespace names by interned index (0 is `/`). Written only by [`intern_namespace`] while
/// flags are validated, before any shard starts; read lock-free by the codec afterwards.
/// Process-wide because a `Codec` is a `Copy` value with no config at hand.
static NAMESPACES: [OnceLock<Box<str>>; NAMESPACES_MAX] =
    [const { OnceLock::new() }; NAMESPACES_MAX];
/// Serializes [`intern_namespace`] (config time only).
static INTERNING: Mutex<()> = Mutex::new(());

/// The index of a namespace, interning it on first sight; None when the table is full.
pub fn intern_namespace(name: &str) -> Option<u8> {
    if name == "/" {
        return Some(0);
    }
    let _guard = INTERNING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for (i, slot) in NAMESPACES.iter().enumerate().skip(1) {
        match slot.get() {
            Some(known) if &**known == name => return Some(i as u8),
            Some(_) => {}
            None => {
                let _ = slot.set(name.into());
                return Some(i as u8);
            }
        }
    }
    None
}

/// The name of an interned namespace (`/` for 0 and for an index never interned).
pub fn namespace_name(index: u8) -> &'static str {
    NAMESPACES
        .get(usize::from(index))
        .filter(|_| index > 0)
        .and_then(OnceLock::get)
        .map_or("/", |name| &**name)
}

/// A socket.io value: JSON plus binary. Object keys keep their order (JavaScript objects
/// keep insertion order, and notepack writes keys in that order).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    /// A Buffer / ArrayBuffer: a socket.io binary attachment, or a MessagePack bin.
    Binary(Bytes),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl Value {
    /// Converts a parsed JSON value. Its depth is bounded by serde_json's recursion limit
    /// (128), so the recursion here is too.
    pub fn from_json(json: serde_json::Value) -> Value {
        match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => Value::Number(n),
            serde_json::Value::String(s) => Value::String(s),
            serde_json::Value::Array(items) => {
                Value::Array(items.into_iter().map(Value::from_json).collect())
            }
            serde_json::Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// True if a [`Value::Binary`] sits anywhere inside (socket.io-parser's `hasBinary`).
    pub fn has_binary(&self) -> bool {
        match self {
            Value::Binary(_) => true,
            Value::Array(items) => items.iter().any(Value::has_binary),
            Value::Object(entries) => entries.iter().any(|(_, v)| v.has_binary()),
            _ => false,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value under `key`, if this is an object that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Writes the value as JSON. Each binary becomes socket.io's placeholder
    /// `{"_placeholder":true,"num":N}` and is pushed onto `attachments`, numbered in
    /// depth-first order as socket.io-parser's `deconstructPacket` numbers them.
    pub fn write_json(&self, out: &mut Vec<u8>, attachments: &mut Vec<Bytes>) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Value::String(s) => write_json_str(out, s),
            Value::Binary(bytes) => {
                out.extend_from_slice(b"{\"_placeholder\":true,\"num\":");
                out.extend_from_slice(attachments.len().to_string().as_bytes());
                out.push(b'}');
                attachments.push(bytes.clone());
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write_json(out, attachments);
                }
                out.push(b']');
            }
            Value::Object(entries) => {
                out.push(b'{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_json_str(out, key);
                    out.push(b':');
                    value.write_json(out, attachments);
                }
                out.push(b'}');
            }
        }
    }
}

/// Writes `s` as a JSON string, escaped by serde_json (control characters included, so the
/// result never holds the Engine.IO record separator 0x1e).
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail: serde_json's errors come from the writer
    // or from non-string map keys, and there are neither here.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
pub(crate) mod testing {
    //! Shared by the three modules' tests: the npm fixtures, a JSON view of [`Value`] that
    //! matches the one `generate.js` writes, and a seeded mutation driver for `fuzz_one`.

    use super::Value;

    pub fn fixtures() -> Vec<serde_json::Value> {
        let text = include_str!("../../../tools/socketio-fixtures/fixtures.json");
        serde_json::from_str(text).unwrap()
    }

    pub fn fixture(name: &str) -> serde_json::Value {
        fixtures()
            .into_iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no fixture {name}"))
    }

    pub fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    pub fn to_hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Binaries as `{"$bin": "<hex>"}`, as in fixtures.json.
    pub fn view(value: &Value) -> serde_json::Value {
        match value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(n) => serde_json::Value::Number(n.clone()),
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Binary(b) => serde_json::json!({ "$bin": to_hex(b) }),
            Value::Array(items) => serde_json::Value::Array(items.iter().map(view).collect()),
            Value::Object(entries) => serde_json::Value::Object(
                entries.iter().map(|(k, v)| (k.clone(), view(v))).collect(),
            ),
        }
    }

    /// Numbers compared as f64, so notepack's `1` (int) and JSON's `1` (u64) agree.
    pub fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value as J;
        match (a, b) {
            (J::Number(x), J::Number(y)) => x.as_f64() == y.as_f64(),
            (J::Array(x), J::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
            }
            (J::Object(x), J::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
            }
            _ => a == b,
        }
    }

    /// Feeds `fuzz` every seed, then `rounds` seeded random mutations of them and random
    /// bytes. xorshift64: reproducible, no dependency.
    pub fn fuzz_mutations(seeds: &[Vec<u8>], dictionary: &[&[u8]], rounds: usize, fuzz: fn(&[u8])) {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in seeds {
            fuzz(seed);
        }
        for round in 0..rounds {
            let mut input = seeds[round % seeds.len()].clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % (input.len() + 1);
                match next() % 6 {
                    0 if at < input.len() => input[at] = next() as u8,
                    1 if at < input.len() => input[at] ^= 1 << (next() % 8),
                    2 => input.truncate(at),
                    3 if !dictionary.is_empty() => {
                        let token = dictionary[(next() as usize) % dictionary.len()];
                        input.splice(at..at, token.iter().copied());
                    }
                    4 if at < input.len() => {
                        let end = (at + (next() % 8) as usize + 1).min(input.len());
                        input.drain(at..end);
                    }
                    _ => input.insert(at, next() as u8),
                }
            }
            fuzz(&input);
            let random: Vec<u8> = (0..(next() % 48)).map(|_| next() as u8).collect();
            fuzz(&random);
        }
    }
}
