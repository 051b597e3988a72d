//! The one place that knows standalone from cluster. Publishing (number, store, deliver,
//! keep in an inbox), history, inboxes, receipts, presence and subscriptions each have a
//! local implementation (`local`: the channel's owning shard numbers and stores, the mesh
//! carries deliveries) and a Redis one (`redis`: one atomic script, pub/sub, hashes).
//!
//! Callers (`services`, `api`, `protocol`) ask for the operation and never check which
//! mode runs. Built by `shard`; holds no connection (local delivery goes through `hub`).

pub mod history;
pub mod local;
pub mod redis;
pub mod socketio;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use futures_channel::oneshot;

use crate::ctx::Ctx;
use crate::envelope::Target;
use crate::hub::Hub;
use crate::mesh::{Publish, Replay, ShardMsg, Stored};

pub use crate::broker::Error;

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
    /// The epoch of the channel's numbering `seq` belongs to; None when unnumbered.
    pub epoch: Option<u64>,
    /// Cluster mode: this id was published before (an `Idempotency-Key` retry); `seq` is
    /// the earlier publish's, and nothing was published again.
    pub duplicate: bool,
    /// A user message no connection received when it was published, kept in the user's
    /// offline inbox. In cluster mode a connection whose server was away from Redis may
    /// still get it from that server's catch-up (which then removes the inbox copy).
    pub inbox: bool,
}

/// Where a channel is: the epoch of its numbering and a seq in it (the last one a shard
/// delivered, or the channel's current one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub epoch: Option<u64>,
    pub seq: u64,
}

/// A history read: (channel, since, limit).
type HistoryRead = (String, u64, usize);
/// A recovery waiting for a history read another recovery started.
type HistoryWaiter = oneshot::Sender<Result<Replay, Error>>;

pub struct Backend {
    ctx: Rc<Ctx>,
    /// Standalone numbering, history and inboxes; in cluster mode it serves `?scope=local`.
    pub local: local::Local,
    /// Cluster mode: this shard's Redis links and what rides on them.
    pub redis: Option<redis::Redis>,
    /// History reads under way, with the recoveries waiting for the same read.
    history_reads: RefCell<HashMap<HistoryRead, Vec<HistoryWaiter>>>,
}

impl Backend {
    pub fn new(ctx: Rc<Ctx>, hub: Rc<Hub>) -> Backend {
        let redis = ctx
            .config
            .redis
            .clone()
            .map(|config| redis::Redis::new(ctx.clone(), config));
        Backend {
            local: local::Local::new(ctx.clone(), hub),
            redis,
            history_reads: RefCell::new(HashMap::new()),
            ctx,
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.redis.is_some()
    }

    /// Publishes a message to its target's channel, standalone or through Redis.
    pub async fn publish(&self, publish: Publish) -> Result<Published, Error> {
        self.publish_keyed(publish, false).await
    }

    /// Publishes a message whose id is the publisher's `Idempotency-Key` when `keyed`: in
    /// cluster mode a retry with the same key within `IDEMPOTENCY_TTL_S` answers the first
    /// publish instead of publishing again.
    pub async fn publish_keyed(&self, publish: Publish, keyed: bool) -> Result<Published, Error> {
        match &self.redis {
            Some(redis) => redis.publish(publish, keyed).await,
            None => self.local.publish(publish, true).await,
        }
    }

    /// Publishes to this process only, skipping Redis (`?scope=local`). In cluster mode the
    /// channel's numbers belong to Redis, so the message is delivered unnumbered (`seq`
    /// null) and not stored: it never reuses or shadows a cluster number.
    pub async fn publish_local(&self, publish: Publish) -> Result<Published, Error> {
        self.local.publish(publish, self.redis.is_none()).await
    }

    /// Publishes many messages (`POST /api/batch`); results in input order.
    pub async fn publish_many(&self, publishes: Vec<Publish>) -> Vec<Result<Published, Error>> {
        match &self.redis {
            Some(redis) => redis.publish_many(publishes).await,
            None => self.local.publish_many(publishes).await,
        }
    }

    /// A channel's history after `since`. Concurrent requests for the same (channel, since,
    /// limit) on this shard share one read: a reconnect storm after a restart asks for the
    /// same history a thousand times.
    pub async fn history(
        &self,
        target: &Target,
        since: u64,
        limit: usize,
    ) -> Result<Replay, Error> {
        let key = (target.to_string(), since, limit);
        let waiting = {
            let mut inflight = self.history_reads.borrow_mut();
            match inflight.get_mut(&key) {
                Some(waiters) => {
                    let (reply, answer) = oneshot::channel();
                    waiters.push(reply);
                    Some(answer)
                }
                None => {
                    inflight.insert(key.clone(), Vec::new());
                    None
                }
            }
        };
        if let Some(answer) = waiting {
            return answer.await.unwrap_or_else(|_| {
                Err(Error::Unavailable("the history read was dropped".into()))
            });
        }
        let result = match &self.redis {
            Some(redis) => redis.history(target, since, limit).await,
            None => self.local.history(target, since, limit).await,
        };
        let waiters = self
            .history_reads
            .borrow_mut()
            .remove(&key)
            .unwrap_or_default();
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
        result
    }

    /// A user's offline inbox for one more delivery attempt, oldest first.
    pub async fn inbox_take(&self, user: &str) -> Result<Vec<Stored>, Error> {
        match &self.redis {
            Some(redis) => redis.inbox_take(user).await,
            None => Ok(self.local.inbox_take(user).await),
        }
    }

    /// The user acked `seq` on their own channel: the inbox forgets it.
    pub fn inbox_ack(&self, user: &str, seq: u64) {
        if self.ctx.config.inbox_size == 0 {
            return;
        }
        match &self.redis {
            Some(redis) => redis.inbox_ack(user, seq),
            None => self.local.inbox_ack(user, seq),
        }
    }

    /// Cluster mode: adds to a message's receipt counters in Redis (standalone, receipts
    /// live only in each shard's hub).
    pub fn receipt_change(&self, id: &str, field: &str, delta: u32) {
        if let Some(redis) = &self.redis {
            redis.receipt_change(id, field, delta);
        }
    }

    /// (delivered, acked) of a message: from Redis in cluster mode, else summed over the
    /// shards' hubs.
    pub async fn receipt_total(&self, id: &str, hub: &Hub) -> (u64, u64) {
        if let Some(redis) = &self.redis {
            return redis.receipt_total(id).await;
        }
        let local = hub.receipt(id);
        let receipts = self
            .ctx
            .peers
            .gather(
                |reply| ShardMsg::Receipt {
                    id: id.to_string(),
                    reply,
                },
                async { (local.delivered, local.acked) },
                None,
            )
            .await;
        receipts.iter().fold((0, 0), |(d, a), (delivered, acked)| {
            (d + *delivered as u64, a + *acked as u64)
        })
    }

    /// Cluster mode: a presence counter moved. Standalone, presence is read from the hubs.
    pub fn presence_change(&self, channel: &str, member: &str, delta: i64) {
        if let Some(redis) = &self.redis {
            redis.presence_change(channel, member, delta);
        }
    }

    /// Cluster mode: a local connection's interest in a channel moved (refcounted
    /// SUBSCRIBE/UNSUBSCRIBE). Standalone, the mesh reaches every shard anyway.
    pub fn interest(&self, channel: &str, add: bool) {
        if let Some(redis) = &self.redis {
            redis.interest(channel, add);
        }
    }

    /// True when messages published on `channel` now reach this shard: always standalone,
    /// once Redis confirmed the subscription in cluster mode.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.redis.as_ref().is_none_or(|r| r.is_subscribed(channel))
    }

    /// Waits (bounded) until this shard's subscriptions to `channels` (volley names such
    /// as `room:lobby`) are confirmed; at once standalone.
    pub async fn wait_subscribed(&self, channels: &[String]) {
        if let Some(redis) = &self.redis {
            redis.wait_subscribed(channels).await;
        }
    }

    /// Once a second: expire what is kept for a while.
    pub fn tick(&self, now_s: u32) {
        if let Some(redis) = &self.redis {
            redis.expire_awaiting(now_s);
        }
    }

    /// Every few seconds: expire history and inboxes kept on this shard.
    pub fn expire(&self, now_s: u32) {
        self.local.expire(now_s);
    }

    /// Why the cluster links are not up, in words; None when they are (or standalone).
    pub fn problem(&self) -> Option<String> {
        self.redis.as_ref().and_then(|r| r.problem())
    }
}
