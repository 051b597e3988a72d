//! Cluster mode against a real `redis-server` started by the test on a free port: two
//! volley processes share broadcasts exactly once, subscriptions follow clients, Redis can
//! vanish and come back, and a foreign publisher (Python) reaches volley clients.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::redis::*;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};
use tungstenite::Message;

fn health(server: &Server) -> serde_json::Value {
    let (_, body) = request(server.addr, "GET", "/healthz", b"");
    serde_json::from_str(&body).unwrap()
}

fn wait_health(server: &Server, status: &str) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let h = health(server);
        if h["status"] == status {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "health never became {status}: {h}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Shards of this process that hold at least one client.
fn shards_with_clients(server: &Server) -> u64 {
    server.stats()["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["connections"].as_u64().unwrap() > 0)
        .count() as u64
}

fn post(server: &Server, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let (status, answer) = request(server.addr, "POST", path, body);
    (
        status,
        serde_json::from_str(&answer).unwrap_or_else(|_| panic!("not JSON: {answer}")),
    )
}

/// A ping answered by a pong proves nothing else was queued before it.
fn assert_nothing_pending(client: &mut Client) {
    client.send(Message::Ping("probe".into())).unwrap();
    loop {
        match client.read().unwrap() {
            Message::Pong(p) if &p[..] == b"probe" => return,
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected extra message: {other:?}"),
        }
    }
}

#[test]
fn a_broadcast_to_either_process_reaches_every_client_of_both_exactly_once() {
    let redis = Redis::start();
    let a = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    let b = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    let mut a_clients: Vec<Client> = (0..40).map(|_| connect(&a)).collect();
    let mut b_clients: Vec<Client> = (0..40).map(|_| connect(&b)).collect();
    a.wait_for("A's clients", |s| s["total"]["connections"] == 40);
    b.wait_for("B's clients", |s| s["total"]["connections"] == 40);
    let subscribed = shards_with_clients(&a) + shards_with_clients(&b);
    redis.wait_numsub("volley:all", subscribed);

    for (round, (publisher, local)) in [(&a, 40), (&b, 40)].into_iter().enumerate() {
        let text = format!("cluster message {round}");
        let (status, answer) = post(publisher, "/api/broadcast", text.as_bytes());
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["nodes"], subscribed,
            "one subscriber per shard with clients: {answer}"
        );
        assert_eq!(
            answer["recipients"], local,
            "recipients are this process's: {answer}"
        );
        for client in a_clients.iter_mut().chain(b_clients.iter_mut()) {
            assert_eq!(next_data(client), Message::text(text.clone()));
        }
    }
    for client in a_clients.iter_mut().chain(b_clients.iter_mut()) {
        assert_nothing_pending(client);
    }
    assert_eq!(a.total("redis_envelope_errors_total"), 0);
    assert_eq!(a.total("redis_messages_total"), 2 * shards_with_clients(&a));
}

#[test]
fn subscriptions_follow_clients() {
    let redis = Redis::start();
    let server = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    wait_health(&server, "ok");
    assert_eq!(redis.numsub("volley:all"), 0, "no clients, no subscription");
    let clients: Vec<Client> = (0..30).map(|_| connect(&server)).collect();
    server.wait_for("clients", |s| s["total"]["connections"] == 30);
    redis.wait_numsub("volley:all", shards_with_clients(&server));
    drop(clients);
    server.wait_for("clients gone", |s| s["total"]["connections"] == 0);
    redis.wait_numsub("volley:all", 0);
    // A custom prefix names the channel.
    let other = Server::start(&[
        "--shards",
        "1",
        "--redis",
        &redis.url(),
        "--redis-prefix",
        "teamb",
    ]);
    let _client = connect(&other);
    redis.wait_numsub("teamb:all", 1);
    assert_eq!(redis.numsub("volley:all"), 0);
}

#[test]
fn redis_vanishing_degrades_then_recovers_without_duplicates() {
    let mut redis = Redis::start();
    let server = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    let mut clients: Vec<Client> = (0..10).map(|_| connect(&server)).collect();
    server.wait_for("clients", |s| s["total"]["connections"] == 10);
    redis.wait_numsub("volley:all", shards_with_clients(&server));
    assert_eq!(wait_health(&server, "ok")["redis"], redis.url());

    redis.kill();
    let h = wait_health(&server, "degraded");
    assert!(h["reason"].as_str().unwrap().contains("Redis"), "{h}");
    let (status, answer) = post(&server, "/api/broadcast", b"lost?");
    assert_eq!(status, 503, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains(&redis.url()) && error.contains("scope=local"),
        "{error}"
    );
    let (status, answer) = post(&server, "/api/broadcast?scope=local", b"local only");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["recipients"], 10);
    for client in &mut clients {
        assert_eq!(next_data(client), Message::text("local only"));
    }
    assert!(server.total("redis_publish_errors_total") >= 1);

    redis.restart();
    wait_health(&server, "ok");
    redis.wait_numsub("volley:all", shards_with_clients(&server));
    let (status, answer) = post(&server, "/api/broadcast", b"back again");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["recipients"], 10);
    for client in &mut clients {
        assert_eq!(next_data(client), Message::text("back again"));
        assert_nothing_pending(client);
    }
    assert!(
        server.total("redis_reconnects_total") >= 2,
        "both links of every shard reconnected"
    );
    let metrics = request(server.addr, "GET", "/metrics", b"").1;
    assert!(
        metrics.contains("volley_redis_up{shard=\"0\"} 1"),
        "{metrics}"
    );
}

#[test]
fn redis_unreachable_at_start_serves_local_clients() {
    let port = free_port();
    let server = Server::start(&[
        "--shards",
        "1",
        "--redis",
        &format!("redis://127.0.0.1:{port}"),
    ]);
    let h = wait_health(&server, "degraded");
    assert!(
        h["reason"].as_str().unwrap().contains(&port.to_string()),
        "{h}"
    );
    let mut client = connect(&server);
    server.wait_for("client", |s| s["total"]["connections"] == 1);
    let (status, _) = post(&server, "/api/broadcast", b"x");
    assert_eq!(status, 503);
    let (status, answer) = post(&server, "/api/broadcast?scope=local", b"still here");
    assert_eq!((status, answer["recipients"].as_u64()), (200, Some(1)));
    assert_eq!(next_data(&mut client), Message::text("still here"));
    let (status, answer) = post(&server, "/api/broadcast?scope=everywhere", b"x");
    assert_eq!(status, 400, "{answer}");
    assert!(
        server.stderr().contains("is down"),
        "one log line per state change: {}",
        server.stderr()
    );
    assert_eq!(
        server.stderr().matches("subscriber link").count(),
        1,
        "not one line per retry: {}",
        server.stderr()
    );
}

#[test]
fn the_documented_envelope_published_from_python_reaches_clients() {
    let has_modules = Command::new("python3")
        .args(["-c", "import redis, msgpack"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        has_modules,
        "python3 with `redis` and `msgpack` is needed; run tools/test.sh (it installs them)"
    );
    let redis = Redis::start();
    let server = Server::start(&["--shards", "2", "--redis", &redis.url()]);
    let mut clients: Vec<Client> = (0..6).map(|_| connect(&server)).collect();
    server.wait_for("clients", |s| s["total"]["connections"] == 6);
    let subscribed = shards_with_clients(&server);
    redis.wait_numsub("volley:all", subscribed);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/publish_redis.py");
    for (args, want) in [
        (vec!["from python"], Message::text("from python")),
        (
            vec!["--binary", "raw bytes"],
            Message::binary(b"raw bytes".to_vec()),
        ),
    ] {
        let out = Command::new("python3")
            .arg(script)
            .args(["--redis", &redis.url()])
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            subscribed.to_string()
        );
        for client in &mut clients {
            assert_eq!(next_data(client), want);
        }
    }
    // Garbage on the channel is dropped and counted, and nobody is harmed.
    redis
        .try_command(&["PUBLISH", "volley:all", "not msgpack"])
        .unwrap();
    server.wait_for("the bad envelope to be counted", |s| {
        s["total"]["redis_envelope_errors_total"].as_u64() >= Some(1)
    });
    for client in &mut clients {
        assert_nothing_pending(client);
    }
}

#[test]
fn credentials_from_the_url_and_redis_error_replies_in_words() {
    let redis = Redis::start_with(&["--requirepass", "s3cret"]);
    // Wrong password: degraded, with Redis's own words, and the password never shown.
    let wrong = Server::start(&[
        "--shards",
        "1",
        "--redis",
        &format!("redis://:nope@127.0.0.1:{}", redis.port),
    ]);
    // Degraded from the start ("connecting"), then with Redis's refusal once it answered.
    let deadline = Instant::now() + WAIT;
    let h = loop {
        let h = wait_health(&wrong, "degraded");
        if h["reason"].as_str().unwrap().contains("WRONGPASS") {
            break h;
        }
        assert!(Instant::now() < deadline, "no WRONGPASS in {h}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !wrong.stderr().contains("nope"),
        "the password is not logged: {}",
        wrong.stderr()
    );
    assert!(!h.to_string().contains("nope"));

    // Right password: ok, and a broadcast goes through.
    let right = Server::start(&[
        "--shards",
        "1",
        "--redis",
        &format!("redis://:s3cret@127.0.0.1:{}/0", redis.port),
    ]);
    wait_health(&right, "ok");
    let mut client = connect(&right);
    redis.wait_numsub("volley:all", 1);
    let (status, answer) = post(&right, "/api/broadcast", b"authenticated");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(next_data(&mut client), Message::text("authenticated"));

    // A user that may not PUBLISH: Redis's NOPERM reaches the API caller in words.
    let acl = redis
        .try_command(&[
            "ACL", "SETUSER", "pusher", "on", ">pw", "~*", "&*", "+@all", "-publish",
        ])
        .unwrap();
    assert_eq!(acl, "+OK");
    let limited = Server::start(&[
        "--shards",
        "1",
        "--redis",
        &format!("redis://pusher:pw@127.0.0.1:{}", redis.port),
    ]);
    wait_health(&limited, "ok");
    let (status, answer) = post(&limited, "/api/broadcast", b"forbidden");
    assert_eq!(status, 502, "{answer}");
    let error = answer["error"].as_str().unwrap();
    // Redis's own words: NOPERM for a plain command, or the script's ACL refusal.
    assert!(
        error.contains("refused")
            && (error.contains("NOPERM") || error.contains("can't run this command")),
        "{error}"
    );
    assert_eq!(limited.total("redis_publish_errors_total"), 1);
}
