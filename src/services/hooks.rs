//! Application hooks with I/O: this shard's HTTP/1.1 client to `--app-webhook` (a small pool
//! of keep-alive sockets, at most `--app-webhook-concurrency-max` requests in flight, a
//! bounded queue behind them, one deadline per call) and the protocol-neutral calls codecs
//! make (`Services::hook_connect`, `Services::hook_event`, `Services::hook_apply_rooms`).
//!
//! Owns the sockets to the webhook and nothing else: the documents and the response parser
//! are `crate::hooks` (sans-IO); what a client sees is its codec's business. A slow or dead
//! webhook costs at most `concurrency_max` sockets and `concurrency_max + queue_max` waiting
//! calls per shard, each ending by its deadline, and every failure is an error the client
//! gets, counted and logged at most once per `HOOK_ERROR_LOG_INTERVAL_S`.
//!
//! Called by `services::ops` (native unknown ops) and by the socket.io server (connects,
//! events).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use serde_json::Value;

use super::{Refusal, Services};
use crate::config::WebhookConfig;
use crate::conn::ConnKey;
use crate::ctx::Ctx;
use crate::hooks::{self, Connect, Event, Outcome, ResponseParser};
use crate::log;
use crate::metrics::Metrics;

/// At most one log line per this many seconds per shard about webhook failures: a dead
/// backend fails every call, and the log must stay readable.
const HOOK_ERROR_LOG_INTERVAL_S: u32 = 10;

/// Bytes read from a webhook socket at a time; responses are small.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// Why a hook call gave no outcome. The client gets [`HookError::client_message`]; the
/// operator gets the `Display` in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookError {
    /// No `--app-webhook` is set: the caller answers as it would without hooks.
    NotConfigured,
    /// Every request slot is busy and `queue_max` calls wait already: refused at once.
    QueueFull { queue_max: u32 },
    /// No answer within the deadline (queueing, connecting and reading included).
    Timeout { ms: u64 },
    /// The webhook could not be reached (refused, unreachable, reset).
    Unreachable(String),
    /// It answered something that is not a usable answer (status, HTTP, document).
    BadAnswer(String),
    /// The shard is stopping or runs too many tasks: the call was not started.
    Busy,
}

impl HookError {
    /// Words for the client: what happened and what to do, without the webhook's address.
    pub fn client_message(&self) -> String {
        match self {
            HookError::NotConfigured => "this server has no application hooks".into(),
            HookError::QueueFull { .. } | HookError::Busy => {
                "the application is overloaded on this server; try again later".into()
            }
            HookError::Timeout { ms } => {
                format!("the application did not answer within {ms} ms; try again later")
            }
            HookError::Unreachable(_) => {
                "the application is unreachable from this server; try again later".into()
            }
            HookError::BadAnswer(_) => {
                "the application gave an answer volley cannot use; tell its operators".into()
            }
        }
    }
}

impl std::fmt::Display for HookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookError::NotConfigured => f.write_str("no --app-webhook is set"),
            HookError::QueueFull { queue_max } => write!(
                f,
                "{queue_max} hook calls already wait (--app-webhook-queue-max) behind busy requests (--app-webhook-concurrency-max); the webhook is slow or the limits are low"
            ),
            HookError::Timeout { ms } => write!(
                f,
                "no answer within {ms} ms (--app-webhook-timeout-ms); the webhook is slow or hung"
            ),
            HookError::Unreachable(e) => write!(f, "cannot reach it: {e}; is it running?"),
            HookError::BadAnswer(e) => write!(f, "unusable answer: {e} (docs/API.md, Application hooks)"),
            HookError::Busy => f.write_str("the shard is stopping or runs too many tasks"),
        }
    }
}

/// A failed exchange on one socket: stale (closed before any byte of an answer, so the
/// request was not handled and may go again on a new socket), or failed.
enum Attempt {
    Stale,
    Failed(HookError),
}

/// One shard's client to the webhook.
pub struct Webhook {
    config: WebhookConfig,
    /// Idle keep-alive sockets with the time each went idle, most recent last. At most
    /// `concurrency_max`: a socket is here only between two of the requests that hold it.
    idle: RefCell<Vec<(TcpStream, Instant)>>,
    /// One permit per request in flight.
    slots: Rc<Semaphore>,
    /// Calls waiting for a permit, bounded by `queue_max`.
    waiting: Rc<Cell<u32>>,
    error_logged_s: Cell<Option<u32>>,
}

/// Counts a waiting call for as long as it waits (also when its deadline drops it).
struct Waiting(Rc<Cell<u32>>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl Webhook {
    pub fn new(config: WebhookConfig) -> Webhook {
        Webhook {
            slots: Rc::new(Semaphore::new(u64::from(config.concurrency_max))),
            config,
            idle: RefCell::new(Vec::new()),
            waiting: Rc::new(Cell::new(0)),
            error_logged_s: Cell::new(None),
        }
    }

    /// POSTs one document and parses the answer, within the deadline.
    pub async fn call(&self, ctx: &Ctx, kind: &str, body: &[u8]) -> Result<Outcome, HookError> {
        Metrics::inc(&ctx.metrics.hook_calls_total);
        let ms = self.config.timeout.as_millis().min(u128::from(u64::MAX)) as u64;
        let work = self.call_now(ctx, kind, body);
        let late = async {
            glommio::timer::sleep(self.config.timeout).await;
            Err(HookError::Timeout { ms })
        };
        let result = futures_lite::future::or(work, late).await;
        if let Err(e) = &result {
            self.failed(ctx, kind, e);
        }
        result
    }

    async fn call_now(&self, ctx: &Ctx, kind: &str, body: &[u8]) -> Result<Outcome, HookError> {
        let _permit = match self.slots.try_acquire_permit(1) {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.get() >= self.config.queue_max {
                    return Err(HookError::QueueFull {
                        queue_max: self.config.queue_max,
                    });
                }
                self.waiting.set(self.waiting.get() + 1);
                let _waiting = Waiting(self.waiting.clone());
                self.slots
                    .acquire_permit(1)
                    .await
                    .map_err(|_| HookError::Busy)?
            }
        };
        let request = hooks::request(&self.config.host, &self.config.path, kind, body);
        let response = self.exchange(ctx, &request).await?;
        if !(200..300).contains(&response.status) {
            return Err(HookError::BadAnswer(format!(
                "HTTP status {} (answer 200 with a JSON object)",
                response.status
            )));
        }
        hooks::parse_outcome(&response.body).map_err(HookError::BadAnswer)
    }

    /// Sends `request` on a pooled socket, or on a new one when there is none or the pooled
    /// one turned out closed.
    async fn exchange(&self, ctx: &Ctx, request: &[u8]) -> Result<hooks::Response, HookError> {
        if let Some(stream) = self.take_idle() {
            match self.send_on(stream, request).await {
                Ok(response) => return Ok(response),
                // The backend closed it while idle: the request never reached a handler.
                Err(Attempt::Stale) => {}
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        let stream = TcpStream::connect(self.config.addr)
            .await
            .map_err(|e| HookError::Unreachable(e.to_string()))?;
        Metrics::inc(&ctx.metrics.hook_connections_total);
        // Small requests, one at a time: do not wait for Nagle.
        let _ = stream.set_nodelay(true);
        match self.send_on(stream, request).await {
            Ok(response) => Ok(response),
            Err(Attempt::Stale) => Err(HookError::Unreachable(
                "it closed the connection without answering".into(),
            )),
            Err(Attempt::Failed(e)) => Err(e),
        }
    }

    async fn send_on(
        &self,
        mut stream: TcpStream,
        request: &[u8],
    ) -> Result<hooks::Response, Attempt> {
        if stream.write_all(request).await.is_err() {
            return Err(Attempt::Stale);
        }
        let mut parser =
            ResponseParser::new(self.config.head_bytes_max, self.config.response_bytes_max);
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        loop {
            let read = stream.read(&mut chunk).await;
            let parsed = match read {
                Ok(0) | Err(_) if !parser.started() => return Err(Attempt::Stale),
                Err(e) => return Err(Attempt::Failed(HookError::Unreachable(e.to_string()))),
                Ok(0) => parser.finish().map(Some),
                Ok(n) => parser.feed(&chunk[..n]),
            };
            match parsed {
                Ok(None) => continue,
                Ok(Some(response)) => {
                    if response.reusable {
                        self.put_idle(stream);
                    }
                    return Ok(response);
                }
                Err(e) => return Err(Attempt::Failed(HookError::BadAnswer(e.to_string()))),
            }
        }
    }

    /// The most recently idled socket that is not too old (older ones are closed).
    fn take_idle(&self) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let now = Instant::now();
        idle.retain(|(_, since)| now.duration_since(*since) < self.config.idle);
        idle.pop().map(|(stream, _)| stream)
    }

    fn put_idle(&self, stream: TcpStream) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < self.config.concurrency_max as usize {
            idle.push((stream, Instant::now()));
        }
    }

    /// Counts a failure and logs it, at most once per interval.
    fn failed(&self, ctx: &Ctx, kind: &str, error: &HookError) {
        Metrics::inc(&ctx.metrics.hook_errors_total);
        match error {
            HookError::Timeout { .. } => Metrics::inc(&ctx.metrics.hook_timeouts_total),
            HookError::QueueFull { .. } => Metrics::inc(&ctx.metrics.hook_queue_full_total),
            _ => {}
        }
        let now_s = ctx.now_s();
        let last = self.error_logged_s.get();
        if last.is_none_or(|last| now_s >= last + HOOK_ERROR_LOG_INTERVAL_S) {
            self.error_logged_s.set(Some(now_s));
            log!(
                warn,
                Some(ctx.id),
                "app webhook {} ({kind}): {error}; clients get an error reply (hook_errors_total counts them; this line repeats at most every {HOOK_ERROR_LOG_INTERVAL_S} s)",
                self.config.url
            );
        }
    }
}

impl Services {
    /// Whether `--app-webhook` is set.
    pub fn has_hooks(&self) -> bool {
        self.webhook.is_some()
    }

    /// The id a connection has in hook documents: `<node>-<shard>-<slot>.<generation>`,
    /// unique in the cluster while it is connected.
    pub fn socket_id(&self, key: ConnKey) -> String {
        format!(
            "{}-{}-{}.{}",
            self.ctx.node_id(),
            self.ctx.id,
            key.index,
            key.generation
        )
    }

    /// Asks the application whether a client may connect. Does not touch rooms (the
    /// connection may not be in the hub yet): once it is, apply the outcome's joins with
    /// [`Services::hook_apply_rooms`]. `Ok` with `refuse` set means refused.
    pub async fn hook_connect(&self, connect: &Connect<'_>) -> Result<Outcome, HookError> {
        let Some(webhook) = &self.webhook else {
            return Err(HookError::NotConfigured);
        };
        let body = hooks::connect_json(self.ctx.node_id(), connect);
        let outcome = webhook.call(&self.ctx, "connect", &body).await?;
        if outcome.refuse.is_some() {
            Metrics::inc(&self.ctx.metrics.hook_refusals_total);
        }
        Ok(outcome)
    }

    /// Sends a client event to the application. `event.socket.user` is filled in from the
    /// connection's session. Unless refused, the outcome's leaves then joins are applied to
    /// `key` (through `leave_room`/`join_room`, so permissions, limits, subscriptions and
    /// presence apply; in cluster mode it also waits, bounded, until Redis confirms the
    /// new rooms' subscriptions) before it returns; what is left for the caller's codec is
    /// the refusal, the emits and the ack. Room changes the connection may not make are
    /// logged and counted, and do not fail the call.
    pub async fn hook_event(
        self: &Rc<Self>,
        key: ConnKey,
        event: &Event<'_>,
    ) -> Result<Outcome, HookError> {
        let Some(webhook) = &self.webhook else {
            return Err(HookError::NotConfigured);
        };
        let user = self.hub.with_session(key, |s| s.user.clone()).flatten();
        let mut event = *event;
        event.socket.user = user.as_deref();
        let body = hooks::event_json(self.ctx.node_id(), &event);
        let outcome = webhook.call(&self.ctx, "event", &body).await?;
        if outcome.refuse.is_some() {
            Metrics::inc(&self.ctx.metrics.hook_refusals_total);
            return Ok(outcome);
        }
        self.hook_apply_rooms(key, &outcome);
        self.hook_wait_joined(&outcome).await;
        Ok(outcome)
    }

    /// Cluster mode: waits (bounded) until Redis confirms the subscriptions of the rooms an
    /// outcome joined, so the caller's answer (the ack, a socket.io CONNECT) means the joins
    /// hold, as a client join's reply does: a room push sent after it reaches the socket.
    pub async fn hook_wait_joined(&self, outcome: &Outcome) {
        let pending: Vec<String> = outcome
            .join
            .iter()
            .map(|room| format!("room:{room}"))
            .filter(|channel| !self.backend.is_subscribed(channel))
            .collect();
        if !pending.is_empty() {
            self.backend.wait_subscribed(&pending).await;
        }
    }

    /// Applies an outcome's leaves then joins to a connection; returns the ones refused
    /// (room, why), which are also counted and logged (rate-limited).
    pub fn hook_apply_rooms(
        self: &Rc<Self>,
        key: ConnKey,
        outcome: &Outcome,
    ) -> Vec<(String, Refusal)> {
        let mut refused = Vec::new();
        for room in &outcome.leave {
            // Leaving a room the connection is not in is already done: not a failure.
            let _ = self.leave_room(key, room);
        }
        for room in &outcome.join {
            if let Err(refusal) = self.join_room(key, room) {
                refused.push((room.clone(), refusal));
            }
        }
        if let (Some((room, (_, why))), Some(webhook)) = (refused.first(), &self.webhook) {
            Metrics::add(
                &self.ctx.metrics.hook_joins_refused_total,
                refused.len() as u64,
            );
            let error = HookError::BadAnswer(format!(
                "\"join\" {room:?} refused for socket {}: {why}",
                self.socket_id(key)
            ));
            webhook.failed(&self.ctx, "join", &error);
        }
        refused
    }

    /// A client event from a codec that answers through `ClientCodec` (native unknown
    /// ops): the hook's refusal becomes an error reply, its emits events, its ack the
    /// reply's result. Failures are error replies that count no strike: the application,
    /// not the client, is at fault.
    pub fn client_event(
        self: &Rc<Self>,
        key: ConnKey,
        reference: Option<crate::protocol::Ref>,
        name: String,
        args: Value,
    ) {
        use crate::protocol::{ErrorCode, OpError};
        let reference_if_refused = reference.clone();
        let svc = self.clone();
        let task = async move {
            let socket_id = svc.socket_id(key);
            let Some(codec) = svc.hub.codec(key) else {
                return;
            };
            let protocol = format!("{codec:?}").to_ascii_lowercase();
            let event = Event {
                socket: hooks::Socket {
                    protocol: &protocol,
                    namespace: None,
                    id: &socket_id,
                    user: None,
                },
                name: &name,
                args: &args,
                ack: reference.is_some(),
            };
            let error = |code, message| OpError {
                reference: reference.clone(),
                code,
                message,
            };
            match svc.hook_event(key, &event).await {
                Ok(outcome) => {
                    if let Some(message) = outcome.refuse {
                        let message = format!("refused by the application: {message}");
                        super::ops::send_error(&svc, key, &error(ErrorCode::Forbidden, message));
                        return;
                    }
                    if let Some(codec) = svc.hub.codec(key) {
                        for emit in &outcome.emit {
                            if let Some(frame) = codec.get().event(&emit.event, &emit.args) {
                                svc.hub.send(key, frame);
                            }
                        }
                    }
                    if reference.is_some() {
                        let ack = outcome.ack.unwrap_or(Value::Null);
                        super::ops::reply_ok(&svc, key, reference.as_ref(), Some(&ack));
                    }
                }
                Err(e) => {
                    super::ops::send_error(
                        &svc,
                        key,
                        &error(ErrorCode::Internal, e.client_message()),
                    );
                }
            }
        };
        if self.ctx.tasks.spawn(task).is_err() {
            Metrics::inc(&self.ctx.metrics.tasks_refused_total);
            let error = OpError {
                reference: reference_if_refused,
                code: ErrorCode::Internal,
                message: HookError::Busy.client_message(),
            };
            super::ops::send_error(self, key, &error);
        }
    }
}
