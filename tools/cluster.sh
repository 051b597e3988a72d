#!/usr/bin/env bash
# cluster.sh: run a volley cluster on one box: one redis-server and K volley processes on
# one port (SO_REUSEPORT), tied together through Redis. This is how one box gets past a
# per-process open-file limit (20,000 here): each process holds at most
# --max-connections-per-process clients and Redis carries every publish to all of them.
#
# Usage: tools/cluster.sh --processes K [--port 8080] [--host 127.0.0.1] [--redis-port P]
#                         [--shards-per-process 1] [--max-connections-per-process 19000]
#                         [--duration-s 3600] [--status-every-s 30] [--log-dir DIR]
#                         [--state-file PATH] [--volley-bin PATH] [--build]
#                         [-- EXTRA VOLLEY SERVE FLAGS...]
#
#   --processes K      volley processes to start (1..=64; required)
#   --port N           port every process listens on (default 8080; 0 = pick a free one).
#                      It must be free: a process of someone else that also sets SO_REUSEPORT
#                      would otherwise silently share it, so cluster.sh refuses a busy port.
#   --host H           loopback address to listen on (default 127.0.0.1)
#   --redis-port P     port for the redis-server this script starts (default: a free one).
#                      Must be free: cluster.sh never uses or touches a Redis it did not start.
#   --shards-per-process S   volley --shards per process (default 1). Process i is pinned
#                      with --cpus to S CPUs taken round-robin from the CPUs this script may
#                      run on (process 0 on the first S, process 1 on the next S, wrapping),
#                      so the processes do not all land on CPU 0.
#   --max-connections-per-process M   volley --max-connections (default 19000: under a
#                      20,000 open-file limit with room for listeners, Redis links, io_uring)
#   --duration-s D     stop everything after D seconds (default 3600; at most 604800).
#                      SIGINT or SIGTERM stop it earlier.
#   --status-every-s T print a status line (processes alive, RSS, Redis subscribers of
#                      <prefix>:all) every T seconds; 0 = never (default 30)
#   --log-dir DIR      where logs go (default: a new /tmp/volley-cluster.XXXXXX; kept)
#   --state-file PATH  once the cluster is up, write a JSON object there: port, urls,
#                      redis_port, redis_pid, volley_pids, cpus, log_dir (for scripts)
#   --volley-bin PATH  server binary (default target/release/volley)
#   --build            run `cargo build --release -p volley` first
#   -- FLAGS...        passed to every `volley serve` (e.g. -- --ping-interval-s 60)
#
# Ready means: every volley PID is alive, its log says it listens and (Redis) that both its
# Redis links are up, and repeated GET /healthz (which lands on a random process: they share
# the port) has answered "ok" from K distinct node ids. Then the PIDs and URLs are printed.
# Check the cluster once clients exist with:
#   redis-cli -p P PUBSUB NUMSUB volley:all   (one subscriber per shard that has a client)
#
# On SIGINT/SIGTERM, --duration-s, or a failed start, everything this script started is
# stopped by PID: each volley with SIGTERM (SIGKILL 20 s later if still there), then
# redis-server with SIGTERM (SIGKILL 10 s later). Exit status: 0 after a normal stop, 1 if
# every volley process died on its own, 2 on bad arguments or a failed start.
set -euo pipefail

# A job started with & from a script inherits SIGINT ignored, and bash cannot trap a signal
# ignored at entry; re-run once with SIGINT at its default so `kill -INT` stops us cleanly.
if [[ -z "${VOLLEY_CLUSTER_REEXEC:-}" ]] \
    && (( (16#$(awk '/^SigIgn:/ {print $2}' /proc/$$/status) >> 1) & 1 )) \
    && env --default-signal=INT true 2>/dev/null; then
    VOLLEY_CLUSTER_REEXEC=1 exec env --default-signal=INT bash "$0" "$@"
fi

PROCESSES=""
PORT=8080
HOST=127.0.0.1
REDIS_PORT=""
SHARDS=1
MAX_CONNS=19000
DURATION_S=3600
STATUS_EVERY_S=30
LOG_DIR=""
STATE_FILE=""
VOLLEY_BIN=""
BUILD=0
EXTRA=()
REDIS_PREFIX=volley
# Seconds to wait for the cluster to come up.
READY_WAIT_S=30

PROG=cluster
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --processes) need_value "$@"; PROCESSES="$2"; shift 2 ;;
        --port) need_value "$@"; PORT="$2"; shift 2 ;;
        --host) need_value "$@"; HOST="$2"; shift 2 ;;
        --redis-port) need_value "$@"; REDIS_PORT="$2"; shift 2 ;;
        --shards-per-process) need_value "$@"; SHARDS="$2"; shift 2 ;;
        --max-connections-per-process) need_value "$@"; MAX_CONNS="$2"; shift 2 ;;
        --duration-s) need_value "$@"; DURATION_S="$2"; shift 2 ;;
        --status-every-s) need_value "$@"; STATUS_EVERY_S="$2"; shift 2 ;;
        --log-dir) need_value "$@"; LOG_DIR="$2"; shift 2 ;;
        --state-file) need_value "$@"; STATE_FILE="$2"; shift 2 ;;
        --volley-bin) need_value "$@"; VOLLEY_BIN="$2"; shift 2 ;;
        --build) BUILD=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) die "unknown argument $1; see --help" ;;
    esac
done
[[ -n "$PROCESSES" ]] || die "--processes K is required; see --help"
for pair in "--processes:$PROCESSES" "--port:$PORT" "--shards-per-process:$SHARDS" \
            "--max-connections-per-process:$MAX_CONNS" "--duration-s:$DURATION_S" \
            "--status-every-s:$STATUS_EVERY_S" "--redis-port:${REDIS_PORT:-0}"; do
    is_uint "${pair#*:}" || die "${pair%%:*} ${pair#*:}: must be a whole number"
done
(( PROCESSES >= 1 && PROCESSES <= 64 )) || die "--processes $PROCESSES: must be 1..=64"
(( PORT <= 65535 )) || die "--port $PORT: must be 0..=65535"
[[ -z "$REDIS_PORT" ]] || (( REDIS_PORT >= 1 && REDIS_PORT <= 65535 )) \
    || die "--redis-port $REDIS_PORT: must be 1..=65535"
(( MAX_CONNS >= 1 )) || die "--max-connections-per-process 0: must be at least 1"
(( DURATION_S >= 1 && DURATION_S <= 604800 )) || die "--duration-s $DURATION_S: must be 1..=604800 (7 days)"
case "$HOST" in
    127.*|::1|localhost) ;;
    *) die "--host $HOST: only loopback addresses (127.0.0.0/8, ::1) are allowed" ;;
esac
[[ "$HOST" == localhost ]] && HOST=127.0.0.1

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if (( BUILD )); then
    log "building release volley (cargo build --release -p volley)"
    (cd "$REPO" && timeout 1800 cargo build --release -p volley >&2) || die "cargo build failed"
fi
VOLLEY="${VOLLEY_BIN:-$REPO/target/release/volley}"
[[ -x "$VOLLEY" ]] || die "$VOLLEY: no such executable; run with --build or pass --volley-bin"
REDIS_SERVER="$(command -v redis-server || true)"
[[ -n "$REDIS_SERVER" ]] || die "redis-server not found; install it (Debian: apt-get install redis-server)"
command -v python3 >/dev/null || die "python3 not found (used to find free ports and read JSON)"
command -v curl >/dev/null || die "curl not found (used for /healthz)"

# CPUs this script may run on, in order.
mapfile -t CPUS < <(python3 -c 'import os; print("\n".join(map(str, sorted(os.sched_getaffinity(0)))))')
NCPU=${#CPUS[@]}
(( SHARDS >= 1 && SHARDS <= NCPU )) \
    || die "--shards-per-process $SHARDS: must be 1..=$NCPU (CPUs available here: ${CPUS[*]})"

# Port checks: bind without SO_REUSEPORT; failure means someone holds it.
port_free() { # host port -> exit 0 if free
    python3 - "$1" "$2" <<'PY'
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
try:
    s.bind((host, port))
except OSError:
    sys.exit(1)
PY
}
free_port() {
    python3 - "$1" <<'PY'
import socket, sys
host = sys.argv[1]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM); s.bind((host, 0)); print(s.getsockname()[1])
PY
}
if (( PORT == 0 )); then PORT="$(free_port "$HOST")"; fi
port_free "$HOST" "$PORT" || die "port $HOST:$PORT is in use; stop what holds it or pick another --port (0 = any free one)"
if [[ -z "$REDIS_PORT" ]]; then
    REDIS_PORT="$(free_port 127.0.0.1)"
    while (( REDIS_PORT == PORT )); do REDIS_PORT="$(free_port 127.0.0.1)"; done
fi
(( REDIS_PORT != PORT )) || die "--redis-port $REDIS_PORT: same as --port"
port_free 127.0.0.1 "$REDIS_PORT" || die "--redis-port $REDIS_PORT is in use; cluster.sh only starts its own Redis: pick a free port or omit --redis-port"

if [[ -z "$LOG_DIR" ]]; then
    LOG_DIR="$(mktemp -d /tmp/volley-cluster.XXXXXX)"
else
    mkdir -p "$LOG_DIR" || die "--log-dir $LOG_DIR: cannot create it"
fi
[[ "$HOST" == *:* ]] && URL_HOST="[$HOST]" || URL_HOST="$HOST"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"

REDIS_PID=""
declare -A GONE=()
VOLLEY_PIDS=()
VOLLEY_CPUS=()
STOPPING=0
EXIT_RC=0

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
    (( STOPPING )) || log "stopping"
    STOPPING=1
    # volley first (in parallel: each gets its own grace), then Redis.
    local stoppers=()
    for i in "${!VOLLEY_PIDS[@]}"; do
        stop_pid "${VOLLEY_PIDS[$i]}" "volley $i" 20 &
        stoppers+=($!)
    done
    for s in "${stoppers[@]}"; do wait "$s" 2>/dev/null || true; done
    for i in "${!VOLLEY_PIDS[@]}"; do
        [[ -z "${GONE[$i]:-}" ]] || continue
        local code=0
        wait "${VOLLEY_PIDS[$i]}" 2>/dev/null || code=$?
        log "volley $i (pid ${VOLLEY_PIDS[$i]}) exited with code $code"
    done
    if [[ -n "$REDIS_PID" ]]; then
        stop_pid "$REDIS_PID" "redis-server" 10
        wait "$REDIS_PID" 2>/dev/null || true
        log "redis-server (pid $REDIS_PID) stopped"
    fi
    if [[ -n "$STATE_FILE" ]]; then rm -f "$STATE_FILE"; fi
    log "logs are in $LOG_DIR"
    if (( rc == 0 )); then rc=$EXIT_RC; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "SIGINT received"; STOPPING=1; exit 0' INT
trap 'log "SIGTERM received"; STOPPING=1; exit 0' TERM

alive() { kill -0 "$1" 2>/dev/null; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
redis_cmd() { # args... -> reply (raw RESP parsed minimally), via redis-cli if present, else python
    if command -v redis-cli >/dev/null; then
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@" 2>/dev/null
    else
        python3 - "$REDIS_PORT" "$@" <<'PY' 2>/dev/null
import socket, sys
port, args = int(sys.argv[1]), sys.argv[2:]
s = socket.create_connection(("127.0.0.1", port), timeout=2)
s.sendall(("*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a), a) for a in args)).encode())
print(s.recv(65536).decode(errors="replace"))
PY
    fi
}

# --- Redis -----------------------------------------------------------------------------
log "starting redis-server on 127.0.0.1:$REDIS_PORT (no persistence; logs in $LOG_DIR)"
"$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --daemonize no --dir "$LOG_DIR" --logfile "$LOG_DIR/redis.log" >/dev/null 2>&1 &
REDIS_PID=$!
for i in $(seq 1 100); do
    alive "$REDIS_PID" || die "redis-server exited at start; see $LOG_DIR/redis.log"
    [[ "$(redis_cmd PING)" == *PONG* ]] && break
    (( i == 100 )) && die "redis-server on port $REDIS_PORT did not answer PING in 10 s; see $LOG_DIR/redis.log"
    sleep 0.1
done

# --- volley processes --------------------------------------------------------------------
for (( i = 0; i < PROCESSES; i++ )); do
    list=()
    for (( s = 0; s < SHARDS; s++ )); do list+=("${CPUS[$(( (i * SHARDS + s) % NCPU ))]}"); done
    cpus="$(IFS=,; echo "${list[*]}")"
    VOLLEY_CPUS+=("$cpus")
    "$VOLLEY" serve --listen "$URL_HOST:$PORT" --shards "$SHARDS" --cpus "$cpus" \
        --max-connections "$MAX_CONNS" --redis "$REDIS_URL" --redis-prefix "$REDIS_PREFIX" \
        "${EXTRA[@]}" >"$LOG_DIR/volley$i.log" 2>&1 &
    VOLLEY_PIDS+=($!)
    log "volley $i: pid ${VOLLEY_PIDS[$i]}, --shards $SHARDS --cpus $cpus, log $LOG_DIR/volley$i.log"
done

# Each process: alive, listening, and both Redis links up (from its own log).
start=$SECONDS
for i in "${!VOLLEY_PIDS[@]}"; do
    pid="${VOLLEY_PIDS[$i]}" f="$LOG_DIR/volley$i.log"
    while :; do
        if ! alive "$pid"; then
            tail -n 20 "$f" >&2 || true
            die "volley $i (pid $pid) exited at start; its log is above ($f)"
        fi
        if grep -q "listening on" "$f" 2>/dev/null \
            && (( $(grep -c "redis subscriber link .* is up" "$f" 2>/dev/null || true) >= SHARDS )) \
            && (( $(grep -c "redis command link .* is up" "$f" 2>/dev/null || true) >= SHARDS )); then
            break
        fi
        (( SECONDS - start < READY_WAIT_S )) || { tail -n 20 "$f" >&2 || true; die "volley $i (pid $pid) not ready after $READY_WAIT_S s (no 'listening on' or Redis links not up); see $f"; }
        sleep 0.1
    done
done
# The cluster: /healthz lands on a random process; collect K distinct ok node ids.
declare -A NODES=()
tries=0
while (( ${#NODES[@]} < PROCESSES )); do
    tries=$(( tries + 1 ))
    answer="$(curl -s --max-time 2 "http://$URL_HOST:$PORT/healthz" 2>/dev/null || true)"
    read -r status node < <(python3 -c 'import json,sys
try:
    d = json.loads(sys.argv[1]); print(d.get("status", "?"), d.get("node", "?"))
except Exception:
    print("? ?")' "$answer")
    if [[ "$status" == ok ]]; then
        NODES[$node]=1
    elif [[ "$status" != "?" ]]; then
        log "healthz: $answer"
    fi
    if (( SECONDS - start >= READY_WAIT_S || tries >= 400 )); then
        die "only ${#NODES[@]} of $PROCESSES processes answered /healthz ok after $tries requests; last answer: ${answer:-none}"
    fi
    if (( ${#NODES[@]} < PROCESSES )); then sleep 0.05; fi
done

# --- ready ------------------------------------------------------------------------------
pids_json="$(IFS=,; echo "${VOLLEY_PIDS[*]}")"
cpus_json="$(printf '"%s",' "${VOLLEY_CPUS[@]}")"
if [[ -n "$STATE_FILE" ]]; then
    cat >"$STATE_FILE.tmp" <<EOF
{"port": $PORT, "ws_url": "ws://$URL_HOST:$PORT/ws", "api_url": "http://$URL_HOST:$PORT", "redis_port": $REDIS_PORT, "redis_url": "$REDIS_URL", "redis_pid": $REDIS_PID, "volley_pids": [$pids_json], "cpus": [${cpus_json%,}], "log_dir": "$LOG_DIR", "cluster_pid": $$}
EOF
    mv "$STATE_FILE.tmp" "$STATE_FILE"
fi
cat <<EOF
volley cluster up: $PROCESSES process(es) x $SHARDS shard(s), max $MAX_CONNS connections each (up to $(( PROCESSES * MAX_CONNS )) in all)
  WebSocket:   ws://$URL_HOST:$PORT/ws
  API:         http://$URL_HOST:$PORT  (e.g. curl -d hello http://$URL_HOST:$PORT/api/broadcast)
  Redis:       $REDIS_URL (pid $REDIS_PID); check: redis-cli -p $REDIS_PORT PUBSUB NUMSUB $REDIS_PREFIX:all
EOF
for i in "${!VOLLEY_PIDS[@]}"; do
    echo "  volley $i:    pid ${VOLLEY_PIDS[$i]}, cpus ${VOLLEY_CPUS[$i]}, log $LOG_DIR/volley$i.log"
done
echo "  stops after: $DURATION_S s, or on Ctrl-C / SIGTERM to pid $$"

# --- run --------------------------------------------------------------------------------
deadline=$(( SECONDS + DURATION_S ))
next_status=$(( SECONDS + STATUS_EVERY_S ))
while (( SECONDS < deadline )); do
    sleep 1 & wait $! || true
    for i in "${!VOLLEY_PIDS[@]}"; do
        pid="${VOLLEY_PIDS[$i]}"
        if [[ -z "${GONE[$i]:-}" ]] && ! alive "$pid"; then
            GONE[$i]=1
            code=0; wait "$pid" 2>/dev/null || code=$?
            log "WARNING: volley $i (pid $pid) exited on its own with code $code; last lines of its log:"
            tail -n 10 "$LOG_DIR/volley$i.log" >&2 || true
        fi
    done
    if (( ${#GONE[@]} == PROCESSES )); then
        log "every volley process has exited; stopping"
        EXIT_RC=1
        exit 1
    fi
    if ! alive "$REDIS_PID"; then
        log "WARNING: redis-server (pid $REDIS_PID) exited; volley keeps local clients but cross-process delivery stops (see $LOG_DIR/redis.log)"
        REDIS_PID=""
    fi
    if (( STATUS_EVERY_S > 0 && SECONDS >= next_status )); then
        next_status=$(( SECONDS + STATUS_EVERY_S ))
        line=""
        for i in "${!VOLLEY_PIDS[@]}"; do
            pid="${VOLLEY_PIDS[$i]}"
            if alive "$pid"; then line+=" v$i=up,$(( $(rss_kb "$pid") / 1024 ))MiB"; else line+=" v$i=gone"; fi
        done
        subs="-"
        [[ -n "$REDIS_PID" ]] && subs="$(redis_cmd PUBSUB NUMSUB "$REDIS_PREFIX:all" | tail -n 1)"
        log "t=$(( DURATION_S - (deadline - SECONDS) ))s$line; redis subscribers of $REDIS_PREFIX:all: ${subs:-?}"
    fi
done
log "--duration-s $DURATION_S reached"
