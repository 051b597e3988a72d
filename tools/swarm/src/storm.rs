//! `swarm storm`: a reconnect storm with recovery (docs/PROTOCOL.md, "Recovery").
//!
//! 1. **join**: N clients connect as `ws://host/ws?user=s<i>` (paced by `--rate`), each
//!    joins room `--room` and waits for its reply; one message is published to the room
//!    and every client reads until it has seen that message's seq S0.
//! 2. **close**: every client closes (close handshake); swarm checks through
//!    `GET /api/stats` that the server(s) hold no connection any more.
//! 3. **publish**: M messages go to the room through `POST /api/batch` while nobody is
//!    connected; their seqs must be exactly S0+1..=S0+M.
//! 4. **storm**: all N reconnect at once (or at `--reconnect-rate`, at most
//!    `--inflight-max` handshakes in flight), to `--resume-url` (default: the same server),
//!    with `?user=s<i>&resume=<token>` where the token is base64url(`{"room:<room>":S0}`).
//!    Per client: time from its connect start to the upgrade, the first replayed message,
//!    its `recovered` event and seq S0+M; it must get exactly S0+1..=S0+M in order (no gap,
//!    no duplicate) and `recovered: true` with `replayed: M`.
//!
//! With `--server-pid` (comma-separated for a cluster), the servers' CPU (utime+stime and
//! per-thread schedstat) is read at the start of phase 4 and at the moment the last client
//! caught up (the last client's task reads it); `--redis-pid` is read likewise and reported
//! apart. Then (unless `--no-live-check`) one more message is published and every client
//! must get it exactly once, after its replay. One JSON report goes to stdout.
//!
//! Worker threads each run a current-thread tokio runtime; pure parts (token, frame scan,
//! per-client seq check, batch bodies and answers, percentiles, report math) are at the top
//! and unit-tested. Every wait is bounded.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message};

use crate::http::Client;
use crate::net::{self, Target};
use crate::procfs;
use crate::stats::Reasons;

/// volley's limit of entries in one `POST /api/batch`.
const BATCH_ENTRIES_MAX: usize = 10_000;
/// Most clients one process accepts (RLIMIT_NOFILE decides the real limit).
const CLIENTS_MAX: u64 = 1_000_000;
/// Most missed messages (volley keeps at most `--history-size` per channel anyway).
const MISSED_MAX: u64 = 10_000_000;
/// File descriptors kept for the process itself beyond its clients.
const SPARE_FDS: u64 = 64;
/// Per-connection read buffer (tungstenite's default of 128 KiB per client is too much).
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Largest message accepted from the server.
const MESSAGE_BYTES_MAX: usize = 1 << 20;
/// How often the main thread looks at the live counters while waiting.
const POLL: Duration = Duration::from_millis(2);
/// Extra time after a stop before the process gives up on its workers.
const WORKER_GRACE: Duration = Duration::from_secs(15);
/// How long a client waits for the server's Close reply after sending its own.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Largest answer read from `GET /api/stats`.
const STATS_BYTES_MAX: usize = 1 << 20;

// ------------------------------------------------------------------------------------
// Pure parts
// ------------------------------------------------------------------------------------

/// base64url without padding (RFC 4648 §5), as volley's resume token wants.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1; // 1 byte -> 2 chars, 2 -> 3, 3 -> 4
        for k in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize] as char);
        }
    }
    out
}

/// The resume token `base64url({"room:<room>": since})`.
pub fn resume_token(room: &str, since: u64) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert(format!("room:{room}"), json!(since));
    base64url(Value::Object(obj).to_string().as_bytes())
}

/// Room names this tool accepts: they go into a URL path, a JSON string and a channel
/// name unescaped, so only `[A-Za-z0-9_.-]`, 1..=64 bytes.
pub fn valid_room(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// A `recovered` event (docs/PROTOCOL.md): fields that are missing or of another type are
/// `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovered {
    pub recovered: Option<bool>,
    pub replayed: Option<u64>,
    pub seq: Option<u64>,
    pub error: Option<String>,
}

/// What one text frame from the server is, for this tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A message; `ours` when its channel is the room's channel.
    Message {
        ours: bool,
        seq: Option<u64>,
    },
    Reply {
        ok: bool,
    },
    /// A `recovered` event; `ours` when it is for the room's channel.
    Recovered {
        ours: bool,
        event: Recovered,
    },
    Other,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn digits_at(buf: &[u8]) -> Option<u64> {
    let n = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 20 {
        return None;
    }
    std::str::from_utf8(&buf[..n]).ok()?.parse().ok()
}

fn string_field<'a>(head: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = find(head, key)? + key.len();
    let rest = &head[at..];
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

/// Scans a server frame. Messages (a million per run) are scanned without a JSON parser;
/// the envelope fields are looked for before `"data":`, so a payload cannot fake them.
/// `recovered` events and replies (one per client) are parsed as JSON.
pub fn scan_frame(buf: &[u8], channel: &str) -> Frame {
    let data_at = find(buf, b"\"data").unwrap_or(buf.len());
    let head = &buf[..data_at];
    if find(head, b"\"type\":\"message\"").is_some() {
        let ours = string_field(head, b"\"channel\":\"") == Some(channel.as_bytes());
        let seq = find(head, b"\"seq\":").and_then(|at| digits_at(&head[at + 6..]));
        return Frame::Message { ours, seq };
    }
    let Ok(v) = serde_json::from_slice::<Value>(buf) else {
        return Frame::Other;
    };
    match v.get("type").and_then(Value::as_str) {
        Some("reply") => Frame::Reply {
            ok: v.get("ok").and_then(Value::as_bool) == Some(true),
        },
        Some("recovered") => Frame::Recovered {
            ours: v.get("channel").and_then(Value::as_str) == Some(channel),
            event: Recovered {
                recovered: v.get("recovered").and_then(Value::as_bool),
                replayed: v.get("replayed").and_then(Value::as_u64),
                seq: v.get("seq").and_then(Value::as_u64),
                error: v.get("error").map(|e| match e.as_str() {
                    Some(s) => s.to_owned(),
                    None => e.to_string(),
                }),
            },
        },
        _ => Frame::Other,
    }
}

/// One client's view of its recovery: the seqs it got on the room after S0, checked against
/// the exact sequence S0+1..=S0+M, and its `recovered` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catchup {
    pub s0: u64,
    pub missed: u64,
    /// The seq expected next.
    pub next: u64,
    /// Messages received on the room with a seq in S0+1..=S0+M (duplicates included).
    pub received: u64,
    /// Seqs skipped (a seq above `next`), summed.
    pub gaps: u64,
    /// Messages with a seq below `next` (already seen, or out of order).
    pub duplicates: u64,
    /// Messages on the room with no seq, or a seq <= S0.
    pub stale: u64,
    /// Messages on the room after S0+M (live ones), with how many of them came before the
    /// `recovered` event.
    pub live: u64,
    pub live_before_recovered: u64,
    /// Replayed messages that arrived after the `recovered` event.
    pub after_recovered: u64,
    pub recovered: Option<Recovered>,
    /// `recovered` events for the room beyond the first.
    pub extra_recovered: u64,
}

impl Catchup {
    pub fn new(s0: u64, missed: u64) -> Catchup {
        Catchup {
            s0,
            missed,
            next: s0 + 1,
            received: 0,
            gaps: 0,
            duplicates: 0,
            stale: 0,
            live: 0,
            live_before_recovered: 0,
            after_recovered: 0,
            recovered: None,
            extra_recovered: 0,
        }
    }

    pub fn last(&self) -> u64 {
        self.s0 + self.missed
    }

    /// One message on the room.
    pub fn on_message(&mut self, seq: Option<u64>) {
        let Some(seq) = seq.filter(|&s| s > self.s0) else {
            self.stale += 1;
            return;
        };
        if seq > self.last() {
            self.live += 1;
            if self.recovered.is_none() {
                self.live_before_recovered += 1;
            }
            return;
        }
        self.received += 1;
        if self.recovered.is_some() {
            self.after_recovered += 1;
        }
        if seq == self.next {
            self.next += 1;
        } else if seq > self.next {
            self.gaps += seq - self.next;
            self.next = seq + 1;
        } else {
            self.duplicates += 1;
        }
    }

    pub fn on_recovered(&mut self, event: Recovered) {
        if self.recovered.is_some() {
            self.extra_recovered += 1;
        } else {
            self.recovered = Some(event);
        }
    }

    /// Has seen S0+M and its `recovered` event.
    pub fn caught_up(&self) -> bool {
        self.recovered.is_some() && self.next > self.last()
    }

    /// Exactly S0+1..=S0+M in order, once each, then `recovered: true` with `replayed: M`,
    /// no other event and no replayed message after it.
    pub fn exact(&self) -> bool {
        let event_ok = self.recovered.as_ref().is_some_and(|r| {
            r.recovered == Some(true) && r.replayed == Some(self.missed) && r.error.is_none()
        });
        self.caught_up()
            && event_ok
            && self.received == self.missed
            && self.gaps == 0
            && self.duplicates == 0
            && self.after_recovered == 0
            && self.live_before_recovered == 0
            && self.extra_recovered == 0
    }
}

/// p50 / p99 / max of exact values (sorted in place); nulls when empty.
pub fn percentiles(values: &mut [u64]) -> Value {
    values.sort_unstable();
    let q = |q: f64| -> Option<u64> {
        if values.is_empty() {
            return None;
        }
        // Nearest rank: the smallest value with at least q of the values at or below it.
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        Some(values[rank - 1])
    };
    json!({
        "count": values.len(),
        "p50": q(0.50),
        "p99": q(0.99),
        "max": values.last(),
    })
}

/// The data of message `k`: `{"k":<k>,"pad":"xx.."}`, about `size` bytes.
pub fn payload(k: u64, size: usize) -> String {
    let base = format!("{{\"k\":{k},\"pad\":\"\"}}");
    let pad = size.saturating_sub(base.len());
    format!("{{\"k\":{k},\"pad\":\"{}\"}}", "x".repeat(pad))
}

/// The body of one batch: messages `range.0..range.1` to `room`.
pub fn batch_body(room: &str, range: (u64, u64), size: usize) -> String {
    let mut s = String::with_capacity(16 + (range.1 - range.0) as usize * (size + 32));
    s.push_str("{\"messages\":[");
    for k in range.0..range.1 {
        if k > range.0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"room\":\"{room}\",\"data\":{}}}",
            payload(k, size)
        ));
    }
    s.push_str("]}");
    s
}

/// Ranges of at most `batch_max` messages covering 0..total.
pub fn batch_ranges(total: u64, batch_max: usize) -> Vec<(u64, u64)> {
    let step = batch_max.max(1) as u64;
    (0..total.div_ceil(step))
        .map(|b| (b * step, ((b + 1) * step).min(total)))
        .collect()
}

/// From a batch answer: the seq of every entry that has one, and how many entries
/// were answered with an error (or without a seq).
pub fn batch_seqs(body: &[u8]) -> Option<(Vec<u64>, u64)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let results = v.get("results")?.as_array()?;
    let mut seqs = Vec::with_capacity(results.len());
    let mut errors = 0;
    for r in results {
        match r.get("seq").and_then(Value::as_u64) {
            Some(s) if r.get("error").is_none() => seqs.push(s),
            _ => errors += 1,
        }
    }
    Some((seqs, errors))
}

/// The seq in a single publish answer `{"id","seq","recipients"}`.
pub fn publish_seq(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("seq")?
        .as_u64()
}

/// True when `seqs` is exactly first..=last, each once (in any order).
pub fn seqs_cover(seqs: &[u64], first: u64, last: u64) -> bool {
    if last < first || seqs.len() as u64 != last - first + 1 {
        return false;
    }
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.iter().zip(first..=last).all(|(&a, b)| a == b)
}

/// `total.connections` from a `GET /api/stats` answer.
pub fn stats_connections(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("total")?
        .get("connections")?
        .as_u64()
}

/// The body of an HTTP/1.x answer read until close: (status, body). Only for answers
/// without chunking (swarm asks with HTTP/1.0).
pub fn split_http_answer(raw: &[u8]) -> Option<(u16, &[u8])> {
    let end = find(raw, b"\r\n\r\n")?;
    let status_line = std::str::from_utf8(&raw[..end]).ok()?.lines().next()?;
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, &raw[end + 4..]))
}

/// `ws://host/path?user=s<i>[&resume=<token>]`, keeping any query already in the path.
pub fn client_request(target: &Target, i: u64, token: Option<&str>) -> String {
    let sep = if target.path.contains('?') { '&' } else { '?' };
    let mut url = format!("ws://{}{}{sep}user=s{i}", target.authority, target.path);
    if let Some(t) = token {
        url.push_str("&resume=");
        url.push_str(t);
    }
    url
}

/// Run time (ns) from the text of one `/proc/<pid>/task/<tid>/schedstat`.
pub fn parse_schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// CPU of a set of processes at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSample {
    pub ticks: u64,
    /// Sum of every thread's schedstat run time (ns); finer than 10 ms ticks.
    pub sched_ns: u64,
}

/// CPU used between two samples in µs: schedstat when both have it, ticks otherwise;
/// also the tick-based figure.
pub fn cpu_used_us(a: CpuSample, b: CpuSample, clk_tck: u64) -> (f64, f64) {
    let ticks_us = b.ticks.saturating_sub(a.ticks) as f64 * 1e6 / clk_tck.max(1) as f64;
    let best = if a.sched_ns > 0 && b.sched_ns > 0 {
        b.sched_ns.saturating_sub(a.sched_ns) as f64 / 1000.0
    } else {
        ticks_us
    };
    (best, ticks_us)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// What phase 4 measured, for `storm_report`.
#[derive(Debug, Default, Clone)]
pub struct StormFacts {
    pub clients: u64,
    pub missed: u64,
    pub connected: u64,
    pub caught_up: u64,
    pub exact: u64,
    /// Sum over clients of replayed messages received in S0+1..=S0+M (duplicates included).
    pub deliveries: u64,
    pub duplicates: u64,
    pub gaps: u64,
    /// µs from the start of phase 4 to the last client's catch-up (None if nobody did).
    pub last_caught_up_us: Option<u64>,
    /// Server CPU (all `--server-pid`s) from the start of phase 4 to the last catch-up.
    pub server_cpu: Option<(CpuSample, CpuSample)>,
    pub redis_cpu: Option<(CpuSample, CpuSample)>,
    pub swarm_cpu: Option<(CpuSample, CpuSample)>,
    pub clk_tck: u64,
}

/// The headline figures of phase 4.
pub fn storm_report(f: &StormFacts) -> Value {
    let unique = f.deliveries.saturating_sub(f.duplicates);
    let wall_us = f.last_caught_up_us.unwrap_or(0);
    let per_s = (wall_us > 0).then(|| unique as f64 * 1e6 / wall_us as f64);
    let cpu = |p: Option<(CpuSample, CpuSample)>| p.map(|(a, b)| cpu_used_us(a, b, f.clk_tck));
    let server = cpu(f.server_cpu);
    let per_msg = server
        .filter(|_| unique > 0)
        .map(|(us, _)| us / unique as f64);
    json!({
        "clients": f.clients,
        "missed_per_client": f.missed,
        "clients_connected": f.connected,
        "clients_caught_up": f.caught_up,
        "clients_exact": f.exact,
        "deliveries_expected": f.clients * f.missed,
        "deliveries_received": f.deliveries,
        "deliveries_unique": unique,
        "duplicates": f.duplicates,
        "gaps": f.gaps,
        "all_caught_up_s": f.last_caught_up_us.filter(|_| f.caught_up == f.clients).map(|us| round3(us as f64 / 1e6)),
        "last_caught_up_s": f.last_caught_up_us.map(|us| round3(us as f64 / 1e6)),
        "deliveries_per_s": per_s.map(f64::round),
        "server_cpu_us": server.map(|(us, _)| us.round()),
        "server_cpu_us_ticks": server.map(|(_, t)| t.round()),
        "server_cores_busy": server.filter(|_| wall_us > 0).map(|(us, _)| round3(us / wall_us as f64)),
        "server_cpu_us_per_replayed_message": per_msg.map(round3),
        "redis_cpu_us": cpu(f.redis_cpu).map(|(us, _)| us.round()),
        "swarm_cpu_us": cpu(f.swarm_cpu).map(|(us, _)| us.round()),
    })
}

// ------------------------------------------------------------------------------------
// CLI
// ------------------------------------------------------------------------------------

#[derive(clap::Args)]
pub struct StormArgs {
    /// WebSocket URL for phase 1 (ws:// only, loopback); `?user=s<i>` is appended.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// WebSocket URL the clients reconnect to in phase 4 [default: --url]; e.g. the other
    /// process of a cluster, so that the history comes from Redis.
    #[arg(long)]
    resume_url: Option<String>,
    /// HTTP base URL of volley's API for publishing (http:// only, loopback).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Room the clients join (letters, digits, `_`, `-`, `.`).
    #[arg(long, default_value = "storm")]
    room: String,
    /// Clients (N).
    #[arg(long, default_value_t = 1000)]
    clients: u64,
    /// Messages published while nobody is connected (M); volley needs --history-size >= M.
    #[arg(long, default_value_t = 1000)]
    missed: u64,
    /// Approximate size in bytes of each message's data (JSON).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Entries per POST /api/batch (keep the body under volley's --body-bytes-max: about
    /// size + 30 bytes per entry).
    #[arg(long, default_value_t = 400)]
    batch_max: usize,
    /// Phase 1 connection attempts per second.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Phase 4 connection attempts per second; 0 = all at once (bounded by --inflight-max).
    #[arg(long, default_value_t = 0.0)]
    reconnect_rate: f64,
    /// Handshakes (TCP + upgrade, + join in phase 1) in flight at once, across all workers.
    #[arg(long, default_value_t = 1000)]
    inflight_max: usize,
    /// volley PIDs (comma-separated), to read their CPU during phase 4.
    #[arg(long)]
    server_pid: Option<String>,
    /// redis-server's PID, to read its CPU during phase 4 (reported apart).
    #[arg(long)]
    redis_pid: Option<u32>,
    /// Loopback source addresses, round-robin: "127.0.0.1-127.0.0.8", a list, or one address.
    #[arg(long, default_value = "127.0.0.1-127.0.0.8")]
    sources: String,
    /// Worker threads for the clients, each with its own runtime [default: cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Give up on one handshake (TCP + upgrade, + join in phase 1) after this long.
    #[arg(long, default_value_t = 10_000)]
    connect_timeout_ms: u64,
    /// Phase 4: stop waiting for clients to catch up after this long.
    #[arg(long, default_value_t = 120.0)]
    catchup_timeout_s: f64,
    /// Phase 1: most seconds to wait for every client to see the first message.
    #[arg(long, default_value_t = 30.0)]
    seen_timeout_s: f64,
    /// Pause after phases 2 and 3 (lets the server settle; not measured).
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Give up on one POST after this long.
    #[arg(long, default_value_t = 30_000)]
    post_timeout_ms: u64,
    /// Skip the check that one message published after the storm reaches every client once.
    #[arg(long)]
    no_live_check: bool,
}

struct Config {
    target: Target,
    resume: Target,
    api: Target,
    /// HTTP bases whose `GET /api/stats` must show 0 connections before phase 3.
    stats: Vec<Target>,
    room: String,
    channel: String,
    clients: u64,
    missed: u64,
    size: usize,
    batch_max: usize,
    rate: f64,
    reconnect_rate: f64,
    inflight_max: usize,
    server_pids: Vec<u32>,
    redis_pid: Option<u32>,
    sources: Vec<Ipv4Addr>,
    workers: usize,
    connect_timeout: Duration,
    catchup_timeout: Duration,
    seen_timeout: Duration,
    settle: Duration,
    post_timeout: Duration,
    live_check: bool,
}

fn positive(flag: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("{flag} {v}: must be a positive number"))
    }
}

fn validate(a: &StormArgs) -> Result<Config, String> {
    let target = net::parse_target(&a.url, "ws", "/ws")?;
    let resume = match &a.resume_url {
        Some(u) => net::parse_target(u, "ws", "/ws")?,
        None => target.clone(),
    };
    let api = net::parse_target(&a.api, "http", "")?;
    let sources = net::parse_sources(&a.sources)?;
    if !valid_room(&a.room) {
        return Err(format!(
            "--room {:?}: use 1..=64 of letters, digits, _ - .",
            a.room
        ));
    }
    if a.clients == 0 || a.clients > CLIENTS_MAX {
        return Err(format!(
            "--clients {}: must be 1..={CLIENTS_MAX}",
            a.clients
        ));
    }
    if a.missed == 0 || a.missed > MISSED_MAX {
        return Err(format!("--missed {}: must be 1..={MISSED_MAX}", a.missed));
    }
    if a.size > 60_000 {
        return Err(format!("--size {}: must be at most 60000", a.size));
    }
    if a.batch_max == 0 || a.batch_max > BATCH_ENTRIES_MAX {
        return Err(format!(
            "--batch-max {}: must be 1..={BATCH_ENTRIES_MAX}",
            a.batch_max
        ));
    }
    positive("--rate", a.rate)?;
    if !(a.reconnect_rate.is_finite() && a.reconnect_rate >= 0.0) {
        return Err(format!(
            "--reconnect-rate {}: must be 0 (all at once) or a positive number",
            a.reconnect_rate
        ));
    }
    positive("--catchup-timeout-s", a.catchup_timeout_s)?;
    positive("--seen-timeout-s", a.seen_timeout_s)?;
    if a.inflight_max == 0 {
        return Err("--inflight-max 0: must be at least 1".into());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = a.workers.unwrap_or(cores);
    if workers == 0 || workers > 64 {
        return Err(format!("--workers {workers}: must be 1..=64"));
    }
    let server_pids = match &a.server_pid {
        Some(spec) => procfs::parse_pids(spec)?,
        None => Vec::new(),
    };
    for pid in server_pids.iter().chain(a.redis_pid.iter()) {
        if cpu_sample(&[*pid]).is_none() {
            return Err(format!("pid {pid}: cannot read /proc/{pid}/stat"));
        }
    }
    let nofile = net::raise_nofile();
    if a.clients + SPARE_FDS > nofile {
        return Err(format!(
            "--clients {}: needs about {} open files but RLIMIT_NOFILE is {nofile}",
            a.clients,
            a.clients + SPARE_FDS
        ));
    }
    let http_of = |t: &Target| net::parse_target(&format!("http://{}", t.authority), "http", "");
    let mut stats = vec![http_of(&target)?];
    if resume.authority != target.authority {
        stats.push(http_of(&resume)?);
    }
    Ok(Config {
        target,
        resume,
        api,
        stats,
        channel: format!("room:{}", a.room),
        room: a.room.clone(),
        clients: a.clients,
        missed: a.missed,
        size: a.size,
        batch_max: a.batch_max,
        rate: a.rate,
        reconnect_rate: a.reconnect_rate,
        inflight_max: a.inflight_max,
        server_pids,
        redis_pid: a.redis_pid,
        sources,
        workers,
        connect_timeout: Duration::from_millis(a.connect_timeout_ms.max(1)),
        catchup_timeout: Duration::from_secs_f64(a.catchup_timeout_s),
        seen_timeout: Duration::from_secs_f64(a.seen_timeout_s),
        settle: Duration::from_millis(a.settle_ms),
        post_timeout: Duration::from_millis(a.post_timeout_ms.max(1)),
        live_check: !a.no_live_check,
    })
}

// ------------------------------------------------------------------------------------
// /proc
// ------------------------------------------------------------------------------------

/// Summed CPU of `pids`; None if any is gone.
fn cpu_sample(pids: &[u32]) -> Option<CpuSample> {
    let mut s = CpuSample::default();
    for pid in pids {
        s.ticks += procfs::cpu_ticks(*pid)?;
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in dir.flatten() {
                if let Ok(t) = std::fs::read_to_string(task.path().join("schedstat")) {
                    s.sched_ns += parse_schedstat_ns(&t).unwrap_or(0);
                }
            }
        }
    }
    Some(s)
}

fn self_pid() -> u32 {
    std::process::id()
}

#[derive(Debug, Clone, Copy, Default)]
struct CpuSet {
    server: Option<CpuSample>,
    redis: Option<CpuSample>,
    swarm: Option<CpuSample>,
}

fn cpu_set(cfg: &Config) -> CpuSet {
    CpuSet {
        server: (!cfg.server_pids.is_empty())
            .then(|| cpu_sample(&cfg.server_pids))
            .flatten(),
        redis: cfg.redis_pid.and_then(|p| cpu_sample(&[p])),
        swarm: cpu_sample(&[self_pid()]),
    }
}

// ------------------------------------------------------------------------------------
// Shared state
// ------------------------------------------------------------------------------------

/// Counters the workers write and the main thread reads.
struct Shared {
    cfg: Config,
    /// Phase 1: the highest seq each client saw on the room.
    seen: Vec<AtomicU64>,
    joined: AtomicU64,
    failed: AtomicU64,
    /// Phase 4.
    connected4: AtomicU64,
    failed4: AtomicU64,
    caught_up: AtomicU64,
    /// Max over clients of the catch-up moment, µs since the start of phase 4.
    last_caught_us: AtomicU64,
    /// Clients that got the live message (seq S0+M+1) after their replay.
    live_seen: AtomicU64,
    /// The CPU read by the client that caught up last.
    cpu_at_last: Mutex<Option<CpuSet>>,
}

fn since_us(t: Instant) -> u64 {
    t.elapsed().as_micros() as u64
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

fn io_reason(prefix: &str, e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    format!("{prefix}: {text}")
}

fn ws_reason(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) => io_reason("ws io", io),
        tungstenite::Error::Http(resp) => format!("ws: HTTP {}", resp.status()),
        other => format!("ws: {other}"),
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(MESSAGE_BYTES_MAX))
        .max_frame_size(Some(MESSAGE_BYTES_MAX))
}

async fn open(target: &Target, source: Ipv4Addr, request: String) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| io_reason("socket", &e))?;
    net::bind_address_no_port(socket.as_raw_fd());
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .map_err(|e| io_reason("bind", &e))?;
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(|e| io_reason("tcp", &e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| io_reason("nodelay", &e))?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
        .await
        .map_err(|e| ws_reason(&e))?;
    Ok(ws)
}

/// Sends Close and reads until the server's Close or EOF (bounded).
async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        let _ = ws.send(Message::Close(None)).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Why a read loop ended without being asked to.
fn end_reason(msg: &Option<Result<Message, tungstenite::Error>>) -> Option<String> {
    match msg {
        Some(Ok(Message::Close(frame))) => Some(match frame {
            Some(f) => format!("close {}", u16::from(f.code)),
            None => "close (no code)".to_owned(),
        }),
        Some(Err(e)) => Some(ws_reason(e)),
        None => Some("eof without close".to_owned()),
        Some(Ok(_)) => None,
    }
}

/// Starts `workers` threads, each running `f(w)` on its own current-thread runtime.
fn spawn_workers<T, F, Fut>(
    workers: usize,
    name: &str,
    f: F,
) -> Result<Vec<std::thread::JoinHandle<Result<T, String>>>, String>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    (0..workers)
        .map(|w| {
            let f = f.clone();
            std::thread::Builder::new()
                .name(format!("{name}{w}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("worker {w}: cannot build a tokio runtime: {e}"))?;
                    let local = tokio::task::LocalSet::new();
                    Ok(local.block_on(&rt, f(w)))
                })
                .map_err(|e| format!("cannot start worker thread {w}: {e}"))
        })
        .collect()
}

/// Waits (bounded) for the workers and returns their results.
fn join_workers<T>(
    handles: Vec<std::thread::JoinHandle<Result<T, String>>>,
    limit: Duration,
) -> Result<Vec<T>, String> {
    let deadline = Instant::now() + limit;
    while !handles.iter().all(|h| h.is_finished()) {
        if Instant::now() >= deadline {
            return Err(format!("workers did not stop within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    handles
        .into_iter()
        .enumerate()
        .map(|(w, h)| h.join().map_err(|_| format!("worker {w} panicked"))?)
        .collect()
}

// ------------------------------------------------------------------------------------
// Phase 1 (join, see S0) and 2 (close)
// ------------------------------------------------------------------------------------

#[derive(Default)]
struct Phase1End {
    connect_failures: Reasons,
    disconnects: Reasons,
}

async fn phase1_worker(
    w: usize,
    sh: Arc<Shared>,
    stop: watch::Receiver<bool>,
    start: Instant,
) -> Phase1End {
    let cfg = &sh.cfg;
    let inflight = Arc::new(Semaphore::new((cfg.inflight_max / cfg.workers).max(1)));
    let mut tasks = JoinSet::new();
    let mut i = w as u64;
    while i < cfg.clients {
        let due = start + Duration::from_secs_f64(i as f64 / cfg.rate);
        let mut stop_wait = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stop_wait.wait_for(|s| *s) => break,
        }
        let permit = tokio::select! {
            p = Arc::clone(&inflight).acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stop_wait.wait_for(|s| *s) => break,
        };
        tasks.spawn_local(phase1_client(i, Arc::clone(&sh), permit, stop.clone()));
        i += cfg.workers as u64;
    }
    let mut end = Phase1End::default();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok((Some(f), _)) => end.connect_failures.add(&f),
            Ok((None, Some(d))) => end.disconnects.add(&d),
            Ok((None, None)) => {}
            Err(_) => end.connect_failures.add("client task failed"),
        }
    }
    end
}

async fn join_room(sh: &Shared, i: u64, source: Ipv4Addr) -> Result<Ws, String> {
    let cfg = &sh.cfg;
    let mut ws = open(&cfg.target, source, client_request(&cfg.target, i, None)).await?;
    ws.send(Message::text(format!(
        "{{\"op\":\"join\",\"room\":\"{}\",\"ref\":1}}",
        cfg.room
    )))
    .await
    .map_err(|e| ws_reason(&e))?;
    loop {
        let msg = ws.next().await;
        if let Some(Ok(Message::Text(t))) = &msg {
            match scan_frame(t.as_bytes(), &cfg.channel) {
                Frame::Reply { ok: true } => return Ok(ws),
                Frame::Reply { ok: false } => {
                    return Err(format!("join refused: {}", &t.as_str()[..t.len().min(160)]))
                }
                Frame::Message {
                    ours: true,
                    seq: Some(s),
                } => {
                    sh.seen[i as usize].fetch_max(s, Ordering::Relaxed);
                }
                _ => {}
            }
            continue;
        }
        if let Some(reason) = end_reason(&msg) {
            return Err(format!("before the join reply: {reason}"));
        }
    }
}

/// Returns (connect failure, unexpected disconnect).
async fn phase1_client(
    i: u64,
    sh: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) -> (Option<String>, Option<String>) {
    let cfg = &sh.cfg;
    let source = cfg.sources[(i as usize) % cfg.sources.len()];
    let attempt = tokio::time::timeout(cfg.connect_timeout, join_room(&sh, i, source));
    let result = tokio::select! {
        r = attempt => r.unwrap_or_else(|_| Err("timeout (connect + join)".to_owned())),
        _ = stop.wait_for(|s| *s) => Err("stopped before joined".to_owned()),
    };
    drop(permit);
    let mut ws = match result {
        Ok(ws) => ws,
        Err(reason) => {
            sh.failed.fetch_add(1, Ordering::Relaxed);
            return (Some(reason), None);
        }
    };
    sh.joined.fetch_add(1, Ordering::Relaxed);
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            msg = ws.next() => msg,
        };
        if let Some(Ok(Message::Text(t))) = &msg {
            if let Frame::Message {
                ours: true,
                seq: Some(s),
            } = scan_frame(t.as_bytes(), &cfg.channel)
            {
                sh.seen[i as usize].fetch_max(s, Ordering::Relaxed);
            }
            continue;
        }
        if let Some(reason) = end_reason(&msg) {
            return (None, Some(reason));
        }
    }
    close(ws).await;
    (None, None)
}

// ------------------------------------------------------------------------------------
// Phase 4 (the storm)
// ------------------------------------------------------------------------------------

/// One client's phase 4, times in µs since the start of phase 4.
#[derive(Debug, Clone)]
struct ClientEnd {
    connect_start_us: u64,
    upgraded_us: Option<u64>,
    first_message_us: Option<u64>,
    recovered_us: Option<u64>,
    caught_up_us: Option<u64>,
    catchup: Catchup,
    connect_failure: Option<String>,
    disconnect: Option<String>,
    /// Copies of the live message (seq S0+M+1) received.
    live_copies: u64,
    /// Messages on other channels (e.g. the user's inbox).
    foreign: u64,
}

async fn phase4_worker(
    w: usize,
    sh: Arc<Shared>,
    stop: watch::Receiver<bool>,
    start: Instant,
    s0: u64,
    token: Arc<str>,
) -> Vec<ClientEnd> {
    let cfg = &sh.cfg;
    let inflight = Arc::new(Semaphore::new((cfg.inflight_max / cfg.workers).max(1)));
    let mut tasks = JoinSet::new();
    let mut i = w as u64;
    while i < cfg.clients {
        if cfg.reconnect_rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / cfg.reconnect_rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let mut stop_wait = stop.clone();
        let permit = tokio::select! {
            p = Arc::clone(&inflight).acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stop_wait.wait_for(|s| *s) => break,
        };
        tasks.spawn_local(phase4_client(
            i,
            Arc::clone(&sh),
            permit,
            stop.clone(),
            start,
            s0,
            Arc::clone(&token),
        ));
        i += cfg.workers as u64;
    }
    let mut ends = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(end) = r {
            ends.push(end);
        }
    }
    ends
}

async fn phase4_client(
    i: u64,
    sh: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
    start: Instant,
    s0: u64,
    token: Arc<str>,
) -> ClientEnd {
    let cfg = &sh.cfg;
    let mut end = ClientEnd {
        connect_start_us: since_us(start),
        upgraded_us: None,
        first_message_us: None,
        recovered_us: None,
        caught_up_us: None,
        catchup: Catchup::new(s0, cfg.missed),
        connect_failure: None,
        disconnect: None,
        live_copies: 0,
        foreign: 0,
    };
    let source = cfg.sources[(i as usize) % cfg.sources.len()];
    let request = client_request(&cfg.resume, i, Some(&token));
    let attempt = tokio::time::timeout(cfg.connect_timeout, open(&cfg.resume, source, request));
    let result = tokio::select! {
        r = attempt => r.unwrap_or_else(|_| Err("timeout (connect)".to_owned())),
        _ = stop.wait_for(|s| *s) => Err("stopped before connected".to_owned()),
    };
    drop(permit);
    let mut ws = match result {
        Ok(ws) => ws,
        Err(reason) => {
            sh.failed4.fetch_add(1, Ordering::Relaxed);
            end.connect_failure = Some(reason);
            return end;
        }
    };
    end.upgraded_us = Some(since_us(start));
    sh.connected4.fetch_add(1, Ordering::Relaxed);
    let live_seq = end.catchup.last() + 1;
    // Counted in `failed4` (the main thread stops waiting for it).
    let mut gave_up = false;
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            msg = ws.next() => msg,
        };
        let Some(Ok(Message::Text(t))) = &msg else {
            if let Some(reason) = end_reason(&msg) {
                end.disconnect = Some(reason);
                if end.caught_up_us.is_none() && !gave_up {
                    sh.failed4.fetch_add(1, Ordering::Relaxed);
                }
                return end;
            }
            continue;
        };
        let was_caught_up = end.catchup.caught_up();
        match scan_frame(t.as_bytes(), &cfg.channel) {
            Frame::Message { ours: true, seq } => {
                if end.first_message_us.is_none() {
                    end.first_message_us = Some(since_us(start));
                }
                if seq == Some(live_seq) {
                    end.live_copies += 1;
                    if end.live_copies == 1 && was_caught_up {
                        sh.live_seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
                end.catchup.on_message(seq);
            }
            Frame::Recovered { ours: true, event } => {
                end.recovered_us.get_or_insert_with(|| since_us(start));
                end.catchup.on_recovered(event);
                // The replay is over: if S0+M has not come, it will not (volley replays
                // before the event). Count the client as finished, once.
                if !end.catchup.caught_up() && !gave_up {
                    gave_up = true;
                    sh.failed4.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => end.foreign += 1,
        }
        if !was_caught_up && end.catchup.caught_up() {
            let at = since_us(start);
            end.caught_up_us = Some(at);
            sh.last_caught_us.fetch_max(at, Ordering::Relaxed);
            if sh.caught_up.fetch_add(1, Ordering::AcqRel) + 1 == cfg.clients {
                // The last one: read the CPU now, not when the main thread next looks.
                let set = cpu_set(cfg);
                *sh.cpu_at_last.lock().expect("not poisoned") = Some(set);
            }
        }
    }
    close(ws).await;
    end
}

// ------------------------------------------------------------------------------------
// HTTP helpers (main thread)
// ------------------------------------------------------------------------------------

/// `GET /api/stats` over HTTP/1.0 (the server closes after answering); `total.connections`.
async fn get_connections(api: &Target) -> Result<u64, String> {
    let work = async {
        let mut s = TcpStream::connect(api.addr)
            .await
            .map_err(|e| io_reason("connect", &e))?;
        let req = format!("GET /api/stats HTTP/1.0\r\nHost: {}\r\n\r\n", api.authority);
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| io_reason("write", &e))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| io_reason("read", &e))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > STATS_BYTES_MAX {
                return Err("stats answer too large".to_owned());
            }
        }
        let (status, body) =
            split_http_answer(&buf).ok_or_else(|| "malformed stats answer".to_owned())?;
        if status != 200 {
            return Err(format!("GET /api/stats: HTTP {status}"));
        }
        stats_connections(body).ok_or_else(|| "no total.connections in /api/stats".to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or_else(|_| Err("GET /api/stats: timeout".to_owned()))
}

/// Publishes one message to the room; its seq. A transport error is retried once on a
/// fresh connection: volley closes a keep-alive connection that stays idle past its
/// `--http-head-timeout-ms` (10 s), e.g. while swarm waits in phase 4.
async fn publish_one(cfg: &Config, client: &mut Client, k: u64) -> Result<u64, String> {
    match publish_once(cfg, client, k).await {
        Err(e) if e != "timeout" && !e.starts_with("POST ") => publish_once(cfg, client, k).await,
        other => other,
    }
}

async fn publish_once(cfg: &Config, client: &mut Client, k: u64) -> Result<u64, String> {
    let path = format!("/api/rooms/{}/messages", cfg.room);
    let body = payload(k, cfg.size);
    let resp = tokio::time::timeout(
        cfg.post_timeout,
        client.post(&path, "application/json", body.as_bytes()),
    )
    .await
    .unwrap_or_else(|_| Err("timeout".to_owned()))?;
    if resp.status != 200 {
        return Err(format!(
            "POST {path}: HTTP {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
        ));
    }
    publish_seq(&resp.body).ok_or_else(|| format!("POST {path}: no seq in the answer"))
}

struct Published {
    seqs: Vec<u64>,
    entry_errors: u64,
    failures: Reasons,
    took: Duration,
}

/// Phase 3: M messages in batches, one POST after the other on one keep-alive connection.
async fn publish_missed(cfg: &Config, client: &mut Client) -> Published {
    let t = Instant::now();
    let mut p = Published {
        seqs: Vec::with_capacity(cfg.missed as usize),
        entry_errors: 0,
        failures: Reasons::default(),
        took: Duration::ZERO,
    };
    for range in batch_ranges(cfg.missed, cfg.batch_max) {
        if net::stop_requested() {
            p.failures.add("stopped");
            break;
        }
        let body = batch_body(&cfg.room, range, cfg.size);
        let answer = tokio::time::timeout(
            cfg.post_timeout,
            client.post("/api/batch", "application/json", body.as_bytes()),
        )
        .await
        .unwrap_or_else(|_| Err("timeout".to_owned()));
        match answer {
            Ok(resp) if resp.status == 200 => match batch_seqs(&resp.body) {
                Some((seqs, errors)) => {
                    p.seqs.extend(seqs);
                    p.entry_errors += errors;
                }
                None => p.failures.add("200 without results"),
            },
            Ok(resp) => {
                if p.failures.total() == 0 {
                    eprintln!(
                        "swarm storm: POST /api/batch HTTP {}: {} (lower --batch-max or raise volley's --body-bytes-max)",
                        resp.status,
                        String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                    );
                }
                p.failures.add(&format!("HTTP {}", resp.status));
            }
            Err(e) => p.failures.add(&e),
        }
    }
    p.took = t.elapsed();
    p
}

// ------------------------------------------------------------------------------------
// Run
// ------------------------------------------------------------------------------------

pub fn run(a: StormArgs) -> Result<Value, String> {
    let cfg = validate(&a)?;
    eprintln!(
        "swarm storm: url={} resume_url={} api={} room={} clients={} missed={} size={}B batch_max={} reconnect_rate={} inflight_max={} workers={} server_pids={:?} redis_pid={:?}",
        a.url,
        a.resume_url.as_deref().unwrap_or(&a.url),
        a.api,
        cfg.room,
        cfg.clients,
        cfg.missed,
        cfg.size,
        cfg.batch_max,
        cfg.reconnect_rate,
        cfg.inflight_max,
        cfg.workers,
        cfg.server_pids,
        cfg.redis_pid
    );
    net::install_stop_handler();
    let started = Instant::now();
    let sh = Arc::new(Shared {
        seen: (0..cfg.clients).map(|_| AtomicU64::new(0)).collect(),
        cfg,
        joined: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        connected4: AtomicU64::new(0),
        failed4: AtomicU64::new(0),
        caught_up: AtomicU64::new(0),
        last_caught_us: AtomicU64::new(0),
        live_seen: AtomicU64::new(0),
        cpu_at_last: Mutex::new(None),
    });
    let cfg = &sh.cfg;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a tokio runtime: {e}"))?;
    let mut api = Client::new(cfg.api.clone());
    let log = |what: &str| {
        eprintln!(
            "swarm storm: t={:.1}s {what}",
            started.elapsed().as_secs_f64()
        )
    };

    // --- phase 1: connect + join, publish the first message, wait until all saw it ---------
    let (stop1_tx, stop1_rx) = watch::channel(false);
    let p1_start = Instant::now();
    let handles = {
        let (sh, stop) = (Arc::clone(&sh), stop1_rx);
        spawn_workers(cfg.workers, "storm-a", move |w| {
            phase1_worker(w, Arc::clone(&sh), stop.clone(), p1_start)
        })?
    };
    let connect_limit = Duration::from_secs_f64(cfg.clients as f64 / cfg.rate)
        + cfg.connect_timeout
        + Duration::from_secs(10);
    let phase1 = rt.block_on(async {
        let mut last_print = Instant::now();
        loop {
            let (j, f) = (
                sh.joined.load(Ordering::Relaxed),
                sh.failed.load(Ordering::Relaxed),
            );
            if j + f >= cfg.clients || net::stop_requested() || p1_start.elapsed() > connect_limit {
                break;
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                log(&format!("phase 1: joined={j} failed={f}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let joined = sh.joined.load(Ordering::Relaxed);
        let join_s = p1_start.elapsed().as_secs_f64();
        log(&format!(
            "phase 1: {joined} of {} joined in {join_s:.2}s",
            cfg.clients
        ));
        if joined == 0 {
            return Err("no client joined; is volley running in open mode at --url?".to_owned());
        }
        let s0 = publish_one(cfg, &mut api, 0).await?;
        let seen_start = Instant::now();
        let seen = loop {
            let seen = sh
                .seen
                .iter()
                .filter(|s| s.load(Ordering::Relaxed) >= s0)
                .count() as u64;
            if seen >= joined || seen_start.elapsed() > cfg.seen_timeout || net::stop_requested() {
                break seen;
            }
            tokio::time::sleep(POLL).await;
        };
        log(&format!("phase 1: S0={s0}, seen by {seen} of {joined}"));
        Ok((joined, join_s, s0, seen, seen_start.elapsed()))
    });
    // --- phase 2: close everyone ---------------------------------------------------------
    let _ = stop1_tx.send(true);
    let p1_ends = join_workers(handles, CLOSE_WAIT + WORKER_GRACE)?;
    let (joined, join_s, s0, seen, seen_took) = phase1?;
    let mut p1 = Phase1End::default();
    for e in &p1_ends {
        p1.connect_failures.merge(&e.connect_failures);
        p1.disconnects.merge(&e.disconnects);
    }
    if net::stop_requested() {
        return Err("stopped by signal".into());
    }
    let (conns_after_close, published) = rt.block_on(async {
        // The server may still be tearing down; wait (bounded) for 0 connections everywhere.
        let t = Instant::now();
        let mut counts: Vec<Result<u64, String>>;
        loop {
            counts = Vec::new();
            for s in &cfg.stats {
                counts.push(get_connections(s).await);
            }
            let all_zero = counts.iter().all(|c| matches!(c, Ok(0)));
            if all_zero || t.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(cfg.settle).await;
        log("phase 2: all closed; phase 3: publishing");
        // --- phase 3: publish M while nobody is connected ---------------------------------
        // A fresh connection: the one of phase 1 may have been idle past volley's limit.
        api = Client::new(cfg.api.clone());
        let published = publish_missed(cfg, &mut api).await;
        tokio::time::sleep(cfg.settle).await;
        (counts, published)
    });
    let seqs_ok = seqs_cover(&published.seqs, s0 + 1, s0 + cfg.missed);
    log(&format!(
        "phase 3: {} published in {:.2}s, seqs {}..={} {}",
        published.seqs.len(),
        published.took.as_secs_f64(),
        s0 + 1,
        s0 + cfg.missed,
        if seqs_ok { "ok" } else { "NOT as expected" }
    ));
    if net::stop_requested() {
        return Err("stopped by signal".into());
    }

    // --- phase 4: the storm ----------------------------------------------------------------
    let token: Arc<str> = resume_token(&cfg.room, s0).into();
    let (stop4_tx, stop4_rx) = watch::channel(false);
    let cpu0 = cpu_set(cfg);
    let p4_start = Instant::now();
    let handles = {
        let (sh, stop, token) = (Arc::clone(&sh), stop4_rx, Arc::clone(&token));
        spawn_workers(cfg.workers, "storm-b", move |w| {
            phase4_worker(
                w,
                Arc::clone(&sh),
                stop.clone(),
                p4_start,
                s0,
                Arc::clone(&token),
            )
        })?
    };
    let (waited_out, live, cpu1) = rt.block_on(async {
        let mut last_print = Instant::now();
        let waited_out = loop {
            let (c, f) = (
                sh.caught_up.load(Ordering::Acquire),
                sh.failed4.load(Ordering::Relaxed),
            );
            if c + f >= cfg.clients || net::stop_requested() {
                break false;
            }
            if p4_start.elapsed() > cfg.catchup_timeout {
                break true;
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                log(&format!(
                    "phase 4: connected={} caught_up={c} failed={f}",
                    sh.connected4.load(Ordering::Relaxed)
                ));
            }
            tokio::time::sleep(POLL).await;
        };
        let caught = sh.caught_up.load(Ordering::Acquire);
        // If the last client never caught up (failures, timeout), read the CPU now, before
        // the live check.
        let cpu1 = sh
            .cpu_at_last
            .lock()
            .expect("not poisoned")
            .unwrap_or_else(|| cpu_set(cfg));
        log(&format!(
            "phase 4: {caught} of {} caught up (last at {:.3}s)",
            cfg.clients,
            sh.last_caught_us.load(Ordering::Relaxed) as f64 / 1e6
        ));
        // Live check: one more message, every caught-up client must get it once.
        let mut live = Value::Null;
        if cfg.live_check && caught > 0 && !net::stop_requested() {
            let t = Instant::now();
            api = Client::new(cfg.api.clone());
            let seq = publish_one(cfg, &mut api, cfg.missed + 1).await;
            while sh.live_seen.load(Ordering::Relaxed) < caught
                && t.elapsed() < Duration::from_secs(10)
            {
                tokio::time::sleep(POLL).await;
            }
            // A little longer, to catch duplicates.
            tokio::time::sleep(Duration::from_millis(300)).await;
            live = json!({
                "seq": seq.as_ref().ok(),
                "publish_error": seq.as_ref().err(),
                "expected_seq": s0 + cfg.missed + 1,
                "clients_expected": caught,
                "clients_received": sh.live_seen.load(Ordering::Relaxed),
                "took_s": round3(t.elapsed().as_secs_f64()),
            });
        }
        (waited_out, live, cpu1)
    });
    let _ = stop4_tx.send(true);
    let ends: Vec<ClientEnd> = join_workers(handles, CLOSE_WAIT + WORKER_GRACE)?
        .into_iter()
        .flatten()
        .collect();

    // --- report ------------------------------------------------------------------------------
    let mut facts = StormFacts {
        clients: cfg.clients,
        missed: cfg.missed,
        connected: sh.connected4.load(Ordering::Relaxed),
        caught_up: sh.caught_up.load(Ordering::Relaxed),
        last_caught_up_us: (sh.caught_up.load(Ordering::Relaxed) > 0)
            .then(|| sh.last_caught_us.load(Ordering::Relaxed)),
        server_cpu: cpu0.server.zip(cpu1.server),
        redis_cpu: cpu0.redis.zip(cpu1.redis),
        swarm_cpu: cpu0.swarm.zip(cpu1.swarm),
        clk_tck: procfs::clock_ticks_per_s(),
        ..StormFacts::default()
    };
    let mut connect_failures = Reasons::default();
    let mut disconnects = Reasons::default();
    let (mut upgrade, mut first, mut recovered, mut catchup, mut replay) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut problems = Reasons::default();
    let (mut rec_true, mut rec_false, mut rec_error) = (0u64, 0u64, 0u64);
    let (mut live_dups, mut foreign, mut stale) = (0u64, 0u64, 0u64);
    let mut examples: Vec<Value> = Vec::new();
    for e in &ends {
        let c = &e.catchup;
        facts.deliveries += c.received;
        facts.duplicates += c.duplicates;
        facts.gaps += c.gaps;
        foreign += e.foreign;
        stale += c.stale;
        live_dups += e.live_copies.saturating_sub(1);
        if let Some(f) = &e.connect_failure {
            connect_failures.add(f);
        }
        if let Some(d) = &e.disconnect {
            disconnects.add(d);
        }
        if let Some(u) = e.upgraded_us {
            upgrade.push(u - e.connect_start_us);
        }
        if let Some(u) = e.first_message_us {
            first.push(u - e.connect_start_us);
        }
        if let Some(u) = e.recovered_us {
            recovered.push(u - e.connect_start_us);
        }
        if let Some(u) = e.caught_up_us {
            catchup.push(u - e.connect_start_us);
            if let Some(f) = e.first_message_us {
                replay.push(u - f);
            }
        }
        match &c.recovered {
            Some(r) if r.error.is_some() => rec_error += 1,
            Some(r) if r.recovered == Some(true) => rec_true += 1,
            Some(_) => rec_false += 1,
            None => {}
        }
        if c.exact() {
            facts.exact += 1;
        } else if e.connect_failure.is_none() {
            for (bad, what) in [
                (c.recovered.is_none(), "no recovered event"),
                (c.received < c.missed, "fewer messages than missed"),
                (c.gaps > 0, "gaps"),
                (c.duplicates > 0, "duplicates"),
                (c.after_recovered > 0, "replayed message after recovered"),
                (c.live_before_recovered > 0, "live message before recovered"),
                (c.extra_recovered > 0, "more than one recovered event"),
                (
                    c.recovered
                        .as_ref()
                        .is_some_and(|r| r.recovered != Some(true)),
                    "recovered not true",
                ),
                (
                    c.recovered
                        .as_ref()
                        .is_some_and(|r| r.replayed != Some(c.missed)),
                    "replayed != missed",
                ),
            ] {
                if bad {
                    problems.add(what);
                }
            }
            if examples.len() < 5 {
                examples.push(json!({
                    "received": c.received, "next": c.next, "gaps": c.gaps,
                    "duplicates": c.duplicates, "after_recovered": c.after_recovered,
                    "recovered": c.recovered.as_ref().map(|r| json!({
                        "recovered": r.recovered, "replayed": r.replayed, "seq": r.seq, "error": r.error,
                    })),
                    "disconnect": e.disconnect,
                }));
            }
        }
    }
    let mut storm = storm_report(&facts);
    let extra = json!({
        "timed_out": waited_out,
        "connect_failures": connect_failures.to_json(),
        "disconnects_before_stop": disconnects.to_json(),
        "recovered_true": rec_true,
        "recovered_false": rec_false,
        "recovered_error": rec_error,
        "problems": problems.to_json(),
        "problem_examples": examples,
        "stale_messages": stale,
        "foreign_frames": foreign,
        "upgrade_us": percentiles(&mut upgrade),
        "first_message_us": percentiles(&mut first),
        "recovered_event_us": percentiles(&mut recovered),
        "catchup_us": percentiles(&mut catchup),
        "first_to_last_message_us": percentiles(&mut replay),
        "live_check": live,
        "live_duplicates": live_dups,
    });
    if let (Value::Object(m), Value::Object(x)) = (&mut storm, extra) {
        m.extend(x);
    }
    let conns_json: Vec<Value> = cfg
        .stats
        .iter()
        .zip(&conns_after_close)
        .map(|(t, c)| match c {
            Ok(n) => json!({"server": t.authority, "connections": n}),
            Err(e) => json!({"server": t.authority, "error": e}),
        })
        .collect();
    Ok(json!({
        "tool": "swarm storm",
        "url": a.url,
        "resume_url": a.resume_url.as_deref().unwrap_or(&a.url),
        "api": a.api,
        "room": cfg.room,
        "clients": cfg.clients,
        "missed": cfg.missed,
        "size": cfg.size,
        "workers": cfg.workers,
        "reconnect_rate": cfg.reconnect_rate,
        "inflight_max": cfg.inflight_max,
        "server_pids": cfg.server_pids,
        "redis_pid": cfg.redis_pid,
        "resume_token": &*token,
        "phase1": {
            "joined": joined,
            "connect_failures": p1.connect_failures.to_json(),
            "disconnects_before_close": p1.disconnects.to_json(),
            "connect_and_join_s": round3(join_s),
            "s0": s0,
            "clients_saw_s0": seen,
            "s0_to_all_seen_s": round3(seen_took.as_secs_f64()),
        },
        "phase2": {"connections_after_close": conns_json},
        "phase3": {
            "published": published.seqs.len(),
            "entry_errors": published.entry_errors,
            "post_failures": published.failures.to_json(),
            "seqs_exact": seqs_ok,
            "first_seq": published.seqs.iter().min(),
            "last_seq": published.seqs.iter().max(),
            "publish_s": round3(published.took.as_secs_f64()),
        },
        "phase4": storm,
        "stopped_by_signal": net::stop_requested(),
        "elapsed_s": round3(started.elapsed().as_secs_f64()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc4648() {
        // RFC 4648 §10 vectors, with the url alphabet and no padding.
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(b"fooba"), "Zm9vYmE");
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        // 0xfb 0xff -> "+/8=" in standard base64, "-_8" in base64url.
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn resume_tokens() {
        let t = resume_token("storm", 1);
        assert_eq!(t, base64url(br#"{"room:storm":1}"#));
        assert_eq!(t, "eyJyb29tOnN0b3JtIjoxfQ");
        assert!(!t.contains('=') && !t.contains('+') && !t.contains('/'));
        assert!(valid_room("storm"));
        assert!(valid_room("a.b-c_9"));
        assert!(!valid_room(""));
        assert!(!valid_room("a b"));
        assert!(!valid_room("a\"b"));
        assert!(!valid_room(&"x".repeat(65)));
    }

    #[test]
    fn scans_frames() {
        let ch = "room:storm";
        let m = br#"{"type":"message","channel":"room:storm","seq":17,"id":"n-0-5","from":null,"data":{"k":2}}"#;
        assert_eq!(
            scan_frame(m, ch),
            Frame::Message {
                ours: true,
                seq: Some(17)
            }
        );
        let other = br#"{"type":"message","channel":"room:stormy","seq":3,"data":1}"#;
        assert_eq!(
            scan_frame(other, ch),
            Frame::Message {
                ours: false,
                seq: Some(3)
            }
        );
        let fake = br#"{"type":"message","channel":"user:s1","seq":4,"data":{"channel":"room:storm","seq":99}}"#;
        assert_eq!(
            scan_frame(fake, ch),
            Frame::Message {
                ours: false,
                seq: Some(4)
            }
        );
        let null_seq = br#"{"type":"message","channel":"room:storm","seq":null,"data":1}"#;
        assert_eq!(
            scan_frame(null_seq, ch),
            Frame::Message {
                ours: true,
                seq: None
            }
        );
        let binary = br#"{"type":"message","channel":"room:storm","seq":5,"data_base64":"AA=="}"#;
        assert_eq!(
            scan_frame(binary, ch),
            Frame::Message {
                ours: true,
                seq: Some(5)
            }
        );
        assert_eq!(
            scan_frame(br#"{"type":"reply","ref":1,"ok":true}"#, ch),
            Frame::Reply { ok: true }
        );
        assert_eq!(
            scan_frame(
                br#"{"type":"reply","ref":1,"ok":false,"error":{"code":"x"}}"#,
                ch
            ),
            Frame::Reply { ok: false }
        );
        let rec = br#"{"type":"recovered","channel":"room:storm","recovered":true,"replayed":1000,"seq":1001}"#;
        assert_eq!(
            scan_frame(rec, ch),
            Frame::Recovered {
                ours: true,
                event: Recovered {
                    recovered: Some(true),
                    replayed: Some(1000),
                    seq: Some(1001),
                    error: None
                }
            }
        );
        let rec_err = br#"{"type":"recovered","channel":"user:s1","recovered":false,"replayed":0,"seq":0,"error":"redis down"}"#;
        match scan_frame(rec_err, ch) {
            Frame::Recovered { ours, event } => {
                assert!(!ours);
                assert_eq!(event.recovered, Some(false));
                assert_eq!(event.error.as_deref(), Some("redis down"));
            }
            f => panic!("{f:?}"),
        }
        assert_eq!(scan_frame(b"not json", ch), Frame::Other);
        assert_eq!(scan_frame(br#"{"type":"pong"}"#, ch), Frame::Other);
    }

    fn event(replayed: u64) -> Recovered {
        Recovered {
            recovered: Some(true),
            replayed: Some(replayed),
            seq: Some(0),
            error: None,
        }
    }

    #[test]
    fn catchup_exact() {
        let mut c = Catchup::new(10, 3);
        assert!(!c.caught_up());
        for s in 11..=13 {
            c.on_message(Some(s));
        }
        assert!(!c.caught_up(), "needs the recovered event too");
        c.on_recovered(event(3));
        assert!(c.caught_up());
        assert!(c.exact());
        // A live message afterwards does not spoil it.
        c.on_message(Some(14));
        assert_eq!(c.live, 1);
        assert!(c.exact());
    }

    #[test]
    fn catchup_problems() {
        // A gap.
        let mut c = Catchup::new(0, 4);
        for s in [1, 2, 4] {
            c.on_message(Some(s));
        }
        c.on_recovered(event(3));
        assert_eq!(c.gaps, 1);
        assert!(c.caught_up());
        assert!(!c.exact());
        // A duplicate and out of order.
        let mut c = Catchup::new(0, 3);
        for s in [1, 2, 2, 3] {
            c.on_message(Some(s));
        }
        c.on_recovered(event(3));
        assert_eq!(c.duplicates, 1);
        assert_eq!(c.received, 4);
        assert!(!c.exact());
        // The event before the replay ends; then the last replayed message.
        let mut c = Catchup::new(0, 2);
        c.on_message(Some(1));
        c.on_recovered(event(2));
        c.on_message(Some(2));
        assert!(c.caught_up());
        assert_eq!(c.after_recovered, 1);
        assert!(!c.exact());
        // recovered false, wrong replayed count, a second event.
        let mut c = Catchup::new(0, 1);
        c.on_message(Some(1));
        c.on_recovered(Recovered {
            recovered: Some(false),
            ..event(1)
        });
        assert!(!c.exact());
        let mut c = Catchup::new(0, 1);
        c.on_message(Some(1));
        c.on_recovered(event(2));
        assert!(!c.exact());
        let mut c = Catchup::new(0, 1);
        c.on_message(Some(1));
        c.on_recovered(event(1));
        c.on_recovered(event(1));
        assert_eq!(c.extra_recovered, 1);
        assert!(!c.exact());
        // Old, seq-less and live-before-recovered messages.
        let mut c = Catchup::new(5, 1);
        c.on_message(Some(5));
        c.on_message(None);
        c.on_message(Some(7));
        assert_eq!((c.stale, c.live, c.live_before_recovered), (2, 1, 1));
        c.on_message(Some(6));
        c.on_recovered(event(1));
        assert!(c.caught_up());
        assert!(!c.exact());
    }

    #[test]
    fn percentile_math() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let p = percentiles(&mut v);
        assert_eq!(p["count"], 100);
        assert_eq!(p["p50"], 50);
        assert_eq!(p["p99"], 99);
        assert_eq!(p["max"], 100);
        let mut one = vec![7];
        let p = percentiles(&mut one);
        assert_eq!((p["p50"].as_u64(), p["p99"].as_u64()), (Some(7), Some(7)));
        let p = percentiles(&mut []);
        assert_eq!(p["p50"], Value::Null);
        assert_eq!(p["max"], Value::Null);
    }

    #[test]
    fn bodies_and_answers() {
        let d = payload(3, 100);
        assert_eq!(d.len(), 100);
        let v: Value = serde_json::from_str(&d).unwrap();
        assert_eq!(v["k"], 3);
        assert_eq!(payload(12345, 0), r#"{"k":12345,"pad":""}"#);
        assert_eq!(
            batch_ranges(1000, 400),
            vec![(0, 400), (400, 800), (800, 1000)]
        );
        assert_eq!(batch_ranges(0, 400), vec![]);
        let b = batch_body("storm", (1, 3), 20);
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["messages"].as_array().unwrap().len(), 2);
        assert_eq!(v["messages"][0]["room"], "storm");
        assert_eq!(v["messages"][1]["data"]["k"], 2);
        assert_eq!(
            batch_seqs(br#"{"results":[{"id":"a","seq":2,"recipients":0},{"error":"x"},{"id":"b","seq":3,"recipients":0}],"recipients":0}"#),
            Some((vec![2, 3], 1))
        );
        assert_eq!(batch_seqs(br#"{"error":"too big"}"#), None);
        assert_eq!(
            publish_seq(br#"{"id":"x","seq":41,"recipients":3}"#),
            Some(41)
        );
        assert_eq!(publish_seq(br#"{"error":"no"}"#), None);
        assert!(seqs_cover(&[3, 2, 4], 2, 4));
        assert!(!seqs_cover(&[2, 2, 4], 2, 4));
        assert!(!seqs_cover(&[2, 3], 2, 4));
        assert!(!seqs_cover(&[], 2, 1));
        assert_eq!(
            stats_connections(
                br#"{"shards":[],"total":{"connections":0},"process_connections":0}"#
            ),
            Some(0)
        );
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(split_http_answer(raw), Some((200, &b"{}"[..])));
        assert_eq!(split_http_answer(b"HTTP/1.1 200 OK\r\n"), None);
    }

    #[test]
    fn requests() {
        let t = net::parse_target("ws://127.0.0.1:9/ws", "ws", "/ws").unwrap();
        assert_eq!(client_request(&t, 7, None), "ws://127.0.0.1:9/ws?user=s7");
        assert_eq!(
            client_request(&t, 7, Some("abc")),
            "ws://127.0.0.1:9/ws?user=s7&resume=abc"
        );
        let t = net::parse_target("ws://127.0.0.1:9/ws?protocol=json", "ws", "/ws").unwrap();
        assert_eq!(
            client_request(&t, 1, None),
            "ws://127.0.0.1:9/ws?protocol=json&user=s1"
        );
    }

    #[test]
    fn report_math() {
        let s = |ticks, sched_ns| CpuSample { ticks, sched_ns };
        let f = StormFacts {
            clients: 1000,
            missed: 1000,
            connected: 1000,
            caught_up: 1000,
            exact: 1000,
            deliveries: 1_000_000,
            duplicates: 0,
            gaps: 0,
            last_caught_up_us: Some(2_000_000),
            server_cpu: Some((s(100, 1_000_000_000), s(400, 4_000_000_000))),
            redis_cpu: None,
            swarm_cpu: Some((s(0, 0), s(50, 0))),
            clk_tck: 100,
        };
        let r = storm_report(&f);
        assert_eq!(r["deliveries_expected"], 1_000_000);
        assert_eq!(r["all_caught_up_s"], 2.0);
        assert_eq!(r["deliveries_per_s"], 500_000.0);
        assert_eq!(r["server_cpu_us"], 3_000_000.0);
        assert_eq!(r["server_cpu_us_ticks"], 3_000_000.0);
        assert_eq!(r["server_cpu_us_per_replayed_message"], 3.0);
        assert_eq!(r["server_cores_busy"], 1.5);
        // schedstat missing: ticks.
        assert_eq!(r["swarm_cpu_us"], 500_000.0);
        assert_eq!(r["redis_cpu_us"], Value::Null);
        // Not everyone caught up: no "all" time, still the last one's.
        let g = StormFacts {
            caught_up: 999,
            server_cpu: None,
            ..f.clone()
        };
        let r = storm_report(&g);
        assert_eq!(r["all_caught_up_s"], Value::Null);
        assert_eq!(r["last_caught_up_s"], 2.0);
        assert_eq!(r["server_cpu_us_per_replayed_message"], Value::Null);
        // Nobody: no division by zero.
        let h = StormFacts {
            caught_up: 0,
            deliveries: 0,
            last_caught_up_us: None,
            ..f
        };
        let r = storm_report(&h);
        assert_eq!(r["deliveries_per_s"], Value::Null);
        assert_eq!(r["server_cpu_us_per_replayed_message"], Value::Null);
    }

    #[test]
    fn schedstat() {
        assert_eq!(parse_schedstat_ns("123456789 2000 30\n"), Some(123_456_789));
        assert_eq!(parse_schedstat_ns(""), None);
        let (best, ticks) = cpu_used_us(
            CpuSample {
                ticks: 1,
                sched_ns: 1_000,
            },
            CpuSample {
                ticks: 2,
                sched_ns: 6_000,
            },
            100,
        );
        assert_eq!((best, ticks), (5.0, 10_000.0));
    }
}
