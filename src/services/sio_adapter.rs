//! `--socketio-adapter`, the reading half (issue 13): what `@socket.io/redis-emitter`
//! publishers and `@socket.io/redis-adapter` v8 servers put on socket.io's Redis channels,
//! acted on for this shard's socket.io sockets. Every shard subscribes on its own (as for
//! volley's channels), so each acts on its own sockets and answers for them.
//!
//! - Broadcasts (`<key>#<nsp>#`, `<key>#<nsp>#<room>#`): the packet is encoded once per
//!   shard and the same bytes queued to every local socket of the namespace in any of its
//!   `rooms` (all when empty) and in none of its `except` (`hub::sockets`), through the
//!   bounded queues. Not numbered, kept in history, held during a recovery or counted in
//!   receipts: socket.io's messages are not volley's channels. A one-room channel for a
//!   room no local socket is in is skipped unread (as the adapter skips it). Messages a
//!   volley process wrote (`SocketIoKeys::is_volley_uid`) are dropped: volley's clients got
//!   them through volley's own channel. `flags` (volatile, compress) are not acted on.
//! - Requests (`<key>-request#<nsp>#`): join, leave and disconnect act on the matching
//!   local sockets; `fetchSockets`, `allRooms` and the older per-socket forms are answered
//!   on `<key>-response#<nsp>#` for this shard's sockets; `serverSideEmit` has no listener
//!   here: with an ack wanted it is answered with `null` (so a Node server's
//!   `serverSideEmitWithAck` completes instead of timing out on volley), else ignored; a
//!   broadcast with acks is delivered without an ack id and answered with a client count
//!   of 0 (volley does not collect those acks).
//! - Anything that does not decode is counted (`socketio_adapter_malformed_total`),
//!   logged at most every `MALFORMED_LOG_INTERVAL_S` per shard, and dropped; the link
//!   carries on.
//!
//! Called by `Services::on_broker_message` for channels under `--socketio-redis-key`.

use std::cell::Cell;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use serde_json::json;

use super::Services;
use crate::broker::keys::SocketIoKeys;
use crate::config::{
    SOCKETIO_ADAPTER_DEPTH_MAX, SOCKETIO_ADAPTER_MESSAGE_BYTES_MAX,
    SOCKETIO_ADAPTER_NAME_BYTES_MAX, SOCKETIO_ADAPTER_ROOMS_MAX, SOCKETIO_ADAPTER_VALUES_MAX,
};
use crate::conn::ConnKey;
use crate::log;
use crate::metrics::Metrics;
use crate::protocol::check_name;
use crate::protocol::socketio::adapter::{
    self, AdapterPacket, Limits, RequestKind, RoomFilter, Target,
};
use crate::protocol::socketio::codec::message_frame;
use crate::protocol::socketio::engineio::Sid;
use crate::protocol::socketio::packet::{self, PacketType, RESERVED_EVENTS};
use crate::protocol::socketio::Value;
use crate::ws::frame::{self, close_code, OpCode};

/// At most one log line per this many seconds per shard about undecodable messages.
const MALFORMED_LOG_INTERVAL_S: u32 = 10;

thread_local! {
    /// When this shard last logged a malformed message (one executor per thread, so this
    /// is per shard).
    static MALFORMED_LOGGED_S: Cell<Option<u32>> = const { Cell::new(None) };
}

const LIMITS: Limits = Limits {
    rooms_max: SOCKETIO_ADAPTER_ROOMS_MAX,
    name_bytes_max: SOCKETIO_ADAPTER_NAME_BYTES_MAX,
    depth_max: SOCKETIO_ADAPTER_DEPTH_MAX,
    values_max: SOCKETIO_ADAPTER_VALUES_MAX,
};

/// True when `channel` is one of socket.io's (bridge on, and under its key).
pub fn owns(svc: &Services, channel: &[u8]) -> bool {
    keys(svc).is_some_and(|k| k.owns(channel))
}

fn keys(svc: &Services) -> Option<&SocketIoKeys> {
    svc.backend.redis.as_ref()?.socketio.as_ref()
}

/// One message from socket.io's channels.
pub fn on_message(svc: &Rc<Services>, channel: &[u8], payload: &[u8]) {
    let Some(keys) = keys(svc) else {
        return;
    };
    Metrics::inc(&svc.ctx.metrics.socketio_adapter_messages_total);
    let Ok(channel) = std::str::from_utf8(channel) else {
        return malformed(svc, "<not UTF-8>", "the channel name is not UTF-8");
    };
    if payload.len() > SOCKETIO_ADAPTER_MESSAGE_BYTES_MAX {
        return malformed(
            svc,
            channel,
            "larger than SOCKETIO_ADAPTER_MESSAGE_BYTES_MAX",
        );
    }
    let namespaces = &svc.ctx.config.socketio.namespaces;
    let names = || namespaces.iter().map(|(_, name)| name.as_str());
    let index_of = |name: &str| namespaces.iter().find(|(_, n)| n == name).map(|(i, _)| *i);
    if let Some(nsp) = keys.request_of(channel, names()) {
        if let Some(index) = index_of(nsp) {
            request(svc, keys, channel, nsp, index, payload);
        }
    } else if let Some((nsp, room)) = keys.broadcast_of(channel, names()) {
        if room.is_some_and(|room| !svc.hub.has_room(room)) {
            return;
        }
        if let Some(index) = index_of(nsp) {
            broadcast(svc, keys, channel, nsp, index, payload);
        }
    }
}

fn malformed(svc: &Services, channel: &str, why: &str) {
    Metrics::inc(&svc.ctx.metrics.socketio_adapter_malformed_total);
    let now_s = svc.ctx.now_s();
    let due = MALFORMED_LOGGED_S.with(|last| {
        let due = last
            .get()
            .is_none_or(|at| now_s >= at + MALFORMED_LOG_INTERVAL_S);
        if due {
            last.set(Some(now_s));
        }
        due
    });
    if due {
        log!(
            warn,
            Some(svc.ctx.id),
            "dropped a message on socket.io channel {channel}: {why} (counted in socketio_adapter_malformed_total; docs/SOCKETIO.md)"
        );
    }
}

fn broadcast(
    svc: &Rc<Services>,
    keys: &SocketIoKeys,
    channel: &str,
    nsp: &str,
    index: u8,
    payload: &[u8],
) {
    let message = match adapter::decode_broadcast(payload, &LIMITS) {
        Ok(message) => message,
        Err(e) => return malformed(svc, channel, &e.to_string()),
    };
    if keys.is_volley_uid(&message.uid) || message.packet.nsp != nsp {
        return;
    }
    if let Err(why) = deliver(svc, index, &message.packet, &message.filter) {
        malformed(svc, channel, why);
    }
}

/// Queues an event packet to the matching local sockets, encoded once; how many took it.
fn deliver(
    svc: &Services,
    nsp: u8,
    packet: &AdapterPacket,
    filter: &RoomFilter,
) -> Result<u32, &'static str> {
    if !matches!(packet.kind, PacketType::Event | PacketType::BinaryEvent) {
        return Err("the packet is not an EVENT");
    }
    let name = match &packet.data {
        Value::Array(items) => items.first().and_then(Value::as_str),
        _ => None,
    };
    match name {
        None => return Err("the event has no name"),
        Some(name) if RESERVED_EVENTS.contains(&name) => return Err("a reserved event name"),
        Some(_) => {}
    }
    let sockets = svc.hub.sio_sockets(nsp, &filter.rooms, &filter.except);
    if sockets.is_empty() {
        return Ok(0);
    }
    let frames = event_frames(&packet.nsp, &packet.data);
    Metrics::inc(&svc.ctx.metrics.frames_encoded_total);
    let keys: Vec<ConnKey> = sockets.iter().map(|(key, _)| *key).collect();
    Ok(svc.hub.send_shared(&keys, &frames))
}

/// An EVENT as the WebSocket frames a socket.io client reads (a BINARY_EVENT and its
/// attachments when the arguments hold binary), joined in one buffer to share; the polling
/// transport unwraps the same bytes into a polling body.
fn event_frames(nsp: &str, data: &Value) -> Bytes {
    let (text, attachments) = packet::encode_event(nsp, None, data);
    let head = message_frame(&text);
    if attachments.is_empty() {
        return head;
    }
    let mut all = BytesMut::from(&head[..]);
    for attachment in &attachments {
        all.extend_from_slice(&frame::encode(OpCode::Binary, attachment));
    }
    all.freeze()
}

fn request(
    svc: &Rc<Services>,
    keys: &SocketIoKeys,
    channel: &str,
    nsp: &str,
    index: u8,
    payload: &[u8],
) {
    let request = match adapter::decode_request(payload, &LIMITS) {
        Ok(request) => request,
        Err(e) => return malformed(svc, channel, &e.to_string()),
    };
    if request
        .uid
        .as_deref()
        .is_some_and(|uid| keys.is_volley_uid(uid))
    {
        return;
    }
    let id = request.request_id;
    let matching = |target: &Target| match target {
        Target::Matching(filter) => svc.hub.sio_sockets(index, &filter.rooms, &filter.except),
        Target::Socket(sid) => svc.hub.sio_sockets(index, std::slice::from_ref(sid), &[]),
    };
    // The older per-socket forms are answered by the server that holds the socket.
    let answer_socket = |target: &Target, found: bool| {
        if let (Target::Socket(_), true, Some(id)) = (target, found, &id) {
            respond(svc, keys, nsp, json!({ "requestId": id }));
        }
    };
    match request.kind {
        RequestKind::Join { target, rooms } => {
            let sockets = matching(&target);
            for (key, _) in &sockets {
                for room in &rooms {
                    if check_name(room, svc.ctx.config.name_bytes_max).is_ok() {
                        svc.join_unchecked(*key, room);
                    }
                }
            }
            answer_socket(&target, !sockets.is_empty());
        }
        RequestKind::Leave { target, rooms } => {
            let sockets = matching(&target);
            for (key, _) in &sockets {
                for room in &rooms {
                    // Not in it (or its own socket id room, which it never leaves): nothing to do.
                    let _ = svc.leave_room(*key, room);
                }
            }
            answer_socket(&target, !sockets.is_empty());
        }
        RequestKind::Disconnect { target, close } => {
            let sockets = matching(&target);
            for (key, socket) in &sockets {
                disconnect(svc, *key, index, *socket, close);
            }
            answer_socket(&target, !sockets.is_empty());
        }
        RequestKind::Sockets { rooms } => {
            let Some(id) = id else { return };
            let found = svc.hub.sio_sockets(index, &rooms, &[]);
            let ids: Vec<&str> = found.iter().map(|(_, s)| s.as_str()).collect();
            respond(svc, keys, nsp, json!({ "requestId": id, "sockets": ids }));
        }
        RequestKind::AllRooms => {
            let Some(id) = id else { return };
            let mut rooms = std::collections::BTreeSet::new();
            for (key, socket) in svc.hub.sio_sockets(index, &[], &[]) {
                rooms.extend(svc.hub.sio_rooms_of(key, &socket));
            }
            respond(svc, keys, nsp, json!({ "requestId": id, "rooms": rooms }));
        }
        RequestKind::Fetch { filter } => {
            let Some(id) = id else { return };
            let sockets: Vec<serde_json::Value> = svc
                .hub
                .sio_sockets(index, &filter.rooms, &filter.except)
                .into_iter()
                .map(|(key, socket)| fetched(svc, key, &socket))
                .collect();
            respond(
                svc,
                keys,
                nsp,
                json!({ "requestId": id, "sockets": sockets }),
            );
        }
        RequestKind::ServerSideEmit { .. } => {
            // No server-side listeners here: an ack-wanting emit gets one null answer per
            // shard, as a Node server whose listener acked with nothing would give.
            if let Some(id) = id {
                respond(
                    svc,
                    keys,
                    nsp,
                    json!({ "type": adapter::RequestType::ServerSideEmit as u8, "requestId": id, "data": null }),
                );
            }
        }
        RequestKind::Broadcast { packet, filter, .. } => {
            if let Err(why) = deliver(svc, index, &packet, &filter) {
                return malformed(svc, channel, why);
            }
            if let Some(id) = id {
                respond(
                    svc,
                    keys,
                    nsp,
                    json!({ "type": adapter::RequestType::BroadcastClientCount as u8, "requestId": id, "clientCount": 0 }),
                );
            }
        }
    }
}

/// One socket as `fetchSockets` describes it. volley keeps no handshake per connection,
/// so the handshake has socket.io's keys with empty values; `data` names the volley user.
fn fetched(svc: &Services, key: ConnKey, socket: &Sid) -> serde_json::Value {
    let user = svc
        .hub
        .with_session(key, |s| s.user.as_deref().map(str::to_string))
        .flatten();
    json!({
        "id": socket.as_str(),
        "handshake": {
            "headers": {}, "time": "", "address": "", "xdomain": false, "secure": false,
            "issued": 0, "url": "", "query": {}, "auth": {}
        },
        "rooms": svc.hub.sio_rooms_of(key, socket),
        "data": { "user": user },
    })
}

/// Publishes an answer on the namespace's response channel (fire and forget: a requester
/// that misses it times out, as with a Node server that went away).
fn respond(svc: &Services, keys: &SocketIoKeys, nsp: &str, answer: serde_json::Value) {
    let Some(redis) = &svc.backend.redis else {
        return;
    };
    let channel = keys.response(nsp);
    let body = answer.to_string();
    if redis
        .broker
        .command_detached(&[b"PUBLISH", channel.as_bytes(), body.as_bytes()])
    {
        Metrics::inc(&svc.ctx.metrics.socketio_adapter_responses_total);
    }
}

/// A server-side disconnect of one namespace socket, as socket.io's `socket.disconnect`:
/// the client gets DISCONNECT (reason "io server disconnect": it does not reconnect by
/// itself); with `close`, every namespace of the connection does and the connection ends.
fn disconnect(svc: &Rc<Services>, key: ConnKey, nsp: u8, socket: Sid, close: bool) {
    if close {
        let sockets = svc
            .hub
            .with_session(key, |s| s.sio.as_ref().map(|sio| sio.sockets.clone()))
            .flatten()
            .unwrap_or_default();
        for (nsp, _) in sockets {
            let name = crate::protocol::socketio::namespace_name(nsp);
            svc.hub
                .send(key, message_frame(&packet::encode_disconnect(name)));
        }
        svc.hub.close(key, close_code::NORMAL, "");
        return;
    }
    let name = crate::protocol::socketio::namespace_name(nsp);
    svc.hub
        .send(key, message_frame(&packet::encode_disconnect(name)));
    super::socketio::disconnect(svc, key, nsp, socket);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::socketio::codec::ws_text;

    #[test]
    fn an_event_with_binary_is_one_buffer_of_frames() {
        let data = Value::Array(vec![
            Value::String("file".into()),
            Value::Binary(Bytes::from_static(&[1, 2])),
        ]);
        let frames = event_frames("/", &data);
        let packets = crate::protocol::socketio::codec::unwrap_frames(&frames).unwrap();
        assert_eq!(
            packets,
            vec![
                (
                    false,
                    &b"451-[\"file\",{\"_placeholder\":true,\"num\":0}]"[..]
                ),
                (true, &[1u8, 2][..]),
            ]
        );
        let plain = event_frames("/chat", &Value::Array(vec![Value::String("e".into())]));
        assert_eq!(plain, ws_text(b"42/chat,[\"e\"]"));
    }
}
