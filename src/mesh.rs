//! Everything that crosses threads: the shard-to-shard messages (`ShardMsg`), the glommio
//! channel mesh that carries them, and the few process-wide atomics (`Shared`).
//!
//! This is the ONLY module whose types are `Send`; every other module is shard-local
//! (`Rc`, `Cell`, `RefCell`). Reading this file tells you everything that moves between cores.
//! Called by `shard` (which owns the mesh endpoints) and `fanout` (which sends through them).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};

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
    pub kind: PayloadKind,
    pub payload: Bytes,
}

/// A message ready for local delivery on every shard: sequenced (when known).
#[derive(Debug)]
pub struct Delivery {
    pub publish: Publish,
    /// The channel sequence number; None for messages from foreign publishers.
    pub seq: Option<u64>,
}

/// One stored message of a channel's history or a user's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub id: String,
    pub from: Option<String>,
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
}

/// Who a user or room is, as one shard sees it.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    /// Connections of the user, or members of the room, on that shard.
    pub connections: u32,
    /// Room only: users with at least one connection in the room (anonymous ones excluded).
    pub users: Vec<String>,
}

/// A message from one shard to another.
pub enum ShardMsg {
    /// Standalone mode: this shard owns these messages' channels; number them and deliver
    /// them everywhere, in order. Answers (seq, recipients in the process) per message.
    Sequence {
        publishes: Vec<Publish>,
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
}

impl Shared {
    pub fn new(max_connections: usize) -> Shared {
        Shared {
            connections: AtomicUsize::new(0),
            max_connections,
            shutdown: Arc::new(AtomicBool::new(false)),
            node_id: new_node_id(),
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
