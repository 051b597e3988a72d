//! socket.io clients on volley, against the real binary: the real `socket.io-client` 4.8
//! from npm (tools/socketio-client, installed by tools/test.sh with `npm ci`) runs the
//! scenarios of tools/socketio-client/scenarios.js, and raw HTTP polling requests check
//! the Engine.IO error bodies, limits and the forwarding of a request to the shard that
//! owns its session.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use base64::Engine;
use common::node::{client_dir, line, scenario};
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

fn check_push(lines: &[Value]) {
    assert_eq!(line(lines, "join")["join"], json!({"ok": true}));
    let published = &line(lines, "published")["published"];
    assert_eq!(published["status"], 200);
    let message = &line(lines, "message")["message"];
    assert_eq!(message["hi"], 1, "the payload's own keys: {message}");
    assert_eq!(message["_volley"]["channel"], "room:lobby");
    assert_eq!(message["_volley"]["seq"], published["body"]["seq"]);
    assert_eq!(message["_volley"]["id"], published["body"]["id"]);
    assert_eq!(line(lines, "message")["ack_is_function"], true);
    // The client's ack of the push counts as a volley ack.
    let receipt = &line(lines, "receipt")["receipt"];
    assert_eq!(receipt["delivered"], 1);
    assert_eq!(receipt["acked"], 1);
    let leave = line(lines, "leave");
    assert_eq!(leave["leave"], json!({"ok": true}));
    assert_eq!(leave["missing"]["ok"], false);
    assert_eq!(leave["missing"]["error"]["code"], "not_found");
    assert_eq!(
        line(lines, "unknown")["unknown"]["error"]["code"],
        "unknown_op"
    );
    assert_eq!(line(lines, "own")["own"]["to"], "me");
}

#[test]
fn websocket_only_client_joins_gets_a_room_push_and_acks_it() {
    let server = Server::start(&["--shards", "2"]);
    let lines = scenario(&server, "push", &["websocket"]);
    assert_eq!(line(&lines, "connected")["transport"], "websocket");
    check_push(&lines);
}

#[test]
fn default_options_start_on_polling_and_upgrade_to_websocket() {
    let server = Server::start(&["--shards", "2"]);
    let lines = scenario(&server, "push", &[]);
    assert_eq!(line(&lines, "upgraded_to")["upgraded_to"], "websocket");
    check_push(&lines);
    server.wait_for("every socket.io session to be gone", |s| {
        s["total"]["connections"].as_u64() == Some(0)
    });
}

#[test]
fn namespaces_share_one_engine_io_connection_and_unknown_ones_are_refused() {
    let server = Server::start(&["--shards", "2", "--socketio-namespace", "/chat"]);
    let lines = scenario(&server, "namespaces", &[]);
    let first = &lines[0];
    assert_eq!(first["same_engine"], true);
    assert_ne!(first["root"], first["chat"], "one socket id per namespace");
    assert_eq!(first["refused"], "Invalid namespace");
    assert_eq!(line(&lines, "chat_join")["chat_join"], json!({"ok": true}));
    assert_eq!(line(&lines, "root_message")["root_message"]["n"], 1);
    let after = line(&lines, "root_still_connected");
    assert_eq!(after["root_still_connected"], true);
    assert_eq!(after["chat_connected"], false);
}

const SECRET: &str = "socketio-secret-0123456789";

fn token(claims: Value) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

#[test]
fn connect_auth_tokens_are_verified_like_ws_tokens() {
    let server = Server::start(&["--shards", "1", "--jwt-secret", SECRET]);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let good = token(json!({"sub": "ann", "exp": exp, "rooms": ["allowed"]}));
    let lines = scenario(&server, "auth", &[&good]);
    assert_eq!(line(&lines, "allowed")["allowed"], json!({"ok": true}));
    assert_eq!(
        line(&lines, "secret")["secret"]["error"]["code"],
        "forbidden"
    );

    let forged = token(json!({"sub": "ann", "exp": exp})).replace('.', ".x");
    let refused = scenario(&server, "auth", &[&forged]);
    let reason = line(&refused, "refused")["refused"].as_str().unwrap();
    assert!(reason.starts_with("invalid token"), "{reason}");

    let missing = scenario(&server, "auth", &[]);
    let reason = line(&missing, "refused")["refused"].as_str().unwrap();
    assert!(reason.starts_with("missing token"), "{reason}");
}

#[test]
fn binary_travels_both_ways_and_a_binary_ack_counts() {
    let server = Server::start(&["--shards", "2"]);
    let lines = scenario(&server, "binary", &[]);
    assert_eq!(line(&lines, "is_buffer")["is_buffer"], true);
    assert_eq!(line(&lines, "hex")["hex"], "00ff0102");
    assert_eq!(line(&lines, "receipt")["receipt"]["acked"], 1);
    let publish = &line(&lines, "binary_publish")["binary_publish"];
    assert_eq!(publish["error"]["code"], "bad_field", "{publish}");
    let unknown = &line(&lines, "binary_unknown")["binary_unknown"];
    assert_eq!(unknown["error"]["code"], "unknown_op", "{unknown}");
}

#[test]
fn one_broadcast_reaches_native_and_socketio_clients_exactly_once_each() {
    let server = Server::start(&["--shards", "2"]);
    let mut native = connect(&server);
    let mut child = Command::new("node")
        .current_dir(client_dir())
        .args([
            "scenarios.js",
            "broadcast_count",
            &format!("http://{}", server.addr),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = stdout.next().unwrap().unwrap();
    assert!(ready.contains("ready"), "{ready}");
    assert_eq!(server.broadcast(br#"{"once":true}"#), 2);
    let message = next_data(&mut native);
    assert!(carries(&message, "once"), "{message:?}");
    let got = stdout.next().unwrap().unwrap();
    assert!(got.contains("\"once\":true"), "{got}");
    // A second, different broadcast: each client's next message is that one, so the first
    // reached each exactly once.
    assert_eq!(server.broadcast(br#"{"second":true}"#), 2);
    assert!(carries(&next_data(&mut native), "second"));
    let got = stdout.next().unwrap().unwrap();
    assert!(got.contains("second"), "{got}");
    drop(child.stdin.take());
    let count: Value = serde_json::from_str(&stdout.next().unwrap().unwrap()).unwrap();
    assert_eq!(count["count"], 2);
    assert!(child.wait().unwrap().success());
    // Encode once: two codecs in use, so at most two frames per delivery per shard.
    assert!(server.total("frames_encoded_total") <= 2 * 2 * 2);
}

/// A polling request on a fresh TCP connection (SO_REUSEPORT picks the shard).
fn polling(server: &Server, method: &str, query: &str, body: &[u8]) -> (u16, String) {
    request(
        server.addr,
        method,
        &format!("/socket.io/?EIO=4&transport=polling{query}"),
        body,
    )
}

fn handshake(server: &Server) -> String {
    let (status, body) = polling(server, "GET", "", b"");
    assert_eq!(status, 200, "{body}");
    let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(open["upgrades"], json!(["websocket"]));
    assert_eq!(open["pingInterval"], 25000);
    assert_eq!(open["pingTimeout"], 20000);
    assert_eq!(open["maxPayload"], 1000000);
    open["sid"].as_str().unwrap().to_string()
}

#[test]
fn polling_requests_are_answered_by_the_owner_shard_whichever_shard_they_reach() {
    let server = Server::start(&["--shards", "2"]);
    // Until one request went through the mesh: each session's requests come on fresh
    // connections, which the kernel spreads over both shards.
    let mut sessions = 0;
    while server.total("socketio_forwarded_total") == 0 {
        sessions += 1;
        assert!(
            sessions <= 64,
            "no polling request reached a non-owner shard"
        );
        let sid = handshake(&server);
        let (status, body) = polling(&server, "POST", &format!("&sid={sid}"), b"40");
        assert_eq!((status, body.as_str()), (200, "ok"));
        let (status, body) = polling(&server, "GET", &format!("&sid={sid}"), b"");
        assert_eq!(status, 200);
        assert!(body.starts_with("40{\"sid\":\""), "{body}");
        // An op as an event with an ack id, and its ack.
        let join = "421[\"join\",\"poll-room\"]".as_bytes();
        assert_eq!(
            polling(&server, "POST", &format!("&sid={sid}"), join).1,
            "ok"
        );
        let (_, body) = polling(&server, "GET", &format!("&sid={sid}"), b"");
        assert_eq!(body, "431[{\"ok\":true}]");
        // Goodbye: the session ends, and its sid is unknown from then on.
        assert_eq!(
            polling(&server, "POST", &format!("&sid={sid}"), b"1").1,
            "ok"
        );
        server.wait_for("the polling session to end", |s| {
            s["total"]["connections"].as_u64() == Some(0)
        });
        let (status, body) = polling(&server, "GET", &format!("&sid={sid}"), b"");
        assert_eq!(
            (status, body.as_str()),
            (400, r#"{"code":1,"message":"Session ID unknown"}"#)
        );
    }
}

#[test]
fn polling_errors_are_the_reference_servers_bodies() {
    let server = Server::start(&["--shards", "2"]);
    let cases = [
        (
            "GET",
            "/socket.io/?EIO=3&transport=polling",
            400,
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
        ),
        (
            "GET",
            "/socket.io/?transport=polling",
            400,
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
        ),
        (
            "GET",
            "/socket.io/?EIO=4&transport=carrier-pigeon",
            400,
            r#"{"code":0,"message":"Transport unknown"}"#,
        ),
        (
            "POST",
            "/socket.io/?EIO=4&transport=polling",
            400,
            r#"{"code":2,"message":"Bad handshake method"}"#,
        ),
        (
            "GET",
            "/socket.io/?EIO=4&transport=polling&sid=not-a-sid",
            400,
            r#"{"code":1,"message":"Session ID unknown"}"#,
        ),
        (
            "GET",
            "/socket.io/?EIO=4&transport=polling&sid=dgAAAAAAAAAAAAAAAAAA",
            400,
            r#"{"code":1,"message":"Session ID unknown"}"#,
        ),
    ];
    for (method, path, status, body) in cases {
        assert_eq!(
            request(server.addr, method, path, b""),
            (status, body.to_string()),
            "{method} {path}"
        );
    }
    // A body over maxPayload is refused with 413 and ends the session; a bad packet ends it
    // with 400. Neither harms a neighbour session.
    let neighbour = handshake(&server);
    assert_eq!(
        polling(&server, "POST", &format!("&sid={neighbour}"), b"40").1,
        "ok"
    );
    let big = handshake(&server);
    let (status, _) = polling(
        &server,
        "POST",
        &format!("&sid={big}"),
        &vec![b'4'; 1_000_001],
    );
    assert_eq!(status, 413);
    let bad = handshake(&server);
    let (status, _) = polling(&server, "POST", &format!("&sid={bad}"), b"4zzz");
    assert_eq!(status, 400);
    let bomb = handshake(&server);
    polling(&server, "POST", &format!("&sid={bomb}"), b"40");
    let (status, _) = polling(&server, "POST", &format!("&sid={bomb}"), b"4599-[\"a\"]");
    assert_eq!(status, 400, "more attachments than allowed");
    let (_, body) = polling(&server, "GET", &format!("&sid={neighbour}"), b"");
    assert!(body.starts_with("40{\"sid\":"), "{body}");
    assert_eq!(server.broadcast(br#"{"still":"here"}"#), 1);
    let (_, body) = polling(&server, "GET", &format!("&sid={neighbour}"), b"");
    assert!(body.contains("\"still\":\"here\""), "{body}");
}

#[test]
fn hostile_websocket_input_closes_only_that_client() {
    let server = Server::start(&["--shards", "2"]);
    let lines = scenario(&server, "abuse", &[]);
    for l in lines.iter().filter(|l| l.get("input").is_some()) {
        assert_eq!(l["close_code"], 1008, "{l}");
    }
    assert_eq!(lines.iter().filter(|l| l.get("input").is_some()).count(), 7);
    let after = line(&lines, "neighbour");
    assert_eq!(after["neighbour"]["after"], "abuse");
    assert_eq!(after["neighbour_connected"], true);
}

#[test]
fn a_client_that_never_connects_a_namespace_is_dropped() {
    let server = Server::start(&["--shards", "1", "--socketio-connect-timeout-ms", "1000"]);
    let sid = handshake(&server);
    server.wait_for("the unconnected polling session to be dropped", |s| {
        s["total"]["connections"].as_u64() == Some(0)
    });
    let (status, _) = polling(&server, "GET", &format!("&sid={sid}"), b"");
    assert_eq!(status, 400);
    let _ = std::io::stdout().flush();
}

#[test]
fn wait_ack_counts_socketio_acks_across_two_processes_through_redis() {
    let redis = common::redis::Redis::start();
    let a = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    let b = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    // ann: a native connection on A and a socket.io client on B, which acks every push.
    let mut ann_a = connect_native(a.addr, "user=ann");
    let mut child = Command::new("node")
        .current_dir(client_dir())
        .args([
            "scenarios.js",
            "acker",
            &format!("http://{}", b.addr),
            "ann",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = stdout.next().unwrap().unwrap();
    assert!(ready.contains("ready"), "{ready}");
    redis.wait_numsub("volley:user:ann", 2);
    // The publisher waits for every ack; the native client acks only after the socket.io
    // client got (and acked) its copy, so the answer cannot settle on the native ack alone
    // before B has reported its delivery.
    let publisher = std::thread::spawn(move || {
        request(
            a.addr,
            "POST",
            "/api/users/ann/messages?wait=ack&timeout_ms=10000",
            br#"{"sign":"here"}"#,
        )
    });
    let got = stdout.next().unwrap().unwrap();
    assert!(got.contains("\"sign\":\"here\""), "{got}");
    let message = next_message(&mut ann_a);
    send_op(
        &mut ann_a,
        json!({"op": "ack", "channel": message["channel"], "seq": message["seq"]}),
    );
    let (status, answer) = publisher.join().unwrap();
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["delivered"].as_u64(), answer["acked"].as_u64()),
        (Some(2), Some(2)),
        "one native and one socket.io ack: {answer}"
    );
    assert_eq!(answer["timed_out"], false);
    let id = answer["id"].as_str().unwrap();
    let (_, receipt) = request(b.addr, "GET", &format!("/api/messages/{id}"), b"");
    let receipt: Value = serde_json::from_str(&receipt).unwrap();
    assert_eq!(receipt["acked"], 2, "{receipt}");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_client_resumes_a_room_from_volleys_history() {
    let server = Server::start(&["--shards", "2"]);
    let lines = scenario(&server, "resume", &[]);
    let published = line(&lines, "published")["published"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(line(&lines, "join")["join"], json!({"ok": true}));
    let done = line(&lines, "recovered");
    let recovered = &done["recovered"];
    assert_eq!(
        (
            &recovered["recovered"],
            &recovered["replayed"],
            &recovered["seq"]
        ),
        (&json!(true), &json!(2), &json!(3)),
        "{recovered}"
    );
    // The replay is messages 2 and 3 as ordinary message events, with their ids.
    let replayed = done["replayed"].as_array().unwrap();
    let seen: Vec<(Value, Value)> = replayed
        .iter()
        .map(|m| (m["_volley"]["seq"].clone(), m["_volley"]["id"].clone()))
        .collect();
    let expected: Vec<(Value, Value)> = published[1..]
        .iter()
        .map(|p| (p["seq"].clone(), p["id"].clone()))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(line(&lines, "recover")["recover"], json!({"ok": true}));
    let other = &line(&lines, "recover_other")["recover_other"];
    assert_eq!(other["error"]["code"], "forbidden", "{other}");
}

#[test]
fn polling_sessions_are_bounded_and_allow_one_pending_get() {
    let server = Server::start(&["--shards", "1", "--socketio-polling-sessions-max", "2"]);
    let first = handshake(&server);
    let _second = handshake(&server);
    let (status, body) = polling(&server, "GET", "", b"");
    assert_eq!(
        status, 503,
        "a third polling session on a full shard: {body}"
    );
    assert!(body.contains("--socketio-polling-sessions-max"), "{body}");

    assert_eq!(
        polling(&server, "POST", &format!("&sid={first}"), b"40").1,
        "ok"
    );
    assert!(polling(&server, "GET", &format!("&sid={first}"), b"")
        .1
        .starts_with("40{"));
    // A GET waits for packets; a second GET meanwhile is an error that ends the session,
    // and the waiting one is released with a close packet. Whichever arrives first waits.
    let addr = server.addr;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={first}");
    let other = path.clone();
    let one = std::thread::spawn(move || request(addr, "GET", &path, b""));
    let two = request(addr, "GET", &other, b"");
    let mut answers = vec![one.join().unwrap(), two];
    answers.sort();
    assert_eq!(
        answers,
        vec![
            (200, "1".to_string()),
            (400, r#"{"code":3,"message":"Bad request"}"#.to_string()),
        ]
    );
}

/// What the `named` scenario saw: the replay and the live pushes under the names they were
/// published with, `message` when none (or `message` itself) was given; reserved names
/// refused.
fn check_named(lines: &[Value]) {
    let away = line(lines, "away")["away"].as_array().unwrap().clone();
    assert!(away.iter().all(|p| p["status"] == 200), "{away:?}");
    assert_eq!(line(lines, "join")["join"], json!({"ok": true}));
    let events = line(lines, "events")["events"].as_array().unwrap().clone();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["chat", "message", "recovered", "price", "message", "dm ✉"],
        "{events:?}"
    );
    // The replayed `chat` is the message published while away, with its seq and id.
    assert_eq!(events[0]["arg"]["n"], 1);
    assert_eq!(events[0]["arg"]["_volley"]["seq"], away[0]["body"]["seq"]);
    assert_eq!(events[0]["arg"]["_volley"]["id"], away[0]["body"]["id"]);
    assert_eq!(events[1]["arg"]["n"], 2);
    assert_eq!(events[2]["arg"]["replayed"], 2);
    assert_eq!(events[3]["arg"]["n"], 3);
    assert_eq!(events[4]["arg"]["n"], 4);
    assert_eq!(events[5]["arg"], "hello");
    // One argument, and an ack callback for every push (a named one counts as any other).
    for e in events.iter().filter(|e| e["event"] != "recovered") {
        assert_eq!((&e["args"], &e["ack"]), (&json!(1), &json!(true)), "{e}");
    }
    let refused = line(lines, "refused")["refused"]
        .as_object()
        .unwrap()
        .clone();
    assert_eq!(refused.len(), 9);
    for (name, answer) in &refused {
        assert_eq!(answer["status"], 400, "{name}: {answer}");
        let error = answer["body"]["error"].as_str().unwrap();
        let why = match name.as_str() {
            "" => "empty",
            "long" => "128 bytes",
            "control" => "control characters",
            _ => "reserved by socket.io",
        };
        assert!(error.contains(why), "{name}: {error}");
    }
}

#[test]
fn a_publish_names_the_event_socketio_clients_get_and_a_replay_keeps_it() {
    let server = Server::start(&["--shards", "2"]);
    let lines = scenario(&server, "named", &["websocket"]);
    check_named(&lines);
    // Native clients see the name as "event", only when there is one; a client publish
    // may name its event too.
    let mut bob = connect_native(server.addr, "user=bob");
    send_op(&mut bob, json!({"op": "join", "room": "r", "ref": 1}));
    assert_eq!(next_json(&mut bob)["ok"], true);
    let (status, _) = request(
        server.addr,
        "POST",
        "/api/rooms/r/messages?event=chat",
        b"1",
    );
    assert_eq!(status, 200);
    let named = next_message(&mut bob);
    assert_eq!(
        (&named["event"], &named["data"]),
        (&json!("chat"), &json!(1))
    );
    request(server.addr, "POST", "/api/rooms/r/messages", b"2");
    assert!(next_message(&mut bob).get("event").is_none());
    send_op(
        &mut bob,
        json!({"op": "publish", "room": "r", "data": 3, "event": "typing", "ref": 8}),
    );
    // Its reply and its message, in either order.
    let (first, second) = (next_json(&mut bob), next_json(&mut bob));
    let (reply, own) = if first["type"] == "reply" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!((&reply["ref"], &reply["ok"]), (&json!(8), &json!(true)));
    assert_eq!(
        (&own["event"], &own["from"]),
        (&json!("typing"), &json!("user:bob"))
    );
    send_op(
        &mut bob,
        json!({"op": "publish", "room": "r", "data": 4, "event": "disconnect", "ref": 9}),
    );
    let refused = next_json(&mut bob);
    assert_eq!(
        (&refused["ref"], &refused["ok"]),
        (&json!(9), &json!(false))
    );
    assert_eq!(refused["error"]["code"], "bad_field", "{refused}");
    // A batch item may name its event too; a reserved name fails the whole batch.
    let (status, _) = request(
        server.addr,
        "POST",
        "/api/batch",
        br#"{"messages":[{"room":"r","data":5,"event":"batch"}]}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(next_message(&mut bob)["event"], "batch");
    let (status, body) = request(
        server.addr,
        "POST",
        "/api/batch",
        br#"{"messages":[{"room":"r","data":5},{"room":"r","data":6,"event":"connect"}]}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("messages[1]"), "{body}");
}

#[test]
fn event_names_travel_through_redis_to_another_process_and_its_history() {
    let redis = common::redis::Redis::start();
    let a = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    let b = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    // The client is on B (default transports: polling, then the upgrade), every publish
    // goes to A: the replay reads what A's publishes stored in Redis, the live pushes come
    // through B's subscriptions.
    let lines = scenario(&b, "named", &["", &format!("http://{}", a.addr)]);
    check_named(&lines);
}

/// A user whose socket.io session is still on long-polling is present like any other:
/// `/api/users/{id}` counts the session, a room it joined lists the user, locally and,
/// with Redis, cluster-wide.
#[test]
fn long_polling_sessions_count_in_user_and_room_presence() {
    let redis = common::redis::Redis::start();
    for args in [
        vec!["--shards", "2"],
        vec!["--shards", "2", "--redis", &redis.url()],
    ] {
        let server = Server::start(&args);
        let sid = handshake(&server);
        let post = |body: &[u8]| polling(&server, "POST", &format!("&sid={sid}"), body);
        assert_eq!(post(br#"40{"user":"pat"}"#).1, "ok");
        assert_eq!(post(br#"421["join","poll-room"]"#).1, "ok");
        // The CONNECT reply, then the join's ack (one GET may carry both).
        let mut got = String::new();
        while !got.contains("431[{\"ok\":true}]") {
            assert!(got.len() < 1000, "{got}");
            got += &polling(&server, "GET", &format!("&sid={sid}"), b"").1;
        }
        let user = get_json(&server, "/api/users/pat");
        assert_eq!(
            (&user["connections"], &user["online"]),
            (&json!(1), &json!(true)),
            "{user}"
        );
        let room = get_json(&server, "/api/rooms/poll-room");
        assert_eq!(room["members"], json!(["pat"]), "{room}");
        assert_eq!(room["connections"], 1);
        let presence = get_json(&server, "/api/rooms/poll-room/presence");
        assert_eq!(presence["members"], json!(["pat"]), "{args:?}: {presence}");
        assert_eq!(presence["count"], 1);
        let presence = get_json(&server, "/api/users/pat/presence");
        assert_eq!(presence["online"], true, "{args:?}: {presence}");
        // Gone with the session.
        assert_eq!(post(b"1").1, "ok");
        server.wait_for("the polling session to end", |s| {
            s["total"]["connections"].as_u64() == Some(0)
        });
        let room = get_json(&server, "/api/rooms/poll-room");
        assert_eq!(room["members"], json!([]), "{room}");
        assert_eq!(get_json(&server, "/api/users/pat")["online"], false);
    }
}

/// One run of the `upgrade_stream` scenario: every client got exactly what was published
/// to each of its channels (`all`, the room, its user), once each, in order, and no
/// `recovered` event (nothing was lost); returns how many clients' WebSockets landed on a
/// shard other than the one that owned their polling session.
fn check_stream(server: &Server, lines: &[Value]) -> usize {
    let published = line(lines, "published")["published"].clone();
    let clients: Vec<&Value> = lines.iter().filter(|l| l.get("client").is_some()).collect();
    assert_eq!(clients.len(), 8, "{lines:?}");
    let mut moved = 0;
    for client in clients {
        assert_eq!(client["transport"], "websocket", "{client}");
        for (channel, got) in client["got"].as_object().unwrap() {
            assert_eq!(
                got, &published[channel],
                "{channel} of {}: every published seq once, in order (owner shard {}, WebSocket on {})\nserver: {}",
                client["client"], client["owner"], client["ws_shard"], server.stderr()
            );
        }
        assert_eq!(client["recovered"], json!([]), "{client}");
        assert_eq!(client["other"], json!([]), "{client}");
        moved += usize::from(client["owner"] != client["ws_shard"]);
    }
    moved
}

/// socket.io-client's default start (polling, then the upgrade to WebSocket) while a
/// numbered stream is published: a WebSocket landing on the other shard takes the session
/// over through the mesh, and the client still gets every message once, in order. Runs
/// until several clients' WebSockets crossed shards (the kernel picks each one's shard).
#[test]
fn an_upgrade_to_another_shard_during_a_stream_loses_and_repeats_nothing() {
    let redis = common::redis::Redis::start();
    for args in [
        vec!["--shards", "2"],
        vec!["--shards", "2", "--redis", &redis.url()],
    ] {
        let server = Server::start(&args);
        let mut moved = 0;
        for round in 0.. {
            assert!(
                round < 6,
                "{args:?}: only {moved} WebSocket(s) crossed shards"
            );
            let lines = scenario(&server, "upgrade_stream", &["8", "200"]);
            moved += check_stream(&server, &lines);
            if moved >= 3 {
                break;
            }
        }
        assert!(server.total("socketio_handovers_total") >= 3, "{args:?}");
        assert_eq!(server.total("socketio_handover_incomplete_total"), 0);
    }
}

/// Through Redis, a push to a user sent the moment its socket.io client saw `connect`
/// reaches it live: the CONNECT reply waits until this process's subscription to the
/// user's channel is confirmed (a publish before that finds no subscriber and goes to the
/// offline inbox only). 30 fresh users, WebSocket-only and default transports alike.
/// (Before the CONNECT reply waited, such a push was seen going to the inbox only, once in
/// a full parallel test run of `event_names_travel_through_redis...`.)
#[test]
fn a_user_push_right_after_connect_through_redis_arrives_live() {
    let redis = common::redis::Redis::start();
    let server = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    let lines = scenario(&server, "connect_then_user_push", &["30"]);
    assert_eq!(lines.len(), 30, "{lines:?}");
    for l in &lines {
        let published = &l["published"];
        assert_eq!(published["status"], 200, "{l}");
        assert_eq!(l["live"], true, "{l}");
        // A WebSocket-only client stays on its shard, whose subscription was confirmed
        // before `connect`: Redis had a subscriber for the push. (A polling session may
        // be moving to another shard's WebSocket at that moment, between one shard's
        // subscription and the other's; the move's replay from history brings it then.)
        if l["transport"] == "websocket" {
            assert_eq!(published["body"]["nodes"], 1, "a subscriber had it: {l}");
        }
    }
}

/// A raw Engine.IO WebSocket that CONNECTed `/`: the stream and its socket id.
fn raw_socket(server: &Server) -> (Client, String) {
    let (mut ws, _) = tungstenite::connect(format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket",
        server.addr
    ))
    .unwrap();
    set_read_timeout(&mut ws, WAIT);
    let open = next_sio_text(&mut ws);
    assert!(open.starts_with("0{"), "{open}");
    ws.send(tungstenite::Message::text("40")).unwrap();
    let reply = next_sio_text(&mut ws);
    let reply: Value = serde_json::from_str(reply.strip_prefix("40").unwrap())
        .unwrap_or_else(|e| panic!("{e}: {reply}"));
    (ws, reply["sid"].as_str().unwrap().to_string())
}

/// The next Engine.IO text packet that is not a ping (pings are answered).
fn next_sio_text(ws: &mut Client) -> String {
    loop {
        if let tungstenite::Message::Text(t) = ws.read().unwrap() {
            if t.as_str() == "2" {
                ws.send(tungstenite::Message::text("3")).unwrap();
                continue;
            }
            return t.as_str().to_string();
        }
    }
}

/// The `message` event argument of the next packet (after `42`, pushes carry an ack id).
fn next_sio_message(ws: &mut Client) -> Value {
    let text = next_sio_text(ws);
    let rest = text.strip_prefix("42").unwrap();
    let array: Value = serde_json::from_str(rest.trim_start_matches(|c: char| c.is_ascii_digit()))
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(array[0], "message", "{text}");
    array[1].clone()
}

#[test]
fn a_push_to_a_socket_id_reaches_that_socket_in_whichever_process_holds_it() {
    let redis = common::redis::Redis::start();
    let a = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    let b = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    let (mut on_a, id_a) = raw_socket(&a);
    let (mut neighbour, _) = raw_socket(&a);
    let (mut on_b, id_b) = raw_socket(&b);
    // No subscription per socket: each shard of each process has its sockets channel.
    assert_eq!(redis.numsub(&format!("volley:room:{id_a}")), 0);
    let channels = redis
        .try_command(&["PUBSUB", "CHANNELS", "volley:sockets:*"])
        .unwrap();
    assert!(channels.starts_with("*2 "), "{channels}");
    // Published on the other process, numbered as the socket's room, once each.
    for n in 1..=2u64 {
        let body = json!({ "n": n }).to_string();
        let answer = post_json(&b, &format!("/api/rooms/{id_a}/messages"), &body);
        assert_eq!(answer["seq"], n, "{answer}");
        let got = next_sio_message(&mut on_a);
        assert_eq!(got["_volley"]["seq"], n, "{got}");
        assert_eq!(got["_volley"]["channel"], format!("room:{id_a}"), "{got}");
    }
    let answer = post_json(&a, &format!("/api/rooms/{id_b}/messages"), r#"{"to":"b"}"#);
    assert_eq!(answer["seq"], 1, "{answer}");
    let got = next_sio_message(&mut on_b);
    assert_eq!(got["_volley"]["channel"], format!("room:{id_b}"), "{got}");
    // Nobody else had them: the next thing each gets is this broadcast.
    b.broadcast(br#"{"after":1}"#);
    for ws in [&mut on_a, &mut neighbour, &mut on_b] {
        let got = next_sio_message(ws);
        assert_eq!(got["_volley"]["channel"], "all", "{got}");
    }
    // A made-up id of the same process reaches nobody (the full id is compared).
    let mut forged = id_a.clone().into_bytes();
    forged[19] = if forged[19] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let answer = post_json(&b, &format!("/api/rooms/{forged}/messages"), "{}");
    assert_eq!(answer["recipients"], 0, "{answer}");
    // ... and its history is the socket's room's own.
    let history = get_json(&a, &format!("/api/channels/room:{id_a}/history?since=0"));
    assert_eq!(
        history["messages"].as_array().map(Vec::len),
        Some(2),
        "{history}"
    );
}

#[test]
fn a_socket_id_room_is_caught_up_after_the_subscriber_link_drops() {
    const PUSHES: u64 = 60;
    let redis = common::redis::Redis::start();
    let a = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    let b = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    let (mut socket, id) = raw_socket(&a);
    // Published on B while the subscriber links (A's among them) are killed and come back:
    // what A's shard missed meanwhile comes from the room's history.
    let addr = b.addr;
    let path = format!("/api/rooms/{id}/messages");
    let publisher = std::thread::spawn(move || {
        for n in 1..=PUSHES {
            let body = json!({ "n": n }).to_string();
            let mut status = 0;
            for _ in 0..100 {
                status = request(addr, "POST", &path, body.as_bytes()).0;
                if status != 503 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            assert_eq!(status, 200, "push {n}");
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
    });
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let killed = redis
            .try_command(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .unwrap();
        assert!(killed.starts_with(':'), "{killed}");
    }
    publisher.join().unwrap();
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < PUSHES {
        let got = next_sio_message(&mut socket);
        seqs.push(got["_volley"]["seq"].as_u64().unwrap());
    }
    assert_eq!(
        seqs,
        (1..=PUSHES).collect::<Vec<_>>(),
        "in order, once, no gap"
    );
    // Nothing more: the next message is this broadcast.
    b.broadcast(br#"{"after":1}"#);
    let got = next_sio_message(&mut socket);
    assert_eq!(got["_volley"]["channel"], "all", "{got}");
    eprintln!("gap_replayed_total on A: {}", a.total("gap_replayed_total"));
}

/// The local ports of process `pid`'s TCP connections to `port`: its socket inodes, looked
/// up in /proc/net/tcp.
fn ports_to(pid: i32, port: u16) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?;
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            let remote = u16::from_str_radix(f[2].rsplit(':').next()?, 16).ok()?;
            (remote == port && inodes.iter().any(|i| i == f[9])).then_some(local)
        })
        .collect()
}

/// Drops the subscriber links of one volley process only (CLIENT KILL ID), once they are up
/// (after an earlier kill they come back after a growing backoff): the other processes stay
/// subscribed, so what they publish meanwhile is missed by that process's shards.
fn kill_subscribers_of(redis: &common::redis::Redis, server: &Server) {
    let deadline = std::time::Instant::now() + WAIT;
    while kill_subscribers_once(redis, server) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no subscriber link of {} came up",
            server.pid()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn kill_subscribers_once(redis: &common::redis::Redis, server: &Server) -> usize {
    let ports = ports_to(server.pid(), redis.port);
    let list = redis
        .try_command(&["CLIENT", "LIST", "TYPE", "pubsub"])
        .unwrap();
    let mut id = None;
    let mut killed = 0;
    for token in list.split_whitespace() {
        if let Some(n) = token.strip_prefix("id=") {
            id = Some(n.to_string());
        } else if let Some(addr) = token.strip_prefix("addr=") {
            let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
            if ports.contains(&port) {
                let id = id.take().unwrap();
                redis.try_command(&["CLIENT", "KILL", "ID", &id]).unwrap();
                killed += 1;
            }
        }
    }
    killed
}

#[test]
fn a_push_to_a_socket_that_never_had_one_is_caught_up_after_its_link_drops() {
    const SOCKETS: usize = 4;
    let redis = common::redis::Redis::start();
    let a = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    let b = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    let mut sockets: Vec<(Client, String)> = (0..SOCKETS).map(|_| raw_socket(&a)).collect();
    // Each socket's first push is published on B while A's subscriber links are down (A
    // waits its reconnect backoff, ~50-100 ms): only A's catch-up can bring it.
    for (_, id) in &sockets {
        kill_subscribers_of(&redis, &a);
        let answer = post_json(&b, &format!("/api/rooms/{id}/messages"), r#"{"n":1}"#);
        assert_eq!(answer["seq"], 1, "{answer}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    for (socket, id) in &mut sockets {
        let answer = post_json(&b, &format!("/api/rooms/{id}/messages"), r#"{"n":2}"#);
        assert_eq!(answer["seq"], 2, "{answer}");
        let seqs: Vec<Value> = (0..2)
            .map(|_| next_sio_message(socket)["_volley"]["seq"].clone())
            .collect();
        assert_eq!(
            seqs,
            [1, 2],
            "socket {id}: the missed push, then the live one"
        );
    }
    assert!(a.total("gap_replayed_total") > 0);
}
