//! The data plane of one shard: connections by key, delivery of a message into their
//! queues (each codec's frame encoded once), the user/room index, the recovery seam that
//! holds live messages back during a replay, the receipts of what was delivered, and each
//! channel's position here (the last numbered message delivered, for socket.io hand-overs).
//!
//! No Redis, no wire format beyond "this codec encodes this message" (`frames`), and no
//! I/O of its own: a connection's socket is read and written only inside `Conn::poll`,
//! which the shard's per-connection task calls through [`Hub::poll`]. Nothing here spawns
//! or sleeps. Built by `shard`; used by `services`, `backend::local` (local delivery),
//! `protocol` and `front` (inserting an upgraded connection).

pub mod frames;
pub mod index;
pub mod polling;
pub mod positions;
pub mod receipts;

pub mod session;
pub mod sockets;
/// The user of an indexed connection, whatever its transport: a polling session's key
/// (`POLL_BIT` set) names the polling slab, not the connection slab, so reading `conns`
/// alone would call every long-polling member anonymous.
fn user_of<'a>(
    conns: &'a Slab<Conn<Session>>,
    polls: &'a Slab<Polling>,
    key: ConnKey,
) -> Option<&'a str> {
    let session = if key.index & POLL_BIT != 0 {
        let poll = polls.get((key.index & !POLL_BIT) as usize)?;
        (poll.generation == key.generation).then_some(&poll.session)?
    } else {
        let conn = conns.get(key.index as usize)?;
        (conn.generation() == key.generation).then_some(&conn.session)?
    };
    session.user.as_deref()
}

#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use glommio::net::TcpStream;
use slab::Slab;

use crate::auth::Claims;
use crate::config::WRITE_SCRATCH_BYTES;
use crate::config::{READ_SCRATCH_BYTES, RECEIPTS_PER_SHARD_MAX, RECEIPT_RETENTION_S};
use crate::conn::Inbound;
use crate::conn::{Conn, ConnKey, ConnLimits, ConnState, PollEnv, ShardDeflate, Wire};
use crate::ctx::Ctx;
use crate::envelope::Target;
use crate::mesh::{Delivery, Presence};
use crate::metrics::Metrics;
use crate::protocol::socketio::engineio::Sid;
use crate::protocol::socketio::session::socket_owner;
use crate::protocol::Codec;
use crate::seam::Admit;
use crate::ws::frame::{self, close_code, OpCode};
use frames::Frames;
use index::{Change, Index};
use polling::{Polling, POLL_BIT};
use receipts::{Receipt, Receipts};
pub use session::Session;

// The slab holds one per connection: keep it small (the budget is summed in conn.rs).
const _: () = assert!(std::mem::size_of::<Conn<Session>>() <= 256);

/// At most one log line about slow consumers per this many seconds.
const SLOW_LOG_INTERVAL_S: u32 = 10;
/// Most connections a shard reserves slab room for at start (address space, not RSS).
const SLAB_RESERVE_MAX: usize = 1 << 20;

pub struct Hub {
    ctx: Rc<Ctx>,
    conns: RefCell<Slab<Conn<Session>>>,
    /// socket.io long-polling sessions: keys with `polling::POLL_BIT` set index this slab.
    polls: RefCell<Slab<Polling>>,
    /// Polling sessions by sid, for requests (which name the sid, not the key).
    poll_sids: RefCell<std::collections::HashMap<Sid, ConnKey>>,
    next_generation: Cell<u32>,
    /// Every socket read on this shard lands here first; connections own no read buffer.
    read_buf: RefCell<Box<[u8]>>,
    /// Queued frames of one connection are joined here into one send.
    write_buf: RefCell<Box<[u8]>>,
    limits: ConnLimits,
    /// One empty Ping, encoded once and shared by every connection at every ping round.
    ping_frame: Bytes,
    /// The Engine.IO ping (`2` in a text frame) socket.io connections get instead.
    sio_ping_frame: Bytes,
    /// Who is connected as which user and in which rooms, on this shard.
    index: RefCell<Index>,
    receipts: RefCell<Receipts>,
    /// Where each channel is on this shard (the last numbered message delivered here): what
    /// a socket.io session handed to another shard says it has had.
    positions: RefCell<positions::Positions>,
    /// Slow-consumer closes already logged, and when: one log line per interval at most.
    slow_logged: Cell<(u64, u32)>,
    /// permessage-deflate for every connection of this shard: one compressor (allocated on
    /// first use), one inflater; no per-connection deflate state.
    deflate: RefCell<ShardDeflate>,
}

/// What a removed connection leaves behind, for the services to update interest,
/// presence and room events.
pub struct Removed {
    pub session: Session,
    /// Rooms it was in, with whether it was the last local member.
    pub rooms: Vec<(Rc<str>, Change)>,
    /// Whether it was its user's last local connection.
    pub user_change: Change,
}

impl Hub {
    pub fn new(ctx: Rc<Ctx>) -> Hub {
        let config = &ctx.config;
        let slab_reserve = config
            .max_connections
            .div_ceil(config.shards)
            .min(SLAB_RESERVE_MAX);
        let limits = ConnLimits {
            outbound_frames_max: config.outbound_frames_max,
            outbound_bytes_max: config.outbound_bytes_max,
            decode: frame::Limits {
                message_bytes_max: config.message_bytes_max,
                message_fragments_max: config.message_fragments_max,
            },
            close_timeout_s: config.close_timeout.as_secs().max(1) as u32,
        };
        Hub {
            // Reserved for this shard's share of --max-connections up front: the pages are
            // only touched (and resident) as connections arrive, and the slab never moves,
            // so there is no doubling copy, and no freed old array left behind in RSS.
            conns: RefCell::new(Slab::with_capacity(slab_reserve)),
            polls: RefCell::new(Slab::new()),
            poll_sids: RefCell::new(std::collections::HashMap::new()),
            next_generation: Cell::new(0),
            read_buf: RefCell::new(vec![0; READ_SCRATCH_BYTES].into_boxed_slice()),
            write_buf: RefCell::new(vec![0; WRITE_SCRATCH_BYTES].into_boxed_slice()),
            limits,
            ping_frame: frame::encode(OpCode::Ping, &[]),
            sio_ping_frame: frame::encode(OpCode::Text, b"2"),
            index: RefCell::new(Index::default()),
            receipts: RefCell::new(Receipts::new(RECEIPTS_PER_SHARD_MAX, RECEIPT_RETENTION_S)),
            positions: RefCell::new(positions::Positions::default()),
            slow_logged: Cell::new((0, 0)),
            deflate: RefCell::new(ShardDeflate::new(
                config.wire.compression_level,
                config.wire.compression_min_bytes,
            )),
            ctx,
        }
    }

    /// The shard-wide read buffer: borrow it only inside one poll, never across an await.
    pub fn scratch(&self) -> &RefCell<Box<[u8]>> {
        &self.read_buf
    }

    /// Open and closing connections on this shard.
    pub fn len(&self) -> usize {
        self.conns.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes an upgraded socket in. `early` holds bytes the client sent right behind its
    /// upgrade request; they are decoded now and their messages returned for dispatch. The
    /// user (if any) is indexed; returns whether this was the user's first local connection.
    pub fn insert(
        &self,
        stream: TcpStream,
        early: &mut [u8],
        wire: Wire,
        session: Session,
    ) -> (ConnKey, Vec<Inbound>, Change) {
        let now_s = self.ctx.now_s();
        let generation = self.next_generation.get();
        self.next_generation.set(generation.wrapping_add(1));
        let user = session.user.clone();
        let mut conn = Conn::new(stream, generation, now_s, wire, session);
        let mut inbound = Vec::new();
        if !early.is_empty() {
            let mut deflate = self.deflate.borrow_mut();
            conn.on_input(
                early,
                &self.limits,
                &self.ctx.metrics,
                now_s,
                &mut inbound,
                &mut deflate,
            );
        }
        let index = self.conns.borrow_mut().insert(conn);
        let key = ConnKey {
            index: index as u32,
            generation,
        };
        let change = match &user {
            Some(user) => self.index.borrow_mut().add_user(user, key).1,
            None => Change::None,
        };
        Metrics::inc(&self.ctx.metrics.connections);
        Metrics::inc(&self.ctx.metrics.upgrades_total);
        (key, inbound, change)
    }

    /// Takes a finished connection out of the slab and the index. None for a stale key.
    pub fn remove(&self, key: ConnKey) -> Option<Removed> {
        if key.index & POLL_BIT != 0 {
            return self.remove_polling(key);
        }
        let mut conns = self.conns.borrow_mut();
        let matches = conns
            .get(key.index as usize)
            .is_some_and(|c| c.generation() == key.generation);
        if !matches {
            return None;
        }
        // Dropping the Conn closes the socket.
        let conn = conns.remove(key.index as usize);
        drop(conns);
        self.unindex(key, conn.into_session())
    }

    /// Takes a removed connection's key out of the index and the count.
    fn unindex(&self, key: ConnKey, session: Session) -> Option<Removed> {
        let mut index = self.index.borrow_mut();
        let user_change = match &session.user {
            Some(user) => index.remove_user(user, key),
            None => Change::None,
        };
        let rooms = index.leave_all(key);
        drop(index);
        let open = self.ctx.metrics.connections.get();
        debug_assert!(open > 0);
        self.ctx.metrics.connections.set(open - 1);
        Metrics::inc(&self.ctx.metrics.disconnects_total);
        Some(Removed {
            session,
            rooms,
            user_change,
        })
    }

    /// Takes a polling session in (a socket.io polling handshake); its key, for the
    /// services to subscribe and count it like any connection.
    pub fn insert_polling(&self, sid: Sid, session: Session) -> ConnKey {
        let now_s = self.ctx.now_s();
        let generation = self.next_generation.get();
        self.next_generation.set(generation.wrapping_add(1));
        let user = session.user.clone();
        let index = self
            .polls
            .borrow_mut()
            .insert(Polling::new(generation, sid, session, now_s));
        let key = ConnKey {
            index: index as u32 | POLL_BIT,
            generation,
        };
        self.poll_sids.borrow_mut().insert(sid, key);
        if let Some(user) = &user {
            self.index.borrow_mut().add_user(user, key);
        }
        Metrics::inc(&self.ctx.metrics.connections);
        key
    }

    /// The key of this shard's polling session `sid`.
    pub fn polling_key(&self, sid: &Sid) -> Option<ConnKey> {
        self.poll_sids.borrow().get(sid).copied()
    }

    /// Polling sessions on this shard.
    pub fn polling_len(&self) -> usize {
        self.polls.borrow().len()
    }

    /// Runs `f` on a live polling session.
    pub fn with_polling<R>(&self, key: ConnKey, f: impl FnOnce(&mut Polling) -> R) -> Option<R> {
        let mut polls = self.polls.borrow_mut();
        let poll = polls.get_mut((key.index & !POLL_BIT) as usize)?;
        if poll.generation != key.generation || key.index & POLL_BIT == 0 {
            return None;
        }
        Some(f(poll))
    }

    fn remove_polling(&self, key: ConnKey) -> Option<Removed> {
        let mut polls = self.polls.borrow_mut();
        let at = (key.index & !POLL_BIT) as usize;
        if polls.get(at).is_none_or(|p| p.generation != key.generation) {
            return None;
        }
        let mut poll = polls.remove(at);
        drop(polls);
        poll.close();
        self.poll_sids.borrow_mut().remove(&poll.sid);
        self.unindex(key, poll.session)
    }

    /// Polling sessions that are closed, or idle past the socket.io ping timeout: the
    /// sweep removes them and the services say goodbye for them.
    pub fn expired_polling(&self, now_s: u32) -> Vec<ConnKey> {
        let idle_s = self.ctx.config.socketio.idle_timeout_s();
        self.polls
            .borrow()
            .iter()
            .filter(|(_, p)| {
                let connect_late =
                    p.session.sio.as_ref().is_some_and(|s| {
                        s.connect_deadline_s != 0 && now_s >= s.connect_deadline_s
                    });
                p.closed
                    || connect_late
                    || (!p.getting && now_s.saturating_sub(p.last_rx_s) >= idle_s)
            })
            .map(|(i, p)| ConnKey {
                index: i as u32 | POLL_BIT,
                generation: p.generation,
            })
            .collect()
    }

    /// Polls one connection's socket (read, write, close handshake). Client data messages
    /// read in this poll land in `inbound`, to be handled with no borrow held.
    pub fn poll(&self, key: ConnKey, cx: &mut Context<'_>, inbound: &mut Vec<Inbound>) -> Poll<()> {
        let mut conns = self.conns.borrow_mut();
        let Some(conn) = conns.get_mut(key.index as usize) else {
            return Poll::Ready(());
        };
        if conn.generation() != key.generation {
            return Poll::Ready(());
        }
        let mut read_buf = self.read_buf.borrow_mut();
        let mut write_buf = self.write_buf.borrow_mut();
        let mut deflate = self.deflate.borrow_mut();
        let mut env = PollEnv {
            deflate: &mut deflate,
            read_buf: &mut read_buf,
            write_buf: &mut write_buf,
            limits: &self.limits,
            metrics: &self.ctx.metrics,
            now_s: self.ctx.now_s(),
            inbound,
        };
        conn.poll(cx, &mut env)
    }

    /// Runs `f` on a live connection's session.
    pub fn with_session<R>(&self, key: ConnKey, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        if key.index & POLL_BIT != 0 {
            return self.with_polling(key, |p| f(&mut p.session));
        }
        let mut conns = self.conns.borrow_mut();
        let conn = conns.get_mut(key.index as usize)?;
        if conn.generation() != key.generation {
            return None;
        }
        Some(f(&mut conn.session))
    }

    pub fn codec(&self, key: ConnKey) -> Option<Codec> {
        self.with_session(key, |s| s.codec)
    }

    /// Queues a frame (a reply, a replayed message) to one connection, under the same
    /// limits as any message.
    pub fn send(&self, key: ConnKey, frame: Bytes) {
        if key.index & POLL_BIT != 0 {
            let (frames_max, bytes_max) = self.polling_limits();
            self.with_polling(key, |p| p.push(frame, frames_max, bytes_max));
            return;
        }
        let now_s = self.ctx.now_s();
        let mut conns = self.conns.borrow_mut();
        if let Some(conn) = conns.get_mut(key.index as usize) {
            if conn.generation() == key.generation {
                conn.push(frame, &self.limits, &self.ctx.metrics, now_s);
            }
        }
    }

    /// Starts closing one connection with a close code.
    pub fn close(&self, key: ConnKey, code: u16, reason: &str) {
        if key.index & POLL_BIT != 0 {
            self.with_polling(key, Polling::close);
            return;
        }
        let now_s = self.ctx.now_s();
        let mut conns = self.conns.borrow_mut();
        if let Some(conn) = conns.get_mut(key.index as usize) {
            if conn.generation() == key.generation {
                conn.close(code, reason, &self.limits, now_s);
            }
        }
    }

    /// Frames queued to an open connection; None once it is gone or closing.
    pub fn queued_frames(&self, key: ConnKey) -> Option<usize> {
        if key.index & POLL_BIT != 0 {
            return self
                .with_polling(key, |p| (!p.closed).then_some(p.outbox.len()))
                .flatten();
        }
        self.conns
            .borrow()
            .get(key.index as usize)
            .filter(|c| c.generation() == key.generation && c.is_open())
            .map(|c| c.queued_frames())
    }

    /// Queues a delivery to the local recipients of its target, each connection getting the
    /// frame of its codec (encoded once per delivery), and records its receipt; returns how
    /// many connections it was queued to.
    pub fn deliver(&self, delivery: &Delivery) -> u32 {
        let metrics = &self.ctx.metrics;
        Metrics::inc(&metrics.broadcasts_total);
        let now_s = self.ctx.now_s();
        if let Some(seq) = delivery.seq {
            // Before any recipient gets it: a session handed over after this call carries
            // a position that says it had this message.
            self.positions
                .borrow_mut()
                .note(&delivery.publish.target, seq, delivery.epoch, now_s);
        }
        let mut frames = Frames::new(delivery);
        let mut queued = 0;
        let mut conns = self.conns.borrow_mut();
        let mut channel: Option<String> = None;
        let limits = &self.limits;
        let mut deflate = self.deflate.borrow_mut();
        let mut push = |conn: &mut Conn<Session>| {
            // Conformance echo connections take part in no delivery.
            if conn.wire().echo {
                return;
            }
            // A socket.io client gets nothing before it has connected a namespace (its
            // library would hold the packet and hand it over after the connect).
            if conn
                .session
                .sio
                .as_ref()
                .is_some_and(|s| s.is_unconnected())
            {
                return;
            }
            let frame = frames.for_conn(conn.session.codec, conn.wire(), &mut deflate, metrics);
            if let Some(recovering) = conn.session.recovering.as_mut() {
                let channel = channel.get_or_insert_with(|| delivery.publish.target.to_string());
                match recovering.admit(channel, delivery.seq, &frame) {
                    Admit::Pass => {}
                    Admit::Held => {
                        queued += 1;
                        return;
                    }
                    Admit::Duplicate => return,
                    Admit::Overflow => {
                        Metrics::inc(&metrics.slow_consumer_closes_total);
                        conn.close(
                            close_code::POLICY,
                            "slow consumer: too much held during recovery",
                            limits,
                            now_s,
                        );
                        return;
                    }
                }
            }
            if conn.push(frame, limits, metrics, now_s) {
                queued += 1;
            }
        };
        let index = self.index.borrow();
        let mut polls = self.polls.borrow_mut();
        // Polling sessions of a user or room (a broadcast walks the whole polling slab).
        let mut poll_keys = Vec::new();
        let all = matches!(delivery.publish.target, Target::All);
        let keys = match &delivery.publish.target {
            Target::All => {
                for (_, conn) in conns.iter_mut() {
                    push(conn);
                }
                &[][..]
            }
            Target::User(user) => index.user_conns(user),
            Target::Room(room) => {
                // A socket.io socket id names its connection (no index entry).
                let socket =
                    socket_owner(room).filter(|owner| usize::from(owner.shard) == self.ctx.id);
                if let Some(owner) = socket {
                    let owns = |session: &Session| {
                        session.sio.as_ref().is_some_and(|s| {
                            s.sockets.iter().any(|(_, id)| id.as_str() == room.as_str())
                        })
                    };
                    if owner.index & POLL_BIT != 0 {
                        let at = (owner.index & !POLL_BIT) as usize;
                        if let Some(p) = polls.get(at) {
                            if owner.matches(owner.index, p.generation) && owns(&p.session) {
                                poll_keys.push(ConnKey {
                                    index: owner.index,
                                    generation: p.generation,
                                });
                            }
                        }
                    } else if let Some(conn) = conns.get_mut(owner.index as usize) {
                        if owner.matches(owner.index, conn.generation()) && owns(&conn.session) {
                            push(conn);
                        }
                    }
                }
                index.room_conns(room)
            }
        };
        for key in keys {
            if key.index & POLL_BIT != 0 {
                poll_keys.push(*key);
                continue;
            }
            if let Some(conn) = conns.get_mut(key.index as usize) {
                if conn.generation() == key.generation {
                    push(conn);
                }
            }
        }
        drop(index);
        drop(conns);
        drop(deflate);
        // Polling sessions: the same frames, queued for their next GET, through the same
        // recovery seam as connections (a replay holds live messages back, then drops late
        // duplicates), so a client resuming on polling also gets each message once, in order.
        let (frames_max, bytes_max) = self.polling_limits();
        let mut push_poll = |poll: &mut Polling| {
            if poll.session.sio.as_ref().is_none_or(|s| s.is_unconnected()) {
                return;
            }
            let frame = frames.for_codec(poll.session.codec);
            if let Some(recovering) = poll.session.recovering.as_mut() {
                let channel = channel.get_or_insert_with(|| delivery.publish.target.to_string());
                match recovering.admit(channel, delivery.seq, &frame) {
                    Admit::Pass => {}
                    Admit::Held => {
                        queued += 1;
                        return;
                    }
                    Admit::Duplicate => return,
                    Admit::Overflow => {
                        // As for a connection: a slow consumer; the sweep removes it.
                        Metrics::inc(&metrics.slow_consumer_closes_total);
                        poll.close();
                        return;
                    }
                }
            }
            if poll.push(frame, frames_max, bytes_max) {
                queued += 1;
            }
        };
        if all {
            for (_, poll) in polls.iter_mut() {
                push_poll(poll);
            }
        }
        for key in poll_keys {
            match polls.get_mut((key.index & !POLL_BIT) as usize) {
                Some(poll) if poll.generation == key.generation => push_poll(poll),
                _ => {}
            }
        }
        drop(polls);
        Metrics::add(&metrics.frames_encoded_total, frames.encoded() as u64);
        // Receipts only where something was delivered: a shard with no recipient keeps no
        // entry (the table is bounded, and empty entries would evict real ones).
        if let (Some(seq), true) = (delivery.seq, queued > 0) {
            let channel = channel.unwrap_or_else(|| delivery.publish.target.to_string());
            self.receipts
                .borrow_mut()
                .record(&delivery.publish.id, &channel, seq, queued, now_s);
        }
        queued
    }

    /// Puts a connection in a room; `Change::None` when it already was.
    pub fn join(&self, room: &str, key: ConnKey) -> Change {
        self.index.borrow_mut().join(room, key)
    }

    /// Takes a connection out of a room; `Change::None` when it was not in.
    pub fn leave(&self, room: &str, key: ConnKey) -> Change {
        self.index.borrow_mut().leave(room, key)
    }

    /// Gives a connection that had no user one (a socket.io CONNECT names it after the
    /// upgrade); false when it is gone or already has a user.
    pub fn set_user(&self, key: ConnKey, user: Rc<str>, claims: Option<Rc<Claims>>) -> bool {
        let named = self
            .with_session(key, |s| {
                if s.user.is_some() {
                    return false;
                }
                s.user = Some(user.clone());
                s.claims = claims;
                true
            })
            .unwrap_or(false);
        if named {
            self.index.borrow_mut().add_user(&user, key);
        }
        named
    }

    /// The rooms a connection is in.
    pub fn rooms_of(&self, key: ConnKey) -> Vec<Rc<str>> {
        self.index.borrow().rooms_of(key).to_vec()
    }

    pub fn room_count_of(&self, key: ConnKey) -> usize {
        self.index.borrow().rooms_of(key).len()
    }

    pub fn is_in_room(&self, key: ConnKey, room: &str) -> bool {
        self.index
            .borrow()
            .rooms_of(key)
            .iter()
            .any(|r| &**r == room)
    }

    /// The local connections of a user.
    pub fn user_conns(&self, user: &str) -> Vec<ConnKey> {
        self.index.borrow().user_conns(user).to_vec()
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
                let (conns, polls) = (self.conns.borrow(), self.polls.borrow());
                let mut users: Vec<String> = keys
                    .iter()
                    .filter_map(|&k| user_of(&conns, &polls, k).map(str::to_string))
                    .collect();
                users.sort_unstable();
                users.dedup();
                Presence {
                    connections: keys.len() as u32,
                    users,
                }
            }
            // Every connection receives `all`, long-polling sessions included.
            Target::All => Presence {
                connections: (self.len() + self.polling_len()) as u32,
                users: Vec::new(),
            },
        }
    }

    /// Every presence count this shard holds: (`user:<id>`, "", connections) per user and
    /// (`room:<name>`, member, connections) per room member ("" for anonymous members).
    pub fn presence_counts(&self) -> Vec<(String, String, u32)> {
        let index = self.index.borrow();
        let (conns, polls) = (self.conns.borrow(), self.polls.borrow());
        let mut out = Vec::new();
        for (user, keys) in index.users() {
            out.push((format!("user:{user}"), String::new(), keys.len() as u32));
        }
        for (room, keys) in index.rooms() {
            let mut members: std::collections::HashMap<&str, u32> =
                std::collections::HashMap::new();
            for &key in keys {
                let member = user_of(&conns, &polls, key).unwrap_or("");
                *members.entry(member).or_insert(0) += 1;
            }
            for (member, count) in members {
                out.push((format!("room:{room}"), member.to_string(), count));
            }
        }
        out
    }

    /// Counts a client's ack of (channel, seq); the acked message's id, or None when no
    /// recent message here matches.
    pub fn ack(&self, channel: &str, seq: u64) -> Option<String> {
        self.receipts
            .borrow_mut()
            .ack(channel, seq)
            .map(str::to_string)
    }

    /// (delivered, acked) of a message on this shard.
    pub fn receipt(&self, id: &str) -> Receipt {
        self.receipts.borrow().get(id).unwrap_or_default()
    }

    /// One pass over the slab: pings every open connection when `ping_due` (socket.io
    /// connections when `sio_ping_due`, with an Engine.IO ping), closes idle ones and
    /// socket.io ones that never connected a namespace, cuts off closing ones past their
    /// deadline and ends finished recoveries. One pass replaces a timer per connection.
    pub fn sweep(&self, now_s: u32, ping_due: bool, sio_ping_due: bool) {
        self.log_slow_consumers(now_s);
        let idle_s = self.ctx.config.idle_timeout_s;
        let sio_idle_s = self.ctx.config.socketio.idle_timeout_s();
        if sio_ping_due {
            self.ping_polling();
        }
        let metrics = &self.ctx.metrics;
        for (_, poll) in self.polls.borrow_mut().iter_mut() {
            if let Some(recovering) = poll.session.recovering.as_mut() {
                if recovering.expire(now_s) {
                    poll.session.recovering = None;
                }
            }
        }
        for (_, conn) in self.conns.borrow_mut().iter_mut() {
            if let Some(recovering) = conn.session.recovering.as_mut() {
                if recovering.expire(now_s) {
                    conn.session.recovering = None;
                }
            }
            let (idle_s, ping_due, ping_frame, connect_late) = match &conn.session.sio {
                None => (idle_s, ping_due, &self.ping_frame, false),
                Some(sio) => (
                    sio_idle_s,
                    sio_ping_due,
                    &self.sio_ping_frame,
                    sio.connect_deadline_s != 0 && now_s >= sio.connect_deadline_s,
                ),
            };
            match conn.state() {
                ConnState::Open if now_s.saturating_sub(conn.last_rx_s()) >= idle_s => {
                    Metrics::inc(&metrics.idle_closes_total);
                    conn.close(close_code::GOING_AWAY, "idle timeout", &self.limits, now_s);
                }
                ConnState::Open if connect_late => {
                    Metrics::inc(&metrics.idle_closes_total);
                    conn.close(
                        close_code::POLICY,
                        "socket.io connect timeout",
                        &self.limits,
                        now_s,
                    );
                }
                ConnState::Open if ping_due && !conn.wire().echo => {
                    conn.push(ping_frame.clone(), &self.limits, metrics, now_s);
                }
                ConnState::Open => {}
                ConnState::Dead => {}
                _ if now_s >= conn.deadline_s() => conn.kill(),
                _ => {}
            }
        }
    }

    /// Says in the log that slow consumers were closed since the last line: one line per
    /// `SLOW_LOG_INTERVAL_S` at most, however many there were (a stalled network would
    /// otherwise write one line per client).
    fn log_slow_consumers(&self, now_s: u32) {
        let (logged, at_s) = self.slow_logged.get();
        let closed = self.ctx.metrics.slow_consumer_closes_total.get();
        if closed > logged && (logged == 0 || now_s >= at_s + SLOW_LOG_INTERVAL_S) {
            self.slow_logged.set((closed, now_s));
            crate::log!(
                warn,
                Some(self.ctx.id),
                "closed {} slow consumer(s) with 1008 (outbound queue past --outbound-frames-max {} or --outbound-bytes-max {}); each gets its close frame after what was already sent, then up to {} s before the connection is reset",
                closed - logged,
                self.limits.outbound_frames_max,
                self.limits.outbound_bytes_max,
                self.limits.close_timeout_s
            );
        }
    }

    fn polling_limits(&self) -> (usize, usize) {
        (
            self.limits.outbound_frames_max,
            self.limits.outbound_bytes_max,
        )
    }

    /// Pings every polling session (they are pinged like socket.io sockets).
    pub fn ping_polling(&self) {
        let (frames_max, bytes_max) = self.polling_limits();
        for (_, poll) in self.polls.borrow_mut().iter_mut() {
            poll.push(self.sio_ping_frame.clone(), frames_max, bytes_max);
        }
    }

    /// Expires old receipts and channel positions (the sweep's every-second part).
    pub fn expire_receipts(&self, now_s: u32) {
        self.receipts.borrow_mut().expire(now_s);
        self.positions
            .borrow_mut()
            .expire(now_s, self.ctx.config.history_ttl_s);
    }

    /// Where `target` is on this shard: the last numbered message delivered here (None
    /// when none was within the history TTL).
    pub fn position(&self, target: &Target) -> Option<positions::Position> {
        self.positions.borrow().get(target)
    }

    /// The frames queued to a connection, oldest first (tests look at what was delivered).
    #[cfg(test)]
    pub fn queued(&self, key: ConnKey) -> Vec<Bytes> {
        self.conns
            .borrow()
            .get(key.index as usize)
            .filter(|c| c.generation() == key.generation)
            .map(|c| c.queued())
            .unwrap_or_default()
    }

    /// Queues a close frame to every open connection.
    pub fn close_all(&self, code: u16, reason: &str) {
        let now_s = self.ctx.now_s();
        for (_, conn) in self.conns.borrow_mut().iter_mut() {
            conn.close(code, reason, &self.limits, now_s);
        }
    }
}
