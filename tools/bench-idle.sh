#!/usr/bin/env bash
# bench-idle.sh: memory per idle connection and CPU per delivered broadcast, on loopback.
#
# Usage: tools/bench-idle.sh [--conns 15000] [--broadcasts 20] [--interval-ms 1000]
#                            [--shards 2] [--size 100] [--rate 5000] [--timeout-s 900]
#                            [--volley-bin PATH] [--no-build] [--json] [--keep-logs]
#                            [--socketio] [--redis]
#
#   Builds release volley and swarm, starts `volley serve` on a free 127.0.0.1 port, opens
#   --conns WebSocket connections with `swarm hold` (several swarm processes of at most
#   19000 each when needed: RLIMIT_NOFILE is 20000 here), waits until /api/stats counts
#   them all, then reports:
#     - server RSS per connection   = (VmRSS after - VmRSS before) / conns
#     - kernel slab per connection  = (Slab: after - Slab: before in /proc/meminfo) / conns
#                                     (both socket ends live on this box, so this is per pair)
#     - server CPU per delivered message = (utime+stime delta) / (broadcasts x conns),
#       over `swarm publish --count broadcasts` and until every client has every message
#     - lost / duplicated / latency figures from the swarm reports
#   and prints a Markdown block for BENCHMARKS.md (or JSON with --json).
#
#   --conns N          connections to hold (default 15000)
#   --broadcasts K     broadcasts to publish (default 20)
#   --interval-ms I    time between broadcasts (default 1000)
#   --shards S         volley --shards (default 2)
#   --size B           broadcast body size in bytes (default 100)
#   --rate R           connections opened per second, all swarm processes together (default 5000)
#   --timeout-s T      hard limit for the whole run after the build (default 900)
#   --volley-bin PATH  server binary to test (default target/release/volley)
#   --no-build         use the binaries already in target/release
#   --json             print the figures as one JSON object instead of Markdown
#   --keep-logs        keep the log directory (its path is printed); default: removed on exit
#   --socketio         the clients are socket.io (Engine.IO over WebSocket, `swarm hold
#                      --socketio`): each CONNECTs / and gets broadcasts as message events
#
# Only the processes this script starts are stopped (by PID): the server (SIGTERM, then
# SIGKILL after 15 s) and the swarm processes. Loopback only; every wait is bounded.
set -euo pipefail

CONNS=15000
BROADCASTS=20
INTERVAL_MS=1000
SHARDS=2
SIZE=100
RATE=5000
TIMEOUT_S=900
VOLLEY_BIN=""
BUILD=1
JSON=0
KEEP_LOGS=0
# One swarm process holds at most this many connections (RLIMIT_NOFILE 20000 minus spare fds).
CONNS_PER_SWARM_MAX=19000
# Seconds to wait for /healthz after starting the server.
HEALTH_WAIT_S=20
# Seconds without new messages after which delivery is taken as finished.
DELIVERY_QUIET_S=3
# Most seconds to wait for delivery after the last broadcast was answered.
DELIVERY_WAIT_S=60

PROG=bench-idle
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SOCKETIO=()
REDIS=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --conns) need_value "$@"; CONNS="$2"; shift 2 ;;
        --broadcasts) need_value "$@"; BROADCASTS="$2"; shift 2 ;;
        --interval-ms) need_value "$@"; INTERVAL_MS="$2"; shift 2 ;;
        --shards) need_value "$@"; SHARDS="$2"; shift 2 ;;
        --size) need_value "$@"; SIZE="$2"; shift 2 ;;
        --rate) need_value "$@"; RATE="$2"; shift 2 ;;
        --timeout-s) need_value "$@"; TIMEOUT_S="$2"; shift 2 ;;
        --volley-bin) need_value "$@"; VOLLEY_BIN="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --json) JSON=1; shift ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        --socketio) SOCKETIO=(--socketio); shift ;;
        --redis) REDIS=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1; see --help" ;;
    esac
done
for pair in "--conns:$CONNS" "--broadcasts:$BROADCASTS" "--interval-ms:$INTERVAL_MS" \
            "--shards:$SHARDS" "--size:$SIZE" "--rate:$RATE" "--timeout-s:$TIMEOUT_S"; do
    is_uint "${pair#*:}" || die "${pair%%:*} ${pair#*:}: must be a whole number"
done
(( CONNS >= 1 && CONNS <= 200000 )) || die "--conns $CONNS: must be 1..=200000"
(( BROADCASTS >= 1 && BROADCASTS <= 500 )) || die "--broadcasts $BROADCASTS: must be 1..=500 (swarm tracks 511 seqs)"
(( RATE >= 1 )) || die "--rate 0: must be at least 1"
(( TIMEOUT_S >= 30 )) || die "--timeout-s $TIMEOUT_S: must be at least 30"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
COMMAND="tools/bench-idle.sh --conns $CONNS --broadcasts $BROADCASTS --interval-ms $INTERVAL_MS --shards $SHARDS --size $SIZE --rate $RATE${SOCKETIO[*]:+ --socketio}$( (( REDIS )) && echo " --redis" || true)"


if (( BUILD )); then
    log "building release volley and swarm (cargo build --release -p volley -p swarm)"
    timeout 1800 cargo build --release -p volley -p swarm >&2 || die "cargo build failed"
fi
VOLLEY="${VOLLEY_BIN:-$REPO/target/release/volley}"
SWARM="$REPO/target/release/swarm"
[[ -x "$VOLLEY" ]] || die "$VOLLEY: no such executable; build it or pass --volley-bin"
[[ -x "$SWARM" ]] || die "$SWARM: no such executable; run without --no-build"

LOGS="$(mktemp -d /tmp/bench-idle.XXXXXX)"
SERVER_PID=""
REDIS_PID=""
SWARM_PIDS=()
PUBLISH_PID=""
WATCHDOG_PID=""

# Stops only what this script started, by PID.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$PUBLISH_PID" ]] && kill -0 "$PUBLISH_PID" 2>/dev/null; then
        kill -TERM "$PUBLISH_PID" 2>/dev/null || true
    fi
    for pid in "${SWARM_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && kill -INT "$pid" 2>/dev/null || true
    done
    for pid in "${SWARM_PIDS[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            log "server $SERVER_PID did not stop 15 s after SIGTERM; sending SIGKILL"
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
    fi
    if [[ -n "$REDIS_PID" ]] && kill -0 "$REDIS_PID" 2>/dev/null; then
        kill -TERM "$REDIS_PID" 2>/dev/null || true
        # It writes its log on the way out: wait, so the log directory can be removed.
        for _ in $(seq 1 100); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$REDIS_PID" 2>/dev/null && kill -KILL "$REDIS_PID" 2>/dev/null || true
    fi
    if [[ -n "$WATCHDOG_PID" ]]; then kill -TERM "$WATCHDOG_PID" 2>/dev/null || true; fi
    if (( KEEP_LOGS )) || (( rc != 0 )); then
        log "logs kept in $LOGS"
    else
        rm -rf "$LOGS"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "stopped (signal or --timeout-s $TIMEOUT_S reached)"; exit 124' TERM

# Overall limit: a watchdog that sends SIGTERM to this script; it kills its own sleep.
MAIN_PID=$$
( s=""; trap '[[ -n "$s" ]] && kill "$s" 2>/dev/null; exit 0' TERM
  sleep "$TIMEOUT_S" & s=$!; wait "$s"; kill -TERM "$MAIN_PID" 2>/dev/null ) &
WATCHDOG_PID=$!

# --- helpers --------------------------------------------------------------------------
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status"; }
slab_kb() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
cpu_ticks() { # utime + stime; fields after the ")" that ends comm.
    local stat; stat="$(cat "/proc/$SERVER_PID/stat")"; stat="${stat##*) }"
    awk '{print $12 + $13}' <<<"$stat"
}
cpu_ns() { # run time of every thread, from schedstat (ns): a finer cross-check of cpu_ticks
    cat /proc/"$SERVER_PID"/task/*/schedstat 2>/dev/null | awk '{t += $1} END {printf "%.0f\n", t}'
}
stats_conns() { # connections the server counts, or empty
    curl -s --max-time 2 "http://127.0.0.1:$PORT/api/stats" >"$LOGS/stats.json" 2>/dev/null || { echo ""; return; }
    python3 - "$LOGS/stats.json" <<'PY' 2>/dev/null || echo ""
import json, sys
d = json.load(open(sys.argv[1]))
for path in (("process_connections",), ("total", "connections"), ("total", "connections_open"), ("connections",)):
    v = d
    for k in path:
        v = v.get(k) if isinstance(v, dict) else None
    if isinstance(v, int):
        print(v)
        break
PY
}
swarm_msgs() { # sum of the latest msgs= over every swarm's stderr
    local total=0 n
    for i in "${!SWARM_PIDS[@]}"; do
        n="$(grep -o 'msgs=[0-9]*' "$LOGS/swarm$i.err" 2>/dev/null | tail -1 | cut -d= -f2)"
        total=$(( total + ${n:-0} ))
    done
    echo "$total"
}
server_alive() { kill -0 "$SERVER_PID" 2>/dev/null || die "server exited early; see $LOGS/server.log"; }

# --- server ---------------------------------------------------------------------------
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
CLK_TCK="$(getconf CLK_TCK)"
REDIS_ARGS=()
if (( REDIS )); then
    REDIS_SERVER="$(command -v redis-server || true)"
    [[ -n "$REDIS_SERVER" ]] || die "--redis: redis-server not found; install it (Debian: apt-get install redis-server)"
    REDIS_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    "$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        --daemonize no --dir "$LOGS" --logfile "$LOGS/redis.log" >/dev/null 2>&1 &
    REDIS_PID=$!
    for i in $(seq 1 100); do
        kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited at start; see $LOGS/redis.log"
        [[ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" == *PONG* ]] && break
        (( i == 100 )) && die "redis-server on port $REDIS_PORT did not answer PING in 10 s"
        sleep 0.1
    done
    REDIS_ARGS=(--redis "redis://127.0.0.1:$REDIS_PORT")
fi
log "starting $VOLLEY serve --listen 127.0.0.1:$PORT --shards $SHARDS ${REDIS_ARGS[*]} (logs in $LOGS)"
"$VOLLEY" serve --listen "127.0.0.1:$PORT" --shards "$SHARDS" "${REDIS_ARGS[@]}" >"$LOGS/server.log" 2>&1 &
SERVER_PID=$!
for i in $(seq 1 $(( HEALTH_WAIT_S * 10 ))); do
    server_alive
    curl -sf --max-time 1 "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    (( i == HEALTH_WAIT_S * 10 )) && die "no answer on /healthz after ${HEALTH_WAIT_S} s; see $LOGS/server.log"
    sleep 0.1
done
sleep 0.5
RSS_BEFORE_KB="$(rss_kb)"
SLAB_BEFORE_KB="$(slab_kb)"
log "server pid $SERVER_PID up; VmRSS ${RSS_BEFORE_KB} kB; Slab ${SLAB_BEFORE_KB} kB"

# --- swarm hold -----------------------------------------------------------------------
PROCS=$(( (CONNS + CONNS_PER_SWARM_MAX - 1) / CONNS_PER_SWARM_MAX ))
CONNECT_WAIT_S=$(( CONNS / RATE + 30 ))
# Long enough for connecting, the checks, every broadcast and delivery; the script ends
# the swarms earlier with SIGINT once delivery is done.
HOLD_S=$(( CONNECT_WAIT_S + 5 + BROADCASTS * INTERVAL_MS / 1000 + DELIVERY_WAIT_S + 30 ))
PROC_RATE=$(( (RATE + PROCS - 1) / PROCS ))
for (( i = 0; i < PROCS; i++ )); do
    n=$(( CONNS / PROCS + (i < CONNS % PROCS ? 1 : 0) ))
    # Each swarm process gets its own 8 source addresses: 127.0.<i>.1-8.
    "$SWARM" hold "${SOCKETIO[@]}" --url "ws://127.0.0.1:$PORT/ws" --conns "$n" --rate "$PROC_RATE" \
        --duration-s "$HOLD_S" --sources "127.0.$i.1-127.0.$i.8" \
        >"$LOGS/swarm$i.json" 2>"$LOGS/swarm$i.err" &
    SWARM_PIDS+=($!)
done
log "started $PROCS swarm process(es) (pids ${SWARM_PIDS[*]}) for $CONNS connections at $RATE/s"

CONNECTED=""
START_WAIT=$SECONDS
while (( SECONDS - START_WAIT < CONNECT_WAIT_S )); do
    server_alive
    CONNECTED="$(stats_conns)"
    [[ -n "$CONNECTED" ]] && (( CONNECTED >= CONNS )) && break
    alive=0; for pid in "${SWARM_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.5
done
[[ -n "$CONNECTED" ]] || die "/api/stats gave no connection count; see $LOGS/stats.json"
if (( CONNECTED < CONNS )); then
    log "WARNING: the server counts $CONNECTED of $CONNS connections after $(( SECONDS - START_WAIT )) s; figures below use $CONNECTED"
fi
N="$CONNECTED"
(( N > 0 )) || die "no connection was established; see $LOGS/swarm0.err"
log "server counts $N connections; settling 2 s"
CPU_IDLE0="$(cpu_ticks)"
sleep 2
CPU_IDLE1="$(cpu_ticks)"
RSS_AFTER_KB="$(rss_kb)"
SLAB_AFTER_KB="$(slab_kb)"

# --- publish --------------------------------------------------------------------------
CPU_BEFORE="$(cpu_ticks)"
CPU_NS_BEFORE="$(cpu_ns)"
MSGS_BEFORE="$(swarm_msgs)"
log "publishing $BROADCASTS broadcasts every $INTERVAL_MS ms"
"$SWARM" publish --api "http://127.0.0.1:$PORT" --count "$BROADCASTS" --interval-ms "$INTERVAL_MS" \
    --size "$SIZE" >"$LOGS/publish.json" 2>"$LOGS/publish.err" &
PUBLISH_PID=$!
wait "$PUBLISH_PID" || die "swarm publish failed; see $LOGS/publish.err"
PUBLISH_PID=""
EXPECTED=$(( BROADCASTS * N ))
last="" quiet_since=$SECONDS wait_start=$SECONDS
while (( SECONDS - wait_start < DELIVERY_WAIT_S )); do
    got=$(( $(swarm_msgs) - MSGS_BEFORE ))
    (( got >= EXPECTED )) && break
    if [[ "$got" != "$last" ]]; then last="$got"; quiet_since=$SECONDS; fi
    (( SECONDS - quiet_since >= DELIVERY_QUIET_S )) && break
    sleep 0.2
done
CPU_AFTER="$(cpu_ticks)"
CPU_NS_AFTER="$(cpu_ns)"
DELIVERY_WAIT_USED=$(( SECONDS - wait_start ))

# --- stop the swarms (they print their reports), then the server ----------------------
for pid in "${SWARM_PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
for pid in "${SWARM_PIDS[@]}"; do wait "$pid" || log "swarm $pid exited with $?"; done
SWARM_PIDS=()
SHUTDOWN_START=$(date +%s.%N)
kill -TERM "$SERVER_PID"
SERVER_RC=""
for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$SERVER_PID" 2>/dev/null; then
    log "server did not stop 15 s after SIGTERM; sending SIGKILL"
    kill -KILL "$SERVER_PID" 2>/dev/null || true
fi
wait "$SERVER_PID" && SERVER_RC=0 || SERVER_RC=$?
SHUTDOWN_S="$(python3 -c "import sys,time; print(round(time.time()-float(sys.argv[1]),2))" "$SHUTDOWN_START")"
SERVER_PID=""

# --- figures --------------------------------------------------------------------------
export CONNS N BROADCASTS INTERVAL_MS SHARDS SIZE RATE PROCS CLK_TCK RSS_BEFORE_KB RSS_AFTER_KB \
    SLAB_BEFORE_KB SLAB_AFTER_KB CPU_IDLE0 CPU_IDLE1 CPU_BEFORE CPU_AFTER CPU_NS_BEFORE CPU_NS_AFTER SERVER_RC SHUTDOWN_S \
    DELIVERY_WAIT_USED COMMAND LOGS JSON
KERNEL="$(uname -r)" NPROC="$(nproc)" DATE="$(date -u +%Y-%m-%d)" \
python3 - <<'PY'
import json, os, glob
e = os.environ
i = lambda k: int(e[k])
n, k = i("N"), i("BROADCASTS")
tick_us = 1e6 / i("CLK_TCK")
reports = []
for path in sorted(glob.glob(os.path.join(e["LOGS"], "swarm*.json"))):
    try:
        reports.append(json.load(open(path)))
    except Exception:
        pass
pub = {}
try:
    pub = json.load(open(os.path.join(e["LOGS"], "publish.json")))
except Exception:
    pass
s = lambda key: sum(r.get(key) or 0 for r in reports)
probes, dups = s("probes_received"), s("duplicates")
expected = k * n
lat = [r.get("latency_us", {}) for r in reports]
worst = lambda key: max((l.get(key) or 0 for l in lat), default=None)
last_rx = [row["last_receive_us"] for r in reports for row in r.get("seqs", [])]
per_seq_last = {}
for r in reports:
    for row in r.get("seqs", []):
        per_seq_last[row["seq"]] = max(per_seq_last.get(row["seq"], 0), row["last_receive_us"])
cpu_us = (i("CPU_AFTER") - i("CPU_BEFORE")) * tick_us
fig = {
    "date": e["DATE"], "kernel": e["KERNEL"], "nproc": int(e["NPROC"]), "command": e["COMMAND"],
    "conns_requested": i("CONNS"), "conns_counted_by_server": n,
    "conns_connected_by_swarm": s("conns_connected"), "connect_failures": s("conns_failed"),
    "swarm_processes": i("PROCS"),
    "connect_time_s": max((r.get("connect_time_s") or 0 for r in reports), default=None),
    "server_rss_before_kb": i("RSS_BEFORE_KB"), "server_rss_after_kb": i("RSS_AFTER_KB"),
    "server_rss_per_conn_bytes": round((i("RSS_AFTER_KB") - i("RSS_BEFORE_KB")) * 1024 / n),
    "kernel_slab_per_conn_bytes": round((i("SLAB_AFTER_KB") - i("SLAB_BEFORE_KB")) * 1024 / n),
    "server_cpu_idle_us_per_s": round((i("CPU_IDLE1") - i("CPU_IDLE0")) * tick_us / 2),
    "broadcasts": k, "body_bytes": i("SIZE"),
    "publish_ok": pub.get("ok"), "publish_failed": pub.get("failed"),
    "publish_total_recipients": pub.get("total_recipients"),
    "messages_expected": expected, "messages_received": probes,
    "messages_lost": expected - (probes - dups), "duplicates": dups, "gaps": s("gaps"),
    "disconnects": s("disconnects"),
    "server_cpu_us": round(cpu_us),
    "server_cpu_us_per_message": round(cpu_us / expected, 3) if expected else None,
    "cpu_tick_us": round(tick_us),
    "server_cpu_us_per_message_schedstat": round((i("CPU_NS_AFTER") - i("CPU_NS_BEFORE")) / 1000 / expected, 3) if expected else None,
    "latency_p50_us": worst("p50"), "latency_p99_us": worst("p99"), "latency_max_us": worst("max"),
    "last_receive_us_median": sorted(per_seq_last.values())[len(per_seq_last) // 2] if per_seq_last else None,
    "last_receive_us_max": max(per_seq_last.values(), default=None),
    "delivery_wait_s": i("DELIVERY_WAIT_USED"),
    "server_exit_code": int(e["SERVER_RC"]) if e["SERVER_RC"] else None,
    "server_shutdown_s": float(e["SHUTDOWN_S"]),
}
if e["JSON"] == "1":
    print(json.dumps(fig, indent=2))
else:
    note = "" if len(reports) <= 1 else " (worst of the swarm processes)"
    print(f"""### Idle connections and broadcast cost ({fig['date']})

Machine: Linux {fig['kernel']}, {fig['nproc']} cores (server and swarm share them), loopback.
Command: `{fig['command']}`

| figure | value |
| --- | --- |
| connections held (server count / requested) | {n} / {fig['conns_requested']} ({fig['connect_failures']} connect failures, {fig['swarm_processes']} swarm process(es), connected in {fig['connect_time_s']} s) |
| server RSS per idle connection | {fig['server_rss_per_conn_bytes']} B (VmRSS {fig['server_rss_before_kb']} -> {fig['server_rss_after_kb']} kB) |
| kernel slab per connection (both socket ends) | {fig['kernel_slab_per_conn_bytes']} B |
| server CPU while idle | {fig['server_cpu_idle_us_per_s']} µs/s |
| broadcasts | {k} x {fig['body_bytes']} B, every {e['INTERVAL_MS']} ms; {fig['publish_ok']} answered 200, {fig['publish_total_recipients']} recipients in total |
| messages expected / received | {expected} / {probes} |
| lost / duplicated / gaps | {fig['messages_lost']} / {dups} / {fig['gaps']} |
| disconnects during the run | {fig['disconnects']} |
| server CPU per delivered message | {fig['server_cpu_us_per_message']} µs ({fig['server_cpu_us']} µs in total, tick {fig['cpu_tick_us']} µs; schedstat says {fig['server_cpu_us_per_message_schedstat']} µs) |
| latency p50 / p99 / max{note} | {fig['latency_p50_us']} / {fig['latency_p99_us']} / {fig['latency_max_us']} µs |
| time until the last client had a broadcast (median / max over seqs) | {fig['last_receive_us_median']} / {fig['last_receive_us_max']} µs |
| server exit after SIGTERM | code {fig['server_exit_code']} in {fig['server_shutdown_s']} s |
""")
PY
