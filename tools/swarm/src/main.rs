//! swarm: the load tool for volley. `swarm hold` opens and holds many WebSocket
//! connections and checks what they receive; `swarm publish` sends numbered, timestamped
//! broadcasts through the HTTP API. Loopback only; every loop is bounded by count and time.
//!
//! # Layout
//! - `main.rs`    CLI (clap), validation of flags, exit codes
//! - `hold.rs`    worker threads, connection tasks, progress lines
//! - `publish.rs` the publisher loop and its summary
//! - `stats.rs`   per-worker counters, merge, the hold report (pure)
//! - `seq.rs`     probe parsing, per-connection seq checks, per-seq table (pure)
//! - `hist.rs`    log-linear latency histogram (pure)
//! - `http.rs`    a minimal keep-alive HTTP/1.1 POST client
//! - `net.rs`     URL and `--sources` parsing, RLIMIT_NOFILE, clock, stop signal
//! - `coord.rs`   `swarm run`: worker processes, publisher, bars, merged report
//! - `procfs.rs`  server CPU / RSS and kernel Slab from /proc
//! - `plot.rs`    the SVG latency plot (plotters)

mod coord;
mod hist;
mod hold;
mod http;
mod net;
mod plot;
mod procfs;
mod publish;
mod push;
mod seq;
mod stats;
mod storm;
mod targeted;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Most connections one `swarm hold` accepts; several processes go beyond.
const CONNS_MAX: u64 = 1_000_000;
/// File descriptors a process keeps for itself beyond its connections.
const SPARE_FDS: u64 = 64;
/// Most broadcasts one `swarm publish` sends.
const PUBLISH_COUNT_MAX: u64 = 10_000_000;
/// Largest broadcast body.
const PUBLISH_SIZE_MAX: usize = 1 << 20;

#[derive(Parser)]
#[command(
    name = "swarm",
    version,
    about = "Load tool for volley: hold many WebSocket clients, publish broadcasts (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open N WebSocket connections at a bounded rate, hold them for D seconds reading
    /// everything, check seq/t_us of every message, then print one JSON report on stdout.
    Hold(HoldArgs),
    /// POST K broadcasts {"seq":n,"t_us":<unix µs>,"pad":"xx.."} to /api/broadcast, one every
    /// I ms, then print a JSON summary on stdout.
    Publish(PublishArgs),
    /// Send broadcast, user or room messages from the command line (count, rate, receipts
    /// with --wait-ack); prints every answer and a JSON summary.
    Push(push::PushArgs),
    /// Rooms and users through POST /api/batch: R rooms x S members join, then per phase
    /// batches of one message per room / per user; counts and seq-checks every delivery and
    /// prints a JSON report (deliveries/s, server CPU per delivery with --server-pid).
    Targeted(targeted::TargetedArgs),
    /// Coordinator: start several `swarm hold` worker processes (past the per-process
    /// open-file limit), publish a broadcast every few seconds once all are connected,
    /// read server CPU/RSS and kernel Slab from /proc, and print one merged JSON report
    /// (optionally an SVG latency plot). Progress bars on a terminal.
    Run(coord::RunArgs),
    /// Reconnect storm with recovery: N clients join a room, all close, M messages are
    /// published, then all N reconnect at once with a resume token; checks that each gets
    /// exactly the M missed messages in order and `recovered: true`, and reports the time
    /// until all caught up and the server's CPU per replayed message (JSON).
    Storm(storm::StormArgs),
}

#[derive(Args)]
struct HoldArgs {
    /// WebSocket URL (ws:// only, loopback host).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Connections to open (one process can hold about RLIMIT_NOFILE - 64).
    #[arg(long)]
    conns: u64,
    /// Connection attempts started per second, across all workers.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Run time in seconds from the start (connecting included); then close and report.
    #[arg(long)]
    duration_s: f64,
    /// Loopback source addresses, round-robin: a range "127.0.0.1-127.0.0.8", a list
    /// "127.0.0.1,127.0.0.2", or one address.
    #[arg(long, default_value = "127.0.0.1-127.0.0.8")]
    sources: String,
    /// Worker threads, each with its own single-threaded runtime [default: cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Give up on one connection (TCP + handshake) after this long.
    #[arg(long, default_value_t = 10_000)]
    connect_timeout_ms: u64,
    /// Most connection attempts in flight at once, across all workers.
    #[arg(long, default_value_t = 1000)]
    inflight_max: usize,
    /// After the run time, how long to wait for the server's Close replies.
    #[arg(long, default_value_t = 2000)]
    drain_ms: u64,
    /// Print machine-readable `swarm-status {json}` progress lines on stderr (used by
    /// `swarm run`) instead of human progress.
    #[arg(long, hide = true)]
    status_lines: bool,
    /// Speak socket.io (Engine.IO 4 over WebSocket): connect to
    /// `/socket.io/?EIO=4&transport=websocket` on --url's host, CONNECT `/`, answer the
    /// Engine.IO pings and read each `message` event's argument as the probe.
    #[arg(long)]
    socketio: bool,
}

#[derive(Args)]
struct PublishArgs {
    /// HTTP base URL of volley's API (http:// only, loopback host).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Path of the broadcast endpoint, appended to --api.
    #[arg(long, default_value = "/api/broadcast")]
    path: String,
    /// Broadcasts to send.
    #[arg(long)]
    count: u64,
    /// Time between two broadcasts (start to start).
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Approximate body size in bytes (padded with "x").
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Seq of the first broadcast; the next ones count up from it.
    #[arg(long, default_value_t = 1)]
    first_seq: u64,
    /// Give up on one POST after this long.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Do not print a line per answer.
    #[arg(long)]
    quiet: bool,
}

fn positive_finite(flag: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("{flag} {v}: must be a positive number"))
    }
}

fn hold(a: HoldArgs) -> Result<serde_json::Value, String> {
    let target = net::parse_target(&a.url, "ws", "/ws")?;
    let sources = net::parse_sources(&a.sources)?;
    positive_finite("--rate", a.rate)?;
    positive_finite("--duration-s", a.duration_s)?;
    if a.conns == 0 || a.conns > CONNS_MAX {
        return Err(format!("--conns {}: must be 1..={CONNS_MAX}", a.conns));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = a.workers.unwrap_or(cores);
    if workers == 0 || workers > 64 {
        return Err(format!(
            "--workers {workers}: must be 1..=64; omit it for one per core ({cores})"
        ));
    }
    if a.inflight_max == 0 {
        return Err("--inflight-max 0: must be at least 1".into());
    }
    let nofile = net::raise_nofile();
    if a.conns + SPARE_FDS > nofile {
        return Err(format!(
            "--conns {}: needs about {} open files but RLIMIT_NOFILE is {nofile}; run several swarm processes with at most {} connections each",
            a.conns,
            a.conns + SPARE_FDS,
            nofile.saturating_sub(SPARE_FDS)
        ));
    }
    if let Some(ports) = net::ephemeral_ports() {
        let per_source = a.conns.div_ceil(sources.len() as u64);
        if per_source > ports {
            eprintln!(
                "swarm hold: warning: {per_source} connections per source address but only {ports} ephemeral ports; add --sources"
            );
        }
    }
    let cfg = hold::HoldConfig {
        url: a.url.clone(),
        target,
        conns: a.conns,
        rate_per_s: a.rate,
        duration: Duration::from_secs_f64(a.duration_s),
        sources,
        sources_spec: a.sources.clone(),
        workers,
        connect_timeout: Duration::from_millis(a.connect_timeout_ms.max(1)),
        inflight_max: a.inflight_max,
        drain: Duration::from_millis(a.drain_ms),
        status_lines: a.status_lines,
        socketio: a.socketio,
    };
    eprintln!(
        "swarm hold: socketio={} url={} conns={} rate={}/s duration={}s sources={} ({} addrs) workers={} connect_timeout={}ms inflight_max={} drain={}ms nofile={nofile}",
        cfg.socketio,
        cfg.url,
        cfg.conns,
        cfg.rate_per_s,
        a.duration_s,
        cfg.sources_spec,
        cfg.sources.len(),
        cfg.workers,
        a.connect_timeout_ms,
        cfg.inflight_max,
        a.drain_ms
    );
    hold::run(cfg)
}

fn publish(a: PublishArgs) -> Result<serde_json::Value, String> {
    let target = net::parse_target(&a.api, "http", "")?;
    if a.count == 0 || a.count > PUBLISH_COUNT_MAX {
        return Err(format!(
            "--count {}: must be 1..={PUBLISH_COUNT_MAX}",
            a.count
        ));
    }
    if a.size > PUBLISH_SIZE_MAX {
        return Err(format!(
            "--size {}: must be at most {PUBLISH_SIZE_MAX}",
            a.size
        ));
    }
    if !a.path.starts_with('/') {
        return Err(format!("--path {:?}: must start with /", a.path));
    }
    eprintln!(
        "swarm publish: api={} path={} count={} interval={}ms size={}B first_seq={}",
        a.api, a.path, a.count, a.interval_ms, a.size, a.first_seq
    );
    publish::run(publish::PublishConfig {
        api: a.api,
        target,
        path: a.path,
        count: a.count,
        interval: Duration::from_millis(a.interval_ms),
        size_bytes: a.size,
        first_seq: a.first_seq,
        timeout: Duration::from_millis(a.timeout_ms.max(1)),
        quiet: a.quiet,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Hold(a) => hold(a),
        Command::Publish(a) => publish(a),
        Command::Push(a) => push::run(a),
        Command::Targeted(a) => targeted::run(a),
        Command::Run(a) => coord::run(a),
        Command::Storm(a) => storm::run(a),
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("swarm: {e}");
            ExitCode::from(2)
        }
    }
}
