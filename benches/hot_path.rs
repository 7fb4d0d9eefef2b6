//! The per-event hot path, one stage at a time: framing, decode + enrich,
//! and the whole in-process pipeline (decode pool, fan-out, queue, sink).

#[path = "support/corpus.rs"]
mod corpus;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Map};
use std::sync::Arc;
use std::time::SystemTime;

use sluice::buffer::{queue, BufferConfig};
use sluice::decode::Decoder;
use sluice::enrich::{Fragment, SourceContext};
use sluice::event::{BatchBuilder, FieldPath, FieldSet};
use sluice::framing::{split_lines, LineFramer, Lines, OverflowPolicy, DEFAULT_MAX_LINE_BYTES};
use sluice::pipeline::source_output;

const LINES: usize = 20_000;

fn fragment() -> Fragment {
    let mut m = Map::new();
    m.insert("release".into(), json!({"version": "2.14.1", "commit": "9f1c2ab"}));
    m.insert(
        "process".into(),
        json!({"type": "web", "pid": 4242, "command": "bin/server --port 8080"}),
    );
    m.insert("host".into(), json!("node-7.prod"));
    Fragment::from_map(&m)
}

fn framed(data: &[u8]) -> Lines {
    let mut f = LineFramer::with_read_chunk(DEFAULT_MAX_LINE_BYTES, OverflowPolicy::Truncate, data.len());
    let mut r = data;
    f.fill_from(&mut r).expect("in-memory read");
    f.take_lines().expect("complete lines")
}

fn framing(c: &mut Criterion) {
    let data = corpus::ndjson(LINES, 42);
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("split_lines", |b| {
        let mut spans = Vec::with_capacity(LINES);
        b.iter(|| {
            spans.clear();
            split_lines(&data, &mut spans)
        })
    });
    g.bench_function("line_framer_256k_reads", |b| {
        b.iter(|| {
            let mut f = LineFramer::new(DEFAULT_MAX_LINE_BYTES, OverflowPolicy::Truncate);
            let mut r = &data[..];
            let mut n = 0;
            while f.fill_from(&mut r).expect("in-memory read") > 0 {
                while let Some(l) = f.take_lines() {
                    n += l.len();
                }
            }
            n
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let data = corpus::ndjson(LINES, 42);
    let lines = framed(&data);
    let frag = fragment();
    let mut g = c.benchmark_group("decode_enrich");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for (name, fields) in [("no_fields", vec![]), ("three_fields", vec!["service", "status", "duration_ms"])] {
        let mut fs = FieldSet::new();
        for f in fields {
            fs.add(FieldPath::parse(f).expect("valid path"));
        }
        let fs = Arc::new(fs);
        let mut d = Decoder::new();
        g.bench_function(BenchmarkId::new("decode_lines", name), |b| {
            b.iter(|| {
                let mut out = BatchBuilder::with_capacity(fs.clone(), data.len() + LINES * 128, LINES);
                d.decode_lines(&lines, &frag, &mut out);
                out.len()
            })
        });
    }
    // As the stdin source feeds the decode pool: 256 KiB reads, one builder
    // per chunk sized as the pipeline sizes it.
    let chunks = {
        let mut f = LineFramer::new(DEFAULT_MAX_LINE_BYTES, OverflowPolicy::Truncate);
        let mut r = &data[..];
        let mut chunks = Vec::new();
        while f.fill_from(&mut r).expect("in-memory read") > 0 {
            while let Some(l) = f.take_lines() {
                chunks.push(l);
            }
        }
        chunks
    };
    let per_event: usize = frag.members().iter().map(|m| m.rendered().len() + 1).sum::<usize>() + 1;
    let no_fields = Arc::new(FieldSet::new());
    g.bench_function("decode_read_chunks", |b| {
        let mut d = Decoder::new();
        b.iter(|| {
            let mut n = 0;
            for lines in &chunks {
                let size = lines.chunk.len() + lines.len() * per_event;
                let mut out = BatchBuilder::with_capacity(no_fields.clone(), size, size / 200 + 1);
                d.decode_lines(lines, &frag, &mut out);
                n += out.len();
            }
            n
        })
    });
    // The encode step for NDJSON sinks is building the batch: the bytes are
    // final once decoded. Measured here: builder to shared Batch.
    let ctx = Arc::new(SourceContext::new("bench".into(), "bench", String::new(), Map::new()));
    let fs = Arc::new(FieldSet::new());
    g.bench_function("decode_lines_and_build_batch", |b| {
        let mut d = Decoder::new();
        b.iter(|| {
            let mut out = BatchBuilder::with_capacity(fs.clone(), data.len() + LINES * 128, LINES);
            d.decode_lines(&lines, &frag, &mut out);
            out.build(ctx.clone(), SystemTime::now()).byte_len()
        })
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let data = Bytes::from(corpus::ndjson(200_000, 7));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("source_output_to_sink_queue", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (tx, mut rx) = queue("bench", &BufferConfig::default());
                let sink = tokio::spawn(async move {
                    let mut n = 0;
                    while let Some(item) = rx.recv().await {
                        n += item.batch.len();
                    }
                    n
                });
                let (out, fan_out) = source_output("bench".into(), Arc::new(FieldSet::new()), vec![tx], Vec::new());
                let mut meta = Map::new();
                meta.insert("host".into(), json!("node-7"));
                let ctx = Arc::new(SourceContext::new("bench".into(), "bench", String::new(), meta));
                let mut f = LineFramer::new(DEFAULT_MAX_LINE_BYTES, OverflowPolicy::Truncate);
                let mut r = &data[..];
                while f.fill_from(&mut r).expect("in-memory read") > 0 {
                    while let Some(l) = f.take_lines() {
                        out.send_lines(l, ctx.clone(), None).await.expect("pipeline open");
                    }
                }
                drop(out);
                fan_out.await.expect("fan-out");
                sink.await.expect("sink")
            })
        })
    });
    g.finish();
}

criterion_group!(benches, framing, decode, pipeline);
criterion_main!(benches);
