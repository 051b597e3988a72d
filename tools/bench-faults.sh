#!/usr/bin/env bash
# bench-faults.sh: what publishers are told and what clients get through Redis faults and a
# killed volley process (issue 11, item 7: the scenarios of tests/faults.rs as a benchmark).
#
# Usage: tools/bench-faults.sh [--runs 2] [--clients 40] [--rate 10] [--scenarios 1,2,3,4,5,6]
#                              [--hang-s 8] [--hold-s 8] [--presence-ttl-s 15]
#                              [--timeout-s 900] [--volley-bin PATH] [--no-build]
#                              [--strict] [--json] [--keep-logs]
#
#   Each run starts its own redis-server (--save "" --appendonly no) on a free 127.0.0.1
#   port and two `volley serve --redis ... --shards 2` (A and B) on two more, connects
#   --clients native clients (u0..u39; half on A, half on B; each its own user, each in
#   room `r`), and publishes ~--rate messages/s through the HTTP API, alternating A and B and
#   rotating broadcast / room r / one user. Every message has its own Idempotency-Key; 503
#   and 504 (and a request that got no answer) are retried with the same key for up to 30 s;
#   a refused connection is retried on the other process. Clients keep the last [seq, epoch]
#   per channel, ack their user messages, and reconnect with ?resume= whenever their
#   connection drops (on the other process when theirs refuses connections). Scenarios, in
#   order, each with 3 s of normal traffic before the fault and a bounded settle after it:
#     1  Redis hung --hang-s (SIGSTOP, then SIGCONT)
#     2  Redis SIGKILLed, down 2 s, restarted empty on the same port
#     3  subscriber links killed (CLIENT KILL TYPE pubsub, 3 times, 1 s apart)
#     4  requirepass set on the running Redis (other connections killed) for --hold-s,
#        then removed
#     5  maxmemory 1 with noeviction for --hold-s, then maxmemory 0
#     6  volley A SIGKILLed; its clients resume on B (must be last)
#   One table row per scenario: messages (final answer; and every answer, retries included),
#   deliveries expected (200 answers x intended recipients) and delivered, lost, duplicates,
#   out of order (a seq below one already seen in the same epoch, or an older epoch),
#   `recovered:false` events and their reasons, when /healthz first said anything but ok
#   after the fault and when every live process said ok again (from the fault), the time
#   from the heal until every client had every 200-answered message published before it,
#   and the lines volley A and B wrote to their logs during the scenario.
#
#   --runs K            fresh redis-server and volley processes for each run (default 2)
#   --clients N         native clients (default 40)
#   --rate R            publishes started per second (default 10)
#   --scenarios LIST    which scenarios, in order (default 1,2,3,4,5,6)
#   --hang-s S          how long Redis stays stopped in scenario 1 (default 8)
#   --hold-s S          how long scenarios 4 and 5 hold the fault (default 8)
#   --presence-ttl-s S  volley --presence-ttl-s (default 15, volley's default)
#   --timeout-s T       hard limit for all runs after the build (default 900; a run takes
#                       2-5 minutes: each scenario settles for at most 40 s)
#   --volley-bin PATH   server binary (default target/release/volley, built if missing)
#   --no-build          never run cargo build
#   --strict            exit 1 when a message answered 200 was lost, duplicated or out of
#                       order, a refused (502/503) message was delivered, or a 504 twice
#   --json              print one JSON array of the runs' reports instead of Markdown
#   --keep-logs         keep the log directory (its path is printed); default: removed
#
# Driver: tools/bench_faults.py (python3 with the `websockets` package that tools/test.sh
# installs). Only the processes started here are stopped, by PID: redis-server, volley A
# and B (SIGTERM, SIGKILL after 15 s), and the driver. Loopback only; every wait is bounded.
set -euo pipefail

RUNS=2
CLIENTS=40
RATE=10
SCENARIOS=1,2,3,4,5,6
HANG_S=8
HOLD_S=8
PRESENCE_TTL_S=15
TIMEOUT_S=900
VOLLEY_BIN=""
BUILD=1
STRICT=0
JSON=0
KEEP_LOGS=0

PROG=bench-faults
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) need_value "$@"; RUNS="$2"; shift 2 ;;
        --clients) need_value "$@"; CLIENTS="$2"; shift 2 ;;
        --rate) need_value "$@"; RATE="$2"; shift 2 ;;
        --scenarios) need_value "$@"; SCENARIOS="$2"; shift 2 ;;
        --hang-s) need_value "$@"; HANG_S="$2"; shift 2 ;;
        --hold-s) need_value "$@"; HOLD_S="$2"; shift 2 ;;
        --presence-ttl-s) need_value "$@"; PRESENCE_TTL_S="$2"; shift 2 ;;
        --timeout-s) need_value "$@"; TIMEOUT_S="$2"; shift 2 ;;
        --volley-bin) need_value "$@"; VOLLEY_BIN="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --strict) STRICT=1; shift ;;
        --json) JSON=1; shift ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1; see --help" ;;
    esac
done
for pair in "--runs:$RUNS" "--clients:$CLIENTS" "--rate:$RATE" "--hang-s:$HANG_S" \
            "--hold-s:$HOLD_S" "--presence-ttl-s:$PRESENCE_TTL_S" "--timeout-s:$TIMEOUT_S"; do
    is_uint "${pair#*:}" || die "${pair%%:*} ${pair#*:}: must be a whole number"
done
(( RUNS >= 1 && RUNS <= 10 )) || die "--runs $RUNS: must be 1..=10"
(( CLIENTS >= 2 && CLIENTS <= 1000 )) || die "--clients $CLIENTS: must be 2..=1000"
(( RATE >= 1 && RATE <= 200 )) || die "--rate $RATE: must be 1..=200"
(( HANG_S >= 1 && HANG_S <= 60 && HOLD_S >= 1 && HOLD_S <= 60 )) || die "--hang-s and --hold-s: 1..=60"
(( TIMEOUT_S >= 60 )) || die "--timeout-s $TIMEOUT_S: must be at least 60"
[[ "$SCENARIOS" =~ ^[1-6](,[1-6])*$ ]] || die "--scenarios $SCENARIOS: a comma-separated list of 1..6"
command -v python3 >/dev/null || die "python3 not found"
python3 -c 'import websockets.asyncio.client' 2>/dev/null \
    || die "the python websockets package (>= 13) is missing; tools/test.sh --install-only installs it"
REDIS_SERVER="$(command -v redis-server || true)"
[[ -n "$REDIS_SERVER" ]] || die "redis-server not found; tools/test.sh --install-only installs it"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
COMMAND="tools/bench-faults.sh --runs $RUNS --clients $CLIENTS --rate $RATE --scenarios $SCENARIOS --hang-s $HANG_S --hold-s $HOLD_S --presence-ttl-s $PRESENCE_TTL_S"

VOLLEY="${VOLLEY_BIN:-$REPO/target/release/volley}"
if [[ ! -x "$VOLLEY" && -z "$VOLLEY_BIN" ]] && (( BUILD )); then
    log "building release volley (cargo build --release -p volley)"
    timeout 3600 cargo build --release -p volley >&2 || die "cargo build --release failed"
fi
[[ -x "$VOLLEY" ]] || die "$VOLLEY: no such executable; build it or pass --volley-bin"
LOGS="$(mktemp -d /tmp/bench-faults.XXXXXX)"
# A copy, so a concurrent rebuild cannot swap the binary between runs.
cp "$VOLLEY" "$LOGS/volley"
VOLLEY="$LOGS/volley"
PIDFILE="$LOGS/pids"
: >"$PIDFILE"

DRIVER_PID=""
WATCHDOG_PID=""
# Stops what a driver started, by the PIDs it wrote, if it could not (it was killed): only
# a PID whose command line is still the program we started.
stop_leftovers() {
    local pid what exe
    [[ -s "$PIDFILE" ]] || return 0
    while read -r pid what; do
        [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || continue
        exe="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
        case "$what" in
            redis-server) [[ "$exe" == *redis-server* ]] || continue
                          kill -CONT "$pid" 2>/dev/null || true ;;
            volley*) [[ "$exe" == "$VOLLEY serve"* ]] || continue ;;
            *) continue ;;
        esac
        log "stopping leftover $what ($pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    done <"$PIDFILE"
    : >"$PIDFILE"
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$DRIVER_PID" ]] && kill -0 "$DRIVER_PID" 2>/dev/null; then
        kill -TERM "$DRIVER_PID" 2>/dev/null || true
        for _ in $(seq 1 300); do kill -0 "$DRIVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$DRIVER_PID" 2>/dev/null && kill -KILL "$DRIVER_PID" 2>/dev/null || true
    fi
    stop_leftovers
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

REPORTS=()
for k in $(seq 1 "$RUNS"); do
    mkdir -p "$LOGS/run$k"
    load0="$(cut -d' ' -f1 /proc/loadavg)"
    log "run $k of $RUNS (load average $load0); logs in $LOGS/run$k"
    rc=0
    python3 "$REPO/tools/bench_faults.py" run --volley-bin "$VOLLEY" \
        --redis-server "$REDIS_SERVER" --logs "$LOGS/run$k" --pidfile "$PIDFILE" \
        --out "$LOGS/run$k.json" --clients "$CLIENTS" --rate "$RATE" \
        --scenarios "$SCENARIOS" --hang-s "$HANG_S" --hold-s "$HOLD_S" \
        --presence-ttl-s "$PRESENCE_TTL_S" 2>"$LOGS/run$k/driver.err" &
    DRIVER_PID=$!
    wait "$DRIVER_PID" || rc=$?
    DRIVER_PID=""
    stop_leftovers
    (( rc == 0 )) || { tail -30 "$LOGS/run$k/driver.err" >&2; die "run $k: the driver exited with $rc"; }
    python3 - "$LOGS/run$k.json" "$load0" "$(cut -d' ' -f1 /proc/loadavg)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r["load_average_before"], r["load_average_after"] = sys.argv[2], sys.argv[3]
json.dump(r, open(sys.argv[1], "w"), indent=1)
PY
    REPORTS+=("$LOGS/run$k.json")
    sleep 2
done

if (( JSON )); then
    COMMAND="$COMMAND" KERNEL="$(uname -r)" NPROC="$(nproc)" DATE="$(date -u +%Y-%m-%dT%H:%MZ)" \
    python3 - "${REPORTS[@]}" <<'PY'
import json, os, sys
e = os.environ
print(json.dumps({"command": e["COMMAND"], "kernel": e["KERNEL"], "nproc": int(e["NPROC"]),
                  "date": e["DATE"], "runs": [json.load(open(p)) for p in sys.argv[1:]]}, indent=1))
PY
else
    echo "### Faults runs ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "Machine: Linux $(uname -r), $(nproc) cores (redis-server, both volley processes and the driver share them), loopback."
    echo "Command: \`$COMMAND\`"
    echo
    python3 "$REPO/tools/bench_faults.py" report "${REPORTS[@]}"
    for k in "${!REPORTS[@]}"; do
        python3 - "${REPORTS[$k]}" "$(( k + 1 ))" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"Run {sys.argv[2]}: load average {r['load_average_before']} before, {r['load_average_after']} after; "
      f"{r['client_connects']} client connections, failed connects: {r['client_connect_errors'] or 0}; "
      f"offline-inbox entries left at the end (every user online, every user message acked): "
      f"{r['inbox_entries_left'] or 0}.")
for s in r["scenarios"]:
    notes = []
    if s["health_reasons"]:
        top = sorted(s["health_reasons"].items(), key=lambda kv: -kv[1])[:3]
        notes.append("healthz said: " + " | ".join(f"{c}x {w}" for w, c in top))
    if s["recovered_false"]:
        notes.append("recovered:false reasons: " + " | ".join(f"{c}x {w}" for w, c in s["recovered_false"].items()))
    if s["retried_then_200_duplicate_true"]:
        notes.append(f"{s['retried_then_200_duplicate_true']} retries answered 200 with duplicate:true")
    if s["unknown_recipients"]:
        notes.append(f"504/no answer at the end: delivered to {s['unknown_delivered']} of {s['unknown_recipients']} recipients")
    if s["lost_by_kind"] or s["duplicates_by_kind"]:
        notes.append(f"lost by kind {s['lost_by_kind']}, duplicates by kind {s['duplicates_by_kind']}")
    if s["lost_examples"]:
        notes.append("lost, e.g.: " + json.dumps(s["lost_examples"][:3]))
    if s["health_polls_unanswered"]:
        notes.append(f"{s['health_polls_unanswered']} /healthz polls unanswered in 3 s")
    notes.append(f"client drops {s['client_drops']}, recovered:true {s['recovered_true']} (replayed {s['replayed']}), seq gaps seen live (a new epoch not starting at 1 included) {s['seq_gaps_seen_live']}, log lines {s['log_lines']}")
    print(f"- scenario {s['scenario']}: " + "; ".join(notes))
print()
PY
    done
fi

if (( STRICT )); then
    bad="$(python3 "$REPO/tools/bench_faults.py" violations "${REPORTS[@]}")"
    if (( bad > 0 )); then
        log "--strict: $bad losses, duplicates, out-of-order or refused deliveries (see the table)"
        exit 1
    fi
fi
