#!/usr/bin/env python3
"""bench_tls.py: memory per idle connection when TLS ends in haproxy or nginx (the deploy/
recipes) in front of volley, against volley over plain ws://. Run by tools/bench-tls.sh,
which builds volley and also measures rustls in-process (tools/tls-cost).

Usage: tools/bench_tls.py --volley-bin PATH [--connections 9000] [--modes plain,haproxy,nginx]
                          [--settle-s 5] [--timeout-s 600] [--anonymous] [--json]

For each mode, a fresh `volley serve --shards 2` on a free 127.0.0.1 port (standalone, one
process; the recipes' two backends both name it), a fresh proxy from deploy/ (only addresses,
ports and paths substituted, as tests/proxies.rs does; haproxy with `-n` because this box
allows 20,000 fds per process), and --connections WebSocket clients held idle by this
script (asyncio; TLS 1.3 with the ECDSA P-256 certificate made here by openssl, verified).
After --settle-s, it reads VmRSS of volley and of the proxy (nginx: master plus workers)
and reports (after - before) / connections. "before" is read with one client connected
(the first TLS handshake's lazy allocations are not per-connection costs).

Each client is its own user (`?user=u<n>`: a user channel and index entry in volley), unless
--anonymous. Every loop is bounded: connections are opened 100 at a time (BENCH_TLS_BATCH
in the environment changes that; 10 gave the same figures), each step has a deadline, and
--timeout-s ends the run. Everything started here is stopped by its PID.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def tree_rss_kib(pid, with_children):
    pids = [pid] + (children(pid) if with_children else [])
    return sum(rss_kib(p) for p in pids), len(pids)


def stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stats", timeout=5) as r:
        return json.load(r)


def wait_until(what, predicate, deadline_s=60):
    end = time.monotonic() + deadline_s
    while True:
        if predicate():
            return
        if time.monotonic() > end:
            raise SystemExit(f"bench_tls: timed out waiting for {what}")
        time.sleep(0.05)


def make_cert(dir):
    cert, key = os.path.join(dir, "cert.pem"), os.path.join(dir, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True)
    pem = os.path.join(dir, "haproxy.pem")
    with open(pem, "wb") as out:
        out.write(open(cert, "rb").read() + open(key, "rb").read())
    return cert, key, pem


def start_volley(binary, dir, connections):
    port = free_port()
    log = open(os.path.join(dir, f"volley-{port}.log"), "w")
    # Idle clients here never answer pings: the idle timeout is raised so volley keeps them
    # (its pings every 25 s still keep the proxies' 90 s tunnel timeouts from firing).
    proc = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--shards", "2",
         "--max-connections", str(connections + 1000), "--idle-timeout-s", "3600",
         "--http-sessions-max", "20000"],
        stdout=subprocess.DEVNULL, stderr=log)
    wait_until("volley /healthz", lambda: healthy(port))
    return proc, port


def healthy(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def which(tool):
    for path in (tool, f"/usr/sbin/{tool}"):
        try:
            subprocess.run([path, "-v"], capture_output=True, check=False)
            return path
        except OSError:
            continue
    raise SystemExit(f"bench_tls: {tool} is not installed (tools/test.sh --install-only installs it)")


def start_proxy(kind, dir, backend, cert, key, pem, connections):
    tls_port, http_port = free_port(), free_port()
    if kind == "haproxy":
        env = dict(os.environ,
                   VOLLEY_TLS_BIND=f"127.0.0.1:{tls_port}",
                   VOLLEY_HTTP_BIND=f"127.0.0.1:{http_port}",
                   VOLLEY_TLS_PEM=pem,
                   VOLLEY_BACKEND_1=backend, VOLLEY_BACKEND_2=backend,
                   HAPROXY_ADMIN_SOCKET=os.path.join(dir, "haproxy.sock"))
        # -n: the recipe's maxconn 131072 needs ~262k fds, more than this box allows; each
        # client takes two fds here, so connections + a margin stays under 20,000.
        proc = subprocess.Popen(
            [which("haproxy"), "-db", "-n", str(connections + 300), "-f",
             os.path.join(ROOT, "deploy/haproxy.cfg")],
            env=env, stdout=open(os.path.join(dir, "haproxy.out"), "w"),
            stderr=subprocess.STDOUT)
        with_children = False
    else:
        logs, state = os.path.join(dir, "nginx-logs"), os.path.join(dir, "nginx-state")
        os.makedirs(logs, exist_ok=True)
        os.makedirs(state, exist_ok=True)
        text = open(os.path.join(ROOT, "deploy/nginx.conf")).read()
        values = {
            "VOLLEY_TLS_BIND": f"127.0.0.1:{tls_port}",
            "VOLLEY_HTTP_BIND": f"127.0.0.1:{http_port}",
            "VOLLEY_TLS_CERT": cert, "VOLLEY_TLS_KEY": key,
            "VOLLEY_BACKEND_1": backend, "VOLLEY_BACKEND_2": backend,
            "NGINX_PID_FILE": os.path.join(dir, "nginx.pid"),
            "NGINX_LOG_DIR": logs, "NGINX_STATE_DIR": state,
        }
        for name, value in values.items():
            text = text.replace("${" + name + "}", value)
        left = [l for l in text.splitlines() if "${" in l and not l.strip().startswith("#")]
        if left:
            raise SystemExit(f"bench_tls: placeholder left in nginx.conf: {left[0]}")
        conf = os.path.join(dir, "nginx.conf")
        open(conf, "w").write(text)
        proc = subprocess.Popen(
            [which("nginx"), "-p", dir, "-c", conf, "-e", os.path.join(dir, "nginx.err"),
             "-g", "daemon off;"],
            stdout=open(os.path.join(dir, "nginx.out"), "w"), stderr=subprocess.STDOUT)
        with_children = True
    ctx = ssl.create_default_context(cafile=cert)

    def serving():
        try:
            with socket.create_connection(("127.0.0.1", tls_port), timeout=1) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    return b" 200 " in s.recv(100)
        except OSError:
            return False

    wait_until(f"{kind} to serve /healthz", serving)
    return proc, tls_port, with_children


UPGRADE = ("GET /ws{query} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n")


# Each client its own user (user:<id> channel and index entry), or anonymous (--anonymous, as
# bench-idle.sh's swarm connects).
USERS = True


async def open_one(port, ctx, n):
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                server_hostname="localhost" if ctx else None),
        timeout=30)
    query = f"?user=u{n}" if USERS else ""
    writer.write(UPGRADE.format(query=query).encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"connection {n}: {head[:80]!r}")
    return writer


async def hold(port, ctx, count, first):
    held = []
    batch = int(os.environ.get("BENCH_TLS_BATCH", "100"))
    for start in range(first, first + count, batch):
        end = min(start + batch, first + count)
        held += await asyncio.gather(*(open_one(port, ctx, n) for n in range(start, end)))
    return held


def measure(kind, args, dir, certs):
    cert, key, pem = certs
    volley, vport = start_volley(args.volley_bin, dir, args.connections)
    proxy = None
    try:
        if kind == "plain":
            port, ctx, pid, with_children = vport, None, None, False
        else:
            proxy, port, with_children = start_proxy(
                kind, dir, f"127.0.0.1:{vport}", cert, key, pem, args.connections)
            pid = proxy.pid
            ctx = ssl.create_default_context(cafile=cert)
            ctx.set_alpn_protocols(["http/1.1"])
        loop = asyncio.new_event_loop()
        first = loop.run_until_complete(hold(port, ctx, 1, 0))
        wait_until("the first client", lambda: stats(vport)["total"]["connections"] == 1)
        time.sleep(1)
        v0 = rss_kib(volley.pid)
        p0, procs = tree_rss_kib(pid, with_children) if pid else (0, 0)
        started = time.monotonic()
        held = loop.run_until_complete(hold(port, ctx, args.connections, 1))
        open_s = time.monotonic() - started
        wait_until("every client counted by volley",
                   lambda: stats(vport)["total"]["connections"] == args.connections + 1)
        time.sleep(args.settle_s)
        v1 = rss_kib(volley.pid)
        p1, _ = tree_rss_kib(pid, with_children) if pid else (0, 0)
        for w in held + first:
            w.transport.abort()
        loop.close()
        n = args.connections
        return {
            "mode": kind, "connections": n, "open_s": round(open_s, 1),
            "volley_rss_before_kib": v0, "volley_rss_after_kib": v1,
            "volley_bytes_per_conn": round((v1 - v0) * 1024 / n),
            "proxy_processes": procs,
            "proxy_rss_before_kib": p0, "proxy_rss_after_kib": p1,
            "proxy_bytes_per_conn": round((p1 - p0) * 1024 / n) if pid else None,
        }
    finally:
        for proc in (proxy, volley):
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--volley-bin", required=True)
    p.add_argument("--connections", type=int, default=9000)
    p.add_argument("--modes", default="plain,haproxy,nginx")
    p.add_argument("--settle-s", type=float, default=5)
    p.add_argument("--timeout-s", type=int, default=600)
    p.add_argument("--json", action="store_true")
    p.add_argument("--anonymous", action="store_true",
                   help="connect without ?user= (as bench-idle.sh); default: user u<n> each")
    args = p.parse_args()
    if not 1 <= args.connections <= 9500:
        raise SystemExit(f"--connections {args.connections}: must be 1..=9500 (a proxy holds two "
                         "fds per client, and a process may open 20,000 here)")
    global USERS
    USERS = not args.anonymous
    signal.alarm(args.timeout_s)
    rows = []
    with tempfile.TemporaryDirectory(prefix="volley-bench-tls-") as dir:
        certs = make_cert(dir)
        for kind in args.modes.split(","):
            rows.append(measure(kind, args, dir, certs))
            print(json.dumps(rows[-1]), file=sys.stderr)
    if args.json:
        print(json.dumps(rows))
        return
    print("| mode | connections | volley B/conn | proxy B/conn | proxy RSS before -> after | opened in |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        proxy = "-" if r["proxy_bytes_per_conn"] is None else f'{r["proxy_bytes_per_conn"]:,}'
        before_after = ("-" if r["proxy_bytes_per_conn"] is None else
                        f'{r["proxy_rss_before_kib"]/1024:.1f} -> {r["proxy_rss_after_kib"]/1024:.1f} MiB'
                        f' ({r["proxy_processes"]} processes)')
        print(f'| {r["mode"]} | {r["connections"]:,} | {r["volley_bytes_per_conn"]:,} | {proxy} '
              f'| {before_after} | {r["open_s"]} s |')


if __name__ == "__main__":
    main()
