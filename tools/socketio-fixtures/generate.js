// Writes fixtures.json: bytes produced by the real socket.io npm packages (versions pinned in
// package.json), which volley's sans-IO codecs in src/protocol/socketio/ are tested against.
//
//   cd tools/socketio-fixtures && npm ci && node generate.js
//
// Nothing here talks to Redis: the emitter and the adapter get fake clients that record what
// they would PUBLISH. Every fixture carries `expect`, the value a decoder must produce, with
// Buffers written as {"$bin": "<hex>"} so the expectation stays plain JSON.
"use strict";

const fs = require("fs");
const msgpack = require("notepack.io");
const { Encoder } = require("socket.io-parser");
const eio = require("engine.io-parser");
const { Emitter } = require("@socket.io/redis-emitter");
const { RedisAdapter } = require("@socket.io/redis-adapter");

const fixtures = [];

// A JSON view of a value with Buffers as {"$bin": hex} and undefined dropped (as notepack does).
function view(value) {
  if (Buffer.isBuffer(value)) return { $bin: value.toString("hex") };
  if (Array.isArray(value)) return value.map(view);
  if (value && typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) if (v !== undefined) out[k] = view(v);
    return out;
  }
  return value;
}

function publishes(fn) {
  const out = [];
  const client = {
    publish(channel, message) {
      out.push({ channel, message });
    },
    on() {},
    off() {},
    psubscribe() {},
    punsubscribe() {},
    subscribe() {},
    unsubscribe() {},
    send_command(_cmd, _args, cb) {
      cb(null, ["x", "2"]);
    },
  };
  fn(client);
  return out;
}

function record(name, { channel, message }, expect) {
  const entry = { name, channel };
  if (typeof message === "string") entry.text = message;
  else entry.hex = Buffer.from(message).toString("hex");
  entry.expect = expect;
  fixtures.push(entry);
}

// --- @socket.io/redis-emitter: what a backend publishes -------------------------------------
const big = "x".repeat(300);
const manyArgs = Array.from({ length: 20 }, (_, i) => i * 1000 - 9000);
const emits = [
  ["emitter_all", (e) => e.emit("message", { text: "hi", n: 1 })],
  ["emitter_one_room", (e) => e.to("lobby").emit("message", "plain")],
  ["emitter_rooms_except", (e) => e.to(["a", "b"]).except("c").emit("news", 1.5, -3, null, true)],
  ["emitter_binary", (e) => e.emit("file", Buffer.from([0, 1, 2, 255]), { nested: [Buffer.alloc(0)] })],
  ["emitter_flags", (e) => e.of("/admin").volatile.compress(false).emit("tick", big)],
  ["emitter_numbers", (e) => e.emit("nums", manyArgs, 2 ** 40, -(2 ** 40), 0.1, 4294967295, 65536, 255, -33, -129)],
  ["emitter_unicode", (e) => e.to("salle-été").emit("ünï", "日本語 🎉")],
];
for (const [name, fn] of emits) {
  for (const p of publishes((client) => fn(new Emitter(client)))) {
    const [uid, packet, opts] = msgpack.decode(p.message);
    record(name, p, view([uid, packet, opts]));
  }
}

// Emitter requests are JSON text.
const requests = [
  ["emitter_sockets_join", (e) => e.in("room1").socketsJoin(["room2", "room3"])],
  ["emitter_sockets_leave", (e) => e.except("room1").socketsLeave("room2")],
  ["emitter_disconnect", (e) => e.in("room1").disconnectSockets(true)],
  ["emitter_server_side_emit", (e) => e.serverSideEmit("hello", { a: [1, 2] })],
];
for (const [name, fn] of requests) {
  for (const p of publishes((client) => fn(new Emitter(client)))) {
    record(name, p, JSON.parse(p.message));
  }
}

// --- @socket.io/redis-adapter v8: what a Node socket.io server publishes ---------------------
function adapter(client) {
  const nsp = { name: "/", server: { encoder: new Encoder() }, sockets: new Map() };
  const a = new RedisAdapter(nsp, client, client, {});
  // A fixed uid so the fixtures are reproducible (the adapter draws 6 random characters).
  Object.defineProperty(a, "uid", { value: "abc123" });
  return a;
}
const adapterCalls = [
  ["adapter_broadcast", (a) => a.broadcast({ type: 2, data: ["message", { x: 1 }] }, { rooms: new Set(), except: new Set(["sid1"]), flags: {} })],
  ["adapter_broadcast_room", (a) => a.broadcast({ type: 2, data: ["message", Buffer.from("bin")] }, { rooms: new Set(["r1"]), except: new Set(), flags: { volatile: true, compress: true } })],
  ["adapter_broadcast_ack", (a) => a.broadcastWithAck({ type: 2, data: ["q", 1] }, { rooms: new Set(["r1", "r2"]), except: new Set(), flags: { timeout: 5000 } }, () => {}, () => {})],
  ["adapter_sockets_join", (a) => a.addSockets({ rooms: new Set(["r1"]), except: new Set() }, ["r9"])],
  ["adapter_sockets_leave", (a) => a.delSockets({ rooms: new Set(), except: new Set(["r2"]) }, ["r9"])],
  ["adapter_disconnect", (a) => a.disconnectSockets({ rooms: new Set(["r1"]), except: new Set() }, false)],
  ["adapter_server_side_emit", (a) => a.serverSideEmit(["ping", 1])],
];
for (const [name, fn] of adapterCalls) {
  for (const p of publishes((client) => fn(adapter(client)))) {
    const decoded = typeof p.message === "string" ? JSON.parse(p.message) : msgpack.decode(p.message);
    if (decoded.requestId) decoded.requestId = "<random>";
    record(name, p, view(decoded));
  }
}
// Requests whose reply the adapter awaits: publish happens after an awaited NUMSUB.
(async () => {
  for (const [name, fn] of [
    ["adapter_all_rooms", (a) => a.allRooms()],
    ["adapter_fetch_sockets", (a) => a.fetchSockets({ rooms: new Set(["r1"]), except: new Set(), flags: {} })],
  ]) {
    const out = [];
    const client = {
      publish(channel, message) {
        out.push({ channel, message });
      },
      on() {}, off() {}, psubscribe() {}, subscribe() {},
      send_command(_c, _a, cb) { cb(null, ["x", "2"]); },
    };
    const a = adapter(client);
    fn(a).catch(() => {});
    await new Promise((r) => setTimeout(r, 10));
    for (const p of out) {
      const decoded = JSON.parse(p.message);
      decoded.requestId = "<random>";
      record(name, p, decoded);
    }
  }

  // --- notepack.io: volley's own broadcast, encoded the way Node would ---------------------
  record(
    "volley_broadcast",
    { channel: "socket.io#/#", message: msgpack.encode(["volley-node1", { type: 2, data: ["message", { a: [1, 2.5, "s"] }], nsp: "/" }, { rooms: [], except: [], flags: {} }]) },
    null,
  );
  record(
    "volley_broadcast_room_text",
    { channel: "socket.io#/chat#lobby#", message: msgpack.encode(["volley-node1", { type: 2, data: ["news", "hello"], nsp: "/chat" }, { rooms: ["lobby"], except: [], flags: {} }]) },
    null,
  );
  record(
    "volley_broadcast_binary",
    { channel: "socket.io#/#", message: msgpack.encode(["volley-node1", { type: 2, data: ["message", Buffer.from([9, 8, 7])], nsp: "/" }, { rooms: ["a", "b"], except: [], flags: {} }]) },
    null,
  );

  // --- socket.io-parser: text packets and binary packets -------------------------------------
  const enc = new Encoder();
  const packets = [
    ["sio_connect", { type: 0, nsp: "/" }],
    ["sio_connect_nsp_auth", { type: 0, nsp: "/admin", data: { token: "abc" } }],
    ["sio_connect_reply", { type: 0, nsp: "/", data: { sid: "oSO0OpakMV_3jnilAAAA" } }],
    ["sio_disconnect_nsp", { type: 1, nsp: "/admin" }],
    ["sio_event", { type: 2, nsp: "/", data: ["hello", 1] }],
    ["sio_event_ack", { type: 2, nsp: "/admin", id: 456, data: ["project:delete", 123] }],
    ["sio_ack", { type: 3, nsp: "/admin", id: 456, data: [] }],
    ["sio_connect_error", { type: 4, nsp: "/", data: { message: "Not authorized" } }],
    ["sio_binary_event", { type: 2, nsp: "/", data: ["hello", Buffer.from([1, 2, 3])] }],
    ["sio_binary_ack", { type: 3, nsp: "/admin", id: 456, data: [{ a: Buffer.from([3]), b: [Buffer.from([4, 5])] }] }],
  ];
  for (const [name, packet] of packets) {
    // The encoder rewrites binary packets in place (placeholders): record the view first.
    const expect = view(packet);
    const real = enc.encode(packet);
    fixtures.push({
      name,
      text: real[0],
      attachments: real.slice(1).map((b) => Buffer.from(b).toString("hex")),
      expect,
    });
  }

  // --- engine.io-parser: packets and polling payloads ----------------------------------------
  const eioPackets = [
    { type: "open", data: '{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}' },
    { type: "ping" },
    { type: "pong", data: "probe" },
    { type: "message", data: "hello" },
    { type: "message", data: Buffer.from([1, 2, 3, 4]) },
    { type: "upgrade" },
    { type: "noop" },
    { type: "close" },
  ];
  eio.encodePayload(eioPackets, (payload) => {
    fixtures.push({ name: "eio_payload", text: payload, expect: view(eioPackets) });
  });
  for (const body of ["4hello\x1e4€\x1ebAQID", "2", "bAA==", "6\x1e6\x1e6"]) {
    fixtures.push({ name: "eio_decode_payload", text: body, expect: view(eio.decodePayload(body)) });
  }

  fs.writeFileSync(__dirname + "/fixtures.json", JSON.stringify(fixtures, null, 1) + "\n");
  console.log(`wrote ${fixtures.length} fixtures`);
})();
