#!/usr/bin/env python3
"""socket.io's reference app for its protocol test suite, as a volley hook:

    io.on("connection", (socket) => {
      socket.emit("auth", socket.handshake.auth);
      socket.on("message", (...args) => socket.emit("message-back", ...args));
      socket.on("message-with-ack", (...args) => { const ack = args.pop(); ack(...args); });
    });

python3 socketio_test_app.py [port], then volley serve --app-webhook http://127.0.0.1:3000/
(with the socket.io server on). Every namespace behaves the same, as in the reference app's
/ and /custom."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def handle(doc):
    if doc["type"] == "connect":
        return {"emit": [{"event": "auth", "args": [doc["auth"] or {}]}]}
    if doc["event"] == "message":
        return {"emit": [{"event": "message-back", "args": doc["args"]}]}
    if doc["event"] == "message-with-ack":
        return {"ack": doc["args"]}  # an array: the ack's arguments
    return {}

class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
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

port = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
ThreadingHTTPServer(("127.0.0.1", port), Hook).serve_forever()
