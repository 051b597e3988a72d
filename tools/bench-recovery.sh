#!/usr/bin/env bash
# bench-recovery.sh: a reconnect storm with recovery, on loopback (`swarm storm`).
#
# Usage: tools/bench-recovery.sh [--mode standalone|cluster|both] [--runs 2]
#                                [--clients 1000] [--missed 1000] [--history-size 1000]
#                                [--timeout-s 900] [--volley-bin PATH] [--no-build]
#                                [--keep-logs] [-- extra swarm storm flags...]
#
#   N clients join room `storm` and see one message (seq S0), all close, M messages are
#   published while nobody is connected, then all N reconnect at once with the resume token
#   {"room:storm": S0}. swarm checks every client got exactly S0+1..=S0+M in order and
#   `recovered: true`, and reports the time until the last one caught up and the servers'
#   CPU (utime+stime / schedstat) from the start of the storm to that moment.
#
#   standalone: one `volley serve --shards 2 --history-size H --max-connections 19000`
#               on a free 127.0.0.1 port.
#   cluster:    a redis-server started here on a free port (--save "" --appendonly no) and
#               two volley processes with --redis, --shards 1 each, pinned to different CPUs,
#               on two ports. Clients join through process A, the messages are published
#               through A, and the clients reconnect to process B: B reads the history
#               from Redis. CPU is summed over A and B; redis-server's is reported apart.
#   Every run starts fresh servers (seqs and history start empty). Runs alternate modes
#   with --mode both (standalone, cluster, standalone, cluster, ...).
#
#   --runs K           runs per mode (default 2)
#   --timeout-s T      hard limit for the whole script after the build (default 900)
#   --volley-bin PATH  server binary to test (default target/release/volley)
#   --no-build         use the binaries already in target/release
#   --keep-logs        keep the log directory (its path is printed); default: removed
#
# Prints a Markdown block for BENCHMARKS.md (command, kernel, cores, date, one column per
# run) on stdout, then every swarm report. Only the processes this script starts are
# stopped, by PID: volley (SIGTERM, SIGKILL after 15 s), redis-server, swarm.
set -euo pipefail

MODE=standalone
RUNS=2
CLIENTS=1000
MISSED=1000
HISTORY=1000
TIMEOUT_S=900
VOLLEY_BIN=""
BUILD=1
KEEP_LOGS=0
EXTRA=()
MAX_CONNECTIONS=19000
BUILD_TRIES=10
BUILD_PAUSE_S=30
HEALTH_WAIT_S=20
# One swarm run: connects, storm, live check, closes.
SWARM_TIMEOUT_S=300

PROG=bench-recovery
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --mode) need_value "$@"; MODE="$2"; shift 2 ;;
        --runs) need_value "$@"; RUNS="$2"; shift 2 ;;
        --clients) need_value "$@"; CLIENTS="$2"; shift 2 ;;
        --missed) need_value "$@"; MISSED="$2"; shift 2 ;;
        --history-size) need_value "$@"; HISTORY="$2"; shift 2 ;;
        --timeout-s) need_value "$@"; TIMEOUT_S="$2"; shift 2 ;;
        --volley-bin) need_value "$@"; VOLLEY_BIN="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1; see --help" ;;
    esac
done
case "$MODE" in standalone|cluster|both) ;; *) die "--mode $MODE: use standalone, cluster or both" ;; esac
for pair in "--runs:$RUNS" "--clients:$CLIENTS" "--missed:$MISSED" "--history-size:$HISTORY" "--timeout-s:$TIMEOUT_S"; do
    is_uint "${pair#*:}" || die "${pair%%:*} ${pair#*:}: must be a whole number"
done
(( RUNS >= 1 && RUNS <= 20 )) || die "--runs $RUNS: must be 1..=20"
(( CLIENTS >= 1 && CLIENTS <= MAX_CONNECTIONS )) || die "--clients $CLIENTS: must be 1..=$MAX_CONNECTIONS"
(( MISSED >= 1 )) || die "--missed 0: must be at least 1"
(( HISTORY >= MISSED )) || log "warning: --history-size $HISTORY < --missed $MISSED: expect recovered:false"
(( TIMEOUT_S >= 60 )) || die "--timeout-s $TIMEOUT_S: must be at least 60"
command -v python3 >/dev/null || die "python3 not found (free ports, the report)"
command -v curl >/dev/null || die "curl not found (/healthz)"
if [[ "$MODE" != standalone ]]; then
    REDIS_SERVER="$(command -v redis-server || true)"
    [[ -n "$REDIS_SERVER" ]] || die "redis-server not found (needed for --mode $MODE)"
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
COMMAND="tools/bench-recovery.sh --mode $MODE --runs $RUNS --clients $CLIENTS --missed $MISSED --history-size $HISTORY${EXTRA[*]:+ -- ${EXTRA[*]}}"

if (( BUILD )); then
    for try in $(seq 1 "$BUILD_TRIES"); do
        log "building release volley and swarm (try $try of $BUILD_TRIES)"
        if timeout 1800 cargo build --release -p volley -p swarm >&2; then break; fi
        (( try == BUILD_TRIES )) && die "cargo build failed $BUILD_TRIES times"
        log "build failed (others may be mid-edit); retrying in ${BUILD_PAUSE_S} s"
        sleep "$BUILD_PAUSE_S"
    done
fi
VOLLEY="${VOLLEY_BIN:-$REPO/target/release/volley}"
SWARM="$REPO/target/release/swarm"
[[ -x "$VOLLEY" ]] || die "$VOLLEY: no such executable; build it or pass --volley-bin"
[[ -x "$SWARM" ]] || die "$SWARM: no such executable; run without --no-build"
# Copies, so a concurrent rebuild cannot swap a binary between runs.
LOGS="$(mktemp -d /tmp/bench-recovery.XXXXXX)"
cp "$VOLLEY" "$LOGS/volley"; cp "$SWARM" "$LOGS/swarm"
VOLLEY="$LOGS/volley"; SWARM="$LOGS/swarm"

SERVER_PIDS=()
REDIS_PID=""
SWARM_PID=""
WATCHDOG_PID=""

stop_pid() { # pid name grace_s
    local pid="$1" name="$2" grace="$3"
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $(( grace * 10 ))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name ($pid) still running $grace s after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
# Stops the servers (and Redis) of one run; returns their exit codes in SERVER_RCS.
stop_servers() {
    SERVER_RCS=()
    local pid rc
    for pid in "${SERVER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${SERVER_PIDS[@]}"; do
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "volley $pid still running 15 s after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rc=0; wait "$pid" 2>/dev/null || rc=$?
        SERVER_RCS+=("$rc")
    done
    SERVER_PIDS=()
    if [[ -n "$REDIS_PID" ]]; then stop_pid "$REDIS_PID" redis-server 10; REDIS_PID=""; fi
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$SWARM_PID" ]] && kill -0 "$SWARM_PID" 2>/dev/null; then
        kill -INT "$SWARM_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$SWARM_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$SWARM_PID" 2>/dev/null && kill -KILL "$SWARM_PID" 2>/dev/null || true
    fi
    stop_servers
    if [[ -n "$WATCHDOG_PID" ]]; then kill -TERM "$WATCHDOG_PID" 2>/dev/null || true; fi
    if (( KEEP_LOGS )) || (( rc != 0 )); then log "logs kept in $LOGS"; else rm -rf "$LOGS"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "stopped (signal or --timeout-s $TIMEOUT_S reached)"; exit 124' TERM

MAIN_PID=$$
( s=""; trap '[[ -n "$s" ]] && kill "$s" 2>/dev/null; exit 0' TERM
  sleep "$TIMEOUT_S" & s=$!; wait "$s"; kill -TERM "$MAIN_PID" 2>/dev/null ) &
WATCHDOG_PID=$!

redis_ping() { # port -> the reply to PING
    python3 -c 'import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(b"PING\r\n"); print(s.recv(64).decode())' "$1" 2>/dev/null || true
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mapfile -t CPUS < <(python3 -c 'import os; print("\n".join(map(str, sorted(os.sched_getaffinity(0)))))')

wait_healthy() { # pid port log [need_redis]
    local pid="$1" port="$2" logf="$3" need_redis="${4:-0}" body
    for i in $(seq 1 $(( HEALTH_WAIT_S * 10 ))); do
        kill -0 "$pid" 2>/dev/null || die "volley $pid exited early; see $logf"
        body="$(curl -sf --max-time 1 "http://127.0.0.1:$port/healthz" 2>/dev/null || true)"
        if [[ "$body" == *'"status":"ok"'* ]] && { (( ! need_redis )) || [[ "$body" == *redis* ]]; }; then
            return 0
        fi
        sleep 0.1
    done
    die "volley $pid on port $port not healthy after ${HEALTH_WAIT_S} s (last: $body); see $logf"
}

start_volley() { # name port log extra-flags...
    local name="$1" port="$2" logf="$3"; shift 3
    "$VOLLEY" serve --listen "127.0.0.1:$port" --history-size "$HISTORY" \
        --max-connections "$MAX_CONNECTIONS" "$@" >"$logf" 2>&1 &
    SERVER_PIDS+=($!)
    log "$name: pid $! port $port: volley serve $*"
}

# One run: mode, index -> $LOGS/run<k>.json (+ .err, .meta)
K=0
run_one() {
    local mode="$1" k="$2" port port_b rport url resume api pids redis_flag=() server_line
    if [[ "$mode" == standalone ]]; then
        port="$(free_port)"
        start_volley volley "$port" "$LOGS/run$k-volley.log" --shards 2
        wait_healthy "${SERVER_PIDS[0]}" "$port" "$LOGS/run$k-volley.log"
        url="ws://127.0.0.1:$port/ws"; resume="$url"; api="http://127.0.0.1:$port"
        pids="${SERVER_PIDS[0]}"
        server_line="volley serve --shards 2 --history-size $HISTORY --max-connections $MAX_CONNECTIONS"
    else
        rport="$(free_port)"
        "$REDIS_SERVER" --bind 127.0.0.1 --port "$rport" --save "" --appendonly no \
            --daemonize no --dir "$LOGS" --logfile "$LOGS/run$k-redis.log" >/dev/null 2>&1 &
        REDIS_PID=$!
        for i in $(seq 1 100); do
            kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited; see $LOGS/run$k-redis.log"
            [[ "$(redis_ping "$rport")" == *PONG* ]] && break
            (( i == 100 )) && die "redis-server did not answer PING in 10 s"
            sleep 0.1
        done
        log "redis-server: pid $REDIS_PID port $rport"
        port="$(free_port)"; port_b="$(free_port)"
        while [[ "$port_b" == "$port" || "$port_b" == "$rport" ]]; do port_b="$(free_port)"; done
        local cpu_a="${CPUS[0]}" cpu_b="${CPUS[$(( 1 % ${#CPUS[@]} ))]}"
        start_volley "volley A" "$port" "$LOGS/run$k-volleyA.log" --shards 1 --cpus "$cpu_a" --redis "redis://127.0.0.1:$rport"
        start_volley "volley B" "$port_b" "$LOGS/run$k-volleyB.log" --shards 1 --cpus "$cpu_b" --redis "redis://127.0.0.1:$rport"
        wait_healthy "${SERVER_PIDS[0]}" "$port" "$LOGS/run$k-volleyA.log" 1
        wait_healthy "${SERVER_PIDS[1]}" "$port_b" "$LOGS/run$k-volleyB.log" 1
        url="ws://127.0.0.1:$port/ws"; resume="ws://127.0.0.1:$port_b/ws"; api="http://127.0.0.1:$port"
        pids="${SERVER_PIDS[0]},${SERVER_PIDS[1]}"
        redis_flag=(--redis-pid "$REDIS_PID")
        server_line="redis-server --save \"\" --appendonly no; 2 x volley serve --shards 1 --cpus <one each> --redis ... --history-size $HISTORY --max-connections $MAX_CONNECTIONS (join on A, reconnect to B)"
    fi
    local cmd=(storm --url "$url" --resume-url "$resume" --api "$api" --clients "$CLIENTS"
               --missed "$MISSED" --server-pid "$pids" "${redis_flag[@]}" "${EXTRA[@]}")
    local load0 load1 rc=0
    load0="$(cut -d' ' -f1-3 /proc/loadavg)"
    log "run $k ($mode): swarm ${cmd[*]} (load $load0)"
    timeout "$SWARM_TIMEOUT_S" "$SWARM" "${cmd[@]}" >"$LOGS/run$k.json" 2>"$LOGS/run$k.err" &
    SWARM_PID=$!
    wait "$SWARM_PID" || rc=$?
    SWARM_PID=""
    load1="$(cut -d' ' -f1-3 /proc/loadavg)"
    (( rc == 0 )) || { tail -20 "$LOGS/run$k.err" >&2; die "swarm storm exited with $rc (run $k, $mode)"; }
    local stats_a stats_b=""
    stats_a="$(curl -s --max-time 2 "http://127.0.0.1:$port/api/stats" || true)"
    [[ -n "${port_b:-}" ]] && stats_b="$(curl -s --max-time 2 "http://127.0.0.1:$port_b/api/stats" || true)"
    stop_servers
    MODE_K="$mode" LOAD0="$load0" LOAD1="$load1" RCS="${SERVER_RCS[*]}" STATS_A="$stats_a" \
    STATS_B="$stats_b" SERVER_LINE="$server_line" python3 - "$LOGS/run$k.meta" <<'PY'
import json, os, sys
e = os.environ
def total(s, key):
    try:
        return json.loads(s)["total"].get(key)
    except Exception:
        return None
meta = {"mode": e["MODE_K"], "load_before": e["LOAD0"], "load_after": e["LOAD1"],
        "server_exit_codes": e["RCS"], "server": e["SERVER_LINE"],
        "slow_consumer_closes": [total(s, "slow_consumer_closes_total") for s in (e["STATS_A"], e["STATS_B"]) if s],
        "replayed_total": [total(s, "replayed_total") for s in (e["STATS_A"], e["STATS_B"]) if s]}
json.dump(meta, open(sys.argv[1], "w"))
PY
    log "run $k ($mode) done: $(python3 -c "import json,sys; p=json.load(open(sys.argv[1]))['phase4']; print('exact', p['clients_exact'], 'all_caught_up_s', p['all_caught_up_s'], 'cpu_us_per_msg', p['server_cpu_us_per_replayed_message'])" "$LOGS/run$k.json")"
}

MODES=()
for (( r = 0; r < RUNS; r++ )); do
    case "$MODE" in both) MODES+=(standalone cluster) ;; *) MODES+=("$MODE") ;; esac
done
for mode in "${MODES[@]}"; do
    K=$(( K + 1 ))
    run_one "$mode" "$K"
    sleep 2
done

# --- report ---------------------------------------------------------------------------
KERNEL="$(uname -r)" NPROC="$(nproc)" DATE="$(date -u +%Y-%m-%dT%H:%MZ)" COMMAND="$COMMAND" \
LOGS="$LOGS" RUNS_N="$K" python3 - <<'PY'
import json, os
e = os.environ
runs = []
for k in range(1, int(e["RUNS_N"]) + 1):
    r = json.load(open(os.path.join(e["LOGS"], f"run{k}.json")))
    m = json.load(open(os.path.join(e["LOGS"], f"run{k}.meta")))
    runs.append((k, r, m))
def n(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)
def ms(h, key):
    v = h.get(key)
    return "-" if v is None else f"{v / 1000:,.0f}"
def trio(h):
    return f"{ms(h, 'p50')} / {ms(h, 'p99')} / {ms(h, 'max')} ms"
rows = [
    ("mode", lambda r, m: m["mode"]),
    ("clients joined / saw S0 (phase 1)", lambda r, m: f"{r['phase1']['joined']} / {r['phase1']['clients_saw_s0']}"),
    ("connections after close (phase 2)", lambda r, m: ", ".join(str(c.get("connections", c.get("error"))) for c in r["phase2"]["connections_after_close"])),
    ("published while away, seqs exact (phase 3)", lambda r, m: f"{r['phase3']['published']}, {r['phase3']['seqs_exact']} ({r['phase3']['first_seq']}..={r['phase3']['last_seq']}, {r['phase3']['publish_s']} s)"),
    ("clients reconnected / caught up / exact", lambda r, m: f"{r['phase4']['clients_connected']} / {r['phase4']['clients_caught_up']} / {r['phase4']['clients_exact']}"),
    ("recovered true / false / error", lambda r, m: f"{r['phase4']['recovered_true']} / {r['phase4']['recovered_false']} / {r['phase4']['recovered_error']}"),
    ("deliveries expected / received", lambda r, m: f"{n(r['phase4']['deliveries_expected'])} / {n(r['phase4']['deliveries_received'])}"),
    ("gaps / duplicates / disconnects", lambda r, m: f"{r['phase4']['gaps']} / {r['phase4']['duplicates']} / {sum(r['phase4']['disconnects_before_stop'].values())}"),
    ("**time until all caught up** (from storm start)", lambda r, m: f"**{n(r['phase4']['all_caught_up_s'], '{:.2f}')} s**"),
    ("per-client catch-up (connect start to seq S0+M and `recovered`) p50 / p99 / max", lambda r, m: trio(r["phase4"]["catchup_us"])),
    ("upgrade done p50 / p99 / max", lambda r, m: trio(r["phase4"]["upgrade_us"])),
    ("first replayed message p50 / p99 / max", lambda r, m: trio(r["phase4"]["first_message_us"])),
    ("first to last replayed message p50 / p99 / max", lambda r, m: trio(r["phase4"]["first_to_last_message_us"])),
    ("replayed deliveries per second", lambda r, m: n(r["phase4"]["deliveries_per_s"])),
    ("**server CPU during the storm** (schedstat; ticks)", lambda r, m: f"**{n(r['phase4']['server_cpu_us'] and r['phase4']['server_cpu_us'] / 1000)} ms** ({n(r['phase4']['server_cpu_us_ticks'] and r['phase4']['server_cpu_us_ticks'] / 1000)} ms)"),
    ("**server CPU per replayed message**", lambda r, m: f"**{n(r['phase4']['server_cpu_us_per_replayed_message'], '{:.2f}')} µs**"),
    ("server cores busy (CPU / wall)", lambda r, m: n(r["phase4"]["server_cores_busy"], "{:.2f}")),
    ("redis-server CPU during the storm", lambda r, m: "-" if r["phase4"]["redis_cpu_us"] is None else f"{r['phase4']['redis_cpu_us'] / 1000:,.0f} ms"),
    ("swarm CPU during the storm (same cores)", lambda r, m: f"{n(r['phase4']['swarm_cpu_us'] and r['phase4']['swarm_cpu_us'] / 1000)} ms"),
    ("live message after the storm: clients got it / duplicates", lambda r, m: f"{(r['phase4']['live_check'] or {}).get('clients_received', '-')} / {r['phase4']['live_duplicates']}"),
    ("slow-consumer closes (server)", lambda r, m: ", ".join(str(x) for x in m["slow_consumer_closes"])),
    ("load average before / after", lambda r, m: f"{m['load_before'].split()[0]} / {m['load_after'].split()[0]}"),
    ("volley exit codes after SIGTERM", lambda r, m: m["server_exit_codes"]),
]
servers = sorted({m["server"] for _, _, m in runs})
print(f"""### Recovery storm runs ({e['DATE']})

Machine: Linux {e['KERNEL']}, {e['NPROC']} cores (servers, Redis and swarm share them), loopback.
Command: `{e['COMMAND']}`""")
for s in servers:
    print(f"Server: `{s}`")
print()
print("| figure | " + " | ".join(f"run {k}" for k, _, _ in runs) + " |")
print("| --- | " + " | ".join("---" for _ in runs) + " |")
for label, f in rows:
    print(f"| {label} | " + " | ".join(f(r, m) for _, r, m in runs) + " |")
print()
for k, r, _ in runs:
    print(f"swarm report, run {k}:")
    print()
    print("```json")
    print(json.dumps(r, indent=1))
    print("```")
PY
