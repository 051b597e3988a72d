//! Publish -> sequence number -> one encoded frame per codec per shard -> every recipient's
//! queue. Owns routing, never does I/O: it only pushes shared `Bytes` into connection
//! queues (through `Shard::deliver`) and hands deliveries to other shards or to Redis.
//!
//! Sequencing (docs/API.md): every channel (`all`, `user:<id>`, `room:<name>`) numbers its
//! messages 1, 2, 3... Standalone, the channel's owning shard (a hash of its name) assigns
//! the number and forwards the delivery to every shard in that order, so every shard sees a
//! channel's messages in sequence. In cluster mode a script in Redis does INCR and PUBLISH
//! in one step, so the number and the order on the channel agree across processes.
//!
//! Called by `api` (HTTP publishes) and `protocol` (client publishes).

use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;
use redis_protocol::resp2::types::BytesFrame;

use crate::broker;
use crate::envelope::{self, Envelope, PayloadKind, Target};
use crate::mesh::{Delivery, Publish, ShardMsg, Stored};
use crate::metrics::Metrics;
use crate::protocol::native::{self, Payload};
use crate::protocol::Codec;
use crate::shard::Shard;
use crate::ws::frame::{self, OpCode};

/// What a published body is: a JSON document, other UTF-8 text, or bytes.
pub fn classify(body: &[u8]) -> PayloadKind {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        PayloadKind::Json
    } else if std::str::from_utf8(body).is_ok() {
        PayloadKind::Text
    } else {
        PayloadKind::Binary
    }
}

/// The raw-protocol frame of a payload: text (RFC 6455 §5.6 requires UTF-8) or binary.
pub fn encode_message(body: &[u8]) -> Bytes {
    let opcode = if std::str::from_utf8(body).is_ok() {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    frame::encode(opcode, body)
}

/// The frames of one delivery on one shard, each encoded at most once and only if some
/// recipient speaks that codec.
pub struct Frames<'a> {
    delivery: &'a Delivery,
    native: Option<Bytes>,
    raw: Option<Bytes>,
}

impl<'a> Frames<'a> {
    pub fn new(delivery: &'a Delivery) -> Frames<'a> {
        Frames {
            delivery,
            native: None,
            raw: None,
        }
    }

    pub fn for_codec(&mut self, codec: Codec) -> Bytes {
        let publish = &self.delivery.publish;
        match codec {
            Codec::Raw => self
                .raw
                .get_or_insert_with(|| match publish.kind {
                    PayloadKind::Binary => frame::encode(OpCode::Binary, &publish.payload),
                    PayloadKind::Text | PayloadKind::Json => {
                        frame::encode(OpCode::Text, &publish.payload)
                    }
                })
                .clone(),
            Codec::Native => self
                .native
                .get_or_insert_with(|| {
                    let payload = match publish.kind {
                        // Both were checked to be UTF-8 (and JSON) when published.
                        PayloadKind::Json => {
                            Payload::Json(std::str::from_utf8(&publish.payload).unwrap_or("null"))
                        }
                        PayloadKind::Text => {
                            Payload::Text(std::str::from_utf8(&publish.payload).unwrap_or(""))
                        }
                        PayloadKind::Binary => Payload::Binary(&publish.payload),
                    };
                    let json = native::message_json(
                        &publish.target.to_string(),
                        self.delivery.seq,
                        &publish.id,
                        publish.from.as_deref(),
                        payload,
                    );
                    frame::encode(OpCode::Text, &json)
                })
                .clone(),
        }
    }
}

/// What a publish achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message id, unique in the cluster.
    pub id: String,
    /// The message's sequence number in its channel.
    pub seq: u64,
    /// Connections of this process the message was queued to.
    pub recipients: u32,
    /// Cluster mode: subscribers Redis handed the message to (one per shard, in any process,
    /// with a recipient); None standalone.
    pub nodes: Option<i64>,
}

/// Publishes a message to its target's channel, standalone or through Redis.
pub async fn publish(shard: &Rc<Shard>, publish: Publish) -> Result<Published, broker::Error> {
    match &shard.broker {
        Some(broker) => publish_cluster(shard, broker, publish).await,
        None => publish_standalone(shard, publish).await,
    }
}

/// Publishes to this process only, skipping Redis (`?scope=local`): sequenced by the
/// channel's owning shard like a standalone publish.
pub async fn publish_local(
    shard: &Rc<Shard>,
    publish: Publish,
) -> Result<Published, broker::Error> {
    publish_standalone(shard, publish).await
}

/// The shard that numbers a channel's messages in standalone mode.
pub fn owner_shard(target: &Target, shards: usize) -> usize {
    // Hashes the enum itself: no channel-name string is built per publish.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    target.hash(&mut hasher);
    (hasher.finish() % shards as u64) as usize
}

async fn publish_standalone(
    shard: &Rc<Shard>,
    publish: Publish,
) -> Result<Published, broker::Error> {
    let id = publish.id.clone();
    let owner = owner_shard(&publish.target, shard.shard_count());
    let numbered = if owner == shard.id {
        sequence_and_deliver(shard, vec![publish]).await
    } else {
        let (reply, answer) = oneshot::channel();
        let msg = ShardMsg::Sequence {
            publishes: vec![publish],
            reply,
        };
        if shard.send_to(owner, msg).await.is_err() {
            return Err(broker::Error::Unavailable(
                "the channel's shard is shutting down".into(),
            ));
        }
        answer.await.map_err(|_| {
            broker::Error::Unavailable("the channel's shard is shutting down".into())
        })?
    };
    let (seq, recipients) = numbered.first().copied().unwrap_or_default();
    Ok(Published {
        id,
        seq,
        recipients,
        nodes: None,
    })
}

/// On the owning shard: number the messages and deliver them everywhere, in number
/// order. A batch travels as one mesh message per peer shard, not one per message.
/// Returns (seq, recipients in the process) per message, in input order.
pub async fn sequence_and_deliver(shard: &Rc<Shard>, publishes: Vec<Publish>) -> Vec<(u64, u32)> {
    // Held from numbering until every shard has the deliveries queued, so deliveries enter
    // the (FIFO) mesh channels in sequence order even when a channel is full.
    let permit = shard.sequencer().acquire_permit(1).await;
    let now_s = shard.now();
    let mut deliveries = Vec::with_capacity(publishes.len());
    for publish in publishes {
        let seq = shard.next_seq(&publish.target);
        let stored = Stored {
            seq,
            id: publish.id.clone(),
            from: publish.from.clone(),
            kind: publish.kind,
            payload: publish.payload.clone(),
        };
        // Into the history before anyone can see it live: a recovering client that asks
        // for history finds every message whose live copy it might have been held back from.
        shard
            .history
            .borrow_mut()
            .push(&publish.target.to_string(), stored, now_s);
        deliveries.push(Arc::new(Delivery {
            publish,
            seq: Some(seq),
        }));
    }
    let mut pending = Vec::with_capacity(shard.shard_count().saturating_sub(1));
    for peer in (0..shard.shard_count()).filter(|&peer| peer != shard.id) {
        let (done, answer) = oneshot::channel();
        let msg = ShardMsg::Deliver {
            deliveries: deliveries.clone(),
            done,
        };
        // A peer that is shutting down has no clients to deliver to.
        if shard.send_to(peer, msg).await.is_ok() {
            pending.push(answer);
        }
    }
    let mut recipients: Vec<u32> = deliveries.iter().map(|d| shard.deliver(d)).collect();
    drop(permit);
    for answer in pending {
        if let Ok(counts) = answer.await {
            for (total, count) in recipients.iter_mut().zip(counts) {
                *total += count;
            }
        }
    }
    let mut out = Vec::with_capacity(deliveries.len());
    for (delivery, recipients) in deliveries.iter().zip(recipients) {
        let seq = delivery.seq.unwrap_or(0);
        // Nobody anywhere holds this user: keep it for their next connection.
        if let (Target::User(user), 0) = (&delivery.publish.target, recipients) {
            if shard.config.inbox_size > 0 {
                let stored = Stored {
                    seq,
                    id: delivery.publish.id.clone(),
                    from: delivery.publish.from.clone(),
                    kind: delivery.publish.kind,
                    payload: delivery.publish.payload.clone(),
                };
                shard.inboxes.borrow_mut().push(user, stored, now_s);
                Metrics::inc(&shard.metrics.inbox_stored_total);
            }
        }
        out.push((seq, recipients));
    }
    out
}

/// Publishes many messages (`POST /api/batch`). Standalone, messages are grouped by their
/// channel's owning shard and each group is numbered and delivered as one batch; in cluster
/// mode they go to Redis concurrently (the command link pipelines them). Results are in
/// input order.
pub async fn publish_many(
    shard: &Rc<Shard>,
    publishes: Vec<Publish>,
) -> Vec<Result<Published, broker::Error>> {
    if shard.broker.is_some() {
        let tasks: Vec<_> = publishes
            .into_iter()
            .map(|message| {
                let shard = shard.clone();
                glommio::spawn_local(async move { publish(&shard, message).await })
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            out.push(task.await);
        }
        return out;
    }
    let count = publishes.len();
    let mut groups: Vec<Vec<(usize, Publish)>> =
        (0..shard.shard_count()).map(|_| Vec::new()).collect();
    for (at, publish) in publishes.into_iter().enumerate() {
        groups[owner_shard(&publish.target, shard.shard_count())].push((at, publish));
    }
    let mut out: Vec<Option<Result<Published, broker::Error>>> = (0..count).map(|_| None).collect();
    for (owner, group) in groups.into_iter().enumerate() {
        for chunk in chunks(group, BATCH_CHUNK) {
            let (slots, publishes): (Vec<usize>, Vec<Publish>) = chunk.into_iter().unzip();
            let ids: Vec<String> = publishes.iter().map(|p| p.id.clone()).collect();
            let numbered = if owner == shard.id {
                Ok(sequence_and_deliver(shard, publishes).await)
            } else {
                let (reply, answer) = oneshot::channel();
                match shard
                    .send_to(owner, ShardMsg::Sequence { publishes, reply })
                    .await
                {
                    Ok(()) => answer.await.map_err(|_| ()),
                    Err(_) => Err(()),
                }
            };
            for (i, (slot, id)) in slots.into_iter().zip(ids).enumerate() {
                out[slot] = Some(match &numbered {
                    Ok(results) => {
                        let (seq, recipients) = results.get(i).copied().unwrap_or_default();
                        Ok(Published {
                            id,
                            seq,
                            recipients,
                            nodes: None,
                        })
                    }
                    Err(()) => Err(broker::Error::Unavailable(
                        "the channel's shard is shutting down".into(),
                    )),
                });
            }
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(broker::Error::Unavailable("not published".into()))))
        .collect()
}

/// Messages per mesh message when a batch is numbered: bounds how long one batch keeps a
/// shard busy before other work gets a turn.
const BATCH_CHUNK: usize = 512;

fn chunks<T>(items: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let mut out = Vec::with_capacity(items.len().div_ceil(size));
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        out.push(items.by_ref().take(size).collect());
    }
    out
}

/// The Lua script that numbers, stores and publishes in one step: INCR the channel's
/// counter, write the number into the envelope's fixed 8-byte `seq` slot, append it to the
/// channel's history stream (entry id `<seq>-0`, trimmed to the history size), PUBLISH,
/// and, when nobody received it on a user channel, keep it in the user's inbox. Redis runs
/// scripts atomically, so sequence order is history order is publish order everywhere.
///
/// KEYS: seq, channel, history, inbox, inbox deliveries.
/// ARGV: envelope, seq offset, history size, history ttl, inbox size, inbox ttl.
const PUBLISH_SCRIPT: &str = r#"
local seq = redis.call('INCR', KEYS[1])
local at = tonumber(ARGV[2])
local hi = math.floor(seq / 4294967296)
local lo = seq % 4294967296
local envelope = string.sub(ARGV[1], 1, at) .. struct.pack('>I4I4', hi, lo) .. string.sub(ARGV[1], at + 9)
local history_size = tonumber(ARGV[3])
if history_size > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', history_size, string.format('%d-0', seq), 'e', envelope)
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
local receivers = redis.call('PUBLISH', KEYS[2], envelope)
local inbox_size = tonumber(ARGV[5])
if receivers == 0 and inbox_size > 0 then
  redis.call('HSET', KEYS[4], seq, envelope)
  if redis.call('HLEN', KEYS[4]) > inbox_size then
    local kept = redis.call('HKEYS', KEYS[4])
    table.sort(kept, function(a, b) return tonumber(a) < tonumber(b) end)
    for i = 1, #kept - inbox_size do
      redis.call('HDEL', KEYS[4], kept[i])
      redis.call('HDEL', KEYS[5], kept[i])
    end
  end
  redis.call('EXPIRE', KEYS[4], ARGV[6])
  redis.call('EXPIRE', KEYS[5], ARGV[6])
end
return {seq, receivers}
"#;

/// Cluster mode: numbers and publishes through Redis once; every shard of every process
/// (this one included) gets it from its own subscription. Then waits for this process's
/// shards to report their local recipients.
async fn publish_cluster(
    shard: &Rc<Shard>,
    broker: &broker::Broker,
    publish: Publish,
) -> Result<Published, broker::Error> {
    let name = publish.target.to_string();
    let channel = broker.channel(&name);
    let seq_key = broker.channel(&format!("seq:{name}"));
    let history_key = broker.channel(&format!("history:{name}"));
    // Only user channels have an inbox; other channels pass size 0 (and unused keys).
    let (inbox_key, deliveries_key, inbox_size) = match &publish.target {
        Target::User(user) => (
            broker.channel(&format!("inbox:{user}")),
            broker.channel(&format!("inbox-deliveries:{user}")),
            shard.config.inbox_size,
        ),
        _ => (history_key.clone(), history_key.clone(), 0),
    };
    let history_size = shard.config.history_size.to_string();
    let history_ttl = shard.config.history_ttl_s.to_string();
    let inbox_size = inbox_size.to_string();
    let inbox_ttl = shard.config.inbox_ttl_s.to_string();
    let (wire, seq_at) = envelope::encode(&Envelope {
        origin: shard.node_id().to_string(),
        id: publish.id.clone(),
        target: publish.target.clone(),
        flags: 0,
        kind: publish.kind,
        payload: publish.payload.clone(),
        seq: None,
        from: publish.from.clone(),
    });
    let seq_at = seq_at.to_string();
    let reply = broker
        .command(&[
            b"EVAL",
            PUBLISH_SCRIPT.as_bytes(),
            b"5",
            seq_key.as_bytes(),
            channel.as_bytes(),
            history_key.as_bytes(),
            inbox_key.as_bytes(),
            deliveries_key.as_bytes(),
            &wire,
            seq_at.as_bytes(),
            history_size.as_bytes(),
            history_ttl.as_bytes(),
            inbox_size.as_bytes(),
            inbox_ttl.as_bytes(),
        ])
        .await?;
    let (seq, nodes) = match &reply {
        BytesFrame::Array(parts) => match parts.as_slice() {
            [BytesFrame::Integer(seq), BytesFrame::Integer(nodes)] => (*seq as u64, *nodes),
            _ => {
                return Err(broker::Error::Reply(format!(
                    "unexpected reply to the publish script: {reply:?}"
                )))
            }
        },
        _ => {
            return Err(broker::Error::Reply(format!(
                "unexpected reply to the publish script: {reply:?}"
            )))
        }
    };
    let recipients = if nodes > 0 {
        await_local_delivery(shard, &publish.id, &publish.target.to_string()).await
    } else {
        0
    };
    Ok(Published {
        id: publish.id,
        seq,
        recipients,
        nodes: Some(nodes),
    })
}

/// Sums, over this process's shards, the local recipients of our own message `id`.
pub async fn await_local_delivery(shard: &Rc<Shard>, id: &str, channel: &str) -> u32 {
    let mut pending = Vec::with_capacity(shard.shard_count());
    for peer in (0..shard.shard_count()).filter(|&peer| peer != shard.id) {
        let (reply, answer) = oneshot::channel();
        let msg = ShardMsg::AwaitDelivery {
            id: id.to_string(),
            channel: channel.to_string(),
            reply,
        };
        if shard.send_to(peer, msg).await.is_ok() {
            pending.push(answer);
        }
    }
    let (reply, answer) = oneshot::channel();
    shard.await_delivery(id.to_string(), channel, reply);
    pending.push(answer);
    // Bounded: on an overloaded box a shard may take long to read its subscription, and a
    // publisher kept waiting may time out and publish again. Past the bound, the shards
    // that have not reported count as 0 (the message still reaches their clients).
    let deadline = std::time::Instant::now() + AWAIT_LOCAL_DELIVERY_MAX;
    let mut recipients = 0;
    for answer in pending {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let counted = async { answer.await.unwrap_or(0) };
        let late = async {
            glommio::timer::sleep(left).await;
            0
        };
        recipients += futures_lite::future::or(counted, late).await;
    }
    recipients
}

/// Longest a cluster publish waits for this process's shards to report their recipients.
const AWAIT_LOCAL_DELIVERY_MAX: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_bodies_become_text_frames_and_others_binary() {
        assert_eq!(encode_message(b"hi")[0], 0x81);
        assert_eq!(encode_message(&[0xff, 0xfe])[0], 0x82);
        assert_eq!(&encode_message(b"hi")[2..], b"hi");
    }

    #[test]
    fn payloads_are_classified_once() {
        assert_eq!(classify(br#"{"a":[1,2]}"#), PayloadKind::Json);
        assert_eq!(classify(b"42"), PayloadKind::Json);
        assert_eq!(classify(b"hello"), PayloadKind::Text);
        assert_eq!(classify(&[0xff]), PayloadKind::Binary);
    }

    #[test]
    fn channel_owners_are_spread_and_stable() {
        let owners: std::collections::HashSet<usize> = (0..64)
            .map(|i| owner_shard(&Target::User(i.to_string()), 4))
            .collect();
        assert!(owners.len() > 1);
        assert_eq!(owner_shard(&Target::All, 4), owner_shard(&Target::All, 4));
    }

    #[test]
    fn frames_are_encoded_once_per_codec() {
        let delivery = Delivery {
            publish: Publish {
                target: Target::Room("lobby".into()),
                id: "n-0-1".into(),
                from: Some("user:7".into()),
                kind: PayloadKind::Json,
                payload: Bytes::from_static(br#"{"hi":1}"#),
            },
            seq: Some(3),
        };
        let mut frames = Frames::new(&delivery);
        let a = frames.for_codec(Codec::Native);
        let b = frames.for_codec(Codec::Native);
        assert_eq!(a.as_ptr(), b.as_ptr(), "shared, not re-encoded");
        let raw = frames.for_codec(Codec::Raw);
        assert_eq!(&raw[2..], br#"{"hi":1}"#);
        let json: serde_json::Value = serde_json::from_slice(&a[2..]).unwrap();
        assert_eq!(json["channel"], "room:lobby");
        assert_eq!(json["seq"], 3);
        assert_eq!(json["from"], "user:7");
        assert_eq!(json["data"]["hi"], 1);
    }
}
