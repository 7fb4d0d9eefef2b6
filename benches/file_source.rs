//! Hot paths of the file source: CRI and docker unwrapping plus payload
//! decode per line, and file fingerprinting.
//!
//! `cargo bench --bench file_source`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Map};
use std::sync::Arc;
use std::time::Instant;

use sluice::decode::cri::CriReader;
use sluice::decode::docker::DockerReader;
use sluice::decode::Decoder;
use sluice::enrich::Fragment;
use sluice::event::{BatchBuilder, FieldSet};
use sluice::framing::{split_lines, Lines};
use sluice::sources::file::fingerprint::{hash_bytes, Fingerprint};

/// ~320-byte JSON payloads, like a web service's request logs.
fn payload(i: u64) -> String {
    format!(
        r#"{{"ts":"2024-05-01T10:00:00.{:06}Z","level":"info","msg":"request handled","method":"GET","path":"/api/v1/items/{}","status":{},"duration_ms":{}.{},"user":"user-{}","trace_id":"{:032x}","bytes":{}}}"#,
        i % 1_000_000,
        i % 10_000,
        if i % 50 == 0 { 503 } else { 200 },
        i % 300,
        i % 10,
        i % 977,
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        i % 65_536
    )
}

fn lines_of(text: String) -> Lines {
    let chunk = Bytes::from(text);
    let mut spans = Vec::new();
    split_lines(&chunk, &mut spans);
    Lines {
        chunk,
        spans,
        dropped: 0,
        may_hold_breaks: false,
    }
}

fn fragment() -> Fragment {
    let mut m = Map::new();
    m.insert("host".into(), json!("node-1"));
    m.insert(
        "kubernetes".into(),
        json!({"namespace":"shop","pod":"api-7f9","container":"api","node":"node-1"}),
    );
    m.insert("release".into(), json!({"version":"3.1.4"}));
    Fragment::from_map(&m)
}

fn bench_cri(c: &mut Criterion) {
    const N: u64 = 1000;
    let text: String = (0..N)
        .map(|i| format!("2024-05-01T10:00:00.{:09}Z stdout F {}\n", i, payload(i)))
        .collect();
    let bytes = text.len() as u64;
    let lines = lines_of(text);
    let fields = Arc::new(FieldSet::new());
    let frag = fragment();
    let mut g = c.benchmark_group("cri");
    g.throughput(Throughput::Elements(N));
    g.bench_function("split_only", |b| {
        b.iter(|| {
            let mut n = 0;
            for i in 0..lines.len() {
                n += sluice::decode::cri::parse(lines.line(i)).map_or(0, |l| l.message.len());
            }
            n
        })
    });
    g.bench_function("unwrap_decode_enrich_1000_lines", |b| {
        let mut d = Decoder::new();
        let mut r = CriReader::new(1 << 20);
        b.iter(|| {
            let batch = r.unwrap(&lines, 0, Instant::now());
            let mut out = BatchBuilder::with_capacity(fields.clone(), bytes as usize * 2, N as usize);
            batch.decode(&mut d, &frag, &mut out);
            out.len()
        })
    });
    g.finish();
}

fn bench_docker(c: &mut Criterion) {
    const N: u64 = 1000;
    let text: String = (0..N)
        .map(|i| {
            let log = format!("{}\n", payload(i));
            format!(
                "{}\n",
                json!({"log": log, "stream": "stdout", "time": "2024-05-01T10:00:00.123456789Z"})
            )
        })
        .collect();
    let lines = lines_of(text);
    let fields = Arc::new(FieldSet::new());
    let frag = fragment();
    let mut g = c.benchmark_group("docker");
    g.throughput(Throughput::Elements(N));
    g.bench_function("unwrap_decode_enrich_1000_lines", |b| {
        let mut d = Decoder::new();
        let mut r = DockerReader::new(1 << 20);
        b.iter(|| {
            let batch = r.unwrap(&lines, 0, Instant::now());
            let mut out = BatchBuilder::with_capacity(fields.clone(), 1 << 20, N as usize);
            batch.decode(&mut d, &frag, &mut out);
            out.len()
        })
    });
    g.finish();
}

fn bench_fingerprint(c: &mut Criterion) {
    let mut g = c.benchmark_group("fingerprint");
    for size in [64usize, 1024, 4096] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("hash_bytes", size), &data, |b, d| b.iter(|| hash_bytes(d)));
    }
    let head: Vec<u8> = (0..1024).map(|i| (i * 7 % 253) as u8).collect();
    let fp = Fingerprint::of(&head);
    g.bench_function("matches_head_1KiB", |b| b.iter(|| fp.matches_head(&head)));
    g.finish();
}

criterion_group!(benches, bench_cri, bench_docker, bench_fingerprint);
criterion_main!(benches);
