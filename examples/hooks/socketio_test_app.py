#!/usr/bin/env python3
"""socket.io's reference app for its protocol test suite, as a volley application hook.
In socket.io it is a few lines of a Node server:

    io.on("connection", (socket) => {
      socket.emit("auth", socket.handshake.auth);
      socket.on("message", (...args) => socket.emit("message-back", ...args));
      socket.on("message-with-ack", (...args) => { const ack = args.pop(); ack(...args); });
    });

Behind volley it is the function `handle` below: volley keeps the connections and POSTs
each CONNECT and each client event here (docs/API.md, "Application hooks").

    python3 examples/hooks/socketio_test_app.py 3000
    volley serve --app-webhook http://127.0.0.1:3000/ --socketio-namespace /custom

Prints the port it listens on (pass 0 for any free one). Every namespace behaves the same,
as the reference app's `/` and `/custom` do for `auth`. Differences from a socket.io server:
arguments are JSON (binary ones are refused by volley before they reach here), and an event
that asked for an ack always gets one (empty when the answer has no `ack`)."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def handle(doc):
    if doc["type"] == "connect":
        # socket.handshake.auth is {} when the client sent none.
        return {"emit": [{"event": "auth", "args": [doc["auth"] or {}]}]}
    if doc["event"] == "message":
        return {"emit": [{"event": "message-back", "args": doc["args"]}]}
    if doc["event"] == "message-with-ack":
        return {"ack": doc["args"]}  # an array: the ack's arguments
    return {}


class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: volley reuses its sockets

    def log_message(self, *args):
        pass

    def do_POST(self):
        doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps({"v": 1, **handle(doc)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    server = ThreadingHTTPServer(("127.0.0.1", port), Hook)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()
