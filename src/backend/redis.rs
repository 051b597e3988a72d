//! Cluster mode: publishing, history, inboxes, receipts, presence and subscriptions
//! through this shard's Redis links. Every name and script comes from `broker::keys`; the
//! links themselves are `broker::client`'s.
//!
//! A publish is one atomic script (number, store in history, PUBLISH, keep in the inbox
//! when nobody received it); every shard of every process then gets it from its own
//! subscription, and the publishing shard asks this process's shards how many local
//! connections it reached. Called through `backend::Backend`, and by `api` for the
//! cluster-only reads (presence).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use redis_protocol::resp2::types::BytesFrame;

use super::{Error, Mark, Published};
use crate::broker::client::{Broker, Heartbeat};
use crate::broker::keys::{self, Keys, SocketIoKeys};
use crate::config::{RedisConfig, IDEMPOTENCY_TTL_S, RECEIPT_RETENTION_S};
use crate::ctx::Ctx;
use crate::envelope::{self, Envelope, PayloadKind, Target, FLAG_CONTROL};
use crate::mesh::{Publish, Replay, ShardMsg, Stored};
use crate::metrics::Metrics;

/// Own messages whose local delivery count is kept until the publishing shard asks for it.
const OWN_DELIVERIES_KEPT: usize = 256;
/// Seconds a publishing shard waits for a subscribed shard to see its own message.
const AWAIT_DELIVERY_S: u32 = 2;
/// Presence changes remembered one by one while Redis cannot be told; past it, every count
/// is written again on recovery.
const PRESENCE_DIRTY_MAX: usize = 65_536;
/// Presence hashes written per script call when counts are written again.
const PRESENCE_SET_CHUNK: usize = 512;
/// Longest a cluster publish waits for this process's shards to report their recipients.
/// Bounded: on an overloaded box a shard may take long to read its subscription, and a
/// publisher kept waiting may time out and publish again. Past the bound, the shards that
/// have not reported count as 0 (the message still reaches their clients).
const AWAIT_LOCAL_DELIVERY_MAX: Duration = Duration::from_secs(1);

pub struct Redis {
    ctx: Rc<Ctx>,
    pub broker: Rc<Broker>,
    pub keys: Keys,
    /// `--socketio-adapter`: socket.io's channel names and this node's uid; None when off.
    pub socketio: Option<SocketIoKeys>,
    /// This process's `Keys::sockets_channel`: every shard subscribes to it for its life.
    sockets_channel: String,
    /// (message id, local recipients) of this process's own messages seen on this shard's
    /// subscription, newest last, until the publishing shard asks.
    own_deliveries: RefCell<VecDeque<(String, u32)>>,
    /// Publishing shards waiting for one of their messages to arrive here.
    awaiting_delivery: RefCell<Vec<(String, oneshot::Sender<u32>, u32)>>,
    /// (channel, member) whose presence delta could not be sent.
    presence_dirty: RefCell<std::collections::HashSet<(String, String)>>,
    /// Set when `presence_dirty` overflowed: write every count again.
    presence_resync_all: Cell<bool>,
    /// The broker's resync generation presence was last written for.
    presence_generation: Cell<u64>,
}

fn unexpected(script: &str, reply: &BytesFrame) -> Error {
    Error::Reply(format!("unexpected reply to the {script}: {reply:?}"))
}

impl Redis {
    pub fn new(ctx: Rc<Ctx>, config: RedisConfig) -> Redis {
        let keys = Keys::new(&config.prefix);
        // Shard 0 keeps the node's heartbeat; presence counters of a node whose heartbeat
        // expired stop counting.
        let heartbeat = (ctx.id == 0).then(|| Heartbeat {
            key: keys.node(ctx.node_id()),
            registry: keys.nodes(),
            node_id: ctx.node_id().to_string(),
            ttl_s: ctx.config.presence_ttl_s,
        });
        let socketio = ctx
            .config
            .socketio
            .adapter
            .as_ref()
            .map(|adapter| SocketIoKeys::new(&adapter.key, &config.prefix, ctx.node_id()));
        let broker = Broker::new(ctx.id, config, heartbeat);
        // Pushes to this process's socket ids, whichever of its shards holds the socket (a
        // polling session handed to another shard keeps its ids): one subscription per
        // shard instead of one per socket.
        let sockets_channel = keys.sockets_channel(ctx.node_tag());
        let mut channels = vec![sockets_channel.clone()];
        let mut patterns = Vec::new();
        if let Some(sio) = &socketio {
            // Every shard reads socket.io's channels itself, like volley's own: a Node
            // server counts each subscriber of a request channel as one server to answer.
            let namespaces = &ctx.config.socketio.namespaces;
            channels.extend(namespaces.iter().map(|(_, nsp)| sio.request(nsp)));
            patterns.extend(namespaces.iter().map(|(_, nsp)| sio.broadcast_pattern(nsp)));
        }
        broker.subscribe_always(channels, patterns);
        Redis {
            sockets_channel,
            broker: Rc::new(broker),
            socketio,
            keys,
            own_deliveries: RefCell::new(VecDeque::new()),
            awaiting_delivery: RefCell::new(Vec::new()),
            presence_dirty: RefCell::new(std::collections::HashSet::new()),
            presence_resync_all: Cell::new(false),
            presence_generation: Cell::new(0),
            ctx,
        }
    }

    /// `redis://host:port/db` as the operator gave it, without the password.
    pub fn display(&self) -> &str {
        &self.broker.config.display
    }

    /// Numbers and publishes through Redis once; every shard of every process (this one
    /// included) gets it from its own subscription. Then waits for this process's shards
    /// to report their local recipients.
    /// `remember`: the id is the publisher's `Idempotency-Key`, kept for
    /// `IDEMPOTENCY_TTL_S` so a retry answers this publish instead of publishing again.
    pub async fn publish(&self, publish: Publish, remember: bool) -> Result<Published, Error> {
        // A shard whose subscriptions are not confirmed would not see what it publishes:
        // say so instead of answering 200 for a message its own clients miss.
        if let Some(why) = self.broker.publish_blocker() {
            return Err(Error::Unavailable(why));
        }
        let config = &self.ctx.config;
        let name = publish.target.to_string();
        // A socket id's room goes on its process's sockets channel (no subscription per
        // socket); its numbering, history and receipts stay the room's own.
        let channel = self.keys.pubsub_channel(&name);
        let seq_key = self.keys.seq(&name);
        let history_key = self.keys.history(&name);
        // Only user channels have an inbox; other channels pass size 0 (and unused keys).
        let (inbox_key, deliveries_key, inbox_size) = match &publish.target {
            Target::User(user) => (
                self.keys.inbox(user),
                self.keys.inbox_deliveries(user),
                config.inbox_size,
            ),
            _ => (history_key.clone(), history_key.clone(), 0),
        };
        let presence_key = self.keys.presence(&name);
        let epoch_key = self.keys.epoch(&name);
        let published_key = self.keys.published(&publish.id);
        let epoch_candidate = self.ctx.new_epoch().to_string();
        // Only ids a publisher chose (Idempotency-Key) are remembered: ours are unique.
        let dedupe_ttl = if remember { IDEMPOTENCY_TTL_S } else { 0 }.to_string();
        let node_prefix = self.keys.node_prefix();
        let history_size = config.history_size.to_string();
        let history_ttl = config.history_ttl_s.to_string();
        let inbox_size = inbox_size.to_string();
        let inbox_ttl = config.inbox_ttl_s.to_string();
        let (wire, seq_at) = envelope::encode(&Envelope {
            origin: self.ctx.node_id().to_string(),
            id: publish.id.clone(),
            target: publish.target.clone(),
            flags: 0,
            kind: publish.kind,
            payload: publish.payload.clone(),
            seq: None,
            epoch: None,
            from: publish.from.clone(),
            event: publish.event.clone(),
        });
        let seq_at = seq_at.to_string();
        let reply = self
            .broker
            .command(&[
                b"EVAL",
                keys::PUBLISH_SCRIPT.as_bytes(),
                b"8",
                seq_key.as_bytes(),
                channel.as_bytes(),
                history_key.as_bytes(),
                inbox_key.as_bytes(),
                deliveries_key.as_bytes(),
                epoch_key.as_bytes(),
                published_key.as_bytes(),
                presence_key.as_bytes(),
                &wire,
                seq_at.as_bytes(),
                history_size.as_bytes(),
                history_ttl.as_bytes(),
                inbox_size.as_bytes(),
                inbox_ttl.as_bytes(),
                epoch_candidate.as_bytes(),
                dedupe_ttl.as_bytes(),
                node_prefix.as_bytes(),
            ])
            .await?;
        let (seq, nodes, epoch, kept) = match &reply {
            BytesFrame::Array(parts) => match parts.as_slice() {
                [BytesFrame::Integer(seq), BytesFrame::Integer(nodes), BytesFrame::Integer(epoch), BytesFrame::Integer(kept)] => {
                    (*seq as u64, *nodes, *epoch as u64, *kept == 1)
                }
                _ => return Err(unexpected("publish script", &reply)),
            },
            _ => return Err(unexpected("publish script", &reply)),
        };
        let duplicate = nodes < 0;
        if kept {
            Metrics::inc(&self.ctx.metrics.inbox_stored_total);
        }
        if let (Some(sio), false) = (&self.socketio, duplicate) {
            super::socketio::mirror(sio, &self.broker, &self.ctx.metrics, &publish);
        }
        let recipients = if nodes > 0 {
            self.await_local_delivery(&publish.id, &name).await
        } else {
            0
        };
        Ok(Published {
            id: publish.id,
            seq,
            recipients,
            nodes: Some(nodes.max(0)),
            epoch: Some(epoch),
            duplicate,
            inbox: kept,
        })
    }

    /// Publishes many messages concurrently (the command link pipelines them); results in
    /// input order.
    pub async fn publish_many(&self, publishes: Vec<Publish>) -> Vec<Result<Published, Error>> {
        let mut pending: Vec<_> = publishes
            .into_iter()
            .map(|publish| Box::pin(self.publish(publish, false)))
            .collect();
        // Every script is on the command link before the first answer is awaited: each
        // publish writes its command on its first poll. One that finished there (the link
        // was down) keeps its answer.
        let mut done: Vec<Option<Result<Published, Error>>> = Vec::with_capacity(pending.len());
        for future in pending.iter_mut() {
            done.push(futures_lite::future::poll_once(future.as_mut()).await);
        }
        let mut out = Vec::with_capacity(pending.len());
        for (future, done) in pending.into_iter().zip(done) {
            out.push(match done {
                Some(result) => result,
                None => future.await,
            });
        }
        out
    }

    /// Publishes a control message (membership) on a user's channel; returns (subscribers
    /// that got it, its id).
    pub async fn publish_control(
        &self,
        user: &str,
        payload: Bytes,
    ) -> Result<(i64, String), Error> {
        let id = self.ctx.next_message_id();
        let (wire, _) = envelope::encode(&Envelope {
            origin: self.ctx.node_id().to_string(),
            id: id.clone(),
            target: Target::User(user.to_string()),
            flags: FLAG_CONTROL,
            kind: PayloadKind::Json,
            payload,
            seq: None,
            epoch: None,
            from: None,
            event: None,
        });
        let channel = self.keys.channel(&format!("user:{user}"));
        match self
            .broker
            .command(&[b"PUBLISH", channel.as_bytes(), &wire])
            .await?
        {
            BytesFrame::Integer(n) => Ok((n, id)),
            other => Err(Error::Reply(format!("unexpected reply {other:?}"))),
        }
    }

    /// Sums, over this process's shards, the local recipients of our own message `id`.
    pub async fn await_local_delivery(&self, id: &str, channel: &str) -> u32 {
        let (reply, answer) = oneshot::channel();
        self.await_delivery(id.to_string(), channel, reply);
        let counts = self
            .ctx
            .peers
            .gather(
                |reply| ShardMsg::AwaitDelivery {
                    id: id.to_string(),
                    channel: channel.to_string(),
                    reply,
                },
                async { answer.await.unwrap_or(0) },
                Some(AWAIT_LOCAL_DELIVERY_MAX),
            )
            .await;
        counts.iter().sum()
    }

    /// Answers how many local connections message `id` (published on `channel`, a volley
    /// channel name such as `room:lobby`) reached here, now or once it arrives.
    pub fn await_delivery(&self, id: String, channel: &str, reply: oneshot::Sender<u32>) {
        let mut own = self.own_deliveries.borrow_mut();
        if let Some(at) = own.iter().position(|(seen, _)| *seen == id) {
            let (_, recipients) = own.remove(at).unwrap_or_default();
            let _ = reply.send(recipients);
            return;
        }
        if self.is_subscribed(channel) {
            let deadline_s = self.ctx.now_s() + AWAIT_DELIVERY_S;
            self.awaiting_delivery
                .borrow_mut()
                .push((id, reply, deadline_s));
        } else {
            let _ = reply.send(0);
        }
    }

    /// One of this process's messages reached `recipients` connections on this shard.
    pub fn record_own_delivery(&self, id: String, recipients: u32) {
        let mut awaiting = self.awaiting_delivery.borrow_mut();
        if let Some(at) = awaiting.iter().position(|(waiting, _, _)| *waiting == id) {
            let (_, reply, _) = awaiting.swap_remove(at);
            let _ = reply.send(recipients);
            return;
        }
        let mut own = self.own_deliveries.borrow_mut();
        if own.len() == OWN_DELIVERIES_KEPT {
            own.pop_front();
        }
        own.push_back((id, recipients));
    }

    /// Answers a publisher of this process waiting for message `id`, if one is (a message
    /// held during a catch-up reaches its recipients late; nothing is kept otherwise).
    pub fn answer_waiter(&self, id: &str, recipients: u32) {
        let mut awaiting = self.awaiting_delivery.borrow_mut();
        if let Some(at) = awaiting.iter().position(|(waiting, _, _)| waiting == id) {
            let (_, reply, _) = awaiting.swap_remove(at);
            let _ = reply.send(recipients);
        }
    }

    /// Drops waits for own messages that did not arrive in time (their waiters count 0).
    pub fn expire_awaiting(&self, now_s: u32) {
        self.awaiting_delivery
            .borrow_mut()
            .retain(|(_, _, deadline_s)| now_s < *deadline_s);
    }

    /// The channel's messages after `since`, and its current seq, in one atomic read.
    pub async fn history(
        &self,
        target: &Target,
        since: u64,
        limit: usize,
    ) -> Result<Replay, Error> {
        let channel = target.to_string();
        let seq_key = self.keys.seq(&channel);
        let history_key = self.keys.history(&channel);
        let epoch_key = self.keys.epoch(&channel);
        let start = format!("{}-0", since.saturating_add(1));
        // One more than asked, to tell a cut replay from a complete one.
        let count = (limit + 1).to_string();
        let reply = self
            .broker
            .command(&[
                b"EVAL",
                keys::HISTORY_SCRIPT.as_bytes(),
                b"3",
                seq_key.as_bytes(),
                history_key.as_bytes(),
                epoch_key.as_bytes(),
                start.as_bytes(),
                count.as_bytes(),
            ])
            .await?;
        let BytesFrame::Array(parts) = &reply else {
            return Err(unexpected("history script", &reply));
        };
        let (Some(BytesFrame::Integer(current)), Some(BytesFrame::Array(entries))) =
            (parts.first(), parts.get(1))
        else {
            return Err(unexpected("history script", &reply));
        };
        let current = *current as u64;
        let epoch = match parts.get(2) {
            Some(BytesFrame::BulkString(e)) => {
                std::str::from_utf8(e).ok().and_then(|e| e.parse().ok())
            }
            _ => None,
        };
        let mut messages: Vec<Stored> = entries
            .iter()
            .filter_map(|entry| match entry {
                BytesFrame::Array(pair) => match pair.get(1) {
                    Some(BytesFrame::Array(fields)) => match fields.get(1) {
                        Some(BytesFrame::BulkString(envelope)) => stored_from_envelope(envelope),
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            })
            .collect();
        let cut = messages.len() > limit;
        messages.truncate(limit);
        let complete =
            since >= current || (!cut && messages.first().is_some_and(|m| m.seq == since + 1));
        Ok(Replay {
            messages,
            current,
            complete,
            epoch,
        })
    }

    /// A user's offline inbox for one more delivery attempt, oldest first.
    pub async fn inbox_take(&self, user: &str) -> Result<Vec<Stored>, Error> {
        let inbox = self.keys.inbox(user);
        let deliveries = self.keys.inbox_deliveries(user);
        let max = self.ctx.config.inbox_deliveries_max.to_string();
        let reply = self
            .broker
            .command(&[
                b"EVAL",
                keys::INBOX_TAKE_SCRIPT.as_bytes(),
                b"2",
                inbox.as_bytes(),
                deliveries.as_bytes(),
                max.as_bytes(),
            ])
            .await?;
        let BytesFrame::Array(parts) = &reply else {
            return Err(unexpected("inbox script", &reply));
        };
        if let Some(BytesFrame::Integer(given_up)) = parts.first() {
            Metrics::add(
                &self.ctx.metrics.inbox_given_up_total,
                (*given_up).max(0) as u64,
            );
        }
        let mut messages: Vec<Stored> = match parts.get(1) {
            Some(BytesFrame::Array(envelopes)) => envelopes
                .iter()
                .filter_map(|e| match e {
                    BytesFrame::BulkString(b) => stored_from_envelope(b),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        messages.sort_by_key(|m| m.seq);
        Ok(messages)
    }

    /// A catch-up after a reconnect delivered these seqs of `user`'s channel to the user's
    /// connections: remove them from the user's inbox (where the publish script kept them
    /// while this node was away from Redis), so the user's next connection does not get them
    /// again. Returns how many were removed.
    pub async fn inbox_delivered(&self, user: &str, seqs: &[u64]) -> Result<u64, Error> {
        let inbox = self.keys.inbox(user);
        let deliveries = self.keys.inbox_deliveries(user);
        let history = self.keys.history(&format!("user:{user}"));
        let seqs: Vec<String> = seqs.iter().map(u64::to_string).collect();
        let mut command: Vec<&[u8]> = vec![
            b"EVAL",
            keys::INBOX_DELIVERED_SCRIPT.as_bytes(),
            b"3",
            inbox.as_bytes(),
            deliveries.as_bytes(),
            history.as_bytes(),
        ];
        command.extend(seqs.iter().map(|s| s.as_bytes()));
        match self.broker.command(&command).await? {
            BytesFrame::Integer(removed) => Ok(removed.max(0) as u64),
            other => Err(unexpected("inbox removal script", &other)),
        }
    }

    /// The user acked `seq`: the inbox forgets it (fire and forget; a lost one means one
    /// more delivery attempt).
    pub fn inbox_ack(&self, user: &str, seq: u64) {
        let inbox = self.keys.inbox(user);
        let deliveries = self.keys.inbox_deliveries(user);
        let seq = seq.to_string();
        self.broker
            .command_detached(&[b"HDEL", inbox.as_bytes(), seq.as_bytes()]);
        self.broker
            .command_detached(&[b"HDEL", deliveries.as_bytes(), seq.as_bytes()]);
    }

    /// Adds to a message's receipt counters, kept for the retention window.
    pub fn receipt_change(&self, id: &str, field: &str, delta: u32) {
        let key = self.keys.receipt(id);
        let delta = delta.to_string();
        let ttl = RECEIPT_RETENTION_S.to_string();
        self.broker.command_detached(&[
            b"HINCRBY",
            key.as_bytes(),
            field.as_bytes(),
            delta.as_bytes(),
        ]);
        self.broker
            .command_detached(&[b"EXPIRE", key.as_bytes(), ttl.as_bytes()]);
    }

    /// (delivered, acked) of a message, summed over every process; zeros when Redis cannot
    /// be asked.
    pub async fn receipt_total(&self, id: &str) -> (u64, u64) {
        let key = self.keys.receipt(id);
        let Ok(BytesFrame::Array(values)) = self
            .broker
            .command(&[b"HMGET", key.as_bytes(), b"delivered", b"acked"])
            .await
        else {
            return (0, 0);
        };
        let number = |f: Option<&BytesFrame>| match f {
            Some(BytesFrame::BulkString(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            _ => 0,
        };
        (number(values.first()), number(values.get(1)))
    }

    /// This shard's field in a presence hash: `node#shard` for users, `node#shard|member`
    /// for rooms. Per node, so a crashed node's entries can be told apart (and dropped) once
    /// its heartbeat key expires; per shard, so each shard can write its own counts again.
    fn presence_field(&self, channel: &str, member: &str) -> String {
        if channel.starts_with("room:") {
            format!("{}#{}|{member}", self.ctx.node_id(), self.ctx.id)
        } else {
            format!("{}#{}", self.ctx.node_id(), self.ctx.id)
        }
    }

    /// A presence counter moved. Fire and forget: when it cannot be sent (link down, Redis
    /// refusing writes), the channel is remembered and its count written again once Redis
    /// takes writes (`resync_presence`).
    pub fn presence_change(&self, channel: &str, member: &str, delta: i64) {
        let key = self.keys.presence(channel);
        let field = self.presence_field(channel, member);
        let delta = delta.to_string();
        let sent = self.broker.command_detached(&[
            b"HINCRBY",
            key.as_bytes(),
            field.as_bytes(),
            delta.as_bytes(),
        ]);
        if !sent || self.broker.refuses_writes() {
            let mut dirty = self.presence_dirty.borrow_mut();
            if dirty.len() < PRESENCE_DIRTY_MAX {
                dirty.insert((channel.to_string(), member.to_string()));
            } else {
                // Too many to track one by one: write everything again.
                self.presence_resync_all.set(true);
            }
        }
    }

    /// Whether Redis may have lost this shard's presence counters since the last look (the
    /// command link came back, or writes work again), so they must be written again.
    pub fn presence_needs_resync(&self) -> bool {
        let generation = self.broker.resync_generation();
        generation != self.presence_generation.get()
            && self.broker.is_up()
            && !self.broker.refuses_writes()
    }

    /// Writes this shard's presence counts as they are: every (channel, member, count) it
    /// holds, plus zeros for what changed while Redis could not be told. Batched, awaited.
    pub async fn resync_presence(&self, counts: Vec<(String, String, u32)>) -> Result<(), Error> {
        let generation = self.broker.resync_generation();
        let all = generation > 1 || self.presence_resync_all.get();
        let dirty: Vec<(String, String)> = self.presence_dirty.borrow_mut().drain().collect();
        let mut writes: std::collections::HashMap<(String, String), u32> =
            std::collections::HashMap::new();
        for (channel, member) in dirty {
            writes.insert((channel, member), 0);
        }
        for (channel, member, count) in counts {
            let key = (channel, member);
            if all || writes.contains_key(&key) {
                writes.insert(key, count);
            }
        }
        let writes: Vec<((String, String), u32)> = writes.into_iter().collect();
        for chunk in writes.chunks(PRESENCE_SET_CHUNK) {
            let mut keys: Vec<String> = Vec::with_capacity(chunk.len());
            let mut args: Vec<String> = Vec::with_capacity(2 * chunk.len());
            for ((channel, member), count) in chunk {
                keys.push(self.keys.presence(channel));
                args.push(self.presence_field(channel, member));
                args.push(count.to_string());
            }
            let numkeys = keys.len().to_string();
            let mut command: Vec<&[u8]> = vec![
                b"EVAL",
                keys::PRESENCE_SET_SCRIPT.as_bytes(),
                numkeys.as_bytes(),
            ];
            command.extend(keys.iter().map(|k| k.as_bytes()));
            command.extend(args.iter().map(|a| a.as_bytes()));
            self.broker.command(&command).await?;
        }
        self.presence_resync_all.set(false);
        self.presence_generation.set(generation);
        Ok(())
    }

    /// Cluster-wide presence of a user (connections, live nodes) or a room (connections,
    /// members), from the counters in Redis, counting only nodes whose heartbeat key is
    /// alive: a node that crashed stops counting within `--presence-ttl-s`, and its stale
    /// counters are removed as they are found.
    pub async fn presence(&self, target: &Target) -> Result<(i64, Vec<String>), Error> {
        let key = self.keys.presence(&target.to_string());
        let BytesFrame::Array(fields) = self.broker.command(&[b"HGETALL", key.as_bytes()]).await?
        else {
            return Ok((0, Vec::new()));
        };
        // (field, node, member or "", count)
        let mut entries: Vec<(String, String, String, i64)> = Vec::new();
        for pair in fields.chunks(2) {
            if let [BytesFrame::BulkString(field), BytesFrame::BulkString(count)] = pair {
                let field = String::from_utf8_lossy(field).into_owned();
                let count: i64 = std::str::from_utf8(count)
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let (node, member) = match field.split_once('|') {
                    Some((node, member)) => (node.to_string(), member.to_string()),
                    None => (field.clone(), String::new()),
                };
                // `node#shard`: the node is what its heartbeat is named after.
                let node = node.split('#').next().unwrap_or_default().to_string();
                entries.push((field, node, member, count));
            }
        }
        let mut nodes: Vec<&str> = entries.iter().map(|(_, n, _, _)| n.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let me = self.ctx.node_id();
        // This node is alive by definition, heartbeat written yet or not.
        let mut live = std::collections::HashSet::from([me.to_string()]);
        let registry = self.keys.nodes();
        for node in nodes.into_iter().filter(|n| *n != me) {
            let node_key = self.keys.node(node);
            let beating = matches!(
                self.broker
                    .command(&[b"EXISTS", node_key.as_bytes()])
                    .await?,
                BytesFrame::Integer(1)
            );
            // Dead only if it was registered (it had beaten) and its heartbeat has expired;
            // a node that has not beaten yet is just starting.
            let registered = matches!(
                self.broker
                    .command(&[b"SISMEMBER", registry.as_bytes(), node.as_bytes()])
                    .await?,
                BytesFrame::Integer(1)
            );
            if beating || !registered {
                live.insert(node.to_string());
            }
        }
        let mut connections = 0;
        let mut names = Vec::new();
        for (field, node, member, count) in &entries {
            if !live.contains(node) {
                self.broker
                    .command_detached(&[b"HDEL", key.as_bytes(), field.as_bytes()]);
                continue;
            }
            if *count <= 0 {
                continue;
            }
            connections += count;
            match target {
                Target::User(_) => names.push(node.clone()),
                _ if !member.is_empty() => names.push(member.clone()),
                _ => {}
            }
        }
        names.sort_unstable();
        names.dedup();
        Ok((connections, names))
    }

    /// A local connection's interest in a volley channel moved.
    pub fn interest(&self, channel: &str, add: bool) {
        let channel = self.keys.pubsub_channel(channel);
        if channel == self.sockets_channel {
            // This process's socket ids: subscribed for the shard's life already.
            return;
        }
        if add {
            self.broker.interest_add(&channel);
        } else {
            self.broker.interest_remove(&channel);
        }
    }

    /// True when Redis confirmed this shard's subscription to a volley channel.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.broker
            .is_subscribed(&self.keys.pubsub_channel(channel))
    }

    /// Waits (bounded by the broker) until this shard's subscriptions to `channels` are
    /// confirmed.
    pub async fn wait_subscribed(&self, channels: &[String]) {
        let names: Vec<String> = channels
            .iter()
            .map(|c| self.keys.pubsub_channel(c))
            .collect();
        self.broker.wait_subscribed(&names).await;
    }

    /// Refreshes the node heartbeat (shard 0); false when it could not be sent.
    pub fn heartbeat(&self) -> bool {
        self.broker.beat()
    }

    /// Where channels are now (their seq and epoch), for Redis channel names this shard
    /// just subscribed to; channels never numbered are at seq 0 with no epoch.
    pub async fn positions(&self, channels: &[Bytes]) -> Result<Vec<Mark>, Error> {
        let mut keys: Vec<String> = Vec::with_capacity(2 * channels.len());
        for channel in channels {
            let name = std::str::from_utf8(channel)
                .ok()
                .and_then(|c| self.keys.channel_of(c))
                .unwrap_or_default();
            keys.push(self.keys.seq(name));
            keys.push(self.keys.epoch(name));
        }
        let mut command: Vec<&[u8]> = vec![b"MGET"];
        command.extend(keys.iter().map(|k| k.as_bytes()));
        let reply = self.broker.command(&command).await?;
        let BytesFrame::Array(values) = &reply else {
            return Err(unexpected("position read", &reply));
        };
        let number = |v: Option<&BytesFrame>| match v {
            Some(BytesFrame::BulkString(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<u64>().ok()),
            _ => None,
        };
        Ok(values
            .chunks(2)
            .map(|pair| Mark {
                seq: number(pair.first()).unwrap_or(0),
                epoch: number(pair.get(1)),
            })
            .collect())
    }

    /// Why the links are not up, in words.
    pub fn problem(&self) -> Option<String> {
        self.broker.problem()
    }
}

fn stored_from_envelope(payload: &Bytes) -> Option<Stored> {
    let envelope = envelope::decode(payload).ok()?;
    Some(Stored {
        seq: envelope.seq?,
        id: envelope.id,
        from: envelope.from,
        event: envelope.event,
        kind: envelope.kind,
        payload: envelope.payload,
    })
}
