//! Application hooks end to end: the real binary with `--app-webhook` pointing at a real
//! HTTP backend (tests/hook_backend.py, Python's http.server with keep-alive) that records
//! what it received. Native clients' unknown ops reach it as events; its acks, emits, joins
//! and refusals come back; a webhook that hangs or is down gives a clear error while the
//! shard keeps serving everyone else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};

use common::node;
use common::*;
use serde_json::{json, Value};

/// The Python backend, killed on drop.
struct Backend {
    child: Child,
    addr: SocketAddr,
}

impl Backend {
    fn start() -> Backend {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hook_backend.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs tests/hook_backend.py (apt-get install python3)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("backend printed {line:?}"));
        Backend {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/volley/hook", self.addr)
    }

    /// What the backend received so far, and how many sockets it accepted.
    fn log(&self) -> (Vec<Value>, u64) {
        let (status, body) = request(self.addr, "GET", "/log", b"");
        assert_eq!(status, 200, "{body}");
        let log: Value = serde_json::from_str(&body).unwrap();
        let requests = log["requests"].as_array().unwrap().clone();
        (requests, log["connections"].as_u64().unwrap())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends an op with a ref and returns its reply, with the frames that came before it.
fn call(client: &mut Client, mut op: Value, reference: u64) -> (Value, Vec<Value>) {
    op["ref"] = reference.into();
    send_op(client, op);
    let mut before = Vec::new();
    loop {
        let frame = next_json(client);
        if frame["type"] == "reply" && frame["ref"] == reference {
            return (frame, before);
        }
        before.push(frame);
    }
}

#[test]
fn events_reach_the_app_and_its_ack_emit_join_and_refusal_come_back() {
    let backend = Backend::start();
    let url = backend.url();
    let server = Server::start(&["--shards", "1", "--app-webhook", &url]);
    let mut ann = connect_native(server.addr, "user=ann");

    // A custom op reaches the app with the user and the args; the ack is the reply, and the
    // emitted event arrives (before the reply: emits are sent first).
    let (reply, before) = call(&mut ann, json!({"op": "chat", "text": "hi"}), 7);
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(
        reply["result"],
        json!({"echo": {"text": "hi"}, "user": "ann"})
    );
    assert_eq!(
        before,
        vec![json!({"type": "event", "event": "chat-back", "args": [{"text": "hi"}]})]
    );
    let (received, _) = backend.log();
    let doc = &received[0];
    assert_eq!(doc["v"], 1);
    assert_eq!(doc["type"], "event");
    assert_eq!(doc["_hook_header"], "event");
    assert_eq!(doc["protocol"], "native");
    assert_eq!(doc["user"], "ann");
    assert_eq!(doc["event"], "chat");
    assert_eq!(doc["args"], json!([{"text": "hi"}]));
    assert_eq!(doc["ack"], true);
    assert!(doc["socket"].as_str().is_some_and(|s| !s.is_empty()));

    // A join from the app puts the client in the room: a room push then reaches it.
    let (reply, _) = call(&mut ann, json!({"op": "enter", "room": "vip"}), 8);
    assert_eq!(
        (reply["ok"].clone(), reply["result"].clone()),
        (json!(true), json!("welcome"))
    );
    let (status, body) = request(
        server.addr,
        "POST",
        "/api/rooms/vip/messages",
        br#"{"m":1}"#,
    );
    assert_eq!(status, 200, "{body}");
    let message = next_json(&mut ann);
    assert_eq!(
        (message["channel"].clone(), message["data"].clone()),
        (json!("room:vip"), json!({"m": 1}))
    );

    // And a leave takes it out again.
    let (reply, _) = call(&mut ann, json!({"op": "exit", "room": "vip"}), 9);
    assert_eq!(reply["result"], "bye");
    let (_, body) = request(server.addr, "POST", "/api/rooms/vip/messages", b"2");
    assert!(body.contains("\"recipients\":0"), "{body}");

    // A refusal is an error reply with the app's words.
    let (reply, _) = call(&mut ann, json!({"op": "deny"}), 10);
    assert_eq!(reply["ok"], false);
    assert_eq!(reply["error"]["code"], "forbidden");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not allowed here"),
        "{reply}"
    );

    // An empty (chunked) answer is an ack of null.
    let (reply, _) = call(&mut ann, json!({"op": "other", "x": [1, 2]}), 11);
    assert_eq!(
        (reply["ok"].clone(), reply["result"].clone()),
        (json!(true), Value::Null)
    );

    // Known ops are still volley's own; they never reach the app.
    let (reply, _) = call(&mut ann, json!({"op": "join", "room": "lobby"}), 12);
    assert_eq!(reply["ok"], true);
    let (received, connections) = backend.log();
    assert_eq!(received.len(), 5, "{received:?}");
    // Keep-alive: five requests, one after another, on fewer sockets.
    assert!(connections < 5, "{connections} sockets for 5 requests");
    assert!(server.total("hook_connections_total") < server.total("hook_calls_total"));
    assert_eq!(server.total("hook_refusals_total"), 1);
}

#[test]
fn without_a_webhook_unknown_ops_stay_unknown() {
    let server = Server::start(&["--shards", "1"]);
    let mut client = connect_native(server.addr, "user=ann");
    let (reply, _) = call(&mut client, json!({"op": "chat", "text": "hi"}), 1);
    assert_eq!(reply["error"]["code"], "unknown_op");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--app-webhook"));
}

/// A webhook that does not answer in time: the client gets a clear error, and the shard
/// keeps serving (a broadcast reaches everyone meanwhile).
#[test]
fn a_hung_webhook_times_out_and_the_shard_keeps_serving() {
    let backend = Backend::start();
    let url = backend.url();
    let server = Server::start(&[
        "--shards",
        "1",
        "--app-webhook",
        &url,
        "--app-webhook-timeout-ms",
        "1000",
    ]);
    let mut slow = connect_native(server.addr, "user=ann");
    let mut other = connect_native(server.addr, "user=bob");
    send_op(&mut slow, json!({"op": "slow", "ref": 1}));
    server.wait_for("the slow hook call", |s| {
        s["total"]["hook_calls_total"] == 1
    });
    assert_eq!(server.broadcast(b"\"still here\""), 2);
    assert_eq!(next_json(&mut other)["data"], "still here");
    let mut frames = [next_json(&mut slow), next_json(&mut slow)];
    frames.sort_by_key(|f| f["type"] == "reply");
    assert_eq!(frames[0]["data"], "still here");
    let reply = &frames[1];
    assert_eq!(
        (reply["ref"].clone(), reply["ok"].clone()),
        (json!(1), json!(false))
    );
    assert_eq!(reply["error"]["code"], "internal");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer within 1000 ms"),
        "{reply}"
    );
    assert_eq!(server.total("hook_timeouts_total"), 1);
    // The client is not blamed: it can keep going, and the next call works.
    let (reply, _) = call(&mut slow, json!({"op": "chat", "text": "again"}), 2);
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(
        server.stderr().contains("--app-webhook-timeout-ms"),
        "{}",
        server.stderr()
    );
}

/// A webhook that is down (connection refused): a clear error, the shard keeps serving.
#[test]
fn a_dead_webhook_is_an_error_reply_and_the_shard_keeps_serving() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let server = Server::start(&["--shards", "1", "--app-webhook", &url]);
    let mut client = connect_native(server.addr, "user=ann");
    let mut other = connect_native(server.addr, "user=bob");
    for reference in 1..=3 {
        let (reply, _) = call(&mut client, json!({"op": "chat"}), reference);
        assert_eq!(reply["error"]["code"], "internal", "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("unreachable"),
            "{reply}"
        );
    }
    assert_eq!(server.broadcast(b"1"), 2);
    assert_eq!(next_json(&mut other)["data"], 1);
    assert_eq!(next_json(&mut client)["data"], 1);
    assert_eq!(server.total("hook_errors_total"), 3);
    // Logged, rate-limited: one line for three failures, naming the URL.
    let log = server.stderr();
    assert_eq!(log.matches("app webhook").count(), 1, "{log}");
    assert!(log.contains(&url), "{log}");
}

/// Past the request slots and the queue, calls are refused at once with a clear error.
#[test]
fn a_full_queue_refuses_at_once() {
    let backend = Backend::start();
    let url = backend.url();
    let server = Server::start(&[
        "--shards",
        "1",
        "--app-webhook",
        &url,
        "--app-webhook-timeout-ms",
        "3000",
        "--app-webhook-concurrency-max",
        "1",
        "--app-webhook-queue-max",
        "1",
    ]);
    let mut client = connect_native(server.addr, "user=ann");
    for reference in 1..=3 {
        send_op(&mut client, json!({"op": "slow", "ref": reference}));
    }
    // The third finds the one slot busy and the one queue place taken.
    let reply = next_json(&mut client);
    assert_eq!(reply["ref"], 3, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("overloaded"),
        "{reply}"
    );
    assert_eq!(server.total("hook_queue_full_total"), 1);
    // The other two end by their deadline: each gets its own timeout error.
    let mut refs = vec![
        next_json(&mut client)["ref"].clone(),
        next_json(&mut client)["ref"].clone(),
    ];
    refs.sort_by_key(|r| r.as_u64());
    assert_eq!(refs, vec![json!(1), json!(2)]);
}

/// The value of the first line that has `key`.
fn seen<'a>(lines: &'a [Value], key: &str) -> &'a Value {
    &node::line(lines, key)[key]
}

fn check_socketio_hooks(backend: &Backend, lines: &[Value]) {
    // The application refused the CONNECT: connect_error with its words.
    assert_eq!(seen(lines, "mallory"), "banned");
    // Accepted: the welcome emitted by the connect hook arrives, naming the socket as the
    // client knows it.
    let id = seen(lines, "connected").as_str().unwrap();
    let welcome = seen(lines, "welcome");
    assert_eq!(
        welcome,
        &json!({"user": "ann", "socket": id, "namespace": "/", "auth": {"user": "ann", "room": "vip"}})
    );
    // An event with an ack: the ack is the app's, the emit-back arrived.
    assert_eq!(
        seen(lines, "chat"),
        &json!({"echo": {"text": "hi"}, "user": "ann"})
    );
    assert_eq!(seen(lines, "chat_back"), &json!([{"text": "hi"}]));
    // Rooms joined by the hook (at connect, and by an event) get room pushes.
    assert_eq!(seen(lines, "vip")["m"], 1);
    assert_eq!(seen(lines, "enter"), "welcome");
    assert_eq!(seen(lines, "club")["m"], 2);
    // An array ack is the ack's arguments; no ack field is an ack without arguments.
    assert_eq!(seen(lines, "many"), &json!([1, "two", {"three": 3}]));
    assert_eq!(seen(lines, "other"), &json!([]));
    let deny = seen(lines, "deny");
    assert_eq!(deny["ok"], false, "{deny}");
    assert_eq!(deny["error"]["code"], "forbidden");
    assert!(deny["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not allowed here"));
    // Without an ack the event still reaches the app and its emits come back.
    assert_eq!(seen(lines, "no_ack_back"), &json!(["no ack"]));
    // volley's own ops stay volley's.
    assert_eq!(seen(lines, "volley_op"), &json!({"ok": true}));

    // What the application received.
    let (received, _) = backend.log();
    let connects: Vec<&Value> = received.iter().filter(|d| d["type"] == "connect").collect();
    assert_eq!(connects.len(), 2, "{connects:?}");
    let ann = connects.iter().find(|d| d["user"] == "ann").unwrap();
    assert_eq!(ann["_hook_header"], "connect");
    assert_eq!(ann["protocol"], "socket.io");
    assert_eq!(ann["namespace"], "/");
    assert_eq!(ann["socket"], id);
    assert_eq!(ann["auth"], json!({"user": "ann", "room": "vip"}));
    assert_eq!(ann["headers"]["x-request-id"], "req-7");
    assert!(ann["headers"].get("cookie").is_none(), "{ann}");
    let events: Vec<&Value> = received.iter().filter(|d| d["type"] == "event").collect();
    let chat = events.iter().find(|d| d["event"] == "chat").unwrap();
    assert_eq!(
        (&chat["protocol"], &chat["namespace"], &chat["socket"]),
        (&json!("socket.io"), &json!("/"), &json!(id))
    );
    assert_eq!(
        (&chat["user"], &chat["args"], &chat["ack"]),
        (&json!("ann"), &json!([{"text": "hi"}]), &json!(true))
    );
    let no_ack = events
        .iter()
        .find(|d| d["args"] == json!(["no ack"]))
        .unwrap();
    assert_eq!(no_ack["ack"], false);
    assert!(
        events.iter().all(|d| d["event"] != "join"),
        "volley ops never reach the app"
    );
}

#[test]
fn socketio_connects_and_events_reach_the_app_over_websocket() {
    let backend = Backend::start();
    let server = Server::start(&["--shards", "2", "--app-webhook", &backend.url()]);
    let lines = node::scenario(&server, "hooks", &["websocket"]);
    check_socketio_hooks(&backend, &lines);
    assert_eq!(server.total("hook_refusals_total"), 2, "mallory, deny");
}

#[test]
fn socketio_connects_and_events_reach_the_app_over_polling_and_the_upgrade() {
    let backend = Backend::start();
    let server = Server::start(&["--shards", "2", "--app-webhook", &backend.url()]);
    let lines = node::scenario(&server, "hooks", &[]);
    check_socketio_hooks(&backend, &lines);
    assert_eq!(seen(&lines, "transport"), "websocket");
    // A CONNECT whose hook answers only after the client upgraded: the hand-over waits for
    // the answer, so the reply and the welcome reach the client on its WebSocket.
    let lines = node::scenario(&server, "sleepy_connect", &[]);
    assert_eq!(seen(&lines, "sleepy"), "connected");
    assert_eq!(seen(&lines, "upgraded"), "websocket");
    assert_eq!(seen(&lines, "welcome")["user"], "sleepy");
    assert_eq!(seen(&lines, "volley_op"), &json!({"ok": true}));
}

#[test]
fn without_a_webhook_socketio_events_stay_unknown_and_connects_are_not_asked() {
    let server = Server::start(&["--shards", "1"]);
    // The push scenario asks for an unknown event's ack and expects unknown_op; it checks
    // nothing else about hooks.
    let lines = node::scenario(&server, "push", &["websocket"]);
    let unknown = seen(&lines, "unknown");
    assert_eq!(unknown["error"]["code"], "unknown_op", "{unknown}");
    assert_eq!(server.total("hook_calls_total"), 0);
}

/// A webhook that hangs: a socket.io CONNECT gets connect_error and an event its ack error,
/// each within the timeout, and the shard delivers to others meanwhile.
#[test]
fn a_hung_webhook_gives_socketio_clients_errors_and_the_shard_keeps_serving() {
    let backend = Backend::start();
    let url = backend.url();
    let server = Server::start(&[
        "--shards",
        "1",
        "--app-webhook",
        &url,
        "--app-webhook-timeout-ms",
        "1000",
    ]);
    let lines = node::scenario(&server, "hook_timeout", &[]);
    assert_eq!(seen(&lines, "published")["status"], 200);
    assert_eq!(seen(&lines, "meanwhile")["during"], "slow hook");
    let slow = seen(&lines, "slow");
    assert_eq!(slow["ok"], false, "{slow}");
    assert_eq!(slow["error"]["code"], "internal");
    let words = "did not answer within 1000 ms";
    assert!(slow["error"]["message"].as_str().unwrap().contains(words));
    let refused = seen(&lines, "slow_connect").as_str().unwrap();
    assert!(refused.contains(words), "{refused}");
    assert_eq!(
        seen(&lines, "after"),
        &json!({"echo": "again", "user": "ann"})
    );
    assert_eq!(server.total("hook_timeouts_total"), 2);
}

/// examples/hooks/socketio_test_app.py, socket.io's protocol test suite app written as a
/// hook, driven by the real socket.io-client.
#[test]
fn the_socketio_reference_app_runs_as_a_tiny_hook_backend() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/hooks/socketio_test_app.py"
    );
    let mut child = Command::new("python3")
        .args([script, "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs examples/hooks/socketio_test_app.py");
    let mut port = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let app = Backend {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port.trim().parse::<u16>().unwrap())),
    };
    let url = format!("http://{}/", app.addr);
    let server = Server::start(&[
        "--shards",
        "2",
        "--app-webhook",
        &url,
        "--socketio-namespace",
        "/custom",
    ]);
    let lines = node::scenario(&server, "reference_app", &[]);
    assert_eq!(
        seen(&lines, "root_auth"),
        &json!({"user": "zoe", "token": "t-1"})
    );
    assert_eq!(seen(&lines, "custom_auth"), &json!({"user": "zoe"}));
    assert_eq!(seen(&lines, "bare_auth"), &json!({}));
    assert_eq!(seen(&lines, "message_back"), &json!([1, "2", {"3": [4]}]));
    assert_eq!(seen(&lines, "acked"), &json!([1, "2", {"3": [4]}]));
    assert_eq!(seen(&lines, "custom_acked"), "x");
}
