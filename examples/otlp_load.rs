//! A plain OTLP load generator for `scripts/bench-otlp`: it sends one
//! pre-encoded `ExportLogsServiceRequest` (a file, made by
//! `tests/support/otlp_roundtrip.py bench`), or `ExportMetricsServiceRequest`
//! (`otlp_roundtrip.py bench-metrics`), over and over on several
//! connections and counts what was answered with success.
//!
//! ```text
//! otlp_load http <url-of-/v1/logs-or-/v1/metrics> <request-file> <records-per-request> <connections> <seconds>
//! otlp_load grpc <url-of-the-server> <request-file> <records-per-request> <connections> <seconds>
//! otlp_load grpc-metrics <url-of-the-server> <request-file> <points-per-request> <connections> <seconds>
//! ```
//!
//! Prints one line: `records=<n> seconds=<t> records_per_s=<r> refused=<n>`.

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!("usage: otlp_load http|grpc|grpc-metrics <url> <request-file> <records-per-request> <connections> <seconds>");
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| usage())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (grpc, service) = match args.get(1).map(String::as_str) {
        Some("http") => (false, ""),
        Some("grpc") => (true, "logs.v1.LogsService"),
        Some("grpc-metrics") => (true, "metrics.v1.MetricsService"),
        _ => usage(),
    };
    let url: String = arg(&args, 2);
    let file: String = arg(&args, 3);
    let per_request: u64 = arg(&args, 4);
    let connections: usize = arg(&args, 5);
    let seconds: f64 = arg(&args, 6);
    let message = std::fs::read(&file).unwrap_or_else(|e| panic!("read {file}: {e}"));
    let (url, body, kind) = if grpc {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        let url = format!("{}/opentelemetry.proto.collector.{service}/Export", url.trim_end_matches('/'));
        (url, Bytes::from(framed), "application/grpc")
    } else {
        (url, Bytes::from(message), "application/x-protobuf")
    };
    let records = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut b = reqwest::Client::builder().pool_max_idle_per_host(1);
        if grpc {
            b = b.http2_prior_knowledge();
        }
        let client = b.build().expect("client");
        let (url, body, records, refused) = (url.clone(), body.clone(), records.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let resp = client
                    .post(&url)
                    .header("content-type", kind)
                    .header("te", "trailers")
                    .body(body.clone())
                    .send()
                    .await;
                let ok = match resp {
                    Ok(r) => {
                        let status_ok = r.status().is_success() && r.headers().get("grpc-status").is_none_or(|v| v.as_bytes() == b"0");
                        if !status_ok && refused.load(Ordering::Relaxed) == 0 {
                            eprintln!("first refusal: {} {:?}", r.status(), r.headers());
                        }
                        let _ = r.bytes().await;
                        status_ok
                    }
                    Err(e) => {
                        if refused.load(Ordering::Relaxed) == 0 {
                            eprintln!("first failure: {e:?}");
                        }
                        false
                    }
                };
                if ok {
                    records.fetch_add(per_request, Ordering::Relaxed);
                } else {
                    refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let took = started.elapsed().as_secs_f64();
    let n = records.load(Ordering::Relaxed);
    println!(
        "records={n} seconds={took:.3} records_per_s={:.0} refused={}",
        n as f64 / took,
        refused.load(Ordering::Relaxed)
    );
}
