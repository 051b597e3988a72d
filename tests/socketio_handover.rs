//! A socket.io session that upgrades from polling to WebSocket while a replay (`recover`) is
//! still running: the WebSocket takes the session over and the replay goes on there, from
//! where it was, to its `recovered` event. This is what a socket.io client with default
//! options does when it reconnects after a drain (polling first, `recover` on `connect`,
//! the upgrade right after), seen through real proxies in tests/proxies.rs; here the replay
//! is held mid-way on purpose (a small outbound queue that the test does not read), so the
//! hand-over always lands in the middle of it. And on polling as on WebSocket, live messages
//! published during a replay wait for it.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

/// Messages in the history before the client resumes: far more than the queue holds.
const PUBLISHED: u64 = 40;

fn polling(server: &Server, method: &str, query: &str, body: &[u8]) -> String {
    let (status, body) = request(
        server.addr,
        method,
        &format!("/socket.io/?EIO=4&transport=polling{query}"),
        body,
    );
    assert_eq!(status, 200, "{method} {query}: {body}");
    body
}

/// The seqs of `all` messages and the `recovered` events in Engine.IO packets.
fn read_packets(packets: &[&str], seqs: &mut Vec<u64>, recovered: &mut Vec<Value>) {
    for packet in packets {
        // Socket.IO EVENT on namespace "/": `2` (Engine.IO message) `2` (event), an
        // optional ack id, then the JSON array.
        let Some(rest) = packet.strip_prefix("42") else {
            continue;
        };
        let array: Value =
            serde_json::from_str(rest.trim_start_matches(|c: char| c.is_ascii_digit())).unwrap();
        match array[0].as_str() {
            Some("message") => seqs.push(array[1]["_volley"]["seq"].as_u64().unwrap()),
            Some("recovered") => recovered.push(array[1].clone()),
            _ => {}
        }
    }
}

#[test]
fn a_recover_still_replaying_when_the_session_upgrades_finishes_on_the_websocket() {
    // A queue of 16 frames: the replay waits once 8 are queued and the client reads none.
    let server = Server::start(&["--shards", "1", "--outbound-frames-max", "16"]);
    for n in 1..=PUBLISHED {
        server.broadcast(json!({ "n": n }).to_string().as_bytes());
    }
    let open = polling(&server, "GET", "", b"");
    let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    let sid = open["sid"].as_str().unwrap().to_string();
    let q = format!("&sid={sid}");
    assert_eq!(polling(&server, "POST", &q, b"40"), "ok");
    assert!(polling(&server, "GET", &q, b"").starts_with("40{"));
    let recover = br#"421["recover",{"channel":"all","since":0}]"#;
    assert_eq!(polling(&server, "POST", &q, recover), "ok");

    // One GET: the op's answer and the first part of the replay; the rest waits for room.
    let (mut seqs, mut recovered) = (Vec::new(), Vec::new());
    let body = polling(&server, "GET", &q, b"");
    let packets: Vec<&str> = body.split('\x1e').collect();
    assert!(packets.contains(&"431[{\"ok\":true}]"), "{body}");
    read_packets(&packets, &mut seqs, &mut recovered);
    assert!(
        !seqs.is_empty() && (seqs.len() as u64) < PUBLISHED && recovered.is_empty(),
        "the replay is under way, not done: {body}"
    );

    // The upgrade: probe, then `5` hands the session to the WebSocket.
    let (mut ws, _) = tungstenite::connect(format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        server.addr
    ))
    .unwrap();
    // A replay that never comes fails the test after WAIT instead of hanging.
    set_read_timeout(&mut ws, WAIT);
    ws.send(Message::text("2probe")).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Text(t) if t.as_str() == "3probe" => break,
            _ => {}
        }
    }
    ws.send(Message::text("5")).unwrap();
    while recovered.is_empty() {
        if let Message::Text(t) = ws.read().unwrap() {
            read_packets(&[t.as_str()], &mut seqs, &mut recovered);
        }
    }
    assert_eq!(
        seqs,
        (1..=PUBLISHED).collect::<Vec<_>>(),
        "every message, in order, once, across the hand-over"
    );
    assert_eq!(recovered[0]["recovered"], true, "{:?}", recovered[0]);
    assert_eq!(recovered[0]["seq"], PUBLISHED);
}

#[test]
fn live_messages_wait_for_a_replay_on_polling_too() {
    let server = Server::start(&["--shards", "1", "--outbound-frames-max", "16"]);
    for n in 1..=PUBLISHED {
        server.broadcast(json!({ "n": n }).to_string().as_bytes());
    }
    let open = polling(&server, "GET", "", b"");
    let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    let q = format!("&sid={}", open["sid"].as_str().unwrap());
    assert_eq!(polling(&server, "POST", &q, b"40"), "ok");
    assert!(polling(&server, "GET", &q, b"").starts_with("40{"));
    let recover = br#"421["recover",{"channel":"all","since":0}]"#;
    assert_eq!(polling(&server, "POST", &q, recover), "ok");
    // The replay is held by the queue the test has not read; three live messages now.
    for n in PUBLISHED + 1..=PUBLISHED + 3 {
        assert_eq!(
            server.broadcast(json!({ "n": n }).to_string().as_bytes()),
            1
        );
    }
    let (mut seqs, mut recovered) = (Vec::new(), Vec::new());
    while !seqs.contains(&(PUBLISHED + 3)) {
        let body = polling(&server, "GET", &q, b"");
        let packets: Vec<&str> = body.split('\x1e').collect();
        read_packets(&packets, &mut seqs, &mut recovered);
    }
    assert_eq!(
        seqs,
        (1..=PUBLISHED + 3).collect::<Vec<_>>(),
        "the replay, then the live messages held back meanwhile, once each"
    );
    assert_eq!(recovered[0]["seq"], PUBLISHED);
}
