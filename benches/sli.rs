//! The SLI tap on the hot path: decoding a batch of the benchmark corpus
//! (~285-byte JSON app logs) without rules and with the three rules of
//! `config/sli-example.toml` judging every event as it decodes (on the
//! decode pool), and the tap's per-batch merge (`observe`, on the fan-out
//! task).
//!
//! `cargo bench --bench sli`. The whole-pipeline comparison (release
//! binary, stdin → blackhole, 2M lines) is `scripts/bench-sli`.

#[path = "support/corpus.rs"]
mod corpus;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use sluice::decode::Decoder;
use sluice::enrich::SourceContext;
use sluice::event::{Batch, BatchBuilder, FieldSet};
use sluice::pipeline::{BatchTap, Prepared};
use sluice::sli::SliTap;
use sluice::topology::Config;

/// Events per batch: about what one 1 MiB read of the corpus holds.
const BATCH: usize = 3500;

/// The `scripts/gen-corpus` shape, split into lines.
fn lines() -> Vec<String> {
    let text = String::from_utf8(corpus::ndjson(BATCH, 42)).expect("corpus is UTF-8");
    text.lines().map(str::to_owned).collect()
}

fn context() -> Arc<SourceContext> {
    let meta = json!({"release": {"version": "v1.4.2"}, "host": "bench"});
    let serde_json::Value::Object(meta) = meta else { unreachable!() };
    Arc::new(SourceContext::new("stdin".into(), "stdin", String::new(), meta))
}

/// Decodes `lines` into one batch; with `tap`, the tap judges every event
/// as it decodes and its counts come back too.
fn decode(d: &mut Decoder, lines: &[String], ctx: &Arc<SourceContext>, tap: Option<&SliTap>) -> (Batch, Vec<Prepared>) {
    let bytes: usize = lines.iter().map(|l| l.len() + 64).sum();
    let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), bytes, lines.len());
    if let Some(tap) = tap {
        d.observe(tap.fields(), tap.begin(ctx));
    }
    for l in lines {
        d.decode_line(l.as_bytes(), false, &[], &ctx.fragment, &mut out);
    }
    let prepared = d.finish_observers();
    (out.build(ctx.clone(), SystemTime::now()), prepared)
}

/// Hands a batch's counts to the tap, as the fan-out task does.
fn merge(tap: &SliTap, (batch, prepared): (Batch, Vec<Prepared>)) -> Batch {
    for p in prepared {
        tap.observe(&batch, p);
    }
    batch
}

fn bench(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sli-example.toml");
    let config = Config::load(&path).expect("example config");
    assert_eq!(config.sli.len(), 3);
    let tap = SliTap::new(&config.sli);
    let lines = lines();
    let ctx = context();
    let mut d = Decoder::new();
    // Warm the series table: the steady state has every series already.
    merge(&tap, decode(&mut d, &lines, &ctx, Some(&tap)));

    let mut g = c.benchmark_group("sli");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("decode/no_rules", |b| b.iter(|| black_box(decode(&mut d, &lines, &ctx, None))));
    // The per-event part, on the decode pool (parallel across batches).
    g.bench_function("decode/three_rules_judged", |b| {
        b.iter(|| black_box(decode(&mut d, &lines, &ctx, Some(&tap))))
    });
    // The per-batch merge under the lock, on the fan-out task (serial).
    g.bench_function("tap/merge_three_rules", |b| {
        b.iter_batched(
            || decode(&mut d, &lines, &ctx, Some(&tap)),
            |judged| merge(&tap, judged),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("decode_and_tap/three_rules", |b| {
        b.iter(|| black_box(merge(&tap, decode(&mut d, &lines, &ctx, Some(&tap)))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
