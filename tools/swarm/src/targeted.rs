//! `swarm targeted`: rooms and users through `POST /api/batch`.
//!
//! Connects `rooms x members` clients as `ws://host/ws?user=u<i>` (volley in open mode,
//! native JSON protocol); client i joins room `r<i / members>` and waits for its reply.
//! Then, per phase:
//! - **room**: each round is one batch with one message per room (`rooms` entries);
//! - **user**: each round is one message per user (`clients` entries, split into batches of
//!   at most `--batch-max`, posted concurrently over `--http-conns` keep-alive connections).
//!
//! Every client counts what it receives on its two channels (`room:r<j>`, `user:u<i>`) and
//! checks each channel's seq for gaps and duplicates. A phase's wall time runs from the
//! start of its first POST to the moment the last client received its last message; with
//! `--server-pid`, the server's CPU (utime+stime and schedstat) is read around each phase.
//!
//! Worker threads each run a current-thread tokio runtime (a client stays on its worker);
//! the per-message path touches only that worker's own counters. The publisher and the
//! phase bookkeeping run on the main thread. Everything pure (frame scan, seq check, report
//! math, /proc parsing) is at the top and unit-tested.

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message};

use crate::hist::Histogram;
use crate::http::Client;
use crate::net::{self, Target};
use crate::stats::Reasons;

/// The issue's target: targeted deliveries per second on this box.
pub const TARGET_DELIVERIES_PER_S: f64 = 100_000.0;
/// volley's limit of entries in one `POST /api/batch`.
const BATCH_ENTRIES_MAX: usize = 10_000;
/// Most clients one process accepts (RLIMIT_NOFILE decides the real limit).
const CLIENTS_MAX: u64 = 1_000_000;
/// File descriptors kept for the process itself beyond its clients.
const SPARE_FDS: u64 = 64;
/// Per-connection read buffer (tungstenite's default of 128 KiB x 19,000 is too much).
const READ_BUFFER_BYTES: usize = 4096;
/// Largest message accepted from the server.
const MESSAGE_BYTES_MAX: usize = 1 << 20;
/// How often the main thread looks at the live counters while waiting.
const POLL: Duration = Duration::from_millis(2);
/// Extra time after stop + drain before the process gives up on its workers.
const WORKER_GRACE: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------------------
// Pure parts
// ------------------------------------------------------------------------------------

/// A phase of the run: index into the per-phase counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Room = 0,
    User = 1,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Room => "room",
            Phase::User => "user",
        }
    }
}

/// Parses `--phases room,user`.
pub fn parse_phases(spec: &str) -> Result<Vec<Phase>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p = match part {
            "room" | "rooms" => Phase::Room,
            "user" | "users" => Phase::User,
            other => {
                return Err(format!(
                    "--phases {spec}: unknown phase {other:?}; use room,user"
                ))
            }
        };
        if out.contains(&p) {
            return Err(format!("--phases {spec}: {part} given twice"));
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err(format!(
            "--phases {spec:?}: name at least one of room, user"
        ));
    }
    Ok(out)
}

/// The channel of a server message, as far as this tool cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chan {
    /// `room:r<n>`
    Room(u64),
    /// `user:u<n>`
    User(u64),
    Other,
}

/// What one text frame from the server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Message {
        chan: Chan,
        seq: Option<u64>,
        t_us: Option<u64>,
    },
    Reply {
        ok: bool,
    },
    Other,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn digits_at(buf: &[u8]) -> Option<u64> {
    let n = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    std::str::from_utf8(&buf[..n]).ok()?.parse().ok()
}

fn chan_of(name: &[u8]) -> Chan {
    let num = |rest: &[u8]| {
        (!rest.is_empty() && rest.len() <= 19 && rest.iter().all(u8::is_ascii_digit))
            .then(|| digits_at(rest))
            .flatten()
    };
    if let Some(rest) = name.strip_prefix(b"room:r") {
        num(rest).map_or(Chan::Other, Chan::Room)
    } else if let Some(rest) = name.strip_prefix(b"user:u") {
        num(rest).map_or(Chan::Other, Chan::User)
    } else {
        Chan::Other
    }
}

/// Scans a server frame without a JSON parser (the swarm shares the cores with the server).
/// The envelope fields (`type`, `channel`, `seq`) are looked for before `"data":`, so a
/// payload cannot fake them; `t_us` is looked for in the payload.
pub fn scan_frame(buf: &[u8]) -> Frame {
    let data_at = find(buf, b"\"data\":").unwrap_or(buf.len());
    let head = &buf[..data_at];
    if find(head, b"\"type\":\"message\"").is_some() {
        let chan = find(head, b"\"channel\":\"")
            .and_then(|at| {
                let rest = &head[at + 11..];
                let end = rest.iter().position(|&b| b == b'"')?;
                Some(chan_of(&rest[..end]))
            })
            .unwrap_or(Chan::Other);
        let seq = find(head, b"\"seq\":").and_then(|at| digits_at(&head[at + 6..]));
        let t_us =
            find(&buf[data_at..], b"\"t_us\":").and_then(|at| digits_at(&buf[data_at + at + 7..]));
        Frame::Message { chan, seq, t_us }
    } else if find(head, b"\"type\":\"reply\"").is_some() {
        Frame::Reply {
            ok: find(head, b"\"ok\":true").is_some(),
        }
    } else {
        Frame::Other
    }
}

/// The result of one seq observation on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqEvent {
    /// The first seq seen on this channel (nothing to compare with).
    First,
    InOrder,
    /// `n` seqs were skipped.
    Gap(u64),
    /// Equal to or below one already seen.
    Duplicate,
}

/// Checks `seq` against the last one seen on the channel (`0` = none yet; volley's seqs
/// start at 1) and updates it. A seq below the last is counted as a duplicate (volley only
/// resets seqs on restart, which does not happen within a run).
pub fn check_seq(last: &mut u64, seq: u64) -> SeqEvent {
    if *last == 0 {
        *last = seq;
        return SeqEvent::First;
    }
    if seq <= *last {
        return SeqEvent::Duplicate;
    }
    let skipped = seq - *last - 1;
    *last = seq;
    if skipped == 0 {
        SeqEvent::InOrder
    } else {
        SeqEvent::Gap(skipped)
    }
}

/// utime + stime (clock ticks) from the text of `/proc/<pid>/stat`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(0) ppid(1) ... utime is field 14 overall -> index 11 here, stime 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Run time (ns) from the text of one `/proc/<pid>/task/<tid>/schedstat`.
pub fn parse_schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// A process's CPU at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSample {
    pub ticks: u64,
    /// Sum of every thread's schedstat run time (ns); finer than ticks. Threads that ended
    /// between two samples drop out, which only matters for short-lived threads.
    pub sched_ns: u64,
}

/// Reads `/proc/<pid>` (`"self"` for this process); None if it is gone.
pub fn cpu_sample(pid: &str) -> Option<CpuSample> {
    let ticks = parse_stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let mut sched_ns = 0u64;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in dir.flatten() {
            if let Ok(t) = std::fs::read_to_string(task.path().join("schedstat")) {
                sched_ns += parse_schedstat_ns(&t).unwrap_or(0);
            }
        }
    }
    Some(CpuSample { ticks, sched_ns })
}

fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Everything measured in one phase; `phase_report` turns it into JSON.
#[derive(Debug, Default, Clone)]
pub struct PhaseFacts {
    pub rounds: u64,
    pub entries_per_round: u64,
    pub posts_ok: u64,
    pub post_failures: Reasons,
    /// Entries answered with `{"error"}` inside a 200 batch answer.
    pub entry_errors: u64,
    /// Sum of the `recipients` of every batch answer.
    pub recipients_reported: u64,
    /// Joined clients x rounds: every client is in one room and is one user.
    pub expected: u64,
    /// Messages received on the phase's channels, duplicates included.
    pub received: u64,
    pub duplicates: u64,
    pub gaps: u64,
    /// From the start of the first POST to the last receive, µs.
    pub wall_us: u64,
    /// From the start of the first POST to the last POST answer, µs.
    pub publish_us: u64,
    pub server_cpu: Option<(CpuSample, CpuSample)>,
    pub swarm_cpu: Option<(CpuSample, CpuSample)>,
    pub clk_tck: u64,
    pub post_us: Histogram,
    pub latency_us: Histogram,
    pub drain_complete: bool,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn hist_json(h: &Histogram) -> Value {
    json!({
        "count": h.count(),
        "p50": h.quantile(0.50),
        "p99": h.quantile(0.99),
        "max": h.max(),
    })
}

/// CPU used between two samples, in µs, by ticks and by schedstat.
fn cpu_used_us(pair: Option<(CpuSample, CpuSample)>, clk_tck: u64) -> (Option<f64>, Option<f64>) {
    match pair {
        Some((a, b)) => {
            let ticks_us = b.ticks.saturating_sub(a.ticks) as f64 * 1e6 / clk_tck.max(1) as f64;
            let sched_us = b.sched_ns.saturating_sub(a.sched_ns) as f64 / 1000.0;
            (Some(ticks_us), (b.sched_ns > 0).then_some(sched_us))
        }
        None => (None, None),
    }
}

/// The JSON of one phase. Deliveries per second use *unique* deliveries (received minus
/// duplicates) over the phase's wall time; CPU per delivery uses schedstat when it is there
/// (ticks are 10 ms), ticks otherwise.
pub fn phase_report(f: &PhaseFacts) -> Value {
    let unique = f.received.saturating_sub(f.duplicates);
    let lost = f.expected.saturating_sub(unique);
    let wall_s = f.wall_us as f64 / 1e6;
    let per_s = (f.wall_us > 0).then(|| unique as f64 / wall_s);
    let (srv_ticks_us, srv_sched_us) = cpu_used_us(f.server_cpu, f.clk_tck);
    let srv_us = srv_sched_us.or(srv_ticks_us);
    let (sw_ticks_us, sw_sched_us) = cpu_used_us(f.swarm_cpu, f.clk_tck);
    let per_delivery = srv_us.filter(|_| unique > 0).map(|us| us / unique as f64);
    let per_core_s = srv_us
        .filter(|&us| us > 0.0)
        .map(|us| unique as f64 / (us / 1e6));
    json!({
        "rounds": f.rounds,
        "entries_per_round": f.entries_per_round,
        "posts_ok": f.posts_ok,
        "post_failures": f.post_failures.to_json(),
        "entry_errors": f.entry_errors,
        "recipients_reported": f.recipients_reported,
        "deliveries_expected": f.expected,
        "deliveries_received": f.received,
        "deliveries_unique": unique,
        "lost": lost,
        "duplicated": f.duplicates,
        "gaps": f.gaps,
        "drain_complete": f.drain_complete,
        "publish_s": round3(f.publish_us as f64 / 1e6),
        "wall_s": round3(wall_s),
        "deliveries_per_s": per_s.map(|x| x.round()),
        "target_deliveries_per_s": TARGET_DELIVERIES_PER_S,
        "meets_target": per_s.map(|x| x >= TARGET_DELIVERIES_PER_S),
        "server_cpu_us": srv_us.map(|x| x.round()),
        "server_cpu_us_ticks": srv_ticks_us.map(|x| x.round()),
        "server_cores_busy": srv_us.filter(|_| f.wall_us > 0).map(|us| round3(us / f.wall_us as f64)),
        "server_cpu_us_per_delivery": per_delivery.map(round3),
        "deliveries_per_server_core_s": per_core_s.map(|x| x.round()),
        "swarm_cpu_us": sw_sched_us.or(sw_ticks_us).map(|x| x.round()),
        "post_latency_us": hist_json(&f.post_us),
        "delivery_latency_us": hist_json(&f.latency_us),
    })
}

/// The entries of one round: room phase `rooms` entries (one per room), user phase one per
/// client; split into batches of at most `batch_max`. Returns (first, end) index ranges.
pub fn batch_ranges(entries: u64, batch_max: usize) -> Vec<(u64, u64)> {
    let step = batch_max.max(1) as u64;
    (0..entries.div_ceil(step))
        .map(|b| (b * step, ((b + 1) * step).min(entries)))
        .collect()
}

/// The body of one batch: `{"messages":[{"room":"r<j>","data":{...}},...]}`.
pub fn batch_body(phase: Phase, range: (u64, u64), round: u64, t_us: u64) -> String {
    let (key, prefix) = match phase {
        Phase::Room => ("room", 'r'),
        Phase::User => ("user", 'u'),
    };
    let mut s = String::with_capacity(16 + (range.1 - range.0) as usize * 56);
    s.push_str("{\"messages\":[");
    for n in range.0..range.1 {
        if n > range.0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"{key}\":\"{prefix}{n}\",\"data\":{{\"k\":{round},\"t_us\":{t_us}}}}}"
        ));
    }
    s.push_str("]}");
    s
}

/// From a batch answer: (total recipients, entries answered with an error).
pub fn batch_answer(body: &[u8]) -> Option<(u64, u64)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let recipients = v.get("recipients")?.as_u64()?;
    let errors = v
        .get("results")?
        .as_array()?
        .iter()
        .filter(|r| r.get("error").is_some())
        .count() as u64;
    Some((recipients, errors))
}

/// `ws://host/ws?user=u<i>`, keeping any query already in the path.
pub fn client_request(target: &Target, i: u64) -> String {
    let sep = if target.path.contains('?') { '&' } else { '?' };
    format!("ws://{}{}{sep}user=u{i}", target.authority, target.path)
}

// ------------------------------------------------------------------------------------
// CLI
// ------------------------------------------------------------------------------------

#[derive(clap::Args)]
pub struct TargetedArgs {
    /// WebSocket URL of volley (ws:// only, loopback host); `?user=u<i>` is appended.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// HTTP base URL of volley's API (http:// only, loopback host).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Rooms; clients = rooms x members (use fewer rooms for fewer clients).
    #[arg(long, default_value_t = 1000)]
    rooms: u64,
    /// Members per room; each client is in exactly one room.
    #[arg(long, default_value_t = 19)]
    members: u64,
    /// Phases to run, in order: room (one message per room per round), user (one per user).
    #[arg(long, default_value = "room,user")]
    phases: String,
    /// Rounds per phase.
    #[arg(long, default_value_t = 20)]
    rounds: u64,
    /// Most seconds of publishing per phase (fewer rounds are sent when it runs out).
    #[arg(long, default_value_t = 60.0)]
    phase_duration_s: f64,
    /// Rounds in flight: at most this many rounds' POSTs are outstanding at once (each on its
    /// own lane of --http-conns keep-alive connections), and round k is posted only once every
    /// message of round k - window has arrived (so per-client queues stay short).
    #[arg(long, default_value_t = 4)]
    window: u64,
    /// Entries per POST /api/batch (volley allows 10,000; keep the body under the server's
    /// --body-bytes-max: about 55 bytes per entry).
    #[arg(long, default_value_t = BATCH_ENTRIES_MAX)]
    batch_max: usize,
    /// Keep-alive HTTP connections per round in flight; the batches of one round are posted
    /// concurrently on them.
    #[arg(long, default_value_t = 2)]
    http_conns: usize,
    /// volley's PID, to read its CPU (utime+stime and schedstat) around each phase.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Connection attempts started per second, across all workers.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Connections (connect + join) in flight at once, across all workers.
    #[arg(long, default_value_t = 1000)]
    inflight_max: usize,
    /// Loopback source addresses, round-robin: "127.0.0.1-127.0.0.8", a list, or one address.
    #[arg(long, default_value = "127.0.0.1-127.0.0.8")]
    sources: String,
    /// Worker threads for the clients, each with its own runtime [default: cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Give up on one client (TCP + handshake + join reply) after this long.
    #[arg(long, default_value_t = 10_000)]
    connect_timeout_ms: u64,
    /// After a phase's last POST: stop waiting when no message arrived for this long...
    #[arg(long, default_value_t = 3000)]
    drain_quiet_ms: u64,
    /// ...or at the latest after this long.
    #[arg(long, default_value_t = 30_000)]
    drain_max_ms: u64,
    /// Give up on one POST after this long.
    #[arg(long, default_value_t = 30_000)]
    post_timeout_ms: u64,
    /// Pause between phases (lets the server settle; not measured).
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
}

struct Config {
    target: Target,
    api: Target,
    rooms: u64,
    members: u64,
    clients: u64,
    phases: Vec<Phase>,
    rounds: u64,
    phase_duration: Duration,
    window: u64,
    batch_max: usize,
    http_conns: usize,
    server_pid: Option<u32>,
    rate: f64,
    inflight_max: usize,
    sources: Vec<Ipv4Addr>,
    workers: usize,
    connect_timeout: Duration,
    drain_quiet: Duration,
    drain_max: Duration,
    post_timeout: Duration,
    settle: Duration,
}

fn validate(a: &TargetedArgs) -> Result<Config, String> {
    let target = net::parse_target(&a.url, "ws", "/ws")?;
    let api = net::parse_target(&a.api, "http", "")?;
    let sources = net::parse_sources(&a.sources)?;
    let phases = parse_phases(&a.phases)?;
    if a.rooms == 0 || a.members == 0 {
        return Err("--rooms and --members must be at least 1".into());
    }
    let clients = a
        .rooms
        .checked_mul(a.members)
        .filter(|&c| c <= CLIENTS_MAX)
        .ok_or_else(|| format!("--rooms x --members must be at most {CLIENTS_MAX}"))?;
    if a.rounds == 0 || a.rounds > 1_000_000 {
        return Err(format!("--rounds {}: must be 1..=1000000", a.rounds));
    }
    for (flag, v) in [
        ("--phase-duration-s", a.phase_duration_s),
        ("--rate", a.rate),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{flag} {v}: must be a positive number"));
        }
    }
    if a.window == 0 || a.window > 64 {
        return Err(format!("--window {}: must be 1..=64", a.window));
    }
    if a.batch_max == 0 || a.batch_max > BATCH_ENTRIES_MAX {
        return Err(format!(
            "--batch-max {}: must be 1..={BATCH_ENTRIES_MAX} (volley's limit)",
            a.batch_max
        ));
    }
    if a.http_conns == 0 || a.http_conns > 64 {
        return Err(format!("--http-conns {}: must be 1..=64", a.http_conns));
    }
    if a.inflight_max == 0 {
        return Err("--inflight-max 0: must be at least 1".into());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = a.workers.unwrap_or(cores);
    if workers == 0 || workers > 64 {
        return Err(format!("--workers {workers}: must be 1..=64"));
    }
    if let Some(pid) = a.server_pid {
        if cpu_sample(&pid.to_string()).is_none() {
            return Err(format!("--server-pid {pid}: cannot read /proc/{pid}/stat"));
        }
    }
    let nofile = net::raise_nofile();
    let fds = clients + SPARE_FDS + a.http_conns as u64 * a.window;
    if fds > nofile {
        return Err(format!(
            "{clients} clients need about {fds} open files but RLIMIT_NOFILE is {nofile}; use fewer --rooms"
        ));
    }
    Ok(Config {
        target,
        api,
        rooms: a.rooms,
        members: a.members,
        clients,
        phases,
        rounds: a.rounds,
        phase_duration: Duration::from_secs_f64(a.phase_duration_s),
        window: a.window,
        batch_max: a.batch_max,
        http_conns: a.http_conns,
        server_pid: a.server_pid,
        rate: a.rate,
        inflight_max: a.inflight_max,
        sources,
        workers,
        connect_timeout: Duration::from_millis(a.connect_timeout_ms.max(1)),
        drain_quiet: Duration::from_millis(a.drain_quiet_ms.max(1)),
        drain_max: Duration::from_millis(a.drain_max_ms.max(1)),
        post_timeout: Duration::from_millis(a.post_timeout_ms.max(1)),
        settle: Duration::from_millis(a.settle_ms),
    })
}

// ------------------------------------------------------------------------------------
// Live counters (one set per worker, written only by it; read by the main thread)
// ------------------------------------------------------------------------------------

#[derive(Default)]
#[repr(align(128))]
struct Live {
    connected: AtomicU64,
    failed: AtomicU64,
    joined: AtomicU64,
    open: AtomicU64,
    received: [AtomicU64; 2],
    duplicates: [AtomicU64; 2],
    gaps: [AtomicU64; 2],
    /// µs since the run's start of the latest receive, per phase.
    last_rx_us: [AtomicU64; 2],
    foreign: AtomicU64,
    unparsed: AtomicU64,
}

fn sum(live: &[Live], f: impl Fn(&Live) -> &AtomicU64) -> u64 {
    live.iter().map(|l| f(l).load(Ordering::Relaxed)).sum()
}

fn max_of(live: &[Live], f: impl Fn(&Live) -> &AtomicU64) -> u64 {
    live.iter()
        .map(|l| f(l).load(Ordering::Relaxed))
        .max()
        .unwrap_or(0)
}

/// What a worker hands back at the end (bounded: reasons are capped).
#[derive(Default)]
struct WorkerEnd {
    connect_failures: Reasons,
    disconnects: Reasons,
    latency_us: [Histogram; 2],
    pings: u64,
}

// ------------------------------------------------------------------------------------
// Run
// ------------------------------------------------------------------------------------

pub fn run(a: TargetedArgs) -> Result<Value, String> {
    let cfg = Arc::new(validate(&a)?);
    eprintln!(
        "swarm targeted: url={} api={} rooms={} members={} clients={} phases={} rounds={} window={} batch_max={} http_conns={} workers={} server_pid={:?}",
        a.url, a.api, cfg.rooms, cfg.members, cfg.clients, a.phases, cfg.rounds, cfg.window,
        cfg.batch_max, cfg.http_conns, cfg.workers, cfg.server_pid
    );
    net::install_stop_handler();
    let start = Instant::now();
    let live: Arc<Vec<Live>> = Arc::new((0..cfg.workers).map(|_| Live::default()).collect());
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut handles = Vec::with_capacity(cfg.workers);
    for w in 0..cfg.workers {
        let (cfg, live, stop_rx) = (Arc::clone(&cfg), Arc::clone(&live), stop_rx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("swarm-t{w}"))
            .spawn(move || -> Result<WorkerEnd, String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("worker {w}: cannot build a tokio runtime: {e}"))?;
                let local = tokio::task::LocalSet::new();
                Ok(local.block_on(&rt, worker(w, cfg, live, stop_rx, start)))
            })
            .map_err(|e| format!("cannot start worker thread {w}: {e}"))?;
        handles.push(handle);
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a tokio runtime: {e}"))?;
    let outcome = rt.block_on(drive(&cfg, &live, start));

    // Stop the clients, wait (bounded) for the workers.
    let _ = stop_tx.send(true);
    let hard_limit = Instant::now() + Duration::from_secs(2) + WORKER_GRACE;
    while !handles.iter().all(|h| h.is_finished()) {
        if Instant::now() >= hard_limit {
            eprintln!("swarm targeted: workers did not stop in time; giving up without a report");
            std::process::exit(2);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut end = WorkerEnd::default();
    for (w, h) in handles.into_iter().enumerate() {
        let e = h.join().map_err(|_| format!("worker {w} panicked"))??;
        end.connect_failures.merge(&e.connect_failures);
        end.disconnects.merge(&e.disconnects);
        end.pings += e.pings;
        for p in 0..2 {
            end.latency_us[p].merge(&e.latency_us[p]);
        }
    }
    let (connect, mut phases) = outcome?;
    let mut phase_json = serde_json::Map::new();
    for (phase, facts) in phases.iter_mut() {
        facts.latency_us = end.latency_us[*phase as usize].clone();
        phase_json.insert(phase.name().into(), phase_report(facts));
    }
    Ok(json!({
        "tool": "swarm targeted",
        "url": a.url,
        "api": a.api,
        "rooms": cfg.rooms,
        "members": cfg.members,
        "clients_requested": cfg.clients,
        "clients_connected": sum(&live, |l| &l.connected),
        "clients_joined": connect.joined,
        "connect_failures": end.connect_failures.to_json(),
        "connect_and_join_s": round3(connect.took.as_secs_f64()),
        "workers": cfg.workers,
        "window": cfg.window,
        "batch_max": cfg.batch_max,
        "http_conns": cfg.http_conns,
        "server_pid": cfg.server_pid,
        "phases": phase_json,
        "foreign_messages": sum(&live, |l| &l.foreign),
        "unparsed_frames": sum(&live, |l| &l.unparsed),
        "pings": end.pings,
        "disconnects": end.disconnects.total(),
        "disconnect_reasons": end.disconnects.to_json(),
        "stopped_by_signal": net::stop_requested(),
        "elapsed_s": round3(start.elapsed().as_secs_f64()),
    }))
}

struct ConnectOutcome {
    joined: u64,
    took: Duration,
}

type Phases = Vec<(Phase, PhaseFacts)>;

/// Main thread: wait for the clients, then run each phase.
async fn drive(
    cfg: &Config,
    live: &[Live],
    start: Instant,
) -> Result<(ConnectOutcome, Phases), String> {
    // Connect + join: bounded by the pacing time plus one connect timeout and a margin.
    let connect_limit = Duration::from_secs_f64(cfg.clients as f64 / cfg.rate)
        + cfg.connect_timeout
        + Duration::from_secs(10);
    let mut last_print = Instant::now();
    loop {
        let (joined, failed) = (sum(live, |l| &l.joined), sum(live, |l| &l.failed));
        if joined + failed >= cfg.clients || net::stop_requested() {
            break;
        }
        if start.elapsed() > connect_limit {
            eprintln!("swarm targeted: connect phase ran past {connect_limit:?}; going on with {joined} joined");
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "swarm targeted: t={:.1}s connecting: joined={joined} failed={failed}",
                start.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let joined = sum(live, |l| &l.joined);
    let took = start.elapsed();
    eprintln!(
        "swarm targeted: t={:.1}s {joined} of {} clients joined",
        took.as_secs_f64(),
        cfg.clients
    );
    if joined == 0 {
        return Err("no client joined; is volley running in open mode at --url?".into());
    }
    // One lane of --http-conns keep-alive connections per round in flight.
    let mut lanes: Vec<Vec<Client>> = (0..cfg.window)
        .map(|_| {
            (0..cfg.http_conns)
                .map(|_| Client::new(cfg.api.clone()))
                .collect()
        })
        .collect();
    let mut phases = Vec::new();
    for &phase in &cfg.phases {
        if net::stop_requested() {
            break;
        }
        tokio::time::sleep(cfg.settle).await;
        let facts = run_phase(cfg, live, start, phase, joined, &mut lanes).await;
        let r = phase_report(&facts);
        eprintln!(
            "swarm targeted: phase {}: rounds={} expected={} received={} lost={} dup={} wall_s={} deliveries_per_s={} server_cpu_us_per_delivery={}",
            phase.name(),
            r["rounds"],
            r["deliveries_expected"],
            r["deliveries_received"],
            r["lost"],
            r["duplicated"],
            r["wall_s"],
            r["deliveries_per_s"],
            r["server_cpu_us_per_delivery"]
        );
        phases.push((phase, facts));
    }
    Ok((ConnectOutcome { joined, took }, phases))
}

fn since_us(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

async fn run_phase(
    cfg: &Config,
    live: &[Live],
    start: Instant,
    phase: Phase,
    joined: u64,
    lanes: &mut Vec<Vec<Client>>,
) -> PhaseFacts {
    let p = phase as usize;
    let entries = match phase {
        Phase::Room => cfg.rooms,
        Phase::User => cfg.clients,
    };
    let ranges = batch_ranges(entries, cfg.batch_max);
    let pid = cfg.server_pid.map(|p| p.to_string());
    let mut f = PhaseFacts {
        entries_per_round: entries,
        clk_tck: clock_ticks_per_s(),
        ..PhaseFacts::default()
    };
    let received = || sum(live, |l| &l.received[p]);
    let base = received();
    let server0 = pid.as_deref().and_then(cpu_sample);
    let swarm0 = cpu_sample("self");
    let t0 = since_us(start);
    let phase_start = Instant::now();
    let mut round = 0u64;
    let mut inflight: std::collections::VecDeque<tokio::task::JoinHandle<RoundDone>> =
        std::collections::VecDeque::new();
    loop {
        let more = round < cfg.rounds
            && phase_start.elapsed() < cfg.phase_duration
            && !net::stop_requested();
        // At most `window` rounds' POSTs in flight: collect the oldest before a new one.
        if inflight.len() as u64 >= cfg.window || (!more && !inflight.is_empty()) {
            let handle = inflight.pop_front().expect("not empty");
            match handle.await {
                Ok((lane, results)) => {
                    lanes.push(lane);
                    record_posts(&mut f, results);
                }
                Err(_) => {
                    f.post_failures.add("round task failed");
                    lanes.push(new_lane(cfg));
                }
            }
            continue;
        }
        if !more {
            break;
        }
        // Flow control: round k is posted once round k - window has been fully delivered
        // (bounded by the drain limit, so a lost message cannot stall the phase).
        if round >= cfg.window {
            let need = (round - cfg.window + 1) * joined;
            let wait_start = Instant::now();
            while received() - base < need
                && wait_start.elapsed() < cfg.drain_max
                && !net::stop_requested()
            {
                tokio::time::sleep(POLL).await;
            }
        }
        let t_us = net::now_unix_us();
        let bodies: Vec<String> = ranges
            .iter()
            .map(|&r| batch_body(phase, r, round + 1, t_us))
            .collect();
        let lane = lanes.pop().unwrap_or_else(|| new_lane(cfg));
        inflight.push_back(tokio::spawn(post_round(lane, bodies, cfg.post_timeout)));
        round += 1;
    }
    f.rounds = round;
    f.publish_us = since_us(start).saturating_sub(t0);
    f.expected = joined * round;

    // Drain: until everything arrived, nothing arrived for drain_quiet, or drain_max.
    let drain_start = Instant::now();
    let (mut last_seen, mut last_change) = (received(), Instant::now());
    loop {
        let now_rx = received();
        if now_rx - base >= f.expected {
            f.drain_complete = true;
            break;
        }
        if now_rx != last_seen {
            (last_seen, last_change) = (now_rx, Instant::now());
        }
        if last_change.elapsed() >= cfg.drain_quiet
            || drain_start.elapsed() >= cfg.drain_max
            || net::stop_requested()
        {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let server1 = pid.as_deref().and_then(cpu_sample);
    let swarm1 = cpu_sample("self");
    f.server_cpu = server0.zip(server1);
    f.swarm_cpu = swarm0.zip(swarm1);
    f.received = received() - base;
    f.duplicates = sum(live, |l| &l.duplicates[p]);
    f.gaps = sum(live, |l| &l.gaps[p]);
    f.wall_us = max_of(live, |l| &l.last_rx_us[p]).saturating_sub(t0);
    f
}

/// A lane back from a round, with (POST time µs, answer) per batch.
type RoundDone = (
    Vec<Client>,
    Vec<(u64, Result<crate::http::Response, String>)>,
);

fn new_lane(cfg: &Config) -> Vec<Client> {
    (0..cfg.http_conns)
        .map(|_| Client::new(cfg.api.clone()))
        .collect()
}

/// Posts one round's batches: batch b on connection b % lane size, each connection posting
/// its share in order, the connections concurrently.
async fn post_round(mut lane: Vec<Client>, bodies: Vec<String>, timeout: Duration) -> RoundDone {
    let conns = lane.len();
    let per_conn =
        futures_util::future::join_all(lane.iter_mut().enumerate().map(|(c, client)| {
            let mine: Vec<&String> = bodies.iter().skip(c).step_by(conns).collect();
            async move {
                let mut out = Vec::new();
                for body in mine {
                    let sent = Instant::now();
                    let answer = tokio::time::timeout(
                        timeout,
                        client.post("/api/batch", "application/json", body.as_bytes()),
                    )
                    .await
                    .unwrap_or_else(|_| Err("timeout".to_owned()));
                    out.push((sent.elapsed().as_micros() as u64, answer));
                }
                out
            }
        }))
        .await;
    let results = per_conn.into_iter().flatten().collect();
    (lane, results)
}

fn record_posts(f: &mut PhaseFacts, results: Vec<(u64, Result<crate::http::Response, String>)>) {
    for (took_us, answer) in results {
        f.post_us.record(took_us);
        match answer {
            Ok(resp) if resp.status == 200 => match batch_answer(&resp.body) {
                Some((recipients, errors)) => {
                    f.posts_ok += 1;
                    f.recipients_reported += recipients;
                    f.entry_errors += errors;
                }
                None => f.post_failures.add("200 without recipients/results"),
            },
            Ok(resp) => {
                let reason = format!("HTTP {}", resp.status);
                if f.post_failures.total() == 0 {
                    eprintln!(
                        "swarm targeted: POST /api/batch {reason}: {} (for 10,000 entries volley needs --body-bytes-max of about 600000)",
                        String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                    );
                }
                f.post_failures.add(&reason);
            }
            Err(e) => f.post_failures.add(&e),
        }
    }
}

async fn worker(
    w: usize,
    cfg: Arc<Config>,
    live: Arc<Vec<Live>>,
    stop_rx: watch::Receiver<bool>,
    start: Instant,
) -> WorkerEnd {
    let end = Rc::new(RefCell::new(WorkerEnd::default()));
    let inflight = Arc::new(Semaphore::new((cfg.inflight_max / cfg.workers).max(1)));
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(MESSAGE_BYTES_MAX))
        .max_frame_size(Some(MESSAGE_BYTES_MAX));
    let mut tasks = JoinSet::new();
    let mut i = w as u64;
    while i < cfg.clients {
        let due = start + Duration::from_secs_f64(i as f64 / cfg.rate);
        let mut stop = stop_rx.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let permit = tokio::select! {
            p = Arc::clone(&inflight).acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stop.wait_for(|s| *s) => break,
        };
        tasks.spawn_local(client_task(
            i,
            Arc::clone(&cfg),
            ws_config,
            permit,
            stop_rx.clone(),
            Rc::clone(&end),
            Arc::clone(&live),
            w,
            start,
        ));
        i += cfg.workers as u64;
    }
    while tasks.join_next().await.is_some() {}
    Rc::try_unwrap(end)
        .map(RefCell::into_inner)
        .unwrap_or_default()
}

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

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// TCP connect, WebSocket handshake, join, and the join reply.
async fn connect_and_join(
    source: Ipv4Addr,
    cfg: &Config,
    i: u64,
    ws_config: WebSocketConfig,
) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| io_reason("socket", &e))?;
    net::bind_address_no_port(socket.as_raw_fd());
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .map_err(|e| io_reason("bind", &e))?;
    let stream = socket
        .connect(cfg.target.addr)
        .await
        .map_err(|e| io_reason("tcp", &e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| io_reason("nodelay", &e))?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        client_request(&cfg.target, i),
        stream,
        Some(ws_config),
    )
    .await
    .map_err(|e| ws_reason(&e))?;
    let room = i / cfg.members;
    ws.send(Message::text(format!(
        "{{\"op\":\"join\",\"room\":\"r{room}\",\"ref\":1}}"
    )))
    .await
    .map_err(|e| ws_reason(&e))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match scan_frame(t.as_bytes()) {
                Frame::Reply { ok: true } => return Ok(ws),
                Frame::Reply { ok: false } => {
                    let text = t.as_str();
                    let code = text
                        .split("\"code\":\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .unwrap_or("?");
                    return Err(format!("join refused: {code}"));
                }
                _ => continue,
            },
            Some(Ok(Message::Close(_))) | None => return Err("closed before the join reply".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ws_reason(&e)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn client_task(
    i: u64,
    cfg: Arc<Config>,
    ws_config: WebSocketConfig,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
    end: Rc<RefCell<WorkerEnd>>,
    live: Arc<Vec<Live>>,
    w: usize,
    start: Instant,
) {
    let l = &live[w];
    let source = cfg.sources[(i as usize) % cfg.sources.len()];
    let attempt = tokio::time::timeout(
        cfg.connect_timeout,
        connect_and_join(source, &cfg, i, ws_config),
    );
    let result = tokio::select! {
        r = attempt => r.unwrap_or_else(|_| Err("timeout (connect + join)".to_owned())),
        _ = stop.wait_for(|s| *s) => Err("stopped before joined".to_owned()),
    };
    drop(permit);
    let mut ws = match result {
        Ok(ws) => ws,
        Err(reason) => {
            end.borrow_mut().connect_failures.add(&reason);
            l.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    l.connected.fetch_add(1, Ordering::Relaxed);
    l.joined.fetch_add(1, Ordering::Relaxed);
    l.open.fetch_add(1, Ordering::Relaxed);

    // Per-client state: its room, its id, the last seq per channel.
    let room = i / cfg.members;
    let mut last = [0u64; 2];
    let mut closed_by_us = false;
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => {
                closed_by_us = true;
                break;
            }
            msg = ws.next() => msg,
        };
        let text: &[u8] = match &msg {
            Some(Ok(Message::Text(t))) => t.as_bytes(),
            Some(Ok(Message::Ping(_))) => {
                end.borrow_mut().pings += 1;
                continue;
            }
            Some(Ok(Message::Binary(_))) => {
                l.unparsed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(frame))) => {
                let reason = match frame {
                    Some(f) => format!("close {}", u16::from(f.code)),
                    None => "close (no code)".to_owned(),
                };
                end.borrow_mut().disconnects.add(&reason);
                break;
            }
            Some(Err(e)) => {
                end.borrow_mut().disconnects.add(&ws_reason(e));
                break;
            }
            None => {
                end.borrow_mut().disconnects.add("eof without close");
                break;
            }
        };
        match scan_frame(text) {
            Frame::Message { chan, seq, t_us } => {
                let p = match chan {
                    Chan::Room(r) if r == room => Phase::Room as usize,
                    Chan::User(u) if u == i => Phase::User as usize,
                    _ => {
                        l.foreign.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                l.received[p].fetch_add(1, Ordering::Relaxed);
                l.last_rx_us[p].fetch_max(since_us(start), Ordering::Relaxed);
                match seq.map(|s| check_seq(&mut last[p], s)) {
                    Some(SeqEvent::Gap(n)) => {
                        l.gaps[p].fetch_add(n, Ordering::Relaxed);
                    }
                    Some(SeqEvent::Duplicate) => {
                        l.duplicates[p].fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                if let Some(t) = t_us {
                    let lat = net::now_unix_us().saturating_sub(t);
                    end.borrow_mut().latency_us[p].record(lat);
                }
            }
            Frame::Reply { .. } | Frame::Other => {
                l.unparsed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    l.open.fetch_sub(1, Ordering::Relaxed);
    if closed_by_us {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = ws.send(Message::Close(None)).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_messages_and_replies() {
        let m = br#"{"type":"message","channel":"room:r3","seq":17,"id":"n-0-5","from":null,"data":{"k":2,"t_us":1700000000000123}}"#;
        assert_eq!(
            scan_frame(m),
            Frame::Message {
                chan: Chan::Room(3),
                seq: Some(17),
                t_us: Some(1_700_000_000_000_123)
            }
        );
        let u =
            br#"{"type":"message","channel":"user:u7","seq":1,"id":"x","from":null,"data":"hi"}"#;
        assert_eq!(
            scan_frame(u),
            Frame::Message {
                chan: Chan::User(7),
                seq: Some(1),
                t_us: None
            }
        );
        let null_seq = br#"{"type":"message","channel":"all","seq":null,"data":1}"#;
        assert_eq!(
            scan_frame(null_seq),
            Frame::Message {
                chan: Chan::Other,
                seq: None,
                t_us: None
            }
        );
        assert_eq!(
            scan_frame(br#"{"type":"reply","ref":1,"ok":true}"#),
            Frame::Reply { ok: true }
        );
        assert_eq!(
            scan_frame(br#"{"type":"reply","ref":1,"ok":false,"error":{"code":"forbidden"}}"#),
            Frame::Reply { ok: false }
        );
        assert_eq!(scan_frame(b"not json"), Frame::Other);
    }

    #[test]
    fn payload_cannot_fake_the_envelope() {
        // A payload that looks like a message envelope does not change the channel or seq.
        let m = br#"{"type":"message","channel":"user:u1","seq":4,"data":{"channel":"room:r9","seq":99,"t_us":5}}"#;
        assert_eq!(
            scan_frame(m),
            Frame::Message {
                chan: Chan::User(1),
                seq: Some(4),
                t_us: Some(5)
            }
        );
        let reply_in_data = br#"{"type":"x","data":{"type":"message"}}"#;
        assert_eq!(scan_frame(reply_in_data), Frame::Other);
    }

    #[test]
    fn channel_names() {
        assert_eq!(chan_of(b"room:r0"), Chan::Room(0));
        assert_eq!(chan_of(b"user:u18999"), Chan::User(18999));
        assert_eq!(chan_of(b"room:r"), Chan::Other);
        assert_eq!(chan_of(b"room:r1x"), Chan::Other);
        assert_eq!(chan_of(b"room:lobby"), Chan::Other);
        assert_eq!(chan_of(b"all"), Chan::Other);
        assert_eq!(chan_of(b"user:u99999999999999999999999"), Chan::Other);
    }

    #[test]
    fn seq_checks() {
        let mut last = 0;
        assert_eq!(check_seq(&mut last, 1), SeqEvent::First);
        assert_eq!(check_seq(&mut last, 2), SeqEvent::InOrder);
        assert_eq!(check_seq(&mut last, 5), SeqEvent::Gap(2));
        assert_eq!(last, 5);
        assert_eq!(check_seq(&mut last, 5), SeqEvent::Duplicate);
        assert_eq!(check_seq(&mut last, 3), SeqEvent::Duplicate);
        assert_eq!(last, 5);
        assert_eq!(check_seq(&mut last, 6), SeqEvent::InOrder);
        // A channel that already had messages before the run starts from its first seq.
        let mut fresh = 0;
        assert_eq!(check_seq(&mut fresh, 40), SeqEvent::First);
        assert_eq!(check_seq(&mut fresh, 41), SeqEvent::InOrder);
    }

    #[test]
    fn proc_parsing() {
        let stat = "1234 (vol ley) (x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 1000 50";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_schedstat_ns("123456789 2000 30\n"), Some(123_456_789));
        assert_eq!(parse_schedstat_ns(""), None);
    }

    #[test]
    fn report_math() {
        let mut f = PhaseFacts {
            rounds: 10,
            entries_per_round: 1000,
            expected: 190_000,
            received: 190_010,
            duplicates: 10,
            wall_us: 1_900_000,
            clk_tck: 100,
            server_cpu: Some((
                CpuSample {
                    ticks: 100,
                    sched_ns: 5_000_000_000,
                },
                CpuSample {
                    ticks: 400,
                    sched_ns: 8_800_000_000,
                },
            )),
            ..PhaseFacts::default()
        };
        let r = phase_report(&f);
        assert_eq!(r["deliveries_unique"], 190_000);
        assert_eq!(r["lost"], 0);
        assert_eq!(r["duplicated"], 10);
        assert_eq!(r["deliveries_per_s"], 100_000.0);
        assert_eq!(r["meets_target"], true);
        // schedstat preferred: 3.8 s of CPU for 190,000 deliveries = 20 µs each.
        assert_eq!(r["server_cpu_us"], 3_800_000.0);
        assert_eq!(r["server_cpu_us_ticks"], 3_000_000.0);
        assert_eq!(r["server_cpu_us_per_delivery"], 20.0);
        assert_eq!(r["deliveries_per_server_core_s"], 50_000.0);
        assert_eq!(r["server_cores_busy"], 2.0);

        // Lost messages, no CPU figures, zero wall time: no division by zero.
        f.received = 100;
        f.duplicates = 0;
        f.wall_us = 0;
        f.server_cpu = None;
        let r = phase_report(&f);
        assert_eq!(r["lost"], 189_900);
        assert_eq!(r["deliveries_per_s"], Value::Null);
        assert_eq!(r["meets_target"], Value::Null);
        assert_eq!(r["server_cpu_us_per_delivery"], Value::Null);

        // Ticks only (no schedstat): ticks are used.
        f.server_cpu = Some((
            CpuSample {
                ticks: 0,
                sched_ns: 0,
            },
            CpuSample {
                ticks: 2,
                sched_ns: 0,
            },
        ));
        let r = phase_report(&f);
        assert_eq!(r["server_cpu_us"], 20_000.0);
        assert_eq!(r["server_cpu_us_per_delivery"], 200.0);
    }

    #[test]
    fn batches_and_bodies() {
        assert_eq!(batch_ranges(1000, 10_000), vec![(0, 1000)]);
        assert_eq!(
            batch_ranges(19_000, 10_000),
            vec![(0, 10_000), (10_000, 19_000)]
        );
        assert_eq!(batch_ranges(20_000, 10_000).len(), 2);
        assert_eq!(batch_ranges(0, 10), vec![]);
        let b = batch_body(Phase::Room, (1, 3), 4, 99);
        assert_eq!(
            b,
            r#"{"messages":[{"room":"r1","data":{"k":4,"t_us":99}},{"room":"r2","data":{"k":4,"t_us":99}}]}"#
        );
        let v: Value = serde_json::from_str(&batch_body(Phase::User, (0, 2), 1, 5)).unwrap();
        assert_eq!(v["messages"][1]["user"], "u1");
        assert_eq!(
            batch_answer(br#"{"results":[{"id":"a","seq":1,"recipients":19},{"error":"x"}],"recipients":19}"#),
            Some((19, 1))
        );
        assert_eq!(batch_answer(br#"{"error":"too big"}"#), None);
    }

    #[test]
    fn phases_and_requests() {
        assert_eq!(
            parse_phases("room,user").unwrap(),
            vec![Phase::Room, Phase::User]
        );
        assert_eq!(parse_phases("users").unwrap(), vec![Phase::User]);
        assert!(parse_phases("room,room").is_err());
        assert!(parse_phases("chat").is_err());
        assert!(parse_phases("").is_err());
        let t = net::parse_target("ws://127.0.0.1:9/ws", "ws", "/ws").unwrap();
        assert_eq!(client_request(&t, 7), "ws://127.0.0.1:9/ws?user=u7");
        let t = net::parse_target("ws://127.0.0.1:9/ws?protocol=json", "ws", "/ws").unwrap();
        assert_eq!(
            client_request(&t, 7),
            "ws://127.0.0.1:9/ws?protocol=json&user=u7"
        );
    }
}
