//! What a shard does for users and rooms: the per-connection operations behind client ops
//! and the HTTP API (join, leave, publish checks, acks, presence, server-side membership),
//! kept apart from `shard.rs`, which owns lifetimes and I/O.
//!
//! Everything here runs on the shard's thread with no borrow held across an await; a
//! publish is started as a task of its own.

use std::rc::Rc;

use bytes::Bytes;
use serde_json::json;

use crate::conn::ConnKey;
use crate::envelope::{PayloadKind, Target};
use crate::fanout;
use crate::index::Change;
use crate::mesh::{Presence, Publish};
use crate::metrics::Metrics;
use crate::protocol::native::{self, ErrorCode, Ref};
use crate::protocol::{self, check_name, Codec, Session};
use crate::shard::Shard;

/// An op refused: the code and the words the client gets.
pub type Refusal = (ErrorCode, String);

impl Shard {
    pub fn session_codec(&self, key: ConnKey) -> Option<Codec> {
        self.with_session(key, |s| s.codec)
    }

    /// Runs `f` on a live connection's session.
    pub fn with_session<R>(&self, key: ConnKey, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        let mut conns = self.conns_mut();
        let conn = conns.get_mut(key.index as usize)?;
        if conn.generation() != key.generation {
            return None;
        }
        Some(f(&mut conn.session))
    }

    /// Queues a frame (a reply) to one connection, under the same limits as any message.
    pub fn send_to_conn(&self, key: ConnKey, frame: Bytes) {
        let now_s = self.now();
        let limits = self.limits();
        let mut conns = self.conns_mut();
        if let Some(conn) = conns.get_mut(key.index as usize) {
            if conn.generation() == key.generation {
                conn.push(frame, limits, &self.metrics, now_s);
            }
        }
    }

    pub fn close_conn(&self, key: ConnKey, code: u16, reason: &str) {
        let now_s = self.now();
        let limits = self.limits();
        let mut conns = self.conns_mut();
        if let Some(conn) = conns.get_mut(key.index as usize) {
            if conn.generation() == key.generation {
                conn.close(code, reason, limits, now_s);
            }
        }
    }

    /// The member name presence counts a connection under: its user, or "" if anonymous.
    fn member_name(&self, key: ConnKey) -> String {
        self.with_session(key, |s| s.user.as_deref().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    /// Puts one connection in a room, or says why not.
    pub fn join_room(self: &Rc<Self>, key: ConnKey, room: &str) -> Result<(), Refusal> {
        check_name("room", room, self.config.name_bytes_max)
            .map_err(|e| (ErrorCode::BadField, e))?;
        let allowed = self
            .with_session(key, |s| s.claims.as_ref().is_none_or(|c| c.may_join(room)))
            .unwrap_or(false);
        if !allowed {
            return Err((
                ErrorCode::Forbidden,
                format!("your token does not allow joining room {room:?}"),
            ));
        }
        let max = self.config.rooms_per_connection_max;
        if self.index.borrow().rooms_of(key).len() >= max {
            return Err((
                ErrorCode::TooLarge,
                format!("already in {max} rooms (--rooms-per-connection-max); leave one first"),
            ));
        }
        self.join_unchecked(key, room);
        Ok(())
    }

    fn join_unchecked(self: &Rc<Self>, key: ConnKey, room: &str) -> bool {
        let change = self.index.borrow_mut().join(room, key);
        if change == Change::None {
            return false;
        }
        self.interest(&format!("room:{room}"), true);
        let member = self.member_name(key);
        self.presence_change(&format!("room:{room}"), &member, 1);
        self.room_event(room, &member, "join");
        true
    }

    pub fn leave_room(self: &Rc<Self>, key: ConnKey, room: &str) -> Result<(), Refusal> {
        if self.index.borrow_mut().leave(room, key) == Change::None {
            return Err((ErrorCode::NotFound, format!("not in room {room:?}")));
        }
        self.interest(&format!("room:{room}"), false);
        let member = self.member_name(key);
        self.presence_change(&format!("room:{room}"), &member, -1);
        self.room_event(room, &member, "leave");
        Ok(())
    }

    /// With `--room-events`, tells a room's members that someone joined or left: a message
    /// on the room's channel, `{"presence":"join"|"leave","user":<id or null>}`, sequenced
    /// like any other so it takes its place in history and recovery.
    pub fn room_event(self: &Rc<Self>, room: &str, member: &str, event: &str) {
        if !self.config.room_events {
            return;
        }
        let user = (!member.is_empty()).then_some(member);
        let publish = Publish {
            target: Target::Room(room.to_string()),
            id: self.next_message_id(),
            from: user.map(|u| format!("user:{u}")),
            kind: PayloadKind::Json,
            payload: Bytes::from(json!({ "presence": event, "user": user }).to_string()),
        };
        let shard = self.clone();
        glommio::spawn_local(async move {
            // Best effort: a lost presence event costs nobody a message.
            let _ = fanout::publish(&shard, publish).await;
        })
        .detach();
    }

    /// Every local connection of `user` joins (or leaves) `room`; returns how many changed.
    pub fn membership(self: &Rc<Self>, room: &str, user: &str, join: bool) -> u32 {
        let keys: Vec<ConnKey> = self.index.borrow().user_conns(user).to_vec();
        let mut changed = 0;
        for key in keys {
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
    pub fn apply_control(self: &Rc<Self>, target: &Target, payload: &[u8]) -> u32 {
        let Target::User(user) = target else {
            return 0;
        };
        let Ok(control) = serde_json::from_slice::<serde_json::Value>(payload) else {
            Metrics::inc(&self.metrics.redis_envelope_errors_total);
            return 0;
        };
        let (Some(op), Some(room)) = (control["op"].as_str(), control["room"].as_str()) else {
            Metrics::inc(&self.metrics.redis_envelope_errors_total);
            return 0;
        };
        match op {
            "join" => self.membership(room, user, true),
            "leave" => self.membership(room, user, false),
            _ => {
                Metrics::inc(&self.metrics.redis_envelope_errors_total);
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
        check_name(kind, name, self.config.name_bytes_max).map_err(|e| (ErrorCode::BadField, e))?;
        let now_ms = self.started_at.elapsed().as_millis().min(u32::MAX as u128) as u32;
        let (rate, burst) = (
            self.config.client_publish_rate,
            self.config.client_publish_burst,
        );
        let verdict = self.with_session(key, |s| {
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
    pub fn spawn_client_publish(
        self: &Rc<Self>,
        key: ConnKey,
        reference: Option<Ref>,
        target: Target,
        payload: Bytes,
    ) {
        let from = self.with_session(key, |s| s.from()).flatten();
        let publish = Publish {
            target,
            id: self.next_message_id(),
            from,
            kind: PayloadKind::Json,
            payload,
        };
        let shard = self.clone();
        glommio::spawn_local(async move {
            match fanout::publish(&shard, publish).await {
                Ok(published) => {
                    let result = json!({ "id": published.id, "seq": published.seq, "recipients": published.recipients });
                    shard.send_to_conn(key, native::encode_reply_ok(reference.as_ref(), Some(&result)));
                }
                Err(e) => {
                    protocol::reply_error(&shard, key, reference.as_ref(), ErrorCode::Internal, &e.to_string());
                }
            }
        })
        .detach();
    }

    /// Replies ok to a join, at once standalone, or once the Redis subscription to
    /// `channel` is confirmed in cluster mode (or after the broker's wait runs out, still ok:
    /// the membership holds and messages flow as soon as Redis confirms).
    pub fn reply_when_subscribed(
        self: &Rc<Self>,
        key: ConnKey,
        reference: Option<Ref>,
        channel: &str,
    ) {
        let Some(broker) = self.broker.clone() else {
            protocol::reply_ok(self, key, reference.as_ref(), None);
            return;
        };
        let channel = broker.channel(channel);
        if broker.is_subscribed(&channel) {
            protocol::reply_ok(self, key, reference.as_ref(), None);
            return;
        }
        let shard = self.clone();
        glommio::spawn_local(async move {
            broker.wait_subscribed(&[channel]).await;
            protocol::reply_ok(&shard, key, reference.as_ref(), None);
        })
        .detach();
    }

    /// Counts a client's ack of (channel, seq); false when no recent message matches.
    /// In cluster mode the count also goes to the message's receipt in Redis.
    pub fn ack(self: &Rc<Self>, key: ConnKey, target: &Target, seq: u64) -> bool {
        // An ack on the client's own user channel also clears that message from its
        // offline inbox (it may have come from there, with no receipt on this shard).
        let own_inbox = match target {
            Target::User(user) => self
                .with_session(key, |s| s.user.as_deref() == Some(user.as_str()))
                .unwrap_or(false),
            _ => false,
        };
        if let (true, Target::User(user)) = (own_inbox, target) {
            self.inbox_ack(user, seq);
        }
        let mut receipts = self.receipts.borrow_mut();
        let Some(id) = receipts.ack(&target.to_string(), seq) else {
            return own_inbox;
        };
        self.receipt_change(id, "acked", 1);
        true
    }

    /// A connection may recover `all`, its own user channel, and rooms it is in.
    pub fn may_recover(&self, key: ConnKey, target: &Target) -> Result<(), Refusal> {
        let allowed = match target {
            Target::All => true,
            Target::User(user) => self
                .with_session(key, |s| s.user.as_deref() == Some(user.as_str()))
                .unwrap_or(false),
            Target::Room(room) => self
                .index
                .borrow()
                .rooms_of(key)
                .iter()
                .any(|r| &**r == room),
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

    /// Cluster mode: adds to a message's receipt counters in Redis
    /// (`{prefix}:receipt:<id>`, fields `delivered` and `acked`), kept for the retention window.
    pub fn receipt_change(&self, id: &str, field: &str, delta: u32) {
        if let Some(broker) = &self.broker {
            let key = broker.channel(&format!("receipt:{id}"));
            let delta = delta.to_string();
            let ttl = crate::config::RECEIPT_RETENTION_S.to_string();
            broker.command_detached(&[
                b"HINCRBY",
                key.as_bytes(),
                field.as_bytes(),
                delta.as_bytes(),
            ]);
            broker.command_detached(&[b"EXPIRE", key.as_bytes(), ttl.as_bytes()]);
        }
    }

    /// Standalone: the next sequence number of a channel this shard owns.
    pub fn next_seq(&self, target: &Target) -> u64 {
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

    pub fn sequencer(&self) -> &glommio::sync::Semaphore {
        &self.sequencer
    }

    /// A user's connections or a room's members on this shard.
    pub fn lookup(&self, target: &Target) -> Presence {
        let index = self.index.borrow();
        match target {
            Target::User(user) => Presence {
                connections: index.user_conns(user).len() as u32,
                users: Vec::new(),
            },
            Target::Room(room) => {
                let keys = index.room_conns(room);
                let conns = self.conns_ref();
                let mut users: Vec<String> = keys
                    .iter()
                    .filter_map(|k| conns.get(k.index as usize))
                    .filter_map(|c| c.session.user.as_deref().map(str::to_string))
                    .collect();
                users.sort_unstable();
                users.dedup();
                Presence {
                    connections: keys.len() as u32,
                    users,
                }
            }
            Target::All => Presence {
                connections: self.connection_count() as u32,
                users: Vec::new(),
            },
        }
    }

    /// Cluster mode: tells Redis a presence counter moved (`{prefix}:presence:<channel>`,
    /// field = node for users, member for rooms). Fire and forget: presence is advisory.
    pub fn presence_change(&self, channel: &str, field: &str, delta: i64) {
        if let Some(broker) = &self.broker {
            let key = broker.channel(&format!("presence:{channel}"));
            // Room members are counted per node, so a crashed node's members can be told
            // apart (and dropped) once its heartbeat key expires.
            let field = if channel.starts_with("room:") {
                format!("{}|{field}", self.node_id())
            } else {
                field.to_string()
            };
            let delta = delta.to_string();
            broker.command_detached(&[
                b"HINCRBY",
                key.as_bytes(),
                field.as_bytes(),
                delta.as_bytes(),
            ]);
        }
    }

    /// Cluster mode: a local connection's interest in a Redis channel moved.
    pub(crate) fn interest(&self, channel: &str, add: bool) {
        if let Some(broker) = &self.broker {
            let channel = broker.channel(channel);
            if add {
                broker.interest_add(&channel);
            } else {
                broker.interest_remove(&channel);
            }
        }
    }
}
