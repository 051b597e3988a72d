//! CPU cost of fan-out: one encoded `Bytes` queued to N connections' outbound queues and
//! then drained as if each socket took the whole frame. Measures the refcount bump, the
//! queue push and the bookkeeping per recipient; the `send(2)` per recipient is not here
//! (see BENCHMARKS.md for the end-to-end figure with real sockets).
//!
//! Run: `cargo bench --bench fanout`
// Test code: an unwrap that fails is a failed test, not a panic reachable from input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use slab::Slab;
use volley::conn::Outbox;
use volley::ws::frame::{self, OpCode};

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_one_frame");
    let frame = frame::encode(OpCode::Text, &[b'x'; 100]);
    for n in [1_000usize, 10_000, 64_000] {
        let mut queues: Slab<Outbox> = Slab::with_capacity(n);
        for _ in 0..n {
            queues.insert(Outbox::default());
        }
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                for (_, queue) in queues.iter_mut() {
                    queue.push(frame.clone());
                }
                for (_, queue) in queues.iter_mut() {
                    let len = queue.bytes as usize;
                    black_box(queue.advance(len));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
