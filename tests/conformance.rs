//! RFC 6455 conformance battery in the spirit of Autobahn|Testsuite sections 1-7 and 9, run
//! against the real binary over real sockets. docs/CONFORMANCE.md lists every case.
//!
//! volley is push-only: client data messages are accepted and counted
//! (`messages_received_total`), not echoed. So each case asserts exactly one outcome:
//! - accepted: no close; the pongs answered are exactly the expected ones; a probe ping
//!   afterwards gets its pong; the message counter grew by the expected count; a normal
//!   close handshake then ends the connection;
//! - failed: the exact close code, nothing after it, TCP closed; a neighbour connection still
//!   receives a broadcast;
//! - closed by the client: the exact close echo, then TCP closed, and data sent after the
//!   close is ignored (no pong, no message counted).
//!
//! One server per test function; cases run in a loop with their name in every assertion.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// The message limit every server here runs with (the default, stated so cases can use it).
const MESSAGE_BYTES_MAX: usize = 65_536;
/// Autobahn's "κόσμε" with an encoded surrogate (U+D800) spliced in (case 6.3.1).
const KOSME_EDITED: &[u8] = &[
    0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80, 0x65, 0x64,
    0x69, 0x74, 0x65, 0x64,
];

/// A masked client frame with the given first byte (FIN, RSV, opcode).
fn f(first: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(first, payload, Some(MASK))
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Splits `bytes` into writes of at most `n` bytes.
fn chunks(bytes: &[u8], n: usize) -> Vec<Vec<u8>> {
    bytes.chunks(n).map(<[u8]>::to_vec).collect()
}

fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

/// What volley must do with a case.
#[derive(Debug, Clone)]
enum Expect {
    /// No close. The server answers exactly these pong payloads, in order, and counts this
    /// many data messages.
    Accept { messages: u64, pongs: Vec<Vec<u8>> },
    /// The connection is failed with this close code, after counting this many messages
    /// that came before the violation.
    Fail { code: u16, messages: u64 },
    /// The client closed: the server echoes exactly this close payload, counts this many
    /// messages, answers nothing else and closes TCP.
    Echo { payload: Vec<u8>, messages: u64 },
}

struct Case {
    name: String,
    /// Each element is one `write` call (with a short pause between, so the server is
    /// likely, though not guaranteed, to see them in separate reads).
    writes: Vec<Vec<u8>>,
    expect: Expect,
}

fn case(name: impl Into<String>, writes: Vec<Vec<u8>>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        writes,
        expect,
    }
}

fn accept(messages: u64) -> Expect {
    Expect::Accept {
        messages,
        pongs: Vec::new(),
    }
}

fn accept_pongs(messages: u64, pongs: &[&[u8]]) -> Expect {
    Expect::Accept {
        messages,
        pongs: pongs.iter().map(|p| p.to_vec()).collect(),
    }
}

fn fail(code: u16) -> Expect {
    Expect::Fail { code, messages: 0 }
}

fn fail_after(code: u16, messages: u64) -> Expect {
    Expect::Fail { code, messages }
}

fn echo(code: Option<u16>, messages: u64) -> Expect {
    Expect::Echo {
        payload: code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default(),
        messages,
    }
}

fn start_server() -> Server {
    let limit = MESSAGE_BYTES_MAX.to_string();
    Server::start(&[
        "--shards",
        "2",
        "--message-bytes-max",
        &limit,
        // No server pings in the middle of a case's frames.
        "--ping-interval-s",
        "3600",
        "--idle-timeout-s",
        "7200",
    ])
}

fn send(stream: &mut TcpStream, writes: &[Vec<u8>], name: &str) {
    let pause = if writes.len() > 1 {
        Duration::from_millis(1)
    } else {
        Duration::ZERO
    };
    for (i, bytes) in writes.iter().enumerate() {
        stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("{name}: write {i}: {e}"));
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

/// A frame from the server: its first byte (FIN, opcode) and its payload.
type ServerFrame = (u8, Vec<u8>);

/// Reads server frames until one matching `stop`; returns the frames before it and it.
fn read_until(
    stream: &mut TcpStream,
    name: &str,
    stop: impl Fn(u8, &[u8]) -> bool,
) -> (Vec<ServerFrame>, ServerFrame) {
    let mut before = Vec::new();
    loop {
        let (first, payload) = read_server_frame(stream)
            .unwrap_or_else(|e| panic!("{name}: connection ended early ({e}); got {before:?}"));
        if stop(first, &payload) {
            return (before, (first, payload));
        }
        before.push((first, payload));
    }
}

/// Runs every case on `server`, one fresh connection each, with a neighbour that must keep
/// receiving broadcasts. Returns how many cases ran.
fn run_cases(server: &Server, cases: Vec<Case>) -> usize {
    let mut neighbour = connect(server);
    server.wait_for("the neighbour", |s| {
        s["total"]["connections"].as_u64() == Some(1)
    });
    let failures_before = server.total("protocol_error_closes_total");
    let mut failures = 0u64;
    let count = cases.len();
    for (
        i,
        Case {
            name,
            writes,
            expect,
        },
    ) in cases.into_iter().enumerate()
    {
        let name = name.as_str();
        let messages_before = server.total("messages_received_total");
        let mut stream = raw_upgrade(server.addr);
        stream.set_nodelay(true).unwrap();
        send(&mut stream, &writes, name);
        let messages_expected = match &expect {
            Expect::Accept { messages, pongs } => {
                // A probe ping after the case: its pong proves the connection is usable and,
                // since frames are handled in order, that the case's messages were counted.
                let probe = format!("probe {i}");
                stream.write_all(&f(0x89, probe.as_bytes())).unwrap();
                let (before, _) = read_until(&mut stream, name, |first, payload| {
                    assert_ne!(
                        first & 0x0f,
                        0x8,
                        "{name}: accepted case was closed: {payload:?}"
                    );
                    first == 0x8a && payload == probe.as_bytes()
                });
                let want: Vec<ServerFrame> = pongs.iter().map(|p| (0x8a, p.clone())).collect();
                assert_eq!(before, want, "{name}: pongs answered");
                // Close normally: the echo, then the end of the stream.
                stream
                    .write_all(&f(0x88, &close_payload(1000, b"")))
                    .unwrap();
                let (before, close) = read_until(&mut stream, name, |first, _| first == 0x88);
                assert!(
                    before.is_empty(),
                    "{name}: frames before the echo {before:?}"
                );
                assert_eq!(close.1, 1000u16.to_be_bytes(), "{name}: close echo");
                assert!(read_to_close(&mut stream).is_empty(), "{name}: after close");
                *messages
            }
            Expect::Fail { code, messages } => {
                let (before, close) = read_until(&mut stream, name, |first, _| first & 0x0f == 0x8);
                assert!(
                    before.iter().all(|(first, _)| *first == 0x8a),
                    "{name}: only pongs may precede the close, got {before:?}"
                );
                assert_eq!(close.0, 0x88, "{name}: FIN + close");
                assert!(close.1.len() >= 2, "{name}: close without a code");
                let got = u16::from_be_bytes([close.1[0], close.1[1]]);
                assert_eq!(
                    got,
                    *code,
                    "{name}: close code (reason {:?})",
                    &close.1[2..]
                );
                assert!(
                    std::str::from_utf8(&close.1[2..]).is_ok(),
                    "{name}: reason is UTF-8"
                );
                let rest = read_to_close(&mut stream);
                assert!(
                    rest.is_empty(),
                    "{name}: nothing after the close, got {rest:?}"
                );
                failures += 1;
                // The neighbour is untouched.
                let text = format!("after {name}");
                assert!(server.broadcast(text.as_bytes()) >= 1, "{name}");
                let got = next_data(&mut neighbour);
                assert!(carries(&got, &text), "{name}: neighbour got {got:?}");
                *messages
            }
            Expect::Echo { payload, messages } => {
                let (before, close) = read_until(&mut stream, name, |first, _| first & 0x0f == 0x8);
                assert!(
                    before.is_empty(),
                    "{name}: frames before the echo {before:?}"
                );
                assert_eq!(close, (0x88, payload.clone()), "{name}: close echo");
                // Data after a close is ignored (RFC 6455 §5.5.1): no pong, not counted.
                // The server may already be gone, so a failed write is fine.
                let mut after = f(0x81, b"after close");
                after.extend(f(0x89, b"after close"));
                let _ = stream.write_all(&after);
                let rest = read_to_close(&mut stream);
                assert!(
                    rest.is_empty(),
                    "{name}: nothing after the close, got {rest:?}"
                );
                *messages
            }
        };
        assert_eq!(
            server.total("messages_received_total"),
            messages_before + messages_expected,
            "{name}: data messages counted"
        );
    }
    assert_eq!(
        server.total("protocol_error_closes_total"),
        failures_before + failures,
        "every failed case is counted once"
    );
    // Everything but the neighbour is gone: no case leaked a connection.
    server.wait_for("only the neighbour left", |s| {
        s["total"]["connections"].as_u64() == Some(1)
    });
    println!("{count} cases passed");
    count
}

/// Autobahn 1.x (framing, lengths) and 9.x scaled down to the message limit.
fn framing_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (kind, op) in [("text", 0x81u8), ("binary", 0x82u8)] {
        for len in [0usize, 1, 125, 126, 127, 128, 65_535, 65_536] {
            let payload = vec![b'*'; len];
            cases.push(case(
                format!("1 {kind} {len} bytes"),
                vec![f(op, &payload)],
                accept(1),
            ));
        }
        // 1.1.8 / 1.2.8: 65536 bytes written in 997-byte chunks.
        let frame = f(op, &vec![b'#'; 65_536]);
        cases.push(case(
            format!("1 {kind} 65536 bytes in 997-byte writes"),
            chunks(&frame, 997),
            accept(1),
        ));
        // Non-minimal length encodings (§5.2 asks senders for the minimal form; volley
        // accepts a longer one on data frames as it is unambiguous).
        for (len, form) in [(0usize, 2u8), (5, 2), (0, 8), (5, 8), (200, 8), (65_535, 8)] {
            cases.push(case(
                format!("1 {kind} {len} bytes in the {}-bit length form", form * 8),
                vec![client_frame_with_form(op, &vec![b'n'; len], MASK, form)],
                accept(1),
            ));
        }
    }
    // Several messages in one write, and the header and payload in separate writes.
    let many: Vec<Vec<u8>> = (0..10)
        .map(|i| f(0x81, format!("m{i}").as_bytes()))
        .collect();
    cases.push(case(
        "1 ten messages in one write",
        vec![concat(&many)],
        accept(10),
    ));
    let frame = f(0x82, &[7u8; 300]);
    cases.push(case(
        "1 header, mask and payload in separate writes",
        vec![
            frame[..2].to_vec(),
            frame[2..4].to_vec(),
            frame[4..8].to_vec(),
            frame[8..].to_vec(),
        ],
        accept(1),
    ));
    cases.push(case(
        "1 binary 300 bytes written byte by byte",
        chunks(&f(0x82, &[1u8; 300]), 1),
        accept(1),
    ));
    // 9.x scaled: the largest allowed message, fragmented and chunked in several ways.
    let big: Vec<u8> = "volley ✓ "
        .bytes()
        .cycle()
        .take(MESSAGE_BYTES_MAX - 3)
        .collect();
    let big_text = {
        let mut t = big.clone();
        t.extend_from_slice("✓".as_bytes()); // exactly the limit, valid UTF-8
        t
    };
    assert_eq!(big_text.len(), MESSAGE_BYTES_MAX);
    assert!(std::str::from_utf8(&big_text).is_ok());
    for frag in [64usize, 256, 1024, 4096, 16_384] {
        let pieces: Vec<&[u8]> = big_text.chunks(frag).collect();
        let mut bytes = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let fin = if i + 1 == pieces.len() { 0x80 } else { 0 };
            let op = if i == 0 { 0x1 } else { 0x0 };
            bytes.extend(f(fin | op, piece));
        }
        cases.push(case(
            format!("9 text at the limit in {frag}-byte fragments"),
            vec![bytes],
            accept(1),
        ));
    }
    for chunk in [64usize, 256, 4096] {
        cases.push(case(
            format!("9 text at the limit in one frame, {chunk}-byte writes"),
            chunks(&f(0x81, &big_text), chunk),
            accept(1),
        ));
    }
    // Size limits.
    cases.push(case(
        "9 binary one byte over the limit",
        vec![f(0x82, &vec![0u8; MESSAGE_BYTES_MAX + 1])],
        fail(1009),
    ));
    let mut over = f(0x01, &vec![b'a'; 40_000]);
    over.extend(f(0x80, &vec![b'a'; 40_000]));
    cases.push(case(
        "9 fragments summing over the limit",
        vec![over],
        fail(1009),
    ));
    for (what, len) in [
        ("limit + 1", MESSAGE_BYTES_MAX as u64 + 1),
        ("2^40", 1u64 << 40),
        ("2^63 - 1", u64::MAX >> 1),
    ] {
        // Only the header: the payload never comes, the 1009 must not wait for it.
        let mut head = vec![0x82, 0x80 | 127];
        head.extend_from_slice(&len.to_be_bytes());
        head.extend_from_slice(&MASK);
        cases.push(case(
            format!("9 header alone claims {what} bytes"),
            vec![head],
            fail(1009),
        ));
    }
    let mut head = vec![0x02, 0x80 | 126, 0xff, 0xff];
    head.extend_from_slice(&MASK);
    let mut continuation = vec![0x80, 0x80 | 126, 0x00, 0x02];
    continuation.extend_from_slice(&MASK);
    let mut bytes = head.clone();
    bytes.extend_from_slice(&[0u8; 0xffff]);
    bytes.extend(continuation);
    cases.push(case(
        "9 continuation header alone takes the message over the limit",
        vec![bytes],
        fail(1009),
    ));
    let mut high = vec![0x82, 0x80 | 127];
    high.extend_from_slice(&(1u64 << 63).to_be_bytes());
    high.extend_from_slice(&MASK);
    cases.push(case(
        "1 64-bit length with the high bit set",
        vec![high],
        fail(1002),
    ));
    cases.push(case(
        "1 unmasked text frame",
        vec![client_frame(0x81, b"hi", None)],
        fail(1002),
    ));
    cases.push(case(
        "1 unmasked frame after a valid one",
        vec![f(0x81, b"ok"), client_frame(0x82, b"hi", None)],
        fail_after(1002, 1),
    ));
    cases
}

/// Autobahn 2.x: pings and pongs.
fn ping_cases() -> Vec<Case> {
    let binary: &[u8] = &[0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff];
    let max = [0xfeu8; 125];
    let mut cases = vec![
        case(
            "2.1 ping without payload",
            vec![f(0x89, b"")],
            accept_pongs(0, &[b""]),
        ),
        case(
            "2.2 ping with a small text payload",
            vec![f(0x89, b"Hello, world!")],
            accept_pongs(0, &[b"Hello, world!"]),
        ),
        case(
            "2.3 ping with a binary payload",
            vec![f(0x89, binary)],
            accept_pongs(0, &[binary]),
        ),
        case(
            "2.4 ping with a 125-byte payload",
            vec![f(0x89, &max)],
            accept_pongs(0, &[&max]),
        ),
        case(
            "2.5 ping with a 126-byte payload",
            vec![f(0x89, &[0xfe; 126])],
            fail(1002),
        ),
        case(
            "2.6 ping with 125 bytes written byte by byte",
            chunks(&f(0x89, &max), 1),
            accept_pongs(0, &[&max]),
        ),
        case(
            "2.7 unsolicited pong without payload",
            vec![f(0x8a, b"")],
            accept(0),
        ),
        case(
            "2.8 unsolicited pong with payload",
            vec![f(0x8a, b"unsolicited pong payload")],
            accept(0),
        ),
        case(
            "2.9 unsolicited pong, then ping",
            vec![concat(&[f(0x8a, b"unsolicited"), f(0x89, b"ping payload")])],
            accept_pongs(0, &[b"ping payload"]),
        ),
        case(
            "2 pong with a 126-byte payload",
            vec![f(0x8a, &[1; 126])],
            fail(1002),
        ),
        case(
            "2 close with a 126-byte payload",
            vec![f(0x88, &close_payload(1000, &[b'r'; 124]))],
            fail(1002),
        ),
        case(
            "2 ping with a 5-byte payload in the 16-bit length form",
            vec![client_frame_with_form(0x89, b"hello", MASK, 2)],
            fail(1002),
        ),
        case(
            "2 ping with an empty payload in the 64-bit length form",
            vec![client_frame_with_form(0x89, b"", MASK, 8)],
            fail(1002),
        ),
    ];
    let pings: Vec<Vec<u8>> = (0..10)
        .map(|i| f(0x89, format!("payload-{i}").as_bytes()))
        .collect();
    let payloads: Vec<Vec<u8>> = (0..10)
        .map(|i| format!("payload-{i}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    // Autobahn 2.10/2.11 allow answering only the last; volley answers every ping.
    cases.push(case(
        "2.10 ten pings in one write",
        vec![concat(&pings)],
        accept_pongs(0, &refs),
    ));
    cases.push(case(
        "2.11 ten pings written byte by byte",
        chunks(&concat(&pings), 1),
        accept_pongs(0, &refs),
    ));
    cases
}

/// Autobahn 3.x (reserved bits) and 4.x (reserved opcodes).
fn reserved_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (name, rsv) in [("RSV1", 0x40u8), ("RSV2", 0x20), ("RSV3", 0x10)] {
        cases.push(case(
            format!("3 {name} on a text frame"),
            vec![f(0x81 | rsv, b"Hello")],
            fail(1002),
        ));
        cases.push(case(
            format!("3 {name} on a binary frame"),
            vec![f(0x82 | rsv, b"Hello")],
            fail(1002),
        ));
        cases.push(case(
            format!("3 {name} on a ping"),
            vec![f(0x89 | rsv, b"")],
            fail(1002),
        ));
        cases.push(case(
            format!("3 {name} on a continuation"),
            vec![concat(&[f(0x01, b"a"), f(0x80 | rsv, b"b")])],
            fail(1002),
        ));
    }
    cases.push(case(
        "3.2 valid text, then RSV2 text, then ping",
        vec![concat(&[
            f(0x81, b"Hello"),
            f(0xa1, b"Hello"),
            f(0x89, b""),
        ])],
        fail_after(1002, 1),
    ));
    cases.push(case(
        "3.3 valid text, then RSV1|RSV2 text, separate writes",
        vec![f(0x81, b"Hello"), f(0xe1, b"Hello"), f(0x89, b"")],
        fail_after(1002, 1),
    ));
    cases.push(case(
        "3.5 RSV1|RSV3 on binary",
        vec![f(0xd2, &[0xff; 8])],
        fail(1002),
    ));
    cases.push(case(
        "3.6 RSV2|RSV3 on ping",
        vec![f(0xb9, b"ping")],
        fail(1002),
    ));
    cases.push(case(
        "3.7 all RSV bits on close",
        vec![f(0xf8, b"")],
        fail(1002),
    ));
    for op in (0x3u8..=0x7).chain(0xb..=0xf) {
        cases.push(case(
            format!("4 reserved opcode {op:#x}"),
            vec![f(0x80 | op, b"")],
            fail(1002),
        ));
        cases.push(case(
            format!("4 reserved opcode {op:#x} with payload"),
            vec![f(0x80 | op, b"reserved opcode payload")],
            fail(1002),
        ));
    }
    for op in [0x3u8, 0xb] {
        cases.push(case(
            format!("4 text, reserved opcode {op:#x}, ping"),
            vec![concat(&[
                f(0x81, b"Hello"),
                f(0x80 | op, b""),
                f(0x89, b""),
            ])],
            fail_after(1002, 1),
        ));
        cases.push(case(
            format!("4 reserved opcode {op:#x} without FIN"),
            vec![f(op, b"x")],
            fail(1002),
        ));
    }
    cases
}

/// Autobahn 5.x: fragmentation.
fn fragmentation_cases() -> Vec<Case> {
    let mut cases = vec![
        case(
            "5.1 ping in two fragments",
            vec![concat(&[f(0x09, b"frag1"), f(0x80, b"frag2")])],
            fail(1002),
        ),
        case(
            "5.2 pong in two fragments",
            vec![concat(&[f(0x0a, b"frag1"), f(0x80, b"frag2")])],
            fail(1002),
        ),
        case(
            "5.3 text in two fragments",
            vec![concat(&[f(0x01, b"frag1"), f(0x80, b"frag2")])],
            accept(1),
        ),
        case(
            "5.4 text in two fragments, separate writes",
            vec![f(0x01, b"frag1"), f(0x80, b"frag2")],
            accept(1),
        ),
        case(
            "5.6 text in two fragments with a ping between",
            vec![concat(&[
                f(0x01, b"frag1"),
                f(0x89, b"ping"),
                f(0x80, b"frag2"),
            ])],
            accept_pongs(1, &[b"ping"]),
        ),
        case(
            "5.7 same, separate writes",
            vec![f(0x01, b"frag1"), f(0x89, b"ping"), f(0x80, b"frag2")],
            accept_pongs(1, &[b"ping"]),
        ),
        case(
            "5.8 same, byte by byte",
            chunks(
                &concat(&[f(0x01, b"frag1"), f(0x89, b"ping"), f(0x80, b"frag2")]),
                1,
            ),
            accept_pongs(1, &[b"ping"]),
        ),
        case(
            "5 binary fragments with an unsolicited pong between",
            vec![concat(&[
                f(0x02, &[0xff]),
                f(0x8a, b"pong"),
                f(0x80, &[0xfe]),
            ])],
            accept(1),
        ),
        case(
            "5.9 continuation with FIN and no message",
            vec![concat(&[
                f(0x80, b"non-continuation payload"),
                f(0x81, b"Hello"),
            ])],
            fail(1002),
        ),
        case(
            "5.10 same, separate writes",
            vec![f(0x80, b"non-continuation payload"), f(0x81, b"Hello")],
            fail(1002),
        ),
        case(
            "5.12 continuation without FIN and no message",
            vec![f(0x00, b"non-continuation payload")],
            fail(1002),
        ),
        case(
            "5.15 continuation after a finished fragmented message",
            vec![concat(&[
                f(0x01, b"fragment1"),
                f(0x80, b"fragment2"),
                f(0x00, b"fragment3"),
                f(0x80, b"fragment4"),
            ])],
            fail_after(1002, 1),
        ),
        case(
            "5.16 continuations first, then text",
            vec![concat(&[
                f(0x00, b"fragment1"),
                f(0x80, b"fragment2"),
                f(0x81, b"fragment3"),
            ])],
            fail(1002),
        ),
        case(
            "5.18 two text frames without FIN on the first",
            vec![concat(&[f(0x01, b"fragment1"), f(0x81, b"fragment2")])],
            fail(1002),
        ),
        case(
            "5 binary frame inside a fragmented text",
            vec![concat(&[f(0x01, b"fragment1"), f(0x02, b"fragment2")])],
            fail(1002),
        ),
        case(
            "5.19 text in five fragments with two pings between",
            vec![concat(&[
                f(0x01, b"fragment1"),
                f(0x00, b"fragment2"),
                f(0x89, b"pongme 1!"),
                f(0x00, b"fragment3"),
                f(0x89, b"pongme 2!"),
                f(0x80, b"fragment4"),
            ])],
            accept_pongs(1, &[b"pongme 1!", b"pongme 2!"]),
        ),
        case(
            "5.20 same, separate writes",
            vec![
                f(0x01, b"fragment1"),
                f(0x00, b"fragment2"),
                f(0x89, b"pongme 1!"),
                f(0x00, b"fragment3"),
                f(0x89, b"pongme 2!"),
                f(0x80, b"fragment4"),
            ],
            accept_pongs(1, &[b"pongme 1!", b"pongme 2!"]),
        ),
        case(
            "6.1.2 empty text in three empty fragments",
            vec![concat(&[f(0x01, b""), f(0x00, b""), f(0x80, b"")])],
            accept(1),
        ),
        case(
            "5 fragmented message, then a second message",
            vec![concat(&[f(0x02, b"a"), f(0x80, b"b"), f(0x81, b"c")])],
            accept(2),
        ),
    ];
    // Many tiny fragments.
    let mut tiny = f(0x01, b"x");
    for _ in 0..998 {
        tiny.extend(f(0x00, b"x"));
    }
    tiny.extend(f(0x80, b"x"));
    cases.push(case(
        "5 text in 1000 one-byte fragments",
        vec![tiny],
        accept(1),
    ));
    let mut empties = f(0x02, b"");
    for _ in 0..500 {
        empties.extend(f(0x00, b""));
    }
    empties.extend(f(0x80, b"end"));
    cases.push(case(
        "5 binary in 502 fragments, 501 of them empty",
        vec![empties],
        accept(1),
    ));
    // The fragment limit: a message may have up to --message-fragments-max frames (the
    // default here); the next continuation is refused with 1009 when its header arrives
    // (no final frame needed).
    let fragments_max = volley::config::MESSAGE_FRAGMENTS_MAX_DEFAULT;
    let mut at_limit = f(0x01, b"");
    for _ in 0..fragments_max - 2 {
        at_limit.extend(f(0x00, b""));
    }
    let mut over_limit = at_limit.clone();
    at_limit.extend(f(0x80, b"last"));
    cases.push(case(
        format!("5 text in {fragments_max} fragments (the limit), all but the last empty"),
        vec![at_limit],
        accept(1),
    ));
    over_limit.extend(f(0x00, b""));
    over_limit.extend(f(0x00, b""));
    cases.push(case(
        format!(
            "5 text in {} empty fragments, no final one (over the limit)",
            fragments_max + 1
        ),
        vec![over_limit],
        fail(1009),
    ));
    let mut pinged = f(0x01, b"");
    let mut pongs: Vec<Vec<u8>> = Vec::new();
    for i in 0..50 {
        pinged.extend(f(0x00, b"y"));
        let p = format!("p{i}").into_bytes();
        pinged.extend(f(0x89, &p));
        pongs.push(p);
    }
    pinged.extend(f(0x80, b""));
    let refs: Vec<&[u8]> = pongs.iter().map(Vec::as_slice).collect();
    cases.push(case(
        "5 50 fragments, each followed by a ping",
        vec![pinged],
        accept_pongs(1, &refs),
    ));
    cases
}

/// Autobahn 6.x: UTF-8 handling.
fn utf8_cases() -> Vec<Case> {
    let valid: &[(&str, &[u8])] = &[
        ("6.1.1 empty text", b""),
        (
            "6.2.1 Hello-µ@ßöäüàá-UTF-8!!",
            "Hello-\u{b5}@\u{df}\u{f6}\u{e4}\u{fc}\u{e0}\u{e1}-UTF-8!!".as_bytes(),
        ),
        ("6.5.1 κόσμε", "κόσμε".as_bytes()),
        ("6.7.1 U+0000", &[0x00]),
        ("6.7.2 U+0080", &[0xc2, 0x80]),
        ("6.7.3 U+0800", &[0xe0, 0xa0, 0x80]),
        ("6.7.4 U+10000", &[0xf0, 0x90, 0x80, 0x80]),
        ("6.9.1 U+007F", &[0x7f]),
        ("6.9.2 U+07FF", &[0xdf, 0xbf]),
        ("6.9.3 U+FFFF", &[0xef, 0xbf, 0xbf]),
        ("6.9.4 U+10FFFF", &[0xf4, 0x8f, 0xbf, 0xbf]),
        ("6.11.1 U+D7FF", &[0xed, 0x9f, 0xbf]),
        ("6.11.2 U+E000", &[0xee, 0x80, 0x80]),
        ("6.11.3 U+FFFD", &[0xef, 0xbf, 0xbd]),
        ("6.22 noncharacter U+FFFE", &[0xef, 0xbf, 0xbe]),
        ("6.22 noncharacter U+FDD0", &[0xef, 0xb7, 0x90]),
        ("6.22 noncharacter U+10FFFE", &[0xf4, 0x8f, 0xbf, 0xbe]),
        ("6 byte order mark", &[0xef, 0xbb, 0xbf]),
    ];
    let invalid: &[(&str, &[u8])] = &[
        ("6.3.1 κόσμε with a surrogate", KOSME_EDITED),
        ("6.8.1 5-byte sequence", &[0xf8, 0x88, 0x80, 0x80, 0x80]),
        (
            "6.8.2 6-byte sequence",
            &[0xfc, 0x84, 0x80, 0x80, 0x80, 0x80],
        ),
        ("6.10.1 U+110000", &[0xf4, 0x90, 0x80, 0x80]),
        ("6.12.1 lone continuation 0x80", &[0x80]),
        ("6.12.2 lone continuation 0xbf", &[0xbf]),
        (
            "6.13.1 lead bytes without continuations",
            &[0xc0, 0x20, 0xc1, 0x20],
        ),
        ("6.14.1 2-byte sequence missing its last byte", &[0xdf]),
        (
            "6.14.2 3-byte sequence missing its last byte",
            &[0xef, 0xbf],
        ),
        (
            "6.14.3 4-byte sequence missing its last byte",
            &[0xf4, 0x8f, 0xbf],
        ),
        (
            "6.15.1 concatenated incomplete sequences",
            &[0xc0, 0xe0, 0x80, 0xf0, 0x80, 0x80, 0xdf, 0xef, 0xbf],
        ),
        ("6.16.1 byte 0xfe", &[0xfe]),
        ("6.16.2 byte 0xff", &[0xff]),
        ("6.16.3 0xfe 0xfe 0xff 0xff", &[0xfe, 0xfe, 0xff, 0xff]),
        ("6.17.1 overlong '/' in 2 bytes", &[0xc0, 0xaf]),
        ("6.17.2 overlong '/' in 3 bytes", &[0xe0, 0x80, 0xaf]),
        ("6.17.3 overlong '/' in 4 bytes", &[0xf0, 0x80, 0x80, 0xaf]),
        ("6.18.1 maximal overlong 2 bytes", &[0xc1, 0xbf]),
        ("6.18.2 maximal overlong 3 bytes", &[0xe0, 0x9f, 0xbf]),
        ("6.18.3 maximal overlong 4 bytes", &[0xf0, 0x8f, 0xbf, 0xbf]),
        ("6.19.1 overlong NUL", &[0xc0, 0x80]),
        ("6.19.2 overlong NUL in 3 bytes", &[0xe0, 0x80, 0x80]),
        ("6.20.1 surrogate U+D800", &[0xed, 0xa0, 0x80]),
        ("6.20.7 surrogate U+DFFF", &[0xed, 0xbf, 0xbf]),
        (
            "6.21.1 surrogate pair U+D800 U+DC00",
            &[0xed, 0xa0, 0x80, 0xed, 0xb0, 0x80],
        ),
        ("6 valid text then 0xff", b"valid text \xff"),
    ];
    let mut cases = Vec::new();
    for (name, bytes) in valid {
        cases.push(case(
            format!("{name}: one frame"),
            vec![f(0x81, bytes)],
            accept(1),
        ));
        // One fragment per byte (the message split inside every code point).
        let frames = one_fragment_per_byte(0x1, bytes);
        cases.push(case(
            format!("{name}: one fragment per byte"),
            vec![frames],
            accept(1),
        ));
        // One frame, written byte by byte.
        cases.push(case(
            format!("{name}: one frame written byte by byte"),
            chunks(&f(0x81, bytes), 1),
            accept(1),
        ));
    }
    for (name, bytes) in invalid {
        cases.push(case(
            format!("{name}: one frame"),
            vec![f(0x81, bytes)],
            fail(1007),
        ));
        let frames = one_fragment_per_byte(0x1, bytes);
        cases.push(case(
            format!("{name}: one fragment per byte"),
            vec![frames],
            fail(1007),
        ));
        // Binary is not checked.
        cases.push(case(
            format!("{name}: as binary"),
            vec![f(0x82, bytes)],
            accept(1),
        ));
    }
    // A valid 4-byte char split across fragments and across writes.
    let clef = "𝄞".as_bytes();
    for cut in 1..4 {
        cases.push(case(
            format!(
                "6.6 U+1D11E split {cut}+{} across fragments and writes",
                4 - cut
            ),
            vec![
                f(0x01, &clef[..cut]),
                f(0x89, b"between"),
                f(0x80, &clef[cut..]),
            ],
            accept_pongs(1, &[b"between"]),
        ));
    }
    // Fail fast: the final fragment is never sent, the 1007 must come anyway.
    cases.push(case(
        "6.4.1 invalid byte in the first fragment, no final fragment",
        vec![f(0x01, &[b'o', b'k', 0xc0, 0x80])],
        fail(1007),
    ));
    cases.push(case(
        "6.4.2 valid first fragment, invalid second, no final fragment",
        vec![
            f(0x01, "κόσμε".as_bytes()),
            f(0x00, &[0xf4, 0x90, 0x80, 0x80]),
        ],
        fail(1007),
    ));
    cases.push(case(
        "6.4.3 lead byte in one fragment, bad continuation in the next, no final",
        vec![f(0x01, &[0xce]), f(0x00, &[0x41])],
        fail(1007),
    ));
    let mut frame = f(0x81, &{
        let mut p = vec![b'a'; 1000];
        p[10] = 0xff;
        p
    });
    frame.truncate(4 + 4 + 40);
    cases.push(case(
        "6.4.4 invalid byte early in one frame, rest of the frame never sent",
        vec![frame],
        fail(1007),
    ));
    cases.push(case(
        "6 message ends inside a code point (fragmented)",
        vec![concat(&[f(0x01, &[b'a', 0xf0, 0x9d]), f(0x80, b"")])],
        fail(1007),
    ));
    cases
}

fn one_fragment_per_byte(opcode: u8, bytes: &[u8]) -> Vec<u8> {
    if bytes.is_empty() {
        return f(0x80 | opcode, b"");
    }
    let mut out = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        let op = if i == 0 { opcode } else { 0 };
        let fin = if i + 1 == bytes.len() { 0x80 } else { 0 };
        out.extend(f(fin | op, &[*b]));
    }
    out
}

/// Autobahn 7.x: the closing handshake.
fn close_cases() -> Vec<Case> {
    let close = |code: u16, reason: &[u8]| f(0x88, &close_payload(code, reason));
    let mut cases = vec![
        case(
            "7.1.1 text, then close",
            vec![concat(&[f(0x81, b"Hello World!"), close(1000, b"")])],
            echo(Some(1000), 1),
        ),
        case(
            "7.1.2 close twice",
            vec![concat(&[close(1000, b""), close(1000, b"")])],
            echo(Some(1000), 0),
        ),
        case(
            "7.1.3 close, then ping",
            vec![concat(&[close(1000, b""), f(0x89, b"Hello World!")])],
            echo(Some(1000), 0),
        ),
        case(
            "7.1.4 close, then text",
            vec![concat(&[close(1000, b""), f(0x81, b"Hello World!")])],
            echo(Some(1000), 0),
        ),
        case(
            "7.1.5 fragment, close, final fragment",
            vec![concat(&[
                f(0x01, b"fragment1"),
                close(1000, b""),
                f(0x80, b"fragment2"),
            ])],
            echo(Some(1000), 0),
        ),
        case(
            "7.1.6 large message, then close",
            vec![concat(&[f(0x82, &vec![b'B'; 60_000]), close(1000, b"")])],
            echo(Some(1000), 1),
        ),
        case(
            "7 close, then garbage that would be a violation",
            vec![concat(&[close(1000, b""), vec![0xff, 0xff, 0xff, 0xff]])],
            echo(Some(1000), 0),
        ),
        case(
            "7.3.1 close without payload",
            vec![f(0x88, b"")],
            echo(None, 0),
        ),
        case(
            "7.3.2 close with a 1-byte payload",
            vec![f(0x88, b"\x03")],
            fail(1002),
        ),
        case(
            "7.3.3 close with a code only",
            vec![close(1000, b"")],
            echo(Some(1000), 0),
        ),
        case(
            "7.3.4 close with a code and a reason",
            vec![close(1000, b"Hello World!")],
            echo(Some(1000), 0),
        ),
        case(
            "7.3.5 close with a 123-byte reason",
            vec![close(1000, &[b'*'; 123])],
            echo(Some(1000), 0),
        ),
        case(
            "7.3.6 close with a 124-byte reason",
            vec![close(1000, &[b'*'; 124])],
            fail(1002),
        ),
        case(
            "7.5.1 close reason not UTF-8",
            vec![close(1000, KOSME_EDITED)],
            fail(1007),
        ),
        case(
            "7 close reason with a multi-byte char, written byte by byte",
            chunks(&close(1001, "bye κόσμε 𝄞".as_bytes()), 1),
            echo(Some(1001), 0),
        ),
        case(
            "7 close reason ending inside a code point",
            vec![close(1000, &"𝄞".as_bytes()[..3])],
            fail(1007),
        ),
    ];
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
        4000, 4999,
    ] {
        cases.push(case(
            format!("7.7 close code {code} is echoed"),
            vec![close(code, b"")],
            echo(Some(code), 0),
        ));
    }
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65_535,
    ] {
        cases.push(case(
            format!("7.9 close code {code} is invalid"),
            vec![close(code, b"")],
            fail(1002),
        ));
    }
    cases
}

#[test]
fn framing_and_limits() {
    let server = start_server();
    assert!(run_cases(&server, framing_cases()) > 40);
}

#[test]
fn pings_and_pongs() {
    let server = start_server();
    assert!(run_cases(&server, ping_cases()) > 10);
}

#[test]
fn reserved_bits_and_opcodes() {
    let server = start_server();
    assert!(run_cases(&server, reserved_cases()) > 20);
}

#[test]
fn fragmentation() {
    let server = start_server();
    assert!(run_cases(&server, fragmentation_cases()) > 15);
}

#[test]
fn utf8_validation() {
    let server = start_server();
    assert!(run_cases(&server, utf8_cases()) > 100);
}

#[test]
fn closing_handshake() {
    let server = start_server();
    assert!(run_cases(&server, close_cases()) > 40);
}

/// docs/CONFORMANCE.md lists every case: its tables must match the cases here. When a
/// case is added or changed, this fails and prints the tables to paste
/// (`cargo test --test conformance docs_list_every_case -- --nocapture`).
#[test]
fn docs_list_every_case() {
    use std::fmt::Write as _;
    let mut out = String::new();
    let sections = [
        (
            "Framing, lengths and limits (Autobahn 1, 9)",
            framing_cases(),
        ),
        ("Pings and pongs (Autobahn 2)", ping_cases()),
        (
            "Reserved bits and opcodes (Autobahn 3, 4)",
            reserved_cases(),
        ),
        ("Fragmentation (Autobahn 5)", fragmentation_cases()),
        ("UTF-8 (Autobahn 6)", utf8_cases()),
        ("Closing handshake (Autobahn 7)", close_cases()),
    ];
    let mut total = 0;
    for (section, cases) in sections {
        let _ = writeln!(out, "\n### {section}: {} cases\n", cases.len());
        let _ = writeln!(out, "| case | sent | expected |\n|---|---|---|");
        total += cases.len();
        for c in cases {
            let bytes: usize = c.writes.iter().map(Vec::len).sum();
            let sent = match c.writes.len() {
                1 => format!("{bytes} bytes in one write"),
                n => format!("{bytes} bytes in {n} writes"),
            };
            let expected = match &c.expect {
                Expect::Accept { messages, pongs } => {
                    let mut e = format!("no close; {messages} message(s) counted");
                    if !pongs.is_empty() {
                        e.push_str(&format!(
                            "; {} pong(s), same payloads, in order",
                            pongs.len()
                        ));
                    }
                    e
                }
                Expect::Fail { code, messages: 0 } => format!("close {code}, TCP closed"),
                Expect::Fail { code, messages } => {
                    format!("{messages} message(s) counted, then close {code}, TCP closed")
                }
                Expect::Echo { payload, messages } => {
                    let echoed = match payload.as_slice() {
                        [] => "empty close echoed".to_owned(),
                        [hi, lo] => format!("close {} echoed", u16::from_be_bytes([*hi, *lo])),
                        other => format!("close {other:?} echoed"),
                    };
                    format!("{messages} message(s) counted; {echoed}; later data ignored")
                }
            };
            let _ = writeln!(
                out,
                "| {} | {sent} | {expected} |",
                c.name.replace('|', "\\|")
            );
        }
    }
    let _ = writeln!(out, "\ntotal: {total}");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFORMANCE.md"))
        .unwrap();
    let missing: Vec<&str> = out
        .lines()
        .filter(|line| line.starts_with("| ") || line.starts_with("### "))
        .filter(|line| !docs.contains(line))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/CONFORMANCE.md is out of date; {} lines differ, first: {:?}\nThe tables:\n{out}",
        missing.len(),
        missing.first()
    );
    assert!(total > 300, "{total} cases");
}
