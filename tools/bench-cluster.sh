#!/usr/bin/env bash
# bench-cluster.sh: a cluster of two volley processes through Redis against one standalone
# process, on loopback: server CPU per delivered message and POST-to-last-client time.
# Target (the Redis issue): Redis adds at most 20% CPU per delivered message over standalone.
#
# Usage: tools/bench-cluster.sh [--conns 18500] [--broadcasts 20] [--interval-ms 500]
#                               [--conns-b N] [--size 100] [--rate 5000] [--order ABAB] [--shards-a 2]
#                               [--ping-interval-s 600] [--timeout-s 1800]
#                               [--volley-bin PATH] [--no-build] [--json] [--keep-logs]
#
#   Scenario A (standalone): one `volley serve --shards 2 --cpus 0,1` (no Redis), --conns
#     connections from one `swarm hold`, --broadcasts broadcasts through POST /api/broadcast
#     (shard to shard over the in-process channel mesh).
#     --shards 2, not 1: B uses both cores (one single-shard process per CPU), so A gets the
#     same two executors on the same two CPUs, and the comparison isolates what B changes:
#     two processes and the Redis round trip instead of the in-process mesh.
#   Scenario B (cluster): `tools/cluster.sh --processes 2 --shards-per-process 1` (one
#     redis-server; volley 0 on CPU 0, volley 1 on CPU 1, same port by SO_REUSEPORT),
#     2 x --conns connections from two `swarm hold` processes (each under the 20,000
#     open-file limit), the same broadcasts through POST /api/broadcast, which publishes to
#     Redis; each process's shard gets it back from its subscription and fans out locally.
#   Both scenarios run volley with --ping-interval-s (default 600, idle timeout twice that)
#   so no heartbeat round (one send per client, as costly as a broadcast) falls inside the
#   measured window; pings are not what is compared here.
#
#   For every run it reports:
#     - server CPU per delivered message: utime+stime of every volley process over the
#       publish window (first POST until every client has every message), divided by the
#       messages delivered; redis-server's CPU over the same window separately, and the sum
#     - POST-to-last-client time: per broadcast, the latest client receive minus the t_us
#       the publisher stamped just before its POST (swarm's per-seq last_receive_us);
#       median and max over the broadcasts
#     - lost / duplicated / gaps / disconnects (swarm), publish failures
#     - server RSS per connection: sum over volley processes of (VmRSS after connecting -
#       before) / connections; redis-server RSS separately
#     - connections per process (socket fds of each volley process, before vs after)
#     - the swarms' own CPU per message (they share the 2 cores), for context
#     - unexpected lines in volley's stderr (anything but its start-up lines)
#   then the ratio B/A of CPU per delivered message (volley only, and volley + Redis), per
#   A/B pair and over the means, against the 20% target, as a Markdown block (or JSON).
#
#   --conns N          connections per volley process (default 18500; A holds N, B 2 x N)
#   --conns-b M        connections per volley process in B (default: --conns). A control:
#                      --conns-b half of --conns gives B the same total as A, which separates
#                      what Redis costs from what twice the clients on the same 2 cores cost
#   --broadcasts K     broadcasts per run (default 20; at most 500)
#   --interval-ms I    time between broadcasts (default 500)
#   --size B           broadcast body bytes (default 100)
#   --rate R           connections opened per second, all swarms of a run together (default 5000)
#   --order S          scenarios in run order, letters A and B (default ABAB; at most 12)
#   --shards-a S       shards of the standalone process in A (default 2; 1 = one core)
#   --ping-interval-s P  volley --ping-interval-s for both scenarios (default 600)
#   --timeout-s T      hard limit for the whole benchmark after the build (default 1800)
#   --volley-bin PATH  server binary (default target/release/volley)
#   --no-build         use the binaries already in target/release
#   --json             print every run and the ratios as JSON instead of Markdown
#   --keep-logs        keep the log directory (default: removed unless something failed)
#
# Only processes this script started are stopped, by PID: swarms (SIGINT), the standalone
# volley (SIGTERM, SIGKILL after 20 s), and tools/cluster.sh (SIGTERM; it stops its own
# volley processes and redis-server the same way). Loopback only; every wait is bounded.
set -euo pipefail

CONNS=18500
CONNS_B=""
BROADCASTS=20
INTERVAL_MS=500
SIZE=100
RATE=5000
ORDER=ABAB
SHARDS_A=2
PING_S=600
TIMEOUT_S=1800
VOLLEY_BIN=""
BUILD=1
JSON=0
KEEP_LOGS=0
CONNS_PER_PROCESS_MAX=19000
# volley --max-connections per process: SO_REUSEPORT does not split exactly in half.
SERVER_MAX_CONNS=19700
HEALTH_WAIT_S=30
DELIVERY_QUIET_S=3
DELIVERY_WAIT_S=60

PROG=bench-cluster
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --conns) need_value "$@"; CONNS="$2"; shift 2 ;;
        --conns-b) need_value "$@"; CONNS_B="$2"; shift 2 ;;
        --broadcasts) need_value "$@"; BROADCASTS="$2"; shift 2 ;;
        --interval-ms) need_value "$@"; INTERVAL_MS="$2"; shift 2 ;;
        --size) need_value "$@"; SIZE="$2"; shift 2 ;;
        --rate) need_value "$@"; RATE="$2"; shift 2 ;;
        --order) need_value "$@"; ORDER="$2"; shift 2 ;;
        --shards-a) need_value "$@"; SHARDS_A="$2"; shift 2 ;;
        --ping-interval-s) need_value "$@"; PING_S="$2"; shift 2 ;;
        --timeout-s) need_value "$@"; TIMEOUT_S="$2"; shift 2 ;;
        --volley-bin) need_value "$@"; VOLLEY_BIN="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --json) JSON=1; shift ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1; see --help" ;;
    esac
done
CONNS_B="${CONNS_B:-$CONNS}"
for pair in "--conns:$CONNS" "--conns-b:$CONNS_B" "--broadcasts:$BROADCASTS" "--interval-ms:$INTERVAL_MS" "--size:$SIZE" \
            "--rate:$RATE" "--shards-a:$SHARDS_A" "--ping-interval-s:$PING_S" "--timeout-s:$TIMEOUT_S"; do
    is_uint "${pair#*:}" || die "${pair%%:*} ${pair#*:}: must be a whole number"
done
(( CONNS >= 1 && CONNS <= CONNS_PER_PROCESS_MAX )) \
    || die "--conns $CONNS: must be 1..=$CONNS_PER_PROCESS_MAX (per process; the open-file limit is 20,000)"
(( CONNS_B >= 1 && CONNS_B <= CONNS_PER_PROCESS_MAX )) \
    || die "--conns-b $CONNS_B: must be 1..=$CONNS_PER_PROCESS_MAX (per process; the open-file limit is 20,000)"
(( BROADCASTS >= 1 && BROADCASTS <= 500 )) || die "--broadcasts $BROADCASTS: must be 1..=500 (swarm tracks 511 seqs)"
(( RATE >= 2 )) || die "--rate $RATE: must be at least 2"
(( PING_S >= 1 && PING_S <= 3600 )) || die "--ping-interval-s $PING_S: must be 1..=3600"
(( TIMEOUT_S >= 60 )) || die "--timeout-s $TIMEOUT_S: must be at least 60"
[[ "$ORDER" =~ ^[AB]{1,12}$ ]] || die "--order $ORDER: must be 1 to 12 letters A or B, e.g. ABAB"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
mapfile -t CPUS < <(python3 -c 'import os; print("\n".join(map(str, sorted(os.sched_getaffinity(0)))))')
(( SHARDS_A >= 1 && SHARDS_A <= ${#CPUS[@]} )) || die "--shards-a $SHARDS_A: must be 1..=${#CPUS[@]} (CPUs here)"
(( ${#CPUS[@]} >= 2 )) || log "WARNING: only ${#CPUS[@]} CPU available; B's two processes share it"
CPUS_A="$(IFS=,; echo "${CPUS[*]:0:$SHARDS_A}")"
COMMAND="tools/bench-cluster.sh --conns $CONNS --conns-b $CONNS_B --broadcasts $BROADCASTS --interval-ms $INTERVAL_MS --size $SIZE --rate $RATE --order $ORDER --shards-a $SHARDS_A --ping-interval-s $PING_S"
IDLE_S=$(( PING_S * 2 ))

if (( BUILD )); then
    log "building release volley and swarm (cargo build --release -p volley -p swarm)"
    timeout 1800 cargo build --release -p volley -p swarm >&2 || die "cargo build failed"
fi
VOLLEY="${VOLLEY_BIN:-$REPO/target/release/volley}"
SWARM="$REPO/target/release/swarm"
[[ -x "$VOLLEY" ]] || die "$VOLLEY: no such executable; build it or pass --volley-bin"
[[ -x "$SWARM" ]] || die "$SWARM: no such executable; run without --no-build"
command -v redis-server >/dev/null || die "redis-server not found (Debian: apt-get install redis-server)"

LOGS="$(mktemp -d /tmp/bench-cluster.XXXXXX)"
SERVER_PIDS=()       # volley processes of the current run (A: started here; B: by cluster.sh)
STANDALONE_PID=""    # A's volley, started here
CLUSTER_PID=""       # B's tools/cluster.sh
REDIS_PID=""
SWARM_PIDS=()
PUBLISH_PID=""
WATCHDOG_PID=""
FAILED=0

wait_gone() { # pid seconds -> 0 when gone
    for _ in $(seq 1 $(( $2 * 10 ))); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    return 1
}
stop_swarms() {
    for pid in "${SWARM_PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${SWARM_PIDS[@]}"; do
        wait_gone "$pid" 10 || { log "swarm $pid still running 10 s after SIGINT; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
        wait "$pid" 2>/dev/null || true
    done
    SWARM_PIDS=()
}
stop_servers() { # sets SERVER_RCS
    SERVER_RCS=()
    if [[ -n "$STANDALONE_PID" ]]; then
        kill -TERM "$STANDALONE_PID" 2>/dev/null || true
        wait_gone "$STANDALONE_PID" 20 || { log "volley $STANDALONE_PID still running 20 s after SIGTERM; SIGKILL"; kill -KILL "$STANDALONE_PID" 2>/dev/null || true; }
        local rc=0; wait "$STANDALONE_PID" 2>/dev/null || rc=$?
        SERVER_RCS+=("$rc")
        STANDALONE_PID=""
    fi
    if [[ -n "$CLUSTER_PID" ]]; then
        kill -TERM "$CLUSTER_PID" 2>/dev/null || true
        if ! wait_gone "$CLUSTER_PID" 45; then
            log "tools/cluster.sh $CLUSTER_PID still running 45 s after SIGTERM; SIGKILL to it and its processes"
            kill -KILL "$CLUSTER_PID" 2>/dev/null || true
            for pid in "${SERVER_PIDS[@]}" $REDIS_PID; do kill -KILL "$pid" 2>/dev/null || true; done
        fi
        wait "$CLUSTER_PID" 2>/dev/null || true
        CLUSTER_PID=""
        REDIS_PID=""
    fi
    SERVER_PIDS=()
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$PUBLISH_PID" ]]; then kill -TERM "$PUBLISH_PID" 2>/dev/null || true; fi
    stop_swarms
    stop_servers
    if [[ -n "$WATCHDOG_PID" ]]; then kill -TERM "$WATCHDOG_PID" 2>/dev/null || true; fi
    if (( KEEP_LOGS )) || (( rc != 0 )) || (( FAILED )); then
        log "logs kept in $LOGS"
    else
        rm -rf "$LOGS"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "stopped (signal or --timeout-s $TIMEOUT_S reached)"; exit 124' TERM

MAIN_PID=$$
( s=""; trap '[[ -n "$s" ]] && kill "$s" 2>/dev/null; exit 0' TERM
  sleep "$TIMEOUT_S" & s=$!; wait "$s"; kill -TERM "$MAIN_PID" 2>/dev/null ) &
WATCHDOG_PID=$!

# --- helpers ---------------------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
ticks() { # utime+stime of one process (all its threads)
    local stat; stat="$(cat "/proc/$1/stat")"; stat="${stat##*) }"
    awk '{print $12 + $13}' <<<"$stat"
}
ticks_sum() { local t=0 p; for p in "$@"; do t=$(( t + $(ticks "$p") )); done; echo "$t"; }
sched_ns_sum() { # run time of every thread of the given processes (schedstat, ns)
    local p; for p in "$@"; do cat /proc/"$p"/task/*/schedstat 2>/dev/null; done | awk '{t += $1} END {printf "%.0f\n", t}'
}
sockets() { find "/proc/$1/fd" -lname 'socket:*' 2>/dev/null | wc -l; }
swarm_msgs() { # sum of the latest msgs= over this run's swarms
    local total=0 n f
    for f in "$RUN_DIR"/swarm*.err; do
        n="$(grep -o 'msgs=[0-9]*' "$f" 2>/dev/null | tail -1 | cut -d= -f2)"
        total=$(( total + ${n:-0} ))
    done
    echo "$total"
}
servers_alive() {
    local p; for p in "${SERVER_PIDS[@]}"; do kill -0 "$p" 2>/dev/null || die "volley $p exited early; see $RUN_DIR"; done
    if [[ -n "$REDIS_PID" ]]; then kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server $REDIS_PID exited early; see $RUN_DIR"; fi
}

# --- one run ----------------------------------------------------------------------------
run_one() { # index scenario
    local idx="$1" sc="$2"
    RUN_DIR="$LOGS/run$idx-$sc"; mkdir -p "$RUN_DIR"
    local port redis_port="" nswarms per_swarm=$CONNS
    if [[ "$sc" == A ]]; then
        port="$(free_port)"
        log "run $idx (A): volley serve --shards $SHARDS_A --cpus $CPUS_A standalone on port $port"
        "$VOLLEY" serve --listen "127.0.0.1:$port" --shards "$SHARDS_A" --cpus "$CPUS_A" \
            --max-connections "$SERVER_MAX_CONNS" --ping-interval-s "$PING_S" --idle-timeout-s "$IDLE_S" \
            >"$RUN_DIR/volley0.log" 2>&1 &
        STANDALONE_PID=$!
        SERVER_PIDS=("$STANDALONE_PID")
        for i in $(seq 1 $(( HEALTH_WAIT_S * 10 ))); do
            servers_alive
            curl -sf --max-time 1 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
            (( i == HEALTH_WAIT_S * 10 )) && die "no answer on /healthz after ${HEALTH_WAIT_S} s; see $RUN_DIR/volley0.log"
            sleep 0.1
        done
        nswarms=1
    else
        log "run $idx (B): tools/cluster.sh --processes 2 --shards-per-process 1"
        tools/cluster.sh --processes 2 --port 0 --shards-per-process 1 \
            --max-connections-per-process "$SERVER_MAX_CONNS" --duration-s "$TIMEOUT_S" \
            --status-every-s 0 --log-dir "$RUN_DIR" --state-file "$RUN_DIR/state.json" \
            --volley-bin "$VOLLEY" -- --ping-interval-s "$PING_S" --idle-timeout-s "$IDLE_S" \
            >"$RUN_DIR/cluster.out" 2>"$RUN_DIR/cluster.err" &
        CLUSTER_PID=$!
        for i in $(seq 1 $(( HEALTH_WAIT_S * 10 + 100 ))); do
            [[ -s "$RUN_DIR/state.json" ]] && break
            kill -0 "$CLUSTER_PID" 2>/dev/null || { cat "$RUN_DIR/cluster.err" >&2; die "tools/cluster.sh exited before the cluster was up"; }
            (( i == HEALTH_WAIT_S * 10 + 100 )) && die "tools/cluster.sh: no cluster after $(( HEALTH_WAIT_S + 10 )) s; see $RUN_DIR/cluster.err"
            sleep 0.1
        done
        read -r port redis_port REDIS_PID pids < <(python3 -c 'import json,sys
d = json.load(open(sys.argv[1]))
print(d["port"], d["redis_port"], d["redis_pid"], ",".join(map(str, d["volley_pids"])))' "$RUN_DIR/state.json")
        IFS=, read -r -a SERVER_PIDS <<<"$pids"
        nswarms=2
        per_swarm=$CONNS_B
    fi
    sleep 0.5
    local rss_before=() sock_before=() p
    for p in "${SERVER_PIDS[@]}"; do rss_before+=("$(rss_kb "$p")"); sock_before+=("$(sockets "$p")"); done
    local redis_rss_before=0
    [[ -n "$REDIS_PID" ]] && redis_rss_before="$(rss_kb "$REDIS_PID")"

    # swarms: N connections each, 8 source addresses each, the run's rate split between them
    local total=$(( per_swarm * nswarms ))
    local connect_wait=$(( total / RATE + 40 ))
    local hold_s=$(( connect_wait + 10 + BROADCASTS * INTERVAL_MS / 1000 + DELIVERY_WAIT_S + 30 ))
    for (( i = 0; i < nswarms; i++ )); do
        "$SWARM" hold --url "ws://127.0.0.1:$port/ws" --conns "$per_swarm" --rate $(( RATE / nswarms )) \
            --duration-s "$hold_s" --sources "127.0.$(( idx * 2 + i + 1 )).1-127.0.$(( idx * 2 + i + 1 )).8" \
            >"$RUN_DIR/swarm$i.json" 2>"$RUN_DIR/swarm$i.err" &
        SWARM_PIDS+=($!)
    done
    log "run $idx ($sc): $nswarms swarm(s) (pids ${SWARM_PIDS[*]}) opening $total connections"

    local counted=0 start=$SECONDS last_counted=-1 stable_since=$SECONDS
    while (( SECONDS - start < connect_wait )); do
        servers_alive
        counted=0
        for i in "${!SERVER_PIDS[@]}"; do counted=$(( counted + $(sockets "${SERVER_PIDS[$i]}") - ${sock_before[$i]} )); done
        (( counted >= total )) && break
        # every swarm finished connecting and the count stopped moving: some failed
        done_n=0; for f in "$RUN_DIR"/swarm*.err; do grep -q "connect phase done" "$f" 2>/dev/null && done_n=$(( done_n + 1 )); done
        if (( counted != last_counted )); then last_counted=$counted; stable_since=$SECONDS; fi
        (( done_n == nswarms && SECONDS - stable_since >= 3 )) && break
        sleep 0.5
    done
    (( counted < total )) && log "WARNING: run $idx ($sc): the servers hold $counted of $total connections"
    (( counted > 0 )) || die "run $idx ($sc): no connection was established; see $RUN_DIR"
    sleep 2
    local per_proc=() rss_after=()
    for i in "${!SERVER_PIDS[@]}"; do
        per_proc+=($(( $(sockets "${SERVER_PIDS[$i]}") - ${sock_before[$i]} )))
        rss_after+=("$(rss_kb "${SERVER_PIDS[$i]}")")
    done
    local redis_rss_after=0 numsub=""
    if [[ -n "$REDIS_PID" ]]; then
        redis_rss_after="$(rss_kb "$REDIS_PID")"
        numsub="$(redis-cli -p "$redis_port" PUBSUB NUMSUB volley:all 2>/dev/null | tail -n 1 || true)"
    fi
    local idle0 idle1
    idle0="$(ticks_sum "${SERVER_PIDS[@]}")"; sleep 2; idle1="$(ticks_sum "${SERVER_PIDS[@]}")"
    log "run $idx ($sc): connections per process ${per_proc[*]}; publishing $BROADCASTS x $SIZE B every $INTERVAL_MS ms"

    # publish window
    local cpu0 ns0 rcpu0=0 scpu0 msgs0 cpu1 ns1 rcpu1=0 scpu1
    cpu0="$(ticks_sum "${SERVER_PIDS[@]}")"; ns0="$(sched_ns_sum "${SERVER_PIDS[@]}")"
    local rns0=0 rns1=0
    [[ -n "$REDIS_PID" ]] && { rcpu0="$(ticks "$REDIS_PID")"; rns0="$(sched_ns_sum "$REDIS_PID")"; }
    scpu0="$(ticks_sum "${SWARM_PIDS[@]}")"
    msgs0="$(swarm_msgs)"
    local t0; t0="$(date +%s.%N)"
    "$SWARM" publish --api "http://127.0.0.1:$port" --count "$BROADCASTS" --interval-ms "$INTERVAL_MS" \
        --size "$SIZE" >"$RUN_DIR/publish.json" 2>"$RUN_DIR/publish.err" &
    PUBLISH_PID=$!
    wait "$PUBLISH_PID" || { FAILED=1; log "run $idx ($sc): swarm publish failed; see $RUN_DIR/publish.err"; }
    PUBLISH_PID=""
    local expected=$(( BROADCASTS * counted )) got last="" quiet_since=$SECONDS wait_start=$SECONDS
    while (( SECONDS - wait_start < DELIVERY_WAIT_S )); do
        got=$(( $(swarm_msgs) - msgs0 ))
        (( got >= expected )) && break
        if [[ "$got" != "$last" ]]; then last="$got"; quiet_since=$SECONDS; fi
        (( SECONDS - quiet_since >= DELIVERY_QUIET_S )) && break
        sleep 0.2
    done
    cpu1="$(ticks_sum "${SERVER_PIDS[@]}")"; ns1="$(sched_ns_sum "${SERVER_PIDS[@]}")"
    [[ -n "$REDIS_PID" ]] && { rcpu1="$(ticks "$REDIS_PID")"; rns1="$(sched_ns_sum "$REDIS_PID")"; }
    scpu1="$(ticks_sum "${SWARM_PIDS[@]}")"
    local window_s; window_s="$(python3 -c "import sys,time; print(round(time.time()-float(sys.argv[1]),2))" "$t0")"

    stop_swarms
    stop_servers
    local rcs; rcs="$(IFS=,; echo "${SERVER_RCS[*]}")"
    if [[ "$sc" == B ]]; then
        rcs="$(grep -o 'exited with code [0-9]*' "$RUN_DIR/cluster.err" | awk '{print $4}' | paste -sd, -)"
    fi

    # figures of this run
    RUN_IDX="$idx" SC="$sc" TOTAL="$total" COUNTED="$counted" PER_PROC="${per_proc[*]}" \
    RSS_BEFORE="${rss_before[*]}" RSS_AFTER="${rss_after[*]}" REDIS_RSS_BEFORE="$redis_rss_before" \
    REDIS_RSS_AFTER="$redis_rss_after" NUMSUB="$numsub" IDLE0="$idle0" IDLE1="$idle1" \
    CPU0="$cpu0" CPU1="$cpu1" NS0="$ns0" NS1="$ns1" RCPU0="$rcpu0" RCPU1="$rcpu1" RNS0="$rns0" RNS1="$rns1" SCPU0="$scpu0" SCPU1="$scpu1" \
    WINDOW_S="$window_s" RCS="$rcs" RUN_DIR="$RUN_DIR" NSERVERS="${#per_proc[@]}" \
    CLK_TCK="$CLK_TCK" BROADCASTS="$BROADCASTS" \
    python3 - >"$RUN_DIR/fig.json" <<'PY'
import glob, json, os, re
e = os.environ
i = lambda k: int(e[k])
ints = lambda k: [int(x) for x in e[k].split()]
tick_us = 1e6 / i("CLK_TCK")
d = e["RUN_DIR"]
reports = []
for p in sorted(glob.glob(os.path.join(d, "swarm*.json"))):
    try:
        reports.append(json.load(open(p)))
    except Exception:
        pass
try:
    pub = json.load(open(os.path.join(d, "publish.json")))
except Exception:
    pub = {}
s = lambda key: sum(r.get(key) or 0 for r in reports)
n, k = i("COUNTED"), i("BROADCASTS")
expected = n * k
probes, dups = s("probes_received"), s("duplicates")
per_seq = {}
for r in reports:
    for row in r.get("seqs", []):
        per_seq[row["seq"]] = max(per_seq.get(row["seq"], 0), row["last_receive_us"])
last = sorted(per_seq.values())
lat = [r.get("latency_us", {}) for r in reports]
reasons = {}
for r in reports:
    for why, c in (r.get("disconnect_reasons") or {}).items():
        reasons[why] = reasons.get(why, 0) + c
    for why, c in (r.get("connect_failures") or {}).items():
        reasons["connect: " + why] = reasons.get("connect: " + why, 0) + c
# volley stderr: anything but the start-up lines
# (plain or tracing format: `<time> <LEVEL> volley: ...`)
known = [r"volley: warning: open file limit is", r"volley: listening on", r"volley: dev console at",
         r"volley: WARNING: no --jwt-secret", r"volley: no --api-key:",
         r"redis (subscriber|command) link to \S+ is up( shard=\d+)?$"]
odd = []
for p in sorted(glob.glob(os.path.join(d, "volley*.log"))):
    for line in open(p, errors="replace"):
        line = line.rstrip("\n")
        if line and not any(re.search(k_, line) for k_ in known):
            odd.append(os.path.basename(p) + ": " + line)
delivered = probes - dups
cpu_us = (i("CPU1") - i("CPU0")) * tick_us
redis_us = (i("RCPU1") - i("RCPU0")) * tick_us
swarm_us = (i("SCPU1") - i("SCPU0")) * tick_us
per = lambda us: round(us / delivered, 3) if delivered else None
rb, ra = ints("RSS_BEFORE"), ints("RSS_AFTER")
fig = {
    "run": i("RUN_IDX"), "scenario": e["SC"],
    "volley_processes": i("NSERVERS"),
    "conns_requested": i("TOTAL"), "conns_held": n, "conns_per_process": ints("PER_PROC"),
    "conns_connected_by_swarm": s("conns_connected"), "connect_failures": s("conns_failed"),
    "connect_time_s": max((r.get("connect_time_s") or 0 for r in reports), default=None),
    "redis_subscribers": e["NUMSUB"] or None,
    "server_rss_per_conn_bytes": round((sum(ra) - sum(rb)) * 1024 / n) if n else None,
    "server_rss_after_kb": ra,
    "redis_rss_delta_kb": i("REDIS_RSS_AFTER") - i("REDIS_RSS_BEFORE"),
    "server_cpu_idle_us_per_s": round((i("IDLE1") - i("IDLE0")) * tick_us / 2),
    "publish_ok": pub.get("ok"), "publish_failed": pub.get("failed"),
    "publish_nodes": [pub.get("nodes_min"), pub.get("nodes_max")],
    "post_us_p50": (pub.get("post_us") or {}).get("p50"),
    "post_us_max": (pub.get("post_us") or {}).get("max"),
    "messages_expected": expected, "messages_received": probes, "messages_delivered": delivered,
    "lost": expected - delivered, "duplicates": dups, "gaps": s("gaps"),
    "disconnects": s("disconnects"), "disconnect_reasons": reasons,
    "window_s": float(e["WINDOW_S"]),
    "volley_cpu_ms": round(cpu_us / 1000), "redis_cpu_ms": round(redis_us / 1000),
    "volley_cpu_us_per_msg": per(cpu_us),
    "volley_cpu_us_per_msg_schedstat": per((i("NS1") - i("NS0")) / 1000),
    "redis_cpu_us_per_msg": per(redis_us),
    "redis_cpu_us_per_msg_schedstat": per((i("RNS1") - i("RNS0")) / 1000),
    "volley_plus_redis_cpu_us_per_msg": per(cpu_us + redis_us),
    "swarm_cpu_us_per_msg": per(swarm_us),
    "last_client_ms_median": round(last[len(last) // 2] / 1000, 1) if last else None,
    "last_client_ms_max": round(last[-1] / 1000, 1) if last else None,
    "latency_p50_ms": round(max((l.get("p50") or 0 for l in lat), default=0) / 1000, 1),
    "latency_p99_ms": round(max((l.get("p99") or 0 for l in lat), default=0) / 1000, 1),
    "server_exit_codes": e["RCS"],
    "volley_stderr_unexpected": odd[:20], "volley_stderr_unexpected_count": len(odd),
}
print(json.dumps(fig))
PY
    python3 - "$RUN_DIR/fig.json" <<'PY' >&2
import json, sys
f = json.load(open(sys.argv[1]))
print(f"bench-cluster: run {f['run']} ({f['scenario']}): {f['conns_held']} conns {f['conns_per_process']}, "
      f"volley {f['volley_cpu_us_per_msg']} us/msg, redis {f['redis_cpu_us_per_msg']} us/msg, "
      f"last client {f['last_client_ms_median']}/{f['last_client_ms_max']} ms, lost {f['lost']}, dup {f['duplicates']}, "
      f"disconnects {f['disconnects']}, odd stderr lines {f['volley_stderr_unexpected_count']}")
PY
    python3 -c 'import json,sys; f=json.load(open(sys.argv[1])); sys.exit(0 if f["lost"]==0 and f["disconnects"]==0 and f["volley_stderr_unexpected_count"]==0 else 1)' "$RUN_DIR/fig.json" || FAILED=1
    RUN_DIR=""
}

for (( r = 0; r < ${#ORDER}; r++ )); do
    run_one "$(( r + 1 ))" "${ORDER:$r:1}"
    sleep 2
done

# --- report -----------------------------------------------------------------------------
COMMAND="$COMMAND" LOGS="$LOGS" JSON="$JSON" SHARDS_A="$SHARDS_A" CPUS_A="$CPUS_A" CONNS="$CONNS" CONNS_B="$CONNS_B" \
BROADCASTS="$BROADCASTS" INTERVAL_MS="$INTERVAL_MS" SIZE="$SIZE" PING_S="$PING_S" \
KERNEL="$(uname -r)" NPROC="$(nproc)" DATE="$(date -u +%Y-%m-%d)" python3 - <<'PY'
import glob, json, os, statistics
e = os.environ
runs = [json.load(open(p)) for p in glob.glob(os.path.join(e["LOGS"], "run*", "fig.json"))]
runs.sort(key=lambda f: f["run"])
A = [f for f in runs if f["scenario"] == "A"]
B = [f for f in runs if f["scenario"] == "B"]
mean = lambda xs: statistics.mean(xs) if xs else None
def ratio(b, a):
    return round(b / a, 3) if a and b is not None else None
keys = ("volley_cpu_us_per_msg", "volley_plus_redis_cpu_us_per_msg")
ratios = {
    "pairs": [{"a_run": a["run"], "b_run": b["run"],
               **{k: ratio(b[k], a[k]) for k in keys}} for a, b in zip(A, B)],
    "means": {k: ratio(mean([f[k] for f in B if f[k] is not None]), mean([f[k] for f in A if f[k] is not None]))
              for k in keys} if A and B else {},
}
out = {"date": e["DATE"], "kernel": e["KERNEL"], "nproc": int(e["NPROC"]), "command": e["COMMAND"],
       "runs": runs, "ratios_b_over_a": ratios, "target_ratio_max": 1.2}
if e["JSON"] == "1":
    print(json.dumps(out, indent=2))
    raise SystemExit
def cell(v):
    if v is None:
        return "-"
    if isinstance(v, list):
        return " + ".join(map(str, v))
    return str(v)
rows = [
    ("volley processes x shards", lambda f: f"{f['volley_processes']} x {1 if f['scenario']=='B' else e['SHARDS_A']}" + (" + Redis" if f["scenario"] == "B" else "")),
    ("connections held (per process)", lambda f: f"{f['conns_held']} ({cell(f['conns_per_process'])})"),
    ("connect failures / connect time", lambda f: f"{f['connect_failures']} / {f['connect_time_s']} s"),
    ("Redis subscribers of volley:all; `nodes` in POST answers", lambda f: f"{f['redis_subscribers'] or '-'}; {cell(f['publish_nodes']) if f['publish_nodes'][0] is not None else '-'}"),
    ("server RSS per connection (all volley processes)", lambda f: f"{f['server_rss_per_conn_bytes']} B"),
    ("redis-server RSS growth", lambda f: f"{f['redis_rss_delta_kb']} kB" if f["scenario"] == "B" else "-"),
    ("server CPU while idle", lambda f: f"{f['server_cpu_idle_us_per_s']} µs/s"),
    ("messages expected / delivered", lambda f: f"{f['messages_expected']} / {f['messages_delivered']}"),
    ("lost / duplicated / gaps / disconnects", lambda f: f"{f['lost']} / {f['duplicates']} / {f['gaps']} / {f['disconnects']}"),
    ("publish answered 200 / failed", lambda f: f"{f['publish_ok']} / {f['publish_failed']}"),
    ("**volley CPU per delivered message** (schedstat)", lambda f: f"**{f['volley_cpu_us_per_msg']} µs** ({f['volley_cpu_us_per_msg_schedstat']})"),
    ("redis-server CPU per delivered message (schedstat)", lambda f: f"{f['redis_cpu_us_per_msg']} µs ({f['redis_cpu_us_per_msg_schedstat']})" if f["scenario"] == "B" else "-"),
    ("volley + Redis CPU per delivered message", lambda f: f"{f['volley_plus_redis_cpu_us_per_msg']} µs"),
    ("swarm CPU per message (load generator, same cores)", lambda f: f"{f['swarm_cpu_us_per_msg']} µs"),
    ("POST-to-last-client, median / max over broadcasts", lambda f: f"{f['last_client_ms_median']} / {f['last_client_ms_max']} ms"),
    ("POST answer time p50 / max", lambda f: f"{round((f['post_us_p50'] or 0)/1000, 1)} / {round((f['post_us_max'] or 0)/1000, 1)} ms"),
    ("latency p50 / p99 (worst swarm)", lambda f: f"{f['latency_p50_ms']} / {f['latency_p99_ms']} ms"),
    ("volley exit codes after SIGTERM", lambda f: f["server_exit_codes"] or "-"),
    ("unexpected volley stderr lines", lambda f: str(f["volley_stderr_unexpected_count"])),
]
head = "| figure | " + " | ".join(f"run {f['run']}: {f['scenario']}" for f in runs) + " |"
lines = [head, "|---|" + "---|" * len(runs)]
for name, fn in rows:
    lines.append(f"| {name} | " + " | ".join(fn(f) for f in runs) + " |")
print(f"""### Cluster through Redis vs standalone ({e['DATE']})

Machine: Linux {e['KERNEL']}, {e['NPROC']} cores shared by servers, Redis and swarms; loopback.
Command: `{e['COMMAND']}`

A = one standalone `volley serve --shards {e['SHARDS_A']} --cpus {e['CPUS_A']}`, {e['CONNS']} connections.
B = `tools/cluster.sh --processes 2 --shards-per-process 1` (CPU 0 and CPU 1, one redis-server), 2 x {e['CONNS_B']} connections from two swarms.
Both: {e['BROADCASTS']} broadcasts of {e['SIZE']} B every {e['INTERVAL_MS']} ms through `POST /api/broadcast`; `--ping-interval-s {e['PING_S']}`.
""")
print("\n".join(lines))
print()
print("Ratio B / A of CPU per delivered message (target: at most 1.20):\n")
print("| pair | volley only | volley + redis-server |")
print("|---|---|---|")
for p in ratios["pairs"]:
    print(f"| A run {p['a_run']} / B run {p['b_run']} | {p['volley_cpu_us_per_msg']} | {p['volley_plus_redis_cpu_us_per_msg']} |")
m = ratios["means"]
if m:
    verdict = lambda r: "-" if r is None else ("met" if r <= 1.2 else "missed")
    print(f"| mean of B / mean of A | {m['volley_cpu_us_per_msg']} ({verdict(m['volley_cpu_us_per_msg'])}) | {m['volley_plus_redis_cpu_us_per_msg']} ({verdict(m['volley_plus_redis_cpu_us_per_msg'])}) |")
odd = [l for f in runs for l in f["volley_stderr_unexpected"]]
if odd:
    print("\nUnexpected volley stderr lines (first ones):\n")
    print("```")
    print("\n".join(odd[:20]))
    print("```")
PY
