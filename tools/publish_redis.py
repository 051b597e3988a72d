#!/usr/bin/env python3
"""Publish to every volley client straight through Redis, without volley's HTTP API.

Usage:
    tools/publish_redis.py [--redis redis://127.0.0.1:6379/0] [--prefix volley] [--binary] MESSAGE

The envelope is the one documented in docs/ENVELOPE.md: a MessagePack map published on the
channel `<prefix>:all`. Prints how many volley shards (subscribers) Redis handed it to.
Needs the `redis` and `msgpack` packages (pip install redis msgpack).
"""
import argparse
import sys
import uuid

import msgpack
import redis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prefix", default="volley")
    parser.add_argument("--binary", action="store_true", help="send the message as a binary frame")
    parser.add_argument("message")
    args = parser.parse_args()

    payload = args.message.encode() if args.binary else args.message
    envelope = {
        "v": 1,
        "origin": "python-example",
        "id": str(uuid.uuid4()),
        "target": "all",
        "flags": 0,
        # A MessagePack str becomes a WebSocket text frame; bin (Python bytes) a binary frame.
        "payload": payload,
    }
    client = redis.Redis.from_url(args.redis)
    subscribers = client.publish(f"{args.prefix}:all", msgpack.packb(envelope, use_bin_type=True))
    print(subscribers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
