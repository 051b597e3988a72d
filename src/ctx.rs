//! The small context every service below the shard takes instead of the shard itself:
//! shard id, checked config, process-wide state, counters, the shard clock, the way to the
//! other shards, message ids, and the tracker of every short task a service starts.
//!
//! Owns no connection, no routing state and no Redis link. Built once per shard by `shard`
//! and shared (`Rc<Ctx>`) with `hub`, `backend`, `services`, `protocol`, `front` and `api`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use slab::Slab;

use crate::config::Config;
use crate::mesh::{Peers, Shared};
use crate::metrics::Metrics;

pub struct Ctx {
    pub id: usize,
    pub config: Config,
    pub shared: Arc<Shared>,
    pub metrics: Metrics,
    pub peers: Peers,
    pub tasks: Tasks,
    started: Instant,
    /// Seconds since `started`, advanced by the shard's sweep; connection deadlines use it.
    now_s: Cell<u32>,
    /// Counter behind the ids of messages this shard publishes.
    next_message: Cell<u64>,
    /// False once shutdown began: upgrades in flight are refused instead of joining a
    /// shard that is closing everyone, and HTTP keep-alive ends.
    accepting: Cell<bool>,
    /// xorshift state for epoch candidates (seeded from the kernel's random source).
    rng: Cell<u64>,
}

impl Ctx {
    pub fn new(config: Config, shared: Arc<Shared>, peers: Peers) -> Ctx {
        Ctx {
            id: peers.id(),
            config,
            shared,
            metrics: Metrics::default(),
            peers,
            tasks: Tasks::new(crate::config::SHARD_TASKS_MAX),
            started: Instant::now(),
            now_s: Cell::new(0),
            next_message: Cell::new(0),
            accepting: Cell::new(true),
            rng: Cell::new(crate::mesh::new_epoch() | 1),
        }
    }

    /// The shard clock: seconds since the shard started, advanced by the sweep.
    pub fn now_s(&self) -> u32 {
        self.now_s.get()
    }

    /// Reads the monotonic clock into the shard clock (the sweep calls this once a second).
    pub fn tick(&self) -> u32 {
        let now_s = self.started.elapsed().as_secs() as u32;
        self.now_s.set(now_s);
        now_s
    }

    /// Milliseconds since the shard started, read now (rate limits need finer than seconds).
    pub fn now_ms(&self) -> u32 {
        self.started.elapsed().as_millis().min(u32::MAX as u128) as u32
    }

    /// Seconds since the Unix epoch, read now: token expiry (`exp`, `nbf`) is wall-clock time.
    pub fn unix_now_s(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// Number of shards in this process.
    pub fn shard_count(&self) -> usize {
        self.peers.count()
    }

    /// This process's name in the cluster.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// 16 bits of the node id, carried in this process's socket.io socket ids so a push to
    /// one goes on a Redis channel of its process (`Keys::sockets_channel`). Two processes
    /// may share a tag: each then also receives the other's socket pushes, and finds no
    /// socket for them (the full id is compared).
    pub fn node_tag(&self) -> u16 {
        node_tag(&self.shared.node_id)
    }

    /// A message id unique in the cluster: node, shard, counter.
    pub fn next_message_id(&self) -> String {
        let n = self.next_message.get();
        self.next_message.set(n + 1);
        format!("{}-{}-{}", self.shared.node_id, self.id, n)
    }

    /// A fresh epoch candidate in 1..2^53 (a channel whose counter Redis creates gets it).
    pub fn new_epoch(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        (x & ((1 << 53) - 1)).max(1)
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.get()
    }

    /// Shutdown began: refuse new upgrades, end keep-alive.
    pub fn stop_accepting(&self) {
        self.accepting.set(false);
    }
}

/// Every short-lived task services start (a client publish, a replay, a room event, a
/// receipt wait): counted, bounded, and stopped at shutdown. The shard's own long-lived
/// tasks (accept, sweep, mesh, broker links, one per connection) are its own business.
pub struct Tasks {
    live: Rc<Cell<u32>>,
    max: u32,
    stop: Rc<Stop>,
}

/// The shutdown signal of the tasks: one waker slot per live task, freed when it ends.
#[derive(Default)]
struct Stop {
    stopped: Cell<bool>,
    waiters: RefCell<Slab<Option<Waker>>>,
}

/// Why a task was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnError {
    /// `max` tasks are running: the work is refused (the caller says so, or counts it).
    Full,
    /// The shard is stopping.
    Stopping,
}

impl Tasks {
    pub fn new(max: u32) -> Tasks {
        Tasks {
            live: Rc::new(Cell::new(0)),
            max,
            stop: Rc::new(Stop::default()),
        }
    }

    /// Starts `future` as a tracked task. It ends early, dropped where it waits, when the
    /// shard stops.
    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) -> Result<(), SpawnError> {
        if self.stop.stopped.get() {
            return Err(SpawnError::Stopping);
        }
        if self.live.get() >= self.max {
            return Err(SpawnError::Full);
        }
        self.live.set(self.live.get() + 1);
        let live = self.live.clone();
        let stop = self.stop.clone();
        let slot = stop.waiters.borrow_mut().insert(None);
        glommio::spawn_local(async move {
            futures_lite::future::or(future, stopped(&stop, slot)).await;
            stop.waiters.borrow_mut().remove(slot);
            debug_assert!(live.get() > 0);
            live.set(live.get() - 1);
        })
        .detach();
        Ok(())
    }

    /// Tasks running now.
    pub fn live(&self) -> u32 {
        self.live.get()
    }

    /// Stops every task at its next wait; no new one starts.
    pub fn stop_all(&self) {
        self.stop.stopped.set(true);
        let wakers: Vec<Waker> = self
            .stop
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(|(_, waker)| waker.take())
            .collect();
        for waker in wakers {
            waker.wake();
        }
    }
}

/// Resolves once `stop_all` was called; `slot` is this task's waker slot.
async fn stopped(stop: &Stop, slot: usize) {
    futures_lite::future::poll_fn(|cx| {
        if stop.stopped.get() {
            return Poll::Ready(());
        }
        if let Some(waker) = stop.waiters.borrow_mut().get_mut(slot) {
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        Poll::Pending
    })
    .await
}

/// The first 16 bits of a node id (hex, as `mesh::Shared` makes it); 0 for anything else.
fn node_tag(node_id: &str) -> u16 {
    node_id
        .get(..4)
        .and_then(|hex| u16::from_str_radix(hex, 16).ok())
        .unwrap_or(0)
}
