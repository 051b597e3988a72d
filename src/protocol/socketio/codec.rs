//! The `ClientCodec` of socket.io connections: how a published message, an op reply and a
//! recovery marker look to a socket.io client. Every output is one or two complete
//! WebSocket frames holding Engine.IO packets; the polling transport unwraps the same
//! frames into polling bodies, so a delivery is encoded once per namespace and shared by
//! every socket.io recipient, whatever its transport.
//!
//! docs/SOCKETIO.md is the contract:
//! - a push is the event its publisher named (`message` by default, `Message::event`)
//!   whose one argument is the payload. A JSON object payload
//!   gets a first key `_volley: {channel, seq, id}` (what a client needs to resume); other
//!   payloads arrive unchanged, without it.
//! - a push with a seq asks for an ack: its ack id is [`push_ack_id`] of (channel, seq), the
//!   same for every recipient, so the frame stays shared; the client's ACK is read back
//!   with [`split_ack_id`] against the channels the connection receives.
//! - an op reply is the ACK of the client's event: one object `{"ok":true,"result":..}` or
//!   `{"ok":false,"error":{"code":..,"message":..}}`. The op's [`Ref`] carries the
//!   namespace and the client's ack id ([`ack_ref`]).
//!
//! Client packets never reach `decode`: `services::socketio` reads them, since they need the
//! connection's socket.io state. Sans-IO.

use bytes::{Bytes, BytesMut};
use serde_json::json;

use super::engineio::PacketType as EioType;
use super::packet::{self, encode_push, PacketType, Push, ACK_ID_MAX};
use super::{namespace_name, NAMESPACES_MAX};
use crate::conn::Inbound;
use crate::envelope::{PayloadKind, DEFAULT_EVENT};
use crate::protocol::{ClientCodec, Decoded, Message, OpError, OpLimits, Recovered, Ref};
use crate::ws::frame::{self, OpCode};

/// The codec of one namespace.
pub struct SocketIo {
    pub nsp: u8,
}

static CODECS: [SocketIo; NAMESPACES_MAX] = {
    let mut codecs = [const { SocketIo { nsp: 0 } }; NAMESPACES_MAX];
    let mut i = 0;
    while i < NAMESPACES_MAX {
        codecs[i] = SocketIo { nsp: i as u8 };
        i += 1;
    }
    codecs
};

/// The codec that pushes on interned namespace `nsp`.
pub fn for_namespace(nsp: u8) -> &'static SocketIo {
    &CODECS[usize::from(nsp) % NAMESPACES_MAX]
}

/// Bits of a push ack id that hold the seq: 2^33 messages per channel before two pushes
/// of one channel share an id (then the receipt table, which keeps recent messages only,
/// has long forgotten the older one).
const ACK_SEQ_BITS: u32 = 33;
/// The rest (20 bits) hold a hash of the channel, so the id stays under ACK_ID_MAX (2^53).
const ACK_HASH_MASK: u64 = (1 << (53 - ACK_SEQ_BITS)) - 1;

/// The 20-bit FNV-1a hash of a channel name (`all`, `user:<id>`, `room:<name>`).
pub fn channel_hash(channel: &str) -> u64 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in channel.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    u64::from(hash) & ACK_HASH_MASK
}

/// The ack id of a push of (channel, seq): the same for every recipient, at most
/// [`ACK_ID_MAX`].
pub fn push_ack_id(channel: &str, seq: u64) -> u64 {
    let id = (channel_hash(channel) << ACK_SEQ_BITS) | (seq & ((1 << ACK_SEQ_BITS) - 1));
    debug_assert!(id <= ACK_ID_MAX);
    id
}

/// (channel hash, seq) of a push ack id.
pub fn split_ack_id(id: u64) -> (u64, u64) {
    (id >> ACK_SEQ_BITS, id & ((1 << ACK_SEQ_BITS) - 1))
}

/// The op reference of a client event: its namespace and ack id in one integer.
pub fn ack_ref(nsp: u8, id: u64) -> Ref {
    Ref::from((u64::from(nsp) << 53) | (id & ACK_ID_MAX))
}

/// (namespace, ack id) of a reference made by [`ack_ref`].
pub fn split_ref(reference: &Ref) -> Option<(u8, u64)> {
    let n = match reference {
        Ref::Int(n) => u64::try_from(*n).ok()?,
        Ref::UInt(n) => *n,
        Ref::Str(_) => return None,
    };
    Some(((n >> 53) as u8, n & ACK_ID_MAX))
}

/// One Engine.IO text packet as a WebSocket text frame.
pub fn ws_text(eio_packet: &[u8]) -> Bytes {
    frame::encode(OpCode::Text, eio_packet)
}

/// A Socket.IO packet (text) inside an Engine.IO message, as a WebSocket text frame.
pub fn message_frame(sio_packet: &str) -> Bytes {
    let mut eio = Vec::with_capacity(1 + sio_packet.len());
    eio.push(EioType::Message.as_byte());
    eio.extend_from_slice(sio_packet.as_bytes());
    ws_text(&eio)
}

/// An event from the server with one JSON argument: `42/nsp,["name",arg]`.
pub fn event_frame(nsp: &str, name: &str, arg: &serde_json::Value) -> Bytes {
    let args = json!([name, arg]);
    let raw = serde_json::value::to_raw_value(&args).ok();
    message_frame(&packet::encode_raw(
        PacketType::Event,
        nsp,
        None,
        raw.as_deref(),
    ))
}

/// The ACK of a client event with one JSON argument: `43/nsp,<id>[arg]`.
pub fn ack_frame(nsp: &str, id: u64, arg: &serde_json::Value) -> Bytes {
    let args = json!([arg]);
    let raw = serde_json::value::to_raw_value(&args).ok();
    message_frame(&packet::encode_raw(
        PacketType::Ack,
        nsp,
        Some(id),
        raw.as_deref(),
    ))
}

/// The JSON argument of a push: the payload, with `_volley` first in an object.
fn push_argument(message: &Message<'_>, channel: &str) -> String {
    let payload = std::str::from_utf8(message.payload).unwrap_or_default();
    let trimmed = payload.trim_start();
    let Some(rest) = trimmed.strip_prefix('{') else {
        return payload.to_string();
    };
    let mut meta = json!({ "channel": channel, "seq": message.seq, "id": message.id });
    if let Some(epoch) = message.epoch {
        meta["epoch"] = epoch.into();
    }
    let mut out = String::with_capacity(payload.len() + 64);
    out.push_str("{\"_volley\":");
    out.push_str(&meta.to_string());
    if !rest.trim_start().starts_with('}') {
        out.push(',');
    }
    out.push_str(rest);
    out
}

impl ClientCodec for SocketIo {
    fn message(&self, message: &Message<'_>) -> Bytes {
        let nsp = namespace_name(self.nsp);
        let channel = message.channel.to_string();
        let id = message.seq.map(|seq| push_ack_id(&channel, seq));
        let event = message.event.unwrap_or(DEFAULT_EVENT);
        match message.kind {
            PayloadKind::Json => {
                let arg = push_argument(message, &channel);
                ws_text(&encode_push(nsp, event, id, Push::Json(&arg)))
            }
            PayloadKind::Text => {
                let text = String::from_utf8_lossy(message.payload);
                ws_text(&encode_push(nsp, event, id, Push::Text(&text)))
            }
            PayloadKind::Binary => {
                // BINARY_EVENT then its one attachment: two frames, one shared buffer.
                let head = ws_text(&encode_push(nsp, event, id, Push::Binary));
                let body = frame::encode(OpCode::Binary, message.payload);
                let mut both = BytesMut::with_capacity(head.len() + body.len());
                both.extend_from_slice(&head);
                both.extend_from_slice(&body);
                both.freeze()
            }
        }
    }

    fn decode(&self, _: &Inbound, _: &OpLimits) -> Decoded {
        // services::socketio reads socket.io packets; nothing reaches here.
        Decoded::Ignored
    }

    fn reply_ok(
        &self,
        reference: Option<&Ref>,
        result: Option<&serde_json::Value>,
    ) -> Option<Bytes> {
        let (nsp, id) = split_ref(reference?)?;
        let arg = match result {
            Some(result) => json!({ "ok": true, "result": result }),
            None => json!({ "ok": true }),
        };
        Some(ack_frame(namespace_name(nsp), id, &arg))
    }

    fn reply_err(&self, error: &OpError) -> Option<Bytes> {
        let body = json!({ "code": error.code.as_str(), "message": error.message });
        match error.reference.as_ref().and_then(split_ref) {
            Some((nsp, id)) => Some(ack_frame(
                namespace_name(nsp),
                id,
                &json!({ "ok": false, "error": body }),
            )),
            // No ack asked: an `error` event on the connection's namespace.
            None => Some(event_frame(namespace_name(self.nsp), "error", &body)),
        }
    }

    fn recovered(&self, recovered: &Recovered<'_>) -> Option<Bytes> {
        let arg = json!({
            "channel": recovered.channel.to_string(),
            "recovered": recovered.recovered,
            "replayed": recovered.replayed,
            "seq": recovered.seq,
            "epoch": recovered.epoch,
            "error": recovered.error,
            "reason": recovered.reason,
        });
        Some(event_frame(namespace_name(self.nsp), "recovered", &arg))
    }

    /// An application's emit (hooks) on the connection's push namespace.
    fn event(&self, name: &str, args: &serde_json::Value) -> Option<Bytes> {
        emit_frame(namespace_name(self.nsp), name, args)
    }
}

/// An event from the server with any number of JSON arguments: `42/nsp,["name",...args]`
/// (an application's emit through its hook). `args` is a JSON array; any other value is
/// the one argument.
pub fn emit_frame(nsp: &str, name: &str, args: &serde_json::Value) -> Option<Bytes> {
    let mut all = Vec::with_capacity(1 + args.as_array().map_or(1, Vec::len));
    all.push(serde_json::Value::from(name));
    match args {
        serde_json::Value::Array(items) => all.extend(items.iter().cloned()),
        other => all.push(other.clone()),
    }
    let raw = serde_json::value::to_raw_value(&all).ok()?;
    Some(message_frame(&packet::encode_raw(
        PacketType::Event,
        nsp,
        None,
        Some(&raw),
    )))
}

/// The ACK of a client event with any number of JSON arguments: `43/nsp,<id>[...args]`
/// (an application's ack through its hook: an array is the arguments, any other value the
/// one argument).
pub fn ack_args_frame(nsp: &str, id: u64, args: &serde_json::Value) -> Option<Bytes> {
    let raw = match args {
        serde_json::Value::Array(_) => serde_json::value::to_raw_value(args).ok()?,
        other => serde_json::value::to_raw_value(&[other]).ok()?,
    };
    Some(message_frame(&packet::encode_raw(
        PacketType::Ack,
        nsp,
        Some(id),
        Some(&raw),
    )))
}

/// The Engine.IO packets in a run of server WebSocket frames (unmasked, as the codec
/// writes them), for a polling body: (is_binary, payload). None if `frames` is not a run of
/// whole server frames.
pub fn unwrap_frames(mut frames: &[u8]) -> Option<Vec<(bool, &[u8])>> {
    let mut out = Vec::new();
    while !frames.is_empty() {
        let first = *frames.first()?;
        let len7 = *frames.get(1)? & 0x7f;
        let (len, header) = match len7 {
            126 => (
                u64::from(u16::from_be_bytes([*frames.get(2)?, *frames.get(3)?])),
                4,
            ),
            127 => {
                let bytes: [u8; 8] = frames.get(2..10)?.try_into().ok()?;
                (u64::from_be_bytes(bytes), 10)
            }
            n => (u64::from(n), 2),
        };
        let end = header + usize::try_from(len).ok()?;
        let payload = frames.get(header..end)?;
        match first & 0x0f {
            0x1 => out.push((false, payload)),
            0x2 => out.push((true, payload)),
            // Control frames (a WebSocket ping) mean nothing to a polling client.
            _ => {}
        }
        frames = &frames[end..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Target;

    fn message<'a>(target: &'a Target, kind: PayloadKind, payload: &'a [u8]) -> Message<'a> {
        Message {
            channel: target,
            seq: Some(7),
            epoch: None,
            id: "n-0-7",
            from: None,
            event: None,
            kind,
            payload,
        }
    }

    fn packets(frames: &Bytes) -> Vec<(bool, Vec<u8>)> {
        unwrap_frames(frames)
            .unwrap()
            .into_iter()
            .map(|(b, p)| (b, p.to_vec()))
            .collect()
    }

    #[test]
    fn a_json_object_push_carries_channel_seq_and_id_first() {
        let room = Target::Room("lobby".into());
        let frame = SocketIo { nsp: 0 }.message(&message(&room, PayloadKind::Json, b"{\"a\":1}"));
        let id = push_ack_id("room:lobby", 7);
        let expected = format!(
            "42{id}[\"message\",{{\"_volley\":{{\"channel\":\"room:lobby\",\"id\":\"n-0-7\",\"seq\":7}},\"a\":1}}]"
        );
        assert_eq!(packets(&frame), vec![(false, expected.into_bytes())]);
        assert_eq!(split_ack_id(id), (channel_hash("room:lobby"), 7));
        let empty = SocketIo { nsp: 0 }.message(&message(&room, PayloadKind::Json, b"{}"));
        let text = String::from_utf8(packets(&empty)[0].1.clone()).unwrap();
        assert!(text.ends_with("\"seq\":7}}]"), "{text}");
    }

    #[test]
    fn other_payloads_arrive_unchanged() {
        let all = Target::All;
        let array = SocketIo { nsp: 0 }.message(&message(&all, PayloadKind::Json, b"[1,2]"));
        let id = push_ack_id("all", 7);
        assert_eq!(
            packets(&array)[0].1,
            format!("42{id}[\"message\",[1,2]]").into_bytes()
        );
        let text = SocketIo { nsp: 0 }.message(&message(&all, PayloadKind::Text, b"hi"));
        assert_eq!(
            packets(&text)[0].1,
            format!("42{id}[\"message\",\"hi\"]").into_bytes()
        );
        let binary = SocketIo { nsp: 0 }.message(&message(&all, PayloadKind::Binary, &[0, 255]));
        assert_eq!(
            packets(&binary),
            vec![
                (
                    false,
                    format!("451-{id}[\"message\",{{\"_placeholder\":true,\"num\":0}}]")
                        .into_bytes()
                ),
                (true, vec![0, 255]),
            ]
        );
    }

    #[test]
    fn replies_are_acks_on_the_events_namespace() {
        let reference = ack_ref(3, 12);
        assert_eq!(split_ref(&reference), Some((3, 12)));
        let ok = SocketIo { nsp: 0 }
            .reply_ok(Some(&ack_ref(0, 12)), None)
            .unwrap();
        assert_eq!(packets(&ok)[0].1, b"4312[{\"ok\":true}]".to_vec());
        assert!(SocketIo { nsp: 0 }.reply_ok(None, None).is_none());
        let error = OpError {
            reference: None,
            code: crate::protocol::ErrorCode::Forbidden,
            message: "no".into(),
        };
        let event = SocketIo { nsp: 0 }.reply_err(&error).unwrap();
        assert_eq!(
            packets(&event)[0].1,
            b"42[\"error\",{\"code\":\"forbidden\",\"message\":\"no\"}]".to_vec()
        );
    }

    #[test]
    fn a_named_push_is_that_event_and_emits_spread_their_args() {
        let all = Target::All;
        let mut named = message(&all, PayloadKind::Json, b"[1]");
        named.event = Some("chat");
        let id = push_ack_id("all", 7);
        let frame = SocketIo { nsp: 0 }.message(&named);
        assert_eq!(
            packets(&frame)[0].1,
            format!("42{id}[\"chat\",[1]]").into_bytes()
        );
        named.kind = PayloadKind::Binary;
        let frame = SocketIo { nsp: 0 }.message(&named);
        assert!(packets(&frame)[0]
            .1
            .starts_with(format!("451-{id}[\"chat\",").as_bytes()));
        let emit = SocketIo { nsp: 0 }
            .event("auth", &json!([{"a": 1}, 2]))
            .unwrap();
        assert_eq!(packets(&emit)[0].1, b"42[\"auth\",{\"a\":1},2]".to_vec());
        let none = SocketIo { nsp: 0 }.event("ping-back", &json!([])).unwrap();
        assert_eq!(packets(&none)[0].1, b"42[\"ping-back\"]".to_vec());
    }

    #[test]
    fn ack_ids_stay_javascript_safe() {
        for channel in ["all", "user:ann", "room:x"] {
            for seq in [0, 1, (1 << 33) - 1, u64::MAX] {
                assert!(push_ack_id(channel, seq) <= ACK_ID_MAX);
            }
        }
        assert!(unwrap_frames(&[0x81, 5, b'a']).is_none(), "a cut frame");
    }
}
