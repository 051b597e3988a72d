//! The deploy/ recipes, for real: haproxy and nginx (Debian packages) run deploy/haproxy.cfg
//! and deploy/nginx.conf as they are (only addresses, ports and paths substituted), terminate
//! TLS with a certificate made by the test, and balance over two volley processes joined by
//! a real redis-server. For each proxy, over wss:// and https://:
//! - a broadcast reaches every client exactly once, and the API is refused outside trusted
//!   networks;
//! - a drain: SIGTERM one volley; its clients get 1001, reconnect through the proxy onto the
//!   other volley, resume with `?resume=` and get every message published meanwhile, in
//!   order, once; the stopped volley is out (haproxy's /healthz check says DOWN; new
//!   connections and pinned socket.io clients all land on the live one);
//! - sticky `/socket.io/` routing: the same client (cookie or address) lands on the same
//!   volley, seen both in the proxy's `X-Volley-Backend` header and in the volleys' own
//!   request counters (volley does not serve socket.io yet; routing does not depend on it).
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::proxy::{Kind, Proxy, TempDir, Tls};
use common::redis::Redis;
use common::*;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;

/// Clients per test: enough that both volleys hold several.
const CLIENTS: usize = 8;
/// Broadcasts published while one volley drains.
const DURING_DRAIN: u64 = 20;

/// Redis, two volley processes on two loopback ports, and the proxy in front of them.
/// Tests bind the fields in this order, so they drop in the reverse one: the proxy stops
/// first, and the directory with its logs goes last.
struct Stack {
    _dir: TempDir,
    redis: Redis,
    volleys: [Server; 2],
    proxy: Proxy,
}

fn stack(kind: Kind) -> Stack {
    common::proxy::require(kind.binary());
    let dir = TempDir::new(kind.binary());
    let tls = Tls::make(&dir.0);
    let redis = Redis::start();
    let url = redis.url();
    let node = || Server::start(&["--shards", "1", "--redis", url.as_str()]);
    let volleys = [node(), node()];
    let proxy = Proxy::start(kind, [volleys[0].addr, volleys[1].addr], &dir.0, &tls);
    Stack {
        _dir: dir,
        redis,
        volleys,
        proxy,
    }
}

/// Frames until the `recovered` event of one channel; returns the messages before it.
fn recover_one(client: &mut Client) -> (Vec<Value>, Value) {
    let mut messages = Vec::new();
    loop {
        let frame = next_json(client);
        match frame["type"].as_str() {
            Some("recovered") => return (messages, frame),
            Some("message") => messages.push(frame),
            _ => {}
        }
    }
}

/// Reads `all` messages until seq `last`; returns their seqs in arrival order.
fn seqs_until(client: &mut Client, mut messages: Vec<Value>, last: u64) -> Vec<u64> {
    while !messages
        .iter()
        .any(|m| m["channel"] == "all" && m["seq"] == last)
    {
        messages.push(next_message(client));
    }
    seqs_of(&messages, "all")
}

fn broadcast_through(proxy: &Proxy, body: &str) -> Value {
    let r = proxy.https(None, "POST", "/api/broadcast", body.as_bytes(), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).unwrap()
}

fn broadcast_reaches_everyone_once_then_a_drain_loses_nothing(kind: Kind) {
    let Stack {
        _dir,
        redis,
        volleys: [mut a, b],
        proxy,
    } = stack(kind);

    // Plain http:// only redirects to https://.
    let redirect = proxy.http("/ws?user=x");
    assert_eq!(redirect.status, 301, "{redirect:?}");
    assert!(
        redirect
            .header("location")
            .is_some_and(|l| l.starts_with("https://") && l.ends_with("/ws?user=x")),
        "{redirect:?}"
    );

    // Clients over wss://, spread over both volleys (the proxy says which; each volley's own
    // connection count agrees).
    let mut clients: Vec<(Client, usize)> = (0..CLIENTS)
        .map(|i| proxy.wss(&format!("user=u{i}")))
        .collect();
    let on = |n: usize| clients.iter().filter(|(_, at)| *at == n).count() as u64;
    let (on_a, on_b) = (on(0), on(1));
    assert!(on_a > 0 && on_b > 0, "{on_a} and {on_b} clients per volley");
    a.wait_for("its clients", |s| s["total"]["connections"] == on_a);
    b.wait_for("its clients", |s| s["total"]["connections"] == on_b);
    // One subscription to `all` per volley (one shard each): a broadcast now reaches all.
    redis.wait_numsub("volley:all", 2);

    // The API through the proxy: from a trusted address over https; refused from another
    // (127.0.0.2 is loopback too, but not in the recipes' trusted list).
    let refused = proxy.https(
        Some(Ipv4Addr::new(127, 0, 0, 2)),
        "POST",
        "/api/broadcast",
        b"not from here",
        &[],
    );
    assert_eq!(refused.status, 403, "{refused:?}");
    let first = broadcast_through(&proxy, "b1");
    assert_eq!(
        first["seq"], 1,
        "the refused one was not published: {first}"
    );
    assert_eq!(first["nodes"], 2, "{first}");
    let second = broadcast_through(&proxy, "b2");
    for (client, _) in &mut clients {
        // b1 then b2, the next two frames: b1 arrived once (a copy would come before b2).
        let m = next_message(client);
        assert_eq!(
            (m["data"].as_str(), m["seq"].as_u64()),
            (Some("b1"), Some(1))
        );
        let m = next_message(client);
        assert_eq!(
            (m["data"].as_str(), m["seq"].as_u64()),
            (Some("b2"), Some(2))
        );
    }
    assert_eq!(second["seq"], 2);

    let was_on_b: Vec<bool> = clients.iter().map(|(_, at)| *at == 1).collect();
    // The drain: SIGTERM volley A while messages keep coming (published on B).
    a.signal(libc::SIGTERM);
    let b_addr = b.addr;
    let publisher = std::thread::spawn(move || {
        for n in 3..=2 + DURING_DRAIN {
            let (status, answer) =
                request(b_addr, "POST", "/api/broadcast", format!("m{n}").as_bytes());
            assert_eq!(status, 200, "{answer}");
        }
    });
    let last = 2 + DURING_DRAIN;
    for (client, at) in &mut clients {
        if *at == 1 {
            continue;
        }
        // Messages published before A stopped may come first; then the 1001.
        assert_eq!(expect_close(client), CloseCode::Away);
    }
    // A's clients come back through the proxy, as a client library would (retrying while
    // the proxy has not yet seen A go), and resume from the last seq they saw: 2.
    let resume = resume_token(json!({"all": 2}));
    for (i, (client, at)) in clients.iter_mut().enumerate() {
        if *at == 1 {
            continue;
        }
        let deadline = Instant::now() + WAIT;
        let (again, landed) = loop {
            match proxy.try_wss(&format!("user=u{i}&resume={resume}")) {
                Ok(ok) => break ok,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "reconnect through {proxy:?}: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        assert_eq!(landed, 1, "client u{i} reconnected onto the stopped volley");
        *client = again;
        *at = 1;
        let (messages, recovered) = recover_one(client);
        assert_eq!(recovered["recovered"], true, "{recovered}");
        assert_eq!(
            seqs_until(client, messages, last),
            (3..=last).collect::<Vec<_>>(),
            "u{i}: every message published during the drain, in order, once"
        );
    }
    publisher.join().unwrap();
    assert_eq!(a.wait_exit(), Some(0), "volley A: {}", a.stderr());
    // B's own clients never left and saw the same stream.
    for (client, _) in clients
        .iter_mut()
        .zip(&was_on_b)
        .filter(|(_, b)| **b)
        .map(|(c, _)| c)
    {
        assert_eq!(
            seqs_until(client, Vec::new(), last),
            (3..=last).collect::<Vec<_>>()
        );
    }

    // The stopped volley is out.
    if kind == Kind::Haproxy {
        // haproxy's active /healthz check marks it DOWN (nginx open source has no active
        // check: it skips a failed server for fail_timeout, deploy/README.md).
        let deadline = Instant::now() + WAIT;
        loop {
            let servers = proxy.haproxy_servers();
            let state = |px: &str, sv: &str| {
                servers
                    .iter()
                    .find(|(p, s, _)| p == px && s == sv)
                    .map(|(_, _, st)| st.clone())
                    .unwrap()
            };
            if state("volley_ws", "v1").starts_with("DOWN") {
                assert!(state("volley_ws", "v2").starts_with("UP"), "{servers:?}");
                // The socket.io and API backends track the same check.
                assert!(state("volley_socketio", "v1").starts_with("DOWN"));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "v1 never marked DOWN: {servers:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // A client pinned to A by its socket.io cookie goes to B instead of failing.
        let r = proxy.https(
            None,
            "GET",
            "/socket.io/?EIO=4&transport=polling&sid=pinned",
            b"",
            &[("Cookie", "VOLLEY_SIO=v1")],
        );
        assert_eq!(proxy.backend_of(r.header("x-volley-backend").unwrap()), 1);
    }
    // Every new connection succeeds at the first try, on B, and is served.
    let mut fresh: Vec<Client> = (0..CLIENTS)
        .map(|i| {
            let (client, at) = proxy.wss(&format!("user=fresh{i}"));
            assert_eq!(at, 1);
            client
        })
        .collect();
    b.wait_for("every client on B", |s| {
        s["total"]["connections"] == (2 * CLIENTS) as u64
    });
    let after = broadcast_through(&proxy, "after");
    assert_eq!(after["seq"], last + 1);
    assert_eq!(after["recipients"], (2 * CLIENTS) as u64, "{after}");
    for client in fresh.iter_mut().chain(clients.iter_mut().map(|(c, _)| c)) {
        let m = next_message(client);
        assert_eq!(
            (m["data"].as_str(), m["seq"].as_u64()),
            (Some("after"), Some(last + 1))
        );
    }
}

/// Sticky routing of `/socket.io/`: the mechanism of each recipe, observed through the
/// proxy's `X-Volley-Backend` header and confirmed by the volleys' own request counters.
fn socketio_requests_stick(kind: Kind) {
    let Stack {
        _dir,
        redis: _redis,
        volleys,
        proxy,
    } = stack(kind);
    let poll = |source: Ipv4Addr, sid: Option<&str>, cookie: Option<&str>| {
        let path = match sid {
            Some(sid) => format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
            None => "/socket.io/?EIO=4&transport=polling".to_string(),
        };
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", *c)).collect();
        let r = proxy.https(Some(source), "GET", &path, b"", &headers);
        let backend = proxy.backend_of(r.header("x-volley-backend").unwrap());
        (backend, r)
    };
    // 32 client addresses (127.0.0.0/8 is all loopback).
    let sources: Vec<Ipv4Addr> = (10..42).map(|n| Ipv4Addr::new(127, 0, 1, n)).collect();
    let mut first = Vec::new();
    let mut cookies: [Option<String>; 2] = [None, None];
    for &source in &sources {
        // The handshake: no sid and no cookie yet.
        let (backend, r) = poll(source, None, None);
        if kind == Kind::Haproxy {
            // haproxy answers with the cookie that pins the session to that server.
            let cookie = r
                .header("set-cookie")
                .and_then(|c| c.split(';').next())
                .unwrap_or_else(|| panic!("no cookie: {r:?}"))
                .to_string();
            assert_eq!(cookie, format!("VOLLEY_SIO=v{}", backend + 1));
            cookies[backend] = Some(cookie);
        }
        first.push(backend);
    }
    assert!(
        first.contains(&0) && first.contains(&1),
        "32 addresses all went to one volley: not balanced {first:?}"
    );
    // The session's next requests (with its sid, without any cookie) from the same address
    // land where its handshake did.
    for (i, &source) in sources.iter().enumerate() {
        for _ in 0..3 {
            let (backend, _) = poll(source, Some(&format!("s{i}")), None);
            assert_eq!(backend, first[i], "{source} moved");
        }
    }
    // Counted by the volleys themselves: 40 requests of one session all reach one process.
    let at = first[0];
    let count = |n: usize| volleys[n].total("http_requests_total");
    let before = [count(0), count(1)];
    for _ in 0..40 {
        assert_eq!(poll(sources[0], Some("counted"), None).0, at);
    }
    let after = [count(0), count(1)];
    assert!(
        after[at] - before[at] >= 40 && after[1 - at] - before[1 - at] < 40,
        "requests counted by volley {at}: {before:?} -> {after:?}"
    );
    if kind == Kind::Haproxy {
        // The cookie wins over the address: a client whose address now hashes to the other
        // server (a phone that changed networks) stays with its session.
        for backend in 0..2 {
            let other_source = sources[first.iter().position(|b| *b != backend).unwrap()];
            let cookie = cookies[backend].as_deref().unwrap();
            for _ in 0..3 {
                let (landed, _) = poll(other_source, Some("moved"), Some(cookie));
                assert_eq!(landed, backend, "{cookie} from {other_source}");
            }
        }
    }
}

#[test]
fn haproxy_broadcast_drain_and_health_check() {
    broadcast_reaches_everyone_once_then_a_drain_loses_nothing(Kind::Haproxy);
}

#[test]
fn nginx_broadcast_drain_and_failover() {
    broadcast_reaches_everyone_once_then_a_drain_loses_nothing(Kind::Nginx);
}

#[test]
fn haproxy_socketio_sticks_by_cookie_then_address() {
    socketio_requests_stick(Kind::Haproxy);
}

#[test]
fn nginx_socketio_sticks_by_address() {
    socketio_requests_stick(Kind::Nginx);
}
