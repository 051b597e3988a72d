// Publishes through an unchanged @socket.io/redis-emitter, one broadcast per input line:
// every line on stdin is a JSON value, sent as `io.emit("message", value)` on namespace
// `/`; once Redis has answered the PUBLISH (a PING after it is answered in order) the
// script prints `ok`, or `error <why>`. Used by `swarm run --publish-cmd` (tools/bench-box.sh
// --publish-cmd) to measure the box scenario with the broadcast sent through the emitter.
// Usage: node emit-lines.js redis://127.0.0.1:6379 [key]
"use strict";
const { Emitter } = require("@socket.io/redis-emitter");
const { createClient } = require("redis");
const readline = require("readline");

const [redisUrl, key = "socket.io"] = process.argv.slice(2);
if (!redisUrl) {
  console.error("usage: node emit-lines.js redis://host:port [key]");
  process.exit(2);
}

async function main() {
  const redis = createClient({ url: redisUrl });
  redis.on("error", (e) => console.error(`emit-lines: redis: ${e.message}`));
  await redis.connect();
  const emitter = new Emitter(redis, { key });
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.trim()) continue;
    try {
      emitter.emit("message", JSON.parse(line));
      await redis.ping();
      console.log("ok");
    } catch (e) {
      console.log(`error ${e.message}`);
    }
  }
  await redis.quit();
}

main().catch((e) => {
  console.error(`emit-lines: ${e.message}`);
  process.exit(1);
});
