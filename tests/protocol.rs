//! Client frames: ping/pong, the close handshake, and each protocol violation closing only
//! the offender with its code while a neighbour keeps receiving.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use std::io::Write;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

const MASK: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

#[test]
fn ping_is_answered_with_pong_carrying_the_payload() {
    let server = Server::start(&["--shards", "1"]);
    let mut stream = raw_upgrade(server.addr);
    stream
        .write_all(&client_frame(0x89, b"hello", MASK))
        .unwrap();
    let (first, payload) = read_server_frame(&mut stream).unwrap();
    assert_eq!(first, 0x8a, "FIN + pong");
    assert_eq!(payload, b"hello");
    // An unsolicited pong is accepted silently; the connection stays open.
    stream.write_all(&client_frame(0x8a, b"x", MASK)).unwrap();
    stream.write_all(&client_frame(0x89, b"", MASK)).unwrap();
    assert_eq!(read_server_frame(&mut stream).unwrap(), (0x8a, vec![]));
}

#[test]
fn close_handshake_echoes_the_code_and_ends_the_connection() {
    let server = Server::start(&["--shards", "1"]);
    let mut client = connect(&server);
    server.wait_for("one client", |s| {
        s["total"]["connections"].as_u64() == Some(1)
    });
    client
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .unwrap();
    loop {
        match client.read() {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, CloseCode::Normal);
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("no close echo: {e}"),
        }
    }
    // The server closes TCP after the handshake.
    loop {
        match client.read() {
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                break
            }
            Err(tungstenite::Error::Io(_)) => break,
            Ok(_) => continue,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    server.wait_for("the connection to be gone", |s| {
        s["total"]["connections"].as_u64() == Some(0)
    });
}

#[test]
fn close_without_a_code_is_echoed_without_a_code() {
    let server = Server::start(&["--shards", "1"]);
    let mut stream = raw_upgrade(server.addr);
    stream.write_all(&client_frame(0x88, b"", MASK)).unwrap();
    assert_eq!(read_server_frame(&mut stream).unwrap(), (0x88, vec![]));
    assert!(
        read_to_close(&mut stream).is_empty(),
        "nothing after the close"
    );
}

/// Each case: the bytes a client sends after the upgrade and the close code it must get.
fn violations() -> Vec<(&'static str, Vec<u8>, u16)> {
    let mut fragmented_ping = client_frame(0x09, b"p", MASK);
    fragmented_ping[0] = 0x09; // FIN clear on a control frame
    let mut bad_utf8_fragments = client_frame(0x01, &[0xce], MASK);
    bad_utf8_fragments.extend(client_frame(0x80, &[0xff], MASK));
    vec![
        ("unmasked frame", client_frame(0x81, b"hi", None), 1002),
        ("reserved bit", client_frame(0x81 | 0x40, b"hi", MASK), 1002),
        ("reserved opcode", client_frame(0x83, b"", MASK), 1002),
        ("control opcode 0xB", client_frame(0x8b, b"", MASK), 1002),
        (
            "ping over 125 bytes",
            client_frame(0x89, &[0u8; 126], MASK),
            1002,
        ),
        ("fragmented ping", fragmented_ping, 1002),
        (
            "continuation without a start",
            client_frame(0x80, b"x", MASK),
            1002,
        ),
        (
            "text not UTF-8",
            client_frame(0x81, &[0xc3, 0x28], MASK),
            1007,
        ),
        ("text not UTF-8 across fragments", bad_utf8_fragments, 1007),
        (
            "message over the limit",
            client_frame(0x82, &vec![0u8; 2000], MASK),
            1009,
        ),
        (
            "close code 1005 on the wire",
            client_frame(0x88, &1005u16.to_be_bytes(), MASK),
            1002,
        ),
        (
            "close code 999",
            client_frame(0x88, &999u16.to_be_bytes(), MASK),
            1002,
        ),
        (
            "close payload of one byte",
            client_frame(0x88, &[3], MASK),
            1002,
        ),
        (
            "close reason not UTF-8",
            client_frame(0x88, &[0x03, 0xe8, 0xff], MASK),
            1007,
        ),
    ]
}

#[test]
fn each_violation_closes_only_the_offender_with_its_code() {
    let server = Server::start(&["--shards", "2", "--message-bytes-max", "1024"]);
    let mut neighbour = connect(&server);
    server.wait_for("neighbour", |s| {
        s["total"]["connections"].as_u64() == Some(1)
    });
    for (round, (what, bytes, code)) in violations().into_iter().enumerate() {
        let mut offender = raw_upgrade(server.addr);
        offender.write_all(&bytes).unwrap();
        let got = read_close_code(&mut offender);
        assert_eq!(got, code, "{what}");
        let rest = read_to_close(&mut offender);
        assert!(
            rest.is_empty(),
            "{what}: nothing after the close frame, got {rest:?}"
        );
        // The neighbour is untouched and still receives.
        let text = format!("after {what}");
        assert!(server.broadcast(text.as_bytes()) >= 1);
        assert_eq!(
            next_data(&mut neighbour),
            Message::text(text),
            "round {round}"
        );
    }
    let total = server.stats()["total"].clone();
    assert_eq!(
        total["protocol_error_closes_total"].as_u64(),
        Some(violations().len() as u64),
        "every violation is counted once: {total}"
    );
}

#[test]
fn fragmented_text_is_reassembled_and_control_frames_may_interleave() {
    let server = Server::start(&["--shards", "1"]);
    let mut stream = raw_upgrade(server.addr);
    let mut bytes = client_frame(0x01, "héllo ".as_bytes(), MASK);
    bytes.extend(client_frame(0x89, b"mid", MASK));
    // "€" split across fragments.
    bytes.extend(client_frame(0x00, &[0x77, 0xe2, 0x82], MASK));
    bytes.extend(client_frame(0x80, &[0xac], MASK));
    stream.write_all(&bytes).unwrap();
    assert_eq!(
        read_server_frame(&mut stream).unwrap(),
        (0x8a, b"mid".to_vec())
    );
    server.wait_for("the message to be counted", |s| {
        s["total"]["messages_received_total"].as_u64() == Some(1)
    });
    assert_eq!(server.total("protocol_error_closes_total"), 0);
}

#[test]
fn frames_split_across_many_writes_are_decoded() {
    let server = Server::start(&["--shards", "1"]);
    let mut stream = raw_upgrade(server.addr);
    stream.set_nodelay(true).unwrap();
    let mut bytes = client_frame(0x81, &[b'a'; 300], MASK);
    bytes.extend(client_frame(0x89, b"end", MASK));
    for chunk in bytes.chunks(7) {
        stream.write_all(chunk).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        read_server_frame(&mut stream).unwrap(),
        (0x8a, b"end".to_vec())
    );
    assert_eq!(server.total("messages_received_total"), 1);
}

#[test]
fn frames_sent_with_the_upgrade_request_are_not_lost() {
    let server = Server::start(&["--shards", "1"]);
    let addr = server.addr;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut bytes = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    bytes.extend(client_frame(0x89, b"early", MASK));
    stream.write_all(&bytes).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        std::io::Read::read_exact(&mut stream, &mut byte).unwrap();
        head.push(byte[0]);
    }
    assert_eq!(
        read_server_frame(&mut stream).unwrap(),
        (0x8a, b"early".to_vec())
    );
}
