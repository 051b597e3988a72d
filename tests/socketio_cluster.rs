//! volley in socket.io's own Redis cluster (`--socketio-adapter`, issue 13), against real
//! things: a real redis-server, two volley processes, the real `@socket.io/redis-emitter`,
//! a real Node socket.io 4 server on `@socket.io/redis-adapter` 8, and real
//! `socket.io-client`s (tools/socketio-client/cluster.js, installed by tools/test.sh).
//! Garbage on socket.io's channels is published with raw RESP.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::node::{self, line};
use common::redis::Redis;
use common::*;
use serde_json::{json, Value};

/// Runs one scenario of cluster.js to its end; returns the JSON lines it printed.
fn scenario(name: &str, redis: &Redis, args: &[String], servers: &[&Server]) -> Vec<Value> {
    let mut all = vec![name.to_string(), redis.url()];
    all.extend_from_slice(args);
    node::run("cluster.js", &all, || {
        let logs: Vec<String> = servers.iter().map(|s| s.stderr()).collect();
        format!("volley: {logs:?}")
    })
}

/// A volley process in the socket.io cluster.
fn volley(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--shards", "2", "--redis", &url, "--socketio-adapter"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn http(server: &Server) -> String {
    format!("http://{}", server.addr)
}

/// Waits until `shards` volley shards subscribed the request channel of each namespace:
/// each shard sends its PSUBSCRIBEs first on the same link, so from then on what is
/// published on socket.io's channels reaches every one of them. PUBSUB NUMPAT counts
/// distinct patterns: one per namespace.
fn wait_subscribed(redis: &Redis, namespaces: &[&str], shards: u64) {
    for nsp in namespaces {
        redis.wait_numsub(&format!("socket.io-request#{nsp}#"), shards);
    }
    let reply = redis.try_command(&["PUBSUB", "NUMPAT"]).unwrap();
    let patterns: usize = reply.trim_start_matches(':').trim().parse().unwrap();
    assert_eq!(patterns, namespaces.len(), "{reply}");
}

/// The events one client logged, by client name.
fn log_of<'a>(lines: &'a [Value], client: &str) -> &'a Vec<Value> {
    lines
        .iter()
        .find(|l| l["client"] == client)
        .and_then(|l| l["log"].as_array())
        .unwrap_or_else(|| panic!("no log of {client} in {lines:?}"))
}

fn events(log: &[Value]) -> Vec<&str> {
    log.iter().map(|e| e[0].as_str().unwrap()).collect()
}

#[test]
fn an_unchanged_emitter_reaches_socket_io_clients_on_two_volley_processes() {
    let redis = Redis::start();
    let a = volley(&redis, &["--socketio-namespace", "/chat"]);
    let b = volley(&redis, &["--socketio-namespace", "/chat"]);
    wait_subscribed(&redis, &["/", "/chat"], 4);
    let lines = scenario("emitter", &redis, &[http(&a), http(&b)], &[&a, &b]);
    assert_eq!(
        line(&lines, "joins")["joins"],
        json!([{"ok": true}, {"ok": true}, {"ok": true}])
    );
    // a1 and b1 are in red (on A and B), b2 in blue (on B), c1 on /chat (on A).
    let a1 = log_of(&lines, "a1");
    let b1 = log_of(&lines, "b1");
    let b2 = log_of(&lines, "b2");
    let c1 = log_of(&lines, "c1");
    let before_end1 = |log: &[Value]| -> Vec<String> {
        let events = events(log);
        let end = events.iter().position(|e| *e == "end1").unwrap();
        events[..end].iter().map(|e| e.to_string()).collect()
    };
    assert_eq!(
        before_end1(a1),
        ["news", "to_red", "red_or_blue_not_blue", "binary"]
    );
    assert_eq!(
        before_end1(b1),
        ["news", "to_red", "red_or_blue_not_blue", "direct", "binary"]
    );
    assert_eq!(before_end1(b2), ["news", "except_red", "binary"]);
    assert_eq!(before_end1(c1), ["chat_news"]);
    // Arguments arrive as the emitter sent them, binary as a Buffer.
    assert_eq!(a1[0], json!(["news", {"n": 1}]));
    assert!(b1.contains(&json!(["direct", "only b1"])), "{b1:?}");
    assert!(
        b2.contains(&json!(["binary", {"buffer": [1, 2, 3]}])),
        "{b2:?}"
    );
    // socketsJoin: b2 (in blue) joined green, a volley room a volley API push reaches.
    assert!(b2.contains(&json!(["to_green", 6])), "{b2:?}");
    assert!(!events(a1).contains(&"to_green") && !events(b1).contains(&"to_green"));
    assert_eq!(line(&lines, "green_push")["green_push"]["green"], true);
    // socketsLeave: nobody is in green any more.
    for log in [a1, b1, b2] {
        assert!(!events(log).contains(&"to_green_after_leave"), "{log:?}");
    }
    // disconnectSockets: the red sockets were disconnected by the server, b2 stays.
    for log in [a1, b1] {
        assert!(
            log.contains(&json!(["disconnect", "io server disconnect"])),
            "{log:?}"
        );
        assert!(!events(log).contains(&"end4"));
    }
    assert!(events(b2).contains(&"end4") && events(c1).contains(&"end4"));
    assert!(a.total("socketio_adapter_messages_total") > 0);
    assert_eq!(a.total("socketio_adapter_malformed_total"), 0);
}

#[test]
fn a_node_socket_io_server_and_volley_form_one_cluster() {
    let redis = Redis::start();
    let v = volley(&redis, &[]);
    wait_subscribed(&redis, &["/"], 2);
    let lines = scenario("mixed", &redis, &[http(&v), "2".into()], &[&v]);
    assert_eq!(
        line(&lines, "joins")["joins"],
        json!([{"ok": true}, {"ok": true}])
    );
    let n1 = log_of(&lines, "n1");
    let v1 = log_of(&lines, "v1");
    let v1_id = lines.iter().find(|l| l["client"] == "v1").unwrap()["id"].clone();
    let n1_id = lines.iter().find(|l| l["client"] == "n1").unwrap()["id"].clone();
    let messages = |log: &[Value]| -> Vec<Value> {
        log.iter()
            .filter(|e| e[0] == "message")
            .map(|e| e[1].clone())
            .collect()
    };
    // volley's API broadcast and room push reach the Node server's client once each, and
    // volley's own client once each (not again through socket.io's channel).
    assert_eq!(
        messages(n1),
        [
            json!({"from": "volley"}),
            json!({"room": "volley"}),
            json!({"direct": "to n1"})
        ]
    );
    let v1_messages = messages(v1);
    assert_eq!(v1_messages.len(), 2, "{v1:?}");
    assert_eq!(v1_messages[0]["from"], "volley");
    assert_eq!(v1_messages[0]["_volley"]["channel"], "all");
    assert_eq!(v1_messages[1]["room"], "volley");
    assert_eq!(v1_messages[1]["_volley"]["channel"], "room:lobby");
    // The Node server's broadcast, room emit and emit to volley's socket id reach v1.
    for event in [
        json!(["from_node", 1]),
        json!(["node_lobby", 2]),
        json!(["direct_to_volley_client", 3]),
        json!(["vip", 4]),
    ] {
        assert_eq!(
            v1.iter().filter(|e| **e == event).count(),
            1,
            "{event} in {v1:?}"
        );
    }
    // A push published with `?event=chat` is the event `chat` on both sides, once each.
    let chats = |log: &[Value]| -> Vec<Value> {
        log.iter()
            .filter(|e| e[0] == "chat")
            .map(|e| e[1].clone())
            .collect()
    };
    assert_eq!(chats(n1), [json!({"named": true})], "{n1:?}");
    let v1_chats = chats(v1);
    assert_eq!(v1_chats.len(), 1, "{v1:?}");
    assert_eq!(v1_chats[0]["named"], true);
    assert!(!events(n1).contains(&"direct_to_volley_client"));
    assert!(!events(n1).contains(&"vip"), "only v1 joined vip: {n1:?}");
    // Requests that wait for every server complete, volley's shards answering for theirs.
    let fetched = line(&lines, "fetched")["fetched"].as_array().unwrap();
    let v1_fetched = fetched.iter().find(|s| s["id"] == v1_id).unwrap();
    let mut rooms = vec![v1_id.as_str().unwrap().to_string(), "lobby".to_string()];
    rooms.sort();
    assert_eq!(v1_fetched["rooms"], json!(rooms));
    assert_eq!(v1_fetched["data"]["user"], "vic");
    assert!(fetched.iter().any(|s| s["id"] == n1_id));
    let all_rooms = line(&lines, "all_rooms")["all_rooms"].as_array().unwrap();
    assert!(all_rooms.contains(&json!("lobby")) && all_rooms.contains(&v1_id));
    assert_eq!(
        line(&lines, "server_side_emit")["server_side_emit"],
        json!([null, null]),
        "one answer per volley shard"
    );
    assert!(v.total("socketio_adapter_published_total") >= 3);
    assert!(v.total("socketio_adapter_responses_total") >= 2 * 3);
}

#[test]
fn garbage_on_socket_io_channels_is_counted_and_the_link_keeps_delivering_and_comes_back() {
    let mut redis = Redis::start();
    let v = volley(&redis, &[]);
    wait_subscribed(&redis, &["/"], 2);
    for (channel, payload) in [
        // MessagePack of the wrong shape, not MessagePack, not JSON.
        ("socket.io#/#", "A"),
        ("socket.io#/#", "not msgpack at all"),
        ("socket.io-request#/#", "{nope"),
        ("socket.io-request#/#", "{\"type\":\"what\"}"),
    ] {
        let reply = redis.try_command(&["PUBLISH", channel, payload]).unwrap();
        assert_eq!(reply, ":2", "both shards got {payload:?}");
    }
    // Each shard reads and counts its own copy.
    v.wait_for("every copy counted", |s| {
        s["total"]["socketio_adapter_malformed_total"].as_u64() == Some(8)
    });
    let lines = scenario("once", &redis, &[http(&v)], &[&v]);
    assert_eq!(log_of(&lines, "c")[0], json!(["still_works", 1]));
    assert_eq!(v.total("redis_reconnects_total"), 0);
    let (status, metrics) = request(v.addr, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    assert!(metrics.contains("volley_socketio_adapter_malformed_total{shard=\"0\"}"));
    // After Redis comes back, every shard subscribes socket.io's channels again.
    redis.kill();
    redis.restart();
    wait_subscribed(&redis, &["/"], 2);
    let lines = scenario("once", &redis, &[http(&v)], &[&v]);
    assert_eq!(log_of(&lines, "c")[0], json!(["still_works", 1]));
}
