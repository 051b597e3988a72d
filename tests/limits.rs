//! Limits: 413, 431, 404/405, keep-alive and pipelining, the slowloris deadline, the
//! connection cap (503), and a slow consumer closed with 1008 while others get everything.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tungstenite::Message;

#[test]
fn body_over_the_limit_gets_413() {
    let server = Server::start(&["--shards", "1", "--body-bytes-max", "1000"]);
    let (status, body) = request(server.addr, "POST", "/api/broadcast", &[b'x'; 1001]);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("error"));
    let (status, _) = request(server.addr, "POST", "/api/broadcast", &[b'x'; 1000]);
    assert_eq!(status, 200);
}

#[test]
fn head_over_the_limit_gets_431() {
    let server = Server::start(&["--shards", "1", "--http-head-bytes-max", "1024"]);
    let big = "a".repeat(2000);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n");
    let response = raw_exchange(server.addr, request.as_bytes());
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
}

#[test]
fn unknown_paths_and_methods_get_json_errors() {
    let server = Server::start(&["--shards", "1"]);
    let (status, body) = request(server.addr, "GET", "/nope", b"");
    assert_eq!(status, 404);
    assert!(body.contains("\"error\""), "{body}");
    let response = raw_exchange(
        server.addr,
        b"GET /api/broadcast HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    assert!(response.contains("Allow: POST"), "{response}");
    let response = raw_exchange(
        server.addr,
        b"BREW /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    let response = raw_exchange(server.addr, b"this is not http\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    let conflicting = b"POST /api/broadcast HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let response = raw_exchange(server.addr, conflicting);
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
}

#[test]
fn keep_alive_serves_pipelined_requests_in_order() {
    let server = Server::start(&["--shards", "1"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let requests = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\nPOST /api/broadcast HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhiGET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    stream.write_all(requests).unwrap();
    let all = String::from_utf8(read_to_close(&mut stream)).unwrap();
    let statuses: Vec<&str> = all
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &all[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, vec!["200", "200", "404"], "{all}");
    assert!(all.contains("\"recipients\":0"), "{all}");
}

#[test]
fn chunked_and_expect_continue_bodies_are_accepted() {
    let server = Server::start(&["--shards", "1"]);
    let mut client = connect(&server);
    server.wait_for("client", |s| s["total"]["connections"].as_u64() == Some(1));
    let chunked = b"POST /api/broadcast HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let response = raw_exchange(server.addr, chunked);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(next_data(&mut client), Message::text("hello world"));

    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"POST /api/broadcast HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"body").unwrap();
    let response = String::from_utf8(read_to_close(&mut stream)).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(next_data(&mut client), Message::text("body"));
}

#[test]
fn a_slow_head_is_cut_off_with_408() {
    let server = Server::start(&["--shards", "1", "--http-head-timeout-ms", "300"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost:").unwrap();
    let response = String::from_utf8(read_to_close(&mut stream)).unwrap();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    // A connection that sends nothing is closed silently at the same deadline.
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.set_read_timeout(Some(WAIT)).unwrap();
    assert!(read_to_close(&mut idle).is_empty());
}

#[test]
fn past_max_connections_upgrades_get_503() {
    let server = Server::start(&["--shards", "2", "--max-connections", "3"]);
    let _clients: Vec<Client> = (0..3).map(|_| connect(&server)).collect();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    let response = raw_exchange(server.addr, request.as_bytes());
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("max-connections"), "{response}");
    assert_eq!(server.total("rejected_full_total"), 1);
    assert_eq!(server.total("connections"), 3);
}

#[test]
fn idle_clients_are_closed_and_live_ones_kept() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--ping-interval-s",
        "1",
        "--idle-timeout-s",
        "2",
    ]);
    // Live: tungstenite answers each ping while this thread keeps reading.
    let mut live = connect(&server);
    set_read_timeout(&mut live, Duration::from_millis(100));
    let live_thread = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut pings = 0;
        while std::time::Instant::now() < deadline {
            match live.read() {
                Ok(Message::Ping(_)) => pings += 1,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("live client dropped: {e}"),
            }
            let _ = live.flush();
        }
        (live, pings)
    });
    // Silent: never answers the pings.
    let mut silent = raw_upgrade(server.addr);
    assert_eq!(read_close_code(&mut silent), 1001);
    let (_live, pings) = live_thread.join().unwrap();
    assert!(pings >= 2, "the live client was pinged ({pings})");
    assert_eq!(
        server.total("connections"),
        1,
        "the live client is still connected"
    );
    assert_eq!(server.total("idle_closes_total"), 1);
}

#[test]
fn a_slow_consumer_is_closed_with_1008_while_others_get_everything() {
    let server = Server::start(&[
        "--shards",
        "2",
        "--outbound-frames-max",
        "16",
        "--outbound-bytes-max",
        "200000",
    ]);
    // The slow client shrinks its receive buffer and never reads.
    let slow = raw_upgrade(server.addr);
    let slow_sock = socket2::SockRef::from(&slow);
    slow_sock.set_recv_buffer_size(4096).unwrap();
    let mut readers: Vec<Client> = (0..4).map(|_| connect(&server)).collect();
    server.wait_for("clients", |s| s["total"]["connections"].as_u64() == Some(5));
    let body = "z".repeat(60_000);
    const MESSAGES: usize = 150;
    let reader_threads: Vec<_> = readers
        .drain(..)
        .map(|mut client| {
            std::thread::spawn(move || {
                for _ in 0..MESSAGES {
                    match next_data(&mut client) {
                        Message::Text(text) => assert_eq!(text.len(), 60_000),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                client
            })
        })
        .collect();
    for _ in 0..MESSAGES {
        server.broadcast(body.as_bytes());
    }
    let _readers: Vec<Client> = reader_threads
        .into_iter()
        .map(|thread| thread.join().expect("every reader got every message"))
        .collect();
    let stats = server.wait_for("the slow client to be dropped", |s| {
        s["total"]["slow_consumer_closes_total"].as_u64() == Some(1)
            && s["total"]["connections"].as_u64() == Some(4)
    });
    assert_eq!(
        stats["total"]["protocol_error_closes_total"].as_u64(),
        Some(0)
    );
    // The operator hears of it once, with the limits that were hit.
    let deadline = std::time::Instant::now() + WAIT;
    while !server.stderr().contains("slow consumer(s) with 1008") {
        assert!(
            std::time::Instant::now() < deadline,
            "no log line: {}",
            server.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        server
            .stderr()
            .matches("slow consumer(s) with 1008")
            .count(),
        1
    );
    drop(slow);
}
