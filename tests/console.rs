//! The dev console (`GET /`, issue 14) in a real headless Chromium against the real
//! binary: it connects as a user, joins a room, shows pushed messages with their channel and
//! seq (and acks them), publishes to a user that a native client is, shows live figures
//! from /api/stats, and keeps to the API's key and browser rules. The screenshot is kept
//! under target/tmp (its path is printed).
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::browser::Browser;
use common::*;
use serde_json::json;

const ROWS: &str = "[...document.querySelectorAll('#messages tr')].map(tr => [...tr.cells].map(td => td.textContent))";

/// Waits until the console's message table has a row with this channel, seq and data.
fn wait_row(browser: &mut Browser, channel: &str, seq: u64, data: &str) {
    let expression =
        format!("{ROWS}.some(r => r[1] === {channel:?} && r[2] === '{seq}' && r[4] === {data:?})");
    browser.wait_for(&format!("a row {channel} {seq} {data}"), &expression);
}

fn text_of(browser: &mut Browser, id: &str) -> String {
    let value = browser.eval(&format!("document.getElementById({id:?}).textContent"));
    value.as_str().unwrap().to_string()
}

/// Waits for a message's receipt to count `acked` acks.
fn wait_acked(server: &Server, id: &str, acked: u64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, body) = request(server.addr, "GET", &format!("/api/messages/{id}"), b"");
        if status == 200 {
            let receipt: serde_json::Value = serde_json::from_str(&body).unwrap();
            if receipt["acked"] == json!(acked) {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "message {id} never got {acked} acks: {status} {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_console_connects_shows_pushes_publishes_and_shows_stats() {
    // Open mode on loopback: the console is on by default.
    let server = Server::start(&["--shards", "1"]);
    let mut bob = connect_native(server.addr, "user=bob");
    let mut browser = Browser::start();
    browser.goto(&format!("http://{}/", server.addr));

    browser.type_into("user", "ann");
    browser.click("connect");
    browser.wait_for(
        "the console to connect",
        "document.getElementById('status').textContent === 'connected as ann'",
    );
    browser.type_into("room", "lobby");
    browser.click("join");
    browser.wait_for(
        "lobby among the joined rooms",
        "[...document.querySelectorAll('#rooms li')].some(li => li.textContent === 'lobby')",
    );

    // Pushes through the API show up with their channel and seq, and are acked.
    let to_ann = post_json(
        &server,
        "/api/users/ann/messages",
        r#"{"text":"from the API"}"#,
    );
    let to_room = post_json(
        &server,
        "/api/rooms/lobby/messages",
        r#"{"text":"to the room"}"#,
    );
    wait_row(&mut browser, "user:ann", 1, r#"{"text":"from the API"}"#);
    wait_row(&mut browser, "room:lobby", 1, r#"{"text":"to the room"}"#);
    wait_acked(&server, to_ann["id"].as_str().unwrap(), 1);
    wait_acked(&server, to_room["id"].as_str().unwrap(), 1);

    // A push from the console reaches a native client.
    browser.select("target", "user");
    browser.type_into("name", "bob");
    browser.type_into("body", r#"{"text":"from the console"}"#);
    browser.click("send");
    browser.wait_for(
        "the console's publish answer",
        "document.getElementById('result').textContent.startsWith('sent: id ')",
    );
    let message = next_message(&mut bob);
    assert_eq!(message["channel"], "user:bob", "{message}");
    assert_eq!(
        message["data"],
        json!({"text": "from the console"}),
        "{message}"
    );
    let result = text_of(&mut browser, "result");
    assert!(result.contains("seq 1, 1 recipients"), "{result}");

    // Live figures: bob and ann are the two connections.
    browser.wait_for(
        "the connections figure",
        "document.querySelector('[data-figure=\"connections\"]').textContent === '2'",
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    browser.screenshot(&shot);
    println!("console screenshot: {}", shot.display());
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);

    // Leaving the room: the next room push does not reach the page.
    browser.type_into("room", "lobby");
    browser.click("leave");
    browser.wait_for(
        "lobby to leave the joined rooms",
        "document.querySelectorAll('#rooms li').length === 0",
    );
    post_json(
        &server,
        "/api/rooms/lobby/messages",
        r#"{"text":"after leaving"}"#,
    );
    post_json(
        &server,
        "/api/users/ann/messages",
        r#"{"text":"still here"}"#,
    );
    wait_row(&mut browser, "user:ann", 2, r#"{"text":"still here"}"#);
    let rows = browser.eval(ROWS).to_string();
    assert!(!rows.contains("after leaving"), "{rows}");
}

#[test]
fn the_console_publishes_only_with_the_api_key_when_one_is_set() {
    let key = "console-test-key-0123456789";
    // Clients open (so the console is on by default), publishers need the key.
    let server = Server::start(&["--shards", "1", "--api-key", key]);
    let mut ann = connect_native(server.addr, "user=ann");
    let mut browser = Browser::start();
    browser.goto(&format!("http://{}/", server.addr));
    browser.wait_for(
        "the stats error without a key",
        "document.getElementById('stats-error').textContent.includes('401')",
    );
    browser.select("target", "user");
    browser.type_into("name", "ann");
    browser.type_into("body", "no key");
    browser.click("send");
    browser.wait_for(
        "the refusal",
        "document.getElementById('result').textContent.startsWith('401: missing API key')",
    );
    browser.type_into("key", key);
    browser.type_into("body", "with the key");
    browser.click("send");
    browser.wait_for(
        "the publish answer",
        "document.getElementById('result').textContent.startsWith('sent: id ')",
    );
    let message = next_message(&mut ann);
    assert_eq!(message["data"], "with the key", "{message}");
    browser.wait_for(
        "stats with the key",
        "document.querySelector('[data-figure=\"connections\"]').textContent === '1'",
    );
}

#[test]
fn the_console_is_off_unless_open_mode_or_asked_for_and_never_framed() {
    let off = Server::start(&["--shards", "1", "--console", "off"]);
    let (status, body) = request(off.addr, "GET", "/", b"");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("--console on"), "{body}");

    // With client tokens (not open mode) it is off unless asked for.
    let secret = "a-jwt-secret-of-32-bytes-0123456";
    let jwt = Server::start(&["--shards", "1", "--jwt-secret", secret]);
    assert_eq!(request(jwt.addr, "GET", "/", b"").0, 404);
    let asked = Server::start(&["--shards", "1", "--jwt-secret", secret, "--console"]);
    let raw = raw_exchange(
        asked.addr,
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nSec-Fetch-Site: none\r\nConnection: close\r\n\r\n",
            asked.addr
        )
        .as_bytes(),
    );
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("Content-Type: text/html"), "{raw}");
    assert!(raw.contains("frame-ancestors 'none'"), "{raw}");
    assert!(raw.contains("X-Frame-Options: DENY"), "{raw}");
    // Another site may neither frame nor fetch it.
    let raw = raw_exchange(
        asked.addr,
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Dest: iframe\r\nConnection: close\r\n\r\n",
            asked.addr
        )
        .as_bytes(),
    );
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");
}
