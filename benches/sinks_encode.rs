//! What the HTTP sinks spend per event before the network: the Loki sink's
//! batching (labels, times, structured metadata, streams) and encoding
//! (snappy protobuf, gzip JSON), and the S3 sink's object compression
//! (per 1 MiB member, on one core).
//!
//!     cargo bench --bench sinks_encode

#[path = "support/corpus.rs"]
mod corpus;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use std::time::SystemTime;

use sluice::decode::Decoder;
use sluice::enrich::{Fragment, SourceContext};
use sluice::event::{Batch, BatchBuilder, FieldSet};
use sluice::framing::{LineFramer, OverflowPolicy, DEFAULT_MAX_LINE_BYTES};
use sluice::sinks::loki::config::{Compression, Encoding};
use sluice::sinks::loki::{LokiConfig, PushBuilder};
use sluice::sinks::s3::config::S3Compression;
use sluice::sinks::s3::encoder::{MemberCompressor, MEMBER_BYTES};
use sluice::sinks::{SinkComponent, SinkConfig};
use sluice::topology::{Config, Format};

/// Events per batch, about what one 64 KiB-to-1 MiB source read holds.
const BATCH: usize = 4096;

fn loki_config(encoding: &str) -> LokiConfig {
    let text = format!(
        "[sources.in]\ntype = \"stdin\"\n[sinks.loki]\ntype = \"loki\"\nendpoint = \"http://127.0.0.1:3100\"\n\
         encoding = \"{encoding}\"\nlabels = {{ service = \"{{{{ service }}}}\", level = \"{{{{ level }}}}\" }}\n\
         structured_metadata = [\"request_id\"]\n"
    );
    let config = Config::from_str(&text, Format::Toml, &|_| None).expect("bench config");
    match &config.sinks["loki"].config {
        SinkConfig::Loki(c) => (**c).clone(),
        _ => unreachable!("a loki sink"),
    }
}

/// The corpus as decoded batches, with the fields `cfg` needs extracted.
fn batches(fields: &Arc<FieldSet>, data: &[u8]) -> Vec<Batch> {
    let ctx = Arc::new(SourceContext::new("app".into(), "bench", String::new(), Default::default()));
    let mut framer = LineFramer::with_read_chunk(DEFAULT_MAX_LINE_BYTES, OverflowPolicy::Truncate, data.len());
    let mut r = data;
    framer.fill_from(&mut r).expect("in-memory read");
    let lines = framer.take_lines().expect("complete lines");
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let end = (i + BATCH).min(lines.len());
        let mut b = BatchBuilder::with_capacity(fields.clone(), BATCH * 300, BATCH);
        for j in i..end {
            d.decode_line(lines.line(j), false, &[], &Fragment::default(), &mut b);
        }
        out.push(b.build(ctx.clone(), SystemTime::now()));
        i = end;
    }
    out
}

fn loki(c: &mut Criterion) {
    let data = corpus::ndjson(40_960, 42);
    let mut g = c.benchmark_group("loki");
    g.throughput(Throughput::Elements(40_960));
    for (name, encoding, compression) in [
        ("protobuf_snappy", Encoding::Protobuf, Compression::Snappy),
        ("json_gzip6", Encoding::Json, Compression::Gzip),
    ] {
        let cfg = loki_config(if encoding == Encoding::Json { "json" } else { "protobuf" });
        let mut fields = FieldSet::new();
        for p in cfg.fields_needed() {
            fields.add(p);
        }
        let fields = Arc::new(fields);
        let batches = batches(&fields, &data);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut builder = PushBuilder::new(&cfg, &fields);
                let mut pushes = Vec::new();
                for (id, batch) in batches.iter().enumerate() {
                    builder.add(batch, id as u64, &mut pushes);
                }
                pushes.extend(builder.seal());
                pushes
                    .into_iter()
                    .map(|p| p.encode(encoding, compression, 6).expect("encode").len())
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

fn s3(c: &mut Criterion) {
    let data = corpus::ndjson(40_960, 42);
    let mut g = c.benchmark_group("s3");
    g.throughput(Throughput::Elements(40_960));
    for (name, compression, level) in [
        ("gzip6", S3Compression::Gzip, 6),
        ("gzip1", S3Compression::Gzip, 1),
        ("zstd3", S3Compression::Zstd, 3),
    ] {
        // One core's share: members one after the other (the sink runs
        // them in parallel).
        let mut compressor = MemberCompressor::new(compression, level).expect("compressor");
        let mut out = Vec::new();
        g.bench_function(name, |b| {
            b.iter(|| {
                data.chunks(MEMBER_BYTES)
                    .map(|m| {
                        compressor.compress(m, &mut out).expect("compress");
                        out.len()
                    })
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, loki, s3);
criterion_main!(benches);
