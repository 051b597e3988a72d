//! `swarm hold`: opens many WebSocket connections at a bounded rate from several loopback
//! source addresses, keeps them open for a bounded time, reads and checks everything that
//! arrives, and reports. Owns the worker threads and every connection task; counting and
//! the report live in `stats`, seq checking in `seq`.
//!
//! One current-thread tokio runtime per worker thread: a connection stays on its worker, so
//! its counters are plain fields (no atomics on the per-message path); workers merge once.

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message};

use crate::net::{self, Target};
use crate::seq::{parse_probe, SeqTrack};
use crate::stats::{hold_report, RunFacts, WorkerStats};

/// Per-connection read buffer. tungstenite allocates it eagerly (128 KiB by default);
/// broadcasts are small, and 19,000 x 128 KiB would be 2.4 GiB of client memory.
const READ_BUFFER_BYTES: usize = 4096;
/// Largest message accepted; larger ones end the connection with an error that is counted.
const MESSAGE_BYTES_MAX: usize = 16 << 20;
/// How often the stopper checks the signal flag.
const STOP_POLL_MS: u64 = 50;
/// Extra time after deadline + drain before the process gives up waiting for workers.
/// Plus this per connection (closing tens of thousands of sockets on a loaded core).
const WORKER_GRACE_MS_PER_CONN: f64 = 0.5;

/// How long after deadline + drain the process waits for its workers.
pub fn worker_grace_ms(conns: u64) -> u64 {
    WORKER_GRACE_MS + (conns as f64 * WORKER_GRACE_MS_PER_CONN) as u64
}

const WORKER_GRACE_MS: u64 = 5000;

pub struct HoldConfig {
    pub url: String,
    pub target: Target,
    pub conns: u64,
    pub rate_per_s: f64,
    pub duration: Duration,
    pub sources: Vec<Ipv4Addr>,
    pub sources_spec: String,
    pub workers: usize,
    pub connect_timeout: Duration,
    pub inflight_max: usize,
    pub drain: Duration,
    /// Machine-readable progress for a coordinator: one `swarm-status {json}` line on
    /// stderr every `STATUS_EVERY_MS` instead of the human lines or bars.
    pub status_lines: bool,
    /// socket.io mode: Engine.IO over WebSocket on `/socket.io/`.
    pub socketio: bool,
}

/// The Engine.IO WebSocket path swarm's socket.io mode connects to.
const SOCKETIO_PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// What a socket.io text frame is to swarm.
enum SioFrame {
    /// The open packet: CONNECT `/` now.
    Open,
    /// An Engine.IO ping: answer with a pong.
    Ping,
    /// The argument of a `message` event (`42[id]["message",arg]`), as JSON bytes.
    Message(Vec<u8>),
    /// Anything else (the CONNECT reply, other events).
    Other,
}

fn sio_frame(text: &str) -> SioFrame {
    if text.starts_with('0') {
        return SioFrame::Open;
    }
    if text == "2" {
        return SioFrame::Ping;
    }
    let Some(rest) = text.strip_prefix("42") else {
        return SioFrame::Other;
    };
    let args = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    match serde_json::from_str::<(String, serde_json::Value)>(args) {
        Ok((name, arg)) if name == "message" => {
            SioFrame::Message(serde_json::to_vec(&arg).unwrap_or_default())
        }
        _ => SioFrame::Other,
    }
}

/// Prefix of the machine-readable progress lines (`--status-lines`).
pub const STATUS_PREFIX: &str = "swarm-status ";
/// How often `--status-lines` prints.
const STATUS_EVERY_MS: u64 = 500;

/// Live counters the main thread prints every second; one set per worker, so workers
/// never write the same cache line on the hot path except these few adds.
#[derive(Default)]
struct Progress {
    connected: AtomicU64,
    failed: AtomicU64,
    open: AtomicU64,
    messages: AtomicU64,
    /// Messages that carried a seq/t_us probe.
    probes: AtomicU64,
}

pub fn run(cfg: HoldConfig) -> Result<serde_json::Value, String> {
    let cfg = Arc::new(cfg);
    net::install_stop_handler();
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let progress: Arc<Vec<Progress>> =
        Arc::new((0..cfg.workers).map(|_| Progress::default()).collect());

    let mut handles = Vec::with_capacity(cfg.workers);
    for w in 0..cfg.workers {
        let cfg = Arc::clone(&cfg);
        let progress = Arc::clone(&progress);
        let handle = std::thread::Builder::new()
            .name(format!("swarm-w{w}"))
            .spawn(move || -> Result<WorkerStats, String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("worker {w}: cannot build a tokio runtime: {e}"))?;
                let local = tokio::task::LocalSet::new();
                Ok(local.block_on(&rt, worker(w, cfg, progress, start, deadline)))
            })
            .map_err(|e| format!("cannot start worker thread {w}: {e}"))?;
        handles.push(handle);
    }

    // Progress on stderr (bars on a terminal, lines otherwise, or machine-readable lines
    // for a coordinator), until every worker is done or the hard limit.
    let grace_ms = worker_grace_ms(cfg.conns);
    let hard_limit = deadline + cfg.drain + Duration::from_millis(grace_ms);
    let tick_every = if cfg.status_lines {
        Duration::from_millis(STATUS_EVERY_MS)
    } else {
        Duration::from_secs(1)
    };
    let mut view = if cfg.status_lines {
        None
    } else {
        Some(ProgressView::new(cfg.conns))
    };
    let mut last_tick = start;
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if now >= hard_limit {
            eprintln!("swarm hold: workers did not stop {grace_ms} ms after the deadline and drain; giving up without a report");
            std::process::exit(2);
        }
        if now.duration_since(last_tick) < tick_every {
            continue;
        }
        let dt = now.duration_since(last_tick).as_secs_f64();
        last_tick = now;
        let sum = |f: fn(&Progress) -> &AtomicU64| {
            progress
                .iter()
                .map(|p| f(p).load(Ordering::Relaxed))
                .sum::<u64>()
        };
        let c = Counts {
            connected: sum(|p| &p.connected),
            failed: sum(|p| &p.failed),
            open: sum(|p| &p.open),
            messages: sum(|p| &p.messages),
            probes: sum(|p| &p.probes),
        };
        let t = now.duration_since(start).as_secs_f64();
        match view.as_mut() {
            None => eprintln!(
                "{STATUS_PREFIX}{}",
                serde_json::json!({
                    "t_s": (t * 1000.0).round() / 1000.0,
                    "connected": c.connected,
                    "failed": c.failed,
                    "open": c.open,
                    "messages": c.messages,
                    "probes": c.probes,
                })
            ),
            Some(v) => v.update(t, dt, &c),
        }
    }
    if let Some(v) = view {
        v.finish();
    }

    let mut total = WorkerStats::default();
    for (w, h) in handles.into_iter().enumerate() {
        let stats = h.join().map_err(|_| format!("worker {w} panicked"))??;
        total.merge(&stats);
    }
    let facts = RunFacts {
        url: &cfg.url,
        conns_requested: cfg.conns,
        sources: cfg.sources.len(),
        workers: cfg.workers,
        elapsed: start.elapsed(),
        stopped_by_signal: net::stop_requested(),
    };
    Ok(hold_report(&facts, &total))
}

/// Summed live counters of all workers.
struct Counts {
    connected: u64,
    failed: u64,
    open: u64,
    messages: u64,
    probes: u64,
}

/// Human progress: indicatif bars when stderr is a terminal, a line per second (while
/// connecting) or per change (while holding) otherwise, so logs stay readable.
struct ProgressView {
    conns: u64,
    bar: Option<indicatif::ProgressBar>,
    connecting: bool,
    last_connected: u64,
    last_line: String,
    ticks: u64,
}

impl ProgressView {
    fn new(conns: u64) -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let b = indicatif::ProgressBar::new(conns);
            b.set_style(crate::coord::bar_style("connect"));
            b
        });
        Self {
            conns,
            bar,
            connecting: true,
            last_connected: 0,
            last_line: String::new(),
            ticks: 0,
        }
    }

    fn update(&mut self, t: f64, dt: f64, c: &Counts) {
        self.ticks += 1;
        let rate = (c.connected - self.last_connected) as f64 / dt;
        self.last_connected = c.connected;
        if self.connecting {
            match &self.bar {
                Some(b) => {
                    b.set_position(c.connected + c.failed);
                    b.set_message(format!(
                        "{rate:.0}/s failed={} open={} msgs={}",
                        c.failed, c.open, c.messages
                    ));
                }
                None => eprintln!(
                    "swarm hold: t={t:.1}s connecting: connected={} failed={} rate={rate:.0}/s open={} msgs={}",
                    c.connected, c.failed, c.open, c.messages
                ),
            }
            if c.connected + c.failed >= self.conns {
                self.connecting = false;
                match &self.bar {
                    Some(b) => {
                        b.finish_with_message(format!(
                            "connected={} failed={} in {t:.1}s",
                            c.connected, c.failed
                        ));
                        let hold = indicatif::ProgressBar::new_spinner();
                        hold.set_style(
                            indicatif::ProgressStyle::with_template("{spinner} hold {msg}")
                                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                        );
                        self.bar = Some(hold);
                    }
                    None => eprintln!(
                        "swarm hold: t={t:.1}s connect phase done: connected={} failed={}",
                        c.connected, c.failed
                    ),
                }
            }
            return;
        }
        let line = format!(
            "open={} msgs={} disconnects={}",
            c.open,
            c.messages,
            c.connected.saturating_sub(c.open)
        );
        match &self.bar {
            Some(b) => {
                b.set_message(format!("t={t:.0}s {line}"));
                b.tick();
            }
            None => {
                if line != self.last_line || self.ticks.is_multiple_of(10) {
                    eprintln!("swarm hold: t={t:.1}s holding: {line}");
                    self.last_line = line;
                }
            }
        }
    }

    fn finish(self) {
        if let Some(b) = self.bar {
            b.finish();
        }
    }
}

async fn worker(
    w: usize,
    cfg: Arc<HoldConfig>,
    progress: Arc<Vec<Progress>>,
    start: Instant,
    deadline: Instant,
) -> WorkerStats {
    let stats = Rc::new(RefCell::new(WorkerStats::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    // When the stop came: every connection's polite close ends by stop + drain, however
    // late its task gets to run (18,000 closes on one loaded core take a while).
    let stopped_at: Rc<std::cell::Cell<Option<tokio::time::Instant>>> = Rc::default();
    let stopped_at_setter = Rc::clone(&stopped_at);
    let deadline_tokio = tokio::time::Instant::from_std(deadline);

    // The stopper: flips `stop` at the deadline or on SIGINT/SIGTERM.
    tokio::task::spawn_local(async move {
        loop {
            if net::stop_requested() || tokio::time::Instant::now() >= deadline_tokio {
                stopped_at_setter.set(Some(tokio::time::Instant::now()));
                let _ = stop_tx.send(true);
                return;
            }
            tokio::time::sleep(Duration::from_millis(STOP_POLL_MS)).await;
        }
    });

    // This worker's connections are i = w, w + W, w + 2W, ...; connection i is due at
    // start + i / rate, so W workers together keep the requested rate.
    let per_worker_inflight = (cfg.inflight_max / cfg.workers).max(1);
    let inflight = Arc::new(Semaphore::new(per_worker_inflight));
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(MESSAGE_BYTES_MAX))
        .max_frame_size(Some(MESSAGE_BYTES_MAX));
    let mut tasks = JoinSet::new();
    let mut i = w as u64;
    while i < cfg.conns {
        if *stop_rx.borrow() {
            break;
        }
        let due = start + Duration::from_secs_f64(i as f64 / cfg.rate_per_s);
        let mut stop = stop_rx.clone();
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let permit = tokio::select! {
            p = Arc::clone(&inflight).acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stop.wait_for(|s| *s) => break,
        };
        stats.borrow_mut().attempted += 1;
        let source = cfg.sources[(i as usize) % cfg.sources.len()];
        tasks.spawn_local(conn_task(
            source,
            Arc::clone(&cfg),
            ws_config,
            permit,
            stop_rx.clone(),
            Rc::clone(&stats),
            Arc::clone(&progress),
            w,
            start,
            Rc::clone(&stopped_at),
        ));
        i += cfg.workers as u64;
    }
    while tasks.join_next().await.is_some() {}
    Rc::try_unwrap(stats)
        .map(RefCell::into_inner)
        .unwrap_or_else(|rc| rc.borrow().clone())
}

/// A short reason for a failed connect, without the errno number, so reasons group well.
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

async fn connect(
    source: Ipv4Addr,
    target: &Target,
    request: String,
    ws_config: WebSocketConfig,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, String> {
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
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config))
            .await
            .map_err(|e| ws_reason(&e))?;
    Ok(ws)
}

#[allow(clippy::too_many_arguments)]
async fn conn_task(
    source: Ipv4Addr,
    cfg: Arc<HoldConfig>,
    ws_config: WebSocketConfig,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
    stats: Rc<RefCell<WorkerStats>>,
    progress: Arc<Vec<Progress>>,
    w: usize,
    start: Instant,
    stopped_at: Rc<std::cell::Cell<Option<tokio::time::Instant>>>,
) {
    let p = &progress[w];
    let path = if cfg.socketio {
        SOCKETIO_PATH
    } else {
        cfg.target.path.as_str()
    };
    let request = format!("ws://{}{}", cfg.target.authority, path);
    let attempt = tokio::time::timeout(
        cfg.connect_timeout,
        connect(source, &cfg.target, request, ws_config),
    );
    let result = tokio::select! {
        r = attempt => r.unwrap_or_else(|_| Err("timeout".to_owned())),
        _ = stop.wait_for(|s| *s) => Err("stopped before connected".to_owned()),
    };
    drop(permit);
    let mut ws = {
        let mut s = stats.borrow_mut();
        s.connects_done_after = Some(start.elapsed());
        match result {
            Ok(ws) => {
                s.connected += 1;
                p.connected.fetch_add(1, Ordering::Relaxed);
                p.open.fetch_add(1, Ordering::Relaxed);
                ws
            }
            Err(reason) => {
                s.failed += 1;
                s.connect_failures.add(&reason);
                p.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    };

    let mut track = SeqTrack::default();
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
        let sio_arg;
        let payload: &[u8] = match &msg {
            Some(Ok(Message::Text(t))) if cfg.socketio => match sio_frame(t.as_str()) {
                SioFrame::Open => {
                    let _ = ws.send(Message::text("40")).await;
                    continue;
                }
                SioFrame::Ping => {
                    stats.borrow_mut().pings += 1;
                    let _ = ws.send(Message::text("3")).await;
                    continue;
                }
                SioFrame::Message(arg) => {
                    sio_arg = arg;
                    &sio_arg
                }
                SioFrame::Other => continue,
            },
            Some(Ok(Message::Text(t))) => t.as_bytes(),
            Some(Ok(Message::Binary(b))) => b,
            Some(Ok(Message::Ping(_))) => {
                // tungstenite queues the Pong and sends it on the next read.
                stats.borrow_mut().pings += 1;
                continue;
            }
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(frame))) => {
                let reason = match frame {
                    Some(f) => format!("close {}", u16::from(f.code)),
                    None => "close (no code)".to_owned(),
                };
                stats.borrow_mut().disconnects.add(&reason);
                break;
            }
            Some(Err(e)) => {
                stats.borrow_mut().disconnects.add(&ws_reason(e));
                break;
            }
            None => {
                stats.borrow_mut().disconnects.add("eof without close");
                break;
            }
        };
        let now_us = net::now_unix_us();
        let mut s = stats.borrow_mut();
        s.messages += 1;
        s.bytes += payload.len() as u64;
        p.messages.fetch_add(1, Ordering::Relaxed);
        match parse_probe(payload) {
            Some((seq, t_us)) => {
                let latency_us = now_us.saturating_sub(t_us);
                s.probes += 1;
                p.probes.fetch_add(1, Ordering::Relaxed);
                s.latency_us.record(latency_us);
                s.seqs.record(seq, latency_us);
                track.observe(seq);
            }
            None => s.unparsed += 1,
        }
    }
    p.open.fetch_sub(1, Ordering::Relaxed);
    {
        let mut s = stats.borrow_mut();
        s.finish_conn(&track);
        if closed_by_us {
            s.closed_by_us += 1;
        }
    }
    if closed_by_us {
        // Close politely and wait (bounded) for the server's Close, so the server sees a
        // normal close rather than a reset.
        let drain_until = stopped_at.get().unwrap_or_else(tokio::time::Instant::now) + cfg.drain;
        let _ = tokio::time::timeout_at(drain_until, async {
            let _ = ws.send(Message::Close(None)).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::{sio_frame, SioFrame};

    #[test]
    fn socketio_frames() {
        assert!(matches!(sio_frame("0{\"sid\":\"x\"}"), SioFrame::Open));
        assert!(matches!(sio_frame("2"), SioFrame::Ping));
        assert!(matches!(sio_frame("40{\"sid\":\"x\"}"), SioFrame::Other));
        match sio_frame("4212[\"message\",{\"seq\":3,\"t_us\":9}]") {
            SioFrame::Message(arg) => assert_eq!(arg, br#"{"seq":3,"t_us":9}"#.to_vec()),
            _ => panic!("not a message"),
        }
    }
}
