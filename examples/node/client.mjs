// A volley client in Node.js: connects as a user, prints each message, acks it.
//
//   cd examples/node && npm ci       (the `ws` package; Node 22+ has WebSocket built in)
//   node examples/node/client.mjs [ws://127.0.0.1:8080/ws] [user] [count]
//
// Then push to the user: curl -d '{"text":"hi"}' http://127.0.0.1:8080/api/users/ann/messages
// It prints `message <channel> <seq> <data>` for each message and `acked <channel> <seq>`
// once volley confirms the ack; with a count it exits after acking that many messages. An
// ack takes the message out of the user's offline inbox and counts in its receipt
// (GET /api/messages/{id}). Open mode (?user=) only; with JWTs, pass ?token= instead.

const WebSocketImpl = globalThis.WebSocket ?? (await import("ws")).default;

const [url = "ws://127.0.0.1:8080/ws", user = "ann", count] = process.argv.slice(2);
const ws = new WebSocketImpl(`${url}?user=${encodeURIComponent(user)}`);
const acks = new Map(); // ref -> [channel, seq]: an ack is confirmed by the reply with its ref
let ref = 0;
let acked = 0;

ws.onopen = () => console.log(`connected as ${user}`);
ws.onclose = (event) => {
  if (event.code !== 1000) console.log(`closed ${event.code} ${event.reason}`);
};
ws.onerror = (event) => {
  console.error(`error: ${event.message ?? "connection failed"}`);
  process.exitCode = 1;
};
ws.onmessage = (event) => {
  const m = JSON.parse(String(event.data));
  if (m.type === "message") {
    console.log(`message ${m.channel} ${m.seq} ${JSON.stringify(m.data)}`);
    if (m.seq === null) return; // unnumbered messages cannot be acked
    acks.set(++ref, [m.channel, m.seq]);
    ws.send(JSON.stringify({ op: "ack", channel: m.channel, seq: m.seq, ref }));
  } else if (m.type === "reply" && acks.has(m.ref)) {
    const [channel, seq] = acks.get(m.ref);
    acks.delete(m.ref);
    if (!m.ok) {
      console.log(`ack ${channel} ${seq} refused: ${m.error.message}`);
      return;
    }
    console.log(`acked ${channel} ${seq}`);
    if (count !== undefined && ++acked >= Number(count)) ws.close(1000);
  }
};
