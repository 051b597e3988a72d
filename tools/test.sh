#!/usr/bin/env bash
# Usage: tools/test.sh [extra cargo test args]
#
# The project's test command (README.md, .ci/run). Installs what the tests need when it is
# missing on this machine, then runs every test of the workspace:
#   - python3 `websockets` package: the third-party WebSocket client in tests/third_party_client.rs
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v python3 >/dev/null 2>&1; then
    echo "tools/test.sh: python3 is missing; installing it with apt-get" >&2
    apt-get update -qq && apt-get install -y -qq python3 python3-pip
fi
if ! python3 -c 'import websockets' >/dev/null 2>&1; then
    echo "tools/test.sh: installing the python 'websockets' package (third-party client test)" >&2
    python3 -m pip install --quiet websockets 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages websockets
fi

cargo test --workspace "$@"
