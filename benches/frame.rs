//! CPU cost of the frame paths: encoding a server frame once per publish, and decoding
//! (unmasking, validating) client frames. No I/O.
//!
//! Run: `cargo bench --bench frame`
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::ops::ControlFlow;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use volley::ws::frame::{self, Decoder, Event, Limits, OpCode};

fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for size in [16usize, 100, 1024, 16 * 1024] {
        let payload = vec![b'a'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            b.iter(|| frame::encode(OpCode::Text, black_box(payload)))
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_client_text");
    let limits = Limits {
        message_bytes_max: 1 << 20,
        message_fragments_max: volley::config::MESSAGE_FRAGMENTS_MAX_DEFAULT,
    };
    for size in [16usize, 100, 1024, 16 * 1024] {
        // 16 frames per read, as a chatty client would send them.
        let text = "é".repeat(size / 2);
        let one = masked_frame(0x1, text.as_bytes());
        let input: Vec<u8> = one.iter().copied().cycle().take(one.len() * 16).collect();
        let mut scratch = input.clone();
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &input, |b, input| {
            let mut decoder = Decoder::new();
            b.iter(|| {
                // Decoding unmasks in place, so each round starts from a fresh copy (a
                // memcpy of the read, as the socket read into the scratch buffer would be).
                scratch.copy_from_slice(input);
                let mut messages = 0u32;
                decoder
                    .feed(&mut scratch, &limits, &mut |event| {
                        if let Event::Text(t) = event {
                            black_box(t);
                            messages += 1;
                        }
                        ControlFlow::Continue(())
                    })
                    .unwrap();
                assert_eq!(messages, 16);
            })
        });
    }
    group.finish();
}

/// Joining one 1 MiB text message sent in 64 B (Autobahn 9.3.1's 16,384 frames per MiB),
/// 1 KiB and 64 KiB fragments, fed in 64 KiB reads as the shard's scratch buffer would:
/// the cost per byte must stay flat as the fragments shrink, bar the per-frame header
/// work (no quadratic join).
fn decode_fragmented(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_fragmented_1mib");
    let text = vec![b'*'; 1 << 20];
    for fragment_bytes in [64usize, 1024, 64 * 1024] {
        let frames = text.len() / fragment_bytes;
        let limits = Limits {
            message_bytes_max: text.len(),
            message_fragments_max: frames,
        };
        let mut input = Vec::new();
        for (i, chunk) in text.chunks(fragment_bytes).enumerate() {
            let mut one = masked_frame(if i == 0 { 0x1 } else { 0x0 }, chunk);
            if i + 1 < frames {
                one[0] &= 0x7f; // not the final frame
            }
            input.extend(one);
        }
        let mut scratch = input.clone();
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(fragment_bytes),
            &input,
            |b, input| {
                let mut decoder = Decoder::new();
                b.iter(|| {
                    scratch.copy_from_slice(input);
                    let mut messages = 0u32;
                    for read in scratch.chunks_mut(64 * 1024) {
                        decoder
                            .feed(read, &limits, &mut |event| {
                                if let Event::Text(t) = event {
                                    black_box(t);
                                    messages += 1;
                                }
                                ControlFlow::Continue(())
                            })
                            .unwrap();
                    }
                    assert_eq!(messages, 1);
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, encode, decode, decode_fragmented);
criterion_main!(benches);
