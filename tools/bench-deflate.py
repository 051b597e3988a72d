#!/usr/bin/env python3
"""bench-deflate.py: permessage-deflate negotiated vs not, at N idle connections, on loopback.

Usage: tools/bench-deflate.py [--conns 15000] [--broadcasts 10] [--interval-ms 500]
                              [--shards 2] [--volley-bin target/release/volley]
                              [--modes off,on]

For each mode ("off": clients offer nothing; "on": every client offers permessage-deflate
and the server agrees) it starts `volley serve --shards S` on a free 127.0.0.1 port, opens
--conns raw asyncio WebSocket clients (a minimal client: handshake, frame counting, Pong
answers; no per-connection inflate, so the client side stays light), then reports:
  - server RSS per idle connection = (VmRSS after connect - VmRSS before) / conns
  - server CPU per delivered message = utime+stime delta / (broadcasts x conns), over the
    broadcasts until every client has every message
  - bytes on the wire per delivered message = bytes_sent_total delta / (broadcasts x conns)
    (frame header included), and the frames compressed by the server
The broadcast is a ~300-byte JSON message (`--size`-independent: a fixed typical push).
Every client checks the RSV1 bit of what it receives against the mode, and one client per
run inflates its messages (zlib) to check they are the JSON sent.
Only the server this script starts is stopped (by PID). Needs no package beyond python3.
"""
import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib

MESSAGE = {
    "type": "quote",
    "venue": "XNAS",
    "symbol": "ACME",
    "bid": 101.25,
    "ask": 101.27,
    "bid_size": 1200,
    "ask_size": 900,
    "last": 101.26,
    "volume": 1839201,
    "ts": "2026-11-27T09:30:00.123Z",
    "flags": ["regular", "open"],
    "note": "Opening auction uncrossed; spread normal; no halts pending on this symbol",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def proc_cpu_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Client(asyncio.Protocol):
    def __init__(self, offer, counts, inflate):
        self.offer, self.counts, self.inflate = offer, counts, inflate
        self.buf = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.transport = None
        self.received = 0
        self.payloads = []

    def connection_made(self, transport):
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if self.offer else ""
        transport.write(
            (f"GET /ws?protocol=raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
             f"Sec-WebSocket-Version: 13\r\n{ext}\r\n").encode())

    def data_received(self, data):
        self.buf += data
        if not self.upgraded.done():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode()
            self.buf = self.buf[end + 4:]
            agreed = "permessage-deflate" in head
            if not head.startswith("HTTP/1.1 101") or agreed != self.offer:
                self.upgraded.set_exception(RuntimeError(head[:200]))
                return
            self.upgraded.set_result(True)
        while len(self.buf) >= 2:
            b0, b1 = self.buf[0], self.buf[1]
            n, at = b1 & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, at = struct.unpack(">H", self.buf[2:4])[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, at = struct.unpack(">Q", self.buf[2:10])[0], 10
            if len(self.buf) < at + n:
                return
            payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
            op = b0 & 0x0F
            if op in (1, 2):
                self.received += 1
                self.counts["rsv1" if b0 & 0x40 else "plain"] += 1
                if self.inflate:
                    data = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") if b0 & 0x40 else payload
                    self.payloads.append(data)
            elif op == 9:  # RFC 6455 §5.5.2: answer with a masked Pong
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)


async def run_mode(args, mode):
    offer = mode == "on"
    port = free_port()
    server = subprocess.Popen(
        [args.volley_bin, "serve", "--listen", f"127.0.0.1:{port}", "--shards", str(args.shards),
         "--max-connections", str(args.conns + 1000), "--compression", "on"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            try:
                http(port, "GET", "/healthz")
                break
            except Exception:
                time.sleep(0.1)
        time.sleep(0.5)
        rss_before = rss_kb(server.pid)
        loop = asyncio.get_running_loop()
        counts = {"rsv1": 0, "plain": 0}
        clients = []
        t0 = time.time()
        sem = asyncio.Semaphore(200)

        async def open_one(i):
            async with sem:
                _, c = await loop.create_connection(
                    lambda: Client(offer, counts, i == 0), "127.0.0.1", port)
                await asyncio.wait_for(c.upgraded, 30)
                clients.append(c)

        await asyncio.gather(*(open_one(i) for i in range(args.conns)))
        connect_s = time.time() - t0
        for _ in range(300):
            if http(port, "GET", "/api/stats")["total"]["connections"] >= args.conns:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)
        rss_after = rss_kb(server.pid)
        stats0 = http(port, "GET", "/api/stats")["total"]
        cpu0 = proc_cpu_s(server.pid)
        body = json.dumps(MESSAGE).encode()
        for _ in range(args.broadcasts):
            http(port, "POST", "/api/broadcast", body)
            await asyncio.sleep(args.interval_ms / 1000)
        want = args.broadcasts * args.conns
        deadline = time.time() + 120
        while sum(c.received for c in clients) < want and time.time() < deadline:
            await asyncio.sleep(0.05)
        cpu1 = proc_cpu_s(server.pid)
        stats1 = http(port, "GET", "/api/stats")["total"]
        got = sum(c.received for c in clients)
        sample = next((c.payloads for c in clients if c.inflate), [])
        payload_ok = len(sample) == args.broadcasts and all(body in p for p in sample)
        if not payload_ok:
            print("sample:", sample[:2], file=sys.stderr)
        for c in clients:
            c.transport.close()
        return {
            "mode": mode,
            "conns": args.conns,
            "connect_s": round(connect_s, 1),
            "rss_per_conn_b": round((rss_after - rss_before) * 1024 / args.conns),
            "rss_before_kb": rss_before,
            "delivered": got,
            "lost": want - got,
            "cpu_per_msg_us": round((cpu1 - cpu0) * 1e6 / max(got, 1), 2),
            "wire_bytes_per_msg": round((stats1["bytes_sent_total"] - stats0["bytes_sent_total"]) / max(got, 1), 1),
            "frames_compressed": stats1["frames_compressed_total"] - stats0["frames_compressed_total"],
            "frames_rsv1": counts["rsv1"],
            "frames_plain": counts["plain"],
            "json_bytes": len(body),
            "sample_payload_ok": payload_ok,
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--conns", type=int, default=15000)
    p.add_argument("--broadcasts", type=int, default=10)
    p.add_argument("--interval-ms", type=int, default=500)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--volley-bin", default="target/release/volley")
    p.add_argument("--modes", default="off,on")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for mode in args.modes.split(","):
        print(json.dumps(asyncio.run(run_mode(args, mode))), flush=True)


if __name__ == "__main__":
    sys.exit(main())
