//! A plain client that measures a server's own ceiling for
//! `scripts/bench-sinks-http`: it encodes everything before the clock
//! starts, then only sends, so its rate is what the server can take.
//!
//! ```text
//! plain_push loki <push-url> <corpus> <lines> <entries-per-push> <connections>
//! plain_push s3 <endpoint> <bucket> <corpus> <lines> <object-mib> <connections>
//!     (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)
//! ```
//!
//! Prints one line: `events=<n> seconds=<t> events_per_s=<r>`.

use bytes::Bytes;
use rusty_s3::S3Action;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::sinks::loki::encode::{self, EntryAdapter, PushRequest, StreamAdapter, Timestamp};

fn usage() -> ! {
    eprintln!("usage: plain_push loki <push-url> <corpus> <lines> <entries-per-push> <connections>");
    eprintln!("       plain_push s3 <endpoint> <bucket> <corpus> <lines> <object-mib> <connections>");
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| usage())
}

fn read_lines(path: &str, n: usize) -> Vec<Bytes> {
    let data = Bytes::from(std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}")));
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            out.push(data.slice(start..i));
            start = i + 1;
            if out.len() == n {
                break;
            }
        }
    }
    out
}

/// Sends `bodies` over `connections` connections; each body counts
/// `per_body` events.
async fn send_all(bodies: Vec<(reqwest::RequestBuilder, u64)>, connections: usize) -> (u64, Duration) {
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                let Some((req, events)) = next else { break };
                let resp = req.send().await.expect("request");
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                assert!(status.is_success(), "server answered {status}: {text}");
                sent += events;
            }
            sent
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("sender");
    }
    (total, started.elapsed())
}

async fn loki(args: &[String]) -> (u64, Duration) {
    let url: String = arg(args, 2);
    let lines = read_lines(&arg::<String>(args, 3), arg(args, 4));
    let per_push: usize = arg(args, 5);
    let connections: usize = arg(args, 6);
    let client = reqwest::Client::new();
    let mut bodies = Vec::new();
    for (n, chunk) in lines.chunks(per_push).enumerate() {
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: format!("{{job=\"plain_push\", part=\"{}\"}}", n % 8),
                entries: chunk
                    .iter()
                    .enumerate()
                    .map(|(i, l)| EntryAdapter {
                        timestamp: Some(Timestamp::from_nanos(1_700_000_000_000_000_000 + (n * per_push + i) as i64)),
                        line: l.clone(),
                        structured_metadata: Vec::new(),
                    })
                    .collect(),
            }],
        };
        let body = encode::encode_protobuf(&req).expect("encode");
        let rb = client.post(&url).header("content-type", "application/x-protobuf").body(body);
        bodies.push((rb, chunk.len() as u64));
    }
    send_all(bodies, connections).await
}

async fn s3(args: &[String]) -> (u64, Duration) {
    let endpoint: String = arg(args, 2);
    let bucket_name: String = arg(args, 3);
    let lines = read_lines(&arg::<String>(args, 4), arg(args, 5));
    let object_bytes: usize = arg::<usize>(args, 6) << 20;
    let connections: usize = arg(args, 7);
    let key = std::env::var("AWS_ACCESS_KEY_ID").expect("AWS_ACCESS_KEY_ID");
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").expect("AWS_SECRET_ACCESS_KEY");
    let creds = rusty_s3::Credentials::new(key, secret);
    let bucket = rusty_s3::Bucket::new(
        endpoint.parse().expect("endpoint URL"),
        rusty_s3::UrlStyle::Path,
        bucket_name,
        "us-east-1",
    )
    .expect("bucket");
    let client = reqwest::Client::new();
    let mut bodies = Vec::new();
    let (mut raw, mut events) = (Vec::new(), 0u64);
    let mut flush = |raw: &mut Vec<u8>, events: &mut u64| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        gz.write_all(raw).expect("gzip");
        let body = gz.finish().expect("gzip");
        let name = format!("plain/{}.ndjson.gz", bodies.len());
        let url = bucket.put_object(Some(&creds), &name).sign(Duration::from_secs(3600));
        bodies.push((client.put(url).body(body), *events));
        raw.clear();
        *events = 0;
    };
    for l in &lines {
        raw.extend_from_slice(l);
        raw.push(b'\n');
        events += 1;
        if raw.len() >= object_bytes {
            flush(&mut raw, &mut events);
        }
    }
    if !raw.is_empty() {
        flush(&mut raw, &mut events);
    }
    send_all(bodies, connections).await
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (events, took) = match args.get(1).map(String::as_str) {
        Some("loki") => loki(&args).await,
        Some("s3") => s3(&args).await,
        _ => usage(),
    };
    let secs = took.as_secs_f64();
    println!("events={events} seconds={secs:.3} events_per_s={:.0}", events as f64 / secs);
}
