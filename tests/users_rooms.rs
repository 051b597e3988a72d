//! Users, rooms and the native client protocol, standalone (2 shards): 1:1 and group chat,
//! several devices per user, per-channel sequence numbers, replies and errors, server-side
//! membership, presence lookups, receipts with acks, batches and every limit.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::{json, Value};

fn post(server: &Server, path: &str, body: &str) -> (u16, Value) {
    let (status, answer) = request(server.addr, "POST", path, body.as_bytes());
    (
        status,
        serde_json::from_str(&answer).unwrap_or_else(|_| panic!("not JSON: {answer}")),
    )
}

fn get(server: &Server, path: &str) -> Value {
    let (status, answer) = request(server.addr, "GET", path, b"");
    assert_eq!(status, 200, "{answer}");
    serde_json::from_str(&answer).unwrap()
}

/// Sends an op with a ref and returns its reply (messages arriving first are returned too).
fn op(client: &mut Client, mut body: Value, reference: u64) -> Value {
    body["ref"] = reference.into();
    send_op(client, body);
    let frame = next_json(client);
    assert!(
        frame["type"] == "reply" && frame["ref"] == reference,
        "expected the reply to {reference}, got {frame}"
    );
    frame
}

/// Sends an op with a ref; returns its reply and the messages that arrived before it (a
/// publisher in its own room may see its message before the reply).
fn op_collect(client: &mut Client, mut body: Value, reference: u64) -> (Value, Vec<Value>) {
    body["ref"] = reference.into();
    send_op(client, body);
    let mut messages = Vec::new();
    loop {
        let frame = next_json(client);
        if frame["type"] == "reply" && frame["ref"] == reference {
            return (frame, messages);
        }
        assert_eq!(frame["type"], "message", "{frame}");
        messages.push(frame);
    }
}

#[test]
fn one_to_one_and_group_chat_across_shards_with_sequence_numbers() {
    let server = Server::start(&["--shards", "2"]);
    let mut ann_phone = connect_native(server.addr, "user=ann");
    let mut ann_laptop = connect_native(server.addr, "user=ann");
    let mut bob = connect_native(server.addr, "user=bob");
    let mut eve = connect_native(server.addr, "user=eve");
    server.wait_for("clients", |s| s["total"]["connections"] == 4);

    for (client, n) in [(&mut ann_phone, 1), (&mut ann_laptop, 2), (&mut bob, 3)] {
        let reply = op(client, json!({"op": "join", "room": "lobby"}), n);
        assert_eq!(reply["ok"], true, "{reply}");
    }
    // Group chat: bob's message reaches every member's connection, his own included, and
    // not eve, who is not in the room.
    let (reply, mut own) = op_collect(
        &mut bob,
        json!({"op": "publish", "room": "lobby", "data": {"text": "hi all"}}),
        10,
    );
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"]["seq"], 1);
    assert_eq!(reply["result"]["recipients"], 3);
    if own.is_empty() {
        own.push(next_message(&mut bob));
    }
    let ann_phone_message = next_message(&mut ann_phone);
    let ann_laptop_message = next_message(&mut ann_laptop);
    for message in [ann_phone_message, ann_laptop_message, own.remove(0)] {
        assert_eq!(message["channel"], "room:lobby");
        assert_eq!(message["seq"], 1);
        assert_eq!(message["from"], "user:bob");
        assert_eq!(message["data"], json!({"text": "hi all"}));
        assert_eq!(message["id"], reply["result"]["id"]);
    }
    // 1:1: both of ann's devices get it; seq counts per channel.
    let reply = op(
        &mut bob,
        json!({"op": "publish", "user": "ann", "data": "psst"}),
        11,
    );
    assert_eq!(reply["result"]["seq"], 1, "user:ann has its own sequence");
    assert_eq!(reply["result"]["recipients"], 2);
    let (status, answer) = post(&server, "/api/users/ann/messages", r#"{"from":"backend"}"#);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["seq"], 2);
    assert_eq!(answer["recipients"], 2);
    for client in [&mut ann_phone, &mut ann_laptop] {
        let first = next_message(client);
        assert_eq!(
            (first["channel"].as_str(), first["seq"].as_u64()),
            (Some("user:ann"), Some(1))
        );
        assert_eq!(first["data"], "psst");
        let second = next_message(client);
        assert_eq!(second["seq"], 2, "a gap would show as a jump here");
        assert_eq!(second["from"], Value::Null, "API publishes have no sender");
        assert_eq!(second["data"]["from"], "backend");
    }
    // A broadcast reaches everyone, numbered on `all`.
    let (_, answer) = post(&server, "/api/broadcast", "plain text");
    assert_eq!(
        (answer["seq"].as_u64(), answer["recipients"].as_u64()),
        (Some(1), Some(4))
    );
    for client in [&mut ann_phone, &mut ann_laptop, &mut bob, &mut eve] {
        let message = next_message(client);
        assert_eq!(
            (message["channel"].as_str(), message["data"].as_str()),
            (Some("all"), Some("plain text"))
        );
    }
    // Binary bodies arrive as base64 for JSON clients.
    post(&server, "/api/users/eve/messages", "\u{0}\u{1}");
    let (status, _) = request(
        server.addr,
        "POST",
        "/api/users/eve/messages",
        &[0xff, 0x00],
    );
    assert_eq!(status, 200);
    let _ = next_message(&mut eve);
    let binary = next_message(&mut eve);
    assert_eq!(binary["data_base64"], "/wA=");

    // Leaving stops room messages.
    assert_eq!(
        op(&mut ann_laptop, json!({"op": "leave", "room": "lobby"}), 12)["ok"],
        true
    );
    let (_, answer) = post(&server, "/api/rooms/lobby/messages", r#""after leave""#);
    assert_eq!(answer["recipients"], 2);
    assert_eq!(next_message(&mut ann_phone)["seq"], 2);
    assert_eq!(next_message(&mut bob)["seq"], 2);
}

#[test]
fn replies_and_errors_then_1008_for_abuse() {
    let server = Server::start(&["--shards", "2"]);
    let mut client = connect_native(server.addr, "user=zed");
    let reply = op(&mut client, json!({"op": "dance"}), 1);
    assert_eq!(
        (reply["ok"].as_bool(), reply["error"]["code"].as_str()),
        (Some(false), Some("unknown_op"))
    );
    send_op(&mut client, json!("not an object"));
    let reply = next_json(&mut client);
    assert_eq!(reply["error"]["code"], "bad_json");
    let reply = op(
        &mut client,
        json!({"op": "leave", "room": "nowhere"}),
        "x".len() as u64 + 1,
    );
    assert_eq!(reply["error"]["code"], "not_found");
    let reply = op(&mut client, json!({"op": "join"}), 3);
    assert_eq!(reply["error"]["code"], "bad_field");
    let reply = op(
        &mut client,
        json!({"op": "ack", "channel": "room:r", "seq": 99}),
        4,
    );
    assert_eq!(reply["error"]["code"], "not_found");
    // Acks on your own user channel are always accepted: they also clear the offline
    // inbox, which may hold the message without a receipt here.
    let reply = op(
        &mut client,
        json!({"op": "ack", "channel": "user:zed", "seq": 99}),
        5,
    );
    assert_eq!(reply["ok"], true, "{reply}");
    // A string ref is echoed as given.
    send_op(
        &mut client,
        json!({"op": "join", "room": "r", "ref": "abc"}),
    );
    assert_eq!(next_json(&mut client)["ref"], "abc");
    // Keep sending garbage: after the strike limit the client is closed with 1008, and a
    // neighbour is unaffected.
    let mut neighbour = connect_native(server.addr, "user=nia");
    for _ in 0..40 {
        if client.send(tungstenite::Message::text("{")).is_err() {
            break;
        }
    }
    assert_eq!(u16::from(expect_close(&mut client)), 1008);
    post(&server, "/api/users/nia/messages", "still fine");
    assert_eq!(next_message(&mut neighbour)["data"], "still fine");
}

#[test]
fn server_side_membership_and_presence_lookups() {
    let server = Server::start(&["--shards", "2"]);
    let mut ann1 = connect_native(server.addr, "user=ann");
    let mut ann2 = connect_native(server.addr, "user=ann");
    let mut bob = connect_native(server.addr, "user=bob");
    let _anonymous = connect_native(server.addr, "");
    server.wait_for("clients", |s| s["total"]["connections"] == 4);
    let (status, answer) = request(server.addr, "PUT", "/api/rooms/game%3A1/members/ann", b"");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap()["connections"],
        2
    );
    assert_eq!(
        op(&mut bob, json!({"op": "join", "room": "game:1"}), 1)["ok"],
        true
    );
    let room = get(&server, "/api/rooms/game%3A1");
    assert_eq!(room["connections"], 3);
    assert_eq!(room["members"], json!(["ann", "bob"]));
    let user = get(&server, "/api/users/ann");
    assert_eq!(
        (user["connections"].as_u64(), user["online"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(get(&server, "/api/users/nobody")["online"], false);

    let (_, answer) = post(&server, "/api/rooms/game%3A1/messages", r#"{"move":"e4"}"#);
    assert_eq!(answer["recipients"], 3);
    for client in [&mut ann1, &mut ann2, &mut bob] {
        assert_eq!(next_message(client)["data"]["move"], "e4");
    }
    let (status, _) = request(
        server.addr,
        "DELETE",
        "/api/rooms/game%3A1/members/ann",
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(
        get(&server, "/api/rooms/game%3A1")["members"],
        json!(["bob"])
    );
    let (_, answer) = post(&server, "/api/rooms/game%3A1/messages", r#"{"move":"e5"}"#);
    assert_eq!(answer["recipients"], 1);
}

#[test]
fn receipts_count_acks_and_wait_for_them() {
    let server = Server::start(&["--shards", "2"]);
    let mut ann1 = connect_native(server.addr, "user=ann");
    let mut ann2 = connect_native(server.addr, "user=ann");
    let mut silent = connect_native(server.addr, "user=sam");
    server.wait_for("clients", |s| s["total"]["connections"] == 3);

    // Both of ann's devices ack while the publisher waits.
    let acker = std::thread::spawn(move || {
        for client in [&mut ann1, &mut ann2] {
            let message = next_message(client);
            send_op(
                client,
                json!({"op": "ack", "channel": message["channel"], "seq": message["seq"]}),
            );
        }
        (ann1, ann2)
    });
    let (status, answer) = post(
        &server,
        "/api/users/ann/messages?wait=ack&timeout_ms=10000",
        r#""ack me""#,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["delivered"].as_u64(), answer["acked"].as_u64()),
        (Some(2), Some(2)),
        "{answer}"
    );
    assert_eq!(answer["timed_out"], false);
    let _ = acker.join().unwrap();
    let receipt = get(
        &server,
        &format!("/api/messages/{}", answer["id"].as_str().unwrap()),
    );
    assert_eq!(
        (receipt["delivered"].as_u64(), receipt["acked"].as_u64()),
        (Some(2), Some(2))
    );

    // A connection that does not ack: the answer says so when the timeout passes.
    let (_, answer) = post(
        &server,
        "/api/users/sam/messages?wait=ack&timeout_ms=300",
        r#""ignored""#,
    );
    assert_eq!(
        (answer["delivered"].as_u64(), answer["acked"].as_u64()),
        (Some(1), Some(0)),
        "{answer}"
    );
    assert_eq!(answer["timed_out"], true);
    assert_eq!(next_message(&mut silent)["data"], "ignored");
    // Room and broadcast publishes answer the queued count; receipts come from the lookup.
    let (status, answer) = post(&server, "/api/rooms/r/messages?wait=ack", "x");
    assert_eq!(status, 400, "{answer}");
}

#[test]
fn batch_publishes_to_many_targets() {
    let server = Server::start(&["--shards", "2"]);
    let mut ann = connect_native(server.addr, "user=ann");
    let mut bob = connect_native(server.addr, "user=bob");
    assert_eq!(
        op(&mut bob, json!({"op": "join", "room": "ops"}), 1)["ok"],
        true
    );
    let body = json!({"messages": [
        {"user": "ann", "data": {"n": 1}},
        {"room": "ops", "data": {"n": 2}},
        {"broadcast": true, "data": {"n": 3}},
        {"user": "nobody", "data": {"n": 4}},
    ]});
    let (status, answer) = post(&server, "/api/batch", &body.to_string());
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(
        results
            .iter()
            .map(|r| r["recipients"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 1, 2, 0]
    );
    assert_eq!(answer["recipients"], 4);
    let mut got: Vec<u64> = (0..2)
        .map(|_| next_message(&mut ann)["data"]["n"].as_u64().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, vec![1, 3]);
    let mut got: Vec<u64> = (0..2)
        .map(|_| next_message(&mut bob)["data"]["n"].as_u64().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, vec![2, 3]);
    let (status, answer) = post(
        &server,
        "/api/batch",
        r#"{"messages":[{"user":"a","room":"b","data":1}]}"#,
    );
    assert_eq!(status, 400, "{answer}");
    let (status, _) = post(&server, "/api/batch", "not json");
    assert_eq!(status, 400);
    // The documented maximum of 10,000 entries fits the default --batch-bytes-max, while
    // a single publish body stays held to --body-bytes-max.
    let many: Vec<Value> = (0..10_000)
        .map(|i| json!({"user": format!("user-{i}"), "data": {"n": i}}))
        .collect();
    let body = json!({ "messages": many }).to_string();
    assert!(body.len() > 64 * 1024);
    let (status, answer) = post(&server, "/api/batch", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"].as_array().unwrap().len(), 10_000);
    let (status, answer) = post(&server, "/api/broadcast", &"x".repeat(70 * 1024));
    assert_eq!(status, 413, "{answer}");
}

#[test]
fn every_client_limit_answers_then_closes() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--rooms-per-connection-max",
        "2",
        "--name-bytes-max",
        "8",
        "--client-publish-rate",
        "1",
        "--client-publish-burst",
        "2",
        "--message-bytes-max",
        "512",
    ]);
    let mut client = connect_native(server.addr, "user=lim");
    assert_eq!(
        op(&mut client, json!({"op": "join", "room": "a"}), 1)["ok"],
        true
    );
    assert_eq!(
        op(&mut client, json!({"op": "join", "room": "b"}), 2)["ok"],
        true
    );
    assert_eq!(
        op(&mut client, json!({"op": "join", "room": "c"}), 3)["error"]["code"],
        "too_large"
    );
    let reply = op(
        &mut client,
        json!({"op": "join", "room": "much-too-long"}),
        4,
    );
    assert_eq!(reply["error"]["code"], "too_large", "{reply}");
    let (status, _) = request(server.addr, "GET", "/api/users/much-too-long", b"");
    assert_eq!(status, 400);
    assert!(try_connect_native(server.addr, "user=much-too-long")
        .unwrap_err()
        .starts_with("400"));
    for n in 0..2 {
        let (reply, mut own) = op_collect(
            &mut client,
            json!({"op": "publish", "room": "a", "data": n}),
            10 + n,
        );
        assert_eq!(reply["ok"], true, "{reply}");
        if own.is_empty() {
            own.push(next_message(&mut client));
        }
        assert_eq!(own[0]["data"], n);
    }
    let reply = op(
        &mut client,
        json!({"op": "publish", "room": "a", "data": 3}),
        20,
    );
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
    // A message over --message-bytes-max is a protocol violation: 1009.
    let big = json!({"op": "publish", "room": "a", "data": "x".repeat(600)});
    client
        .send(tungstenite::Message::text(big.to_string()))
        .unwrap();
    assert_eq!(u16::from(expect_close(&mut client)), 1009);
}
