//! The per-core owner of lifetimes: one `Shard` per glommio executor accepts sockets,
//! admits upgraded connections into the hub, runs the sweep, serves the mesh and the
//! broker's subscription channel, and stops everything at shutdown.
//!
//! This is the only module that spawns long-lived tasks (accept loop, mesh receivers, the
//! broker links and their message loop, the sweep, one small task per connection) and the
//! only one that stops them, so shutdown is `run`'s last lines. The short tasks services
//! start are tracked by `ctx.tasks` and stopped here too. Nothing below takes a `Shard`:
//! services get `Ctx`, `Hub`, `Backend`. Called by `server::serve` once per executor.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::net::{TcpListener, TcpStream};

use crate::backend::Backend;
use crate::broker::client::{self, Incoming, INCOMING_MAX};
use crate::config::Config;
use crate::conn::ConnKey;
use crate::ctx::Ctx;
use crate::front::{self, Upgraded};
use crate::hub::Hub;
use crate::mesh::{Mesh, Peers, ShardMsg, Shared};
use crate::metrics::Metrics;
use crate::services::{ops, Services};
use crate::ws::frame::close_code;
use crate::{listener, log};

/// How often the sweep runs: the clock's resolution, and the granularity of idle and close
/// deadlines.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Seconds between full passes over the slab (idle, ping, deadlines), at most.
const FULL_SWEEP_EVERY_S: u32 = 5;
/// How often a shard checks the process-wide shutdown flag.
const SHUTDOWN_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Pause after an accept error such as EMFILE, so a full fd table does not spin a core.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this many seconds for a repeating accept error.
const ACCEPT_ERROR_LOG_INTERVAL_S: u32 = 10;

pub struct Shard {
    ctx: Rc<Ctx>,
    hub: Rc<Hub>,
    backend: Rc<Backend>,
    svc: Rc<Services>,
    accept_error_logged_s: Cell<Option<u32>>,
    /// Sockets in their HTTP phase (before an upgrade, or API keep-alive): bounded by
    /// `--http-sessions-max`, since `--max-connections` counts WebSockets only.
    http_sessions: Cell<u32>,
}

/// The long-lived future of one connection: 16 bytes, whatever the connection does.
/// Everything else of the connection sits in the hub's slab, reachable through `key`.
struct ConnTask {
    shard: Rc<Shard>,
    key: ConnKey,
}

const _: () = assert!(std::mem::size_of::<ConnTask>() <= 16);

impl Future for ConnTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut inbound = Vec::new();
        let outcome = this.shard.hub.poll(this.key, cx, &mut inbound);
        match outcome {
            Poll::Ready(()) => {
                if let Some(removed) = this.shard.hub.remove(this.key) {
                    this.shard.svc.disconnected(removed);
                }
                Poll::Ready(())
            }
            Poll::Pending => {
                // Client messages are handled with no borrow held: an op may touch the
                // index, other connections, or start a publish.
                if !inbound.is_empty() {
                    ops::dispatch(&this.shard.svc, this.key, inbound);
                }
                Poll::Pending
            }
        }
    }
}

impl Shard {
    fn new(ctx: Rc<Ctx>) -> Shard {
        let hub = Rc::new(Hub::new(ctx.clone()));
        let backend = Rc::new(Backend::new(ctx.clone(), hub.clone()));
        let svc = Rc::new(Services::new(ctx.clone(), hub.clone(), backend.clone()));
        Shard {
            ctx,
            hub,
            backend,
            svc,
            accept_error_logged_s: Cell::new(None),
            http_sessions: Cell::new(0),
        }
    }

    /// Takes an upgraded socket in: the hub gets the connection, the services subscribe
    /// and count it, its task starts, then its recovery and its early messages.
    fn admit(self: &Rc<Self>, upgraded: Upgraded) {
        let Upgraded {
            stream,
            mut early,
            session,
            resume,
            wire,
        } = upgraded;
        let take_inbox = session.user.is_some() && self.ctx.config.inbox_size > 0;
        let (key, inbound, _) = self.hub.insert(stream, &mut early, wire, session);
        self.svc.connected(key);
        glommio::spawn_local(ConnTask {
            shard: self.clone(),
            key,
        })
        .detach();
        // Recovery first (it holds back live messages of the channels it replays), then
        // the client's own early messages.
        let mut channels = Vec::with_capacity(resume.len());
        for (target, since) in resume {
            if let crate::envelope::Target::Room(room) = &target {
                // Rooms in a resume token are joined again, under today's permissions.
                if let Err((code, message)) = self.svc.join_room(key, room) {
                    let error = crate::protocol::OpError {
                        reference: None,
                        code,
                        message: format!("resume {target}: {message}"),
                    };
                    ops::reply_error(&self.svc, key, error);
                    continue;
                }
            }
            channels.push((target, since));
        }
        if !channels.is_empty() || take_inbox {
            self.svc.start_recovery(key, channels, take_inbox);
        }
        if !inbound.is_empty() {
            ops::dispatch(&self.svc, key, inbound);
        }
    }

    async fn serve_mesh(self: Rc<Self>, mut rx: ConnectedReceiver<ShardMsg>) {
        // Handled one at a time in arrival order: deliveries of a channel stay in sequence.
        while let Some(msg) = rx.next().await {
            self.svc.on_mesh(msg);
        }
    }

    /// What this shard's Redis subscriptions deliver, in arrival order.
    async fn serve_broker(self: Rc<Self>, rx: LocalReceiver<Incoming>) {
        while let Some(incoming) = rx.recv().await {
            self.svc.on_broker(incoming);
        }
    }

    async fn serve_socket(self: Rc<Self>, stream: TcpStream) {
        if let Some(upgraded) = front::serve_http(self.svc.clone(), stream).await {
            self.admit(upgraded);
        }
        self.http_sessions.set(self.http_sessions.get() - 1);
    }

    async fn accept_loop(self: Rc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    Metrics::inc(&self.ctx.metrics.accepted_total);
                    if self.http_sessions.get() >= self.ctx.config.http_sessions_max {
                        // A flood of sockets that never finish a request: each one would
                        // hold a task and a read buffer until its head deadline. Refuse
                        // new ones at once (the kernel resets them) and count it.
                        Metrics::inc(&self.ctx.metrics.rejected_http_sessions_total);
                        drop(stream);
                        continue;
                    }
                    // Pushes are small and latency matters more than packet count.
                    let _ = stream.set_nodelay(true);
                    self.http_sessions.set(self.http_sessions.get() + 1);
                    glommio::spawn_local(self.clone().serve_socket(stream)).detach();
                }
                Err(e) => {
                    Metrics::inc(&self.ctx.metrics.accept_errors_total);
                    let e = io::Error::from(e);
                    let now_s = self.ctx.now_s();
                    let last = self.accept_error_logged_s.get();
                    if last.is_none_or(|last| now_s >= last + ACCEPT_ERROR_LOG_INTERVAL_S) {
                        self.accept_error_logged_s.set(Some(now_s));
                        let hint = match e.raw_os_error() {
                            Some(libc::EMFILE) | Some(libc::ENFILE) => {
                                " (open file limit reached: raise LimitNOFILE, see tuning/, or lower --max-connections)"
                            }
                            _ => "",
                        };
                        log!(
                            warn,
                            Some(self.ctx.id),
                            "accept failed: {e}{hint}; retrying"
                        );
                    }
                    glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    }

    /// Advances the clock once a second. Every few seconds (and at each ping round) one
    /// pass over the slab pings every connection, closes the idle ones, cuts off closing
    /// ones past their deadline and ends finished recoveries: one pass replaces a timer
    /// per connection, and doing it every `FULL_SWEEP_EVERY_S` rather than every second
    /// keeps an idle shard of 64k connections nearly free.
    async fn sweep_loop(self: Rc<Self>) {
        let config = &self.ctx.config;
        let mut next_ping_s = config.ping_interval_s;
        let sio_ping_s = config.socketio.ping_interval_s();
        let mut next_sio_ping_s = sio_ping_s;
        let full_every_s = FULL_SWEEP_EVERY_S.min(config.ping_interval_s).max(1);
        let mut next_full_s = full_every_s;
        let mut next_heartbeat_s = 0;
        loop {
            glommio::timer::sleep(SWEEP_INTERVAL).await;
            let now_s = self.ctx.tick();
            self.backend.tick(now_s);
            self.svc.tick();
            self.hub.expire_receipts(now_s);
            let ping_due = now_s >= next_ping_s;
            if ping_due {
                next_ping_s = now_s + config.ping_interval_s;
            }
            let sio_ping_due = now_s >= next_sio_ping_s;
            if sio_ping_due {
                next_sio_ping_s = now_s + sio_ping_s;
            }
            // Cluster mode, shard 0: the node's heartbeat, whose expiry tells the cluster
            // this node (and the presence it counted) is gone. Retried every second until
            // Redis takes it, then every third of the TTL.
            let beat = self.backend.redis.as_ref().is_none_or(|r| r.heartbeat());
            if now_s >= next_heartbeat_s && beat {
                next_heartbeat_s = now_s + (config.presence_ttl_s / 3).max(1);
            }
            if !ping_due && !sio_ping_due && now_s < next_full_s {
                continue;
            }
            next_full_s = now_s + full_every_s;
            self.backend.expire(now_s);
            self.svc.prune();
            self.hub.sweep(now_s, ping_due, sio_ping_due);
            // socket.io polling sessions closed or idle past the pong timeout.
            for key in self.hub.expired_polling(now_s) {
                if let Some(removed) = self.hub.remove(key) {
                    self.svc.disconnected(removed);
                }
            }
        }
    }
}

/// Runs one shard until shutdown. `listeners[i]` is shard i's bound listening socket.
pub async fn run(
    config: Config,
    shared: Arc<Shared>,
    mesh: Mesh,
    listeners: Arc<[RawFd]>,
) -> Result<(), String> {
    let (senders, mut receivers) = mesh
        .join()
        .await
        .map_err(|e| format!("could not join the shard mesh: {e}"))?;
    let id = senders.peer_id();
    let fd = *listeners
        .get(id)
        .ok_or_else(|| format!("no listener for shard {id}"))?;
    // SAFETY: `server::serve` bound one listener per shard and each shard takes only its own.
    let listener = unsafe { listener::into_glommio(fd) };
    let grace = config.shutdown_grace;
    let ctx = Rc::new(Ctx::new(config, shared.clone(), Peers::new(senders)));
    let shard = Rc::new(Shard::new(ctx.clone()));

    let mesh_tasks: Vec<_> = receivers
        .streams()
        .into_iter()
        .map(|(_, rx)| glommio::spawn_local(shard.clone().serve_mesh(rx)))
        .collect();
    let sweep_task = glommio::spawn_local(shard.clone().sweep_loop());
    let accept_task = glommio::spawn_local(shard.clone().accept_loop(listener));
    let broker_tasks: Vec<_> = match &shard.backend.redis {
        Some(redis) => {
            let (incoming, incoming_rx) = local_channel::new_bounded(INCOMING_MAX);
            vec![
                glommio::spawn_local(client::run_subscriber(
                    ctx.clone(),
                    redis.broker.clone(),
                    incoming,
                )),
                glommio::spawn_local(client::run_commands(ctx.clone(), redis.broker.clone())),
                glommio::spawn_local(shard.clone().serve_broker(incoming_rx)),
            ]
        }
        None => Vec::new(),
    };

    while !shared.shutdown_requested() {
        glommio::timer::sleep(SHUTDOWN_POLL_INTERVAL).await;
    }

    // Shutdown: stop accepting (dropping the task drops the listener), tell every client
    // we are going away, and give them until the grace deadline to get it.
    ctx.stop_accepting();
    accept_task.cancel().await;
    shard
        .hub
        .close_all(close_code::GOING_AWAY, "server shutting down");
    let deadline = Instant::now() + grace;
    while !shard.hub.is_empty() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    let left = shard.hub.len();
    if left > 0 {
        log!(
            warn,
            Some(id),
            "shutdown grace over with {left} connections still closing; dropping them"
        );
    }
    // Short tasks (publishes, replays) end where they wait; their clients are gone.
    ctx.tasks.stop_all();
    sweep_task.cancel().await;
    for task in broker_tasks {
        task.cancel().await;
    }
    drop(mesh_tasks);
    Ok(())
}
