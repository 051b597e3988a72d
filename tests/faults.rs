//! Truth under Redis faults (issue 11), with real volley processes, a real redis-server and
//! real clients: a Redis that hangs (SIGSTOP), restarts empty, loses its subscriber links,
//! starts asking for a password, runs out of memory, or sits behind a link that stalls.
//! Each test checks what publishers were told against what clients got: every 200 is
//! delivered exactly once to every recipient, nothing answered 502/503 is delivered, a 504
//! is delivered at most once (exactly once when retried with its Idempotency-Key), and a
//! resume that history cannot cover says `recovered: false`.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::faultproxy::{FaultProxy, Mode};
use common::redis::*;
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn node(url: &str) -> Server {
    Server::start(&["--shards", "2", "--redis", url, "--presence-ttl-s", "3"])
}

/// POST with headers; (status, body).
fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let raw = read_to_close(&mut stream);
    let (status, body) = parse_response(&raw).unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn health(server: &Server) -> Value {
    let (_, body) = request(server.addr, "GET", "/healthz", b"");
    serde_json::from_str(&body).unwrap()
}

fn wait_health(server: &Server, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = health(server);
        if check(&answer) {
            return answer;
        }
        assert!(Instant::now() < deadline, "{what}: {answer}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every `message` a client gets until nothing arrives for `quiet`, bounded by WAIT.
fn drain(client: &mut Client, quiet: Duration) -> Vec<Value> {
    set_read_timeout(client, quiet);
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        match client.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] == "message" {
                    out.push(value);
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    set_read_timeout(client, WAIT);
    out
}

/// Raw RESP commands on one connection (one that authenticated before a password was set
/// stays authenticated); returns the raw replies.
fn redis_raw(port: u16, commands: &[&[&str]]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut wire = String::new();
    for args in commands {
        wire.push_str(&format!("*{}\r\n", args.len()));
        for arg in *args {
            wire.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
    }
    stream.write_all(wire.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// What one publisher was told, by message number.
#[derive(Default)]
struct Outcomes {
    by_n: BTreeMap<u64, u16>,
}

impl Outcomes {
    /// Checks one client's messages (payload = the number) against the answers.
    fn check(&self, messages: &[Value], who: &str) {
        let mut seen: HashMap<u64, u32> = HashMap::new();
        for m in messages {
            if let Some(n) = m["data"].as_u64() {
                *seen.entry(n).or_default() += 1;
            }
        }
        for (n, status) in &self.by_n {
            let got = seen.get(n).copied().unwrap_or(0);
            match status {
                200 => assert_eq!(
                    got, 1,
                    "{who}: message {n} answered 200, delivered {got} times"
                ),
                502 | 503 => assert_eq!(
                    got, 0,
                    "{who}: message {n} answered {status}, delivered {got} times"
                ),
                504 => assert!(
                    got <= 1,
                    "{who}: message {n} answered 504, delivered {got} times"
                ),
                other => panic!("{who}: message {n}: unexpected status {other}"),
            }
        }
        for n in seen.keys() {
            assert!(self.by_n.contains_key(n), "{who}: got {n}, never published");
        }
    }
}

#[test]
fn a_hung_redis_gets_504_or_503_and_retries_with_the_key_deliver_exactly_once() {
    let redis = Redis::start();
    let a = node(&redis.url());
    let b = node(&redis.url());
    let mut on_a = connect_native(a.addr, "user=ann");
    let mut on_b = connect_native(b.addr, "user=bob");
    // Both subscribed: a warm-up broadcast reaches both.
    redis.wait_numsub("volley:all", 2);
    let warm = post(a.addr, "/api/broadcast", &[], "0");
    assert_eq!(warm.0, 200, "{}", warm.1);
    assert_eq!(next_message(&mut on_a)["data"], 0);
    assert_eq!(next_message(&mut on_b)["data"], 0);

    let addr = a.addr;
    let publisher = std::thread::spawn(move || {
        let mut outcomes = Outcomes::default();
        let mut answers: Vec<u16> = Vec::new();
        for n in 1..=60u64 {
            let key = format!("hung-{n}");
            // A 504 or 503 is retried with the same key until Redis answers 200: published
            // once, by whichever try got through (a 504's try may have, later).
            let mut status = 0;
            for _ in 0..60 {
                let (s, body) = post(
                    addr,
                    "/api/broadcast",
                    &[("Idempotency-Key", &key)],
                    &n.to_string(),
                );
                answers.push(s);
                status = s;
                if s == 504 || s == 503 {
                    assert_eq!(body["id"], key, "the answer names the id to retry with");
                    std::thread::sleep(Duration::from_millis(300));
                    continue;
                }
                break;
            }
            outcomes.by_n.insert(n, status);
            std::thread::sleep(Duration::from_millis(100));
        }
        (outcomes, answers)
    });
    std::thread::sleep(Duration::from_millis(1500));
    a.wait_for("some published", |s| {
        s["total"]["broadcasts_total"].as_u64() > Some(4)
    });
    // SAFETY: a plain kill(2) on the redis-server this test started.
    let pid = redis_pid(&redis);
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let degraded = wait_health(&a, "degraded while Redis hangs", |h| {
        h["status"] == "degraded"
    });
    assert!(
        degraded["reason"].as_str().unwrap().contains("Redis"),
        "{degraded}"
    );
    std::thread::sleep(Duration::from_secs(3));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let (outcomes, answers) = publisher.join().unwrap();
    wait_health(&a, "ok again", |h| h["status"] == "ok");
    assert!(
        answers.iter().any(|&s| s == 504 || s == 503),
        "the stall was seen: {answers:?}"
    );
    assert!(
        answers.iter().all(|s| [200, 503, 504].contains(s)),
        "{answers:?}"
    );
    assert!(
        outcomes.by_n.values().all(|&s| s == 200),
        "every message got through in the end"
    );
    let on_a_got = drain(&mut on_a, Duration::from_secs(3));
    let on_b_got = drain(&mut on_b, Duration::from_secs(1));
    outcomes.check(&on_a_got, "client on a");
    outcomes.check(&on_b_got, "client on b");
}

/// The pid of the redis-server listening on the test's port.
fn redis_pid(redis: &Redis) -> i32 {
    let info = redis.try_command(&["INFO", "server"]).unwrap();
    info.split_whitespace()
        .find_map(|w| w.strip_prefix("process_id:"))
        .and_then(|p| p.parse().ok())
        .expect("process_id in INFO server")
}

#[test]
fn a_redis_restarted_empty_starts_a_new_epoch_and_resumes_say_so() {
    let mut redis = Redis::start();
    let a = node(&redis.url());
    let mut ann = connect_native(a.addr, "user=ann");
    send_op(&mut ann, json!({"op": "join", "room": "r", "ref": 1}));
    assert_eq!(next_json(&mut ann)["ok"], true);
    let mut old_epoch = 0;
    for n in 1..=5 {
        post_json(&a, "/api/rooms/r/messages", &n.to_string());
        let m = next_message(&mut ann);
        assert_eq!(m["seq"], n);
        old_epoch = m["epoch"].as_u64().expect("messages carry their epoch");
    }
    redis.kill();
    redis.restart();
    wait_health(&a, "ok after the restart", |h| h["status"] == "ok");
    // The new numbering starts at 1 in a new epoch; connected clients see it.
    let mut new_epoch = 0;
    for n in 1..=3u64 {
        let answer = post_json(&a, "/api/rooms/r/messages", &format!("{}", 100 + n));
        assert_eq!(answer["seq"], n);
        new_epoch = answer["epoch"].as_u64().unwrap();
        let m = next_message(&mut ann);
        assert_eq!(
            (m["seq"].as_u64(), m["data"].as_u64()),
            (Some(n), Some(100 + n))
        );
    }
    assert_ne!(
        new_epoch, old_epoch,
        "a counter created again gets a new epoch"
    );
    // A client that saw seq 5 of the old numbering: not a recovery, and nothing live lost.
    let token = resume_token(json!({"room:r": [5, old_epoch]}));
    let mut back = connect_native(a.addr, &format!("user=bea&resume={token}"));
    let mut replayed = Vec::new();
    let event = loop {
        let frame = next_json(&mut back);
        match frame["type"].as_str() {
            Some("recovered") => break frame,
            Some("message") => replayed.push(frame),
            _ => {}
        }
    };
    assert_eq!(event["recovered"], false, "{event}");
    assert!(
        event["reason"].as_str().unwrap().contains("restarted"),
        "{event}"
    );
    assert_eq!(event["epoch"], new_epoch);
    assert_eq!(
        seqs_of(&replayed, "room:r"),
        [1, 2, 3],
        "the new numbering from its start"
    );
    post_json(&a, "/api/rooms/r/messages", "104");
    assert_eq!(
        next_message(&mut back)["seq"],
        4,
        "seq 4 is not mistaken for a duplicate"
    );
    // A client with no epoch whose seq is past the channel: not a recovery either.
    let token = resume_token(json!({"room:r": 24}));
    let mut ahead = connect_native(a.addr, &format!("user=cy&resume={token}"));
    let event = loop {
        let frame = next_json(&mut ahead);
        if frame["type"] == "recovered" {
            break frame;
        }
    };
    assert_eq!(event["recovered"], false, "{event}");
    assert!(
        event["reason"].as_str().unwrap().contains("ahead"),
        "{event}"
    );
    post_json(&a, "/api/rooms/r/messages", "105");
    assert_eq!(next_message(&mut ahead)["seq"], 5);
}

#[test]
fn killed_subscriber_links_cost_connected_clients_nothing() {
    let redis = Redis::start();
    let a = node(&redis.url());
    let b = node(&redis.url());
    let mut ann = connect_native(a.addr, "user=ann");
    send_op(&mut ann, json!({"op": "join", "room": "r", "ref": 1}));
    assert_eq!(next_json(&mut ann)["ok"], true);
    let addr = b.addr;
    let publisher = std::thread::spawn(move || {
        let mut outcomes = Outcomes::default();
        for n in 1..=150u64 {
            // Room and user messages; a 503 (a shard resubscribing) is retried: it was not
            // published.
            let path = if n % 3 == 0 {
                "/api/users/ann/messages"
            } else {
                "/api/rooms/r/messages"
            };
            let mut status = 0;
            for _ in 0..50 {
                status = post(addr, path, &[], &n.to_string()).0;
                if status != 503 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            outcomes.by_n.insert(n, status);
            std::thread::sleep(Duration::from_millis(15));
        }
        outcomes
    });
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(600));
        let killed = redis
            .try_command(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .unwrap();
        assert!(killed.starts_with(':'), "{killed}");
    }
    let outcomes = publisher.join().unwrap();
    assert!(
        outcomes.by_n.values().all(|&s| s == 200),
        "every publish went out in the end"
    );
    let got = drain(&mut ann, Duration::from_secs(2));
    outcomes.check(&got, "ann");
    let room: Vec<u64> = seqs_of(&got, "room:r");
    assert_eq!(
        room,
        (1..=room.len() as u64).collect::<Vec<_>>(),
        "room in order, no gap"
    );
    assert_eq!(
        redis.try_command(&["HLEN", "volley:inbox:ann"]).as_deref(),
        Some(":0"),
        "ann was online all along: nothing went to her inbox"
    );
    assert!(
        a.total("gap_replayed_total") > 0 || room.len() == 100,
        "caught up or never missed"
    );
}

#[test]
fn a_new_password_on_a_running_redis_degrades_without_a_reconnect_storm() {
    let redis = Redis::start();
    let a = node(&redis.url());
    wait_health(&a, "ok", |h| h["status"] == "ok");
    let log_before = a.stderr().lines().count();
    redis_raw(
        redis.port,
        &[
            &["CONFIG", "SET", "requirepass", "now-a-secret"],
            &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"],
            &["CLIENT", "KILL", "TYPE", "pubsub"],
        ],
    );
    let degraded = wait_health(&a, "degraded", |h| h["status"] == "degraded");
    assert!(
        degraded["reason"].as_str().unwrap().contains("NOAUTH"),
        "{degraded}"
    );
    let (status, body) = post(a.addr, "/api/broadcast", &[], "1");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("nothing was published"),
        "{body}"
    );
    let (status, body) = request(a.addr, "GET", "/api/users/ann/presence", b"");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("presence read"),
        "the error names the read: {body}"
    );
    std::thread::sleep(Duration::from_secs(5));
    let log = a.stderr();
    let new_lines: Vec<&str> = log.lines().skip(log_before).collect();
    // Four links (2 shards x 2): one line each when it went down, not one per retry.
    assert!(
        new_lines.len() <= 8,
        "a reconnect storm in the log: {new_lines:#?}"
    );
    assert!(
        a.total("redis_reconnects_total") <= 8,
        "{}",
        a.total("redis_reconnects_total")
    );
}

#[test]
fn a_full_redis_degrades_health_and_keeps_live_nodes_present() {
    let redis = Redis::start();
    let a = node(&redis.url());
    let _ann = connect_native(a.addr, "user=ann");
    a.wait_for("ann counted", |_| {
        get_json(&a, "/api/users/ann/presence")["online"] == true
    });
    redis
        .try_command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .unwrap();
    redis
        .try_command(&["CONFIG", "SET", "maxmemory", "1"])
        .unwrap();
    let (status, body) = post(a.addr, "/api/broadcast", &[], "1");
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].as_str().unwrap().contains("OOM"), "{body}");
    let degraded = wait_health(&a, "degraded", |h| h["status"] == "degraded");
    assert!(
        degraded["reason"]
            .as_str()
            .unwrap()
            .contains("refuses writes"),
        "{degraded}"
    );
    // Longer than --presence-ttl-s 3: the heartbeat is kept alive with EXPIRE.
    std::thread::sleep(Duration::from_secs(5));
    let presence = get_json(&a, "/api/users/ann/presence");
    assert_eq!(presence["online"], true, "{presence}");
    redis
        .try_command(&["CONFIG", "SET", "maxmemory", "0"])
        .unwrap();
    wait_health(&a, "ok when Redis takes writes again", |h| {
        h["status"] == "ok"
    });
    post_json(&a, "/api/broadcast", "2");
}

#[test]
fn presence_is_rebuilt_after_redis_restarts_empty() {
    let mut redis = Redis::start();
    let a = node(&redis.url());
    let b = node(&redis.url());
    let mut ann = connect_native(a.addr, "user=ann");
    let mut bob = connect_native(b.addr, "user=bob");
    for client in [&mut ann, &mut bob] {
        send_op(client, json!({"op": "join", "room": "r", "ref": 1}));
        assert_eq!(next_json(client)["ok"], true);
    }
    let room = get_json(&a, "/api/rooms/r/presence");
    assert_eq!(room["members"], json!(["ann", "bob"]), "{room}");
    redis.kill();
    redis.restart();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = request(a.addr, "GET", "/api/rooms/r/presence", b"");
        let room: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let (_, ann_online) = request(b.addr, "GET", "/api/users/ann/presence", b"");
        let ann_online: Value = serde_json::from_str(&ann_online).unwrap_or(Value::Null);
        if status == 200 && room["members"] == json!(["ann", "bob"]) && ann_online["online"] == true
        {
            assert_eq!(room["connections"], 2, "{room}");
            assert_eq!(ann_online["connections"], 1, "{ann_online}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "presence not rebuilt: {status} {body} {ann_online}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(a.total("presence_resyncs_total") >= 1);
}

#[test]
fn a_stalled_link_is_seen_within_seconds_and_answers_stay_true() {
    let redis = Redis::start();
    let proxy = FaultProxy::start(redis.port);
    let a = node(&proxy.url());
    let mut ann = connect_native(a.addr, "user=ann");
    redis.wait_numsub("volley:all", 1);
    post_json(&a, "/api/broadcast", "0");
    assert_eq!(next_message(&mut ann)["data"], 0);
    proxy.set(Mode::Stall);
    // Let the pumps see the mode: bytes already on their way are held from here on.
    std::thread::sleep(Duration::from_millis(100));
    let stalled_at = Instant::now();
    let (status, body) = post(
        a.addr,
        "/api/broadcast",
        &[("Idempotency-Key", "stall-1")],
        "1",
    );
    assert!(status == 504 || status == 503, "{status} {body}");
    let degraded = wait_health(&a, "degraded", |h| h["status"] == "degraded");
    assert!(
        degraded["reason"].as_str().unwrap().contains("stalled")
            || degraded["reason"].as_str().unwrap().contains("no answer"),
        "{degraded}"
    );
    assert!(
        stalled_at.elapsed() < Duration::from_secs(8),
        "noticed in seconds"
    );
    // A publish now is refused (503: that shard's link is already down) or written into the
    // stall (504: another shard's command link has not timed out yet); never a 200.
    let (second, body) = post(a.addr, "/api/broadcast", &[], "2");
    assert!(second == 503 || second == 504, "{second} {body}");
    if second == 504 {
        // It had no key: the answer must not promise that a retry is safe.
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("no Idempotency-Key"),
            "{body}"
        );
    }
    proxy.set(Mode::Pass);
    proxy.cut();
    wait_health(&a, "ok", |h| h["status"] == "ok");
    // The stalled publish was never written past the proxy: a retry publishes it once.
    let mut retry = post(
        a.addr,
        "/api/broadcast",
        &[("Idempotency-Key", "stall-1")],
        "1",
    );
    for _ in 0..20 {
        if retry.0 == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        retry = post(
            a.addr,
            "/api/broadcast",
            &[("Idempotency-Key", "stall-1")],
            "1",
        );
    }
    assert_eq!(retry.0, 200, "{}", retry.1);
    let mut outcomes = Outcomes::default();
    outcomes.by_n.insert(1, 200);
    outcomes.by_n.insert(2, second);
    outcomes.check(&drain(&mut ann, Duration::from_secs(2)), "ann");
}

/// Issue 11, item 4: the inbox is for users who are really offline. Redis restarts empty and
/// one process (`a`) is back before the other (`b`, behind a proxy that holds its links
/// away): Redis then knows nothing of `b`, neither its heartbeat nor its presence counts nor
/// its subscriptions, so a user message published through `a` to ann, who is connected to
/// `b` all along, reaches no subscriber and looks like one for an offline user. ann must get
/// each such message exactly once, live (from `b`'s catch-up), and never again later from
/// her inbox; the publisher must be told what happened.
#[test]
fn an_online_user_on_a_late_node_after_an_empty_restart_gets_each_message_once() {
    let mut redis = Redis::start();
    let proxy = FaultProxy::start(redis.port);
    let a = node(&redis.url());
    let b = node(&proxy.url());
    let mut ann = connect_native(b.addr, "user=ann");
    redis.wait_numsub("volley:user:ann", 1);
    let (status, warm) = post(a.addr, "/api/users/ann/messages", &[], "0");
    assert_eq!((status, &warm["nodes"]), (200, &json!(1)), "{warm}");
    assert!(warm.get("inbox").is_none(), "ann got it: {warm}");
    assert_eq!(next_message(&mut ann)["data"], 0);

    // From here `b` cannot reach Redis: its links die with the old server, and every new
    // connection it makes is accepted by the proxy and never forwarded.
    proxy.set(Mode::Blackhole);
    redis.kill();
    redis.restart();
    wait_health(&a, "a back on the new Redis", |h| h["status"] == "ok");
    let mut outcomes = Outcomes::default();
    let mut answers = Vec::new();
    for n in 1..=5u64 {
        // A 503 (a shard of `a` not resubscribed yet) published nothing: try again.
        let mut answer = post(a.addr, "/api/users/ann/messages", &[], &n.to_string());
        for _ in 0..50 {
            if answer.0 != 503 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            answer = post(a.addr, "/api/users/ann/messages", &[], &n.to_string());
        }
        outcomes.by_n.insert(n, answer.0);
        answers.push(answer);
    }
    let b_away = health(&b)["status"] == "degraded";
    let kept = redis.try_command(&["HLEN", "volley:inbox:ann"]).unwrap();
    eprintln!("answers while b was away: {answers:?}; inbox: {kept}");

    proxy.set(Mode::Pass);
    wait_health(&b, "b back on the new Redis", |h| h["status"] == "ok");
    let mut got = drain(&mut ann, Duration::from_secs(2));
    eprintln!(
        "ann (online on b) got: {:?}",
        got.iter().map(|m| m["data"].clone()).collect::<Vec<_>>()
    );
    // b removes what it delivered right after its catch-up; wait for it, within bounds.
    let deadline = Instant::now() + WAIT;
    let left = loop {
        let left = redis.try_command(&["HLEN", "volley:inbox:ann"]).unwrap();
        if left == ":0" || Instant::now() >= deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("inbox after b's catch-up: {left}");
    // ann's next connection: whatever is still in her inbox is delivered to it.
    let mut again = connect_native(a.addr, "user=ann");
    let later = drain(&mut again, Duration::from_secs(2));
    eprintln!(
        "ann's next connection got: {:?}",
        later.iter().map(|m| m["data"].clone()).collect::<Vec<_>>()
    );

    assert!(b_away, "b was still away while a published");
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["nodes"], 0, "no subscriber got it: {answer}");
        assert_eq!(
            answer["recipients"], 0,
            "a holds no connection of ann: {answer}"
        );
        assert_eq!(
            answer["inbox"], true,
            "the answer says it was kept for a user no server could be found for: {answer}"
        );
    }
    assert_eq!(kept, ":5", "nobody could tell ann was online: kept for her");
    got.extend(drain(&mut ann, Duration::from_millis(500)));
    got.extend(later);
    outcomes.check(&got, "ann");
    assert_eq!(left, ":0", "what the catch-up delivered left the inbox");
    assert!(b.total("gap_replayed_total") >= 5, "b caught ann up");
    assert_eq!(a.total("inbox_stored_total"), 5);
    assert_eq!(b.total("inbox_caught_up_total"), 5);
}
