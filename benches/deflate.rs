//! CPU cost of permessage-deflate (RFC 7692) on the broadcast path: compressing one
//! message once with the shard's reused `Compressor` and building its RSV1 frame, and
//! inflating a compressed client message. Prints the compression ratio of each payload.
//! No I/O.
//!
//! Run: `cargo bench --bench deflate`
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use volley::ws::deflate::{Compressor, Inflater, Level};
use volley::ws::frame::OpCode;

/// One push as an app would send it: an envelope around a small event. About 300 bytes.
fn event(i: u32) -> String {
    format!(
        concat!(
            r#"{{"type":"message","room":"sports/football/match-{}","seq":{},"#,
            r#""ts":{},"from":"feed-{}","data":{{"minute":{},"event":"{}","#,
            r#""player":"{}","team":"{}","score":[{},{}],"#,
            r#""text":"{} for {} in minute {}, the crowd is on its feet","#,
            r#""venue":"Stamford Bridge, London"}}}}"#
        ),
        4000 + i % 13,
        1_842_291 + i,
        1_763_781_123_456u64 + u64::from(i) * 917,
        i % 5,
        i % 90,
        ["goal", "corner", "yellow_card", "substitution"][i as usize % 4],
        ["B. Saka", "C. Palmer", "M. Odegaard", "N. Jackson"][i as usize % 4],
        ["ARS", "CHE"][i as usize % 2],
        i % 4,
        i % 3,
        ["Goal", "Corner", "Card", "Change"][i as usize % 4],
        ["ARS", "CHE"][i as usize % 2],
        i % 90,
    )
}

/// The ~300-byte message, and a ~4 KiB one (a snapshot of recent events, as a client
/// gets on join), both JSON.
fn payloads() -> Vec<(&'static str, Vec<u8>)> {
    let small = event(7).into_bytes();
    let mut big = String::from("{\"type\":\"snapshot\",\"events\":[");
    let mut i = 0;
    while big.len() < 4096 - 400 {
        if i > 0 {
            big.push(',');
        }
        big.push_str(&event(i));
        i += 1;
    }
    big.push_str("]}");
    vec![("json_300", small), ("json_4k", big.into_bytes())]
}

fn compress(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate_encode_frame");
    for (name, payload) in payloads() {
        for (level_name, level) in [("level1", Level::FAST), ("level6", Level::DEFAULT)] {
            let mut compressor = Compressor::new(level);
            let frame = compressor
                .encode_frame(OpCode::Text, &payload)
                .unwrap()
                .unwrap();
            // The frame header is 2 or 4 bytes; the ratio is of payloads.
            let header = if frame.len() - 2 < 126 { 2 } else { 4 };
            let compressed = frame.len() - header;
            println!(
                "{name} {level_name}: {} -> {} bytes, ratio {:.2} ({:.0}% saved)",
                payload.len(),
                compressed,
                payload.len() as f64 / compressed as f64,
                100.0 * (1.0 - compressed as f64 / payload.len() as f64)
            );
            group.throughput(Throughput::Bytes(payload.len() as u64));
            group.bench_with_input(
                BenchmarkId::new(name, level_name),
                &payload,
                |b, payload| b.iter(|| compressor.encode_frame(OpCode::Text, black_box(payload))),
            );
        }
    }
    group.finish();

    // The fixed cost of a message: resetting the compressor (miniz_oxide rebuilds its
    // LZ buffer and clears its dictionary and hash chains, about 230 KiB of writes) and the
    // sync flush, with nothing to compress.
    let mut group = c.benchmark_group("deflate_fixed_cost");
    group.throughput(Throughput::Elements(1));
    let mut compressor = Compressor::new(Level::FAST);
    group.bench_function("empty/level1", |b| {
        b.iter(|| compressor.encode_frame(OpCode::Text, black_box(b"")))
    });
    group.finish();
}

fn inflate(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate_inflate_message");
    for (name, payload) in payloads() {
        let compressed = Compressor::new(Level::FAST).compress(&payload).unwrap();
        group.throughput(Throughput::Bytes(payload.len() as u64));
        // A fresh `Inflater` per message, as without client context takeover: each
        // round allocates and frees the 43 KiB inflate state.
        group.bench_with_input(
            BenchmarkId::from_parameter(name),
            &compressed,
            |b, compressed| {
                let mut out = Vec::with_capacity(8192);
                b.iter(|| {
                    let mut inflater = Inflater::default();
                    inflater
                        .message(true, black_box(compressed), 1 << 16, &mut out)
                        .unwrap();
                    assert_eq!(out.len(), payload.len());
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, compress, inflate);
criterion_main!(benches);
