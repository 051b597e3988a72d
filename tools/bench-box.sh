#!/usr/bin/env bash
# bench-box.sh: the box scenario in one command. Starts Redis and K volley processes on one
# port (tools/cluster.sh: SO_REUSEPORT, pinned round-robin across the CPUs, joined through
# Redis), then `swarm run`, which starts enough `swarm hold` worker processes (each under
# the per-process open-file limit, each from its own slice of loopback source addresses),
# holds --conns connections, publishes a broadcast every --broadcast-every-s once everyone
# is connected, and reads server CPU/RSS and the kernel's Slab from /proc. Prints a
# Markdown summary (or the JSON report with --json) and keeps the report and SVG plot.
#
# Usage: tools/bench-box.sh [--conns 128000] [--duration-s 600] [--broadcast-every-s 5]
#                           [--rate 20000] [--conns-per-server 18000] [--conns-per-swarm 19000]
#                           [--server-max-connections 19500] [--backlog 4096] [--size 100]
#                           [--protocol native|raw|socketio] [--publish-cmd CMD]
#                           [--sources 127.0.1.1-127.0.1.64]
#                           [--workers-per-swarm 1] [--inflight-max 2000] [--out-dir DIR] [--volley-bin PATH]
#                           [--no-build] [--json] [-- EXTRA VOLLEY SERVE FLAGS...]
#
#   --conns N              connections to hold (default 128000)
#   --duration-s D         run time of the swarm workers, connecting included (default 600)
#   --broadcast-every-s S  seconds between broadcasts (default 5)
#   --rate R               connection attempts per second, all swarm workers together
#                          (default 20000)
#   --conns-per-server C   K = ceil(N / C) volley processes (default 18000: SO_REUSEPORT spreads
#                          by hash, not evenly, so leave room under --server-max-connections)
#   --conns-per-swarm C    most connections per swarm worker process (default 19000; each
#                          process has RLIMIT_NOFILE 20000 here)
#   --server-max-connections M  volley --max-connections per process (default 19500)
#   --backlog B            volley --backlog (default 4096; the kernel caps it at somaxconn)
#   --size B               broadcast body bytes (default 100)
#   --protocol P           native (JSON envelope, default), raw (/ws?protocol=raw) or socketio
#                          (Engine.IO 4 over WebSocket on /socket.io/, CONNECT `/`, each push
#                          read as the `message` event's argument)
#   --publish-cmd CMD      publish through CMD instead of POST /api/broadcast (swarm run
#                          --publish-cmd: one JSON body per line on its stdin, `ok` back);
#                          the string REDIS_URL in CMD is replaced by the cluster's Redis URL
#   --sources RANGE        loopback source addresses, split among the swarm workers
#                          (default 127.0.1.1-127.0.1.64)
#   --workers-per-swarm W  threads per swarm worker process (default 1)
#   --inflight-max F       connection attempts in flight, all swarm workers together
#                          (default 2000)
#   --out-dir DIR          where box.json, box.svg and the cluster logs go (default: a new
#                          /tmp/bench-box.XXXXXX; kept)
#   --volley-bin PATH      server binary (default target/release/volley)
#   --no-build             do not run `cargo build --release -p volley -p swarm` first
#   --json                 print the swarm report (JSON) instead of Markdown
#   -- FLAGS...            passed to every `volley serve` (e.g. -- --ping-interval-s 25)
#
# Only what this script starts is stopped, by PID: cluster.sh (which stops its volley
# processes and redis-server) and `swarm run` (which stops its workers). Every wait is
# bounded; the whole run is limited to duration + 900 s.
set -euo pipefail

CONNS=128000
DURATION_S=600
EVERY_S=5
RATE=20000
PER_SERVER=18000
PER_SWARM=19000
SERVER_MAX=19500
BACKLOG=4096
SIZE=100
PROTOCOL=native
PUBLISH_CMD=""
SOURCES=127.0.1.1-127.0.1.64
WORKERS=1
INFLIGHT=2000
OUT_DIR=""
VOLLEY_BIN=""
BUILD=1
JSON=0
EXTRA=()

PROG=bench-box
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ARGS=("$@")
while [[ $# -gt 0 ]]; do
    case "$1" in
        --conns) need_value "$@"; CONNS="$2"; shift 2 ;;
        --duration-s) need_value "$@"; DURATION_S="$2"; shift 2 ;;
        --broadcast-every-s) need_value "$@"; EVERY_S="$2"; shift 2 ;;
        --rate) need_value "$@"; RATE="$2"; shift 2 ;;
        --conns-per-server) need_value "$@"; PER_SERVER="$2"; shift 2 ;;
        --conns-per-swarm) need_value "$@"; PER_SWARM="$2"; shift 2 ;;
        --server-max-connections) need_value "$@"; SERVER_MAX="$2"; shift 2 ;;
        --backlog) need_value "$@"; BACKLOG="$2"; shift 2 ;;
        --size) need_value "$@"; SIZE="$2"; shift 2 ;;
        --protocol) need_value "$@"; PROTOCOL="$2"; shift 2 ;;
        --publish-cmd) need_value "$@"; PUBLISH_CMD="$2"; shift 2 ;;
        --sources) need_value "$@"; SOURCES="$2"; shift 2 ;;
        --workers-per-swarm) need_value "$@"; WORKERS="$2"; shift 2 ;;
        --inflight-max) need_value "$@"; INFLIGHT="$2"; shift 2 ;;
        --out-dir) need_value "$@"; OUT_DIR="$2"; shift 2 ;;
        --volley-bin) need_value "$@"; VOLLEY_BIN="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --json) JSON=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) die "unknown argument $1; see --help" ;;
    esac
done
for pair in "--conns:$CONNS" "--duration-s:$DURATION_S" "--rate:$RATE" "--conns-per-server:$PER_SERVER" \
            "--conns-per-swarm:$PER_SWARM" "--server-max-connections:$SERVER_MAX" "--backlog:$BACKLOG" \
            "--size:$SIZE" "--workers-per-swarm:$WORKERS" "--inflight-max:$INFLIGHT"; do
    is_uint "${pair#*:}" || die "${pair%%:*} ${pair#*:}: must be a whole number"
done
[[ "$EVERY_S" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--broadcast-every-s $EVERY_S: must be a number"
(( CONNS >= 1 && CONNS <= 1000000 )) || die "--conns $CONNS: must be 1..=1000000"
(( DURATION_S >= 10 && DURATION_S <= 86400 )) || die "--duration-s $DURATION_S: must be 10..=86400"
(( PER_SERVER >= 1 && PER_SERVER <= SERVER_MAX )) || die "--conns-per-server $PER_SERVER: must be 1..=--server-max-connections ($SERVER_MAX)"
case "$PROTOCOL" in native|raw|socketio) ;; *) die "--protocol $PROTOCOL: must be native, raw or socketio" ;; esac

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
COMMAND="tools/bench-box.sh ${ARGS[*]}"
if (( BUILD )); then
    log "building release volley and swarm (cargo build --release -p volley -p swarm)"
    timeout 1800 cargo build --release -p volley -p swarm >&2 || die "cargo build failed"
fi
VOLLEY="${VOLLEY_BIN:-$REPO/target/release/volley}"
SWARM="$REPO/target/release/swarm"
[[ -x "$VOLLEY" ]] || die "$VOLLEY: no such executable; build it or pass --volley-bin"
[[ -x "$SWARM" ]] || die "$SWARM: no such executable; run without --no-build"

K=$(( (CONNS + PER_SERVER - 1) / PER_SERVER ))
if [[ -z "$OUT_DIR" ]]; then OUT_DIR="$(mktemp -d /tmp/bench-box.XXXXXX)"; else mkdir -p "$OUT_DIR"; fi
STATE="$OUT_DIR/cluster.state.json"
rm -f "$STATE"

CLUSTER_PID=""
SWARM_PID=""
WATCHDOG_PID=""
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
stop_pid() { # pid name grace_s
    local pid="$1" name="$2" grace="$3"
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $(( grace * 10 ))); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    log "$name (pid $pid) still running $grace s after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n "$SWARM_PID" ]] && stop_pid "$SWARM_PID" "swarm run" 30
    [[ -n "$CLUSTER_PID" ]] && { stop_pid "$CLUSTER_PID" "cluster.sh" 40; wait "$CLUSTER_PID" 2>/dev/null || true; }
    [[ -n "$WATCHDOG_PID" ]] && kill -TERM "$WATCHDOG_PID" 2>/dev/null || true
    log "report, plot and logs are in $OUT_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "stopped (signal or time limit)"; exit 124' TERM

MAIN_PID=$$
LIMIT_S=$(( DURATION_S + 900 ))
( s=""; trap '[[ -n "$s" ]] && kill "$s" 2>/dev/null; exit 0' TERM
  sleep "$LIMIT_S" & s=$!; wait "$s"; kill -TERM "$MAIN_PID" 2>/dev/null ) &
WATCHDOG_PID=$!

# --- cluster ------------------------------------------------------------------------------
log "starting $K volley processes (1 shard each) + redis-server via tools/cluster.sh; logs in $OUT_DIR/cluster"
tools/cluster.sh --processes "$K" --port 0 --shards-per-process 1 \
    --max-connections-per-process "$SERVER_MAX" --duration-s $(( DURATION_S + 600 )) \
    --status-every-s 60 --log-dir "$OUT_DIR/cluster" --state-file "$STATE" --volley-bin "$VOLLEY" \
    -- --backlog "$BACKLOG" "${EXTRA[@]}" >"$OUT_DIR/cluster.out" 2>"$OUT_DIR/cluster.err" &
CLUSTER_PID=$!
for _ in $(seq 1 600); do
    [[ -s "$STATE" ]] && break
    kill -0 "$CLUSTER_PID" 2>/dev/null || { cat "$OUT_DIR/cluster.err" >&2; die "cluster.sh exited at start (above)"; }
    sleep 0.1
done
[[ -s "$STATE" ]] || die "cluster not up after 60 s; see $OUT_DIR/cluster.err"
read -r PORT PIDS REDIS_PID REDIS_URL < <(python3 -c 'import json,sys
s = json.load(open(sys.argv[1]))
print(s["port"], ",".join(map(str, s["volley_pids"])), s["redis_pid"], s["redis_url"])' "$STATE")
URL="ws://127.0.0.1:$PORT/ws"
[[ "$PROTOCOL" == raw ]] && URL="$URL?protocol=raw"
RUN_EXTRA=()
[[ "$PROTOCOL" == socketio ]] && RUN_EXTRA+=(--socketio)
[[ -n "$PUBLISH_CMD" ]] && RUN_EXTRA+=(--publish-cmd "${PUBLISH_CMD//REDIS_URL/$REDIS_URL}")
log "cluster up on port $PORT: volley pids $PIDS, redis pid $REDIS_PID"

# --- swarm ------------------------------------------------------------------------------
"$SWARM" run --url "$URL" --conns "$CONNS" --conns-per-process "$PER_SWARM" --rate "$RATE" \
    --duration-s "$DURATION_S" --broadcast-every-s "$EVERY_S" --size "$SIZE" --sources "$SOURCES" \
    --workers-per-process "$WORKERS" --inflight-max "$INFLIGHT" --server-pids "$PIDS" --redis-pid "$REDIS_PID" \
    --report "$OUT_DIR/box.json" --plot "$OUT_DIR/box.svg" "${RUN_EXTRA[@]}" \
    --title "volley box scenario: $CONNS connections, $K processes, a broadcast every $EVERY_S s" \
    >"$OUT_DIR/swarm.out" 2> >(tee "$OUT_DIR/swarm.err" >&2) &
SWARM_PID=$!
# Mid-run: open socket fds per volley process (its share of the clients, + a few of its own).
( sleep $(( DURATION_S / 2 )); for pid in ${PIDS//,/ }; do
      printf '%s ' "$(find /proc/"$pid"/fd -lname 'socket:*' 2>/dev/null | wc -l)"; done \
      >"$OUT_DIR/sockets-mid-run.txt.tmp"; mv "$OUT_DIR/sockets-mid-run.txt.tmp" "$OUT_DIR/sockets-mid-run.txt" ) &
MID_PID=$!
set +e
wait "$SWARM_PID"
SWARM_RC=$?
set -e
SWARM_PID=""
kill "$MID_PID" 2>/dev/null || true
[[ $SWARM_RC -eq 0 && -s "$OUT_DIR/box.json" ]] || die "swarm run failed (exit $SWARM_RC); see $OUT_DIR/swarm.err"

PER_PROC="$(cat "$OUT_DIR/sockets-mid-run.txt" 2>/dev/null || echo -)"

# Stop the cluster now (and collect exit codes from its log).
stop_pid "$CLUSTER_PID" "cluster.sh" 40
wait "$CLUSTER_PID" 2>/dev/null || true
CLUSTER_PID=""

if (( JSON )); then
    cat "$OUT_DIR/box.json"
    exit 0
fi
COMMAND="$COMMAND" OUT_DIR="$OUT_DIR" K="$K" PER_PROC="$PER_PROC" KERNEL="$(uname -r)" NPROC="$(nproc)" \
DATE="$(date -u +%Y-%m-%d)" SOMAXCONN="$(cat /proc/sys/net/core/somaxconn)" \
SYNBACKLOG="$(cat /proc/sys/net/ipv4/tcp_max_syn_backlog)" PORTS="$(cat /proc/sys/net/ipv4/ip_local_port_range | tr '\t' ' ')" \
NOFILE="$(ulimit -Hn)" BACKLOG="$BACKLOG" LOAD_BEFORE="$LOAD_BEFORE" LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)" python3 - <<'PY'
import glob, json, os, re
e = os.environ
r = json.load(open(os.path.join(e["OUT_DIR"], "box.json")))
# Start-up lines, in the plain or the tracing format (`<time> <LEVEL> volley: ...`).
known = [r"volley: warning: open file limit is", r"volley: listening on", r"volley: dev console at",
         r"volley: WARNING: no --jwt-secret", r"volley: no --api-key:",
         r"redis (subscriber|command) link to \S+ is up( shard=\d+)?$"]
odd = []
for p in sorted(glob.glob(os.path.join(e["OUT_DIR"], "cluster", "volley*.log"))):
    for line in open(p, errors="replace"):
        line = line.rstrip("\n")
        if line and not any(re.search(k, line) for k in known):
            odd.append(os.path.basename(p) + ": " + line)
codes = re.findall(r"exited with code (\d+)", open(os.path.join(e["OUT_DIR"], "cluster.err")).read())
lc, lat = r["last_client_ms"], r["latency_ms"]
def v(x, unit=""):
    return "-" if x is None else f"{x}{unit}"
rows = [
    ("volley processes (1 shard each, pinned round-robin) + redis-server", f"{e['K']}"),
    ("swarm worker processes", str(r["worker_processes"])),
    ("connections held / requested", f"{r['conns_connected']} / {r['conns_requested']}"),
    ("socket fds per volley process, mid-run", e["PER_PROC"]),
    ("connect failures", f"{r['conns_failed']} {json.dumps(r['connect_failures']) if r['connect_failures'] else ''}"),
    ("connect time / accept rate", f"{v(r['connect_time_s'], ' s')} / {v(r['accept_rate_per_s'], ' conn/s')} (swarm asked for {r['rate_requested_per_s']:.0f}/s)"),
    ("server RSS per connection (sum of VmRSS deltas / conns), idle", v(r["server_rss_per_conn_bytes"], " B")),
    ("same, after the last broadcast", v(r["server_rss_per_conn_loaded_bytes"], " B")),
    ("kernel Slab delta per connection (both socket ends are on this box)", v(r["slab_per_conn_bytes"], " B")),
    ("server CPU while idle (all volley processes)", v(r["server_cpu_idle_ms_per_s"], " ms/s")),
    ("broadcasts sent / answered 200 / delivered", f"{r['broadcasts_sent']} / {r['broadcasts_ok']} / {r.get('broadcasts_delivered', '-')} (every {r['broadcast_every_s']} s over {v(r['broadcast_phase_s'], ' s')})"),
    ("POST answer time p50 / max", f"{v(sorted(x['post_ms'] for x in r['rounds'])[len(r['rounds'])//2] if r['rounds'] else None)} / {v(max((x['post_ms'] for x in r['rounds']), default=None))} ms"),
    ("messages expected / delivered", f"{r['messages_expected']} / {r['messages_delivered']}"),
    ("lost / duplicated / gaps / disconnects", f"{r['lost']} / {r['duplicates']} / {r['gaps']} / {r['disconnects']} {json.dumps(r['disconnect_reasons']) if r['disconnect_reasons'] else ''}"),
    ("server CPU per delivered message, whole broadcast phase (pings, sweeps included)", v(r["server_cpu_us_per_msg"], " µs")),
    ("server CPU per delivered message, delivery windows only", v(r["server_cpu_us_per_msg_delivery_windows"], " µs")),
    ("redis-server CPU per delivered message", v(r["redis_cpu_us_per_msg"], " µs")),
    ("swarm CPU per delivered message (same cores)", v(r["swarm_cpu_us_per_msg"], " µs")),
    ("time until the last client had a broadcast: median / p90 / max", f"{v(lc['median'])} / {v(lc['p90'])} / {v(lc['max'])} ms"),
    (f"broadcasts whose last client had it within {lc['target']:.0f} ms", f"{lc['rounds_within_target']} of {lc['rounds']}"),
    ("latency p50 / p99 / p99.9 / max (body timestamp to client)", f"{v(lat['p50'])} / {v(lat['p99'])} / {v(lat['p999'])} / {v(lat['max'])} ms"),
    ("pings answered by clients", str(r["pings_received"])),
    ("volley exit codes after SIGTERM; unexpected stderr lines", f"{','.join(codes) or '-'}; {len(odd)}"),
]
print(f"### Box scenario ({e['DATE']})\n")
print(f"Machine: {e['NPROC']} cores (servers, Redis and swarm share them), Linux {e['KERNEL']}, loopback; "
      f"somaxconn {e['SOMAXCONN']}, tcp_max_syn_backlog {e['SYNBACKLOG']}, ip_local_port_range {e['PORTS']}, "
      f"nofile {e['NOFILE']} per process; volley --backlog {e['BACKLOG']}. "
      f"Load average before / after: {e['LOAD_BEFORE']} / {e['LOAD_AFTER']} (the box is shared).\n")
print(f"Command: `{e['COMMAND']}`\n")
print("| figure | value |\n|---|---|")
for k, val in rows:
    print(f"| {k} | {val} |")
print(f"\nReport: {e['OUT_DIR']}/box.json, plot: {e['OUT_DIR']}/box.svg")
if odd:
    print("\nUnexpected volley stderr lines (first ones):\n\n```")
    print("\n".join(odd[:20]))
    print("```")
PY
