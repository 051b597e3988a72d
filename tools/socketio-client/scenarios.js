// Scenarios tests/socketio.rs runs with the real socket.io-client against a running volley.
// Usage: node scenarios.js <scenario> <http://host:port> [args...]
// Each prints one JSON object per line (what it observed) and exits 0; the Rust test
// asserts on those lines. Every scenario stops itself (a watchdog exits 3).
"use strict";
const { io, Manager } = require("socket.io-client");
const WebSocket = require("ws");

const [scenario, url, ...args] = process.argv.slice(2);
const out = (o) => console.log(JSON.stringify(o));
setTimeout(() => { out({ watchdog: true }); process.exit(3); }, 15000).unref();

async function post(path, body, headers = {}) {
  const res = await fetch(url + path, { method: "POST", body, headers });
  return { status: res.status, body: await res.json().catch(() => null) };
}
async function get(path) {
  const res = await fetch(url + path);
  return await res.json();
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function connected(socket) {
  return new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("connect_error", reject);
  });
}
function nextMessage(socket) {
  return new Promise((resolve) => socket.once("message", (msg, ack) => resolve({ msg, ack })));
}

const scenarios = {
  // Connect (transports from args: "websocket" or default), join a room with an ack, get
  // a room push, ack it, read the receipt.
  async push(transport) {
    const opts = { auth: { user: "ann" } };
    if (transport === "websocket") opts.transports = ["websocket"];
    const s = io(url, opts);
    const upgraded = new Promise((r) => s.io.on("open", () => s.io.engine.once("upgrade", (t) => r(t.name))));
    await connected(s);
    out({ connected: true, id: s.id, transport: s.io.engine.transport.name });
    out({ join: await s.emitWithAck("join", "lobby") });
    const message = nextMessage(s);
    const published = await post("/api/rooms/lobby/messages", JSON.stringify({ hi: 1 }));
    out({ published });
    const { msg, ack } = await message;
    out({ message: msg, ack_is_function: typeof ack === "function" });
    ack("thanks");
    if (transport !== "websocket") out({ upgraded_to: await upgraded });
    for (let i = 0; i < 50; i++) {
      const receipt = await get("/api/messages/" + published.body.id);
      if (receipt.acked >= 1 || i === 49) { out({ receipt }); break; }
      await sleep(50);
    }
    out({ leave: await s.emitWithAck("leave", "lobby"), missing: await s.emitWithAck("leave", "nowhere") });
    out({ unknown: await s.emitWithAck("chat", "hello") });
    // The room named by the socket id reaches exactly this socket.
    const own = nextMessage(s);
    await post("/api/rooms/" + encodeURIComponent(s.id) + "/messages", JSON.stringify({ to: "me" }));
    out({ own: (await own).msg });
    s.close();
  },

  // Several namespaces on one Engine.IO connection; an unknown one is refused.
  async namespaces() {
    const manager = new Manager(url, { transports: ["websocket"] });
    const root = manager.socket("/", { auth: { user: "bob" } });
    const chat = manager.socket("/chat", { auth: { user: "bob" } });
    const nope = manager.socket("/nope");
    const waits = [connected(root), connected(chat), connected(nope).then(() => null, (e) => e.message)];
    await waits[0];
    await waits[1];
    const refused = await waits[2];
    out({ root: root.id, chat: chat.id, same_engine: root.io === chat.io, refused });
    // A push reaches the first namespace the connection joined; ops work on each.
    out({ chat_join: await chat.emitWithAck("join", "news") });
    const got = nextMessage(root);
    await post("/api/rooms/news/messages", JSON.stringify({ n: 1 }));
    out({ root_message: (await got).msg });
    chat.disconnect();
    await sleep(100);
    out({ root_still_connected: root.connected, chat_connected: chat.connected });
    manager.engine.close();
  },

  // CONNECT auth with a token: accepted (prints the id) or refused (prints the reason).
  async auth(token) {
    const s = io(url, { transports: ["websocket"], auth: token ? { token } : {}, reconnection: false });
    try {
      await connected(s);
      out({ connected: true });
      const ok = await s.emitWithAck("join", "allowed");
      const no = await s.emitWithAck("join", "secret");
      out({ allowed: ok, secret: no });
    } catch (e) {
      out({ refused: e.message });
    }
    s.close();
  },

  // Binary both ways: a binary push arrives as a Buffer; the client acks it with a
  // Buffer (BINARY_ACK); a binary event from the client is answered.
  async binary() {
    const s = io(url, { transports: ["websocket"] });
    await connected(s);
    const message = nextMessage(s);
    const published = await post("/api/broadcast", Buffer.from([0, 255, 1, 2]), { "content-type": "application/octet-stream" });
    const { msg, ack } = await message;
    out({ is_buffer: Buffer.isBuffer(msg), hex: Buffer.from(msg).toString("hex") });
    ack(Buffer.from([9, 9]));
    for (let i = 0; i < 50; i++) {
      const receipt = await get("/api/messages/" + published.body.id);
      if (receipt.acked >= 1 || i === 49) { out({ receipt }); break; }
      await sleep(50);
    }
    out({ binary_publish: await s.emitWithAck("publish", { room: "x", data: Buffer.from([1]) }) });
    out({ binary_unknown: await s.emitWithAck("upload", Buffer.from([1, 2, 3])) });
    s.close();
  },

  // One broadcast: count what this socket.io client gets (the native side is counted by
  // the Rust test).
  async broadcast_count() {
    const s = io(url, { transports: ["websocket"] });
    await connected(s);
    let count = 0;
    s.on("message", (msg) => { count += 1; out({ message: msg }); });
    out({ ready: true });
    // The Rust test publishes once it reads "ready"; stdin closing means it is done.
    process.stdin.resume();
    await new Promise((r) => process.stdin.on("end", r));
    out({ count });
    s.close();
  },

  // Resume with volley's history: three messages published while away, then
  // `join {room, since: 1}` replays 2 and 3 and ends with a `recovered` event.
  async resume() {
    const published = [];
    for (const n of [1, 2, 3]) {
      published.push((await post("/api/rooms/hist/messages", JSON.stringify({ n }))).body);
    }
    out({ published });
    const s = io(url, { transports: ["websocket"] });
    await connected(s);
    const got = [];
    s.on("message", (msg) => got.push(msg));
    const recovered = new Promise((r) => s.once("recovered", r));
    out({ join: await s.emitWithAck("join", { room: "hist", since: 1 }) });
    out({ recovered: await recovered, replayed: got });
    out({ recover: await s.emitWithAck("recover", { channel: "room:hist", since: 3 }) });
    out({ recover_other: await s.emitWithAck("recover", { channel: "room:elsewhere", since: 0 }) });
    s.close();
  },

  // A user's socket that acks every push until stdin closes; prints each message.
  async acker(user) {
    const s = io(url, { transports: ["websocket"], auth: { user } });
    await connected(s);
    s.on("message", (msg, ack) => { out({ message: msg }); ack(); });
    out({ ready: true });
    process.stdin.resume();
    await new Promise((r) => process.stdin.on("end", r));
    s.close();
  },

  // Event names (issue 12): what a room got while this client was away (one push named
  // `chat`, one unnamed) is replayed by `join {since: 0}` under the same names; then live
  // pushes, one named `price` and one unnamed, and a named push to the user; every event
  // the socket gets is printed in order with whether it came with an ack callback (and it
  // is acked). Publishes go to `publishUrl` (another process, through Redis) when given.
  // Reserved names are refused with 400.
  async named(transport, publishUrl) {
    const pub = (path, body) => fetch((publishUrl || url) + path, { method: "POST", body })
      .then(async (res) => ({ status: res.status, body: await res.json().catch(() => null) }));
    const room = "named-" + Math.random().toString(36).slice(2);
    out({ away: [
      await pub(`/api/rooms/${room}/messages?event=chat`, JSON.stringify({ n: 1 })),
      await pub(`/api/rooms/${room}/messages`, JSON.stringify({ n: 2 })),
    ] });
    const opts = { auth: { user: "ann" }, reconnection: false };
    if (transport === "websocket") opts.transports = ["websocket"];
    const s = io(url, opts);
    await connected(s);
    const events = [];
    let wanted = 0;
    let enough = () => {};
    s.onAny((event, ...args) => {
      const last = args[args.length - 1];
      const ack = typeof last === "function";
      if (ack) { args.pop(); last(); }
      events.push({ event, arg: args[0], args: args.length, ack });
      if (events.length >= wanted) enough();
    });
    const until = (n) => new Promise((r) => { wanted = n; enough = r; if (events.length >= n) r(); });
    out({ join: await s.emitWithAck("join", { room, since: 0 }) });
    await until(3); // chat, message, recovered
    await pub(`/api/rooms/${room}/messages?event=price`, JSON.stringify({ n: 3 }));
    await until(4);
    await pub(`/api/rooms/${room}/messages?event=message`, JSON.stringify({ n: 4 }));
    await until(5);
    // Through Redis the user channel's subscription on the client's process may not be
    // confirmed yet: a publish no subscriber got (nodes 0) went to the inbox only; again.
    for (let i = 0; i < 100; i++) {
      const sent = await pub(`/api/users/ann/messages?event=${encodeURIComponent("dm ✉")}`, "hello");
      if (sent.body.nodes === undefined || sent.body.nodes > 0) break;
      await sleep(50);
    }
    await until(6);
    out({ events });
    const refused = {};
    for (const name of ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener", ""]) {
      refused[name] = await pub(`/api/rooms/${room}/messages?event=${name}`, "{}");
    }
    refused.long = await pub(`/api/rooms/${room}/messages?event=${"x".repeat(129)}`, "{}");
    refused.control = await pub(`/api/rooms/${room}/messages?event=a%0Ab`, "{}");
    out({ refused });
    s.close();
  },

  // Application hooks (tests/hooks.rs with tests/hook_backend.py behind --app-webhook):
  // a refused CONNECT, then a client (transports from args) whose CONNECT joins a room and
  // gets a `welcome`, whose events the application acks, emits back to, joins and refuses.
  async hooks(transport) {
    const base = { reconnection: false, extraHeaders: { "x-request-id": "req-7", cookie: "secret=1" } };
    if (transport === "websocket") base.transports = ["websocket"];
    const mallory = io(url, { ...base, auth: { user: "mallory" } });
    out({ mallory: await connected(mallory).then(() => "connected", (e) => e.message) });
    mallory.close();
    const s = io(url, { ...base, auth: { user: "ann", room: "vip" } });
    const welcome = new Promise((r) => s.once("welcome", r));
    await connected(s);
    out({ connected: s.id, welcome: await welcome });
    const chatBack = new Promise((r) => s.once("chat-back", (...args) => r(args)));
    out({ chat: await s.emitWithAck("chat", { text: "hi" }), chat_back: await chatBack });
    const vip = nextMessage(s);
    await post("/api/rooms/vip/messages", JSON.stringify({ m: 1 }));
    out({ vip: (await vip).msg });
    out({ enter: await s.emitWithAck("enter", { room: "club" }) });
    const club = nextMessage(s);
    await post("/api/rooms/club/messages", JSON.stringify({ m: 2 }));
    out({ club: (await club).msg });
    out({ many: await new Promise((r) => s.emit("many", 1, "two", { three: 3 }, (...args) => r(args))) });
    out({ deny: await s.emitWithAck("deny") });
    out({ other: await new Promise((r) => s.emit("other", (...args) => r(args))) });
    const noAck = new Promise((r) => s.once("chat-back", (...args) => r(args)));
    s.emit("chat", "no ack");
    out({ no_ack_back: await noAck });
    out({ volley_op: await s.emitWithAck("join", "lobby") });
    out({ transport: s.io.engine.transport.name });
    s.close();
  },

  // socket.io's protocol test suite app (examples/hooks/socketio_test_app.py behind
  // --app-webhook): `auth` on connect (on / and /custom), `message` answered with
  // `message-back`, `message-with-ack` acked with its args.
  async reference_app() {
    const manager = new Manager(url, { transports: ["websocket"], reconnection: false });
    const root = manager.socket("/", { auth: { user: "zoe", token: "t-1" } });
    const custom = manager.socket("/custom", { auth: { user: "zoe" } });
    const bare = io(url, { transports: ["websocket"], forceNew: true, reconnection: false });
    const auth = (s) => new Promise((r) => s.once("auth", r));
    const [rootAuth, customAuth, bareAuth] = [auth(root), auth(custom), auth(bare)];
    await Promise.all([connected(root), connected(custom), connected(bare)]);
    out({ root_auth: await rootAuth, custom_auth: await customAuth, bare_auth: await bareAuth });
    const back = new Promise((r) => root.once("message-back", (...args) => r(args)));
    root.emit("message", 1, "2", { 3: [4] });
    out({ message_back: await back });
    out({ acked: await new Promise((r) => root.emit("message-with-ack", 1, "2", { 3: [4] }, (...args) => r(args))) });
    out({ custom_acked: await custom.timeout(5000).emitWithAck("message-with-ack", "x") });
    manager.engine.close();
    bare.close();
  },

  // A CONNECT sent on polling whose hook answers after the upgrade to WebSocket is done
  // (tests/hook_backend.py answers user "sleepy" after 0.5 s): the CONNECT reply and the
  // welcome still arrive, on the WebSocket.
  async sleepy_connect() {
    const s = io(url, { auth: { user: "sleepy" }, reconnection: false });
    const upgraded = new Promise((r) => s.io.on("open", () => s.io.engine.once("upgrade", (t) => r(t.name))));
    const welcome = new Promise((r) => s.once("welcome", r));
    const result = await connected(s).then(() => "connected", (e) => e.message);
    out({ sleepy: result, upgraded: await upgraded, welcome: await welcome });
    out({ volley_op: await s.emitWithAck("join", "lobby"), transport: s.io.engine.transport.name });
    s.close();
  },

  // A webhook that hangs (tests/hooks.rs, --app-webhook-timeout-ms 1000): a CONNECT and an
  // event each get an error in time, and another client gets a broadcast meanwhile.
  async hook_timeout() {
    const other = io(url, { transports: ["websocket"], auth: { user: "bob" } });
    await connected(other);
    const ann = io(url, { transports: ["websocket"], auth: { user: "ann" } });
    await connected(ann);
    const slow = ann.emitWithAck("slow");
    const slowConnect = io(url, { transports: ["websocket"], auth: { user: "slowpoke" }, reconnection: false });
    const refused = connected(slowConnect).then(() => "connected", (e) => e.message);
    await sleep(200);
    const got = nextMessage(other);
    const published = await post("/api/broadcast", JSON.stringify({ during: "slow hook" }));
    out({ published, meanwhile: (await got).msg });
    out({ slow: await slow, slow_connect: await refused });
    out({ after: await ann.emitWithAck("chat", "again") });
    slowConnect.close();
    ann.close();
    other.close();
  },

  // A numbered stream while default-transport clients upgrade from polling to WebSocket
  // (tests/socketio.rs, the hand-over across shards). `count` clients connect on polling
  // and join one room; each holds its upgrade probe until a point of the stream, so the
  // upgrades happen while `messages` batches (one message to `all`, the room and each
  // client's user) are published at a steady pace. Prints what was published per channel
  // (seqs, from the batch answers), then per client: the shard that owns its session (the
  // sid names it), the shard its WebSocket landed on (a client publish's id names it),
  // its transport, and the seqs it got per channel, in arrival order.
  async upgrade_stream(count, messages) {
    const eio = require("engine.io-client");
    const probe = eio.Socket.prototype._probe;
    const held = new Map(); // engine sid -> release the upgrade probe
    eio.Socket.prototype._probe = function (name) {
      held.set(this.id, () => probe.call(this, name));
    };
    const clientsN = Number(count || 8);
    const batches = Number(messages || 200);
    const tag = Math.random().toString(36).slice(2);
    const room = "stream-" + tag;
    const clients = [];
    for (let i = 0; i < clientsN; i++) {
      const user = `up${i}-${tag}`;
      const s = io(url, { auth: { user }, forceNew: true, reconnection: false });
      const c = { user, s, got: {}, recovered: [], other: [] };
      s.onAny((event, ...args) => {
        const last = args[args.length - 1];
        if (typeof last === "function") { args.pop(); last(); }
        const msg = args[0];
        if (event === "recovered") c.recovered.push(msg);
        else if (msg && msg._volley) (c.got[msg._volley.channel] ||= []).push(msg._volley.seq);
        else c.other.push({ event, msg });
      });
      clients.push(c);
    }
    await Promise.all(clients.map((c) => connected(c.s)));
    for (const c of clients) {
      const joined = await c.s.emitWithAck("join", room);
      if (!joined.ok) throw new Error("join: " + JSON.stringify(joined));
      if (c.s.io.engine.transport.name !== "polling") throw new Error("upgraded before the stream");
    }
    const published = {};
    const entries = [{ broadcast: true }, { room }, ...clients.map((c) => ({ user: c.user }))];
    const channels = ["all", "room:" + room, ...clients.map((c) => "user:" + c.user)];
    const releaseAt = clients.map((_, i) => Math.floor(((i + 1) * batches) / (clientsN + 1)));
    for (let n = 1; n <= batches; n++) {
      const body = JSON.stringify({ messages: entries.map((e) => ({ ...e, data: { n } })) });
      const res = await fetch(url + "/api/batch", { method: "POST", body });
      const answer = await res.json();
      if (res.status !== 200) throw new Error("batch: " + JSON.stringify(answer));
      answer.results.forEach((r, i) => {
        if (r.error) throw new Error("batch entry: " + JSON.stringify(r));
        (published[channels[i]] ||= []).push(r.seq);
      });
      clients.forEach((c, i) => {
        if (releaseAt[i] !== n) return;
        const release = held.get(c.s.io.engine.id);
        if (release) release();
      });
      await sleep(5);
    }
    out({ published });
    // Every client has everything it is owed (or the wait runs out and the test says what
    // is missing).
    const owed = (c) => ["all", "room:" + room, "user:" + c.user];
    const done = (c) => owed(c).every((ch) => (c.got[ch] || []).length >= published[ch].length);
    for (let i = 0; i < 100 && !clients.every(done); i++) await sleep(50);
    await sleep(200); // anything delivered twice shows up too
    for (const c of clients) {
      const owner = Buffer.from(c.s.io.engine.id, "base64url").readUInt16BE(1);
      const own = await c.s.emitWithAck("publish", { room: "where-" + tag, data: 1 });
      const wsShard = own.ok ? Number(own.result.id.split("-")[1]) : null;
      out({ client: c.user, owner, ws_shard: wsShard, transport: c.s.io.engine.transport.name,
            got: Object.fromEntries(owed(c).map((ch) => [ch, c.got[ch] || []])),
            recovered: c.recovered, other: c.other });
      c.s.close();
    }
  },

  // `count` fresh users, one after another (every other one on the default transports,
  // the rest WebSocket only): each publishes to its own user the moment its `connect`
  // event fires, and waits (at most 3 s) for that push to arrive live. Prints per client
  // the publish answer and whether the push arrived.
  async connect_then_user_push(count) {
    const tag = Math.random().toString(36).slice(2);
    for (let i = 0; i < Number(count || 30); i++) {
      const user = `fresh${i}-${tag}`;
      const opts = { auth: { user }, forceNew: true, reconnection: false };
      if (i % 2 === 0) opts.transports = ["websocket"];
      const s = io(url, opts);
      const got = new Promise((r) => {
        s.on("message", (msg) => { if (msg && msg.i === i) r(true); });
        setTimeout(() => r(false), 3000);
      });
      await connected(s);
      const published = await post(`/api/users/${user}/messages`, JSON.stringify({ i }));
      out({ user, transport: opts.transports ? "websocket" : "default", published, live: await got });
      s.close();
    }
  },

  // Hostile input on raw Engine.IO WebSockets; a neighbour socket.io client must still
  // get a broadcast afterwards.
  async abuse() {
    const neighbour = io(url, { transports: ["websocket"] });
    await connected(neighbour);
    const inputs = {
      garbage_eio: "x",
      client_ping: "2",
      bad_sio: "4zzz",
      bad_json: "42[\"a\",",
      unconnected_nsp_event: "42/other,[\"a\"]",
      attachment_bomb: "451000000-[\"a\",{\"_placeholder\":true,\"num\":0}]",
      binary_without_packet: null,
    };
    for (const [name, text] of Object.entries(inputs)) {
      const ws = new WebSocket(url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket");
      const closed = new Promise((r) => ws.on("close", (code) => r(code)));
      await new Promise((r) => ws.once("message", r)); // the open packet
      ws.send("40");
      await new Promise((r) => ws.once("message", r)); // the CONNECT reply
      if (text === null) ws.send(Buffer.from([1, 2, 3]));
      else ws.send(text);
      out({ input: name, close_code: await closed });
    }
    const got = nextMessage(neighbour);
    await post("/api/broadcast", JSON.stringify({ after: "abuse" }));
    out({ neighbour: (await got).msg, neighbour_connected: neighbour.connected });
    neighbour.close();
  },
};

scenarios[scenario](...args).then(
  () => process.exit(0),
  (e) => { out({ error: String(e && e.stack || e) }); process.exit(1); },
);
