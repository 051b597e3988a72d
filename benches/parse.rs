//! CPU cost of the other parsers on the hot paths: a RESP pub/sub push from Redis, an
//! envelope inside it, and an upgrade request head with its handshake checks. No I/O.
//!
//! Run: `cargo bench --bench parse`
#![allow(clippy::unwrap_used, clippy::expect_used)] // A bench that cannot parse its own input should stop.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use volley::broker::resp;
use volley::envelope::{self, Envelope, PayloadKind, Target};
use volley::http;
use volley::ws::handshake;

fn sample_envelope(payload_bytes: usize) -> Vec<u8> {
    envelope::encode(&Envelope {
        origin: "0123456789abcdef".into(),
        id: "0123456789abcdef-1-42".into(),
        target: Target::Room("lobby".into()),
        flags: 0,
        kind: PayloadKind::Json,
        payload: Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(payload_bytes))),
        seq: Some(17),
        epoch: None,
        from: Some("user:ann".into()),
        event: None,
    })
    .0
}

fn resp_push(c: &mut Criterion) {
    let envelope = sample_envelope(100);
    let mut wire = BytesMut::new();
    resp::encode_command(&mut wire, &[b"message", b"volley:room:lobby", &envelope]);
    let wire = wire.freeze();
    let mut group = c.benchmark_group("resp_decode_push");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("message_100B", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            let frame = resp::decode(&mut buf).unwrap().unwrap();
            black_box(resp::classify(frame))
        })
    });
    group.finish();
}

fn envelope_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope_decode");
    for size in [100usize, 16 * 1024] {
        let bytes = Bytes::from(sample_envelope(size));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("payload_{size}B"), |b| {
            b.iter(|| black_box(envelope::decode(black_box(&bytes)).unwrap()))
        });
    }
    group.finish();
}

fn handshake_parse(c: &mut Criterion) {
    let request = b"GET /ws?user=ann&protocol=json HTTP/1.1\r\nHost: push.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://app.example.com\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
    let limits = http::Limits {
        head_bytes_max: 8192,
        headers_max: 64,
        body_bytes_max: 65536,
    };
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_head_and_check", |b| {
        b.iter(|| {
            let head = http::parse_head(black_box(request), &limits)
                .unwrap()
                .unwrap();
            let accept = handshake::check(&head).unwrap();
            black_box(handshake::response_101(&accept))
        })
    });
    group.finish();
}

criterion_group!(benches, resp_push, envelope_decode, handshake_parse);
criterion_main!(benches);
