//! Bounded fuzzing on stable Rust: every sans-IO parser's `fuzz_one(&[u8])` fed seeded random
//! and mutated-valid inputs (a fixed count per parser, so a run is reproducible), and a live
//! run that sends random and mutated frames to the real binary after a real upgrade and
//! checks each connection against the library decoder's verdict. docs/FUZZING.md has the
//! counts and the `cargo fuzz` set-up for nightly.
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use std::io::Write;
use std::ops::ControlFlow;
use std::time::Duration;

use volley::ws::frame::{Decoder, Event, Limits};

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Bytes that sit on parser boundaries: length markers, high bits, CR/LF, separators.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x7d, 0x7e, 0x7f, 0x80, 0x81, 0x88, 0x89, 0x8a, 0xbf, 0xc0, 0xe0, 0xed, 0xf0, 0xf4,
    0xff, b'\r', b'\n', b':', b' ', b'\t', b',', b';', b'0', b'9', b'a', b'F',
];

/// Applies 1-4 random mutations; `dictionary` supplies tokens to splice in.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, dictionary: &[&[u8]]) {
    for _ in 0..rng.below(4) + 1 {
        let at = rng.below(data.len() + 1);
        // The byte at `at`, or the last one when `at` is the end.
        let byte = at.min(data.len().saturating_sub(1));
        match rng.below(9) {
            0 if !data.is_empty() => data[byte] ^= 1 << rng.below(8),
            1 if !data.is_empty() => data[byte] = rng.next() as u8,
            2 if !data.is_empty() => data[byte] = INTERESTING[rng.below(INTERESTING.len())],
            3 => data.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            4 if at < data.len() => {
                let end = (at + rng.below(8) + 1).min(data.len());
                data.drain(at..end);
            }
            5 => data.truncate(at),
            6 if at < data.len() => {
                // Duplicate a slice in place (repeated headers, repeated frames).
                let end = (at + rng.below(32) + 1).min(data.len());
                let copy = data[at..end].to_vec();
                data.splice(at..at, copy);
            }
            7 if !dictionary.is_empty() => {
                let token = dictionary[rng.below(dictionary.len())];
                data.splice(at..at, token.iter().copied());
            }
            _ => {
                let len = rng.below(8) + 1;
                let extra = rng.bytes(len);
                data.splice(at..at, extra);
            }
        }
    }
}

/// What one parser's run did: inputs tried, and how many ended in each outcome class (so a
/// generator that only ever hits the first error branch shows up in the counts).
struct Run {
    random: usize,
    seeds: usize,
    mutated: usize,
    outcomes: std::collections::BTreeMap<String, usize>,
}

impl Run {
    fn total(&self) -> usize {
        self.random + self.seeds + self.mutated
    }

    /// Fails when the generator never reached one of these outcomes: the run would then
    /// test less than it claims.
    fn assert_reached(&self, classes: &[&str]) {
        for class in classes {
            assert!(
                self.outcomes.get(*class).is_some_and(|&n| n > 0),
                "no input reached {class}: {:?}",
                self.outcomes
            );
        }
    }
}

/// Feeds `fuzz` every seed as is, `random` random inputs and `mutated` mutations of the
/// seeds; `classify` names each input's outcome for the tally. Panics (a test failure) name
/// the parser and the input.
#[allow(clippy::too_many_arguments)]
fn fuzz_parser(
    parser: &'static str,
    fuzz: fn(&[u8]),
    classify: fn(&[u8]) -> String,
    seed: u64,
    seeds: &[Vec<u8>],
    dictionary: &[&[u8]],
    random: usize,
    mutated: usize,
) -> Run {
    let mut rng = Rng(seed);
    let mut outcomes = std::collections::BTreeMap::new();
    let mut run_one = |data: &[u8]| {
        let result = std::panic::catch_unwind(|| fuzz(data));
        if let Err(panic) = result {
            panic!("{parser}: fuzz_one panicked on {data:02x?}: {panic:?}");
        }
        *outcomes.entry(classify(data)).or_insert(0) += 1;
    };
    for s in seeds {
        run_one(s);
    }
    for _ in 0..random {
        let len = rng.below(96);
        run_one(&rng.bytes(len));
    }
    for _ in 0..mutated {
        let mut data = seeds[rng.below(seeds.len())].clone();
        // Sometimes join two seeds first: pipelined requests, frame streams.
        if rng.below(4) == 0 {
            data.extend_from_slice(&seeds[rng.below(seeds.len())]);
        }
        mutate(&mut rng, &mut data, dictionary);
        run_one(&data);
    }
    let run = Run {
        random,
        seeds: seeds.len(),
        mutated,
        outcomes,
    };
    println!(
        "fuzz {parser}: {} inputs ({} seeds, {} random, {} mutated); outcomes {:?}",
        run.total(),
        run.seeds,
        run.random,
        run.mutated,
        run.outcomes
    );
    run
}

fn classify_frames(data: &[u8]) -> String {
    match verdict_with(data, 64) {
        Verdict::Fail(code) => format!("close {code}"),
        Verdict::Echo(_) => "client close".into(),
        Verdict::Idle => "complete".into(),
        Verdict::MidFrame => "incomplete".into(),
    }
}

fn classify_http(data: &[u8]) -> String {
    let limits = volley::http::Limits {
        head_bytes_max: 512,
        headers_max: 8,
        body_bytes_max: 64,
    };
    match volley::http::parse_head(data, &limits) {
        Ok(Some(head)) => {
            // The query helpers run on every head that parses: they must not panic, and
            // decoding never makes a value longer.
            for pair in head.query.as_deref().into_iter().flat_map(|q| q.split('&')) {
                let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                let raw = head
                    .query_param(key)
                    .expect("a key from the query is found");
                if let Some(decoded) = volley::http::percent_decode(raw) {
                    assert!(decoded.len() <= raw.len());
                }
            }
            "head".into()
        }
        Ok(None) => "incomplete".into(),
        Err(e) => format!("{}", e.status()),
    }
}

fn classify_handshake(data: &[u8]) -> String {
    let limits = volley::http::Limits {
        head_bytes_max: 1024,
        headers_max: 16,
        body_bytes_max: 0,
    };
    match volley::http::parse_head(data, &limits) {
        Ok(Some(head)) => match volley::ws::handshake::check(&head) {
            Ok(_) => "101".into(),
            Err(reject) => format!("{}", reject.status()),
        },
        _ => "no head".into(),
    }
}

const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// Valid client frame streams: every opcode, every length form, fragments with control
/// frames between, UTF-8 split across fragments, close codes and reasons.
fn frame_seeds() -> Vec<Vec<u8>> {
    let fr =
        |first: u8, payload: &[u8], form: u8| client_frame_with_form(first, payload, MASK, form);
    let mut seeds = vec![
        fr(0x81, b"hello", 0),
        fr(0x82, &[0, 1, 2, 255], 0),
        fr(0x81, b"", 0),
        fr(0x81, &[b'a'; 40], 2),
        fr(0x82, &[7; 20], 8),
        fr(0x89, b"ping", 0),
        fr(0x8a, b"pong", 0),
        fr(0x88, b"", 0),
        fr(0x88, &[0x03, 0xe8], 0),
        fr(0x88, &[0x03, 0xe9, b'b', b'y', b'e'], 0),
        fr(0x88, &[0x0f, 0xa0], 0),
        fr(0x81, "κόσμε 𝄞".as_bytes(), 0),
    ];
    let clef = "𝄞".as_bytes();
    let mut split = fr(0x01, &clef[..2], 0);
    split.extend(fr(0x89, b"mid", 0));
    split.extend(fr(0x80, &clef[2..], 0));
    seeds.push(split);
    let mut frags = fr(0x02, b"ab", 0);
    frags.extend(fr(0x00, b"cd", 2));
    frags.extend(fr(0x8a, b"", 0));
    frags.extend(fr(0x80, b"ef", 8));
    seeds.push(frags);
    let mut stream = fr(0x81, b"one", 0);
    stream.extend(fr(0x82, b"two", 0));
    stream.extend(fr(0x89, b"three", 0));
    stream.extend(fr(0x88, &[0x03, 0xe8], 0));
    seeds.push(stream);
    seeds
}

/// Valid request heads (and bodies): API calls, pipelines, chunked bodies, upgrades.
fn http_seeds() -> Vec<Vec<u8>> {
    [
        &b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /api/stats?x=1&y=%20 HTTP/1.1\r\nHost: a.b:80\r\nConnection: close\r\n\r\n",
        b"POST /api/broadcast HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /api/broadcast HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://x/healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: v\r\n\r\n",
        b"a\r\n0123456789\r\n0\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ]
    .iter()
    .map(|s| s.to_vec())
    .chain([
        // Exactly the fuzz limit of 8 header lines: one more is a 431.
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
            (1..8).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
        )
        .into_bytes(),
        // Just under the fuzz limit of 512 head bytes: a few more is a 431.
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "p".repeat(460))
            .into_bytes(),
    ])
    .collect()
}

/// Valid upgrade requests with the variations RFC 6455 §4.2.1 and RFC 9110 allow.
fn handshake_seeds() -> Vec<Vec<u8>> {
    let base = [
        ("Host", "server.example.com"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let build = |line: &str, headers: &[(&str, &str)]| {
        let mut s = format!("{line}\r\n");
        for (n, v) in headers {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    };
    let mut seeds = vec![build("GET /ws HTTP/1.1", &base)];
    let mut h = base.to_vec();
    h[1] = ("upgrade", "WebSocket");
    h[2] = ("connection", "keep-alive, Upgrade");
    seeds.push(build("GET /ws?token=abc HTTP/1.1", &h));
    let mut h = base.to_vec();
    h.push(("Sec-WebSocket-Protocol", "chat, superchat"));
    h.push(("Origin", "http://example.com"));
    seeds.push(build("GET /ws HTTP/1.1", &h));
    let mut h = base.to_vec();
    h[3] = ("Sec-WebSocket-Key", "AQIDBAUGBwgJCgsMDQ4PEA==");
    seeds.push(build("GET /ws HTTP/1.1", &h));
    seeds.push(build("GET /ws HTTP/1.1", &base[..4]));
    seeds.push(build("POST /ws HTTP/1.1", &base));
    seeds
}

const FRAME_DICTIONARY: &[&[u8]] = &[
    &[0x81, 0x80],
    &[0x82, 0xfe, 0x00, 0x7e],
    &[0x82, 0xff, 0, 0, 0, 0, 0, 0, 0x01, 0x00],
    &[0x89, 0x80, 0, 0, 0, 0],
    &[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8],
    &[0x00, 0x81, 0, 0, 0, 0, b'x'],
    &[0xed, 0xa0, 0x80],
    &[0xf0, 0x9d, 0x84, 0x9e],
];

const HTTP_DICTIONARY: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: 99999999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Host: y\r\n",
    b"Connection: close\r\n",
    b"Expect: 100-continue\r\n",
    b"HTTP/2.0",
    b"ffffffffffffffff\r\n",
    b";a=b",
    b" \t",
    b"%00%zz",
];

const HANDSHAKE_DICTIONARY: &[&[u8]] = &[
    b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
    b"Sec-WebSocket-Version: 8\r\n",
    b"Sec-WebSocket-Version: 13\r\n",
    b"Upgrade: h2c\r\n",
    b"Connection: close\r\n",
    b"HTTP/1.0",
    b"==",
    b"\r\n",
];

#[test]
fn fuzz_frame_decoder() {
    let run = fuzz_parser(
        "ws::frame",
        volley::ws::frame::fuzz_one,
        classify_frames,
        0x9E37_79B9_7F4A_7C15,
        &frame_seeds(),
        FRAME_DICTIONARY,
        25_000,
        75_000,
    );
    assert!(run.total() >= 100_000);
    run.assert_reached(&[
        "close 1002",
        "close 1007",
        "close 1009",
        "client close",
        "complete",
    ]);
}

#[test]
fn fuzz_http_parser() {
    let run = fuzz_parser(
        "http",
        volley::http::fuzz_one,
        classify_http,
        0xD1B5_4A32_D192_ED03,
        &http_seeds(),
        HTTP_DICTIONARY,
        25_000,
        75_000,
    );
    assert!(run.total() >= 100_000);
    run.assert_reached(&["head", "400", "431", "505", "incomplete"]);
}

#[test]
fn fuzz_handshake() {
    let run = fuzz_parser(
        "ws::handshake",
        volley::ws::handshake::fuzz_one,
        classify_handshake,
        0x94D0_49BB_1331_11EB,
        &handshake_seeds(),
        HANDSHAKE_DICTIONARY,
        25_000,
        75_000,
    );
    assert!(run.total() >= 100_000);
    run.assert_reached(&["101", "400", "426"]);
}

/// Valid envelopes as volley encodes them, plus one a foreign publisher might write (extra
/// keys, map16 header, a payload before the target).
fn envelope_seeds() -> Vec<Vec<u8>> {
    use volley::envelope::{encode, Envelope, PayloadKind, Target, FLAG_CONTROL};
    let base = Envelope {
        origin: "node-1".into(),
        id: "node-1-0-7".into(),
        target: Target::All,
        flags: 0,
        kind: PayloadKind::Text,
        payload: bytes::Bytes::from_static(b"hello"),
        seq: None,
        epoch: None,
        from: None,
        event: None,
    };
    let mut seeds = vec![encode(&base).0];
    let mut e = base.clone();
    e.target = Target::User("42".into());
    e.kind = PayloadKind::Json;
    e.payload = bytes::Bytes::from_static(br#"{"a":[1,2,{"b":null}]}"#);
    e.seq = Some(41);
    e.from = Some("user:7".into());
    e.event = Some("chat".into());
    seeds.push(encode(&e).0);
    let mut e = base.clone();
    e.target = Target::Room("lobby".into());
    e.kind = PayloadKind::Binary;
    e.payload = bytes::Bytes::from_static(&[0, 1, 2, 0xff, 0xc0]);
    seeds.push(encode(&e).0);
    let mut e = base.clone();
    e.target = Target::User("9".into());
    e.flags = FLAG_CONTROL;
    e.kind = PayloadKind::Json;
    e.payload = bytes::Bytes::from_static(br#"{"op":"join","room":"lobby"}"#);
    seeds.push(encode(&e).0);
    let mut e = base;
    e.kind = PayloadKind::Text;
    e.payload = bytes::Bytes::from("κόσμε 𝄞 ".repeat(20));
    seeds.push(encode(&e).0);
    // Foreign publisher: map16, keys in another order, an unknown key holding an array.
    let mut foreign = vec![0xde, 0x00, 0x05];
    for (key, value) in [
        (&b"\xa7payload"[..], &b"\xc4\x03abc"[..]),
        (b"\xa6target", b"\xa9room:a:b"),
        (b"\xa1v", b"\x01"),
        (b"\xa5extra", b"\x93\x01\xa1x\xc0"),
        (b"\xa3seq", b"\xcf\x00\x00\x00\x00\x00\x00\x00\x05"),
    ] {
        foreign.extend_from_slice(key);
        foreign.extend_from_slice(value);
    }
    seeds.push(foreign);
    seeds
}

/// RESP2 as a subscriber connection receives it: confirmations, messages (binary payloads,
/// empty ones), pongs, errors, nulls, nested arrays, and a pipeline of all of them.
fn resp_seeds() -> Vec<Vec<u8>> {
    let message = |channel: &[u8], payload: &[u8]| {
        let mut m = format!("*3\r\n$7\r\nmessage\r\n${}\r\n", channel.len()).into_bytes();
        m.extend_from_slice(channel);
        m.extend_from_slice(format!("\r\n${}\r\n", payload.len()).as_bytes());
        m.extend_from_slice(payload);
        m.extend_from_slice(b"\r\n");
        m
    };
    let mut seeds: Vec<Vec<u8>> = [
        &b"*3\r\n$9\r\nsubscribe\r\n$10\r\nvolley:all\r\n:1\r\n"[..],
        b"*3\r\n$11\r\nunsubscribe\r\n$10\r\nvolley:all\r\n:0\r\n",
        b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
        b"+PONG\r\n",
        b"+OK\r\n",
        b"-NOAUTH Authentication required.\r\n",
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
        b":12\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
        b"*2\r\n*1\r\n:1\r\n*0\r\n",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect();
    seeds.push(message(b"volley:all", b"hello"));
    seeds.push(message(b"volley:room:lobby", b""));
    seeds.push(message(b"volley:user:7", &envelope_seeds()[1]));
    let pipeline: Vec<u8> = seeds.iter().flatten().copied().collect();
    seeds.push(pipeline);
    seeds
}

/// Client ops on the native protocol: every op, every ref form, escapes, big numbers.
fn native_seeds() -> Vec<Vec<u8>> {
    [
        &br#"{"op":"join","room":"lobby","ref":1}"#[..],
        br#"{"op":"leave","room":"lobby","ref":"r-2"}"#,
        br#"{"op":"publish","room":"lobby","data":{"a":[1,"\u00e9",null,true,-0.5e3]},"ref":3}"#,
        br#"{"op":"publish","user":"42","data":"hi","ref":4}"#,
        br#"{"op":"ack","channel":"room:lobby","seq":17,"ref":5}"#,
        br#"{"op":"ack","channel":"all","seq":18446744073709551615}"#,
        br#"{"op":"join","room":"caf\u00e9\"","x":[{}],"ref":-9223372036854775808}"#,
        br#"  {"ref":18446744073709551615,"room":"a","op":"join"}  "#,
        br#"{"op":"publish","room":"r","data":[[[[[]]]]],"ref":"\ud83d\ude00"}"#,
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

const AUTH_NOW_S: u64 = 1_700_000_000;

/// Correctly signed HS256 tokens (with the fuzz verifier's secret) with varied claims, a
/// header with extra members, and the `Bearer` header forms; mutations of these reach the
/// signature check and, through the claims parser `fuzz_one` also calls, the claim rules.
fn auth_seeds() -> Vec<Vec<u8>> {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let sign = |header: &str, claims: &str| {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(volley::auth::FUZZ_HS256_SECRET)
            .expect("HMAC takes a key of any length");
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes()))
    };
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let mut seeds: Vec<Vec<u8>> = [
        (header, r#"{"sub":"7","exp":4000000000}"#),
        (
            header,
            r#"{"sub":"alice","exp":4000000000,"nbf":1,"rooms":["lobby","team-*"],"publish":["room:*","user:7"]}"#,
        ),
        (header, r#"{"sub":"x","exp":1}"#),
        (header, r#"{"sub":"x","exp":4000000000,"nbf":3999999999}"#),
        (header, r#"{"sub":"","exp":4000000000,"rooms":[""]}"#),
        (r#"{"alg":"HS256","kid":"k1","jku":"http://x"}"#, r#"{"sub":"k","exp":4000000000}"#),
        (r#"{"alg":"none"}"#, r#"{"sub":"n","exp":4000000000}"#),
    ]
    .iter()
    .map(|(h, c)| sign(h, c).into_bytes())
    .collect();
    seeds.push(format!("Bearer {}", sign(header, r#"{"sub":"b","exp":4000000000}"#)).into_bytes());
    // The claims and header parsers also see the raw bytes: seed them with JSON too.
    seeds.push(br#"{"sub":"raw","exp":4000000000,"rooms":["a*"]}"#.to_vec());
    seeds.push(header.as_bytes().to_vec());
    seeds
}

const ENVELOPE_DICTIONARY: &[&[u8]] = &[
    b"\xa1v\x01",
    b"\xa6target\xa3all",
    b"\xa6target\xa6user:7",
    b"\xa7payload\xa0",
    b"\xa7payload\xc4\x00",
    b"\xa5flags\x03",
    b"\xa3seq\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\xa4from\xc0",
    b"\xde\xff\xff",
    b"\xdf\xff\xff\xff\xff",
    b"\xdb\xff\xff\xff\xff",
    b"\xdd\x00\x00\x00\x10",
    b"\xc6\x7f\xff\xff\xff",
    b"\x91\x91\x91\x91",
    b"\xed\xa0\x80",
];

const RESP_DICTIONARY: &[&[u8]] = &[
    b"\r\n",
    b"*3\r\n",
    b"*-1\r\n",
    b"*99999999999\r\n",
    b"$-1\r\n",
    b"$0\r\n\r\n",
    b"$9223372036854775807\r\n",
    b"$-2\r\n",
    b":-9223372036854775808\r\n",
    b"$7\r\nmessage\r\n",
    b"$9\r\nsubscribe\r\n",
    b"+PONG\r\n",
    b"-ERR x\r\n",
    b"_\r\n",
    b">3\r\n",
];

const NATIVE_DICTIONARY: &[&[u8]] = &[
    br#""op":"#,
    br#""join""#,
    br#""publish""#,
    br#""ack""#,
    br#""ref":"#,
    br#""room":"#,
    br#""user":"#,
    br#""data":"#,
    br#""seq":"#,
    br#""channel":"room:"#,
    b"\\u0000",
    b"\\ud800",
    b"1e999",
    b"-0",
    b"18446744073709551616",
    b"[[[[[[[[[[[[[[[[",
    b"\xe2\x80\xa8",
    b"null",
];

const AUTH_DICTIONARY: &[&[u8]] = &[
    b".",
    b"..",
    b"=",
    b"Bearer ",
    b"bearer  ",
    b"eyJhbGciOiJub25lIn0",
    b"eyJhbGciOiJSUzI1NiJ9",
    b"eyJ9",
    b"+/",
    b"\xff",
];

fn classify_envelope(data: &[u8]) -> String {
    match volley::envelope::decode(&bytes::Bytes::copy_from_slice(data)) {
        Ok(e) => format!("ok {:?}", e.kind),
        Err(e) => {
            let debug = format!("{e:?}");
            debug.split('(').next().unwrap_or_default().to_string()
        }
    }
}

fn classify_resp(data: &[u8]) -> String {
    use volley::broker::resp::{classify, decode, Push};
    let mut buf = bytes::BytesMut::from(data);
    let mut last = "nothing".to_string();
    loop {
        match decode(&mut buf) {
            Ok(Some(frame)) => {
                last = match classify(frame) {
                    Push::Message { .. } => "message",
                    Push::Subscribed { .. } => "subscribed",
                    Push::Unsubscribed { .. } => "unsubscribed",
                    Push::PSubscribed { .. } => "psubscribed",
                    Push::Pong => "pong",
                    Push::Error(_) => "error reply",
                    Push::Other(_) => "other",
                }
                .into();
            }
            // The last complete frame's kind, or why decoding stopped.
            Ok(None) if buf.is_empty() => return last,
            Ok(None) => return "incomplete".into(),
            Err(volley::broker::resp::Error::Protocol(_)) => return "protocol error".into(),
            Err(volley::broker::resp::Error::TooLarge(_)) => return "too large".into(),
        }
    }
}

fn classify_native(data: &[u8]) -> String {
    use volley::protocol::native::{decode_op, Limits, Op};
    // The smaller of the two limit sets `fuzz_one` checks, so `too_large` is reachable.
    let limits = Limits {
        name_bytes_max: 8,
        data_bytes_max: 16,
    };
    // As `fuzz_one` does: invalid UTF-8 is decoded lossily (a real text frame never holds
    // it, the frame decoder refuses it first), so every input reaches the op parser.
    let text = String::from_utf8_lossy(data);
    match decode_op(&text, &limits) {
        Ok(request) => match request.op {
            Op::Join { .. } => "join",
            Op::Leave { .. } => "leave",
            Op::Publish { .. } => "publish",
            Op::Ack { .. } => "ack",
            Op::Recover { .. } => "recover",
            Op::Ping => "ping",
        }
        .into(),
        Err(e) => e.code.as_str().into(),
    }
}

fn classify_auth(data: &[u8]) -> String {
    use volley::auth::{AuthError, Verifier};
    thread_local! {
        static VERIFIER: Verifier = Verifier::hs256(volley::auth::FUZZ_HS256_SECRET);
    }
    let text = String::from_utf8_lossy(data);
    let token = volley::auth::bearer_token(&text).unwrap_or(&text);
    match VERIFIER.with(|v| v.verify(token, AUTH_NOW_S)) {
        Ok(_) => "ok".into(),
        Err(AuthError::Expired { .. }) => "expired".into(),
        Err(e) => {
            let debug = format!("{e:?}");
            debug.split('(').next().unwrap_or_default().to_string()
        }
    }
}

#[test]
fn fuzz_envelope_decoder() {
    let run = fuzz_parser(
        "envelope",
        volley::envelope::fuzz_one,
        classify_envelope,
        0xBF58_476D_1CE4_E5B9,
        &envelope_seeds(),
        ENVELOPE_DICTIONARY,
        25_000,
        75_000,
    );
    assert!(run.total() >= 100_000);
    run.assert_reached(&[
        "ok Text",
        "ok Json",
        "ok Binary",
        "Malformed",
        "Missing",
        "TooLarge",
        "BadTarget",
        "UnsupportedVersion",
    ]);
}

#[test]
fn fuzz_resp_decoder() {
    let run = fuzz_parser(
        "broker::resp",
        volley::broker::resp::fuzz_one,
        classify_resp,
        0x6A09_E667_F3BC_C908,
        &resp_seeds(),
        RESP_DICTIONARY,
        25_000,
        75_000,
    );
    assert!(run.total() >= 100_000);
    run.assert_reached(&[
        "message",
        "subscribed",
        "unsubscribed",
        "pong",
        "error reply",
        "other",
        "incomplete",
        "protocol error",
    ]);
}

#[test]
fn fuzz_native_ops() {
    let run = fuzz_parser(
        "protocol::native",
        volley::protocol::native::fuzz_one,
        classify_native,
        0xBB67_AE85_84CA_A73B,
        &native_seeds(),
        NATIVE_DICTIONARY,
        25_000,
        75_000,
    );
    assert!(run.total() >= 100_000);
    run.assert_reached(&[
        "join",
        "leave",
        "publish",
        "ack",
        "bad_json",
        "unknown_op",
        "bad_field",
        "too_large",
    ]);
}

#[test]
fn fuzz_auth_tokens() {
    let run = fuzz_parser(
        "auth",
        volley::auth::fuzz_one,
        classify_auth,
        0x3C6E_F372_FE94_F82B,
        &auth_seeds(),
        AUTH_DICTIONARY,
        25_000,
        75_000,
    );
    assert!(run.total() >= 100_000);
    run.assert_reached(&[
        "ok",
        "expired",
        "NotYetValid",
        "BadClaims",
        "BadSignature",
        "Malformed",
        "UnsupportedAlgorithm",
    ]);
}

/// What the server must do with bytes sent after an upgrade, per the library decoder
/// (which the parser fuzz above checks is independent of how the bytes are split).
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A protocol violation: the server closes with this code.
    Fail(u16),
    /// The client closed: the server echoes this payload (the code alone, or nothing).
    Echo(Vec<u8>),
    /// Nothing decisive and the decoder is between frames: the connection must still work.
    Idle,
    /// Nothing decisive, the decoder is inside a frame: we just hang up.
    MidFrame,
}

const LIVE_MESSAGE_BYTES_MAX: usize = 256;

fn verdict(data: &[u8]) -> Verdict {
    verdict_with(data, LIVE_MESSAGE_BYTES_MAX)
}

fn verdict_with(data: &[u8], message_bytes_max: usize) -> Verdict {
    let limits = Limits {
        message_bytes_max,
        message_fragments_max: volley::config::MESSAGE_FRAGMENTS_MAX_DEFAULT,
    };
    let mut input = data.to_vec();
    let mut decoder = Decoder::new();
    let mut close = None;
    let result = decoder.feed(&mut input, &limits, &mut |event| {
        if let Event::Close(c) = event {
            close = Some(
                c.map(|(code, _)| code.to_be_bytes().to_vec())
                    .unwrap_or_default(),
            );
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    match (result, close) {
        (Err(e), _) => Verdict::Fail(e.close_code()),
        (Ok(()), Some(payload)) => Verdict::Echo(payload),
        (Ok(()), None) if decoder.is_idle() => Verdict::Idle,
        (Ok(()), None) => Verdict::MidFrame,
    }
}

#[test]
fn live_fuzz_after_upgrade() {
    const CONNECTIONS: usize = 300;
    let limit = LIVE_MESSAGE_BYTES_MAX.to_string();
    let server = Server::start(&[
        "--shards",
        "2",
        "--message-bytes-max",
        &limit,
        "--ping-interval-s",
        "3600",
        "--idle-timeout-s",
        "7200",
    ]);
    let mut neighbour = connect(&server);
    server.wait_for("the neighbour", |s| {
        s["total"]["connections"].as_u64() == Some(1)
    });
    let seeds = frame_seeds();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let (mut fails, mut echoes, mut idle, mut mid) = (0u64, 0, 0, 0);
    for i in 0..CONNECTIONS {
        let data = match i % 3 {
            0 => {
                let len = rng.below(200) + 1;
                rng.bytes(len)
            }
            _ => {
                let mut data = seeds[rng.below(seeds.len())].clone();
                mutate(&mut rng, &mut data, FRAME_DICTIONARY);
                data
            }
        };
        let expected = verdict(&data);
        let mut stream = raw_upgrade(server.addr);
        // A bound on each wait; a correct server answers long before.
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // The server never resets a connection it is closing (it half-closes and drains),
        // so the write goes through; an error would show in the reads below anyway.
        let _ = stream.write_all(&data);
        let what = format!("input {i} {data:02x?}: expected {expected:?}");
        match &expected {
            Verdict::Fail(code) => {
                assert_eq!(read_close_code(&mut stream), *code, "{what}");
                assert!(read_to_close(&mut stream).is_empty(), "{what}");
                fails += 1;
            }
            Verdict::Echo(payload) => {
                let close = loop {
                    let (first, p) =
                        read_server_frame(&mut stream).unwrap_or_else(|e| panic!("{what}: {e}"));
                    if first & 0x0f == 0x8 {
                        break (first, p);
                    }
                    assert_eq!(first, 0x8a, "{what}: only pongs before the echo");
                };
                assert_eq!(close, (0x88, payload.clone()), "{what}");
                assert!(read_to_close(&mut stream).is_empty(), "{what}");
                echoes += 1;
            }
            Verdict::Idle => {
                let probe = format!("probe {i}");
                stream
                    .write_all(&client_frame(0x89, probe.as_bytes(), Some(MASK)))
                    .unwrap();
                loop {
                    let (first, p) =
                        read_server_frame(&mut stream).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(first, 0x8a, "{what}: only pongs while open");
                    if p == probe.as_bytes() {
                        break;
                    }
                }
                idle += 1;
            }
            // Hang up in the middle of a frame: the server sees EOF and drops it.
            Verdict::MidFrame => mid += 1,
        }
        drop(stream);
        assert!(process_alive(server.pid()), "volley died on {what}");
    }
    println!(
        "live fuzz: {CONNECTIONS} connections: {fails} failed with a code, {echoes} closed by \
         the client, {idle} still usable, {mid} hung up mid-frame"
    );
    // The verdicts must exercise every path, or the generator has drifted.
    assert!(fails > 50 && echoes > 0 && idle > 0 && mid > 0);
    server.wait_for("every fuzz connection to be gone", |s| {
        s["total"]["connections"].as_u64() == Some(1)
    });
    assert_eq!(server.total("protocol_error_closes_total"), fails);
    let (status, body) = request(server.addr, "GET", "/healthz", b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.broadcast(b"still here"), 1);
    let got = next_data(&mut neighbour);
    assert!(carries(&got, "still here"), "neighbour got {got:?}");
    assert!(process_alive(server.pid()));
}

/// The socket.io codecs (src/protocol/socketio/): seeds are the fixtures the real npm
/// packages wrote (tools/socketio-fixtures), outcomes split into decoded and refused.
fn socketio_seeds(prefixes: &[&str]) -> Vec<Vec<u8>> {
    let text = include_str!("../tools/socketio-fixtures/fixtures.json");
    let fixtures: Vec<serde_json::Value> = serde_json::from_str(text).unwrap();
    fixtures
        .iter()
        .filter(|f| {
            prefixes
                .iter()
                .any(|p| f["name"].as_str().unwrap().starts_with(p))
        })
        .map(|f| match f["hex"].as_str() {
            Some(hex) => (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect(),
            None => f["text"].as_str().unwrap().as_bytes().to_vec(),
        })
        .collect()
}

#[test]
fn fuzz_socketio_codecs() {
    use volley::protocol::socketio::{adapter, engineio, packet};
    fn classify_eio(data: &[u8]) -> String {
        let limits = engineio::PayloadLimits {
            body_bytes_max: 4096,
            packets_max: 16,
        };
        let ok = engineio::decode_payload(data, &limits).is_ok();
        (if ok { "decoded" } else { "refused" }).into()
    }
    fn classify_sio(data: &[u8]) -> String {
        let limits = packet::Limits {
            attachments_max: 4,
            nsp_bytes_max: 64,
        };
        let ok = std::str::from_utf8(data).is_ok_and(|t| packet::decode(t, &limits).is_ok());
        (if ok { "decoded" } else { "refused" }).into()
    }
    fn classify_adapter(data: &[u8]) -> String {
        let limits = adapter::Limits {
            rooms_max: 4,
            name_bytes_max: 32,
            depth_max: 8,
            values_max: 64,
        };
        let ok = adapter::decode_broadcast(data, &limits).is_ok()
            || adapter::decode_request(data, &limits).is_ok();
        (if ok { "decoded" } else { "refused" }).into()
    }
    let runs = [
        (
            "socketio::engineio",
            engineio::fuzz_one as fn(&[u8]),
            classify_eio as fn(&[u8]) -> String,
            &["eio_"][..],
            &[&b"\x1e"[..], b"b", b"=="][..],
        ),
        (
            "socketio::packet",
            packet::fuzz_one,
            classify_sio,
            &["sio_"],
            &[
                &b"-"[..],
                b"/",
                b",",
                b"[",
                b"{\"_placeholder\":true,\"num\":1}",
            ],
        ),
        (
            "socketio::adapter",
            adapter::fuzz_one,
            classify_adapter,
            &["emitter_", "adapter_", "volley_"],
            &[&b"\x91"[..], b"\xdc\xff\xff", b"\xc4\x05", b"{"],
        ),
    ];
    for (i, (name, fuzz, classify, prefixes, dictionary)) in runs.into_iter().enumerate() {
        let run = fuzz_parser(
            name,
            fuzz,
            classify,
            0x5851_F42D_4C95_7F2D ^ i as u64,
            &socketio_seeds(prefixes),
            dictionary,
            10_000,
            30_000,
        );
        assert!(run.total() >= 40_000);
        run.assert_reached(&["decoded", "refused"]);
    }
}
