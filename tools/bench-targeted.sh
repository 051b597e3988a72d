#!/usr/bin/env bash
# bench-targeted.sh: targeted delivery (rooms and users through POST /api/batch), on loopback.
#
# Usage: tools/bench-targeted.sh [--rooms 1000] [--members 19] [--rounds 20] [--window 4]
#                                [--shards 2] [--batch-max 10000] [--http-conns 2]
#                                [--timeout-s 900] [--volley-bin PATH] [--no-build]
#                                [--keep-logs] [-- extra swarm targeted flags...]
#
#   Builds release volley and swarm (retrying while the tree does not build), starts
#   `volley serve --shards S --max-connections 19500 --body-bytes-max 1048576` on a free
#   127.0.0.1 port (open mode: no --jwt-secret), runs `swarm targeted --server-pid <volley>`
#   against it, stops the server with SIGTERM and prints a Markdown block for BENCHMARKS.md
#   (command, kernel, cores, date, the figures) followed by swarm's JSON report.
#
#   rooms x members clients (default 19,000: one swarm process, under the 20,000
#   open-file limit) each join one room; the room phase posts one message per room per
#   round, the user phase one message per user per round (batches of --batch-max entries).
#   --body-bytes-max is raised because a 10,000-entry batch is ~550 KB (volley's default
#   cap of 64 KiB allows about 1,100 entries).
#
#   --timeout-s T      hard limit for the whole run after the build (default 900)
#   --volley-bin PATH  server binary to test (default target/release/volley)
#   --no-build         use the binaries already in target/release
#   --keep-logs        keep the log directory (its path is printed); default: removed on exit
#
# Only the processes this script starts are stopped (by PID): the server (SIGTERM, then
# SIGKILL after 15 s) and the swarm. Loopback only; every wait is bounded.
set -euo pipefail

ROOMS=1000
MEMBERS=19
ROUNDS=20
WINDOW=4
SHARDS=2
BATCH_MAX=10000
HTTP_CONNS=2
TIMEOUT_S=900
VOLLEY_BIN=""
BUILD=1
KEEP_LOGS=0
EXTRA=()
MAX_CONNECTIONS=19500
BODY_BYTES_MAX=1048576
# Build attempts (others edit the tree concurrently) and the pause between them.
BUILD_TRIES=10
BUILD_PAUSE_S=30
HEALTH_WAIT_S=20

PROG=bench-targeted
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --rooms) need_value "$@"; ROOMS="$2"; shift 2 ;;
        --members) need_value "$@"; MEMBERS="$2"; shift 2 ;;
        --rounds) need_value "$@"; ROUNDS="$2"; shift 2 ;;
        --window) need_value "$@"; WINDOW="$2"; shift 2 ;;
        --shards) need_value "$@"; SHARDS="$2"; shift 2 ;;
        --batch-max) need_value "$@"; BATCH_MAX="$2"; shift 2 ;;
        --http-conns) need_value "$@"; HTTP_CONNS="$2"; shift 2 ;;
        --timeout-s) need_value "$@"; TIMEOUT_S="$2"; shift 2 ;;
        --volley-bin) need_value "$@"; VOLLEY_BIN="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1; see --help" ;;
    esac
done
for pair in "--rooms:$ROOMS" "--members:$MEMBERS" "--rounds:$ROUNDS" "--window:$WINDOW" \
            "--shards:$SHARDS" "--batch-max:$BATCH_MAX" "--http-conns:$HTTP_CONNS" "--timeout-s:$TIMEOUT_S"; do
    is_uint "${pair#*:}" || die "${pair%%:*} ${pair#*:}: must be a whole number"
done
CLIENTS=$(( ROOMS * MEMBERS ))
(( CLIENTS >= 1 && CLIENTS <= MAX_CONNECTIONS )) || die "--rooms x --members = $CLIENTS: must be 1..=$MAX_CONNECTIONS (one swarm process, 20,000 open files)"
(( TIMEOUT_S >= 60 )) || die "--timeout-s $TIMEOUT_S: must be at least 60"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
COMMAND="tools/bench-targeted.sh --rooms $ROOMS --members $MEMBERS --rounds $ROUNDS --window $WINDOW --shards $SHARDS --batch-max $BATCH_MAX --http-conns $HTTP_CONNS${EXTRA[*]:+ -- ${EXTRA[*]}}"

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
# Copies, so a concurrent rebuild cannot swap a binary during the run.
LOGS="$(mktemp -d /tmp/bench-targeted.XXXXXX)"
cp "$VOLLEY" "$LOGS/volley"; cp "$SWARM" "$LOGS/swarm"
VOLLEY="$LOGS/volley"; SWARM="$LOGS/swarm"

SERVER_PID=""
SWARM_PID=""
WATCHDOG_PID=""

# Stops only what this script started, by PID.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$SWARM_PID" ]] && kill -0 "$SWARM_PID" 2>/dev/null; then
        kill -INT "$SWARM_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$SWARM_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$SWARM_PID" 2>/dev/null && kill -KILL "$SWARM_PID" 2>/dev/null || true
    fi
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            log "server $SERVER_PID did not stop 15 s after SIGTERM; sending SIGKILL"
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
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

# --- server ---------------------------------------------------------------------------
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
SERVER_CMD=(serve --listen "127.0.0.1:$PORT" --shards "$SHARDS" --max-connections "$MAX_CONNECTIONS"
            --body-bytes-max "$BODY_BYTES_MAX")
log "starting volley ${SERVER_CMD[*]} (logs in $LOGS)"
"$VOLLEY" "${SERVER_CMD[@]}" >"$LOGS/server.log" 2>&1 &
SERVER_PID=$!
for i in $(seq 1 $(( HEALTH_WAIT_S * 10 ))); do
    kill -0 "$SERVER_PID" 2>/dev/null || die "server exited early; see $LOGS/server.log"
    curl -sf --max-time 1 "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    (( i == HEALTH_WAIT_S * 10 )) && die "no answer on /healthz after ${HEALTH_WAIT_S} s; see $LOGS/server.log"
    sleep 0.1
done
log "server pid $SERVER_PID up on port $PORT"

# --- swarm targeted -------------------------------------------------------------------
SWARM_CMD=(targeted --url "ws://127.0.0.1:$PORT/ws" --api "http://127.0.0.1:$PORT"
           --rooms "$ROOMS" --members "$MEMBERS" --rounds "$ROUNDS" --window "$WINDOW"
           --batch-max "$BATCH_MAX" --http-conns "$HTTP_CONNS" --server-pid "$SERVER_PID"
           "${EXTRA[@]}")
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
log "running swarm ${SWARM_CMD[*]} (load average $LOAD_START)"
"$SWARM" "${SWARM_CMD[@]}" >"$LOGS/targeted.json" 2>"$LOGS/targeted.err" &
SWARM_PID=$!
SWARM_RC=0
wait "$SWARM_PID" || SWARM_RC=$?
SWARM_PID=""
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"
(( SWARM_RC == 0 )) || { tail -20 "$LOGS/targeted.err" >&2; die "swarm targeted exited with $SWARM_RC"; }

# --- stop the server ------------------------------------------------------------------
STATS="$(curl -s --max-time 2 "http://127.0.0.1:$PORT/api/stats" || true)"
echo "$STATS" >"$LOGS/stats.json"
kill -TERM "$SERVER_PID"
for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$SERVER_PID" 2>/dev/null; then
    log "server did not stop 15 s after SIGTERM; sending SIGKILL"
    kill -KILL "$SERVER_PID" 2>/dev/null || true
fi
SERVER_RC=0
wait "$SERVER_PID" || SERVER_RC=$?
SERVER_PID=""

# --- figures --------------------------------------------------------------------------
export COMMAND LOGS SERVER_RC LOAD_START LOAD_END
KERNEL="$(uname -r)" NPROC="$(nproc)" DATE="$(date -u +%Y-%m-%dT%H:%MZ)" \
SERVER_CMD_LINE="volley ${SERVER_CMD[*]}" python3 - <<'PY'
import json, os
e = os.environ
r = json.load(open(os.path.join(e["LOGS"], "targeted.json")))
ph = r.get("phases", {})
def g(p, k, default="-"):
    v = ph.get(p, {}).get(k)
    return default if v is None else v
def n(v):
    return f"{v:,.0f}" if isinstance(v, (int, float)) else str(v)
def lat(p, k):
    h = ph.get(p, {}).get(k, {})
    f = lambda x: "-" if x is None else f"{x / 1000:.1f}"
    return f"{f(h.get('p50'))} / {f(h.get('p99'))} / {f(h.get('max'))} ms"
names = [p for p in ("room", "user") if p in ph]
rows = [
    ("rounds x entries per round", lambda p: f"{g(p,'rounds')} x {n(g(p,'entries_per_round'))}"),
    ("POSTs ok / failed / entry errors", lambda p: f"{g(p,'posts_ok')} / {sum(ph[p].get('post_failures', {}).values())} / {g(p,'entry_errors')}"),
    ("deliveries expected / received", lambda p: f"{n(g(p,'deliveries_expected'))} / {n(g(p,'deliveries_received'))}"),
    ("lost / duplicated / gaps", lambda p: f"{g(p,'lost')} / {g(p,'duplicated')} / {g(p,'gaps')}"),
    ("recipients in POST answers", lambda p: n(g(p, 'recipients_reported'))),
    ("wall time (first POST to last receive)", lambda p: f"{g(p,'wall_s')} s (publishing {g(p,'publish_s')} s)"),
    ("**deliveries per second** (target >= 100,000)", lambda p: f"**{n(g(p,'deliveries_per_s'))}** ({'met' if g(p,'meets_target') is True else 'missed'})"),
    ("server CPU per delivery", lambda p: f"{g(p,'server_cpu_us_per_delivery')} µs"),
    ("deliveries per server core-second", lambda p: n(g(p, 'deliveries_per_server_core_s'))),
    ("server cores busy (CPU / wall)", lambda p: str(g(p, 'server_cores_busy'))),
    ("swarm CPU (same cores)", lambda p: f"{n(g(p,'swarm_cpu_us'))} µs"),
    ("batch POST time p50 / p99 / max", lambda p: lat(p, "post_latency_us")),
    ("delivery latency p50 / p99 / max", lambda p: lat(p, "delivery_latency_us")),
]
print(f"""### Targeted delivery run ({e['DATE']})

Machine: Linux {e['KERNEL']}, {e['NPROC']} cores (server and swarm share them), loopback; load average {e['LOAD_START']} before, {e['LOAD_END']} after.
Command: `{e['COMMAND']}`
Server: `{e['SERVER_CMD_LINE']}` (exit code after SIGTERM: {e['SERVER_RC']})
Window: {r.get('window')} rounds in flight, {r.get('http_conns')} HTTP connections per round, batches of at most {r.get('batch_max')}.
Clients: {r.get('clients_joined')} joined of {r.get('clients_requested')} ({r.get('rooms')} rooms x {r.get('members')}), connect + join {r.get('connect_and_join_s')} s; disconnects {r.get('disconnects')}; foreign messages {r.get('foreign_messages')}

| figure | {' | '.join(names)} |
| --- | {' | '.join('---' for _ in names)} |""")
for label, f in rows:
    print(f"| {label} | {' | '.join(f(p) for p in names)} |")
print()
print("swarm report:")
print()
print("```json")
print(json.dumps(r, indent=1))
print("```")
PY
