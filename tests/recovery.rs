//! Nothing lost: a client that reconnects gets what it missed, in order, once; a gap older
//! than the history says `recovered: false`; an offline user's inbox is delivered at the
//! next connect and redelivered until acked, then given up; history and presence lookups.
//! Standalone here; tests/cluster_recovery.rs does the same through Redis.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::{json, Value};

/// Reads frames until the `recovered` event of `channel`, returning the messages before it.
fn until_recovered(client: &mut Client, channel: &str) -> (Vec<Value>, Value) {
    let mut messages = Vec::new();
    loop {
        let frame = next_json(client);
        match frame["type"].as_str() {
            Some("recovered") if frame["channel"] == channel => return (messages, frame),
            Some("message") => messages.push(frame),
            _ => {}
        }
    }
}

#[test]
fn a_returning_client_gets_every_missed_message_in_order_then_live_without_duplicates() {
    let server = Server::start(&["--shards", "2"]);
    let mut ann = connect_native(server.addr, "user=ann");
    send_op(&mut ann, json!({"op": "join", "room": "lobby", "ref": 1}));
    assert_eq!(next_json(&mut ann)["ok"], true);
    post_json(&server, "/api/rooms/lobby/messages", r#"{"n":1}"#);
    assert_eq!(next_json(&mut ann)["seq"], 1);
    drop(ann);
    server.wait_for("ann gone", |s| s["total"]["connections"] == 0);

    // 100 messages while she is away, to the room and to her.
    for n in 2..=101 {
        post_json(
            &server,
            "/api/rooms/lobby/messages",
            &format!(r#"{{"n":{n}}}"#),
        );
    }
    for n in 1..=5 {
        post_json(
            &server,
            "/api/users/ann/messages",
            &format!(r#"{{"dm":{n}}}"#),
        );
    }

    // She comes back with her last seqs; live publishing goes on meanwhile, so the seam
    // between replay and live is crossed under load.
    let addr = server.addr;
    let publisher = std::thread::spawn(move || {
        for n in 102..=151 {
            let (status, _) = request(
                addr,
                "POST",
                "/api/rooms/lobby/messages",
                format!(r#"{{"n":{n}}}"#).as_bytes(),
            );
            assert_eq!(status, 200);
        }
    });
    let token = resume_token(json!({"room:lobby": 1, "user:ann": 0}));
    let mut ann = connect_native(server.addr, &format!("user=ann&resume={token}"));
    let mut seen = Vec::new();
    let mut recovered = Vec::new();
    while recovered.len() < 2 {
        let frame = next_json(&mut ann);
        match frame["type"].as_str() {
            Some("recovered") => recovered.push(frame),
            Some("message") => seen.push(frame),
            other => panic!("unexpected {other:?}: {frame}"),
        }
    }
    publisher.join().unwrap();
    // Everything published up to now: read until the room reaches 151.
    while seqs_of(&seen, "room:lobby").last() != Some(&151) {
        seen.push(next_json(&mut ann));
    }
    assert_eq!(
        seqs_of(&seen, "room:lobby"),
        (2..=151).collect::<Vec<_>>(),
        "every message once, in order"
    );
    assert_eq!(seqs_of(&seen, "user:ann"), (1..=5).collect::<Vec<_>>());
    for event in &recovered {
        assert_eq!(event["recovered"], true, "{event}");
    }
    let lobby = recovered
        .iter()
        .find(|e| e["channel"] == "room:lobby")
        .unwrap();
    assert!(lobby["replayed"].as_u64().unwrap() >= 100, "{lobby}");
    // And live after that, once.
    post_json(&server, "/api/rooms/lobby/messages", r#"{"n":152}"#);
    let next = next_json(&mut ann);
    assert_eq!(
        (next["channel"].as_str(), next["seq"].as_u64()),
        (Some("room:lobby"), Some(152))
    );
    assert!(server.total("replayed_total") >= 105);
}

#[test]
fn a_gap_older_than_the_history_says_recovered_false() {
    let server = Server::start(&["--shards", "2", "--history-size", "10"]);
    for n in 1..=30 {
        post_json(&server, "/api/broadcast", &format!(r#"{{"n":{n}}}"#));
    }
    let mut client = connect_native(server.addr, "user=late");
    send_op(
        &mut client,
        json!({"op": "recover", "channel": "all", "since": 5, "ref": 1}),
    );
    let (messages, event) = until_recovered(&mut client, "all");
    assert_eq!(event["recovered"], false, "{event}");
    assert_eq!(event["seq"], 30);
    assert_eq!(
        seqs_of(&messages, "all"),
        (21..=30).collect::<Vec<_>>(),
        "what is kept is still sent"
    );
    // Within the history: complete.
    send_op(
        &mut client,
        json!({"op": "recover", "channel": "all", "since": 25, "ref": 2}),
    );
    let (messages, event) = until_recovered(&mut client, "all");
    assert_eq!(event["recovered"], true, "{event}");
    assert_eq!(seqs_of(&messages, "all"), vec![26, 27, 28, 29, 30]);
    // Nothing missed is complete too.
    send_op(
        &mut client,
        json!({"op": "recover", "channel": "all", "since": 30, "ref": 3}),
    );
    let (messages, event) = until_recovered(&mut client, "all");
    assert!(messages.is_empty());
    assert_eq!(event["recovered"], true);
    // Recover only what you receive.
    send_op(
        &mut client,
        json!({"op": "recover", "channel": "user:someone-else", "since": 0, "ref": 4}),
    );
    loop {
        let frame = next_json(&mut client);
        if frame["ref"] == 4 {
            assert_eq!(frame["error"]["code"], "forbidden", "{frame}");
            break;
        }
    }
    // The history API tells the same story.
    let history = get_json(&server, "/api/channels/all/history?since=5");
    assert_eq!(
        (history["complete"].as_bool(), history["current"].as_u64()),
        (Some(false), Some(30))
    );
    assert_eq!(history["messages"].as_array().unwrap().len(), 10);
    assert_eq!(history["messages"][0]["data"]["n"], 21);
    let history = get_json(&server, "/api/channels/all/history?since=27&limit=2");
    assert_eq!(
        history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![28, 29]
    );
    assert_eq!(history["complete"], false, "cut by the limit");
    let (status, _) = request(server.addr, "GET", "/api/channels/planet:x/history", b"");
    assert_eq!(status, 400);
}

#[test]
fn join_with_since_replays_the_room() {
    let server = Server::start(&["--shards", "2"]);
    for n in 1..=7 {
        post_json(&server, "/api/rooms/game/messages", &format!("{n}"));
    }
    let mut client = connect_native(server.addr, "user=joe");
    send_op(
        &mut client,
        json!({"op": "join", "room": "game", "since": 4, "ref": 1}),
    );
    let (messages, event) = until_recovered(&mut client, "room:game");
    assert_eq!(seqs_of(&messages, "room:game"), vec![5, 6, 7]);
    assert_eq!(event["recovered"], true);
}

#[test]
fn the_offline_inbox_is_delivered_until_acked_then_given_up() {
    let server = Server::start(&["--shards", "2", "--inbox-deliveries-max", "2"]);
    for n in 1..=3 {
        let answer = post_json(
            &server,
            "/api/users/bob/messages",
            &format!(r#"{{"n":{n}}}"#),
        );
        assert_eq!(answer["recipients"], 0, "bob is offline");
        assert_eq!(answer["inbox"], true, "kept for him: {answer}");
    }
    assert_eq!(server.total("inbox_stored_total"), 3);
    // First connect: all three, in order; bob acks the first two.
    let mut bob = connect_native(server.addr, "user=bob");
    for n in 1..=3u64 {
        let message = next_json(&mut bob);
        assert_eq!(
            (message["channel"].as_str(), message["seq"].as_u64()),
            (Some("user:bob"), Some(n))
        );
        assert_eq!(message["data"]["n"], n);
    }
    for n in 1..=2u64 {
        send_op(
            &mut bob,
            json!({"op": "ack", "channel": "user:bob", "seq": n, "ref": n}),
        );
        assert_eq!(next_json(&mut bob)["ok"], true);
    }
    drop(bob);
    server.wait_for("bob gone", |s| s["total"]["connections"] == 0);
    // Second connect: only the unacked one comes again.
    let mut bob = connect_native(server.addr, "user=bob");
    let message = next_json(&mut bob);
    assert_eq!(message["seq"], 3);
    post_json(&server, "/api/users/bob/messages", r#""live""#);
    let live = next_json(&mut bob);
    assert_eq!(
        (live["seq"].as_u64(), live["data"].as_str()),
        (Some(4), Some("live")),
        "online: not kept, delivered"
    );
    drop(bob);
    server.wait_for("bob gone", |s| s["total"]["connections"] == 0);
    // Third connect: message 3 was delivered twice unacked: given up, nothing comes.
    let mut bob = connect_native(server.addr, "user=bob");
    post_json(&server, "/api/users/bob/messages", r#""after""#);
    let next = next_json(&mut bob);
    assert_eq!(
        next["data"], "after",
        "the given-up message did not come back: {next}"
    );
    assert_eq!(server.total("inbox_given_up_total"), 1);
    assert_eq!(server.total("inbox_delivered_total"), 4);
}

#[test]
fn presence_of_users_and_rooms() {
    let server = Server::start(&["--shards", "2"]);
    let mut ann = connect_native(server.addr, "user=ann");
    let _ann2 = connect_native(server.addr, "user=ann");
    send_op(&mut ann, json!({"op": "join", "room": "r", "ref": 1}));
    assert_eq!(next_json(&mut ann)["ok"], true);
    let user = get_json(&server, "/api/users/ann/presence");
    assert_eq!(
        (user["online"].as_bool(), user["connections"].as_u64()),
        (Some(true), Some(2))
    );
    assert_eq!(
        get_json(&server, "/api/users/nobody/presence")["online"],
        false
    );
    let room = get_json(&server, "/api/rooms/r/presence");
    assert_eq!(
        (room["count"].as_u64(), room["members"].clone()),
        (Some(1), json!(["ann"]))
    );
}

#[test]
fn bad_resume_tokens_are_refused_with_the_reason() {
    let server = Server::start(&["--shards", "1"]);
    for (token, reason) in [
        ("!!!", "base64"),
        (&*resume_token(json!(["x"])), "JSON object"),
        (&*resume_token(json!({"user:other": 1})), "own user channel"),
        (&*resume_token(json!({"planet:x": 1})), "not all"),
    ] {
        let refusal = try_connect_native(server.addr, &format!("user=ann&resume={token}"))
            .map(|_| ())
            .unwrap_err();
        assert!(
            refusal.starts_with("400") && refusal.contains(reason),
            "{refusal}"
        );
    }
}

#[test]
fn room_events_tell_members_who_joins_and_leaves() {
    let server = Server::start(&["--shards", "2", "--room-events"]);
    let mut bob = connect_native(server.addr, "user=bob");
    send_op(&mut bob, json!({"op": "join", "room": "r", "ref": 1}));
    // bob's own join event and the reply, in either order.
    let mut frames: Vec<Value> = (0..2).map(|_| next_json(&mut bob)).collect();
    frames.sort_by_key(|f| f["type"].as_str().unwrap_or("").to_string());
    assert_eq!(
        frames[0]["data"],
        json!({"presence": "join", "user": "bob"})
    );
    let mut ann = connect_native(server.addr, "user=ann");
    send_op(&mut ann, json!({"op": "join", "room": "r", "ref": 1}));
    let joined = next_json(&mut bob);
    assert_eq!(
        (joined["channel"].as_str(), joined["from"].as_str()),
        (Some("room:r"), Some("user:ann"))
    );
    assert_eq!(joined["data"], json!({"presence": "join", "user": "ann"}));
    drop(ann);
    let left = next_json(&mut bob);
    assert_eq!(left["data"], json!({"presence": "leave", "user": "ann"}));
    assert_eq!(
        left["seq"].as_u64(),
        Some(joined["seq"].as_u64().unwrap() + 1),
        "sequenced like any message"
    );
}

#[test]
fn a_replay_longer_than_the_outbound_queue_is_fed_as_the_client_reads() {
    let server = Server::start(&[
        "--shards",
        "2",
        "--history-size",
        "3000",
        "--outbound-frames-max",
        "64",
    ]);
    let messages: Vec<Value> = (1..=2000)
        .map(|n| json!({"room": "long", "data": n}))
        .collect();
    let answer = post_json(
        &server,
        "/api/batch",
        &json!({ "messages": messages }).to_string(),
    );
    assert_eq!(answer["results"].as_array().unwrap().len(), 2000);
    let mut client = connect_native(server.addr, "user=reader");
    send_op(
        &mut client,
        json!({"op": "join", "room": "long", "since": 0, "ref": 1}),
    );
    let mut seen = Vec::new();
    loop {
        let frame = next_json(&mut client);
        match frame["type"].as_str() {
            Some("message") => seen.push(frame),
            Some("recovered") => {
                assert_eq!(frame["recovered"], true, "{frame}");
                assert_eq!(frame["replayed"], 2000);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(seqs_of(&seen, "room:long"), (1..=2000).collect::<Vec<_>>());
    assert_eq!(
        server.total("slow_consumer_closes_total"),
        0,
        "2000 replayed through a 64-frame queue"
    );
}
