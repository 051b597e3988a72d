//! Everything that crosses threads: the shard-to-shard messages (`ShardMsg`), the glommio
//! channel mesh that carries them, and the few process-wide atomics (`Shared`).
//!
//! This is the ONLY module whose types are `Send`; every other module is shard-local
//! (`Rc`, `Cell`, `RefCell`). Reading this file tells you everything that moves between cores.
//! `shard` joins the mesh and serves what arrives; every service sends through [`Peers`],
//! whose [`Peers::gather`] is the one scatter-gather over the shards.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::{GlommioError, ResourceType};

use crate::envelope::{PayloadKind, Target};
use crate::metrics::Snapshot;

/// A message published to a target, before it has a sequence number.
#[derive(Debug, Clone)]
pub struct Publish {
    pub target: Target,
    /// Unique in the cluster: `<node>-<shard>-<counter>`.
    pub id: String,
    /// `user:<id>` of a publishing client; None for the HTTP API.
    pub from: Option<String>,
    /// The event name clients receive it as; None for the default, `message`
    /// (checked by `envelope::event_name`).
    pub event: Option<String>,
    pub kind: PayloadKind,
    pub payload: Bytes,
}

/// A message ready for local delivery on every shard: sequenced (when known).
#[derive(Debug)]
pub struct Delivery {
    pub publish: Publish,
    /// The channel sequence number; None for messages from foreign publishers and for
    /// `?scope=local` publishes in cluster mode (they are not part of the numbered stream).
    pub seq: Option<u64>,
    /// The epoch of the channel's numbering `seq` belongs to.
    pub epoch: Option<u64>,
}

/// One stored message of a channel's history or a user's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub id: String,
    pub from: Option<String>,
    /// The event name it was published with, so a replay re-emits it under that name.
    pub event: Option<String>,
    pub kind: PayloadKind,
    pub payload: Bytes,
}

/// What a history lookup found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// Messages after the requested seq, oldest first.
    pub messages: Vec<Stored>,
    /// The channel's latest seq (0 when nothing was ever published).
    pub current: u64,
    /// False when messages after the requested seq are no longer all kept (the gap is older
    /// than the history): the application should refetch.
    pub complete: bool,
    /// The epoch of the channel's numbering (None when it has never been numbered).
    pub epoch: Option<u64>,
}

/// Who a user or room is, as one shard sees it.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    /// Connections of the user, or members of the room, on that shard.
    pub connections: u32,
    /// Room only: users with at least one connection in the room (anonymous ones excluded).
    pub users: Vec<String>,
}

/// socket.io: the answer to a polling request, made on the session's owner shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SioReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// socket.io: a polling session handed over to the shard of its new WebSocket at the end
/// of an upgrade: who it is, its rooms and namespace sockets, and what it had not fetched.
#[derive(Debug, Default)]
pub struct SioSnapshot {
    pub user: Option<String>,
    pub claims: Option<crate::auth::Claims>,
    pub rooms: Vec<String>,
    pub sockets: Vec<(u8, crate::protocol::socketio::engineio::Sid)>,
    /// The namespace its pushes went out on.
    pub codec_nsp: u8,
    /// Frames queued for its next GET (WebSocket frames, as every codec makes them).
    pub queued: Vec<Bytes>,
    /// The handshake headers a connect hook may see (`--app-webhook` only).
    pub headers: Option<Box<[(String, String)]>>,
    /// Its recovery state: replays (`recover`, `join` with `since`) still running, each
    /// with the position reached (the rest goes on on the WebSocket, after what `queued`
    /// holds), and the duplicate floors of replays that just ended.
    pub recovering: Option<Box<crate::seam::Recovering>>,
    /// Per channel the session receives (`all`, its user, its rooms and socket id rooms):
    /// where the channel was on the old shard when the session left it. Every numbered
    /// message at or below it that the session was owed reached it there (some may be in
    /// `queued`); none above it did. None for a channel with no delivery on the old shard
    /// within the history TTL. Empty when the session had connected no namespace.
    pub positions: Vec<(Target, Option<SioPosition>)>,
}

/// socket.io: a channel's place in its numbering, as a handed-over session had it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SioPosition {
    pub seq: u64,
    pub epoch: Option<u64>,
}

/// The steps of a polling session's upgrade to WebSocket, as its owner sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioUpgradeStep {
    /// The upgrade request arrived: does the session exist? (an empty snapshot if so)
    Check,
    /// `2probe` arrived on the WebSocket: release the pending GET with a noop (`6`).
    Probe,
    /// `5` arrived: remove the session and hand it over.
    Take,
}

/// A message from one shard to another.
pub enum ShardMsg {
    /// socket.io: a polling request (GET, or POST with its body) for a session this shard
    /// owns (its sid names it); a GET is answered when packets are ready.
    SioPolling {
        sid: crate::protocol::socketio::engineio::Sid,
        post: bool,
        body: Vec<u8>,
        reply: oneshot::Sender<SioReply>,
    },
    /// socket.io: a step of the WebSocket upgrade of a polling session this shard owns;
    /// None when there is no such session.
    SioUpgrade {
        sid: crate::protocol::socketio::engineio::Sid,
        step: SioUpgradeStep,
        reply: oneshot::Sender<Option<SioSnapshot>>,
    },
    /// Standalone mode: this shard owns these messages' channels; number them and deliver
    /// them everywhere, in order. Answers (seq, recipients in the process) per message.
    Sequence {
        publishes: Vec<Publish>,
        /// False for `?scope=local` publishes in cluster mode: delivered in order, unnumbered.
        numbered: bool,
        reply: oneshot::Sender<Vec<(u64, u32)>>,
    },
    /// Queue deliveries to the local recipients of their targets, in order; answer how many
    /// per delivery. The frames are encoded once per shard from the shared payload.
    Deliver {
        deliveries: Vec<Arc<Delivery>>,
        done: oneshot::Sender<Vec<u32>>,
    },
    /// Report a user's connections or a room's members on this shard.
    Lookup {
        target: Target,
        reply: oneshot::Sender<Presence>,
    },
    /// Put every local connection of `user` into `room` (join) or take them out; answer how
    /// many connections changed.
    Membership {
        room: String,
        user: String,
        join: bool,
        reply: oneshot::Sender<u32>,
    },
    /// Standalone: this shard owns `channel`; answer its messages after `since`.
    History {
        channel: String,
        since: u64,
        limit: usize,
        reply: oneshot::Sender<Replay>,
    },
    /// Standalone: this shard owns `user:<user>`; hand over the user's offline inbox for a
    /// delivery attempt (entries past the attempt limit are given up).
    InboxTake {
        user: String,
        reply: oneshot::Sender<Vec<Stored>>,
    },
    /// Standalone: the user acked inbox message `seq`; forget it.
    InboxAck { user: String, seq: u64 },
    /// Report (delivered, acked) for message `id` on this shard.
    Receipt {
        id: String,
        reply: oneshot::Sender<(u32, u32)>,
    },
    /// Answer with this shard's counters and health.
    Stats { reply: oneshot::Sender<ShardReport> },
    /// Cluster mode: answer how many local connections the message `id` (published by this
    /// process through Redis) was queued to on this shard, once it has arrived; 0 when this
    /// shard is not subscribed or it does not arrive in time.
    AwaitDelivery {
        id: String,
        /// The volley channel it was published on, e.g. `room:lobby`.
        channel: String,
        reply: oneshot::Sender<u32>,
    },
}

/// What a shard reports about itself.
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    pub snapshot: Snapshot,
    /// Cluster mode: why this shard's Redis links are not up, in words.
    pub redis_problem: Option<String>,
}

// The compiler checks that what crosses cores can cross cores.
const _: fn() = || {
    fn is_send<T: Send>() {}
    is_send::<ShardMsg>();
    is_send::<Arc<Shared>>();
};

pub type Mesh = MeshBuilder<ShardMsg, Full>;
pub type MeshSenders = Senders<ShardMsg>;

/// Builds the full mesh that every shard joins once at start.
pub fn build(shards: usize, capacity: usize) -> Mesh {
    MeshBuilder::full(shards, capacity)
}

/// One shard's way to the others: its mesh senders and its own id.
pub struct Peers {
    senders: MeshSenders,
}

impl Peers {
    pub fn new(senders: MeshSenders) -> Peers {
        Peers { senders }
    }

    /// This shard's id (its index in the mesh).
    pub fn id(&self) -> usize {
        self.senders.peer_id()
    }

    /// Number of shards in this process.
    pub fn count(&self) -> usize {
        self.senders.nr_consumers()
    }

    /// The other shards' ids.
    pub fn others(&self) -> impl Iterator<Item = usize> {
        let id = self.id();
        (0..self.count()).filter(move |&peer| peer != id)
    }

    /// Sends a message to another shard. A peer that is gone (shutting down) hands the
    /// message back; `Err(None)` means the mesh refused it without giving it back (a peer
    /// index that does not exist: our bug).
    pub async fn send_to(&self, peer: usize, msg: ShardMsg) -> Result<(), Option<ShardMsg>> {
        debug_assert_ne!(
            peer,
            self.id(),
            "the local fast path never goes through the mesh"
        );
        let msg = match self.senders.try_send_to(peer, msg) {
            Ok(()) => return Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => msg,
            Err(e) => return Err(give_back(e)),
        };
        self.senders.send_to(peer, msg).await.map_err(give_back)
    }

    /// Scatter-gather over every shard, in the spirit of seastar's `map_reduce`: sends
    /// `ask(reply)` to every other shard first, so they all work at once, then runs `local`
    /// for this shard, then collects the answers. Returns one answer per shard, indexed by
    /// shard id; a shard that is gone, drops the question or misses `within` answers
    /// `T::default()` (its part is unknown, which callers count as nothing).
    pub async fn gather<T, L>(
        &self,
        ask: impl Fn(oneshot::Sender<T>) -> ShardMsg,
        local: L,
        within: Option<Duration>,
    ) -> Vec<T>
    where
        T: Default,
        L: Future<Output = T>,
    {
        let deadline = within.map(|w| Instant::now() + w);
        let mut pending = Vec::with_capacity(self.count());
        for peer in 0..self.count() {
            if peer == self.id() {
                pending.push(None);
                continue;
            }
            let (reply, answer) = oneshot::channel();
            pending.push(self.send_to(peer, ask(reply)).await.ok().map(|()| answer));
        }
        let mut out = Vec::with_capacity(pending.len());
        let mut local = Some(local);
        for (peer, answer) in pending.into_iter().enumerate() {
            let value = match (peer == self.id(), answer) {
                (true, _) => match local.take() {
                    Some(local) => bounded(local, deadline).await,
                    None => T::default(),
                },
                (false, Some(answer)) => {
                    bounded(async { answer.await.unwrap_or_default() }, deadline).await
                }
                (false, None) => T::default(),
            };
            out.push(value);
        }
        out
    }
}

/// `future`'s output, or `T::default()` once `deadline` has passed.
async fn bounded<T: Default>(future: impl Future<Output = T>, deadline: Option<Instant>) -> T {
    let Some(deadline) = deadline else {
        return future.await;
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let late = async {
        glommio::timer::sleep(left).await;
        T::default()
    };
    futures_lite::future::or(future, late).await
}

/// The message inside a failed mesh send, when the error carries it.
fn give_back(e: GlommioError<ShardMsg>) -> Option<ShardMsg> {
    match e {
        GlommioError::Closed(ResourceType::Channel(msg))
        | GlommioError::WouldBlock(ResourceType::Channel(msg)) => Some(msg),
        _ => None,
    }
}

/// Process-wide state. Touched on accept, close and shutdown, never per message.
#[derive(Debug)]
pub struct Shared {
    /// Open WebSocket connections in this process, for `--max-connections`. An atomic rather
    /// than a per-shard share, because SO_REUSEPORT does not balance exactly and a user who
    /// sets 10,000 expects 10,000, not 9,500 on an unlucky shard.
    connections: AtomicUsize,
    max_connections: usize,
    /// Set by SIGINT/SIGTERM; every shard polls it and starts its shutdown.
    shutdown: Arc<AtomicBool>,
    /// This process's name in the cluster: the `origin` of every envelope it publishes.
    pub node_id: String,
    /// Standalone: the epoch of every channel's numbering in this process (counters start
    /// at process start, so a restart is a new epoch). Below 2^53, so JavaScript clients
    /// and Redis' Lua read it exactly.
    pub epoch: u64,
}

impl Shared {
    pub fn new(max_connections: usize) -> Shared {
        Shared {
            connections: AtomicUsize::new(0),
            max_connections,
            shutdown: Arc::new(AtomicBool::new(false)),
            node_id: new_node_id(),
            epoch: new_epoch(),
        }
    }

    /// Reserves a connection slot, or returns false when the process is full.
    pub fn try_reserve_connection(&self) -> bool {
        let before = self.connections.fetch_add(1, Ordering::Relaxed);
        if before >= self.max_connections {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives back a slot taken by `try_reserve_connection`.
    pub fn release_connection(&self) {
        let before = self.connections.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "released more connections than reserved");
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }
}

/// A new random epoch in 1..2^53.
pub fn new_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer we own.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let mut n = u64::from_ne_bytes(bytes);
    if got != bytes.len() as isize {
        n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ std::process::id() as u64;
    }
    (n & ((1 << 53) - 1)).max(1)
}

/// A random 64-bit node id in hex, from the kernel's random source (getrandom(2)), so two
/// processes started in the same instant still differ.
fn new_node_id() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer we own.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        // Fall back to time and pid: unique enough for an origin tag.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (nanos ^ ((std::process::id() as u64) << 40)).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
