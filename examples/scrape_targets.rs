//! Scrape targets for `scripts/bench-scrape`: one process serving many
//! Prometheus targets, each on its own loopback port, each answering
//! `GET /metrics` with the same text 0.0.4 body of about `series` samples
//! (counters, gauges and a histogram family), with HTTP/1.1 keep-alive.
//!
//! ```text
//! scrape_targets <targets> <series>
//! ```
//!
//! Prints the ports, one per line, then `ready`, and serves until killed.

use std::fmt::Write as _;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A body of about `series` samples: 80% counters, 10% gauges, the rest
/// histogram lines (13 per series: 10 buckets, `+Inf`, sum and count).
fn body(series: usize) -> String {
    let mut out = String::with_capacity(series * 80);
    let counters = series * 8 / 10;
    let gauges = series / 10;
    let histograms = (series - counters - gauges) / 13;
    out.push_str("# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n");
    for i in 0..counters {
        let _ = writeln!(
            out,
            "http_requests_total{{route=\"/api/v1/r{}\",code=\"{}\"}} {}",
            i / 4,
            200 + i % 4,
            1000 + i * 7
        );
    }
    out.push_str("# TYPE queue_depth gauge\n");
    for i in 0..gauges {
        let _ = writeln!(out, "queue_depth{{queue=\"q{i}\"}} {}", i % 17);
    }
    out.push_str("# TYPE request_seconds histogram\n");
    let bounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
    for h in 0..histograms {
        for (j, le) in bounds.iter().enumerate() {
            let _ = writeln!(out, "request_seconds_bucket{{handler=\"h{h}\",le=\"{le}\"}} {}", (j + 1) * 10);
        }
        let _ = writeln!(out, "request_seconds_bucket{{handler=\"h{h}\",le=\"+Inf\"}} 110");
        let _ = writeln!(out, "request_seconds_sum{{handler=\"h{h}\"}} 42.5");
        let _ = writeln!(out, "request_seconds_count{{handler=\"h{h}\"}} 110");
    }
    out
}

/// Answers every request on one connection with `response` until the peer
/// closes it.
async fn serve(mut conn: tokio::net::TcpStream, response: Arc<Vec<u8>>) {
    let mut buf = vec![0u8; 8192];
    let mut filled = 0;
    loop {
        let Ok(n) = conn.read(&mut buf[filled..]).await else { return };
        if n == 0 {
            return;
        }
        filled += n;
        while let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            if conn.write_all(&response).await.is_err() {
                return;
            }
            buf.copy_within(end + 4..filled, 0);
            filled -= end + 4;
        }
        if filled == buf.len() {
            return;
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(targets), Some(series)) = (
        args.get(1).and_then(|a| a.parse::<usize>().ok()),
        args.get(2).and_then(|a| a.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: scrape_targets <targets> <series>");
        std::process::exit(2);
    };
    let text = body(series);
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        text.len()
    )
    .into_bytes();
    response.extend_from_slice(text.as_bytes());
    let response = Arc::new(response);
    let mut ports = String::new();
    for _ in 0..targets {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let _ = writeln!(ports, "{}", listener.local_addr().expect("local address").port());
        let response = response.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, response.clone()));
            }
        });
    }
    println!("{ports}ready");
    std::future::pending::<()>().await;
}
