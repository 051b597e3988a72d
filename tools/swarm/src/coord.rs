//! `swarm run`: the coordinator. One command that goes past the per-process open-file
//! limit: it starts several `swarm hold` worker processes (each with at most
//! `--conns-per-process` connections and its own slice of the `--sources` addresses),
//! shows their progress (indicatif bars on a terminal, lines otherwise), publishes a
//! numbered broadcast every `--broadcast-every-s` once everyone is connected, reads the
//! servers' CPU and RSS and the kernel's Slab from /proc, merges the workers' JSON reports
//! exactly (histograms travel as buckets), and prints one JSON report; optionally an SVG
//! latency plot.
//!
//! Bounded: workers stop at `--duration-s`; a worker still there `WORKER_GRACE` after
//! its own drain and grace is killed by its PID. SIGINT/SIGTERM are passed on to the workers, which report.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::hist::Histogram;
use crate::hold::STATUS_PREFIX;
use crate::http::Client;
use crate::net;
use crate::plot;
use crate::procfs;
use crate::publish::{make_body, recipients_of};

/// Time a worker gets after its duration (drain included) before it is killed.
const WORKER_GRACE: Duration = Duration::from_secs(20);
/// How often the coordinator looks at its workers and redraws.
const TICK: Duration = Duration::from_millis(200);
/// How often /proc is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Most worker processes.
const PROCESSES_MAX: u64 = 64;
/// Most broadcasts: workers keep per-seq rows for seqs below 512.
const BROADCASTS_MAX: u64 = 500;

#[derive(Args)]
pub struct RunArgs {
    /// WebSocket URL the workers connect to (ws:// only, loopback host).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Connections in all, over every worker process.
    #[arg(long)]
    pub conns: u64,
    /// Most connections per worker process (each process has its own RLIMIT_NOFILE).
    #[arg(long, default_value_t = 19_000)]
    pub conns_per_process: u64,
    /// Connection attempts per second, all workers together.
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// Run time of every worker in seconds, from its start (connecting included).
    #[arg(long)]
    pub duration_s: f64,
    /// Loopback source addresses for all workers; each worker gets its own contiguous
    /// slice (so their ephemeral ports never collide). Same syntax as `hold --sources`.
    #[arg(long, default_value = "127.0.0.1-127.0.0.32")]
    pub sources: String,
    /// Worker threads per worker process.
    #[arg(long, default_value_t = 1)]
    pub workers_per_process: usize,
    /// Give up on one connection (TCP + handshake) after this long.
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Connection attempts in flight at once, all workers together.
    #[arg(long, default_value_t = 2000)]
    pub inflight_max: usize,
    /// After the run time, how long workers wait for the server's Close replies.
    #[arg(long, default_value_t = 3000)]
    pub drain_ms: u64,
    /// HTTP base URL to publish to [default: http://HOST:PORT of --url].
    #[arg(long)]
    pub api: Option<String>,
    /// Path of the broadcast endpoint, appended to --api.
    #[arg(long, default_value = "/api/broadcast")]
    pub path: String,
    /// Publish through this command instead of the HTTP API: it is started once with
    /// `sh -c`, gets one broadcast body (one JSON line) per broadcast on its stdin and
    /// answers each with one line on its stdout: `ok` (counted as published) or anything
    /// else (the error). Used to publish through socket.io's Redis emitter.
    #[arg(long)]
    pub publish_cmd: Option<String>,
    /// Workers speak socket.io (`swarm hold --socketio`).
    #[arg(long)]
    pub socketio: bool,
    /// Seconds between two broadcasts, start to start; 0 = hold only, publish nothing.
    #[arg(long, default_value_t = 0.0)]
    pub broadcast_every_s: f64,
    /// Most broadcasts [default: as many as fit before --tail-s; at most 500].
    #[arg(long)]
    pub broadcasts: Option<u64>,
    /// Approximate broadcast body size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Seconds between the end of the connect phase and the first broadcast; the idle
    /// figures (RSS, Slab, idle CPU) are read in it.
    #[arg(long, default_value_t = 3.0)]
    pub settle_s: f64,
    /// Seconds at the end of the run kept free of broadcasts, so the last one is delivered
    /// before the workers close.
    #[arg(long, default_value_t = 5.0)]
    pub tail_s: f64,
    /// Server PIDs (comma-separated): their CPU (utime+stime) and VmRSS are read from /proc.
    #[arg(long)]
    pub server_pids: Option<String>,
    /// PID of the redis-server in use, reported on its own.
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// The target for the last client of a broadcast, in ms (drawn in the plot, counted
    /// in the report).
    #[arg(long, default_value_t = 1000.0)]
    pub target_last_ms: f64,
    /// Write an SVG plot of the time until the first / mean / last client per broadcast.
    #[arg(long)]
    pub plot: Option<String>,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub report: Option<String>,
    /// Title of the plot.
    #[arg(
        long,
        default_value = "swarm run: time until clients have each broadcast"
    )]
    pub title: String,
}

/// The latest `swarm-status` of one worker.
#[derive(Debug, Default, Clone, Copy)]
struct Status {
    connected: u64,
    failed: u64,
    open: u64,
    messages: u64,
    probes: u64,
}

impl Status {
    fn add(&mut self, o: &Status) {
        self.connected += o.connected;
        self.failed += o.failed;
        self.open += o.open;
        self.messages += o.messages;
        self.probes += o.probes;
    }
}

fn parse_status(line: &str) -> Option<Status> {
    let v: Value = serde_json::from_str(line.strip_prefix(STATUS_PREFIX)?).ok()?;
    let g = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some(Status {
        connected: g("connected"),
        failed: g("failed"),
        open: g("open"),
        messages: g("messages"),
        probes: g("probes"),
    })
}

/// What the publisher did for one broadcast.
#[derive(Debug, Clone)]
struct Round {
    seq: u64,
    t_us: u64,
    status: Option<u16>,
    recipients: Option<u64>,
    post_us: u64,
    error: Option<String>,
    /// Connections open (worker status) just before the POST: who should get it.
    expected: u64,
}

enum PubEvent {
    Start(u64),
    Done(Round),
}

/// Splits `n` into `parts` near-equal whole parts (the first ones one larger).
pub fn split_even(n: u64, parts: u64) -> Vec<u64> {
    (0..parts)
        .map(|i| n / parts + u64::from(i < n % parts))
        .collect()
}

/// Splits `items` into `parts` contiguous slices of near-equal length.
pub fn split_slices<T: Clone>(items: &[T], parts: usize) -> Vec<Vec<T>> {
    let sizes = split_even(items.len() as u64, parts as u64);
    let mut out = Vec::with_capacity(parts);
    let mut at = 0usize;
    for s in sizes {
        out.push(items[at..at + s as usize].to_vec());
        at += s as usize;
    }
    out
}

pub fn bar_style(what: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{what:>8} [{{elapsed_precise}}] {{bar:40.cyan/blue}} {{pos:>7}}/{{len:7}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// The merge of the workers' `swarm hold` reports.
#[derive(Debug, Default)]
pub struct Merged {
    pub counters: BTreeMap<&'static str, u64>,
    pub connect_failures: BTreeMap<String, u64>,
    pub disconnect_reasons: BTreeMap<String, u64>,
    pub connect_time_s: Option<f64>,
    pub received_per_conn_min: Option<u64>,
    pub received_per_conn_max: u64,
    pub latency: Histogram,
    /// seq -> (receivers, first_us, last_us, sum_us)
    pub seqs: BTreeMap<u64, (u64, u64, u64, u64)>,
    pub reports: usize,
}

const SUMMED: [&str; 15] = [
    "conns_requested",
    "conns_attempted",
    "conns_connected",
    "conns_failed",
    "messages_received",
    "probes_received",
    "messages_unparsed",
    "bytes_received",
    "pings_received",
    "gaps",
    "duplicates",
    "disconnects",
    "closed_by_us",
    "seq_receipts_untracked",
    "latency_samples",
];

pub fn merge_reports(reports: &[Value]) -> Merged {
    let mut m = Merged::default();
    for r in reports {
        m.reports += 1;
        for key in SUMMED {
            let v = if key == "latency_samples" {
                r["latency_us"]["count"].as_u64()
            } else {
                r[key].as_u64()
            };
            *m.counters.entry(key).or_default() += v.unwrap_or(0);
        }
        for (key, map) in [
            ("connect_failures", &mut m.connect_failures),
            ("disconnect_reasons", &mut m.disconnect_reasons),
        ] {
            if let Some(obj) = r[key].as_object() {
                for (why, n) in obj {
                    *map.entry(why.clone()).or_default() += n.as_u64().unwrap_or(0);
                }
            }
        }
        if let Some(t) = r["connect_time_s"].as_f64() {
            m.connect_time_s = Some(m.connect_time_s.map_or(t, |x| x.max(t)));
        }
        if let Some(v) = r["received_per_conn"]["min"].as_u64() {
            m.received_per_conn_min = Some(m.received_per_conn_min.map_or(v, |x| x.min(v)));
        }
        if let Some(v) = r["received_per_conn"]["max"].as_u64() {
            m.received_per_conn_max = m.received_per_conn_max.max(v);
        }
        if let Some(h) = Histogram::from_sparse(&r["latency_hist"]) {
            m.latency.merge(&h);
        }
        for row in r["seqs"].as_array().into_iter().flatten() {
            let g = |k: &str| row[k].as_u64().unwrap_or(0);
            let Some(seq) = row["seq"].as_u64() else {
                continue;
            };
            let (n, first, last, sum) = (
                g("receivers"),
                g("first_receive_us"),
                g("last_receive_us"),
                g("latency_sum_us"),
            );
            m.seqs
                .entry(seq)
                .and_modify(|e| {
                    e.0 += n;
                    e.1 = e.1.min(first);
                    e.2 = e.2.max(last);
                    e.3 = e.3.saturating_add(sum);
                })
                .or_insert((n, first, last, sum));
        }
    }
    m
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

struct Worker {
    child: Child,
    pid: u32,
    conns: u64,
    sources: String,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<()>>,
    done: bool,
}

/// Prints a line above the bars (or plainly when there are none).
#[derive(Clone)]
struct Say {
    mp: MultiProgress,
    bars: bool,
}

impl Say {
    fn line(&self, s: &str) {
        if self.bars {
            let _ = self.mp.println(s);
        } else {
            eprintln!("{s}");
        }
    }
}

pub fn run(a: RunArgs) -> Result<Value, String> {
    // --- flags ---------------------------------------------------------------------------
    let target = net::parse_target(&a.url, "ws", "/ws")?;
    let sources = net::parse_sources(&a.sources)?;
    for (flag, v) in [("--rate", a.rate), ("--duration-s", a.duration_s)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{flag} {v}: must be a positive number"));
        }
    }
    for (flag, v) in [
        ("--broadcast-every-s", a.broadcast_every_s),
        ("--settle-s", a.settle_s),
        ("--tail-s", a.tail_s),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!("{flag} {v}: must be a number >= 0"));
        }
    }
    if a.broadcast_every_s > 0.0 && a.broadcast_every_s < 0.01 {
        return Err(format!(
            "--broadcast-every-s {}: must be 0 (none) or at least 0.01",
            a.broadcast_every_s
        ));
    }
    if a.conns == 0 {
        return Err("--conns 0: must be at least 1".into());
    }
    if a.conns_per_process == 0 {
        return Err("--conns-per-process 0: must be at least 1".into());
    }
    let processes = a.conns.div_ceil(a.conns_per_process);
    if processes > PROCESSES_MAX {
        return Err(format!(
            "--conns {} / --conns-per-process {} = {processes} worker processes; at most {PROCESSES_MAX}",
            a.conns, a.conns_per_process
        ));
    }
    if (sources.len() as u64) < processes {
        return Err(format!(
            "--sources {}: {} addresses for {processes} worker processes; give at least one per process (e.g. 127.0.0.1-127.0.0.{})",
            a.sources,
            sources.len(),
            (processes * 4).min(254)
        ));
    }
    if let Some(ports) = net::ephemeral_ports() {
        let per_addr = a
            .conns_per_process
            .div_ceil((sources.len() as u64) / processes);
        if per_addr > ports {
            return Err(format!(
                "--sources {}: about {per_addr} connections per source address but only {ports} ephemeral ports; give more addresses",
                a.sources
            ));
        }
    }
    if a.size > 1 << 20 {
        return Err(format!("--size {}: must be at most 1048576", a.size));
    }
    if !a.path.starts_with('/') {
        return Err(format!("--path {:?}: must start with /", a.path));
    }
    let api = a
        .api
        .clone()
        .unwrap_or_else(|| format!("http://{}", target.authority));
    let api_target = net::parse_target(&api, "http", "")?;
    let server_pids = procfs::parse_pids(a.server_pids.as_deref().unwrap_or(""))?;
    let redis_pids: Vec<u32> = a.redis_pid.into_iter().collect();
    let max_broadcasts = a.broadcasts.unwrap_or(BROADCASTS_MAX);
    if max_broadcasts > BROADCASTS_MAX {
        return Err(format!(
            "--broadcasts {max_broadcasts}: at most {BROADCASTS_MAX} (workers keep a row per seq below 512)"
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    net::install_stop_handler();

    let bars = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mp = MultiProgress::with_draw_target(if bars {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let say = Say {
        mp: mp.clone(),
        bars,
    };
    say.line(&format!(
        "swarm run: {} conns to {} from {processes} worker processes (<= {} each), rate {}/s, duration {} s, broadcast every {} s to {api}{}",
        a.conns, a.url, a.conns_per_process, a.rate, a.duration_s, a.broadcast_every_s, a.path
    ));

    // --- before: baseline -------------------------------------------------------------
    let tck = procfs::clock_ticks_per_s();
    let base_server = procfs::sample(&server_pids);
    let base_redis = procfs::sample(&redis_pids);
    if !server_pids.is_empty() && base_server.alive != server_pids.len() {
        return Err(format!(
            "--server-pids {}: only {} of {} are readable in /proc",
            a.server_pids.as_deref().unwrap_or(""),
            base_server.alive,
            server_pids.len()
        ));
    }
    let server_sampler = procfs::Sampler::start(server_pids.clone(), SAMPLE_EVERY);
    let redis_sampler = procfs::Sampler::start(redis_pids.clone(), SAMPLE_EVERY);

    // --- workers ------------------------------------------------------------------------
    let shares = split_even(a.conns, processes);
    let slices = split_slices(&sources, processes as usize);
    let inflight = split_even(a.inflight_max.max(processes as usize) as u64, processes);
    let statuses: Arc<Mutex<Vec<Status>>> =
        Arc::new(Mutex::new(vec![Status::default(); processes as usize]));
    let start = Instant::now();
    let workers_deadline = start + Duration::from_secs_f64(a.duration_s);
    let hard_limit = workers_deadline
        + Duration::from_millis(a.drain_ms + crate::hold::worker_grace_ms(a.conns_per_process))
        + WORKER_GRACE;
    let mut workers: Vec<Worker> = Vec::new();
    for (i, (&n, slice)) in shares.iter().zip(&slices).enumerate() {
        let srcs: Vec<String> = slice.iter().map(|ip| ip.to_string()).collect();
        let srcs = srcs.join(",");
        let rate = a.rate * n as f64 / a.conns as f64;
        let mut cmd = Command::new(&exe);
        cmd.arg("hold")
            .args(["--url", &a.url])
            .args(["--conns", &n.to_string()])
            .args(["--rate", &format!("{rate}")])
            .args(["--duration-s", &format!("{}", a.duration_s)])
            .args(["--sources", &srcs])
            .args(["--workers", &a.workers_per_process.to_string()])
            .args(["--connect-timeout-ms", &a.connect_timeout_ms.to_string()])
            .args(["--inflight-max", &inflight[i].to_string()])
            .args(["--drain-ms", &a.drain_ms.to_string()])
            .arg("--status-lines")
            .args(a.socketio.then_some("--socketio"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop_workers(&mut workers);
                return Err(format!("cannot start worker process {i}: {e}"));
            }
        };
        let pid = child.id();
        let mut out = child.stdout.take().expect("piped stdout");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err = child.stderr.take().expect("piped stderr");
        let (st, say2) = (Arc::clone(&statuses), say.clone());
        let stderr = std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                match parse_status(&line) {
                    Some(s) => st.lock().expect("status lock")[i] = s,
                    None => say2.line(&format!("[worker {i}] {line}")),
                }
            }
        });
        workers.push(Worker {
            child,
            pid,
            conns: n,
            sources: srcs,
            stdout: Some(stdout),
            stderr: Some(stderr),
            done: false,
        });
    }
    let worker_pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
    let worker_sampler = procfs::Sampler::start(worker_pids.clone(), SAMPLE_EVERY);

    // --- connect, settle, publish, hold ----------------------------------------------------
    let connect_bar = mp.add(ProgressBar::new(a.conns));
    connect_bar.set_style(bar_style("connect"));
    let mut round_bar: Option<(ProgressBar, u64, u64, u64)> = None; // bar, seq, base probes, expected
    let mut connect_done_at: Option<Instant> = None;
    let mut connect_done_us = 0u64;
    let mut idle_sample: Option<(procfs::Sample, procfs::Sample, u64)> = None; // server, redis, slab at first publish
    let mut publisher: Option<std::thread::JoinHandle<()>> = None;
    let (pub_tx, pub_rx) = mpsc::channel::<PubEvent>();
    let mut rounds: Vec<Round> = Vec::new();
    let mut last_line = Instant::now();
    let mut last_connected = 0u64;
    let mut last_tick = Instant::now();
    let publish_deadline = workers_deadline - Duration::from_secs_f64(a.tail_s.min(a.duration_s));
    let mut forwarded_stop = false;
    let open_now = Arc::new(std::sync::atomic::AtomicU64::new(0));

    loop {
        std::thread::sleep(TICK);
        let now = Instant::now();
        // Workers that ended.
        for w in workers.iter_mut().filter(|w| !w.done) {
            if let Ok(Some(_)) = w.child.try_wait() {
                w.done = true;
            }
        }
        if workers.iter().all(|w| w.done) {
            break;
        }
        if now >= hard_limit {
            say.line("swarm run: workers still running past their deadline; killing them by PID");
            stop_workers(&mut workers);
            break;
        }
        if net::stop_requested() && !forwarded_stop {
            forwarded_stop = true;
            say.line("swarm run: stop requested; passing SIGINT to the workers");
            for w in workers.iter().filter(|w| !w.done) {
                // SAFETY: kill(2) on our own child's PID.
                unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGINT) };
            }
        }
        let mut total = Status::default();
        for s in statuses.lock().expect("status lock").iter() {
            total.add(s);
        }
        open_now.store(total.open, std::sync::atomic::Ordering::Relaxed);
        let t = now.duration_since(start).as_secs_f64();

        // Connect phase.
        if connect_done_at.is_none() {
            let dt = now.duration_since(last_tick).as_secs_f64().max(1e-3);
            let rate = (total.connected - last_connected.min(total.connected)) as f64 / dt;
            connect_bar.set_position(total.connected + total.failed);
            connect_bar.set_message(format!(
                "{rate:.0}/s failed={} open={}",
                total.failed, total.open
            ));
            if !bars && now.duration_since(last_line) >= Duration::from_secs(1) {
                last_line = now;
                say.line(&format!(
                    "swarm run: t={t:.1}s connecting: connected={} failed={} open={}",
                    total.connected, total.failed, total.open
                ));
            }
            if total.connected + total.failed >= a.conns {
                connect_done_at = Some(now);
                connect_done_us = net::now_unix_us();
                connect_bar.finish_with_message(format!(
                    "connected={} failed={} in {t:.1}s",
                    total.connected, total.failed
                ));
                say.line(&format!(
                    "swarm run: t={t:.1}s connect phase done: connected={} failed={} open={}",
                    total.connected, total.failed, total.open
                ));
            }
        }
        last_connected = total.connected;
        last_tick = now;

        // First broadcast after the settle time: read the idle figures, start the publisher.
        if let Some(done) = connect_done_at {
            if publisher.is_none()
                && a.broadcast_every_s > 0.0
                && !net::stop_requested()
                && now >= done + Duration::from_secs_f64(a.settle_s)
            {
                let s = procfs::sample(&server_pids);
                let r = procfs::sample(&redis_pids);
                let slab = s.slab_kb;
                idle_sample = Some((s, r, slab));
                let every = Duration::from_secs_f64(a.broadcast_every_s);
                let fit = if publish_deadline > now {
                    (publish_deadline - now).as_secs_f64() / a.broadcast_every_s
                } else {
                    0.0
                };
                let count = ((fit.floor() as u64) + 1).min(max_broadcasts);
                if publish_deadline <= now {
                    say.line("swarm run: no time left for broadcasts before --tail-s; raise --duration-s");
                } else {
                    say.line(&format!(
                        "swarm run: t={t:.1}s publishing {count} broadcasts, one every {} s",
                        a.broadcast_every_s
                    ));
                    let via = match &a.publish_cmd {
                        Some(cmd) => Via::Command(cmd.clone()),
                        None => Via::Http(api_target.clone(), a.path.clone()),
                    };
                    let (tx, size, open) = (pub_tx.clone(), a.size, Arc::clone(&open_now));
                    publisher = Some(std::thread::spawn(move || {
                        publish_loop(tx, via, size, count, every, open)
                    }));
                }
            }
        }

        // Broadcast rounds.
        while let Ok(ev) = pub_rx.try_recv() {
            match ev {
                PubEvent::Start(seq) => {
                    if let Some((b, s, base, expected)) = round_bar.take() {
                        let got = total.probes.saturating_sub(base);
                        b.finish_with_message(format!(
                            "seq {s}: {got} of {expected} when the next one started"
                        ));
                        if !bars {
                            say.line(&format!(
                                "swarm run: t={t:.1}s seq={s}: {got} of {expected} received when seq {seq} was published"
                            ));
                        }
                    }
                    let b = mp.add(ProgressBar::new(total.open));
                    b.set_style(bar_style(&format!("#{seq}")));
                    round_bar = Some((b, seq, total.probes, total.open));
                }
                PubEvent::Done(r) => {
                    if let Some(e) = &r.error {
                        say.line(&format!("swarm run: broadcast seq={} failed: {e}", r.seq));
                    } else if r.status != Some(200) {
                        say.line(&format!(
                            "swarm run: broadcast seq={} answered HTTP {:?}",
                            r.seq, r.status
                        ));
                    }
                    rounds.push(r);
                }
            }
        }
        if let Some((b, seq, base, expected)) = &round_bar {
            let got = total.probes.saturating_sub(*base);
            b.set_position(got.min(*expected));
            b.set_message(format!("t={t:.0}s open={}", total.open));
            if got >= *expected {
                b.finish_with_message(format!("seq {seq}: all {expected} have it"));
                if !bars {
                    say.line(&format!(
                        "swarm run: t={t:.1}s seq={seq}: {got} of {expected} received"
                    ));
                }
                // Keep only the latest finished round bar on screen.
                let (b, ..) = round_bar.take().expect("checked");
                mp.remove(&b);
            }
        }
        if !bars
            && connect_done_at.is_some()
            && now.duration_since(last_line) >= Duration::from_secs(30)
        {
            last_line = now;
            say.line(&format!(
                "swarm run: t={t:.1}s holding: open={} msgs={} disconnects={}",
                total.open,
                total.messages,
                total.connected.saturating_sub(total.open)
            ));
        }
    }
    if let Some((b, ..)) = round_bar.take() {
        b.finish();
    }
    if let Some(p) = publisher.take() {
        let _ = p.join();
    }
    while let Ok(ev) = pub_rx.try_recv() {
        if let PubEvent::Done(r) = ev {
            rounds.push(r);
        }
    }
    let end_server = procfs::sample(&server_pids);
    let server_series = server_sampler.stop();
    let redis_series = redis_sampler.stop();
    let worker_series = worker_sampler.stop();

    // --- reports ------------------------------------------------------------------------
    let mut reports = Vec::new();
    let mut worker_rows = Vec::new();
    for (i, w) in workers.iter_mut().enumerate() {
        let code = w.child.wait().ok().and_then(|s| s.code());
        let out = w
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if let Some(h) = w.stderr.take() {
            let _ = h.join();
        }
        let report = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok());
        worker_rows.push(json!({
            "worker": i, "pid": w.pid, "conns": w.conns, "sources": w.sources,
            "exit_code": code, "reported": report.is_some(),
            "connected": report.as_ref().and_then(|r| r["conns_connected"].as_u64()),
        }));
        match report {
            Some(r) => reports.push(r),
            None => say.line(&format!(
                "swarm run: worker {i} (pid {}) gave no report (exit code {code:?})",
                w.pid
            )),
        }
    }
    let m = merge_reports(&reports);
    let c = |k: &str| m.counters.get(k).copied().unwrap_or(0);
    let connected = c("conns_connected");
    let delivered = c("probes_received").saturating_sub(c("duplicates"));

    // Per-broadcast rows.
    let mut round_rows = Vec::new();
    let mut plot_points = Vec::new();
    let mut lasts = Vec::new();
    let mut expected_total = 0u64;
    let mut round_cpu_ticks = 0u64;
    let mut round_cpu_windows = 0usize;
    let t0 = rounds.first().map(|r| r.t_us).unwrap_or(0);
    let ok_rounds: Vec<&Round> = rounds.iter().filter(|r| r.status == Some(200)).collect();
    for (k, r) in rounds.iter().enumerate() {
        let row = m.seqs.get(&r.seq).copied();
        let (n, first, last, sum) = row.unwrap_or((0, 0, 0, 0));
        // Published: answered 200, or delivered although the answer failed (a timeout).
        if r.status == Some(200) || n > 0 {
            expected_total += r.expected;
        }
        // The delivery window, cut at the next broadcast so windows never overlap.
        let end_us = rounds
            .get(k + 1)
            .map_or(r.t_us + last, |next| (r.t_us + last).min(next.t_us));
        let cpu = (n > 0)
            .then(|| procfs::ticks_between(&server_series, r.t_us, end_us))
            .flatten();
        if let Some(t) = cpu {
            round_cpu_ticks += t;
            round_cpu_windows += 1;
        }
        if n > 0 {
            lasts.push(last as f64 / 1000.0);
            plot_points.push(plot::RoundPoint {
                t_s: r.t_us.saturating_sub(t0) as f64 / 1e6,
                first_ms: first as f64 / 1000.0,
                mean_ms: sum as f64 / n as f64 / 1000.0,
                last_ms: last as f64 / 1000.0,
            });
        }
        round_rows.push(json!({
            "seq": r.seq, "t_s": r3(r.t_us.saturating_sub(t0) as f64 / 1e6),
            "status": r.status, "error": r.error, "recipients": r.recipients,
            "post_ms": r1(r.post_us as f64 / 1000.0),
            "expected": r.expected, "receivers": n,
            "first_ms": r1(first as f64 / 1000.0),
            "mean_ms": (n > 0).then(|| r1(sum as f64 / n as f64 / 1000.0)),
            "last_ms": r1(last as f64 / 1000.0),
            "server_cpu_ms": cpu.map(|t| r1(t as f64 * 1000.0 / tck as f64)),
        }));
    }
    lasts.sort_by(f64::total_cmp);
    let within = lasts.iter().filter(|&&l| l <= a.target_last_ms).count();
    let lost = expected_total.saturating_sub(delivered);

    // CPU: the whole broadcast phase (pings and sweeps included) and the delivery windows.
    let phase = rounds.first().zip(rounds.last()).map(|(f, l)| {
        let last_us = m.seqs.get(&l.seq).map_or(0, |s| s.2);
        (f.t_us, l.t_us + last_us)
    });
    let ticks_to_us = |t: u64| t as f64 * 1e6 / tck as f64;
    let per_msg = |ticks: Option<u64>| {
        ticks
            .filter(|_| delivered > 0)
            .map(|t| r3(ticks_to_us(t) / delivered as f64))
    };
    let phase_ticks = |series: &[procfs::Sample]| {
        phase.and_then(|(a_, b_)| procfs::ticks_between(series, a_, b_))
    };
    let server_phase = phase_ticks(&server_series);
    let redis_phase = phase_ticks(&redis_series);
    let worker_phase = phase_ticks(&worker_series);
    let phase_s = phase.map(|(a_, b_)| (b_ - a_) as f64 / 1e6);

    // Idle CPU: from the end of the connect phase (+1 s) to the first broadcast.
    let idle = idle_sample.as_ref().and_then(|s| {
        let (from, to) = (connect_done_us + 1_000_000, s.0.t_unix_us);
        if to < from + 500_000 || server_pids.is_empty() {
            return None;
        }
        let ticks = procfs::ticks_between(&server_series, from, to)?;
        Some(ticks_to_us(ticks) / ((to - from) as f64 / 1e6) / 1000.0)
    });

    let rss_after = idle_sample.as_ref().map(|s| s.0.rss_kb);
    // RSS and Slab once the last broadcast was delivered, connections still open.
    let loaded = phase.and_then(|(_, end_us)| server_series.iter().find(|s| s.t_unix_us >= end_us));
    let per_conn = |after_kb: u64, before_kb: u64| {
        (connected > 0)
            .then(|| ((after_kb as f64 - before_kb as f64) * 1024.0 / connected as f64).round())
    };
    let h = &m.latency;
    let ms = |v: Option<u64>| v.map(|x| r1(x as f64 / 1000.0));
    let report = json!({
        "tool": "swarm run",
        "url": a.url,
        "api": format!("{api}{}", a.path),
        "date_unix_s": net::now_unix_us() / 1_000_000,
        "worker_processes": processes,
        "workers": worker_rows,
        "conns_requested": a.conns,
        "conns_connected": connected,
        "conns_failed": c("conns_failed"),
        "connect_failures": m.connect_failures,
        "connect_time_s": m.connect_time_s.map(r3),
        "accept_rate_per_s": m.connect_time_s.filter(|&t| t > 0.0).map(|t| (connected as f64 / t).round()),
        "rate_requested_per_s": a.rate,
        "server_pids": server_pids,
        "server_rss_before_kb": base_server.rss_kb,
        "server_rss_idle_kb": rss_after,
        "server_rss_loaded_kb": loaded.map(|s| s.rss_kb),
        "slab_loaded_kb": loaded.map(|s| s.slab_kb),
        "server_rss_per_conn_bytes": rss_after.and_then(|r| per_conn(r, base_server.rss_kb)),
        "server_rss_per_conn_loaded_bytes": loaded.and_then(|s| per_conn(s.rss_kb, base_server.rss_kb)).filter(|_| !server_pids.is_empty()),
        "server_alive_at_end": end_server.alive,
        "slab_before_kb": base_server.slab_kb,
        "slab_idle_kb": idle_sample.as_ref().map(|s| s.2),
        "slab_per_conn_bytes": idle_sample.as_ref().and_then(|s| per_conn(s.2, base_server.slab_kb)),
        "server_cpu_idle_ms_per_s": idle.map(r1),
        "redis_rss_delta_kb": idle_sample.as_ref().map(|s| s.1.rss_kb as i64 - base_redis.rss_kb as i64).filter(|_| !redis_pids.is_empty()),
    });
    let part2 = json!({
        "broadcast_every_s": a.broadcast_every_s,
        "broadcasts_sent": rounds.len(),
        "broadcasts_ok": ok_rounds.len(),
        "broadcasts_delivered": m.seqs.keys().filter(|s| rounds.iter().any(|r| r.seq == **s)).count(),
        "broadcast_phase_s": phase_s.map(r3),
        "messages_expected": expected_total,
        "messages_delivered": delivered,
        "lost": lost,
        "duplicates": c("duplicates"),
        "gaps": c("gaps"),
        "disconnects": c("disconnects"),
        "disconnect_reasons": m.disconnect_reasons,
        "messages_unparsed": c("messages_unparsed"),
        "pings_received": c("pings_received"),
        "received_per_conn": {"min": m.received_per_conn_min, "max": m.received_per_conn_max},
        "server_cpu_us_per_msg": per_msg(server_phase),
        "server_cpu_us_per_msg_delivery_windows": per_msg((round_cpu_windows > 0).then_some(round_cpu_ticks)),
        "server_cpu_s_broadcast_phase": server_phase.map(|t| r3(ticks_to_us(t) / 1e6)),
        "redis_cpu_us_per_msg": per_msg(redis_phase).filter(|_| !redis_pids.is_empty()),
        "swarm_cpu_us_per_msg": per_msg(worker_phase),
    });
    let part3 = json!({
        "last_client_ms": {
            "median": quantile(&lasts, 0.5).map(r1),
            "p90": quantile(&lasts, 0.9).map(r1),
            "max": lasts.last().copied().map(r1),
            "target": a.target_last_ms,
            "rounds_within_target": within,
            "rounds": lasts.len(),
        },
        "latency_ms": {
            "count": h.count(),
            "p50": ms(h.quantile(0.5)), "p90": ms(h.quantile(0.9)),
            "p99": ms(h.quantile(0.99)), "p999": ms(h.quantile(0.999)),
            "max": ms(h.max()), "mean": h.mean().map(|x| r1(x / 1000.0)),
        },
        "rounds": round_rows,
        "elapsed_s": r3(start.elapsed().as_secs_f64()),
        "stopped_by_signal": net::stop_requested(),
    });
    let mut report = report;
    for part in [part2, part3] {
        if let (Some(into), Value::Object(from)) = (report.as_object_mut(), part) {
            into.extend(from);
        }
    }
    if let Some(path) = &a.plot {
        plot::write_svg(
            path,
            &plot::PlotInput {
                title: &a.title,
                rounds: &plot_points,
                p50_ms: h.quantile(0.5).map(|v| v as f64 / 1000.0),
                p99_ms: h.quantile(0.99).map(|v| v as f64 / 1000.0),
                target_ms: Some(a.target_last_ms),
            },
        )?;
        say.line(&format!("swarm run: plot written to {path}"));
    }
    if let Some(path) = &a.report {
        std::fs::write(path, format!("{report}\n"))
            .map_err(|e| format!("--report {path}: cannot write it: {e}"))?;
    }
    Ok(report)
}

fn stop_workers(workers: &mut [Worker]) {
    for w in workers.iter_mut().filter(|w| !w.done) {
        let _ = w.child.kill();
        let _ = w.child.wait();
        w.done = true;
    }
}

/// Where broadcasts go.
enum Via {
    /// POST to (API, path), each on a new connection (a kept-alive one could be closed by
    /// the server's idle timeout between two broadcasts).
    Http(net::Target, String),
    /// One line per broadcast to a command's stdin, one answer line back (`--publish-cmd`).
    Command(String),
}

/// A `--publish-cmd` process: its stdin and the lines of its stdout.
struct PipePublisher {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    answers: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl PipePublisher {
    fn start(cmd: &str) -> Result<PipePublisher, String> {
        let mut child = Command::new("sh")
            .args(["-c", cmd])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start --publish-cmd: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let answers = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        Ok(PipePublisher {
            child,
            stdin,
            answers,
        })
    }

    /// Sends one body; Ok(()) when the command answered `ok`.
    fn publish(&mut self, body: &str) -> Result<(), String> {
        use std::io::Write;
        writeln!(self.stdin, "{body}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("--publish-cmd stdin: {e}"))?;
        match self.answers.next() {
            Some(Ok(line)) if line.trim() == "ok" => Ok(()),
            Some(Ok(line)) => Err(format!("--publish-cmd answered: {line}")),
            Some(Err(e)) => Err(format!("--publish-cmd stdout: {e}")),
            None => Err("--publish-cmd exited".to_owned()),
        }
    }
}

impl Drop for PipePublisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `count` broadcasts, one every `every`.
fn publish_loop(
    tx: mpsc::Sender<PubEvent>,
    via: Via,
    size: usize,
    count: u64,
    every: Duration,
    open: Arc<std::sync::atomic::AtomicU64>,
) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let mut pipe = match &via {
        Via::Command(cmd) => match PipePublisher::start(cmd) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("swarm run: {e}");
                return;
            }
        },
        Via::Http(..) => None,
    };
    rt.block_on(async move {
        let start = Instant::now();
        for n in 0..count {
            let due = start + every.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
            while Instant::now() < due {
                if net::stop_requested() {
                    return;
                }
                let left = due - Instant::now();
                tokio::time::sleep(left.min(Duration::from_millis(100))).await;
            }
            if net::stop_requested() {
                return;
            }
            let seq = n + 1;
            let expected = open.load(std::sync::atomic::Ordering::Relaxed);
            let _ = tx.send(PubEvent::Start(seq));
            let t_us = net::now_unix_us();
            let body = make_body(seq, t_us, size);
            let sent = Instant::now();
            let answer = match (&via, pipe.as_mut()) {
                (Via::Http(target, path), _) => {
                    let mut client = Client::new(target.clone());
                    tokio::time::timeout(
                        Duration::from_secs(10),
                        client.post(path, "application/json", body.as_bytes()),
                    )
                    .await
                    .unwrap_or_else(|_| Err("no answer within 10 s".into()))
                    .map(|resp| (resp.status, recipients_of(&resp.body)))
                }
                (Via::Command(_), Some(pipe)) => pipe.publish(&body).map(|()| (200, None)),
                (Via::Command(_), None) => Err("--publish-cmd is not running".to_owned()),
            };
            let post_us = sent.elapsed().as_micros() as u64;
            let round = match answer {
                Ok((status, recipients)) => Round {
                    seq,
                    t_us,
                    status: Some(status),
                    recipients,
                    post_us,
                    error: None,
                    expected,
                },
                Err(e) => Round {
                    seq,
                    t_us,
                    status: None,
                    recipients: None,
                    post_us,
                    error: Some(e),
                    expected,
                },
            };
            if tx.send(PubEvent::Done(round)).is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits() {
        assert_eq!(split_even(10, 3), vec![4, 3, 3]);
        assert_eq!(split_even(128_000, 7).iter().sum::<u64>(), 128_000);
        let s = split_slices(&[1, 2, 3, 4, 5], 2);
        assert_eq!(s, vec![vec![1, 2, 3], vec![4, 5]]);
    }

    #[test]
    fn status_lines_parse() {
        let s = parse_status(
            r#"swarm-status {"t_s":1.5,"connected":3,"failed":1,"open":2,"messages":9,"probes":7}"#,
        )
        .expect("status");
        assert_eq!(
            (s.connected, s.failed, s.open, s.messages, s.probes),
            (3, 1, 2, 9, 7)
        );
        assert!(parse_status("swarm hold: t=1.0s").is_none());
    }

    #[test]
    fn reports_merge_exactly() {
        let mut h1 = Histogram::default();
        let mut h2 = Histogram::default();
        for v in [100, 200, 300] {
            h1.record(v);
        }
        h2.record(5000);
        let r1 = json!({
            "conns_connected": 2, "duplicates": 1, "probes_received": 3,
            "connect_failures": {"tcp: refused": 1}, "connect_time_s": 1.5,
            "received_per_conn": {"min": 1, "max": 2},
            "latency_us": {"count": 3}, "latency_hist": h1.to_sparse(),
            "seqs": [{"seq": 1, "receivers": 2, "first_receive_us": 100, "last_receive_us": 300, "latency_sum_us": 400}],
        });
        let r2 = json!({
            "conns_connected": 1, "probes_received": 1,
            "connect_failures": {"tcp: refused": 2, "timeout": 1}, "connect_time_s": 2.5,
            "received_per_conn": {"min": 0, "max": 1},
            "latency_us": {"count": 1}, "latency_hist": h2.to_sparse(),
            "seqs": [{"seq": 1, "receivers": 1, "first_receive_us": 5000, "last_receive_us": 5000, "latency_sum_us": 5000}],
        });
        let m = merge_reports(&[r1, r2]);
        assert_eq!(m.counters["conns_connected"], 3);
        assert_eq!(m.counters["duplicates"], 1);
        assert_eq!(m.counters["latency_samples"], 4);
        assert_eq!(m.connect_failures["tcp: refused"], 3);
        assert_eq!(m.connect_time_s, Some(2.5));
        assert_eq!(m.received_per_conn_min, Some(0));
        assert_eq!(m.latency.count(), 4);
        assert_eq!(m.latency.max(), Some(5000));
        assert_eq!(m.seqs[&1], (3, 100, 5000, 5400));
    }

    #[test]
    fn quantiles_of_sorted() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), Some(2.0));
        assert_eq!(quantile(&v, 1.0), Some(4.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
