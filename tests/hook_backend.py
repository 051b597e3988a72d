#!/usr/bin/env python3
"""A real application backend for tests/hooks.rs: answers volley's --app-webhook documents
(docs/API.md, "Application hooks") and records what it received.

Prints its port on the first line of stdout, then serves until killed. POST <any path> takes
a hook document; GET /log answers {"requests": [documents], "connections": <sockets
accepted>}, so a test can see what arrived and that keep-alive reused sockets.

Behaviour by event name (the native op):
  chat   ack {"echo": <first arg>, "user": <user>}, emit "chat-back" with the first arg
  enter  join the room named by the first arg's "room", ack "welcome"
  exit   leave that room, ack "bye"
  deny   refuse with "not allowed here"
  slow   sleep 5 s before answering (longer than the tests' timeouts)
  other  an empty answer (ack null)
  many   ack with every arg, in order (socket.io: the ack's arguments)
Connects (socket.io namespace CONNECTs): user "mallory" is refused with "banned"; user
"slowpoke" waits 5 s; "sleepy" waits 0.5 s, then as others; others are accepted, join the room named by auth.room (if any) and
get the event "welcome" with {user, socket, namespace, auth}.
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
REQUESTS = []
CONNECTIONS = [0]


class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def setup(self):
        super().setup()
        with LOCK:
            CONNECTIONS[0] += 1

    def log_message(self, *args):
        pass

    def answer(self, doc, status=200):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with LOCK:
            self.answer({"requests": REQUESTS, "connections": CONNECTIONS[0]})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        doc = json.loads(self.rfile.read(length))
        doc["_hook_header"] = self.headers.get("X-Volley-Hook")
        with LOCK:
            REQUESTS.append(doc)
        if doc["type"] == "connect":
            if doc["user"] == "mallory":
                return self.answer({"v": 1, "error": "banned"})
            if doc["user"] == "slowpoke":
                time.sleep(5)
                return self.answer({"v": 1})
            if doc["user"] == "sleepy":
                time.sleep(0.5)
            auth = doc["auth"] or {}
            welcome = {k: doc[k] for k in ("user", "socket", "namespace", "auth")}
            return self.answer({
                "v": 1,
                "join": [auth["room"]] if "room" in auth else [],
                "emit": [{"event": "welcome", "args": [welcome]}],
            })
        event, args = doc["event"], doc["args"]
        first = args[0] if args else None
        if event == "chat":
            return self.answer({
                "v": 1,
                "ack": {"echo": first, "user": doc["user"]},
                "emit": [{"event": "chat-back", "args": [first]}],
            })
        if event == "enter":
            return self.answer({"v": 1, "join": [first["room"]], "ack": "welcome"})
        if event == "exit":
            return self.answer({"v": 1, "leave": [first["room"]], "ack": "bye"})
        if event == "many":
            return self.answer({"v": 1, "ack": args})
        if event == "deny":
            return self.answer({"v": 1, "error": "not allowed here"})
        if event == "slow":
            time.sleep(5)
            return self.answer({"v": 1, "ack": "late"})
        # Chunked, to exercise volley's chunked decoding.
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        body = b'{"v":1}'
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
