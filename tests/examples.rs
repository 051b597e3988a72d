//! The clients in examples/ run against the real binary: each connects as a user, gets a
//! message published to that user through the API, prints it, acks it, and the message's
//! receipt (`GET /api/messages/{id}`) counts the ack. The Node and Python clients run as
//! child processes; the browser page runs in headless Chromium, served from its own
//! origin, which volley lets in only when it is listed in --allowed-origins.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::browser::Browser;
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;

fn example(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(path)
}

/// Waits for a message's receipt to count one delivery and one ack.
fn wait_acked(server: &Server, id: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, body) = request(server.addr, "GET", &format!("/api/messages/{id}"), b"");
        if status == 200 {
            let receipt: serde_json::Value = serde_json::from_str(&body).unwrap();
            if receipt["acked"] == 1 {
                assert_eq!(receipt["delivered"], 1, "{receipt}");
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "message {id} was never acked: {status} {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs a command-line example as `<command> ws://.../ws ann 1`: waits for it to connect,
/// publishes to ann, and checks it printed the message, acked it and exited 0.
fn run_client_example(mut command: Command) {
    let server = Server::start(&["--shards", "1"]);
    let mut child = command
        .args([server.url().as_str(), "ann", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the example");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let mut next_line = |what: &str| {
        lines.recv_timeout(WAIT).unwrap_or_else(|_| {
            let mut errors = String::new();
            let _ = stderr.read_to_string(&mut errors);
            panic!("the example never printed {what}; stderr: {errors}")
        })
    };
    assert_eq!(next_line("connected"), "connected as ann");
    let published = post_json(
        &server,
        "/api/users/ann/messages",
        r#"{"text":"hi from the test"}"#,
    );
    let line = next_line("the message");
    assert!(
        line.starts_with("message user:ann 1 ") && line.contains("hi from the test"),
        "{line}"
    );
    assert_eq!(next_line("the ack"), "acked user:ann 1");
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the example did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    wait_acked(&server, published["id"].as_str().unwrap());
}

#[test]
fn the_python_client_prints_and_acks() {
    let mut command = Command::new("python3");
    command.arg(example("python/client.py"));
    run_client_example(command);
}

#[test]
fn the_node_client_prints_and_acks() {
    assert!(
        example("node/node_modules/ws").exists(),
        "run tools/test.sh --install-only (npm ci in examples/node)"
    );
    let mut command = Command::new("node");
    command.arg(example("node/client.mjs"));
    run_client_example(command);
}

/// Serves one file at `/browser.html` (404 for anything else) from 127.0.0.1: the
/// application's own origin, apart from volley's.
fn serve_page(page: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let found = String::from_utf8_lossy(&head).starts_with("GET /browser.html");
            let (status, body): (&str, &[u8]) = if found {
                ("200 OK", &page)
            } else {
                ("404 Not Found", b"")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(body);
        }
    });
    addr
}

#[test]
fn the_browser_page_shows_and_acks_from_an_allowed_origin_only() {
    let app = serve_page(std::fs::read(example("browser.html")).unwrap());
    let origin = format!("http://{app}");
    let server = Server::start(&["--shards", "1", "--allowed-origins", &origin]);
    let mut browser = Browser::start();
    browser.goto(&format!(
        "{origin}/browser.html?server=ws://{}/ws&user=ann",
        server.addr
    ));
    browser.wait_for(
        "the page to connect",
        "document.getElementById('status').textContent === 'connected as ann'",
    );
    let published = post_json(
        &server,
        "/api/users/ann/messages",
        r#"{"text":"hi from the test"}"#,
    );
    browser.wait_for(
        "the message, acked",
        r#"[...document.querySelectorAll('#messages li')].some(li =>
            li.dataset.acked === 'true' && li.textContent.startsWith('user:ann 1 {"text":"hi from the test"}'))"#,
    );
    wait_acked(&server, published["id"].as_str().unwrap());

    // The same page against a volley that does not list its origin: refused.
    let unlisted = Server::start(&["--shards", "1"]);
    browser.goto(&format!(
        "{origin}/browser.html?server=ws://{}/ws&user=ann",
        unlisted.addr
    ));
    browser.wait_for(
        "the refusal",
        "document.getElementById('status').textContent.startsWith('closed')",
    );
    assert_eq!(unlisted.total("upgrades_total"), 0);
}
