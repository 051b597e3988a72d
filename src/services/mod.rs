//! What a shard does for users and rooms, above the data plane and the backend: a
//! connection arriving and leaving (subscriptions, presence, room events), joins and
//! leaves under the token's permissions, publish and recover checks, acks, server-side
//! membership, what arrives from Redis subscriptions and from other shards.
//!
//! Protocol-neutral: answers are values (`Refusal`, `Published`) or frames a codec made;
//! nothing here knows a wire format. Holds no state of its own beyond handles to the
//! shard's context, hub and backend, so it can be built around a test hub. Called by
//! `protocol` (client ops), `api` (HTTP), and `shard` (connects, disconnects, the mesh
//! and broker loops). Every task it starts goes through `ctx.tasks`.

pub mod gaps;
pub mod hooks;
pub mod ops;
pub mod recovery;
pub mod sio_adapter;
pub mod socketio;

use std::cell::Cell;
use std::rc::Rc;

use bytes::Bytes;
use serde_json::json;

use crate::backend::Backend;
use crate::broker::client::Incoming;
use crate::conn::ConnKey;
use crate::ctx::Ctx;
use crate::envelope::{self, PayloadKind, Target, FLAG_CONTROL};
use crate::hub::{Hub, Removed};
use crate::log;
use crate::mesh::{Delivery, Presence, Publish, ShardMsg, ShardReport};
use crate::metrics::Metrics;
use crate::protocol::socketio::session::socket_owner;
use crate::protocol::{check_name, ErrorCode, OpError, Ref};

/// An op refused: the code and the words the client gets.
pub type Refusal = (ErrorCode, String);

/// How long a catch-up after a reconnect keeps trying to read the history while Redis
/// cannot answer (the command link reconnects with a backoff of at most 2 s).
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
/// Pause between those tries.
const CATCH_UP_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
/// At most one log line per this many seconds for undecodable Redis messages.
const ENVELOPE_ERROR_LOG_INTERVAL_S: u32 = 10;

pub struct Services {
    pub ctx: Rc<Ctx>,
    pub hub: Rc<Hub>,
    pub backend: Rc<Backend>,
    envelope_error_logged_s: Cell<Option<u32>>,
    /// Cluster mode: where each subscribed channel is on this shard, and the catch-up after
    /// a subscriber reconnect.
    gaps: gaps::Gaps,
    /// A presence resync task is running (one at a time).
    presence_resync_running: Cell<bool>,
    /// This shard's client to `--app-webhook`, when one is set.
    webhook: Option<hooks::Webhook>,
}

impl Services {
    pub fn new(ctx: Rc<Ctx>, hub: Rc<Hub>, backend: Rc<Backend>) -> Services {
        Services {
            hub,
            backend,
            envelope_error_logged_s: Cell::new(None),
            gaps: gaps::Gaps::default(),
            presence_resync_running: Cell::new(false),
            webhook: ctx.config.app_webhook.clone().map(hooks::Webhook::new),
            ctx,
        }
    }

    /// A connection was inserted into the hub: subscribe to what it receives and count
    /// its user as present.
    pub fn connected(&self, key: ConnKey) {
        self.backend.interest("all", true);
        self.user_connected(key);
    }

    /// A connection's user became known (at connect, or at a socket.io CONNECT): subscribe
    /// to its user channel and count it as present.
    pub fn user_connected(&self, key: ConnKey) {
        let user = self.hub.with_session(key, |s| s.user.clone()).flatten();
        if let Some(user) = user {
            let channel = format!("user:{user}");
            self.backend.interest(&channel, true);
            self.backend
                .presence_change(&channel, self.ctx.node_id(), 1);
        }
    }

    /// A connection left the hub: unsubscribe, update presence, tell its rooms.
    pub fn disconnected(self: &Rc<Self>, removed: Removed) {
        self.backend.interest("all", false);
        let user = removed.session.user.as_deref();
        if let Some(user) = user {
            let channel = format!("user:{user}");
            self.backend.interest(&channel, false);
            self.backend
                .presence_change(&channel, self.ctx.node_id(), -1);
        }
        let member = user.unwrap_or("");
        for (room, _) in removed.rooms {
            let channel = format!("room:{room}");
            self.backend.interest(&channel, false);
            self.backend.presence_change(&channel, member, -1);
            self.room_event(&room, member, "leave");
        }
        self.ctx.shared.release_connection();
    }

    /// The member name presence counts a connection under: its user, or "" if anonymous.
    fn member_name(&self, key: ConnKey) -> String {
        self.hub
            .with_session(key, |s| s.user.as_deref().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    /// Puts one connection in a room, or says why not.
    pub fn join_room(self: &Rc<Self>, key: ConnKey, room: &str) -> Result<(), Refusal> {
        check_name(room, self.ctx.config.name_bytes_max)
            .map_err(|e| (ErrorCode::BadField, e.message("room name")))?;
        let allowed = self
            .hub
            .with_session(key, |s| s.claims.as_ref().is_none_or(|c| c.may_join(room)))
            .unwrap_or(false);
        if !allowed {
            return Err((
                ErrorCode::Forbidden,
                format!("your token does not allow joining room {room:?}"),
            ));
        }
        let max = self.ctx.config.rooms_per_connection_max;
        if self.hub.room_count_of(key) >= max {
            return Err((
                ErrorCode::TooLarge,
                format!("already in {max} rooms (--rooms-per-connection-max); leave one first"),
            ));
        }
        self.join_unchecked(key, room);
        Ok(())
    }

    /// Puts a connection in a room without the permission and count checks (server-side
    /// membership, and the room named by a socket.io socket id); false if it already was.
    pub fn join_unchecked(self: &Rc<Self>, key: ConnKey, room: &str) -> bool {
        if self.hub.join(room, key) == crate::hub::index::Change::None {
            return false;
        }
        let channel = format!("room:{room}");
        self.backend.interest(&channel, true);
        let member = self.member_name(key);
        self.backend.presence_change(&channel, &member, 1);
        self.room_event(room, &member, "join");
        true
    }

    pub fn leave_room(self: &Rc<Self>, key: ConnKey, room: &str) -> Result<(), Refusal> {
        if self.hub.leave(room, key) == crate::hub::index::Change::None {
            return Err((ErrorCode::NotFound, format!("not in room {room:?}")));
        }
        let channel = format!("room:{room}");
        self.backend.interest(&channel, false);
        let member = self.member_name(key);
        self.backend.presence_change(&channel, &member, -1);
        self.room_event(room, &member, "leave");
        Ok(())
    }

    /// With `--room-events`, tells a room's members that someone joined or left: a message
    /// on the room's channel, `{"presence":"join"|"leave","user":<id or null>}`, sequenced
    /// like any other so it takes its place in history and recovery.
    pub fn room_event(self: &Rc<Self>, room: &str, member: &str, event: &str) {
        if !self.ctx.config.room_events {
            return;
        }
        let user = (!member.is_empty()).then_some(member);
        let publish = Publish {
            target: Target::Room(room.to_string()),
            id: self.ctx.next_message_id(),
            from: user.map(|u| format!("user:{u}")),
            event: None,
            kind: PayloadKind::Json,
            payload: Bytes::from(json!({ "presence": event, "user": user }).to_string()),
        };
        let backend = self.backend.clone();
        // Best effort: a lost presence event costs nobody a message.
        let spawned = self.ctx.tasks.spawn(async move {
            let _ = backend.publish(publish).await;
        });
        if spawned.is_err() {
            Metrics::inc(&self.ctx.metrics.tasks_refused_total);
        }
    }

    /// Every local connection of `user` joins (or leaves) `room`; returns how many changed.
    pub fn membership(self: &Rc<Self>, room: &str, user: &str, join: bool) -> u32 {
        let mut changed = 0;
        for key in self.hub.user_conns(user) {
            let did = if join {
                self.join_unchecked(key, room)
            } else {
                self.leave_room(key, room).is_ok()
            };
            changed += did as u32;
        }
        changed
    }

    /// A control message from Redis for a user's connections (cluster-wide membership).
    fn apply_control(self: &Rc<Self>, target: &Target, payload: &[u8]) -> u32 {
        let Target::User(user) = target else {
            return 0;
        };
        let Ok(control) = serde_json::from_slice::<serde_json::Value>(payload) else {
            Metrics::inc(&self.ctx.metrics.redis_envelope_errors_total);
            return 0;
        };
        let (Some(op), Some(room)) = (control["op"].as_str(), control["room"].as_str()) else {
            Metrics::inc(&self.ctx.metrics.redis_envelope_errors_total);
            return 0;
        };
        match op {
            "join" => self.membership(room, user, true),
            "leave" => self.membership(room, user, false),
            _ => {
                Metrics::inc(&self.ctx.metrics.redis_envelope_errors_total);
                0
            }
        }
    }

    /// Checks that a connection may publish to `target` now (permissions, names, rate).
    pub fn may_publish(&self, key: ConnKey, target: &Target) -> Result<(), Refusal> {
        let (kind, name) = match target {
            Target::Room(room) => ("room", room.as_str()),
            Target::User(user) => ("user", user.as_str()),
            Target::All => {
                return Err((
                    ErrorCode::Forbidden,
                    "clients cannot broadcast to everyone".into(),
                ))
            }
        };
        check_name(name, self.ctx.config.name_bytes_max)
            .map_err(|e| (ErrorCode::BadField, e.message(&format!("{kind} name"))))?;
        let now_ms = self.ctx.now_ms();
        let (rate, burst) = (
            self.ctx.config.client_publish_rate,
            self.ctx.config.client_publish_burst,
        );
        let verdict = self.hub.with_session(key, |s| {
            if !s.claims.as_ref().is_none_or(|c| c.may_publish(kind, name)) {
                return Err((
                    ErrorCode::Forbidden,
                    format!("your token does not allow publishing to {kind}:{name}"),
                ));
            }
            if !s.publish_bucket.take(now_ms, rate, burst) {
                return Err((
                    ErrorCode::RateLimited,
                    format!("more than {rate} publishes per second (burst {burst}); slow down"),
                ));
            }
            Ok(())
        });
        verdict.unwrap_or_else(|| Err((ErrorCode::Internal, "connection is gone".into())))
    }

    /// Starts a client's publish; the reply goes back to the client when it is done.
    pub fn client_publish(
        self: &Rc<Self>,
        key: ConnKey,
        reference: Option<Ref>,
        target: Target,
        payload: Bytes,
        event: Option<String>,
    ) {
        let from = self.hub.with_session(key, |s| s.from()).flatten();
        let publish = Publish {
            target,
            id: self.ctx.next_message_id(),
            from,
            event,
            kind: PayloadKind::Json,
            payload,
        };
        let svc = self.clone();
        let task = async move {
            match svc.backend.publish(publish).await {
                Ok(published) => {
                    let result = json!({ "id": published.id, "seq": published.seq, "recipients": published.recipients });
                    ops::reply_ok(&svc, key, reference.as_ref(), Some(&result));
                }
                Err(e) => {
                    let error = OpError {
                        reference,
                        code: ErrorCode::Internal,
                        message: e.to_string(),
                    };
                    ops::reply_error(&svc, key, error);
                }
            }
        };
        if self.ctx.tasks.spawn(task).is_err() {
            Metrics::inc(&self.ctx.metrics.tasks_refused_total);
        }
    }

    /// Replies ok to a join, at once standalone, or once the Redis subscription to
    /// `channel` is confirmed in cluster mode (or after the broker's wait runs out, still
    /// ok: the membership holds and messages flow as soon as Redis confirms).
    pub fn reply_when_subscribed(
        self: &Rc<Self>,
        key: ConnKey,
        reference: Option<Ref>,
        channel: String,
    ) {
        if self.backend.is_subscribed(&channel) {
            ops::reply_ok(self, key, reference.as_ref(), None);
            return;
        }
        let svc = self.clone();
        let task = async move {
            svc.backend.wait_subscribed(&[channel]).await;
            ops::reply_ok(&svc, key, reference.as_ref(), None);
        };
        if self.ctx.tasks.spawn(task).is_err() {
            Metrics::inc(&self.ctx.metrics.tasks_refused_total);
        }
    }

    /// Counts a client's ack of (channel, seq); false when no recent message matches.
    /// In cluster mode the count also goes to the message's receipt in Redis.
    pub fn ack(&self, key: ConnKey, target: &Target, seq: u64) -> bool {
        // An ack on the client's own user channel also clears that message from its
        // offline inbox (it may have come from there, with no receipt on this shard).
        let own_inbox = match target {
            Target::User(user) => self
                .hub
                .with_session(key, |s| s.user.as_deref() == Some(user.as_str()))
                .unwrap_or(false),
            _ => false,
        };
        if let (true, Target::User(user)) = (own_inbox, target) {
            self.backend.inbox_ack(user, seq);
        }
        let Some(id) = self.hub.ack(&target.to_string(), seq) else {
            return own_inbox;
        };
        self.backend.receipt_change(&id, "acked", 1);
        true
    }

    /// A connection may recover `all`, its own user channel, and rooms it is in.
    pub fn may_recover(&self, key: ConnKey, target: &Target) -> Result<(), Refusal> {
        let allowed = match target {
            Target::All => true,
            Target::User(user) => self
                .hub
                .with_session(key, |s| s.user.as_deref() == Some(user.as_str()))
                .unwrap_or(false),
            Target::Room(room) => self.hub.is_in_room(key, room),
        };
        if allowed {
            Ok(())
        } else {
            Err((
                ErrorCode::Forbidden,
                format!(
                    "{target}: recover works on all, your own user channel, and rooms you are in"
                ),
            ))
        }
    }

    /// Queues a delivery to the local recipients and counts it in the message's receipt.
    pub fn deliver(&self, delivery: &Delivery) -> u32 {
        let queued = self.hub.deliver(delivery);
        if delivery.seq.is_some() && queued > 0 {
            self.backend
                .receipt_change(&delivery.publish.id, "delivered", queued);
        }
        queued
    }

    /// What this shard's Redis subscriptions delivered: a message, the confirmation of new
    /// subscriptions, or the end of a resubscription after the link came back.
    pub fn on_broker(self: &Rc<Self>, incoming: Incoming) {
        match incoming {
            Incoming::Message { channel, payload } => self.on_broker_message(channel, payload),
            Incoming::Reconnected => {
                self.gaps.begin_catch_up();
                self.hold_socket_rooms();
            }
            Incoming::Subscribed { channels } => self.learn_marks(channels),
            Incoming::Resubscribed => self.replay_gaps(),
        }
    }

    /// Decodes a message from Redis and delivers it to the local recipients of its target
    /// (frames encoded once for this shard), unless it was seen already or its channel is
    /// being caught up after a reconnect (then it waits for the catch-up).
    fn on_broker_message(self: &Rc<Self>, channel: Bytes, payload: Bytes) {
        Metrics::inc(&self.ctx.metrics.redis_messages_total);
        let Some(redis) = &self.backend.redis else {
            return;
        };
        // socket.io's own channels (--socketio-adapter): not envelopes.
        if sio_adapter::owns(self, &channel) {
            sio_adapter::on_message(self, &channel, &payload);
            return;
        }
        let decoded = envelope::decode(&payload)
            .map_err(|e| e.to_string())
            .and_then(|envelope| {
                // Each target has one pub/sub channel (a socket id's room: its process's
                // sockets channel, shared with that process's other socket ids).
                let name = envelope.target.to_string();
                if redis.keys.pubsub_channel(&name).as_bytes() == &channel[..] {
                    Ok(envelope)
                } else {
                    Err(format!(
                        "target {} does not match the channel {}",
                        envelope.target,
                        String::from_utf8_lossy(&channel)
                    ))
                }
            });
        let envelope = match decoded {
            Ok(envelope) => envelope,
            Err(e) => {
                Metrics::inc(&self.ctx.metrics.redis_envelope_errors_total);
                let now_s = self.ctx.now_s();
                let last = self.envelope_error_logged_s.get();
                if last.is_none_or(|last| now_s >= last + ENVELOPE_ERROR_LOG_INTERVAL_S) {
                    self.envelope_error_logged_s.set(Some(now_s));
                    log!(
                        warn,
                        Some(self.ctx.id),
                        "dropped a message on {}: {e} (see docs/ENVELOPE.md)",
                        String::from_utf8_lossy(&channel)
                    );
                }
                return;
            }
        };
        let recipients = if envelope.flags & FLAG_CONTROL != 0 {
            self.apply_control(&envelope.target, &envelope.payload)
        } else {
            let delivery = Delivery {
                seq: envelope.seq,
                epoch: envelope.epoch,
                publish: Publish {
                    target: envelope.target,
                    id: envelope.id.clone(),
                    from: envelope.from,
                    event: envelope.event,
                    kind: envelope.kind,
                    payload: envelope.payload,
                },
            };
            // Positions are per volley channel: on a sockets channel, per socket id room
            // (`room:<id>` under the prefix, as if it had a channel of its own).
            let position_key = if redis
                .keys
                .sockets_channel_tag(std::str::from_utf8(&channel).unwrap_or_default())
                .is_some()
            {
                Bytes::from(redis.keys.channel(&delivery.publish.target.to_string()))
            } else {
                channel.clone()
            };
            match self.gaps.admit(&position_key, delivery) {
                gaps::Admitted::Now(delivery) => self.deliver(&delivery),
                // Counted for its publisher when the catch-up releases it.
                gaps::Admitted::Held => return,
                gaps::Admitted::Seen => 0,
            }
        };
        if envelope.origin == self.ctx.node_id() {
            redis.record_own_delivery(envelope.id, recipients);
        }
    }

    /// New subscriptions were confirmed: learn where their channels are now, so a later
    /// reconnect knows what this shard would have missed.
    fn learn_marks(self: &Rc<Self>, mut channels: Vec<Bytes>) {
        if let Some(redis) = &self.backend.redis {
            // Another process's sockets channel (a connection here joined one of its socket
            // ids): its positions are per socket id room, learned as they deliver.
            channels.retain(|c| {
                std::str::from_utf8(c).map_or(true, |c| redis.keys.sockets_channel_tag(c).is_none())
            });
        }
        let unknown = self.gaps.unknown(channels);
        if unknown.is_empty() {
            return;
        }
        let svc = self.clone();
        let task = async move {
            let Some(redis) = &svc.backend.redis else {
                return;
            };
            for chunk in unknown.chunks(gaps::MARKS_READ_CHUNK) {
                if let Ok(positions) = redis.positions(chunk).await {
                    for (channel, position) in chunk.iter().zip(positions) {
                        svc.gaps.learn(channel, position);
                    }
                }
            }
        };
        if self.ctx.tasks.spawn(task).is_err() {
            Metrics::inc(&self.ctx.metrics.tasks_refused_total);
        }
    }

    /// The subscriber link came back and every channel is subscribed again: replay from
    /// history what each channel got while it was down, holding live messages back until
    /// then, so connected clients miss nothing without asking.
    fn replay_gaps(self: &Rc<Self>) {
        let (unknown, known): (Vec<Bytes>, Vec<Bytes>) = self
            .gaps
            .catching_up()
            .into_iter()
            .partition(|channel| self.gaps.is_unknown(channel));
        if !unknown.is_empty() {
            let svc = self.clone();
            let task = async move { svc.catch_up_unknown(unknown).await };
            if self.ctx.tasks.spawn(task).is_err() {
                Metrics::inc(&self.ctx.metrics.tasks_refused_total);
            }
        }
        for channel in known {
            let svc = self.clone();
            let task = async move { svc.catch_up(channel).await };
            if self.ctx.tasks.spawn(task).is_err() {
                Metrics::inc(&self.ctx.metrics.tasks_refused_total);
            }
        }
    }

    /// The subscriber link came back: the rooms of the socket ids this shard made hold their
    /// live messages too, though nothing was ever delivered for most of them (they have no
    /// position here; before, each had a subscription and a position read at subscribe).
    fn hold_socket_rooms(&self) {
        let Some(redis) = &self.backend.redis else {
            return;
        };
        for id in self.hub.own_socket_ids() {
            let channel = redis.keys.channel(&format!("room:{}", id.as_str()));
            self.gaps.hold_unknown(Bytes::from(channel));
        }
    }

    /// Catches up socket id rooms that had no position here: one read of where each is now
    /// (per `gaps::MARKS_READ_CHUNK`), then a history read only for the ones ever numbered;
    /// the others (nearly all) let their held messages go and cost no entry again.
    async fn catch_up_unknown(self: Rc<Self>, channels: Vec<Bytes>) {
        let Some(redis) = &self.backend.redis else {
            return;
        };
        for chunk in channels.chunks(gaps::MARKS_READ_CHUNK) {
            // A failed read: every channel of the chunk reads its history instead.
            let numbered: Vec<bool> = match redis.positions(chunk).await {
                Ok(positions) => positions.iter().map(|p| p.seq > 0).collect(),
                Err(_) => vec![true; chunk.len()],
            };
            for (channel, numbered) in chunk.iter().zip(numbered) {
                if !numbered {
                    self.release(channel);
                    self.gaps.forget_unmoved(channel);
                    continue;
                }
                let svc = self.clone();
                let caught = channel.clone();
                let task = async move {
                    svc.clone().catch_up(caught.clone()).await;
                    svc.gaps.forget_unmoved(&caught);
                };
                if self.ctx.tasks.spawn(task).is_err() {
                    // Held messages must not wait for a catch-up that will not run.
                    Metrics::inc(&self.ctx.metrics.tasks_refused_total);
                    self.release(channel);
                }
            }
        }
    }

    async fn catch_up(self: Rc<Self>, channel: Bytes) {
        let Some(redis) = &self.backend.redis else {
            return;
        };
        let target = std::str::from_utf8(&channel)
            .ok()
            .and_then(|c| redis.keys.channel_of(c))
            .and_then(Target::parse);
        let (Some(target), Some(mark)) = (target, self.gaps.mark(&channel)) else {
            self.release(&channel);
            return;
        };
        let limit = self.ctx.config.history_size.max(1);
        let since = if mark.epoch.is_some() { mark.seq } else { 0 };
        let mut replay = self.history_when_possible(&target, since, limit).await;
        if let Ok(r) = &replay {
            // The numbering restarted while the link was down: catch up on the new one.
            if mark.epoch.is_some() && r.epoch != mark.epoch && since > 0 {
                replay = self.history_when_possible(&target, 0, limit).await;
            }
        }
        // Seqs of a user channel that reached the user's connections here.
        let mut to_user: Vec<u64> = Vec::new();
        match replay {
            Ok(replay) => {
                let mut caught_up = 0u64;
                for message in replay.messages {
                    let delivery = Delivery {
                        seq: Some(message.seq),
                        epoch: replay.epoch,
                        publish: Publish {
                            target: target.clone(),
                            id: message.id,
                            from: message.from,
                            event: message.event,
                            kind: message.kind,
                            payload: message.payload,
                        },
                    };
                    if self.gaps.is_new(&channel, &delivery) {
                        if self.deliver(&delivery) > 0 {
                            to_user.push(message.seq);
                        }
                        caught_up += 1;
                    }
                }
                Metrics::add(&self.ctx.metrics.gap_replayed_total, caught_up);
            }
            Err(e) => {
                Metrics::inc(&self.ctx.metrics.gap_replay_errors_total);
                log!(
                    warn,
                    Some(self.ctx.id),
                    "could not catch up {target} after the Redis reconnect: {e}; its clients can recover from their last seq"
                );
            }
        }
        self.release(&channel);
        // After the release, so held live messages do not wait for this round trip.
        if let Target::User(user) = &target {
            self.inbox_delivered(user, &to_user).await;
        }
    }

    /// A catch-up delivered `seqs` of `user`'s channel to the user's connections on this
    /// shard: the user was online all along. PUBLISH reached nobody for them, and when Redis
    /// knew of no live connection of the user (this node away from an emptied Redis, or its
    /// heartbeat expired meanwhile) the publish script also kept them in the inbox; remove
    /// those copies, or the user's next connection gets them a second time. Off the publish
    /// path: one script call per caught-up user channel, only after a reconnect.
    async fn inbox_delivered(&self, user: &str, seqs: &[u64]) {
        let Some(redis) = &self.backend.redis else {
            return;
        };
        if seqs.is_empty() || self.ctx.config.inbox_size == 0 {
            return;
        }
        match redis.inbox_delivered(user, seqs).await {
            Ok(removed) => Metrics::add(&self.ctx.metrics.inbox_caught_up_total, removed),
            Err(e) => log!(
                warn,
                Some(self.ctx.id),
                "could not remove from user {user}'s inbox what the catch-up delivered: {e}; their next connection may get it again"
            ),
        }
    }

    /// A history read for a catch-up, retried while Redis cannot answer yet: the subscriber
    /// link often comes back before the command link (still in its backoff), and giving up
    /// then would lose what the channel got while it was down. Live messages of the channel
    /// wait meanwhile (bounded by `gaps`).
    async fn history_when_possible(
        &self,
        target: &Target,
        since: u64,
        limit: usize,
    ) -> Result<crate::mesh::Replay, crate::backend::Error> {
        let deadline = std::time::Instant::now() + CATCH_UP_WAIT;
        loop {
            match self.backend.history(target, since, limit).await {
                Err(crate::backend::Error::Unavailable(_) | crate::backend::Error::Unknown(_))
                    if std::time::Instant::now() < deadline =>
                {
                    glommio::timer::sleep(CATCH_UP_RETRY).await;
                }
                other => return other,
            }
        }
    }

    /// Ends a channel's catch-up: what arrived live meanwhile goes out, without what the
    /// catch-up already delivered.
    fn release(&self, channel: &[u8]) {
        for delivery in self.gaps.end_catch_up(channel) {
            let recipients = self.deliver(&delivery);
            // A publisher of this process waiting for its count gets it now.
            if let Some(redis) = &self.backend.redis {
                redis.answer_waiter(&delivery.publish.id, recipients);
            }
        }
    }

    /// Every few seconds: forget the positions of channels no longer subscribed.
    pub fn prune(&self) {
        let Some(redis) = &self.backend.redis else {
            return;
        };
        // A socket id room (positions kept per room on a sockets channel) is wanted while a
        // connection here is in it.
        self.gaps.prune(|channel| {
            std::str::from_utf8(channel).is_ok_and(|c| {
                redis.broker.wants(c)
                    || redis
                        .keys
                        .channel_of(c)
                        .and_then(|c| c.strip_prefix("room:"))
                        .is_some_and(|room| socket_owner(room).is_some() && self.hub.has_room(room))
            })
        });
    }

    /// Every second: write presence counters again when Redis may have lost them (soon
    /// after a reconnect: until then, the publish script may take an online user for an
    /// offline one and keep a message in the inbox as well).
    pub fn tick(self: &Rc<Self>) {
        let Some(redis) = &self.backend.redis else {
            return;
        };
        if redis.presence_needs_resync() && !self.presence_resync_running.get() {
            self.presence_resync_running.set(true);
            let svc = self.clone();
            let task = async move {
                let counts = svc.hub.presence_counts();
                if let Some(redis) = &svc.backend.redis {
                    match redis.resync_presence(counts).await {
                        Ok(()) => Metrics::inc(&svc.ctx.metrics.presence_resyncs_total),
                        Err(e) => log!(
                            warn,
                            Some(svc.ctx.id),
                            "could not write presence again: {e}; retrying"
                        ),
                    }
                }
                svc.presence_resync_running.set(false);
            };
            if self.ctx.tasks.spawn(task).is_err() {
                self.presence_resync_running.set(false);
                Metrics::inc(&self.ctx.metrics.tasks_refused_total);
            }
        }
    }

    /// What another shard asked of this one.
    pub fn on_mesh(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Sequence {
                publishes,
                numbered,
                reply,
            } => {
                let backend = self.backend.clone();
                let task = async move {
                    let numbered = backend
                        .local
                        .sequence_and_deliver(publishes, numbered)
                        .await;
                    let _ = reply.send(numbered);
                };
                // Refused: the reply is dropped, and the publisher answers 503.
                if self.ctx.tasks.spawn(task).is_err() {
                    Metrics::inc(&self.ctx.metrics.tasks_refused_total);
                }
            }
            ShardMsg::Deliver { deliveries, done } => {
                let _ = done.send(deliveries.iter().map(|d| self.deliver(d)).collect());
            }
            ShardMsg::Stats { reply } => {
                let _ = reply.send(self.report());
            }
            ShardMsg::AwaitDelivery { id, channel, reply } => match &self.backend.redis {
                Some(redis) => redis.await_delivery(id, &channel, reply),
                None => {
                    let _ = reply.send(0);
                }
            },
            ShardMsg::Lookup { target, reply } => {
                let _ = reply.send(self.hub.lookup(&target));
            }
            ShardMsg::Membership {
                room,
                user,
                join,
                reply,
            } => {
                let _ = reply.send(self.membership(&room, &user, join));
            }
            ShardMsg::History {
                channel,
                since,
                limit,
                reply,
            } => {
                let _ = reply.send(self.backend.local.history_since(&channel, since, limit));
            }
            ShardMsg::InboxTake { user, reply } => {
                let _ = reply.send(self.backend.local.inbox_take_owned(&user));
            }
            ShardMsg::InboxAck { user, seq } => self.backend.local.inbox_ack_owned(&user, seq),
            ShardMsg::SioPolling {
                sid,
                post,
                body,
                reply,
            } => socketio::on_mesh_polling(self, sid, post, body, reply),
            ShardMsg::SioUpgrade { sid, step, reply } => {
                socketio::on_mesh_upgrade(self, sid, step, reply)
            }
            ShardMsg::Receipt { id, reply } => {
                let receipt = self.hub.receipt(&id);
                let _ = reply.send((receipt.delivered, receipt.acked));
            }
        }
    }

    /// This shard's counters and health.
    pub fn report(&self) -> ShardReport {
        ShardReport {
            snapshot: self.ctx.metrics.snapshot(),
            redis_problem: self.backend.problem().or_else(|| {
                let catching_up = self.gaps.catching_up_count();
                (catching_up > 0).then(|| {
                    format!("catching up {catching_up} channel(s) from history after a reconnect")
                })
            }),
        }
    }

    /// Every shard's report, indexed by shard id. A shard that is gone reports zeros.
    pub async fn gather_reports(&self) -> Vec<ShardReport> {
        let local = self.report();
        self.ctx
            .peers
            .gather(|reply| ShardMsg::Stats { reply }, async { local }, None)
            .await
    }

    /// A user's connections or a room's members on every shard of this process.
    pub async fn gather_lookup(&self, target: &Target) -> Vec<Presence> {
        let local = self.hub.lookup(target);
        self.ctx
            .peers
            .gather(
                |reply| ShardMsg::Lookup {
                    target: target.clone(),
                    reply,
                },
                async { local },
                None,
            )
            .await
    }

    /// Standalone: every connection of `user` in this process joins or leaves `room`;
    /// returns how many connections changed.
    pub async fn gather_membership(self: &Rc<Self>, room: &str, user: &str, join: bool) -> u32 {
        let local = self.membership(room, user, join);
        let counts = self
            .ctx
            .peers
            .gather(
                |reply| ShardMsg::Membership {
                    room: room.to_string(),
                    user: user.to_string(),
                    join,
                    reply,
                },
                async { local },
                None,
            )
            .await;
        counts.iter().sum()
    }
}
