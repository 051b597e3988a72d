//! What a shard does so nothing is lost: replaying a channel's history to a recovering
//! connection (no gap, no duplicate at the seam with live delivery), handing an offline
//! user's inbox to a new connection, and answering history lookups.
//!
//! Standalone, history and inboxes live on the channel's owning shard (`history.rs`); in
//! cluster mode they live in Redis (a stream per channel, a hash per user), written by the
//! publish script in `fanout`. Replays run as tasks started here; no borrow is held across
//! an await.

use std::rc::Rc;

use bytes::Bytes;
use futures_channel::oneshot;
use redis_protocol::resp2::types::BytesFrame;
use serde_json::json;

use crate::broker;
use crate::conn::ConnKey;
use crate::envelope::{self, Target};
use crate::fanout::{owner_shard, Frames};
use crate::mesh::{Delivery, Publish, Replay, ShardMsg, Stored};
use crate::metrics::Metrics;
use crate::protocol::Codec;
use crate::recovery::Recovering;
use crate::shard::Shard;
use crate::ws::frame::{self, close_code, OpCode};

/// How often a replay waiting for queue room looks again.
const REPLAY_POLL: std::time::Duration = std::time::Duration::from_millis(2);
/// How long a replay waits for a client that reads nothing before closing it.
const REPLAY_STALL: std::time::Duration = std::time::Duration::from_secs(10);
/// Seconds a recovered channel keeps dropping late duplicates of replayed messages.
const RECOVERY_GRACE_S: u32 = 5;

/// Reads the channel's current seq and its history after a seq, atomically.
const HISTORY_SCRIPT: &str = r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
return {current, entries}
"#;

/// Takes a user's inbox for one more delivery attempt; gives up messages delivered
/// `ARGV[1]` times already. Returns {given_up, envelopes}.
const INBOX_TAKE_SCRIPT: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local out = {}
local given_up = 0
for i = 1, #all, 2 do
  local n = redis.call('HINCRBY', KEYS[2], all[i], 1)
  if n > tonumber(ARGV[1]) then
    redis.call('HDEL', KEYS[1], all[i])
    redis.call('HDEL', KEYS[2], all[i])
    given_up = given_up + 1
  else
    table.insert(out, all[i + 1])
  end
end
return {given_up, out}
"#;

fn stored_from_envelope(payload: &Bytes) -> Option<Stored> {
    let envelope = envelope::decode(payload).ok()?;
    Some(Stored {
        seq: envelope.seq?,
        id: envelope.id,
        from: envelope.from,
        kind: envelope.kind,
        payload: envelope.payload,
    })
}

impl Shard {
    /// Standalone, on the owning shard: the channel's messages after `since`.
    pub fn history_since(&self, channel: &str, since: u64, limit: usize) -> Replay {
        let current = Target::parse(channel)
            .and_then(|target| self.seqs.borrow().get(&target).copied())
            .unwrap_or(0);
        self.history
            .borrow()
            .since(channel, since, limit, current, self.now())
    }

    /// Standalone, on the owning shard: a user's inbox for one more delivery attempt.
    pub fn inbox_take(&self, user: &str) -> Vec<Stored> {
        let (messages, given_up) = self.inboxes.borrow_mut().take(user, self.now());
        Metrics::add(&self.metrics.inbox_given_up_total, given_up as u64);
        messages
    }

    /// A channel's history after `since`, from the owning shard or from Redis. Concurrent
    /// requests for the same (channel, since, limit) on this shard share one read: a
    /// reconnect storm after a restart asks for the same history a thousand times.
    pub async fn fetch_history(
        self: &Rc<Self>,
        target: &Target,
        since: u64,
        limit: usize,
    ) -> Result<Replay, broker::Error> {
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
                Err(broker::Error::Unavailable(
                    "the history read was dropped".into(),
                ))
            });
        }
        let result = self.read_history(target, since, limit).await;
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

    async fn read_history(
        self: &Rc<Self>,
        target: &Target,
        since: u64,
        limit: usize,
    ) -> Result<Replay, broker::Error> {
        let channel = target.to_string();
        if let Some(broker) = &self.broker {
            let seq_key = broker.channel(&format!("seq:{channel}"));
            let history_key = broker.channel(&format!("history:{channel}"));
            let start = format!("{}-0", since.saturating_add(1));
            // One more than asked, to tell a cut replay from a complete one.
            let count = (limit + 1).to_string();
            let reply = broker
                .command(&[
                    b"EVAL",
                    HISTORY_SCRIPT.as_bytes(),
                    b"2",
                    seq_key.as_bytes(),
                    history_key.as_bytes(),
                    start.as_bytes(),
                    count.as_bytes(),
                ])
                .await?;
            let BytesFrame::Array(parts) = reply else {
                return Err(broker::Error::Reply(format!(
                    "unexpected reply to the history script: {reply:?}"
                )));
            };
            let (Some(BytesFrame::Integer(current)), Some(BytesFrame::Array(entries))) =
                (parts.first(), parts.get(1))
            else {
                return Err(broker::Error::Reply(
                    "unexpected reply to the history script".into(),
                ));
            };
            let current = *current as u64;
            let mut messages: Vec<Stored> = entries
                .iter()
                .filter_map(|entry| match entry {
                    BytesFrame::Array(pair) => match pair.get(1) {
                        Some(BytesFrame::Array(fields)) => match fields.get(1) {
                            Some(BytesFrame::BulkString(envelope)) => {
                                stored_from_envelope(envelope)
                            }
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
            return Ok(Replay {
                messages,
                current,
                complete,
            });
        }
        let owner = owner_shard(target, self.shard_count());
        if owner == self.id {
            return Ok(self.history_since(&channel, since, limit));
        }
        let (reply, answer) = oneshot::channel();
        let msg = ShardMsg::History {
            channel,
            since,
            limit,
            reply,
        };
        if self.send_to(owner, msg).await.is_err() {
            return Err(broker::Error::Unavailable(
                "the channel's shard is shutting down".into(),
            ));
        }
        answer
            .await
            .map_err(|_| broker::Error::Unavailable("the channel's shard is shutting down".into()))
    }

    /// A user's offline inbox for one more delivery attempt, oldest first.
    async fn fetch_inbox(self: &Rc<Self>, user: &str) -> Result<Vec<Stored>, broker::Error> {
        if let Some(broker) = &self.broker {
            let inbox = broker.channel(&format!("inbox:{user}"));
            let deliveries = broker.channel(&format!("inbox-deliveries:{user}"));
            let max = self.config.inbox_deliveries_max.to_string();
            let reply = broker
                .command(&[
                    b"EVAL",
                    INBOX_TAKE_SCRIPT.as_bytes(),
                    b"2",
                    inbox.as_bytes(),
                    deliveries.as_bytes(),
                    max.as_bytes(),
                ])
                .await?;
            let BytesFrame::Array(parts) = reply else {
                return Err(broker::Error::Reply(
                    "unexpected reply to the inbox script".into(),
                ));
            };
            if let Some(BytesFrame::Integer(given_up)) = parts.first() {
                Metrics::add(
                    &self.metrics.inbox_given_up_total,
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
            return Ok(messages);
        }
        let target = Target::User(user.to_string());
        let owner = owner_shard(&target, self.shard_count());
        if owner == self.id {
            return Ok(self.inbox_take(user));
        }
        let (reply, answer) = oneshot::channel();
        let msg = ShardMsg::InboxTake {
            user: user.to_string(),
            reply,
        };
        if self.send_to(owner, msg).await.is_err() {
            return Ok(Vec::new());
        }
        Ok(answer.await.unwrap_or_default())
    }

    /// The user acked `seq` on their own channel: the inbox forgets it.
    pub fn inbox_ack(self: &Rc<Self>, user: &str, seq: u64) {
        if self.config.inbox_size == 0 {
            return;
        }
        if let Some(broker) = &self.broker {
            let inbox = broker.channel(&format!("inbox:{user}"));
            let deliveries = broker.channel(&format!("inbox-deliveries:{user}"));
            let seq = seq.to_string();
            broker.command_detached(&[b"HDEL", inbox.as_bytes(), seq.as_bytes()]);
            broker.command_detached(&[b"HDEL", deliveries.as_bytes(), seq.as_bytes()]);
            return;
        }
        let target = Target::User(user.to_string());
        let owner = owner_shard(&target, self.shard_count());
        if owner == self.id {
            self.inboxes.borrow_mut().ack(user, seq);
            return;
        }
        let shard = self.clone();
        let user = user.to_string();
        glommio::spawn_local(async move {
            let _ = shard.send_to(owner, ShardMsg::InboxAck { user, seq }).await;
        })
        .detach();
    }

    /// Waits until a connection's outbound queue is at most half full. False when the
    /// connection is gone, or made no room for `REPLAY_STALL` (it is then closed as a slow
    /// consumer: it is not reading its replay).
    async fn wait_for_queue_room(self: &Rc<Self>, key: ConnKey) -> bool {
        let half = (self.config.outbound_frames_max / 2).max(1);
        let stalled_at = std::time::Instant::now();
        loop {
            let queued = self
                .conns_ref()
                .get(key.index as usize)
                .filter(|c| c.generation() == key.generation && c.is_open())
                .map(|c| c.queued_frames());
            match queued {
                None => return false,
                Some(queued) if queued < half => return true,
                Some(_) if stalled_at.elapsed() >= REPLAY_STALL => {
                    Metrics::inc(&self.metrics.slow_consumer_closes_total);
                    self.close_conn(
                        key,
                        close_code::POLICY,
                        "slow consumer: not reading its replay",
                    );
                    return false;
                }
                Some(_) => glommio::timer::sleep(REPLAY_POLL).await,
            }
        }
    }

    /// Cluster mode: waits until this shard's subscriptions to `channels` (volley names
    /// such as `room:lobby`) are confirmed by Redis (bounded by the broker).
    async fn wait_subscribed(&self, channels: &[String]) {
        if let Some(broker) = &self.broker {
            let redis_names: Vec<String> = channels.iter().map(|c| broker.channel(c)).collect();
            broker.wait_subscribed(&redis_names).await;
        }
    }

    /// The frame of a stored message for one codec.
    fn stored_frame(target: &Target, message: &Stored, codec: Codec) -> Bytes {
        let delivery = Delivery {
            publish: Publish {
                target: target.clone(),
                id: message.id.clone(),
                from: message.from.clone(),
                kind: message.kind,
                payload: message.payload.clone(),
            },
            seq: Some(message.seq),
        };
        Frames::new(&delivery).for_codec(codec)
    }

    /// Replays what a connection missed on `channels` (each after its seq), holding back
    /// live messages of those channels until the replay is queued; then, for a user's
    /// connection, delivers the offline inbox. Sends a `recovered` event per channel.
    pub fn start_recovery(
        self: &Rc<Self>,
        key: ConnKey,
        channels: Vec<(Target, u64)>,
        take_inbox: bool,
    ) {
        let names: Vec<String> = channels.iter().map(|(t, _)| t.to_string()).collect();
        let user = self
            .with_session(key, |s| {
                let recovering = s.recovering.get_or_insert_with(Box::<Recovering>::default);
                for name in &names {
                    recovering.begin(name);
                }
                s.user.as_deref().map(str::to_string)
            })
            .flatten();
        let shard = self.clone();
        glommio::spawn_local(async move {
            // Cluster mode: read history and inbox only once this shard's subscriptions
            // to those channels are confirmed. A message published before that went to
            // the history (and, for a user nobody held, the inbox) and is read below; one
            // published after arrives live. Reading earlier could miss a message published
            // in between, which would be neither replayed nor delivered.
            let mut wanted: Vec<String> = names.clone();
            if let (true, Some(user)) = (take_inbox, &user) {
                wanted.push(format!("user:{user}"));
            }
            shard.wait_subscribed(&wanted).await;
            let mut user_floor = 0;
            for (target, since) in channels {
                let channel = target.to_string();
                let limit = shard.config.history_size.max(1);
                let replay = shard.fetch_history(&target, since, limit).await;
                let (replay, error) = match replay {
                    Ok(replay) => (replay, None),
                    Err(e) => (Replay::default(), Some(e.to_string())),
                };
                let Some(codec) = shard.session_codec(key) else {
                    return;
                };
                let mut replayed_to = since;
                let mut replayed = 0u64;
                for message in &replay.messages {
                    // Flow control: a replay longer than the outbound queue is fed as the
                    // client reads, not queued at once (which would close it as slow).
                    if !shard.wait_for_queue_room(key).await {
                        return;
                    }
                    shard.send_to_conn(key, Self::stored_frame(&target, message, codec));
                    replayed_to = replayed_to.max(message.seq);
                    replayed += 1;
                }
                let until_s = shard.now() + RECOVERY_GRACE_S;
                let released = shard
                    .with_session(key, |s| match s.recovering.as_mut() {
                        Some(r) => r.finish(&channel, replayed_to, until_s),
                        None => Vec::new(),
                    })
                    .unwrap_or_default();
                for frame in released {
                    shard.send_to_conn(key, frame);
                }
                if matches!(target, Target::User(_)) {
                    user_floor = replayed_to;
                }
                Metrics::add(&shard.metrics.replayed_total, replayed);
                if codec == Codec::Native {
                    let mut event = json!({
                        "type": "recovered",
                        "channel": channel,
                        "recovered": error.is_none() && replay.complete,
                        "replayed": replay.messages.len(),
                        "seq": replay.current.max(replayed_to),
                    });
                    if let Some(error) = error {
                        event["error"] = error.into();
                    }
                    shard.send_to_conn(
                        key,
                        frame::encode(OpCode::Text, event.to_string().as_bytes()),
                    );
                }
            }
            if let (true, Some(user)) = (take_inbox, user) {
                let Ok(messages) = shard.fetch_inbox(&user).await else {
                    return;
                };
                let Some(codec) = shard.session_codec(key) else {
                    return;
                };
                let target = Target::User(user);
                let mut delivered = 0;
                for message in messages.iter().filter(|m| m.seq > user_floor) {
                    if !shard.wait_for_queue_room(key).await {
                        return;
                    }
                    shard.send_to_conn(key, Self::stored_frame(&target, message, codec));
                    delivered += 1;
                }
                Metrics::add(&shard.metrics.inbox_delivered_total, delivered);
            }
        })
        .detach();
    }
}
