#!/usr/bin/env python3
"""A volley application hook (docs/API.md, "Application hooks"): python3 chat.py, then
volley serve --app-webhook http://127.0.0.1:3000/volley"""
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def handle(doc):
    if doc["type"] == "connect":
        return {"error": "log in first"} if doc["user"] is None else {"join": ["lobby"]}
    if doc["event"] == "chat":
        return {"ack": {"ok": True}, "emit": [{"event": "chat-seen", "args": doc["args"]}]}
    if doc["event"] == "enter":
        return {"join": [doc["args"][0]["room"]], "ack": "welcome"}
    return {"error": f"no handler for {doc['event']}"}

class Hook(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: volley reuses its sockets
    def do_POST(self):
        doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps({"v": 1, **handle(doc)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer(("127.0.0.1", 3000), Hook).serve_forever()
