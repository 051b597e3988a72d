#!/usr/bin/env bash
# Usage: tools/test.sh [--install-only] [extra cargo test args]
#
#   --install-only   install what is missing and stop (.ci/run does this before clippy,
#                    since the dev-dependencies need libssl-dev to compile)
#
# The project's test command (README.md, .ci/run). Installs what the tests need when it is
# missing on this machine, then runs every test of the workspace:
#   - python3 `websockets` package: the third-party WebSocket client in tests/third_party_client.rs,
#     tests/deflate.rs and the ws::deflate unit test
#   - python3 `kosoku` package: the Autobahn|Testsuite runner of tests/autobahn.rs
#   - redis-server (Debian package): the cluster tests in tests/redis.rs start their own
#   - python3 `redis` and `msgpack` packages: tools/publish_redis.py, run by tests/redis.rs
#   - haproxy, nginx and openssl (Debian packages): tests/proxies.rs runs the deploy/ recipes
#     as foreground children with a certificate made by openssl; the packages' own services
#     are neither configured nor started by the tests
#   - libssl-dev and pkg-config: the native-tls dev-dependency those tests' wss client links
#   - node and npm, then `npm ci` in tools/socketio-client: the real socket.io-client that
#     tests/socketio.rs and tests/proxies.rs drive, and the socket.io server, @socket.io/redis-adapter,
#     @socket.io/redis-emitter and redis packages tests/socketio_cluster.rs runs beside
#     volley (all pinned by its package-lock.json); in examples/node: the `ws` package
#     examples/node/client.mjs uses on a Node without a global WebSocket
#   - chromium (Debian package): tests/console.rs and tests/examples.rs drive the dev
#     console and examples/browser.html in headless Chromium over the DevTools protocol
#   - python3 `openapi-spec-validator` package: tests/openapi.rs validates docs/openapi.yaml
set -euo pipefail
cd "$(dirname "$0")/.."

install_only=""
if [ "${1:-}" = "--install-only" ]; then
    install_only=1
    shift
fi

apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
pip_install() {
    python3 -m pip install --quiet "$@" 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages "$@"
}

if ! command -v redis-server >/dev/null 2>&1; then
    echo "tools/test.sh: installing redis-server (cluster tests)" >&2
    apt_install redis-server
fi

# Debian puts haproxy and nginx in /usr/sbin, which a non-login PATH may lack.
for tool in haproxy nginx openssl; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
        echo "tools/test.sh: installing $tool (tests/proxies.rs)" >&2
        apt_install "$tool"
    fi
done
if ! pkg-config --exists openssl 2>/dev/null; then
    echo "tools/test.sh: installing libssl-dev and pkg-config (native-tls, tests/proxies.rs)" >&2
    apt_install libssl-dev pkg-config
fi

if ! command -v python3 >/dev/null 2>&1; then
    echo "tools/test.sh: python3 is missing; installing it with apt-get" >&2
    apt_install python3 python3-pip
fi
for module in websockets redis msgpack; do
    if ! python3 -c "import $module" >/dev/null 2>&1; then
        echo "tools/test.sh: installing the python '$module' package" >&2
        pip_install "$module"
    fi
done
if ! python3 -c "import openapi_spec_validator, yaml" >/dev/null 2>&1; then
    echo "tools/test.sh: installing the python 'openapi-spec-validator' package (tests/openapi.rs)" >&2
    pip_install openapi-spec-validator pyyaml
fi
if ! command -v chromium >/dev/null 2>&1; then
    echo "tools/test.sh: installing chromium (tests/console.rs, tests/examples.rs)" >&2
    apt_install chromium
fi
# kosoku: the Autobahn|Testsuite cases with a Rust runner (no Docker, no Python 2), run by
# tests/autobahn.rs against volley's --echo-path.
if ! python3 -c "import kosoku" >/dev/null 2>&1; then
    echo "tools/test.sh: installing the python 'kosoku' package (tests/autobahn.rs)" >&2
    pip_install kosoku
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "tools/test.sh: installing nodejs and npm (tests/socketio.rs)" >&2
    apt_install nodejs npm
fi
# The last package added to package.json: an older node_modules lacks it and is refreshed.
if [ ! -d tools/socketio-client/node_modules/socket.io-client ] \
    || [ ! -d tools/socketio-client/node_modules/@socket.io/redis-emitter ]; then
    echo "tools/test.sh: npm ci in tools/socketio-client (socket.io-client, socket.io, redis-adapter, redis-emitter for tests/socketio*.rs)" >&2
    (cd tools/socketio-client && npm ci --no-audit --no-fund)
fi
if [ -f examples/node/package.json ] && [ ! -d examples/node/node_modules/ws ]; then
    echo "tools/test.sh: npm ci in examples/node (the ws package for examples/node/client.mjs)" >&2
    (cd examples/node && npm ci --no-audit --no-fund)
fi

if [ -n "$install_only" ]; then
    exit 0
fi

cargo test --workspace "$@"
