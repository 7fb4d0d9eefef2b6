//! A plain client that measures a server's own ceiling for
//! `scripts/bench-sinks-http`: it encodes everything before the clock
//! starts (the same pushes and objects sluice makes of the corpus), then
//! only sends, so its rate is what the server can take.
//!
//! ```text
//! plain_push loki <push-url> <corpus> <lines> <connections>
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

use sluice::decode::Decoder;
use sluice::enrich::{EnrichConfig, Fragment, SourceContext};
use sluice::event::{BatchBuilder, FieldSet};
use sluice::sinks::loki::config::{Compression, Encoding};
use sluice::sinks::loki::PushBuilder;
use sluice::sinks::{SinkComponent, SinkConfig};
use sluice::topology::{Config, Format};

fn usage() -> ! {
    eprintln!("usage: plain_push loki <push-url> <corpus> <lines> <connections>");
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

/// The pushes sluice's Loki sink makes of the corpus with the bench
/// config (`scripts/bench-sinks-http`): same enrichment, labels, metadata
/// and push size, built by the sink's own [`PushBuilder`] ahead of time.
async fn loki(args: &[String]) -> (u64, Duration) {
    let url: String = arg(args, 2);
    let lines = read_lines(&arg::<String>(args, 3), arg(args, 4));
    let connections: usize = arg(args, 5);
    let text = format!(
        "[sources.app]\ntype = \"stdin\"\n[sinks.loki]\ntype = \"loki\"\nendpoint = \"{url}\"\n\
         labels = {{ service = \"{{{{ service }}}}\", level = \"{{{{ level }}}}\" }}\nstructured_metadata = [\"request_id\"]\n"
    );
    let config = Config::from_str(&text, Format::Toml, &|_| None).expect("config");
    let SinkConfig::Loki(cfg) = &config.sinks["loki"].config else {
        unreachable!("a loki sink")
    };
    let mut fields = FieldSet::new();
    for p in cfg.fields_needed() {
        fields.add(p);
    }
    let fields = Arc::new(fields);
    let enrich = EnrichConfig {
        host: Some("bench-node".into()),
        release: Some("1.0.0".into()),
        ..Default::default()
    };
    let fragment = Fragment::from_map(&enrich.metadata(None));
    let ctx = Arc::new(SourceContext::new("app".into(), "stdin", String::new(), enrich.metadata(None)));
    let mut builder = PushBuilder::new(cfg, &fields);
    let mut decoder = Decoder::new();
    let client = reqwest::Client::new();
    let mut pushes = Vec::new();
    let mut bodies = Vec::new();
    let mut encode_all = |pushes: &mut Vec<sluice::sinks::loki::Push>| {
        for p in pushes.drain(..) {
            let events = p.events() as u64;
            let body = p.encode(Encoding::Protobuf, Compression::Snappy, 6).expect("encode");
            let rb = client.post(&url).header("content-type", "application/x-protobuf").body(body);
            bodies.push((rb, events));
        }
    };
    for (n, chunk) in lines.chunks(4096).enumerate() {
        let mut b = BatchBuilder::with_capacity(fields.clone(), chunk.len() * 400, chunk.len());
        for l in chunk {
            decoder.decode_line(l, false, &[], &fragment, &mut b);
        }
        let batch = b.build(ctx.clone(), std::time::SystemTime::now());
        builder.add(&batch, n as u64, &mut pushes);
        encode_all(&mut pushes);
    }
    pushes.extend(builder.seal());
    encode_all(&mut pushes);
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
