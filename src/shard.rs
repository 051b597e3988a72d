//! The per-core owner: one `Shard` per glommio executor holds that core's listener, slab of
//! connections, scratch buffers, clock, counters and mesh endpoints.
//!
//! This is the only module that spawns long-lived tasks (accept loop, mesh receivers, the
//! sweep, one small task per connection) and the only one that stops them, so shutdown is
//! `Shard::run`'s last lines. Called by `server::serve` once per executor.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use futures_lite::StreamExt;
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::net::{TcpListener, TcpStream};
use glommio::{GlommioError, ResourceType};
use slab::Slab;

use crate::broker::client::Heartbeat;
use crate::broker::{self, Broker};
use crate::config::{Config, READ_SCRATCH_BYTES, WRITE_SCRATCH_BYTES};
use crate::config::{RECEIPTS_PER_SHARD_MAX, RECEIPT_RETENTION_S};
use crate::conn::{Conn, ConnKey, ConnLimits, ConnState, PollEnv};
use crate::envelope::{self, Target, FLAG_CONTROL};
use crate::fanout::Frames;
use crate::history::{History, Inboxes};
use crate::index::Index;
use crate::mesh::{Delivery, Mesh, MeshSenders, Publish, ShardMsg, ShardReport, Shared};
use crate::metrics::Metrics;
use crate::protocol::{self, Session};
use crate::receipts::Receipts;
use crate::recovery::Admit;
use crate::ws::frame::{self, close_code, OpCode};
use crate::{api, fanout, listener, log};

/// How often the sweep runs: the clock's resolution, and the granularity of idle and close
/// deadlines.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most connections a shard reserves slab room for at start (address space, not RSS).
const SLAB_RESERVE_MAX: usize = 1 << 20;
/// Seconds between full passes over the slab (idle, ping, deadlines), at most.
const FULL_SWEEP_EVERY_S: u32 = 5;
/// How often a shard checks the process-wide shutdown flag.
const SHUTDOWN_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Pause after an accept error such as EMFILE, so a full fd table does not spin a core.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this many seconds for a repeating accept error.
const ACCEPT_ERROR_LOG_INTERVAL_S: u32 = 10;
/// Own messages whose local delivery count is kept until the publishing shard asks for it.
const OWN_DELIVERIES_KEPT: usize = 256;
/// Seconds a publishing shard waits for a subscribed shard to see its own message.
const AWAIT_DELIVERY_S: u32 = 2;

pub struct Shard {
    pub id: usize,
    pub config: Config,
    pub shared: Arc<Shared>,
    pub metrics: Metrics,
    conns: RefCell<Slab<Conn>>,
    next_generation: Cell<u32>,
    /// Every socket read on this shard lands here first; connections own no read buffer.
    read_buf: RefCell<Box<[u8]>>,
    /// Queued frames of one connection are joined here into one send.
    write_buf: RefCell<Box<[u8]>>,
    started: Instant,
    /// Seconds since `started`, advanced by the sweep; connection deadlines use it.
    now_s: Cell<u32>,
    senders: MeshSenders,
    limits: ConnLimits,
    /// One empty Ping, encoded once and shared by every connection at every ping round.
    ping_frame: Bytes,
    /// False once shutdown began: upgrades in flight are refused instead of joining a
    /// shard that is closing everyone.
    accepting: Cell<bool>,
    accept_error_logged_s: Cell<Option<u32>>,
    /// Sockets in their HTTP phase (before an upgrade, or API keep-alive): bounded by
    /// `--http-sessions-max`, since `--max-connections` counts WebSockets only.
    http_sessions: Cell<u32>,
    /// Cluster mode: this shard's Redis links.
    pub broker: Option<Rc<Broker>>,
    /// Who is connected as which user and in which rooms, on this shard.
    pub(crate) index: RefCell<Index>,
    /// Standalone: the last sequence number of each channel this shard owns.
    pub(crate) seqs: RefCell<HashMap<Target, u64>>,
    /// Standalone: held while numbering a message and handing it to every shard, so
    /// deliveries leave in number order.
    pub(crate) sequencer: glommio::sync::Semaphore,
    pub(crate) receipts: RefCell<Receipts>,
    /// Standalone: history of the channels this shard owns.
    pub(crate) history: RefCell<History>,
    /// Standalone: offline inboxes of the users whose channel this shard owns.
    pub(crate) inboxes: RefCell<Inboxes>,
    /// History reads under way, by (channel, since, limit), with the recoveries waiting
    /// for the same read.
    pub(crate) history_reads: RefCell<HashMap<HistoryRead, Vec<HistoryWaiter>>>,
    /// Counter behind the ids of messages this shard publishes.
    next_message: Cell<u64>,
    /// Cluster mode: (message id, local recipients) of this process's own messages seen on
    /// this shard's subscription, newest last, until the publishing shard asks.
    own_deliveries: RefCell<VecDeque<(String, u32)>>,
    /// Cluster mode: publishing shards waiting for one of their messages to arrive here.
    awaiting_delivery: RefCell<Vec<(String, oneshot::Sender<u32>, u32)>>,
    pub(crate) started_at: Instant,
    envelope_error_logged_s: Cell<Option<u32>>,
}

/// A history read: (channel, since, limit).
pub(crate) type HistoryRead = (String, u64, usize);
/// A recovery waiting for a history read another recovery started.
pub(crate) type HistoryWaiter = oneshot::Sender<Result<crate::mesh::Replay, broker::Error>>;

/// The long-lived future of one connection: 16 bytes, whatever the connection does.
/// Everything else of the connection sits in the slab, reachable through `key`.
struct ConnTask {
    shard: Rc<Shard>,
    key: ConnKey,
}

const _: () = assert!(std::mem::size_of::<ConnTask>() <= 16);

impl Future for ConnTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match this.shard.poll_conn(this.key, cx) {
            Poll::Ready(()) => {
                this.shard.remove_conn(this.key);
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Shard {
    fn new(id: usize, config: Config, shared: Arc<Shared>, senders: MeshSenders) -> Shard {
        let slab_reserve = config
            .max_connections
            .div_ceil(config.shards)
            .min(SLAB_RESERVE_MAX);
        let limits = ConnLimits {
            outbound_frames_max: config.outbound_frames_max,
            outbound_bytes_max: config.outbound_bytes_max,
            decode: frame::Limits {
                message_bytes_max: config.message_bytes_max,
            },
            close_timeout_s: config.close_timeout.as_secs().max(1) as u32,
        };
        let broker = config.redis.clone().map(|redis| {
            let heartbeat = (id == 0).then(|| Heartbeat {
                key: format!("{}:node:{}", redis.prefix, shared.node_id),
                registry: format!("{}:nodes", redis.prefix),
                node_id: shared.node_id.clone(),
                ttl_s: config.presence_ttl_s,
            });
            Rc::new(Broker::new(id, redis, heartbeat))
        });
        Shard {
            broker,
            index: RefCell::new(Index::default()),
            seqs: RefCell::new(HashMap::new()),
            sequencer: glommio::sync::Semaphore::new(1),
            receipts: RefCell::new(Receipts::new(RECEIPTS_PER_SHARD_MAX, RECEIPT_RETENTION_S)),
            history: RefCell::new(History::new(config.history_size, config.history_ttl_s)),
            history_reads: RefCell::new(HashMap::new()),
            inboxes: RefCell::new(Inboxes::new(
                config.inbox_size,
                config.inbox_ttl_s,
                config.inbox_deliveries_max,
            )),
            started_at: Instant::now(),
            next_message: Cell::new(0),
            own_deliveries: RefCell::new(VecDeque::new()),
            awaiting_delivery: RefCell::new(Vec::new()),
            envelope_error_logged_s: Cell::new(None),
            id,
            config,
            shared,
            metrics: Metrics::default(),
            // Reserved for this shard's share of --max-connections up front: the pages are
            // only touched (and resident) as connections arrive, and the slab never moves,
            // so there is no doubling copy, and no freed old array left behind in RSS.
            conns: RefCell::new(Slab::with_capacity(slab_reserve)),
            next_generation: Cell::new(0),
            read_buf: RefCell::new(vec![0; READ_SCRATCH_BYTES].into_boxed_slice()),
            write_buf: RefCell::new(vec![0; WRITE_SCRATCH_BYTES].into_boxed_slice()),
            started: Instant::now(),
            now_s: Cell::new(0),
            senders,
            limits,
            ping_frame: frame::encode(OpCode::Ping, &[]),
            accepting: Cell::new(true),
            accept_error_logged_s: Cell::new(None),
            http_sessions: Cell::new(0),
        }
    }

    pub(crate) fn conns_mut(&self) -> std::cell::RefMut<'_, Slab<Conn>> {
        self.conns.borrow_mut()
    }

    pub(crate) fn conns_ref(&self) -> std::cell::Ref<'_, Slab<Conn>> {
        self.conns.borrow()
    }

    /// The shard clock: seconds since the shard started, advanced by the sweep.
    pub fn now(&self) -> u32 {
        self.now_s.get()
    }

    pub(crate) fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// The shard-wide read buffer: borrow it only inside one poll, never across an await.
    pub(crate) fn scratch(&self) -> &RefCell<Box<[u8]>> {
        &self.read_buf
    }

    /// Number of shards in this process.
    pub fn shard_count(&self) -> usize {
        self.config.shards
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.get()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Sends a message to another shard. A peer that is gone (shutting down) hands the
    /// message back; `Err(None)` means the mesh refused it without giving it back (a peer
    /// index that does not exist: our bug).
    pub async fn send_to(&self, peer: usize, msg: ShardMsg) -> Result<(), Option<ShardMsg>> {
        debug_assert_ne!(
            peer, self.id,
            "the local fast path never goes through the mesh"
        );
        let msg = match self.senders.try_send_to(peer, msg) {
            Ok(()) => return Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => msg,
            Err(e) => return Err(give_back(e)),
        };
        self.senders.send_to(peer, msg).await.map_err(give_back)
    }

    /// Registers an upgraded connection and starts its task. `early` holds bytes the client
    /// sent right behind its upgrade request; they are decoded before anything else.
    pub fn insert_conn(
        self: &Rc<Self>,
        stream: TcpStream,
        early: &mut [u8],
        session: Session,
        resume: Vec<(Target, u64)>,
    ) -> ConnKey {
        let now_s = self.now_s.get();
        let generation = self.next_generation.get();
        self.next_generation.set(generation.wrapping_add(1));
        let user = session.user.clone();
        let mut conn = Conn::new(stream, generation, now_s, session);
        let mut inbound = Vec::new();
        if !early.is_empty() {
            conn.on_input(early, &self.limits, &self.metrics, now_s, &mut inbound);
        }
        let index = self.conns.borrow_mut().insert(conn);
        let key = ConnKey {
            index: index as u32,
            generation,
        };
        self.interest("all", true);
        if let Some(user) = &user {
            self.index.borrow_mut().add_user(user, key);
            self.interest(&format!("user:{user}"), true);
            self.presence_change(&format!("user:{user}"), self.node_id(), 1);
        }
        Metrics::inc(&self.metrics.connections);
        Metrics::inc(&self.metrics.upgrades_total);
        glommio::spawn_local(ConnTask {
            shard: self.clone(),
            key,
        })
        .detach();
        // Recovery first (it holds back live messages of the channels it replays), then
        // the client's own early messages.
        let take_inbox = user.is_some() && self.config.inbox_size > 0;
        let mut channels = Vec::with_capacity(resume.len());
        for (target, since) in resume {
            if let Target::Room(room) = &target {
                // Rooms in a resume token are joined again, under today's permissions.
                if let Err((code, message)) = self.join_room(key, room) {
                    protocol::reply_error(
                        self,
                        key,
                        None,
                        code,
                        &format!("resume {target}: {message}"),
                    );
                    continue;
                }
            }
            channels.push((target, since));
        }
        if !channels.is_empty() || take_inbox {
            self.start_recovery(key, channels, take_inbox);
        }
        if !inbound.is_empty() {
            protocol::dispatch(self, key, inbound);
        }
        key
    }

    fn poll_conn(self: &Rc<Self>, key: ConnKey, cx: &mut Context<'_>) -> Poll<()> {
        let mut inbound = Vec::new();
        let outcome = {
            let mut conns = self.conns.borrow_mut();
            let Some(conn) = conns.get_mut(key.index as usize) else {
                return Poll::Ready(());
            };
            if conn.generation() != key.generation {
                return Poll::Ready(());
            }
            let mut read_buf = self.read_buf.borrow_mut();
            let mut write_buf = self.write_buf.borrow_mut();
            let mut env = PollEnv {
                read_buf: &mut read_buf,
                write_buf: &mut write_buf,
                limits: &self.limits,
                metrics: &self.metrics,
                now_s: self.now_s.get(),
                inbound: &mut inbound,
            };
            conn.poll(cx, &mut env)
        };
        // Client messages are handled with no borrow held: an op may touch the index,
        // other connections, or start a publish.
        if outcome.is_pending() && !inbound.is_empty() {
            protocol::dispatch(self, key, inbound);
        }
        outcome
    }

    fn remove_conn(self: &Rc<Self>, key: ConnKey) {
        let mut conns = self.conns.borrow_mut();
        let matches = conns
            .get(key.index as usize)
            .is_some_and(|c| c.generation() == key.generation);
        if !matches {
            return;
        }
        // Dropping the Conn closes the socket.
        let conn = conns.remove(key.index as usize);
        drop(conns);
        self.interest("all", false);
        if let Some(user) = &conn.session.user {
            self.index.borrow_mut().remove_user(user, key);
            self.interest(&format!("user:{user}"), false);
            self.presence_change(&format!("user:{user}"), self.node_id(), -1);
        }
        let left = self.index.borrow_mut().leave_all(key);
        for (room, _) in left {
            self.interest(&format!("room:{room}"), false);
            let member = conn.session.user.as_deref().unwrap_or("");
            self.presence_change(&format!("room:{room}"), member, -1);
            self.room_event(&room, member, "leave");
        }
        drop(conn);
        let open = self.metrics.connections.get();
        debug_assert!(open > 0);
        self.metrics.connections.set(open - 1);
        Metrics::inc(&self.metrics.disconnects_total);
        self.shared.release_connection();
    }

    /// Queues a delivery to the local recipients of its target, each connection getting the
    /// frame of its codec (encoded once per shard); returns how many.
    pub fn deliver(&self, delivery: &Delivery) -> u32 {
        Metrics::inc(&self.metrics.broadcasts_total);
        let now_s = self.now_s.get();
        let mut frames = Frames::new(delivery);
        let mut queued = 0;
        let mut conns = self.conns.borrow_mut();
        let mut channel: Option<String> = None;
        let mut push = |conn: &mut Conn| {
            let frame = frames.for_codec(conn.session.codec);
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
                        Metrics::inc(&self.metrics.slow_consumer_closes_total);
                        conn.close(
                            close_code::POLICY,
                            "slow consumer: too much held during recovery",
                            &self.limits,
                            now_s,
                        );
                        return;
                    }
                }
            }
            if conn.push(frame, &self.limits, &self.metrics, now_s) {
                queued += 1;
            }
        };
        let index = self.index.borrow();
        let keys = match &delivery.publish.target {
            Target::All => {
                for (_, conn) in conns.iter_mut() {
                    push(conn);
                }
                &[][..]
            }
            Target::User(user) => index.user_conns(user),
            Target::Room(room) => index.room_conns(room),
        };
        for key in keys {
            if let Some(conn) = conns.get_mut(key.index as usize) {
                if conn.generation() == key.generation {
                    push(conn);
                }
            }
        }
        drop(index);
        drop(conns);
        // Receipts only where something was delivered: a shard with no recipient keeps no
        // entry (the table is bounded, and empty entries would evict real ones).
        if let (Some(seq), true) = (delivery.seq, queued > 0) {
            let channel = channel.unwrap_or_else(|| delivery.publish.target.to_string());
            self.receipts
                .borrow_mut()
                .record(&delivery.publish.id, &channel, seq, queued, now_s);
            self.receipt_change(&delivery.publish.id, "delivered", queued);
        }
        queued
    }

    fn handle_msg(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Sequence { publishes, reply } => {
                let shard = self.clone();
                glommio::spawn_local(async move {
                    let numbered = fanout::sequence_and_deliver(&shard, publishes).await;
                    let _ = reply.send(numbered);
                })
                .detach();
            }
            ShardMsg::Deliver { deliveries, done } => {
                let _ = done.send(deliveries.iter().map(|d| self.deliver(d)).collect());
            }
            ShardMsg::Stats { reply } => {
                let _ = reply.send(self.report());
            }
            ShardMsg::AwaitDelivery { id, channel, reply } => {
                self.await_delivery(id, &channel, reply)
            }
            ShardMsg::Lookup { target, reply } => {
                let _ = reply.send(self.lookup(&target));
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
                let _ = reply.send(self.history_since(&channel, since, limit));
            }
            ShardMsg::InboxTake { user, reply } => {
                let _ = reply.send(self.inbox_take(&user));
            }
            ShardMsg::InboxAck { user, seq } => {
                self.inboxes.borrow_mut().ack(&user, seq);
            }
            ShardMsg::Receipt { id, reply } => {
                let receipt = self.receipts.borrow().get(&id).unwrap_or_default();
                let _ = reply.send((receipt.delivered, receipt.acked));
            }
        }
    }

    /// This shard's counters and health.
    pub fn report(&self) -> ShardReport {
        ShardReport {
            snapshot: self.metrics.snapshot(),
            redis_problem: self.broker.as_ref().and_then(|b| b.problem()),
        }
    }

    /// This process's name in the cluster.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// A message id unique in the cluster: node, shard, counter.
    pub fn next_message_id(&self) -> String {
        let n = self.next_message.get();
        self.next_message.set(n + 1);
        format!("{}-{}-{}", self.shared.node_id, self.id, n)
    }

    /// A message arrived on this shard's Redis subscription: decode it, then deliver it to
    /// the local recipients of its target (frames encoded once for this shard).
    pub fn on_broker_message(self: &Rc<Self>, channel: &[u8], payload: Bytes) {
        Metrics::inc(&self.metrics.redis_messages_total);
        let Some(broker) = &self.broker else {
            return;
        };
        let target = std::str::from_utf8(channel)
            .ok()
            .and_then(|c| c.strip_prefix(broker.config.prefix.as_str()))
            .and_then(|c| c.strip_prefix(':'))
            .and_then(Target::parse);
        let decoded = envelope::decode(&payload)
            .map_err(|e| e.to_string())
            .and_then(|envelope| {
                if Some(&envelope.target) == target.as_ref() {
                    Ok(envelope)
                } else {
                    Err(format!(
                        "target {} does not match the channel {}",
                        envelope.target,
                        String::from_utf8_lossy(channel)
                    ))
                }
            });
        let envelope = match decoded {
            Ok(envelope) => envelope,
            Err(e) => {
                Metrics::inc(&self.metrics.redis_envelope_errors_total);
                let now_s = self.now_s.get();
                let last = self.envelope_error_logged_s.get();
                if last.is_none_or(|last| now_s >= last + ACCEPT_ERROR_LOG_INTERVAL_S) {
                    self.envelope_error_logged_s.set(Some(now_s));
                    log!(
                        Some(self.id),
                        "dropped a message on {}: {e} (see docs/ENVELOPE.md)",
                        String::from_utf8_lossy(channel)
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
                publish: Publish {
                    target: envelope.target,
                    id: envelope.id.clone(),
                    from: envelope.from,
                    kind: envelope.kind,
                    payload: envelope.payload,
                },
            };
            self.deliver(&delivery)
        };
        if envelope.origin == self.shared.node_id {
            self.record_own_delivery(envelope.id, recipients);
        }
    }

    fn record_own_delivery(&self, id: String, recipients: u32) {
        let mut awaiting = self.awaiting_delivery.borrow_mut();
        if let Some(at) = awaiting.iter().position(|(waiting, _, _)| *waiting == id) {
            let (_, reply, _) = awaiting.swap_remove(at);
            let _ = reply.send(recipients);
            return;
        }
        let mut own = self.own_deliveries.borrow_mut();
        if own.len() == OWN_DELIVERIES_KEPT {
            own.pop_front();
        }
        own.push_back((id, recipients));
    }

    /// Answers how many local connections message `id` (published on `channel`, a volley
    /// channel name such as `room:lobby`) reached here, now or once it arrives.
    pub fn await_delivery(&self, id: String, channel: &str, reply: oneshot::Sender<u32>) {
        let mut own = self.own_deliveries.borrow_mut();
        if let Some(at) = own.iter().position(|(seen, _)| *seen == id) {
            let (_, recipients) = own.remove(at).unwrap_or_default();
            let _ = reply.send(recipients);
            return;
        }
        let subscribed = self
            .broker
            .as_ref()
            .is_some_and(|b| b.is_subscribed(&b.channel(channel)));
        if subscribed {
            let deadline_s = self.now_s.get() + AWAIT_DELIVERY_S;
            self.awaiting_delivery
                .borrow_mut()
                .push((id, reply, deadline_s));
        } else {
            let _ = reply.send(0);
        }
    }

    async fn serve_mesh(self: Rc<Self>, mut rx: ConnectedReceiver<ShardMsg>) {
        // Handled one at a time in arrival order: deliveries of a channel stay in sequence.
        while let Some(msg) = rx.next().await {
            self.handle_msg(msg);
        }
    }

    async fn accept_loop(self: Rc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    Metrics::inc(&self.metrics.accepted_total);
                    if self.http_sessions.get() >= self.config.http_sessions_max {
                        // A flood of sockets that never finish a request: each one would
                        // hold a task and a read buffer until its head deadline. Refuse
                        // new ones at once (the kernel resets them) and count it.
                        Metrics::inc(&self.metrics.rejected_http_sessions_total);
                        drop(stream);
                        continue;
                    }
                    // Pushes are small and latency matters more than packet count.
                    let _ = stream.set_nodelay(true);
                    self.http_sessions.set(self.http_sessions.get() + 1);
                    let shard = self.clone();
                    glommio::spawn_local(async move {
                        api::serve_http(shard.clone(), stream).await;
                        shard.http_sessions.set(shard.http_sessions.get() - 1);
                    })
                    .detach();
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.accept_errors_total);
                    let e = io::Error::from(e);
                    let now_s = self.now_s.get();
                    let last = self.accept_error_logged_s.get();
                    if last.is_none_or(|last| now_s >= last + ACCEPT_ERROR_LOG_INTERVAL_S) {
                        self.accept_error_logged_s.set(Some(now_s));
                        let hint = match e.raw_os_error() {
                            Some(libc::EMFILE) | Some(libc::ENFILE) => {
                                " (open file limit reached: raise LimitNOFILE, see tuning/, or lower --max-connections)"
                            }
                            _ => "",
                        };
                        log!(Some(self.id), "accept failed: {e}{hint}; retrying");
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
        let mut next_ping_s = self.config.ping_interval_s;
        let full_every_s = FULL_SWEEP_EVERY_S.min(self.config.ping_interval_s).max(1);
        let mut next_full_s = full_every_s;
        let mut next_heartbeat_s = 0;
        loop {
            glommio::timer::sleep(SWEEP_INTERVAL).await;
            let now_s = self.started.elapsed().as_secs() as u32;
            self.now_s.set(now_s);
            self.awaiting_delivery
                .borrow_mut()
                .retain(|(_, _, deadline_s)| now_s < *deadline_s);
            self.receipts.borrow_mut().expire(now_s);
            let ping_due = now_s >= next_ping_s;
            if ping_due {
                next_ping_s = now_s + self.config.ping_interval_s;
            }
            // Retried every second until Redis takes it, then every third of the TTL.
            if now_s >= next_heartbeat_s && self.heartbeat() {
                next_heartbeat_s = now_s + (self.config.presence_ttl_s / 3).max(1);
            }
            if !ping_due && now_s < next_full_s {
                continue;
            }
            next_full_s = now_s + full_every_s;
            self.history.borrow_mut().expire(now_s);
            self.inboxes.borrow_mut().expire(now_s);
            let idle_s = self.config.idle_timeout_s;
            for (_, conn) in self.conns.borrow_mut().iter_mut() {
                if let Some(recovering) = conn.session.recovering.as_mut() {
                    if recovering.expire(now_s) {
                        conn.session.recovering = None;
                    }
                }
                match conn.state() {
                    ConnState::Open if now_s.saturating_sub(conn.last_rx_s()) >= idle_s => {
                        Metrics::inc(&self.metrics.idle_closes_total);
                        conn.close(close_code::GOING_AWAY, "idle timeout", &self.limits, now_s);
                    }
                    ConnState::Open if ping_due => {
                        conn.push(self.ping_frame.clone(), &self.limits, &self.metrics, now_s);
                    }
                    ConnState::Open => {}
                    ConnState::Dead => {}
                    _ if now_s >= conn.deadline_s() => conn.kill(),
                    _ => {}
                }
            }
        }
    }

    /// Cluster mode, shard 0: refreshes this node's heartbeat key, whose expiry tells the
    /// cluster this node (and the presence it counted) is gone. Returns false when it could
    /// not be sent (link down), so it is retried.
    fn heartbeat(&self) -> bool {
        self.broker.as_ref().is_none_or(|b| b.beat())
    }

    /// Queues a close frame to every open connection.
    fn close_all(&self, code: u16, reason: &str) {
        let now_s = self.now_s.get();
        for (_, conn) in self.conns.borrow_mut().iter_mut() {
            conn.close(code, reason, &self.limits, now_s);
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
    let shard = Rc::new(Shard::new(id, config, shared.clone(), senders));

    let mesh_tasks: Vec<_> = receivers
        .streams()
        .into_iter()
        .map(|(_, rx)| glommio::spawn_local(shard.clone().serve_mesh(rx)))
        .collect();
    let sweep_task = glommio::spawn_local(shard.clone().sweep_loop());
    let accept_task = glommio::spawn_local(shard.clone().accept_loop(listener));
    let broker_tasks: Vec<_> = match &shard.broker {
        Some(b) => vec![
            glommio::spawn_local(broker::client::run_subscriber(shard.clone(), b.clone())),
            glommio::spawn_local(broker::client::run_commands(shard.clone(), b.clone())),
        ],
        None => Vec::new(),
    };

    while !shared.shutdown_requested() {
        glommio::timer::sleep(SHUTDOWN_POLL_INTERVAL).await;
    }

    // Shutdown: stop accepting (dropping the task drops the listener), tell every client
    // we are going away, and give them until the grace deadline to get it.
    shard.accepting.set(false);
    accept_task.cancel().await;
    shard.close_all(close_code::GOING_AWAY, "server shutting down");
    let deadline = Instant::now() + grace;
    while shard.connection_count() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    let left = shard.connection_count();
    if left > 0 {
        log!(
            Some(id),
            "shutdown grace over with {left} connections still closing; dropping them"
        );
    }
    sweep_task.cancel().await;
    for task in broker_tasks {
        task.cancel().await;
    }
    drop(mesh_tasks);
    Ok(())
}

/// The message inside a failed mesh send, when the error carries it.
fn give_back(e: GlommioError<ShardMsg>) -> Option<ShardMsg> {
    match e {
        GlommioError::Closed(ResourceType::Channel(msg))
        | GlommioError::WouldBlock(ResourceType::Channel(msg)) => Some(msg),
        _ => None,
    }
}
