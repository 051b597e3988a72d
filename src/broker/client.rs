//! One shard's Redis links, written by us on glommio's `TcpStream` with redis-protocol as
//! the codec: a subscriber link and a command link, each reconnecting with capped
//! exponential backoff plus jitter, each pinging when idle so a dead link is noticed.
//!
//! Subscriptions are refcounted per shard: the first local interest in a channel queues a
//! SUBSCRIBE, the last one leaving queues an UNSUBSCRIBE; the subscriber loop sends what is
//! queued in one command, so 10k clients arriving at once cost one round trip, not 10k.
//! After a reconnect every channel still wanted is subscribed again.
//!
//! Besides those, a shard may hold fixed subscriptions for its whole life (`subscribe_always`:
//! socket.io's adapter channels and patterns, issue 13): sent at every (re)connect, never
//! refcounted, and kept out of the readiness and catch-up bookkeeping of volley's channels
//! (what they carry is not numbered, so there is nothing to catch up).
//!
//! `shard` spawns `run_subscriber` and `run_commands` and cancels them at shutdown;
//! `backend::redis` calls `Broker::command`. Messages from subscriptions go out through a
//! channel the shard reads: the broker never calls up.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use redis_protocol::resp2::types::BytesFrame;

use super::resp::{self, Push};
use super::Error;
use crate::config::RedisConfig;
use crate::ctx::Ctx;
use crate::log;
use crate::metrics::Metrics;

/// First wait after a failed connect; doubles up to `BACKOFF_MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnect attempts: Redis coming back is noticed within this.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The backoff starts over only after a link stayed up this long: a Redis that accepts
/// TCP and then refuses (a new `requirepass`, a full server) must not be hammered.
const LINK_STABLE: Duration = Duration::from_secs(5);
/// A link with no traffic for this long sends a PING. With `REPLY_TIMEOUT`, a stalled
/// Redis (SIGSTOP, a full network queue) is noticed within ~3 s.
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// A PING (or a command) unanswered for this long means the link is stalled: it is
/// dropped, and what was written on it has an unknown outcome.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for TCP connect plus AUTH/SELECT/PING.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Replies that mean Redis refuses writes: the link is up but the cluster is degraded
/// until a write goes through again (`/healthz` says so).
const WRITE_REFUSALS: [&str; 5] = ["OOM", "NOAUTH", "READONLY", "MISCONF", "NOPERM"];
/// While writes are refused, one probe write per this interval tells when they work again.
const WRITE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a caller waits for Redis to confirm subscriptions it depends on (a join's reply,
/// a recovery's history read).
pub const SUBSCRIBE_WAIT_MAX: Duration = Duration::from_secs(3);
/// How often that wait looks.
const SUBSCRIBE_WAIT_POLL: Duration = Duration::from_millis(2);
/// Channels per SUBSCRIBE/UNSUBSCRIBE command when many change at once.
const CHANNELS_PER_COMMAND: usize = 1000;
/// Bytes read from a Redis link per read call.
const READ_BYTES: usize = 16 * 1024;
/// Commands queued for the command link before callers are refused.
const COMMAND_QUEUE_MAX: usize = 4096;

/// Capacity of the channel that carries subscription messages to the shard: past it the
/// subscriber link stops reading until the shard catches up (Redis buffers the rest).
pub const INCOMING_MAX: usize = 1024;

/// What the subscriber link hands to the shard, in the order it happened.
#[derive(Debug)]
pub enum Incoming {
    /// The subscriber link is connected again: what arrives from now on may follow a gap,
    /// until `Resubscribed` says every channel is back and the gap can be read from history.
    Reconnected,
    /// Redis confirmed these subscriptions (new ones, or again after a reconnect).
    Subscribed { channels: Vec<Bytes> },
    /// A message on a subscribed channel.
    Message {
        /// The Redis channel it came on.
        channel: Bytes,
        payload: Bytes,
    },
    /// After a (re)connect, Redis confirmed every channel this shard wanted: from here on
    /// nothing published is missed, and what was published while the link was down can be
    /// read from history.
    Resubscribed,
}

/// Which of the two links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Subscriber,
    Commands,
}

impl Link {
    fn name(self) -> &'static str {
        match self {
            Link::Subscriber => "subscriber",
            Link::Commands => "command",
        }
    }
}

/// Why a link could not deliver a command's reply.
#[derive(Debug, Clone)]
struct LinkFailure {
    /// True when the command was written before the link failed: Redis may have run it.
    written: bool,
    reason: String,
}

/// Where a command's reply goes: the frame, or why the link could not deliver one.
type ReplySender = oneshot::Sender<Result<BytesFrame, LinkFailure>>;

/// Who waits for the next reply on the command link.
enum Waiter {
    /// A caller.
    Caller(ReplySender),
    /// Our own PING or heartbeat: nobody.
    Nobody,
    /// A write probe while Redis refuses writes: a non-error reply ends the refusal.
    Probe,
}

/// A command for the command link and where its reply goes.
struct Request {
    wire: BytesMut,
    reply: ReplySender,
}

/// State of a link as the rest of the shard sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// Never connected yet.
    Starting,
    Up,
    Down,
}

/// A node's liveness key, written first thing on every (re)connected command link so no
/// presence counter of this node ever reaches Redis before its heartbeat does.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// `{prefix}:node:<id>`, set with a TTL.
    pub key: String,
    /// `{prefix}:nodes`, the registry of nodes that have beaten at least once.
    pub registry: String,
    pub node_id: String,
    pub ttl_s: u32,
}

impl Heartbeat {
    /// The commands, encoded.
    pub fn wire(&self) -> BytesMut {
        let mut wire = BytesMut::new();
        let ttl = self.ttl_s.to_string();
        resp::encode_command(
            &mut wire,
            &[b"SET", self.key.as_bytes(), b"1", b"EX", ttl.as_bytes()],
        );
        resp::encode_command(
            &mut wire,
            &[b"SADD", self.registry.as_bytes(), self.node_id.as_bytes()],
        );
        wire
    }
}

pub struct Broker {
    shard_id: usize,
    /// Shard 0 only: written at each command-link connect (the sweep refreshes it).
    heartbeat: Option<Heartbeat>,
    pub config: RedisConfig,
    /// Local refcount per channel: how many local connections want it.
    interest: RefCell<HashMap<String, u32>>,
    /// Wakes the subscriber loop when `interest` crossed 0 <-> 1 for some channel.
    interest_changed: LocalSender<()>,
    interest_changed_rx: RefCell<Option<LocalReceiver<()>>>,
    requests: LocalSender<Request>,
    requests_rx: RefCell<Option<LocalReceiver<Request>>>,
    sub_state: Cell<LinkState>,
    cmd_state: Cell<LinkState>,
    /// Channels the subscriber link has confirmed, for health and delivery counting.
    confirmed: RefCell<HashSet<Bytes>>,
    /// Channels subscribed at the last (re)connect and not yet confirmed: until it is empty
    /// the shard may miss messages, so cluster publishes from it are refused.
    resubscribing: RefCell<HashSet<Bytes>>,
    /// The last failure, in words, for /healthz and the 503 answers.
    last_error: RefCell<Option<String>>,
    /// Set while Redis refuses writes (OOM, NOAUTH, READONLY, MISCONF, NOPERM), in its words.
    write_refusal: RefCell<Option<String>>,
    /// Times the command link came up, plus times writes worked again after a refusal: a
    /// change tells the shard to write again what Redis may have lost (presence counters).
    command_connects: Cell<u64>,
    /// Channels subscribed for the life of the shard (`subscribe_always`).
    fixed_channels: RefCell<Vec<String>>,
    /// Patterns subscribed (PSUBSCRIBE) for the life of the shard.
    fixed_patterns: RefCell<Vec<String>>,
    /// Fixed channels and patterns Redis confirmed on the current subscriber session.
    fixed_confirmed: RefCell<HashSet<Bytes>>,
}

impl Broker {
    pub fn new(shard_id: usize, config: RedisConfig, heartbeat: Option<Heartbeat>) -> Broker {
        let (interest_changed, interest_rx) = local_channel::new_bounded(1);
        let (requests, requests_rx) = local_channel::new_bounded(COMMAND_QUEUE_MAX);
        Broker {
            shard_id,
            heartbeat,
            config,
            interest: RefCell::new(HashMap::new()),
            interest_changed,
            interest_changed_rx: RefCell::new(Some(interest_rx)),
            requests,
            requests_rx: RefCell::new(Some(requests_rx)),
            sub_state: Cell::new(LinkState::Starting),
            cmd_state: Cell::new(LinkState::Starting),
            confirmed: RefCell::new(HashSet::new()),
            resubscribing: RefCell::new(HashSet::new()),
            last_error: RefCell::new(None),
            write_refusal: RefCell::new(None),
            command_connects: Cell::new(0),
            fixed_channels: RefCell::new(Vec::new()),
            fixed_patterns: RefCell::new(Vec::new()),
            fixed_confirmed: RefCell::new(HashSet::new()),
        }
    }

    /// Subscribes to `channels` and the glob `patterns` for the life of the shard, again
    /// after every reconnect. Their messages come out as [`Incoming::Message`] with the
    /// channel they were published on; their confirmations are not reported. Call it before
    /// `run_subscriber` starts.
    pub fn subscribe_always(&self, channels: Vec<String>, patterns: Vec<String>) {
        debug_assert!(self.sub_state.get() == LinkState::Starting);
        *self.fixed_channels.borrow_mut() = channels;
        *self.fixed_patterns.borrow_mut() = patterns;
    }

    /// True when Redis confirmed every fixed subscription on the current subscriber link.
    pub fn fixed_ready(&self) -> bool {
        let confirmed = self.fixed_confirmed.borrow();
        self.sub_state.get() == LinkState::Up
            && self
                .fixed_channels
                .borrow()
                .iter()
                .chain(self.fixed_patterns.borrow().iter())
                .all(|name| confirmed.contains(name.as_bytes()))
    }

    fn is_fixed_channel(&self, channel: &[u8]) -> bool {
        self.fixed_channels
            .borrow()
            .iter()
            .any(|c| c.as_bytes() == channel)
    }

    /// True when both links are connected.
    pub fn is_up(&self) -> bool {
        self.sub_state.get() == LinkState::Up && self.cmd_state.get() == LinkState::Up
    }

    /// True when the subscriber link is up and has confirmed every channel it resubscribed
    /// at its last (re)connect: messages published now reach this shard. The fixed
    /// subscriptions are sent first, so they are confirmed by then too whenever there was
    /// anything to resubscribe (a shard with sockets has at least `all`).
    pub fn is_ready(&self) -> bool {
        self.sub_state.get() == LinkState::Up && self.resubscribing.borrow().is_empty()
    }

    /// Why the broker is not fully working, in words (None when it is): a link down or
    /// stalled, subscriptions not yet confirmed after a reconnect, or writes refused.
    pub fn problem(&self) -> Option<String> {
        if !self.is_up() {
            let reason = self.last_error.borrow().clone();
            return Some(
                reason.unwrap_or_else(|| format!("connecting to {}", self.config.display)),
            );
        }
        if let Some(refusal) = self.write_refusal.borrow().as_ref() {
            return Some(format!("{} refuses writes: {refusal}", self.config.display));
        }
        if !self.is_ready() {
            return Some("resubscribing after a reconnect".into());
        }
        None
    }

    /// Why publishes cannot go out now, if they cannot: a link down, or this shard's
    /// subscriptions not confirmed since its last reconnect (it would miss what it publishes).
    pub fn publish_blocker(&self) -> Option<String> {
        if !self.is_up() {
            return self.problem();
        }
        if !self.is_ready() {
            return Some(
                "this shard's subscriptions are not yet confirmed after a reconnect".into(),
            );
        }
        None
    }

    /// True when the subscriber link has confirmed a subscription to `channel` (a refcounted
    /// or a fixed one).
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.sub_state.get() == LinkState::Up
            && (self.confirmed.borrow().contains(channel.as_bytes())
                || self.fixed_confirmed.borrow().contains(channel.as_bytes()))
    }

    /// Waits (at most `SUBSCRIBE_WAIT_MAX`) until every Redis channel in `channels` is a
    /// confirmed subscription; false when the wait ran out.
    pub async fn wait_subscribed(&self, channels: &[String]) -> bool {
        let deadline = Instant::now() + SUBSCRIBE_WAIT_MAX;
        loop {
            if channels.iter().all(|c| self.is_subscribed(c)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            glommio::timer::sleep(SUBSCRIBE_WAIT_POLL).await;
        }
    }

    /// One more local connection wants `channel`.
    pub fn interest_add(&self, channel: &str) {
        let mut interest = self.interest.borrow_mut();
        let count = interest.entry(channel.to_string()).or_insert(0);
        *count += 1;
        if *count == 1 {
            // A full signal channel already means "look again"; nothing more to say.
            let _ = self.interest_changed.try_send(());
        }
    }

    /// One local connection no longer wants `channel`.
    pub fn interest_remove(&self, channel: &str) {
        let mut interest = self.interest.borrow_mut();
        let Some(count) = interest.get_mut(channel) else {
            debug_assert!(false, "interest_remove without interest_add for {channel}");
            return;
        };
        *count -= 1;
        if *count == 0 {
            interest.remove(channel);
            let _ = self.interest_changed.try_send(());
        }
    }

    fn set_state(&self, link: Link, up: bool, reason: Option<String>, metrics: &Metrics) {
        let cell = match link {
            Link::Subscriber => &self.sub_state,
            Link::Commands => &self.cmd_state,
        };
        let before = cell.get();
        let was_up = self.is_up();
        let after = if up { LinkState::Up } else { LinkState::Down };
        cell.set(after);
        if let Some(reason) = &reason {
            *self.last_error.borrow_mut() = Some(reason.clone());
        }
        // One line per state change, never one per retry.
        if before != after {
            match (&reason, up) {
                (_, true) => log!(
                    info,
                    Some(self.shard_id),
                    "redis {} link to {} is up",
                    link.name(),
                    self.config.display
                ),
                (Some(reason), false) => log!(
                    warn,
                    Some(self.shard_id),
                    "redis {} link to {} is down: {reason}; retrying with backoff",
                    link.name(),
                    self.config.display
                ),
                (None, false) => {}
            }
        }
        if before == LinkState::Up && after == LinkState::Down {
            Metrics::inc(&metrics.redis_reconnects_total);
        }
        let now_up = self.is_up();
        if now_up != was_up {
            metrics.redis_up.set(now_up as u64);
        }
        if now_up {
            *self.last_error.borrow_mut() = None;
        }
    }

    /// Refreshes the node heartbeat (shard 0); false when it could not be sent.
    pub fn beat(&self) -> bool {
        let Some(heartbeat) = &self.heartbeat else {
            return true;
        };
        let ttl = heartbeat.ttl_s.to_string();
        // EXPIRE first: Redis refuses SET when it is out of memory (noeviction) but still
        // refreshes a TTL, so a live node does not vanish from presence while Redis is full.
        self.command_detached(&[b"EXPIRE", heartbeat.key.as_bytes(), ttl.as_bytes()]);
        // The heartbeat first, then the registry: a node in the registry without a heartbeat
        // key has died; one not yet in it has not started beating.
        self.command_detached(&[
            b"SET",
            heartbeat.key.as_bytes(),
            b"1",
            b"EX",
            ttl.as_bytes(),
        ]) && self.command_detached(&[
            b"SADD",
            heartbeat.registry.as_bytes(),
            heartbeat.node_id.as_bytes(),
        ])
    }

    /// Sends a command whose reply nobody waits for (presence counters). Dropped, and
    /// false, when the link is down.
    pub fn command_detached(&self, args: &[&[u8]]) -> bool {
        if self.cmd_state.get() != LinkState::Up {
            return false;
        }
        let mut wire = BytesMut::new();
        resp::encode_command(&mut wire, args);
        let (reply, _) = oneshot::channel();
        self.requests.try_send(Request { wire, reply }).is_ok()
    }

    /// Sends one command on the command link and waits for its reply. Fails at once when the
    /// link is down, so a publish never waits on a dead Redis. A command written to a link
    /// that then stalled or broke is `Error::Unknown`: Redis may have run it.
    pub async fn command(&self, args: &[&[u8]]) -> Result<BytesFrame, Error> {
        if self.cmd_state.get() != LinkState::Up {
            return Err(Error::Unavailable(self.problem().unwrap_or_default()));
        }
        let mut wire = BytesMut::new();
        resp::encode_command(&mut wire, args);
        let (reply, answer) = oneshot::channel();
        if self.requests.try_send(Request { wire, reply }).is_err() {
            return Err(Error::Unavailable("too many Redis commands queued".into()));
        }
        // A safety net only: the command link itself fails what it wrote after
        // REPLY_TIMEOUT. Past this, the command may sit in the queue or on the wire.
        let timeout = async {
            glommio::timer::sleep(REPLY_TIMEOUT * 2).await;
            Err(Error::Unknown(format!(
                "no reply from {} within {} s",
                self.config.display,
                (REPLY_TIMEOUT * 2).as_secs()
            )))
        };
        let answer = async {
            match answer.await {
                Ok(Ok(BytesFrame::Error(e))) => {
                    let words = e.to_string();
                    if WRITE_REFUSALS.iter().any(|code| words.starts_with(code)) {
                        self.refuse_writes(&words);
                    }
                    Err(Error::Reply(words))
                }
                Ok(Ok(frame)) => Ok(frame),
                Ok(Err(LinkFailure {
                    written: true,
                    reason,
                })) => Err(Error::Unknown(reason)),
                Ok(Err(LinkFailure { reason, .. })) => Err(Error::Unavailable(reason)),
                Err(_) => Err(Error::Unknown("the Redis link was lost".into())),
            }
        };
        answer.or(timeout).await
    }

    /// Counts the moments Redis may have lost what this shard wrote (the command link came
    /// up again, or writes work again after a refusal): a change means "write it again".
    pub fn resync_generation(&self) -> u64 {
        self.command_connects.get()
    }

    /// True while Redis refuses writes.
    pub fn refuses_writes(&self) -> bool {
        self.write_refusal.borrow().is_some()
    }

    /// True when some local connection wants the Redis channel `channel`.
    pub fn wants(&self, channel: &str) -> bool {
        self.interest.borrow().contains_key(channel)
    }

    /// Redis refused a write in these words: degraded until a probe write goes through.
    fn refuse_writes(&self, words: &str) {
        let mut refusal = self.write_refusal.borrow_mut();
        if refusal.is_none() {
            // An error, not a warning: publishes fail until the operator acts (memory,
            // snapshots, credentials, a replica promoted); the link itself is up.
            log!(
                error,
                Some(self.shard_id),
                "redis {} refuses writes: {words}; degraded until a write goes through",
                self.config.display
            );
        }
        *refusal = Some(words.to_string());
    }

    /// A probe write went through: Redis takes writes again.
    fn writes_accepted(&self) {
        if self.write_refusal.borrow_mut().take().is_some() {
            self.command_connects.set(self.command_connects.get() + 1);
            log!(
                info,
                Some(self.shard_id),
                "redis {} takes writes again",
                self.config.display
            );
        }
    }
}

/// Capped exponential backoff with jitter, so many shards and processes do not reconnect in
/// lockstep after Redis comes back.
struct Backoff {
    next: Duration,
    rng: u64,
}

impl Backoff {
    fn new(seed: u64) -> Backoff {
        Backoff {
            next: BACKOFF_MIN,
            rng: seed | 1,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// The next wait: a random point in [next/2, next], then next doubles up to the cap.
    fn wait(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.next.as_millis() as u64;
        let wait = base / 2 + self.rng % (base / 2 + 1);
        self.next = (self.next * 2).min(BACKOFF_MAX);
        Duration::from_millis(wait)
    }
}

fn seed(shard_id: usize, link: Link) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now ^ ((shard_id as u64) << 32) ^ (link as u64) ^ std::process::id() as u64
}

/// Reads what is available into `buf`; `Ok(0)` is the end of the stream.
async fn read_some(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    scratch: &mut [u8],
) -> io::Result<usize> {
    let n = stream.read(scratch).await?;
    buf.extend_from_slice(&scratch[..n]);
    Ok(n)
}

async fn read_frame(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    scratch: &mut [u8],
) -> Result<BytesFrame, String> {
    loop {
        if let Some(frame) = resp::decode(buf).map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        match read_some(stream, buf, scratch).await {
            Ok(0) => return Err("Redis closed the connection".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}

/// TCP connect plus AUTH and SELECT from the URL; errors say what failed in words.
async fn connect(config: &RedisConfig) -> Result<(TcpStream, BytesMut), String> {
    let handshake = async {
        let mut stream = TcpStream::connect(config.addr)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", config.display))?;
        let _ = stream.set_nodelay(true);
        let mut buf = BytesMut::new();
        let mut scratch = vec![0u8; 512];
        let mut wire = BytesMut::new();
        let mut expected = 0;
        if let Some(password) = &config.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &config.username {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            resp::encode_command(&mut wire, &args);
            expected += 1;
        }
        let db = config.db.to_string();
        if config.db != 0 {
            resp::encode_command(&mut wire, &[b"SELECT", db.as_bytes()]);
            expected += 1;
        }
        // The link is up only after a round trip: a Redis that accepts TCP but refuses
        // commands (a new requirepass, a loading dataset) is not up.
        resp::encode_command(&mut wire, &[b"PING"]);
        expected += 1;
        stream
            .write_all(&wire)
            .await
            .map_err(|e| format!("write to {} failed: {e}", config.display))?;
        let steps = ["AUTH", "SELECT", "PING"];
        let sent: Vec<&str> = steps
            .iter()
            .copied()
            .filter(|step| match *step {
                "AUTH" => config.password.is_some(),
                "SELECT" => config.db != 0,
                _ => true,
            })
            .collect();
        debug_assert_eq!(sent.len(), expected);
        for step in sent {
            if let BytesFrame::Error(e) = read_frame(&mut stream, &mut buf, &mut scratch).await? {
                return Err(format!("{} refused {step}: {e}", config.display));
            }
        }
        Ok((stream, buf))
    };
    let timeout = async {
        glommio::timer::sleep(CONNECT_TIMEOUT).await;
        Err(format!(
            "no answer from {} within {} s",
            config.display,
            CONNECT_TIMEOUT.as_secs()
        ))
    };
    handshake.or(timeout).await
}

/// Keeps the subscriber link up for the life of the shard.
pub async fn run_subscriber(ctx: Rc<Ctx>, broker: Rc<Broker>, incoming: LocalSender<Incoming>) {
    let Some(changed) = broker.interest_changed_rx.borrow_mut().take() else {
        return;
    };
    let mut backoff = Backoff::new(seed(broker.shard_id, Link::Subscriber));
    loop {
        let reason = match connect(&broker.config).await {
            Ok((mut stream, buf)) => {
                let up_at = Instant::now();
                let reason =
                    subscriber_session(&ctx, &broker, &mut stream, buf, &changed, &incoming).await;
                broker.confirmed.borrow_mut().clear();
                broker.resubscribing.borrow_mut().clear();
                broker.fixed_confirmed.borrow_mut().clear();
                if up_at.elapsed() >= LINK_STABLE {
                    backoff.reset();
                }
                reason
            }
            Err(reason) => reason,
        };
        broker.set_state(Link::Subscriber, false, Some(reason), &ctx.metrics);
        glommio::timer::sleep(backoff.wait()).await;
    }
}

/// Sends SUBSCRIBE/UNSUBSCRIBE for the difference between what is wanted and `subscribed`.
async fn sync_subscriptions(
    broker: &Broker,
    stream: &mut TcpStream,
    subscribed: &mut HashSet<String>,
) -> Result<(), String> {
    let (to_subscribe, to_unsubscribe) = {
        let interest = broker.interest.borrow();
        let add: Vec<String> = interest
            .keys()
            .filter(|c| !subscribed.contains(*c))
            .cloned()
            .collect();
        let drop: Vec<String> = subscribed
            .iter()
            .filter(|c| !interest.contains_key(*c))
            .cloned()
            .collect();
        (add, drop)
    };
    let mut wire = BytesMut::new();
    for (verb, channels) in [
        (&b"SUBSCRIBE"[..], &to_subscribe),
        (&b"UNSUBSCRIBE"[..], &to_unsubscribe),
    ] {
        for chunk in channels.chunks(CHANNELS_PER_COMMAND) {
            let mut args: Vec<&[u8]> = Vec::with_capacity(chunk.len() + 1);
            args.push(verb);
            args.extend(chunk.iter().map(|c| c.as_bytes()));
            resp::encode_command(&mut wire, &args);
        }
    }
    if wire.is_empty() {
        return Ok(());
    }
    stream
        .write_all(&wire)
        .await
        .map_err(|e| format!("write to {} failed: {e}", broker.config.display))?;
    subscribed.extend(to_subscribe);
    for channel in &to_unsubscribe {
        subscribed.remove(channel);
    }
    Ok(())
}

/// Sends PSUBSCRIBE, then SUBSCRIBE, for the fixed subscriptions (once per session). In
/// that order on purpose: Redis runs one connection's commands in order, so once a fixed
/// channel counts this link in `PUBSUB NUMSUB`, its patterns are in place too (PUBSUB
/// NUMPAT counts distinct patterns, not subscribers, so it cannot tell).
async fn subscribe_fixed(broker: &Broker, stream: &mut TcpStream) -> Result<(), String> {
    let mut wire = BytesMut::new();
    for (verb, names) in [
        (&b"PSUBSCRIBE"[..], broker.fixed_patterns.borrow().clone()),
        (&b"SUBSCRIBE"[..], broker.fixed_channels.borrow().clone()),
    ] {
        if names.is_empty() {
            continue;
        }
        let mut args: Vec<&[u8]> = Vec::with_capacity(names.len() + 1);
        args.push(verb);
        args.extend(names.iter().map(|n| n.as_bytes()));
        resp::encode_command(&mut wire, &args);
    }
    if wire.is_empty() {
        return Ok(());
    }
    stream
        .write_all(&wire)
        .await
        .map_err(|e| format!("write to {} failed: {e}", broker.config.display))
}

enum SubEvent {
    Read(io::Result<usize>),
    InterestChanged,
    Tick,
}

/// One connected subscriber session; returns why it ended.
async fn subscriber_session(
    ctx: &Ctx,
    broker: &Broker,
    stream: &mut TcpStream,
    mut buf: BytesMut,
    changed: &LocalReceiver<()>,
    incoming: &LocalSender<Incoming>,
) -> String {
    if incoming.send(Incoming::Reconnected).await.is_err() {
        return "the shard is stopping".into();
    }
    // The fixed ones first: Redis answers in order, so when the last refcounted channel is
    // confirmed (`Incoming::Resubscribed`, the catch-up) the sockets channel of this
    // process's socket ids is subscribed too, and a catch-up misses nothing published on it.
    if let Err(reason) = subscribe_fixed(broker, stream).await {
        return reason;
    }
    let mut subscribed = HashSet::new();
    if let Err(reason) = sync_subscriptions(broker, stream, &mut subscribed).await {
        return reason;
    }
    // Until Redis confirms all of these, this shard may miss what is published on them.
    *broker.resubscribing.borrow_mut() = subscribed
        .iter()
        .map(|c| Bytes::copy_from_slice(c.as_bytes()))
        .collect();
    let mut announced = false;
    broker.set_state(Link::Subscriber, true, None, &ctx.metrics);
    let mut scratch = vec![0u8; READ_BYTES];
    let mut last_rx = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    loop {
        let event = {
            let read = async { SubEvent::Read(read_some(stream, &mut buf, &mut scratch).await) };
            let change = async {
                changed.recv().await;
                SubEvent::InterestChanged
            };
            let tick = async {
                glommio::timer::sleep(PING_INTERVAL).await;
                SubEvent::Tick
            };
            read.or(change).or(tick).await
        };
        match event {
            SubEvent::Read(Ok(0)) => return "Redis closed the subscriber connection".into(),
            SubEvent::Read(Err(e)) => return format!("subscriber read failed: {e}"),
            SubEvent::Read(Ok(_)) => {
                last_rx = Instant::now();
                ping_sent = None;
                let mut confirmed = Vec::new();
                loop {
                    let frame = match resp::decode(&mut buf) {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        Err(e) => return e.to_string(),
                    };
                    match resp::classify(frame) {
                        Push::Message { channel, payload } => {
                            let message = Incoming::Message { channel, payload };
                            if incoming.send(message).await.is_err() {
                                return "the shard is stopping".into();
                            }
                        }
                        Push::Subscribed { channel, .. } if broker.is_fixed_channel(&channel) => {
                            broker.fixed_confirmed.borrow_mut().insert(channel);
                        }
                        Push::PSubscribed { pattern, .. } => {
                            broker.fixed_confirmed.borrow_mut().insert(pattern);
                        }
                        Push::Subscribed { channel, .. } => {
                            broker.resubscribing.borrow_mut().remove(&channel);
                            broker.confirmed.borrow_mut().insert(channel.clone());
                            confirmed.push(channel);
                        }
                        Push::Unsubscribed { channel, .. } => {
                            broker.confirmed.borrow_mut().remove(&channel);
                        }
                        Push::Error(e) => {
                            return format!("Redis refused a subscriber command: {e}")
                        }
                        Push::Pong | Push::Other(_) => {}
                    }
                }
                if !confirmed.is_empty() {
                    let event = Incoming::Subscribed {
                        channels: confirmed,
                    };
                    if incoming.send(event).await.is_err() {
                        return "the shard is stopping".into();
                    }
                }
            }
            SubEvent::InterestChanged => {
                if let Err(reason) = sync_subscriptions(broker, stream, &mut subscribed).await {
                    return reason;
                }
            }
            SubEvent::Tick => {}
        }
        if !announced && broker.resubscribing.borrow().is_empty() {
            announced = true;
            if incoming.send(Incoming::Resubscribed).await.is_err() {
                return "the shard is stopping".into();
            }
        }
        if let Some(sent) = ping_sent {
            if sent.elapsed() >= REPLY_TIMEOUT {
                return format!(
                    "subscriber link stalled: no answer to PING within {} s",
                    REPLY_TIMEOUT.as_secs()
                );
            }
        } else if last_rx.elapsed() >= PING_INTERVAL {
            let mut wire = BytesMut::new();
            resp::encode_command(&mut wire, &[b"PING"]);
            if let Err(e) = stream.write_all(&wire).await {
                return format!("write failed: {e}");
            }
            ping_sent = Some(Instant::now());
        }
    }
}

/// Keeps the command link up for the life of the shard.
pub async fn run_commands(ctx: Rc<Ctx>, broker: Rc<Broker>) {
    let Some(requests) = broker.requests_rx.borrow_mut().take() else {
        return;
    };
    let mut backoff = Backoff::new(seed(broker.shard_id, Link::Commands));
    loop {
        let reason = match connect(&broker.config).await {
            Ok((mut stream, buf)) => {
                let up_at = Instant::now();
                let first = broker.heartbeat.as_ref().map(Heartbeat::wire);
                broker.set_state(Link::Commands, true, None, &ctx.metrics);
                broker
                    .command_connects
                    .set(broker.command_connects.get() + 1);
                let reason = command_session(&broker, &mut stream, buf, &requests, first).await;
                if up_at.elapsed() >= LINK_STABLE {
                    backoff.reset();
                }
                reason
            }
            Err(reason) => reason,
        };
        broker.set_state(Link::Commands, false, Some(reason.clone()), &ctx.metrics);
        // Whatever was queued while the link died was never written: fail it in words.
        while let Some(Some(request)) = futures_lite::future::poll_once(requests.recv()).await {
            let _ = request.reply.send(Err(LinkFailure {
                written: false,
                reason: reason.clone(),
            }));
        }
        glommio::timer::sleep(backoff.wait()).await;
    }
}

enum CmdEvent {
    Read(io::Result<usize>),
    Request(Option<Request>),
    Tick,
}

/// One connected command session; returns why it ended. Replies come back in order, so
/// each one answers the oldest waiter. A reply missing for `REPLY_TIMEOUT` ends the session
/// as stalled; every command written on it then has an unknown outcome.
async fn command_session(
    broker: &Broker,
    stream: &mut TcpStream,
    mut buf: BytesMut,
    requests: &LocalReceiver<Request>,
    first: Option<BytesMut>,
) -> String {
    let config = &broker.config;
    let mut waiting: VecDeque<(Instant, Waiter)> = VecDeque::new();
    // Our own commands (the heartbeat) go first; their two replies are nobody's.
    if let Some(first) = first {
        if let Err(e) = stream.write_all(&first).await {
            return format!("write to {} failed: {e}", config.display);
        }
        waiting.push_back((Instant::now(), Waiter::Nobody));
        waiting.push_back((Instant::now(), Waiter::Nobody));
    }
    let probe_key = format!("{}:write-probe", config.prefix);
    let mut last_probe = Instant::now();
    let mut scratch = vec![0u8; READ_BYTES];
    let mut last_rx = Instant::now();
    let reason = loop {
        let event = {
            let read = async { CmdEvent::Read(read_some(stream, &mut buf, &mut scratch).await) };
            let request = async { CmdEvent::Request(requests.recv().await) };
            let tick = async {
                glommio::timer::sleep(PING_INTERVAL).await;
                CmdEvent::Tick
            };
            read.or(request).or(tick).await
        };
        match event {
            CmdEvent::Read(Ok(0)) => break "Redis closed the command connection".to_string(),
            CmdEvent::Read(Err(e)) => break format!("command link read failed: {e}"),
            CmdEvent::Read(Ok(_)) => {
                last_rx = Instant::now();
                let mut failed = None;
                loop {
                    match resp::decode(&mut buf) {
                        Ok(Some(frame)) => match waiting.pop_front() {
                            Some((_, Waiter::Caller(reply))) => {
                                let _ = reply.send(Ok(frame));
                            }
                            Some((_, Waiter::Probe)) => match frame {
                                BytesFrame::Error(e) => broker.refuse_writes(&e),
                                _ => broker.writes_accepted(),
                            },
                            Some((_, Waiter::Nobody)) => {}
                            None => {
                                failed = Some("Redis sent a reply nobody asked for".to_string());
                                break;
                            }
                        },
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    }
                }
                if let Some(reason) = failed {
                    break reason;
                }
            }
            CmdEvent::Request(None) => break "the shard is stopping".to_string(),
            CmdEvent::Request(Some(request)) => {
                if let Err(e) = stream.write_all(&request.wire).await {
                    let reason = format!("write to {} failed: {e}", config.display);
                    // A failed write may still have put part of the command on the wire.
                    let _ = request.reply.send(Err(LinkFailure {
                        written: true,
                        reason: reason.clone(),
                    }));
                    break reason;
                }
                waiting.push_back((Instant::now(), Waiter::Caller(request.reply)));
            }
            CmdEvent::Tick => {}
        }
        if let Some((sent, _)) = waiting.front() {
            if sent.elapsed() >= REPLY_TIMEOUT {
                break format!(
                    "command link stalled: no reply from {} within {} s",
                    config.display,
                    REPLY_TIMEOUT.as_secs()
                );
            }
        } else if last_rx.elapsed() >= PING_INTERVAL {
            let mut wire = BytesMut::new();
            resp::encode_command(&mut wire, &[b"PING"]);
            if let Err(e) = stream.write_all(&wire).await {
                break format!("write failed: {e}");
            }
            waiting.push_back((Instant::now(), Waiter::Nobody));
        }
        // While Redis refuses writes, a harmless write now and then tells when it stops.
        if broker.write_refusal.borrow().is_some() && last_probe.elapsed() >= WRITE_PROBE_INTERVAL {
            last_probe = Instant::now();
            let mut wire = BytesMut::new();
            resp::encode_command(
                &mut wire,
                &[b"SET", probe_key.as_bytes(), b"1", b"PX", b"1000"],
            );
            if let Err(e) = stream.write_all(&wire).await {
                break format!("write failed: {e}");
            }
            waiting.push_back((Instant::now(), Waiter::Probe));
        }
    };
    for (_, waiter) in waiting {
        if let Waiter::Caller(reply) = waiter {
            let _ = reply.send(Err(LinkFailure {
                written: true,
                reason: reason.clone(),
            }));
        }
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(7);
        let waits: Vec<Duration> = (0..12).map(|_| backoff.wait()).collect();
        assert!(waits[0] >= BACKOFF_MIN / 2 && waits[0] <= BACKOFF_MIN);
        assert!(waits.iter().all(|w| *w <= BACKOFF_MAX));
        assert!(waits[11] >= BACKOFF_MAX / 2, "{waits:?}");
        backoff.reset();
        assert!(backoff.wait() <= BACKOFF_MIN);
    }
}
