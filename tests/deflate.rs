//! permessage-deflate end to end (RFC 7692, issue 15): a real client (python `websockets`,
//! installed by tools/test.sh) negotiates it, receives a broadcast compressed once for every
//! recipient and sends compressed messages; a zip bomb is closed with 1009 while its
//! neighbour keeps receiving; RSV1 without the extension is 1002; `--compression off`
//! declines.

// Helpers outside #[test] fns: a failed unwrap there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use common::{client_frame, read_close_code, read_server_frame, Server, WAIT};
use volley::ws::deflate::{self, Inflater, Level};

const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

/// A ~600-byte JSON payload: above the default --compression-min-bytes (256).
fn big_json(tag: &str) -> String {
    let events: Vec<String> = (0..12)
        .map(|i| format!(r#"{{"id":{i},"kind":"price","symbol":"ACME","bid":101.{i}}}"#))
        .collect();
    format!(r#"{{"tag":"{tag}","events":[{}]}}"#, events.join(","))
}

/// Upgrades a raw socket on `path`, offering `extensions` when given; returns the socket and
/// the 101's `Sec-WebSocket-Extensions` value, if any.
fn raw_upgrade_with(
    addr: SocketAddr,
    path: &str,
    extensions: Option<&str>,
) -> (TcpStream, Option<String>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let offer = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let agreed = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
        .map(str::to_string);
    (stream, agreed)
}

/// Reads data frames until one arrives; returns (RSV1 set, inflated or plain payload).
fn next_data(stream: &mut TcpStream) -> (bool, Vec<u8>) {
    loop {
        let (first, payload) = read_server_frame(stream).unwrap();
        match first & 0x0f {
            0x1 | 0x2 => {
                assert_ne!(first & 0x80, 0, "volley sends unfragmented messages");
                let compressed = first & 0x40 != 0;
                if !compressed {
                    return (false, payload);
                }
                let mut out = Vec::new();
                Inflater::default()
                    .message(first & 0x0f == 1, &payload, 1 << 20, &mut out)
                    .unwrap();
                return (true, out);
            }
            0x8 => panic!("closed: {payload:?}"),
            _ => continue,
        }
    }
}

#[test]
fn broadcast_is_compressed_once_and_shared() {
    let server = Server::start(&[]);
    let offer = "permessage-deflate; client_max_window_bits";
    let (mut a, agreed) = raw_upgrade_with(server.addr, "/ws?protocol=raw", Some(offer));
    let agreed = agreed.expect("deflate agreed");
    assert!(agreed.starts_with("permessage-deflate"), "{agreed}");
    assert!(agreed.contains("server_no_context_takeover"), "{agreed}");
    let (mut b, _) = raw_upgrade_with(server.addr, "/ws?protocol=raw", Some(offer));
    let (mut plain, none) = raw_upgrade_with(server.addr, "/ws?protocol=raw", None);
    assert_eq!(none, None);
    server.wait_for("3 connections", |s| s["total"]["connections"] == 3);

    let before = server.total("frames_compressed_total");
    let body = big_json("wide");
    assert_eq!(server.broadcast(body.as_bytes()), 3);
    for client in [&mut a, &mut b] {
        let (compressed, payload) = next_data(client);
        assert!(compressed, "a deflate client gets the RSV1 frame");
        assert_eq!(payload, body.as_bytes());
    }
    assert_eq!(next_data(&mut plain), (false, body.as_bytes().to_vec()));
    // Once per shard, whatever the number of recipients on it.
    let compressed = server.total("frames_compressed_total") - before;
    assert!((1..=2).contains(&compressed), "{compressed}");

    // Below --compression-min-bytes the message goes plain to everyone.
    server.broadcast(b"tiny");
    assert_eq!(next_data(&mut a), (false, b"tiny".to_vec()));
}

#[test]
fn compression_off_declines_and_rsv1_is_then_1002() {
    let server = Server::start(&["--compression", "off"]);
    let (mut stream, agreed) =
        raw_upgrade_with(server.addr, "/ws?protocol=raw", Some("permessage-deflate"));
    assert_eq!(
        agreed, None,
        "declined cleanly: a 101 without the extension"
    );
    let compressed = deflate::compress_message(b"hello", Level::FAST).unwrap();
    stream
        .write_all(&client_frame(0x80 | 0x40 | 0x1, &compressed, Some(MASK)))
        .unwrap();
    assert_eq!(read_close_code(&mut stream), 1002);
}

#[test]
fn rsv1_without_negotiation_is_1002_and_bad_offers_decline() {
    let server = Server::start(&[]);
    // Not an offer we can take (unknown parameter): declined, the upgrade still succeeds.
    let (mut stream, agreed) = raw_upgrade_with(
        server.addr,
        "/ws?protocol=raw",
        Some("permessage-deflate; no_such_param, x-webkit-deflate-frame"),
    );
    assert_eq!(agreed, None);
    let compressed = deflate::compress_message(b"hello", Level::FAST).unwrap();
    stream
        .write_all(&client_frame(0x80 | 0x40 | 0x1, &compressed, Some(MASK)))
        .unwrap();
    assert_eq!(read_close_code(&mut stream), 1002);
}

#[test]
fn zip_bomb_closes_with_1009_and_the_neighbour_is_unharmed() {
    let server = Server::start(&["--message-bytes-max", "65536"]);
    let offer = Some("permessage-deflate");
    let (mut bomber, _) = raw_upgrade_with(server.addr, "/ws?protocol=raw", offer);
    let (mut neighbour, agreed) = raw_upgrade_with(server.addr, "/ws?protocol=raw", offer);
    assert!(agreed.is_some());
    server.wait_for("2 connections", |s| s["total"]["connections"] == 2);
    // 16 MiB of zeros deflate to ~16 KiB: under the 64 KiB message cap on the wire, 256
    // times over it inflated.
    let bomb = deflate::compress_message(&vec![0u8; 16 << 20], Level::DEFAULT).unwrap();
    assert!(bomb.len() < 65_536, "{}", bomb.len());
    bomber
        .write_all(&client_frame(0x80 | 0x40 | 0x2, &bomb, Some(MASK)))
        .unwrap();
    assert_eq!(read_close_code(&mut bomber), 1009);
    // A compressed text message that does not inflate to UTF-8 is 1007.
    let (mut liar, _) = raw_upgrade_with(server.addr, "/ws?protocol=raw", offer);
    let bad = deflate::compress_message(&[0xff, 0xfe, 0xfd], Level::FAST).unwrap();
    liar.write_all(&client_frame(0x80 | 0x40 | 0x1, &bad, Some(MASK)))
        .unwrap();
    assert_eq!(read_close_code(&mut liar), 1007);

    let body = big_json("after the bomb");
    assert!(server.broadcast(body.as_bytes()) >= 1);
    assert_eq!(next_data(&mut neighbour), (true, body.as_bytes().to_vec()));
}

#[test]
fn echo_path_is_off_by_default_and_loopback_only() {
    let server = Server::start(&[]);
    let (status, _) = common::request(server.addr, "GET", "/echo", b"");
    assert_eq!(status, 404);
    let out = Command::new(env!("CARGO_BIN_EXE_volley"))
        // --insecure-open: open mode on a public address is refused for its own reason.
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--insecure-open",
            "--echo-path",
            "/echo",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--echo-path-public"), "{stderr}");
}

/// The python `websockets` client (17.x), with its default permessage-deflate offer, on the
/// native protocol: it receives a compressed broadcast, and its own messages (which it
/// compresses) are inflated and handled: a publish to a room it joined comes back to it. On
/// the echo path its compressed messages come back intact.
#[test]
fn python_websockets_client_negotiates_deflate() {
    if Command::new("python3")
        .args(["-c", "import websockets"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        panic!("python3 with the `websockets` package is needed: run tools/test.sh");
    }
    let server = Server::start(&["--echo-path", "/echo"]);
    let broadcast = big_json("broadcast");
    let script = r#"
import json, sys
from websockets.sync.client import connect
base, broadcast = sys.argv[1], sys.argv[2]
with connect(base + "/ws?user=ann", compression="deflate", open_timeout=10) as ws:
    print("EXT", ws.response.headers.get("Sec-WebSocket-Extensions"), flush=True)
    ws.send(json.dumps({"op": "join", "room": "lobby", "ref": 1, "pad": "p" * 400}))
    reply = json.loads(ws.recv(timeout=10))
    assert reply["ok"] is True, reply
    print("READY", flush=True)
    while True:
        msg = ws.recv(timeout=10)
        if broadcast in msg:
            print("BROADCAST", flush=True)
            break
    data = {"text": "x" * 1000}
    ws.send(json.dumps({"op": "publish", "room": "lobby", "data": data, "ref": 2}))
    got_reply = got_message = False
    while not (got_reply and got_message):
        msg = json.loads(ws.recv(timeout=10))
        if msg.get("type") == "reply" and msg.get("ref") == 2:
            assert msg["ok"] is True, msg
            got_reply = True
        elif msg.get("data") == data:
            got_message = True
    print("PUBLISHED", flush=True)
with connect(base + "/echo", compression="deflate", open_timeout=10) as ws:
    for payload in ["", "short", "y" * 5000, b"\x00\x01" * 3000]:
        ws.send(payload)
        assert ws.recv(timeout=10) == payload
    print("ECHOED", flush=True)
"#;
    let base = format!("ws://{}", server.addr);
    let mut child = Command::new("python3")
        .args(["-c", script, &base, &broadcast])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line == "READY" {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.starts_with("EXT permessage-deflate; server_no_context_takeover")),
        "{seen:?}"
    );
    let compressed_before = server.total("frames_compressed_total");
    assert_eq!(server.broadcast(broadcast.as_bytes()), 1);
    seen.extend(lines.map(|l| l.unwrap()));
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{seen:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in ["BROADCAST", "PUBLISHED", "ECHOED"] {
        assert!(seen.iter().any(|l| l == step), "{step}: {seen:?}");
    }
    assert!(server.total("frames_compressed_total") > compressed_before);
    assert_eq!(server.total("protocol_error_closes_total"), 0);
}
