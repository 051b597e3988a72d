#!/usr/bin/env python3
"""The driver of tools/bench-faults.sh (read its usage first): one run of the Redis-fault
scenarios against a real redis-server and two real volley processes, with resuming clients
and a retrying publisher. Writes one JSON report (--out) and prints nothing on stdout.

It starts, and stops by PID, only its own processes: one redis-server and two
`volley serve`. Their PIDs are appended to --pidfile as they start, so the wrapper can stop
them if this driver itself is killed. Loopback only; every wait is bounded.

Needs the python `websockets` package (tools/test.sh installs it).
"""
import argparse
import asyncio
import base64
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import websockets
from websockets.asyncio.client import connect as ws_connect

T0 = time.monotonic()


def now():
    return time.monotonic() - T0


def log(msg):
    print(f"bench-faults: [{now():7.2f}] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- Redis control: raw RESP on a fresh connection, short timeouts ------------------------


def resp(port, *commands, timeout=1.0):
    """Sends RESP commands on one connection; returns the replies, each as RESP text."""
    wire = b""
    for args in commands:
        wire += b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode()
            wire += b"$%d\r\n%s\r\n" % (len(a), a)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(wire)
        f = s.makefile("rb")

        def reply():
            line = f.readline()
            if not line:
                raise OSError("redis closed the connection")
            kind, rest = line[:1], line[1:].strip()
            if kind in (b"*", b"%", b"~") and int(rest) >= 0:
                n = int(rest) * (2 if kind == b"%" else 1)
                return line + b"".join(reply() for _ in range(n))
            if kind == b"$" and int(rest) >= 0:
                return line + f.read(int(rest) + 2)
            return line

        return "".join(reply().decode(errors="replace") for _ in commands)


# --- HTTP: one request per connection ------------------------------------------------------


class NotSent(Exception):
    """The request never reached the server (connect refused or timed out)."""


class AnswerLost(Exception):
    """The request was sent and no answer came (reset, timeout)."""


async def http(port, method, path, body=b"", headers=None, timeout=15.0):
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), 2.0)
    except (OSError, asyncio.TimeoutError) as e:
        raise NotSent(str(e) or type(e).__name__)
    try:
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Connection: close\r\nContent-Length: {len(body)}\r\n")
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        raise AnswerLost(str(e) or type(e).__name__)
    finally:
        writer.close()
    if not raw:
        raise AnswerLost("closed without an answer")
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise AnswerLost(f"bad status line {lines[0]!r}")
    if any(l.lower().startswith("transfer-encoding:") and "chunked" in l.lower() for l in lines):
        body_out = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            body_out += rest[:size]
            rest = rest[size + 2:]
        rest = body_out
    try:
        value = json.loads(rest) if rest else None
    except ValueError:
        value = rest.decode(errors="replace")
    return status, value


# --- the run --------------------------------------------------------------------------------


class Node:
    def __init__(self, name, port, proc, logpath):
        self.name, self.port, self.proc, self.logpath = name, port, proc, logpath
        self.alive = True

    def log_lines(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().count(b"\n")
        except OSError:
            return 0


class Client:
    """One user, one connection at a time, in room `r`; resumes with ?resume= on every
    reconnect from the last [seq, epoch] it saw per channel."""

    def __init__(self, run, i, home):
        self.run, self.i, self.user = run, i, f"u{i}"
        self.home = home          # index into run.nodes
        self.node = home
        self.pos = {}             # channel -> [seq, epoch]
        self.got = {}             # n -> [times received]
        self.joined = False
        self.connected = False
        self.connects = 0
        self.drops = []           # times the connection ended
        self.events = []          # recovered events: (t, channel, recovered, reason, replayed, error)
        self.order = {}           # channel -> [epoch, max seq, retired epochs]
        self.out_of_order = []    # (t, channel, seq, epoch)
        self.seq_gaps = []        # (t, channel, after, got)
        self.bad_frames = 0
        self.connect_errors = {}  # failed connects, by reason

    def token(self):
        # Every channel it receives, 0 where it has seen nothing yet: a message sent to it
        # while it was away is then replayed even if it was the channel's first.
        pos = {"all": 0, f"user:{self.user}": 0, "room:r": 0}
        pos.update(self.pos)
        # Just the seq where no epoch was given (a server without epochs).
        pos = {ch: (p[0] if isinstance(p, list) and p[1] is None else p) for ch, p in pos.items()}
        raw = json.dumps(pos, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def on_message(self, m, t):
        ch, seq, epoch, data = m.get("channel"), m.get("seq"), m.get("epoch"), m.get("data")
        n = data.get("n") if isinstance(data, dict) else None
        if n is not None:
            self.got.setdefault(n, []).append(t)
        if seq is None:
            return
        state = self.order.get(ch)
        duplicate = n is not None and len(self.got[n]) > 1
        if state is None:
            self.order[ch] = [epoch, seq, set()]
        elif epoch == state[0]:
            if seq <= state[1]:
                if not duplicate:
                    self.out_of_order.append((t, ch, seq, epoch))
            else:
                if seq > state[1] + 1:
                    self.seq_gaps.append((t, ch, state[1], seq))
                state[1] = seq
        elif epoch in state[2]:
            self.out_of_order.append((t, ch, seq, epoch))
        else:
            # A new numbering starts at 1 (docs/PROTOCOL.md): a first seq past 1 is a gap.
            if seq > 1:
                self.seq_gaps.append((t, ch, 0, seq))
            state[2].add(state[0])
            state[0], state[1] = epoch, seq
        cur = self.pos.get(ch)
        if not (isinstance(cur, list) and cur[1] == epoch and cur[0] >= seq):
            self.pos[ch] = [seq, epoch]

    def on_recovered(self, m, t):
        self.events.append((t, m.get("channel"), m.get("recovered"), m.get("reason"),
                            m.get("replayed"), m.get("error")))
        # "seq and epoch are where the channel is when the replay was taken: continue
        # from there" (docs/PROTOCOL.md).
        if m.get("seq") is not None and m.get("epoch") is not None:
            ch = m.get("channel")
            cur = self.pos.get(ch)
            if not (isinstance(cur, list) and cur[1] == m["epoch"] and cur[0] >= m["seq"]):
                self.pos[ch] = [m["seq"], m["epoch"]]

    async def loop(self):
        run = self.run
        while not run.stopping:
            node = run.nodes[self.node]
            q = f"user={self.user}"
            tok = self.token() if self.joined else None
            if tok:
                q += f"&resume={tok}"
            url = f"ws://127.0.0.1:{node.port}/ws?{q}"
            opened = False
            try:
                async with ws_connect(url, open_timeout=5, ping_interval=None,
                                      close_timeout=1, max_size=None) as ws:
                    opened = True
                    self.connected = True
                    self.connects += 1
                    if not self.joined:
                        await ws.send(json.dumps({"op": "join", "room": "r", "ref": "j"}))
                    async for text in ws:
                        t = now()
                        try:
                            m = json.loads(text)
                        except ValueError:
                            self.bad_frames += 1
                            continue
                        kind = m.get("type")
                        if kind == "message":
                            self.on_message(m, t)
                            ch = m.get("channel", "")
                            if ch.startswith("user:") and m.get("seq") is not None:
                                # Acked, as a client that empties its inbox does.
                                await ws.send(json.dumps(
                                    {"op": "ack", "channel": ch, "seq": m["seq"]}))
                        elif kind == "recovered":
                            self.on_recovered(m, t)
                        elif kind == "reply" and m.get("ref") == "j":
                            if m.get("ok"):
                                self.joined = True
                            else:
                                log(f"{self.user}: join refused: {m}")
                        if run.stopping:
                            break
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any end of a connection means reconnect
                if not opened:
                    why = re.sub(r"\d+", "N", f"{type(e).__name__}: {e}")[:120]
                    self.connect_errors[why] = self.connect_errors.get(why, 0) + 1
            self.connected = False
            if run.stopping:
                return
            if opened:
                self.drops.append(now())
            else:
                # Could not connect: try the other process next (a client behind a load
                # balancer would be sent there).
                self.node = 1 - self.node
            await asyncio.sleep(0.2 + random.random() * 0.3)


class Run:
    def __init__(self, a):
        self.a = a
        self.stopping = False
        self.nodes = []
        self.redis = None
        self.redis_port = free_port()
        self.clients = []
        self.msgs = {}           # n -> record
        self.health = []         # (t, node name, status, reason)
        self.n = 0
        self.tag = f"{os.getpid()}-{int(time.time())}"
        self.pub_tasks = set()
        self.publishing = True

    # processes ----------------------------------------------------------------------------
    def note_pid(self, pid, what):
        with open(self.a.pidfile, "a") as f:
            f.write(f"{pid} {what}\n")

    def start_redis(self):
        self.redis = subprocess.Popen(
            [self.a.redis_server, "--bind", "127.0.0.1", "--port", str(self.redis_port),
             "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--dir", self.a.logs, "--logfile", os.path.join(self.a.logs, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.note_pid(self.redis.pid, "redis-server")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.redis.poll() is not None:
                raise SystemExit("redis-server exited at start; see redis.log")
            try:
                if "PONG" in resp(self.redis_port, ["PING"], timeout=0.5):
                    log(f"redis-server pid {self.redis.pid} port {self.redis_port}")
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("redis-server did not answer PING in 10 s")

    def start_volley(self, name):
        port = free_port()
        path = os.path.join(self.a.logs, f"volley-{name}.log")
        f = open(path, "ab")
        args = [self.a.volley_bin, "serve", "--listen", f"127.0.0.1:{port}",
                "--redis", f"redis://127.0.0.1:{self.redis_port}", "--shards", "2",
                "--presence-ttl-s", str(self.a.presence_ttl_s)]
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT)
        f.close()
        self.note_pid(proc.pid, f"volley {name}")
        log(f"volley {name}: pid {proc.pid} port {port}")
        node = Node(name, port, proc, path)
        self.nodes.append(node)
        return node

    async def wait_ok(self, node, limit_s=20):
        deadline = now() + limit_s
        last = None
        while now() < deadline:
            if node.proc.poll() is not None:
                raise SystemExit(f"volley {node.name} exited; see {node.logpath}")
            try:
                st, body = await http(node.port, "GET", "/healthz", timeout=2)
                last = (st, body)
                if st == 200 and isinstance(body, dict) and body.get("status") == "ok" \
                        and "redis" in body:
                    return
            except (NotSent, AnswerLost) as e:
                last = repr(e)
            await asyncio.sleep(0.1)
        raise SystemExit(f"volley {node.name} not ok within {limit_s} s (last: {last})")

    def stop_all(self):
        self.stopping = True
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            try:
                node.proc.wait(15)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(5)
        if self.redis and self.redis.poll() is None:
            try:
                os.kill(self.redis.pid, signal.SIGCONT)
            except OSError:
                pass
            self.redis.terminate()
            try:
                self.redis.wait(10)
            except subprocess.TimeoutExpired:
                self.redis.kill()
                self.redis.wait(5)

    # background loops -----------------------------------------------------------------------
    async def health_loop(self):
        while not self.stopping:
            for node in self.nodes:
                if not node.alive:
                    continue
                t = now()
                try:
                    st, body = await http(node.port, "GET", "/healthz", timeout=3)
                    status = body.get("status") if isinstance(body, dict) else f"http {st}"
                    reason = body.get("reason") if isinstance(body, dict) else None
                except (NotSent, AnswerLost) as e:
                    status, reason = "no answer", str(e)
                self.health.append((t, node.name, status, reason))
            await asyncio.sleep(0.1)

    async def publish_one(self, n):
        kind = ("broadcast", "room", "user")[n % 3]
        user = f"u{(n // 3) % self.a.clients}"
        path = {"broadcast": "/api/broadcast", "room": "/api/rooms/r/messages",
                "user": f"/api/users/{user}/messages"}[kind]
        key = f"bf-{self.tag}-{n}"
        rec = {"n": n, "kind": kind, "user": user if kind == "user" else None,
               "t0": now(), "answers": [], "final": None, "t_final": None,
               "seq": None, "epoch": None, "duplicate": False, "errors": []}
        self.msgs[n] = rec
        body = json.dumps({"n": n}).encode()
        node_i = n % 2
        deadline = rec["t0"] + self.a.retry_s
        while True:
            node = self.nodes[node_i]
            try:
                status, ans = await http(node.port, "POST", path, body,
                                         {"Idempotency-Key": key,
                                          "Content-Type": "application/json"})
            except NotSent:
                rec["answers"].append("not sent")
                status, ans = None, None
            except AnswerLost:
                # Sent, no answer: like a 504, it may or may not have been published.
                rec["answers"].append("no answer")
                status, ans = 504, None
            else:
                rec["answers"].append(status)
            if status == 200:
                rec["final"], rec["t_final"] = 200, now()
                rec["seq"], rec["epoch"] = ans.get("seq"), ans.get("epoch")
                rec["duplicate"] = bool(ans.get("duplicate"))
                return
            if status is not None and status not in (503, 504):
                rec["final"], rec["t_final"] = status, now()
                rec["errors"].append(str(ans)[:200])
                return
            if status is not None and isinstance(ans, dict) and ans.get("error"):
                rec["errors"].append(str(ans.get("error"))[:200])
            if now() >= deadline or self.stopping:
                rec["final"], rec["t_final"] = (status or "not sent"), now()
                return
            if status is None:
                node_i = 1 - node_i   # that process is gone: the other one
            await asyncio.sleep(0.5 if status == 503 else 0.3)

    async def publisher(self):
        period = 1.0 / self.a.rate
        nxt = now()
        while not self.stopping and self.publishing:
            self.n += 1
            task = asyncio.create_task(self.publish_one(self.n))
            self.pub_tasks.add(task)
            task.add_done_callback(self.pub_tasks.discard)
            nxt += period
            await asyncio.sleep(max(0.0, nxt - now()))

    # accounting ------------------------------------------------------------------------------
    def recipients(self, rec):
        if rec["kind"] == "user":
            return [self.clients[int(rec["user"][1:])]]
        return self.clients

    def undelivered(self, lo, hi):
        """(missing deliveries, unfinished publishes) among messages first tried in [lo, hi)."""
        missing = pending = 0
        for rec in self.msgs.values():
            if not lo <= rec["t0"] < hi:
                continue
            if rec["final"] is None:
                pending += 1
            elif rec["final"] == 200:
                missing += sum(1 for c in self.recipients(rec) if rec["n"] not in c.got)
        return missing, pending

    def healthy_now(self):
        latest = {}
        for t, name, status, _ in self.health[-20:]:
            if status != "no answer":
                latest[name] = status
        return all(latest.get(n.name) == "ok" for n in self.nodes if n.alive)

    def inbox_entries(self):
        """Entries left in the offline inboxes at the end (every client is online and acks
        its user messages, so a non-empty inbox is a message stored for an online user)."""
        try:
            raw = resp(self.redis_port, ["KEYS", "volley:inbox:*"], timeout=2)
            keys = [l for l in raw.split("\r\n") if l.startswith("volley:inbox:")]
            if not keys:
                return {}
            raw = resp(self.redis_port, *[["HLEN", k] for k in keys], timeout=2)
            counts = [int(l[1:]) for l in raw.split("\r\n") if l.startswith(":")]
            return {k: c for k, c in zip(keys, counts) if c}
        except (OSError, ValueError) as e:
            return {"error": str(e)}

    # scenarios -------------------------------------------------------------------------------
    async def fault(self, sc):
        """Injects scenario sc; returns when the fault is lifted (the heal moment)."""
        a, rp = self.a, self.redis_port
        if sc == 1:
            os.kill(self.redis.pid, signal.SIGSTOP)
            await asyncio.sleep(a.hang_s)
            os.kill(self.redis.pid, signal.SIGCONT)
            return f"SIGSTOP {a.hang_s:g} s, SIGCONT"
        if sc == 2:
            self.redis.kill()
            await asyncio.to_thread(self.redis.wait, 10)
            await asyncio.sleep(a.down_s)
            await asyncio.to_thread(self.start_redis)
            return f"SIGKILL, down {a.down_s:g} s, restarted empty"
        if sc == 3:
            killed = []
            for _ in range(a.pubsub_kills):
                r = await asyncio.to_thread(resp, rp, ["CLIENT", "KILL", "TYPE", "pubsub"])
                killed.append(r.strip())
                await asyncio.sleep(1.0)
            return f"CLIENT KILL TYPE pubsub x{a.pubsub_kills}, 1 s apart ({' '.join(killed)})"
        if sc == 4:
            await asyncio.to_thread(
                resp, rp, ["CONFIG", "SET", "requirepass", "bench-secret"],
                ["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"],
                ["CLIENT", "KILL", "TYPE", "pubsub"])
            await asyncio.sleep(a.hold_s)
            r = await asyncio.to_thread(resp, rp, ["AUTH", "bench-secret"],
                                        ["CONFIG", "SET", "requirepass", ""])
            if r.count("+OK") < 2:
                log(f"removing requirepass: {r!r}")
            return f"requirepass set (links killed) for {a.hold_s:g} s, then removed"
        if sc == 5:
            await asyncio.to_thread(resp, rp, ["CONFIG", "SET", "maxmemory-policy", "noeviction"],
                                    ["CONFIG", "SET", "maxmemory", "1"])
            await asyncio.sleep(a.hold_s)
            await asyncio.to_thread(resp, rp, ["CONFIG", "SET", "maxmemory", "0"])
            return f"maxmemory 1 (noeviction) for {a.hold_s:g} s, then 0"
        if sc == 6:
            node = self.nodes[0]
            node.alive = False
            node.proc.kill()
            await asyncio.to_thread(node.proc.wait, 10)
            return f"volley {node.name} SIGKILLed; its clients resume on {self.nodes[1].name}"
        raise ValueError(sc)

    async def scenario(self, sc):
        a = self.a
        lines0 = {n.name: n.log_lines() for n in self.nodes}
        start = now()
        log(f"scenario {sc}: baseline {a.pre_s:g} s")
        await asyncio.sleep(a.pre_s)
        t_fault = now()
        log(f"scenario {sc}: fault")
        what = await self.fault(sc)
        t_heal = now()
        log(f"scenario {sc}: healed ({what})")
        # Settle: every publish of the window finished, every 200 delivered everywhere,
        # every live process ok; bounded.
        settled = None
        deadline = t_heal + a.settle_s
        while now() < deadline:
            missing, pending = self.undelivered(start, t_heal + a.post_s)
            if now() >= t_heal + a.post_s and missing == 0 and pending == 0 \
                    and self.healthy_now():
                settled = now()
                break
            await asyncio.sleep(0.2)
        if settled is None:
            missing, pending = self.undelivered(start, t_heal + a.post_s)
            log(f"scenario {sc}: not settled after {a.settle_s:g} s "
                f"({missing} deliveries missing, {pending} publishes unfinished)")
        # Late duplicates show up here.
        await asyncio.sleep(a.tail_s)
        end = now()
        lines1 = {n.name: n.log_lines() for n in self.nodes}
        return {"scenario": sc, "what": what, "start": start, "t_fault": t_fault,
                "t_heal": t_heal, "end": end, "settled": settled,
                "log_lines": {k: lines1[k] - lines0[k] for k in lines0}}

    def report(self, w):
        """The figures of one scenario window w (messages first tried in [start, end))."""
        lo, hi = w["start"], w["end"]
        recs = [r for r in self.msgs.values() if lo <= r["t0"] < hi]
        answers = {}
        finals = {}
        for r in recs:
            for s in r["answers"]:
                answers[str(s)] = answers.get(str(s), 0) + 1
            finals[str(r["final"])] = finals.get(str(r["final"]), 0) + 1
        expected = delivered = lost = dups = 0
        last_needed = None
        lost_detail = []
        lost_by_kind = {}
        worst_lag = None          # the longest wait from a 200 answer to a delivery
        dup_by_kind = {}
        bad = {"refused_delivered": 0, "unknown_delivered_twice": 0,
               "unknown_delivered": 0, "unknown_recipients": 0}
        late_dup = 0
        for r in recs:
            who = self.recipients(r)
            if r["final"] == 200:
                for c in who:
                    expected += 1
                    times = c.got.get(r["n"], [])
                    if times:
                        delivered += 1
                        lag = times[0] - r["t_final"]
                        if worst_lag is None or lag > worst_lag:
                            worst_lag = lag
                        dups += len(times) - 1
                        if len(times) > 1:
                            dup_by_kind[r["kind"]] = dup_by_kind.get(r["kind"], 0) + len(times) - 1
                        if r["t0"] < w["t_heal"]:
                            last_needed = max(last_needed or 0, times[0])
                    else:
                        lost += 1
                        lost_by_kind[r["kind"]] = lost_by_kind.get(r["kind"], 0) + 1
                        if sum(1 for d in lost_detail if d["kind"] == r["kind"]) < 20:
                            lost_detail.append({"n": r["n"], "kind": r["kind"], "client": c.user,
                                                "node": self.nodes[c.home].name,
                                                "seq": r["seq"], "epoch": r["epoch"],
                                                "published_after_heal_s":
                                                    round(r["t_final"] - w["t_heal"], 2),
                                                "answers": r["answers"]})
                if r["duplicate"]:
                    late_dup += 1
            elif r["final"] in (502, 503, "not sent"):
                bad["refused_delivered"] += sum(1 for c in who if r["n"] in c.got)
            else:   # 504 / no answer after the retry window: at most once
                bad["unknown_recipients"] += len(who)
                for c in who:
                    k = len(c.got.get(r["n"], []))
                    bad["unknown_delivered"] += 1 if k else 0
                    bad["unknown_delivered_twice"] += 1 if k > 1 else 0
        ooo = sum(1 for c in self.clients for (t, *_x) in c.out_of_order if lo <= t < hi)
        gaps = sum(1 for c in self.clients for (t, *_x) in c.seq_gaps if lo <= t < hi)
        drops = sum(1 for c in self.clients for t in c.drops if lo <= t < hi)
        rec_false = {}
        rec_true = replayed = 0
        for c in self.clients:
            for (t, ch, ok, reason, rep, err) in c.events:
                if not lo <= t < hi:
                    continue
                if ok:
                    rec_true += 1
                    replayed += rep or 0
                else:
                    why = err or reason or "no reason given"
                    why = re.sub(r"\d+", "N", why)
                    rec_false[why] = rec_false.get(why, 0) + 1
        # /healthz: first non-ok at or after the fault, and the first all-ok after the last
        # non-ok of the window.
        # A poll that got no answer in 3 s (a busy box) is neither: counted apart.
        polls = [h for h in self.health if w["t_fault"] <= h[0] < hi]
        unanswered = sum(1 for h in polls if h[2] == "no answer")
        polls = [h for h in polls if h[2] != "no answer"]
        degraded_at = next((t for (t, _n, s, _r) in polls if s != "ok"), None)
        reasons = {}
        last_bad = None
        for (t, name, s, reason) in polls:
            if s != "ok":
                last_bad = t
                key = f"{name}: {s}: {re.sub(r'[0-9]+', 'N', str(reason))[:160]}"
                reasons[key] = reasons.get(key, 0) + 1
        ok_at = None
        if last_bad is not None:
            ok_at = next((t for (t, _n, s, _r) in polls if t > last_bad and s == "ok"), None)
        caught = None
        if lost == 0 and last_needed is not None:
            caught = max(0.0, last_needed - w["t_heal"])
        return {
            "scenario": w["scenario"], "name": SCENARIOS[w["scenario"]], "fault": w["what"],
            "fault_s": round(w["t_heal"] - w["t_fault"], 2),
            "messages": len(recs), "final": finals, "answers": answers,
            "retried_then_200_duplicate_true": late_dup,
            "deliveries_expected": expected, "deliveries_delivered": delivered,
            "lost": lost, "duplicates": dups, "out_of_order": ooo, "seq_gaps_seen_live": gaps,
            "lost_examples": lost_detail, "lost_by_kind": lost_by_kind,
            "duplicates_by_kind": dup_by_kind,
            "refused_but_delivered": bad["refused_delivered"],
            "unknown_recipients": bad["unknown_recipients"],
            "unknown_delivered": bad["unknown_delivered"],
            "unknown_delivered_twice": bad["unknown_delivered_twice"],
            "client_drops": drops, "recovered_true": rec_true, "replayed": replayed,
            "recovered_false": rec_false,
            "degraded_after_s": None if degraded_at is None else round(degraded_at - w["t_fault"], 2),
            "ok_after_s": None if ok_at is None else round(ok_at - w["t_fault"], 2),
            "health_reasons": reasons, "health_polls_unanswered": unanswered,
            "caught_up_after_heal_s": None if caught is None else round(caught, 2),
            "worst_delivery_after_200_s": None if worst_lag is None else round(max(0.0, worst_lag), 2),
            "settled": w["settled"] is not None,
            "log_lines": w["log_lines"],
        }

    async def main(self):
        a = self.a
        await asyncio.to_thread(self.start_redis)
        self.start_volley("A")
        self.start_volley("B")
        for node in self.nodes:
            await self.wait_ok(node)
        self.clients = [Client(self, i, 0 if i < a.clients // 2 else 1) for i in range(a.clients)]
        tasks = [asyncio.create_task(c.loop()) for c in self.clients]
        deadline = now() + 30
        while not all(c.joined for c in self.clients):
            if now() > deadline:
                raise SystemExit(f"only {sum(c.joined for c in self.clients)} of "
                                 f"{a.clients} clients joined room r in 30 s")
            await asyncio.sleep(0.1)
        log(f"{a.clients} clients joined room r")
        tasks.append(asyncio.create_task(self.health_loop()))
        tasks.append(asyncio.create_task(self.publisher()))
        windows = []
        for sc in a.scenarios:
            windows.append(await self.scenario(sc))
        # The last publishes finish and are delivered before the clients stop reading.
        self.publishing = False
        if self.pub_tasks:
            await asyncio.wait(list(self.pub_tasks), timeout=a.retry_s + 20)
        deadline = now() + a.settle_s
        while self.undelivered(0, now() + 1)[0] and now() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(a.tail_s)
        inboxes = await asyncio.to_thread(self.inbox_entries)
        self.stopping = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        rows = [self.report(w) for w in windows]
        stray = sum(1 for c in self.clients for n in c.got if n not in self.msgs)
        connect_errors = {}
        for c in self.clients:
            for why, k in c.connect_errors.items():
                connect_errors[why] = connect_errors.get(why, 0) + k
        return {"scenarios": rows, "clients": a.clients, "rate": a.rate,
                "messages_total": len(self.msgs), "deliveries_of_unknown_messages": stray,
                "client_connects": sum(c.connects for c in self.clients),
                "client_connect_errors": connect_errors,
                "presence_ttl_s": a.presence_ttl_s,
                "inbox_entries_left": inboxes}


SCENARIOS = {
    1: "Redis hung (SIGSTOP/SIGCONT)",
    2: "Redis killed, restarted empty",
    3: "subscriber links killed",
    4: "requirepass set, then removed",
    5: "maxmemory reached (noeviction), then lifted",
    6: "a volley process SIGKILLed",
}


def parse():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--volley-bin", required=True)
    p.add_argument("--redis-server", default="redis-server")
    p.add_argument("--logs", required=True)
    p.add_argument("--pidfile", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--clients", type=int, default=40)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--scenarios", default="1,2,3,4,5,6")
    p.add_argument("--hang-s", type=float, default=8.0)
    p.add_argument("--hold-s", type=float, default=8.0)
    p.add_argument("--down-s", type=float, default=2.0)
    p.add_argument("--pubsub-kills", type=int, default=3)
    p.add_argument("--pre-s", type=float, default=3.0)
    p.add_argument("--post-s", type=float, default=3.0)
    p.add_argument("--settle-s", type=float, default=40.0)
    p.add_argument("--tail-s", type=float, default=2.0)
    p.add_argument("--retry-s", type=float, default=30.0)
    p.add_argument("--presence-ttl-s", type=int, default=15)
    a = p.parse_args()
    a.scenarios = [int(s) for s in a.scenarios.split(",") if s]
    if any(s not in SCENARIOS for s in a.scenarios):
        p.error("--scenarios: numbers 1..6")
    if 6 in a.scenarios and a.scenarios[-1] != 6:
        p.error("--scenarios: 6 (a volley process killed) must come last")
    if a.clients < 2:
        p.error("--clients: at least 2")
    return a


def fmt_s(v):
    return "never" if v is None else f"{v:.1f} s"


def short_reason(why):
    w = why.lower()
    if "restarted" in w or "epoch" in w:
        return "numbering restarted (new epoch)"
    if "ahead" in w:
        return "seq ahead of the channel"
    if "older than" in w or "gone" in w or "history" in w:
        return "gap older than the history"
    return why[:60]


def report(files, out=sys.stdout):
    """Markdown tables, one per run, from the JSON reports of `bench_faults.py run`."""
    for k, path in enumerate(files, 1):
        r = json.load(open(path))
        out.write(f"Run {k} ({r['clients']} clients, ~{r['rate']:g} publishes/s, "
                  f"{r['messages_total']} messages, presence TTL {r['presence_ttl_s']} s):\n\n")
        out.write("| scenario | messages: final 200 / 502 / 503 / 504 (answers 200 / 502 / 503 / "
                  "504 / no answer) | deliveries expected / delivered | lost | dup | out of order "
                  "| `recovered:false` (why) | degraded after / ok after | every client had "
                  "every message, after the heal | longest wait, 200 answer to delivery "
                  "| volley log lines |\n")
        out.write("|---|---|---|---|---|---|---|---|---|---|---|\n")
        for s in r["scenarios"]:
            f, a = s["final"], s["answers"]
            unk = f.get("504", 0) + f.get("not sent", 0)
            msgs = (f"{s['messages']}: {f.get('200', 0)} / {f.get('502', 0)} / {f.get('503', 0)} / "
                    f"{unk} ({a.get('200', 0)} / {a.get('502', 0)} / {a.get('503', 0)} / "
                    f"{a.get('504', 0)} / {a.get('no answer', 0) + a.get('not sent', 0)})")
            why = {}
            for reason, c in s["recovered_false"].items():
                key = short_reason(reason)
                why[key] = why.get(key, 0) + c
            rf = "0" if not why else "; ".join(f"{c}: {w}" for w, c in why.items())
            extra = []
            if s["refused_but_delivered"]:
                extra.append(f"{s['refused_but_delivered']} deliveries of refused messages")
            if s["unknown_delivered_twice"]:
                extra.append(f"{s['unknown_delivered_twice']} 504s delivered twice")
            caught = fmt_s(s["caught_up_after_heal_s"]) if s["lost"] == 0 else "never (lost)"
            lines = sum(s["log_lines"].values())
            out.write(
                f"| {s['scenario']}. {s['name']}<br>{s['fault']} | {msgs} | "
                f"{s['deliveries_expected']} / {s['deliveries_delivered']} | "
                f"{'**' + str(s['lost']) + '**' if s['lost'] else 0} | "
                f"{'**' + str(s['duplicates']) + '**' if s['duplicates'] else 0} | "
                f"{'**' + str(s['out_of_order']) + '**' if s['out_of_order'] else 0} | {rf} | "
                f"{fmt_s(s['degraded_after_s'])} / {fmt_s(s['ok_after_s'])} | {caught} | "
                f"{fmt_s(s.get('worst_delivery_after_200_s')) if s['lost'] == 0 else 'never (lost)'} | "
                f"{lines}{'; ' + '; '.join(extra) if extra else ''} |\n")
        out.write("\n")


def violations(files):
    bad = 0
    for path in files:
        for s in json.load(open(path))["scenarios"]:
            bad += (s["lost"] + s["duplicates"] + s["out_of_order"] + s["refused_but_delivered"]
                    + s["unknown_delivered_twice"])
    return bad


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        files = sys.argv[2:]
        report(files)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "violations":
        print(violations(sys.argv[2:]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        del sys.argv[1]
    a = parse()
    run = Run(a)

    def on_term(signum, _frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        result = asyncio.run(run.main())
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    finally:
        run.stop_all()


if __name__ == "__main__":
    main()
