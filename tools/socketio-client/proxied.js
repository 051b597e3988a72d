// socket.io clients behind a TLS proxy (haproxy or nginx from deploy/), driven by
// tests/proxies.rs: the real socket.io-client over https:// and wss://, each client from its
// own loopback address (so the proxy's address hashing spreads them), and volley's resume
// (`recover {channel: "all", since}`) after every reconnect, as docs/SOCKETIO.md tells a
// client to do.
//
// Usage: node proxied.js <https://127.0.0.1:port> <modes> <sources> <user prefix>
//   modes    comma-separated, one per client in turn: websocket (transports: ["websocket"]),
//            default (polling, then the upgrade) or polling (transports: ["polling"])
//   sources  comma-separated local addresses, one per client (127.x.y.z)
// The certificate is trusted through NODE_EXTRA_CA_CERTS (set by the test), so every TLS
// connection is verified as a browser would verify it.
//
// Prints one JSON object per line. First {"ready": [...]} once every client is connected
// (and, in default mode, upgraded); then it reads commands from stdin, one a line:
//   wait <seq>   until every client has seen broadcast seq <seq> on `all`; prints a report
//   ops <n>      every client sends n acknowledged ops (join r0 .. r<n-1>), one after
//                another; prints {"ops": count of ok answers}
//   report       prints the report now
// and exits 0 when stdin ends. A report is {"report": [per client: connects, engine ids,
// transports ("open:polling", "upgrade:websocket", per Engine.IO connection), disconnect
// reasons, connect errors, the seqs of `all` in arrival order, the recover answers and
// recovered events, and `log`: seqs, "connect" and "recovered" in arrival order]}. A watchdog
// exits 3 after 120 s.
"use strict";
const https = require("https");
const readline = require("readline");
const { io } = require("socket.io-client");

const [url, modesArg, sourcesArg, userPrefix] = process.argv.slice(2);
const out = (o) => console.log(JSON.stringify(o));
setTimeout(() => { out({ watchdog: true }); process.exit(3); }, 120000).unref();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const modes = modesArg.split(",");
const sources = sourcesArg.split(",");

function client(i) {
  const mode = modes[i % modes.length];
  const state = {
    i, mode, source: sources[i], connects: 0, engine_ids: [], transports: [],
    disconnects: [], connect_errors: [], seqs: [], recovers: [], recovered: [],
    // Everything in arrival order: seqs of `all` as numbers, and "connect" / "recovered".
    log: [],
  };
  // One agent per client: its own source address, and keep-alive so polling requests reuse
  // a TLS connection as a browser's would.
  const agent = new https.Agent({ localAddress: state.source, keepAlive: true });
  const opts = {
    agent,
    auth: { user: `${userPrefix}${i}` },
    // The cookie jar: haproxy's VOLLEY_SIO cookie comes back on every request, as in a browser.
    withCredentials: true,
    // Come back quickly after a drain (the default first delay is 1 s +-50%).
    reconnectionDelay: 100,
    reconnectionDelayMax: 1000,
  };
  if (mode === "websocket") opts.transports = ["websocket"];
  if (mode === "polling") opts.transports = ["polling"];
  const s = io(url, opts);
  let last = 0;
  // Each Engine.IO connection (the first and every reconnect): the transport it opened
  // with, and its upgrade if any.
  s.io.on("open", () => {
    const engine = s.io.engine;
    state.transports.push("open:" + engine.transport.name);
    engine.on("upgrade", (t) => state.transports.push("upgrade:" + t.name));
  });
  s.on("connect", () => {
    state.connects += 1;
    state.log.push("connect");
    state.engine_ids.push(s.io.engine.id);
    if (state.connects > 1) {
      // A reconnect: ask for what `all` got after the last seq this client saw.
      const since = last;
      s.emitWithAck("recover", { channel: "all", since }).then(
        (answer) => state.recovers.push({ since, answer }),
        (e) => state.recovers.push({ since, error: String(e) }),
      );
    }
  });
  s.on("message", (msg, ack) => {
    const v = msg && msg._volley;
    if (v && v.channel === "all") {
      state.seqs.push(v.seq);
      state.log.push(v.seq);
      last = Math.max(last, v.seq);
    }
    if (typeof ack === "function") ack();
  });
  s.on("recovered", (r) => { state.recovered.push(r); state.log.push("recovered"); });
  s.on("disconnect", (reason) => state.disconnects.push(reason));
  s.on("connect_error", (e) => state.connect_errors.push(e.message));
  return { s, state, mode, last: () => last };
}

async function main() {
  const clients = sources.map((_, i) => client(i));
  // Ready: every client connected, and the default-mode ones upgraded to WebSocket.
  for (;;) {
    const ready = clients.every((c) => c.s.connected
      && (c.mode !== "default" || c.s.io.engine.transport.name === "websocket"));
    if (clients.some((c) => c.state.connect_errors.length > 0)) {
      throw new Error("connect_error: " + JSON.stringify(clients.map((c) => c.state.connect_errors)));
    }
    if (ready) break;
    await sleep(20);
  }
  out({ ready: clients.map((c) => ({ engine_id: c.s.io.engine.id, transport: c.s.io.engine.transport.name })) });
  const report = () => out({ report: clients.map((c) => c.state) });

  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const [command, arg] = line.trim().split(/\s+/);
    if (command === "wait") {
      const seq = Number(arg);
      while (!clients.every((c) => c.state.seqs.includes(seq))) await sleep(20);
      // Late duplicates, if any, would come right after: give them a moment to show.
      await sleep(300);
      report();
    } else if (command === "ops") {
      const n = Number(arg);
      const answers = await Promise.all(clients.map(async (c) => {
        let ok = 0;
        for (let k = 0; k < n; k++) {
          const answer = await c.s.timeout(10000).emitWithAck("join", `r${k}`);
          if (answer && answer.ok) ok += 1;
        }
        return ok;
      }));
      out({ ops: answers.reduce((a, b) => a + b, 0) });
    } else if (command === "report") {
      report();
    }
  }
  for (const c of clients) c.s.close();
}

main().then(
  () => process.exit(0),
  (e) => { out({ error: String(e && e.stack || e) }); process.exit(1); },
);
