//! Standalone publishing, history and inboxes: every channel (`all`, `user:<id>`,
//! `room:<name>`) is owned by one shard of this process (a hash of its name). The owner
//! numbers the channel's messages 1, 2, 3..., stores them in its history, forwards each
//! delivery to every shard in that order, and keeps user messages nobody received in the
//! user's inbox. In cluster mode it serves `?scope=local` publishes.
//!
//! Called through `backend::Backend`; the shard's mesh loop calls `sequence_and_deliver`,
//! `history_since`, `inbox_take_owned` and `inbox_ack_owned` on the owning shard.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;

use futures_channel::oneshot;

use super::history::{History, Inboxes};
use super::{Error, Published};
use crate::ctx::Ctx;
use crate::envelope::Target;
use crate::hub::Hub;
use crate::mesh::{Delivery, Publish, Replay, ShardMsg, Stored};
use crate::metrics::Metrics;

/// Messages per mesh message when a batch is numbered: bounds how long one batch keeps a
/// shard busy before other work gets a turn.
const BATCH_CHUNK: usize = 512;

pub struct Local {
    ctx: Rc<Ctx>,
    hub: Rc<Hub>,
    /// The last sequence number of each channel this shard owns.
    seqs: RefCell<HashMap<Target, u64>>,
    /// Held while numbering a message and handing it to every shard, so deliveries leave
    /// in number order.
    sequencer: glommio::sync::Semaphore,
    /// History of the channels this shard owns.
    history: RefCell<History>,
    /// Offline inboxes of the users whose channel this shard owns.
    inboxes: RefCell<Inboxes>,
}

/// The shard that numbers a channel's messages in standalone mode.
pub fn owner_shard(target: &Target, shards: usize) -> usize {
    // Hashes the enum itself: no channel-name string is built per publish.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    target.hash(&mut hasher);
    (hasher.finish() % shards as u64) as usize
}

fn shutting_down() -> Error {
    Error::Unavailable("the channel's shard is shutting down".into())
}

impl Local {
    pub fn new(ctx: Rc<Ctx>, hub: Rc<Hub>) -> Local {
        let config = &ctx.config;
        Local {
            seqs: RefCell::new(HashMap::new()),
            sequencer: glommio::sync::Semaphore::new(1),
            history: RefCell::new(History::new(config.history_size, config.history_ttl_s)),
            inboxes: RefCell::new(Inboxes::new(
                config.inbox_size,
                config.inbox_ttl_s,
                config.inbox_deliveries_max,
            )),
            hub,
            ctx,
        }
    }

    /// Whether a numbered message to `target` nobody received goes to an inbox (as
    /// `sequence_and_deliver` decides).
    fn keeps_inbox(&self, target: &Target) -> bool {
        matches!(target, Target::User(_)) && self.ctx.config.inbox_size > 0
    }

    fn owner(&self, target: &Target) -> usize {
        owner_shard(target, self.ctx.shard_count())
    }

    /// Numbers a message on its channel's owning shard and delivers it to every shard.
    /// `numbered: false` (a `?scope=local` publish in cluster mode, where the channel's
    /// numbers belong to Redis) delivers it in the same order, unnumbered and unstored.
    pub async fn publish(&self, publish: Publish, numbered: bool) -> Result<Published, Error> {
        let id = publish.id.clone();
        let keeps_inbox = numbered && self.keeps_inbox(&publish.target);
        let owner = self.owner(&publish.target);
        let numbered_results = if owner == self.ctx.id {
            self.sequence_and_deliver(vec![publish], numbered).await
        } else {
            let (reply, answer) = oneshot::channel();
            let msg = ShardMsg::Sequence {
                publishes: vec![publish],
                numbered,
                reply,
            };
            if self.ctx.peers.send_to(owner, msg).await.is_err() {
                return Err(shutting_down());
            }
            answer.await.map_err(|_| shutting_down())?
        };
        let (seq, recipients) = numbered_results.first().copied().unwrap_or_default();
        Ok(Published {
            id,
            seq,
            recipients,
            nodes: None,
            epoch: numbered.then_some(self.ctx.shared.epoch),
            duplicate: false,
            inbox: keeps_inbox && recipients == 0,
        })
    }

    /// The next sequence number of a channel this shard owns.
    fn next_seq(&self, target: &Target) -> u64 {
        let mut seqs = self.seqs.borrow_mut();
        // The common case, a channel numbered before, allocates nothing.
        if let Some(seq) = seqs.get_mut(target) {
            *seq += 1;
            return *seq;
        }
        let seq = seqs.entry(target.clone()).or_insert(0);
        *seq += 1;
        *seq
    }

    /// On the owning shard: number the messages and deliver them everywhere, in number
    /// order. A batch travels as one mesh message per peer shard, not one per message.
    /// Returns (seq, recipients in the process) per message, in input order; seq is 0 for
    /// unnumbered messages.
    pub async fn sequence_and_deliver(
        &self,
        publishes: Vec<Publish>,
        numbered: bool,
    ) -> Vec<(u64, u32)> {
        // Held from numbering until every shard has the deliveries queued, so deliveries
        // enter the (FIFO) mesh channels in sequence order even when a channel is full.
        let permit = self.sequencer.acquire_permit(1).await;
        let now_s = self.ctx.now_s();
        let mut deliveries = Vec::with_capacity(publishes.len());
        let epoch = numbered.then_some(self.ctx.shared.epoch);
        for publish in publishes {
            let seq = numbered.then(|| self.next_seq(&publish.target));
            if let Some(seq) = seq {
                // Into the history before anyone can see it live: a recovering client that
                // asks for history finds every message whose live copy it might have been
                // held back from.
                self.history.borrow_mut().push(
                    &publish.target.to_string(),
                    stored(&publish, seq),
                    now_s,
                );
            }
            deliveries.push(Arc::new(Delivery {
                publish,
                seq,
                epoch,
            }));
        }
        let mut pending = Vec::with_capacity(self.ctx.shard_count().saturating_sub(1));
        for peer in self.ctx.peers.others() {
            let (done, answer) = oneshot::channel();
            let msg = ShardMsg::Deliver {
                deliveries: deliveries.clone(),
                done,
            };
            // A peer that is shutting down has no clients to deliver to.
            if self.ctx.peers.send_to(peer, msg).await.is_ok() {
                pending.push(answer);
            }
        }
        let mut recipients: Vec<u32> = deliveries.iter().map(|d| self.hub.deliver(d)).collect();
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
            if let (Target::User(user), 0, true) = (&delivery.publish.target, recipients, numbered)
            {
                if self.ctx.config.inbox_size > 0 {
                    self.inboxes
                        .borrow_mut()
                        .push(user, stored(&delivery.publish, seq), now_s);
                    Metrics::inc(&self.ctx.metrics.inbox_stored_total);
                }
            }
            out.push((seq, recipients));
        }
        out
    }

    /// Publishes many messages: grouped by their channel's owning shard, and each group
    /// numbered and delivered as one batch. Results are in input order.
    pub async fn publish_many(&self, publishes: Vec<Publish>) -> Vec<Result<Published, Error>> {
        let count = publishes.len();
        let mut groups: Vec<Vec<(usize, Publish)>> =
            (0..self.ctx.shard_count()).map(|_| Vec::new()).collect();
        for (at, publish) in publishes.into_iter().enumerate() {
            groups[self.owner(&publish.target)].push((at, publish));
        }
        let mut out: Vec<Option<Result<Published, Error>>> = (0..count).map(|_| None).collect();
        for (owner, group) in groups.into_iter().enumerate() {
            for chunk in chunks(group, BATCH_CHUNK) {
                let (slots, publishes): (Vec<usize>, Vec<Publish>) = chunk.into_iter().unzip();
                let ids: Vec<(String, bool)> = publishes
                    .iter()
                    .map(|p| (p.id.clone(), self.keeps_inbox(&p.target)))
                    .collect();
                let numbered = if owner == self.ctx.id {
                    Ok(self.sequence_and_deliver(publishes, true).await)
                } else {
                    let (reply, answer) = oneshot::channel();
                    let msg = ShardMsg::Sequence {
                        publishes,
                        numbered: true,
                        reply,
                    };
                    match self.ctx.peers.send_to(owner, msg).await {
                        Ok(()) => answer.await.map_err(|_| ()),
                        Err(_) => Err(()),
                    }
                };
                for (i, (slot, (id, keeps_inbox))) in slots.into_iter().zip(ids).enumerate() {
                    out[slot] = Some(match &numbered {
                        Ok(results) => {
                            let (seq, recipients) = results.get(i).copied().unwrap_or_default();
                            Ok(Published {
                                id,
                                seq,
                                recipients,
                                nodes: None,
                                epoch: Some(self.ctx.shared.epoch),
                                duplicate: false,
                                inbox: keeps_inbox && recipients == 0,
                            })
                        }
                        Err(()) => Err(shutting_down()),
                    });
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Unavailable("not published".into()))))
            .collect()
    }

    /// On the owning shard: the channel's messages after `since`.
    pub fn history_since(&self, channel: &str, since: u64, limit: usize) -> Replay {
        let current = Target::parse(channel)
            .and_then(|target| self.seqs.borrow().get(&target).copied())
            .unwrap_or(0);
        let mut replay =
            self.history
                .borrow()
                .since(channel, since, limit, current, self.ctx.now_s());
        // Every channel of this process is numbered in the process's epoch.
        replay.epoch = Some(self.ctx.shared.epoch);
        replay
    }

    /// A channel's history after `since`, from its owning shard.
    pub async fn history(
        &self,
        target: &Target,
        since: u64,
        limit: usize,
    ) -> Result<Replay, Error> {
        let channel = target.to_string();
        let owner = self.owner(target);
        if owner == self.ctx.id {
            return Ok(self.history_since(&channel, since, limit));
        }
        let (reply, answer) = oneshot::channel();
        let msg = ShardMsg::History {
            channel,
            since,
            limit,
            reply,
        };
        if self.ctx.peers.send_to(owner, msg).await.is_err() {
            return Err(shutting_down());
        }
        answer.await.map_err(|_| shutting_down())
    }

    /// On the owning shard: a user's inbox for one more delivery attempt.
    pub fn inbox_take_owned(&self, user: &str) -> Vec<Stored> {
        let (messages, given_up) = self.inboxes.borrow_mut().take(user, self.ctx.now_s());
        Metrics::add(&self.ctx.metrics.inbox_given_up_total, given_up as u64);
        messages
    }

    /// A user's inbox for one more delivery attempt, from its owning shard (empty when
    /// that shard is shutting down).
    pub async fn inbox_take(&self, user: &str) -> Vec<Stored> {
        let target = Target::User(user.to_string());
        let owner = self.owner(&target);
        if owner == self.ctx.id {
            return self.inbox_take_owned(user);
        }
        let (reply, answer) = oneshot::channel();
        let msg = ShardMsg::InboxTake {
            user: user.to_string(),
            reply,
        };
        if self.ctx.peers.send_to(owner, msg).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// On the owning shard: the user acked inbox message `seq`.
    pub fn inbox_ack_owned(&self, user: &str, seq: u64) {
        self.inboxes.borrow_mut().ack(user, seq);
    }

    /// The user acked `seq` on their own channel: its owning shard's inbox forgets it.
    pub fn inbox_ack(&self, user: &str, seq: u64) {
        let target = Target::User(user.to_string());
        let owner = self.owner(&target);
        if owner == self.ctx.id {
            self.inbox_ack_owned(user, seq);
            return;
        }
        let ctx = self.ctx.clone();
        let user = user.to_string();
        // Best effort, like the ack itself: a lost ack means one more delivery attempt.
        let spawned = self.ctx.tasks.spawn(async move {
            let _ = ctx
                .peers
                .send_to(owner, ShardMsg::InboxAck { user, seq })
                .await;
        });
        if spawned.is_err() {
            Metrics::inc(&self.ctx.metrics.tasks_refused_total);
        }
    }

    /// Expires history and inbox entries past their TTL.
    pub fn expire(&self, now_s: u32) {
        self.history.borrow_mut().expire(now_s);
        self.inboxes.borrow_mut().expire(now_s);
    }
}

fn stored(publish: &Publish, seq: u64) -> Stored {
    Stored {
        seq,
        id: publish.id.clone(),
        from: publish.from.clone(),
        event: publish.event.clone(),
        kind: publish.kind,
        payload: publish.payload.clone(),
    }
}

fn chunks<T>(items: Vec<T>, size: usize) -> Vec<Vec<T>> {
    let mut out = Vec::with_capacity(items.len().div_ceil(size));
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        out.push(items.by_ref().take(size).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_owners_are_spread_and_stable() {
        let owners: std::collections::HashSet<usize> = (0..64)
            .map(|i| owner_shard(&Target::User(i.to_string()), 4))
            .collect();
        assert!(owners.len() > 1);
        assert_eq!(owner_shard(&Target::All, 4), owner_shard(&Target::All, 4));
    }
}
