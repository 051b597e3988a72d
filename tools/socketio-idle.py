#!/usr/bin/env python3
"""socketio-idle.py: server RSS per idle socket.io (WebSocket transport) connection.

Usage: tools/socketio-idle.py --pid PID --addr 127.0.0.1:PORT [--conns 15000] [--batch 500]
                             [--native]

Opens --conns raw Engine.IO WebSocket connections (`/socket.io/?EIO=4&transport=websocket`),
each reads the open packet, CONNECTs `/` ("40") and waits for the CONNECT reply, then all stay
idle. Prints VmRSS of the server before and after and the difference per connection. The
clients are raw asyncio streams (no client library), so client memory stays small; run it
within the ping interval (25 s by default) or the server's pings go unanswered.
"""
import argparse, asyncio, base64, os, time

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")

def frame(text):
    payload = text.encode()
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

async def read_frame(reader):
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    return await reader.readexactly(n)

async def one(host, port, held, native):
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    path = "/ws" if native else "/socket.io/?EIO=4&transport=websocket"
    writer.write((f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await reader.readuntil(b"\r\n\r\n")
    if native:
        held.append((reader, writer))
        return
    assert (await read_frame(reader)).startswith(b"0{")
    if os.environ.get("NO_CONNECT"):
        held.append((reader, writer))
        return
    writer.write(frame("40"))
    assert (await read_frame(reader)).startswith(b"40{")
    held.append((reader, writer))

async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--addr", required=True)
    p.add_argument("--conns", type=int, default=15000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--native", action="store_true", help="plain /ws connections, for comparison")
    a = p.parse_args()
    host, port = a.addr.rsplit(":", 1)
    before = rss_kib(a.pid)
    held, start = [], time.time()
    for i in range(0, a.conns, a.batch):
        await asyncio.gather(*(one(host, int(port), held, a.native) for _ in range(min(a.batch, a.conns - i))))
    await asyncio.sleep(2)
    after = rss_kib(a.pid)
    print(f"conns={len(held)} open_s={time.time() - start:.1f} rss_before_kib={before} "
          f"rss_after_kib={after} rss_per_conn_bytes={(after - before) * 1024 / len(held):.0f}")

asyncio.run(main())
