//! A plain Prometheus remote write client for `scripts/bench-remote-write`:
//! the server's own ceiling, to measure sluice's sink against.
//!
//! It encodes `series` counter series once, cut into requests of
//! `per-request` series, and posts them over `connections` connections for
//! `seconds`. Each connection owns its own requests (its own series) and
//! sends them round after round; each round patches a newer timestamp and
//! value into the encoded bytes (their places are fixed) and compresses the
//! request again (snappy), so every sample is new to Prometheus and none is
//! out of order. Only 2xx answers count.
//!
//! ```text
//! remote_write_load <url-of-/api/v1/write> <series> <per-request> <connections> <seconds> [shape=sluice|indexed]
//! ```
//!
//! The shape says which series and samples it sends (Prometheus' work per
//! sample depends on them, so a ceiling is only a ceiling for one shape):
//!
//! - `sluice` (the default): what `scripts/bench-remote-write`'s sluice run
//!   sends, read from its captured requests: `bench_hits{shard="sN"}`
//!   (`__name__` and one label), value `1` in every sample (a statsd
//!   counter incremented once), one wall-clock timestamp for all the
//!   series of a round (a flush's time), and the series in an order drawn
//!   at random for each run, the same in every round (sluice flushes its
//!   series in hash-map order, which a new process seeds anew; Prometheus
//!   created them in another process's order).
//! - `indexed`: the client's first shape: `load_hits{job="load",shard="sN"}`,
//!   value and timestamp `round` (timestamps 1 ms apart), series in index
//!   order (the order Prometheus created them in).
//!
//! Prints one line: `samples=<n> seconds=<t> samples_per_s=<r> refused=<n>`.

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn usage() -> ! {
    eprintln!("usage: remote_write_load <url> <series> <per-request> <connections> <seconds> [shape=sluice|indexed]");
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| usage())
}

/// Which series and samples the client sends (see the module doc).
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// `bench_hits{shard}`, value 1, wall-clock timestamps, a random order.
    Sluice,
    /// `load_hits{job,shard}`, value and timestamp `round`, index order.
    Indexed,
}

impl Shape {
    /// The labels of series `i`, sorted by name as the protocol asks.
    fn labels(self, i: usize) -> Vec<(&'static str, String)> {
        match self {
            Shape::Sluice => vec![("__name__", "bench_hits".into()), ("shard", format!("s{i}"))],
            Shape::Indexed => vec![("__name__", "load_hits".into()), ("job", "load".into()), ("shard", format!("s{i}"))],
        }
    }

    /// The order in which the series are cut into requests.
    fn order(self, series: usize, seed: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..series).collect();
        if self == Shape::Sluice {
            // Fisher-Yates with xorshift64*: a new order every run.
            let mut x = seed | 1;
            for i in (1..series).rev() {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                let j = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
        }
        order
    }
}

/// Bytes of a millisecond timestamp as a protobuf varint: 6 for every time
/// between 1971 and 2109 (2^35 ≤ t < 2^42).
const TIMESTAMP_VARINT: usize = 6;

/// One encoded `WriteRequest` and where each sample's value (8 bytes, a
/// little-endian double) and timestamp (a 6-byte varint) sit in it.
struct Template {
    bytes: Vec<u8>,
    /// Offset of each sample's value; its timestamp follows at +9.
    values: Vec<usize>,
}

fn put_len_prefixed(out: &mut Vec<u8>, key: u8, body: &[u8]) {
    out.push(key);
    prost::encoding::encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

fn put_timestamp(out: &mut [u8], mut ts: u64) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = (ts & 0x7f) as u8 | if i + 1 < TIMESTAMP_VARINT { 0x80 } else { 0 };
        ts >>= 7;
    }
}

/// `prometheus.WriteRequest` of the series `ids` of `shape`, each with one
/// sample at `ts`.
fn template(shape: Shape, ids: &[usize], ts: u64) -> Template {
    let mut bytes = Vec::new();
    let mut values = Vec::with_capacity(ids.len());
    for &i in ids {
        let mut series = Vec::new();
        for (name, value) in shape.labels(i) {
            let mut label = Vec::new();
            put_len_prefixed(&mut label, 0x0a, name.as_bytes());
            put_len_prefixed(&mut label, 0x12, value.as_bytes());
            put_len_prefixed(&mut series, 0x0a, &label);
        }
        // Sample: value (field 1, double), timestamp (field 2, varint).
        let mut sample = vec![0x09];
        sample.extend_from_slice(&0f64.to_le_bytes());
        sample.push(0x10);
        sample.extend_from_slice(&[0; TIMESTAMP_VARINT]);
        put_timestamp(&mut sample[10..], ts);
        series.push(0x12);
        prost::encoding::encode_varint(sample.len() as u64, &mut series);
        let sample_at = series.len();
        series.extend_from_slice(&sample);
        bytes.push(0x0a);
        prost::encoding::encode_varint(series.len() as u64, &mut bytes);
        values.push(bytes.len() + sample_at + 1);
        bytes.extend_from_slice(&series);
    }
    Template { bytes, values }
}

impl Template {
    /// The request with every sample at `value` and `ts`, compressed as
    /// one raw snappy block.
    fn round(&mut self, value: f64, ts: u64, snappy: &mut snap::raw::Encoder) -> Bytes {
        for &at in &self.values {
            self.bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
            put_timestamp(&mut self.bytes[at + 9..at + 9 + TIMESTAMP_VARINT], ts);
        }
        Bytes::from(snappy.compress_vec(&self.bytes).unwrap_or_else(|e| panic!("snappy: {e}")))
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url: String = arg(&args, 1);
    let series: usize = arg(&args, 2);
    let per_request: usize = arg(&args, 3);
    let connections: usize = arg(&args, 4);
    let seconds: f64 = arg(&args, 5);
    let shape = match args.get(6).map(String::as_str) {
        None | Some("shape=sluice") => Shape::Sluice,
        Some("shape=indexed") => Shape::Indexed,
        Some(_) => usage(),
    };
    if series == 0 || per_request == 0 || connections == 0 {
        usage();
    }
    let base = now_ms();
    assert!((1 << 35..1 << 42).contains(&base), "the clock is outside 1971-2109");
    let samples = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let order = shape.order(series, base ^ u64::from(std::process::id()) << 32);
    let mut tasks = Vec::new();
    for c in 0..connections {
        // Connection c owns requests c, c + connections, …: its series are
        // sent by it alone, in time order.
        let mut own: Vec<(usize, Template)> = (0..series.div_ceil(per_request))
            .filter(|r| r % connections == c)
            .map(|r| {
                let ids = &order[r * per_request..series.min((r + 1) * per_request)];
                (ids.len(), template(shape, ids, base))
            })
            .collect();
        let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
        let (url, samples, refused) = (url.clone(), samples.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let mut snappy = snap::raw::Encoder::new();
            let mut round = 0u64;
            let mut last_ts = 0;
            'run: loop {
                round += 1;
                // One timestamp for the round's requests, as a flush has;
                // newer than the last round's so no sample is out of order.
                let (value, ts) = match shape {
                    Shape::Sluice => (1.0, now_ms().max(last_ts + 1)),
                    Shape::Indexed => (round as f64, base + round),
                };
                last_ts = ts;
                for (n, t) in &mut own {
                    if Instant::now() >= until {
                        break 'run;
                    }
                    let body = t.round(value, ts, &mut snappy);
                    let resp = client
                        .post(&url)
                        .header("content-type", "application/x-protobuf")
                        .header("content-encoding", "snappy")
                        .header("x-prometheus-remote-write-version", "0.1.0")
                        .body(body)
                        .send()
                        .await;
                    let ok = match resp {
                        Ok(r) => {
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            if !status.is_success() && refused.load(Ordering::Relaxed) == 0 {
                                eprintln!("first refusal: {status} {}", text.trim());
                            }
                            status.is_success()
                        }
                        Err(e) => {
                            if refused.load(Ordering::Relaxed) == 0 {
                                eprintln!("first failure: {e}");
                            }
                            false
                        }
                    };
                    if ok {
                        samples.fetch_add(*n as u64, Ordering::Relaxed);
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let took = started.elapsed().as_secs_f64();
    let n = samples.load(Ordering::Relaxed);
    println!(
        "samples={n} seconds={took:.3} samples_per_s={:.0} refused={}",
        n as f64 / took,
        refused.load(Ordering::Relaxed)
    );
}
