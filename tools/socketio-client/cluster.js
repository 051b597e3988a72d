// Scenarios tests/socketio_cluster.rs runs: volley processes and Node socket.io on one
// Redis, through socket.io's own Redis formats (volley --socketio-adapter).
// Usage: node cluster.js <scenario> <redis://host:port> [volley http URLs...]
// Each prints one JSON object per line (what it observed) and exits 0; the Rust test
// asserts on those lines. Every scenario stops itself (a watchdog exits 3). The Rust test
// waits until every volley shard subscribed socket.io's channels before starting one.
"use strict";
const { io } = require("socket.io-client");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { Emitter } = require("@socket.io/redis-emitter");
const { createClient } = require("redis");
const http = require("http");

const [scenario, redisUrl, ...urls] = process.argv.slice(2);
const out = (o) => console.log(JSON.stringify(o));
setTimeout(() => { out({ watchdog: true }); process.exit(3); }, 30000).unref();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function post(url, path, body) {
  const res = await fetch(url + path, { method: "POST", body });
  return { status: res.status, body: await res.json().catch(() => null) };
}

// A socket.io client that records every event it gets, in order.
async function client(url, name, opts = {}) {
  const socket = io(url, { transports: ["websocket"], forceNew: true, ...opts });
  socket.log = [];
  socket.onAny((event, ...args) => {
    socket.log.push([event, ...args.map((a) => (Buffer.isBuffer(a) ? { buffer: [...a] } : a))]);
  });
  socket.on("disconnect", (reason) => socket.log.push(["disconnect", reason]));
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
  socket.name = name;
  return socket;
}

// Resolves once `socket` got `event` (a sentinel sent after what is checked: every
// subscriber reads its channels in publish order, so what came before it has arrived).
function got(socket, event, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    if (socket.log.some(([e]) => e === event)) return resolve();
    const timer = setTimeout(() => reject(new Error(`${socket.name} never got ${event}`)), timeoutMs);
    socket.onAny((e) => { if (e === event) { clearTimeout(timer); resolve(); } });
  });
}

const scenarios = {
  // An unchanged @socket.io/redis-emitter against two volley processes (A, B).
  async emitter(a, b) {
    const redis = createClient({ url: redisUrl });
    await redis.connect();
    const emitter = new Emitter(redis);
    const a1 = await client(a, "a1", { auth: { user: "ann" } });
    const b1 = await client(b, "b1", { auth: { user: "bob" } });
    const b2 = await client(b, "b2", { auth: { user: "cat" } });
    const c1 = await client(a + "/chat", "c1", { auth: { user: "dan" } });
    const all = [a1, b1, b2, c1];
    out({ joins: [await a1.emitWithAck("join", "red"), await b1.emitWithAck("join", "red"), await b2.emitWithAck("join", "blue")] });
    const sentinel = async (event, sockets) => {
      emitter.emit(event);
      emitter.of("/chat").emit(event);
      await Promise.all(sockets.map((s) => got(s, event)));
    };
    emitter.emit("news", { n: 1 });
    emitter.to("red").emit("to_red", 2);
    emitter.except("red").emit("except_red", 3);
    emitter.to("red").to("blue").except("blue").emit("red_or_blue_not_blue", 4);
    emitter.in(b1.id).emit("direct", "only b1");
    emitter.emit("binary", Buffer.from([1, 2, 3]));
    emitter.of("/chat").emit("chat_news", 5);
    await sentinel("end1", all);
    emitter.in("blue").socketsJoin("green");
    emitter.to("green").emit("to_green", 6);
    await sentinel("end2", all);
    // The join is a volley room: a volley API push to it reaches b2 across processes (its
    // shard subscribes the room's channel as it joins: publish until it arrives).
    const greenPush = new Promise((r) => b2.once("message", r));
    let pushed = null;
    for (let i = 0; i < 50 && pushed === null; i++) {
      await post(a, "/api/rooms/green/messages", JSON.stringify({ green: true }));
      pushed = await Promise.race([greenPush, sleep(200).then(() => null)]);
    }
    out({ green_push: pushed });
    emitter.in("blue").socketsLeave("green");
    emitter.to("green").emit("to_green_after_leave", 7);
    await sentinel("end3", all);
    emitter.in("red").disconnectSockets();
    await Promise.all([a1, b1].map((s) => new Promise((r) => (s.connected ? s.once("disconnect", r) : r()))));
    await sentinel("end4", [b2, c1]);
    for (const s of all) out({ client: s.name, id: s.id, log: s.log.filter(([e]) => e !== "message") });
    for (const s of all) s.close();
    await redis.quit();
  },

  // A Node socket.io 4 server on @socket.io/redis-adapter 8 and one volley process; a
  // client on each. Usage: node cluster.js mixed <redis> <volley> <volley shards>
  async mixed(volley, shards) {
    const pub = createClient({ url: redisUrl });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    const httpServer = http.createServer();
    const server = new Server(httpServer, { adapter: createAdapter(pub, sub) });
    // The Node app speaks volley's join op, so both clients join the same way.
    server.on("connection", (socket) => {
      socket.on("join", (room, ack) => { socket.join(room); ack && ack({ ok: true }); });
    });
    await new Promise((r) => httpServer.listen(0, "127.0.0.1", r));
    const node = `http://127.0.0.1:${httpServer.address().port}`;
    // Until the Node adapter has subscribed, it misses what is published.
    for (let i = 0; i < 200; i++) {
      const n = (await pub.sendCommand(["PUBSUB", "NUMSUB", "socket.io-request#/#"]))[1];
      if (Number(n) >= Number(shards) + 1) break;
      await sleep(20);
    }
    const n1 = await client(node, "n1");
    const v1 = await client(volley, "v1", { auth: { user: "vic" } });
    const both = [n1, v1];
    out({ joins: [await n1.emitWithAck("join", "lobby"), await v1.emitWithAck("join", "lobby")] });
    const sentinel = async (event) => {
      server.emit(event);
      await Promise.all(both.map((s) => got(s, event)));
    };
    out({ broadcast: await post(volley, "/api/broadcast", JSON.stringify({ from: "volley" })) });
    server.emit("from_node", 1);
    out({ room_push: await post(volley, "/api/rooms/lobby/messages", JSON.stringify({ room: "volley" })) });
    server.to("lobby").emit("node_lobby", 2);
    server.to(v1.id).emit("direct_to_volley_client", 3);
    out({ direct_push: await post(volley, "/api/rooms/" + encodeURIComponent(n1.id) + "/messages", JSON.stringify({ direct: "to n1" })) });
    out({ named_push: await post(volley, "/api/broadcast?event=chat", JSON.stringify({ named: true })) });
    await sentinel("end1");
    // Requests that wait for every server's answer complete instead of timing out.
    const sockets = await server.fetchSockets();
    out({ fetched: sockets.map((s) => ({ id: s.id, rooms: [...s.rooms].sort(), data: s.data })) });
    out({ all_rooms: [...(await server.of("/").adapter.allRooms())].sort() });
    const responses = await server.serverSideEmitWithAck("ping").catch((e) => ({ error: e.message }));
    out({ server_side_emit: responses });
    server.in(v1.id).socketsJoin("vip");
    server.to("vip").emit("vip", 4);
    await sentinel("end2");
    for (const s of both) out({ client: s.name, id: s.id, log: s.log });
    for (const s of both) s.close();
    server.close();
    await Promise.all([pub.quit(), sub.quit()]).catch(() => {});
  },

  // One emitter broadcast to one volley client (after garbage on socket.io's channels).
  async once(volley) {
    const redis = createClient({ url: redisUrl });
    await redis.connect();
    const c = await client(volley, "c");
    new Emitter(redis).emit("still_works", 1);
    await got(c, "still_works");
    out({ client: c.name, log: c.log });
    c.close();
    await redis.quit();
  },
};

scenarios[scenario](...urls).then(
  () => process.exit(0),
  (e) => { out({ error: String(e && e.stack || e) }); process.exit(1); },
);
