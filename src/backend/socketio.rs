//! `--socketio-adapter`, the publishing half (issue 13): a volley broadcast or room push,
//! once published through volley's own channel, is written again in
//! `@socket.io/redis-adapter` v8's format on socket.io's channel, so Node socket.io servers
//! on that Redis deliver it to their clients as the publish's event (`?event=`, by default
//! `message`) with the payload as its one argument, on the namespace `/`.
//!
//! Not written: user pushes (Node servers know no volley users), `?scope=local` publishes
//! (this process only), and duplicates of an `Idempotency-Key` retry. The uid is this
//! node's (`SocketIoKeys::uid`): every volley process drops what a volley process wrote,
//! since its clients already had it through volley's channel; Node servers drop only their
//! own uid. The reading half is `services::sio_adapter`. Called by `backend::redis`.

use crate::broker::client::Broker;
use crate::broker::keys::SocketIoKeys;
use crate::envelope::{PayloadKind, Target};
use crate::mesh::Publish;
use crate::metrics::Metrics;
use crate::protocol::socketio::adapter::{self, Outgoing, Payload};

/// The event name Node clients get for a push published without `?event=`, as volley's own
/// socket.io clients do (docs/SOCKETIO.md).
pub const EVENT: &str = "message";
/// The namespace volley's pushes are written on: a volley push reaches every connection
/// whatever it connected, and Node clients almost all connect `/`.
pub const NAMESPACE: &str = "/";

/// Writes `publish` on socket.io's channel (fire and forget, after volley's own publish on
/// the same command link, so the order of a shard's publishes holds); false when it is not
/// for socket.io or could not be queued.
pub fn mirror(keys: &SocketIoKeys, broker: &Broker, metrics: &Metrics, publish: &Publish) -> bool {
    let room;
    let rooms: &[&str] = match &publish.target {
        Target::All => &[],
        Target::Room(name) => {
            room = [name.as_str()];
            &room
        }
        Target::User(_) => return false,
    };
    let payload = match publish.kind {
        // Checked JSON at publish; text is UTF-8 by its kind.
        PayloadKind::Json => match std::str::from_utf8(&publish.payload) {
            Ok(text) => Payload::Json(text),
            Err(_) => return false,
        },
        PayloadKind::Text => Payload::Text(std::str::from_utf8(&publish.payload).unwrap_or("")),
        PayloadKind::Binary => Payload::Binary(&publish.payload),
    };
    let Ok(bytes) = adapter::encode_broadcast(&Outgoing {
        uid: keys.uid(),
        nsp: NAMESPACE,
        event: publish.event.as_deref().unwrap_or(EVENT),
        payload,
        rooms,
        except: &[],
    }) else {
        return false;
    };
    let channel = keys.broadcast(NAMESPACE, rooms);
    let queued = broker.command_detached(&[b"PUBLISH", channel.as_bytes(), &bytes]);
    if queued {
        Metrics::inc(&metrics.socketio_adapter_published_total);
    }
    queued
}
