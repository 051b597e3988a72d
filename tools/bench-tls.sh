#!/usr/bin/env bash
# bench-tls.sh: what TLS costs per idle connection, at the edge and (would cost) in volley.
#
# Usage: tools/bench-tls.sh [--connections 9000] [--sessions 10000] [--modes plain,haproxy,nginx]
#                           [--anonymous] [--no-build] [--skip-proxies] [--skip-rustls]
#
#   1. Proxies (tools/bench_tls.py): a fresh release volley per mode; --connections idle
#      WebSocket clients over ws:// straight to volley (plain), or over wss:// through
#      haproxy or nginx running the deploy/ recipes. Prints volley's and the proxy's RSS
#      delta per connection. At most 9,500: the proxy holds two fds per client, and a
#      process may open 20,000 on this box.
#   2. rustls in-process (tools/tls-cost, a crate of its own outside the workspace, so
#      `cargo test` never builds rustls): --sessions completed TLS 1.3 server sessions held
#      in memory, after the WebSocket upgrade went through them; live heap bytes and RSS
#      delta per session, idle and after one small read and one 100-byte broadcast sealed
#      per session, and the CPU time of that sealing. Then the same with TLS 1.2.
#
#   --anonymous       clients without ?user= (as bench-idle.sh); default: each its own user
#   --no-build        use target/release/volley and tools/tls-cost/target/release/tls-cost
#   --skip-proxies    only step 2;  --skip-rustls: only step 1
#
# Needs haproxy, nginx and openssl (tools/test.sh --install-only installs them) and python3.
# Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

connections=9000
sessions=10000
modes=plain,haproxy,nginx
anonymous=""
build=1
proxies=1
rustls=1
while [ $# -gt 0 ]; do
    case "$1" in
        --connections) connections="$2"; shift 2 ;;
        --sessions) sessions="$2"; shift 2 ;;
        --modes) modes="$2"; shift 2 ;;
        --anonymous) anonymous="--anonymous"; shift ;;
        --no-build) build=""; shift ;;
        --skip-proxies) proxies=""; shift ;;
        --skip-rustls) rustls=""; shift ;;
        -h|--help) sed -n '2,/^set -euo/{/^#/p}' "$0"; exit 0 ;;
        *) echo "bench-tls.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

echo "# bench-tls: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $( (haproxy -v 2>/dev/null || /usr/sbin/haproxy -v) | head -1)"
echo "# $( (nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1) | head -1)"

if [ -n "$proxies" ]; then
    if [ -n "$build" ]; then
        cargo build --release --bin volley
    fi
    echo "## idle connections: ws:// to volley, or wss:// through the deploy/ recipes"
    python3 tools/bench_tls.py --volley-bin target/release/volley \
        --connections "$connections" --modes "$modes" $anonymous
fi

if [ -n "$rustls" ]; then
    if [ -n "$build" ]; then
        (cd tools/tls-cost && cargo build --release --locked)
    fi
    dir=$(mktemp -d /tmp/volley-tls-cost.XXXXXX)
    trap 'rm -rf "$dir"' EXIT
    # As tests/proxies.rs makes it, but marked CA:FALSE: rustls (webpki) refuses a CA
    # certificate as a server's own.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -addext basicConstraints=critical,CA:FALSE \
        -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
    echo "## rustls server sessions held in one process (tools/tls-cost)"
    tools/tls-cost/target/release/tls-cost --cert "$dir/cert.pem" --key "$dir/key.pem" \
        --sessions "$sessions"
    tools/tls-cost/target/release/tls-cost --cert "$dir/cert.pem" --key "$dir/key.pem" \
        --sessions "$sessions" --tls12
fi
