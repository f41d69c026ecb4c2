//! Throughput of the pure log encoders, per input byte.
//!
//! Lines of 100 B (typical application logs: per-record overhead dominates)
//! and 16 KiB (bulk output: copying dominates), encoded a 64 KiB read chunk
//! at a time as the engine does.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringmon::log::{cri, json, StreamKind};

const CHUNK_LEN: usize = 64 * 1024;
const TIMESTAMP: &[u8] = b"2026-08-21T15:09:13.123456789+02:00";

/// A chunk of `CHUNK_LEN` bytes made of `line_len`-byte lines (the last one
/// possibly partial).
fn chunk_of_lines(line_len: usize) -> Vec<u8> {
    let mut line: Vec<u8> = (0..line_len - 1).map(|i| b'a' + (i % 26) as u8).collect();
    line.push(b'\n');
    line.iter().copied().cycle().take(CHUNK_LEN).collect()
}

fn encoders(c: &mut Criterion) {
    for (name, line_len) in [("100B", 100), ("16KiB", 16 * 1024)] {
        let chunk = chunk_of_lines(line_len);
        let mut group = c.benchmark_group(format!("lines_{name}"));
        group.throughput(Throughput::Bytes(chunk.len() as u64));
        let mut out = Vec::with_capacity(4 * CHUNK_LEN);
        group.bench_function("cri", |b| {
            b.iter(|| {
                out.clear();
                cri::encode(&mut out, TIMESTAMP, StreamKind::Stdout, black_box(&chunk));
                black_box(out.len())
            })
        });
        group.bench_function("json", |b| {
            b.iter(|| {
                out.clear();
                json::encode(
                    &mut out,
                    1_787_317_753,
                    StreamKind::Stdout,
                    black_box(&chunk),
                );
                black_box(out.len())
            })
        });
        group.finish();
    }
}

criterion_group!(benches, encoders);
criterion_main!(benches);
