//! Nothing lost, in cluster mode (two volley processes and a real redis-server): replay
//! from the Redis history across processes, `recovered: false` past it, the offline inbox
//! in Redis surviving a volley restart, and a kill -9'd node whose users turn offline
//! within the presence TTL while they recover on the other node.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::redis::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn node(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--shards", "2", "--redis", url.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Frames until every channel in `channels` has sent its `recovered` event.
fn recover_all(client: &mut Client, channels: usize) -> (Vec<Value>, Vec<Value>) {
    let (mut messages, mut events) = (Vec::new(), Vec::new());
    while events.len() < channels {
        let frame = next_json(client);
        match frame["type"].as_str() {
            Some("recovered") => events.push(frame),
            Some("message") => messages.push(frame),
            _ => {}
        }
    }
    (messages, events)
}

#[test]
fn replay_across_processes_then_live_without_duplicates() {
    let redis = Redis::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut ann = connect_native(a.addr, "user=ann");
    send_op(&mut ann, json!({"op": "join", "room": "lobby", "ref": 1}));
    assert_eq!(next_json(&mut ann)["ok"], true);
    post_json(&b, "/api/rooms/lobby/messages", "1");
    assert_eq!(next_json(&mut ann)["seq"], 1);
    drop(ann);
    a.wait_for("ann gone", |s| s["total"]["connections"] == 0);
    for n in 2..=101 {
        post_json(&b, "/api/rooms/lobby/messages", &n.to_string());
    }
    let addr = b.addr;
    let publisher = std::thread::spawn(move || {
        for n in 102..=131 {
            let (status, _) = request(
                addr,
                "POST",
                "/api/rooms/lobby/messages",
                n.to_string().as_bytes(),
            );
            assert_eq!(status, 200);
        }
    });
    // Back on the other process.
    let mut ann = connect_native(
        b.addr,
        &format!("user=ann&resume={}", resume_token(json!({"room:lobby": 1}))),
    );
    let (mut messages, events) = recover_all(&mut ann, 1);
    assert_eq!(events[0]["recovered"], true, "{}", events[0]);
    publisher.join().unwrap();
    while seqs_of(&messages, "room:lobby").last() != Some(&131) {
        messages.push(next_json(&mut ann));
    }
    assert_eq!(
        seqs_of(&messages, "room:lobby"),
        (2..=131).collect::<Vec<_>>(),
        "every message once, in order"
    );
    post_json(&a, "/api/rooms/lobby/messages", "132");
    assert_eq!(
        next_json(&mut ann)["seq"],
        132,
        "live again, published on the other process"
    );
}

#[test]
fn past_the_history_is_not_recovered() {
    let redis = Redis::start();
    let a = node(&redis, &["--history-size", "10"]);
    for n in 1..=30 {
        post_json(&a, "/api/broadcast", &n.to_string());
    }
    let mut client = connect_native(
        a.addr,
        &format!("user=x&resume={}", resume_token(json!({"all": 5}))),
    );
    let (messages, events) = recover_all(&mut client, 1);
    assert_eq!(events[0]["recovered"], false, "{}", events[0]);
    assert_eq!(seqs_of(&messages, "all"), (21..=30).collect::<Vec<_>>());
    let history = get_json(&a, "/api/channels/all/history?since=25");
    assert_eq!(history["messages"].as_array().unwrap().len(), 5);
    assert_eq!(history["complete"], true);
}

#[test]
fn the_inbox_survives_a_volley_restart_and_is_given_up_after_the_bound() {
    let redis = Redis::start();
    let mut a = node(&redis, &["--inbox-deliveries-max", "2"]);
    for n in 1..=3 {
        let answer = post_json(&a, "/api/users/bob/messages", &format!(r#"{{"n":{n}}}"#));
        assert_eq!(
            (answer["recipients"].as_u64(), answer["nodes"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(answer["inbox"], true, "kept for bob: {answer}");
    }
    assert_eq!(a.total("inbox_stored_total"), 3);
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait_exit(), Some(0));
    let b = node(&redis, &["--inbox-deliveries-max", "2"]);
    let mut bob = connect_native(b.addr, "user=bob");
    for n in 1..=3u64 {
        let message = next_json(&mut bob);
        assert_eq!(
            (message["channel"].as_str(), message["seq"].as_u64()),
            (Some("user:bob"), Some(n)),
            "{message}"
        );
    }
    send_op(
        &mut bob,
        json!({"op": "ack", "channel": "user:bob", "seq": 1, "ref": 1}),
    );
    assert_eq!(next_json(&mut bob)["ok"], true);
    drop(bob);
    b.wait_for("bob gone", |s| s["total"]["connections"] == 0);
    let mut bob = connect_native(b.addr, "user=bob");
    assert_eq!(next_json(&mut bob)["seq"], 2, "unacked ones come again");
    assert_eq!(next_json(&mut bob)["seq"], 3);
    drop(bob);
    b.wait_for("bob gone", |s| s["total"]["connections"] == 0);
    let mut bob = connect_native(b.addr, "user=bob");
    post_json(&b, "/api/users/bob/messages", r#""now""#);
    assert_eq!(
        next_json(&mut bob)["data"],
        "now",
        "2 and 3 were given up after two deliveries"
    );
    // The inbox is taken once bob's subscription is confirmed, which may come after the
    // live message: wait for the count rather than read it at once.
    b.wait_for("two inbox messages given up", |s| {
        s["total"]["inbox_given_up_total"] == 2
    });
}

#[test]
fn a_killed_node_s_users_go_offline_within_the_ttl_and_recover_on_another_node() {
    let redis = Redis::start();
    let mut a = node(&redis, &["--presence-ttl-s", "3"]);
    let b = node(&redis, &["--presence-ttl-s", "3"]);
    let mut ann = connect_native(a.addr, "user=ann");
    send_op(&mut ann, json!({"op": "join", "room": "ops", "ref": 1}));
    assert_eq!(next_json(&mut ann)["ok"], true);
    // Both nodes heartbeat; ann is online as seen from B.
    let deadline = Instant::now() + WAIT;
    while get_json(&b, "/api/users/ann/presence")["online"] != true {
        assert!(Instant::now() < deadline, "ann never showed up online");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        get_json(&b, "/api/rooms/ops/presence")["members"],
        json!(["ann"])
    );
    post_json(&b, "/api/rooms/ops/messages", "before");
    assert_eq!(next_json(&mut ann)["seq"], 1);

    let a_node = get_json(&a, "/healthz")["node"].clone();
    // kill -9 node A: no goodbye, its counters stay in Redis, its heartbeat stops.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop(ann);
    let killed_at = Instant::now();
    while get_json(&b, "/api/users/ann/presence")["online"] != false {
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "ann still online long after the TTL: {} nodes {:?} ttl {:?}",
            get_json(&b, "/api/users/ann/presence"),
            redis.try_command(&["SMEMBERS", "volley:nodes"]),
            redis.try_command(&["PTTL", &format!("volley:node:{}", a_node.as_str().unwrap())])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get_json(&b, "/api/rooms/ops/presence")["count"], 0);

    // Meanwhile messages went on; ann reconnects to B and recovers them.
    for n in 2..=11 {
        post_json(&b, "/api/rooms/ops/messages", &n.to_string());
    }
    let mut ann = connect_native(
        b.addr,
        &format!("user=ann&resume={}", resume_token(json!({"room:ops": 1}))),
    );
    let (messages, events) = recover_all(&mut ann, 1);
    assert_eq!(events[0]["recovered"], true);
    assert_eq!(seqs_of(&messages, "room:ops"), (2..=11).collect::<Vec<_>>());
    assert_eq!(get_json(&b, "/api/users/ann/presence")["online"], true);
}
