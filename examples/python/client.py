"""A volley client in Python: connects as a user, prints each message, acks it.

    python3 -m pip install websockets
    python3 examples/python/client.py [ws://127.0.0.1:8080/ws] [user] [count]

Then push to the user: curl -d '{"text":"hi"}' http://127.0.0.1:8080/api/users/ann/messages
It prints `message <channel> <seq> <data>` for each message and `acked <channel> <seq>` once
volley confirms the ack; with a count it exits after acking that many messages. An ack
takes the message out of the user's offline inbox and counts in its receipt
(GET /api/messages/{id}). Open mode (?user=) only; with JWTs, pass ?token= instead.
"""

import json
import sys
from urllib.parse import quote

from websockets.sync.client import connect

url = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8080/ws"
user = sys.argv[2] if len(sys.argv) > 2 else "ann"
count = int(sys.argv[3]) if len(sys.argv) > 3 else None

with connect(f"{url}?user={quote(user)}") as ws:
    print(f"connected as {user}", flush=True)
    acks = {}  # ref -> (channel, seq): an ack is confirmed by the reply with its ref
    ref = 0
    acked = 0
    for frame in ws:
        event = json.loads(frame)
        if event["type"] == "message":
            print(f"message {event['channel']} {event['seq']} {json.dumps(event.get('data'))}", flush=True)
            if event["seq"] is not None:  # unnumbered messages cannot be acked
                ref += 1
                acks[ref] = (event["channel"], event["seq"])
                ws.send(json.dumps({"op": "ack", "channel": event["channel"], "seq": event["seq"], "ref": ref}))
        elif event["type"] == "reply" and event["ref"] in acks:
            channel, seq = acks.pop(event["ref"])
            if not event["ok"]:
                print(f"ack {channel} {seq} refused: {event['error']['message']}", flush=True)
                continue
            print(f"acked {channel} {seq}", flush=True)
            acked += 1
            if count is not None and acked >= count:
                break
