//! Publish -> one encoded frame -> every recipient's queue. Owns routing, never does I/O:
//! it only pushes shared `Bytes` into connection queues (through `Shard::deliver_local`) and
//! hands the same frame to other shards through the mesh.
//!
//! Called by `api` for `POST /api/broadcast`. Users and rooms (a later issue) add targets
//! here, beside broadcast, without touching `conn`.

use std::rc::Rc;

use bytes::Bytes;
use futures_channel::oneshot;

use crate::broker;
use crate::envelope::{self, Envelope, PayloadKind, Target};
use crate::mesh::ShardMsg;
use crate::shard::Shard;
use crate::ws::frame::{self, OpCode};
use redis_protocol::resp2::types::BytesFrame;

/// The frame for a published body: text when it is valid UTF-8 (RFC 6455 §5.6 requires
/// text frames to be UTF-8), binary otherwise. Encoded once for every recipient everywhere.
pub fn encode_message(body: &[u8]) -> Bytes {
    let opcode = if std::str::from_utf8(body).is_ok() {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    frame::encode(opcode, body)
}

/// Delivers `body` to every connected client of this process; returns how many
/// connections it was queued to, summed over shards.
pub async fn broadcast(shard: &Rc<Shard>, body: &[u8]) -> u32 {
    deliver_everywhere(shard, encode_message(body)).await
}

/// Hands `frame` to every other shard first (so they work in parallel with us), then
/// queues it locally, then adds up the counts the others report.
pub async fn deliver_everywhere(shard: &Rc<Shard>, frame: Bytes) -> u32 {
    let mut pending = Vec::with_capacity(shard.shard_count().saturating_sub(1));
    for peer in (0..shard.shard_count()).filter(|&peer| peer != shard.id) {
        let (done, answer) = oneshot::channel();
        let msg = ShardMsg::Broadcast {
            frame: frame.clone(),
            done,
        };
        // A peer that is shutting down has no clients to deliver to.
        if shard.send_to(peer, msg).await.is_ok() {
            pending.push(answer);
        }
    }
    let mut recipients = shard.deliver_local(&frame);
    for answer in pending {
        recipients += answer.await.unwrap_or(0);
    }
    recipients
}

/// What a cluster publish achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message id, unique in the cluster.
    pub id: String,
    /// Connections of this process the message was queued to.
    pub recipients: u32,
    /// Subscribers Redis handed the message to: one per shard, in any process, that has at
    /// least one client.
    pub nodes: i64,
}

/// Cluster mode: publishes `body` to every client of every process through Redis, once.
/// Every shard (this one included) gets it from its own subscription and fans out locally,
/// so all processes see messages in the same order. Then waits for this process's shards
/// to report their local recipients.
pub async fn publish_cluster(
    shard: &Rc<Shard>,
    broker: &broker::Broker,
    body: &[u8],
) -> Result<Published, broker::Error> {
    let kind = if std::str::from_utf8(body).is_ok() {
        PayloadKind::Text
    } else {
        PayloadKind::Binary
    };
    let id = shard.next_message_id();
    let wire = envelope::encode(&Envelope {
        origin: shard.node_id().to_string(),
        id: id.clone(),
        target: Target::All,
        flags: 0,
        kind,
        payload: Bytes::copy_from_slice(body),
    });
    let reply = broker
        .command(&[b"PUBLISH", shard.all_channel().as_bytes(), &wire])
        .await?;
    let nodes = match reply {
        BytesFrame::Integer(n) => n,
        other => {
            return Err(broker::Error::Reply(format!(
                "unexpected reply to PUBLISH: {other:?}"
            )))
        }
    };
    let recipients = if nodes > 0 {
        await_local_delivery(shard, &id).await
    } else {
        0
    };
    Ok(Published {
        id,
        recipients,
        nodes,
    })
}

/// Sums, over this process's shards, the local recipients of our own message `id`.
async fn await_local_delivery(shard: &Rc<Shard>, id: &str) -> u32 {
    let mut pending = Vec::with_capacity(shard.shard_count());
    for peer in (0..shard.shard_count()).filter(|&peer| peer != shard.id) {
        let (reply, answer) = oneshot::channel();
        let msg = ShardMsg::AwaitDelivery {
            id: id.to_string(),
            reply,
        };
        if shard.send_to(peer, msg).await.is_ok() {
            pending.push(answer);
        }
    }
    let (reply, answer) = oneshot::channel();
    shard.await_delivery(id.to_string(), reply);
    pending.push(answer);
    let mut recipients = 0;
    for answer in pending {
        recipients += answer.await.unwrap_or(0);
    }
    recipients
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_bodies_become_text_frames_and_others_binary() {
        assert_eq!(encode_message(b"hi")[0], 0x81);
        assert_eq!(encode_message(&[0xff, 0xfe])[0], 0x82);
        assert_eq!(&encode_message(b"hi")[2..], b"hi");
    }
}
