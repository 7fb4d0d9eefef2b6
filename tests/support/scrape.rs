//! Scrape targets for the prometheus_scrape tests: the real exporters
//! scripts/test installs, and a loopback HTTP server whose body each test
//! writes, recording every request.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// `prometheus-node-exporter` from Debian (scripts/test installs it).
pub fn node_exporter_bin() -> PathBuf {
    super::locate(
        "SLUICE_TEST_NODE_EXPORTER",
        "prometheus-node-exporter (apt)",
        &super::on_path("prometheus-node-exporter"),
    )
}

/// The venv python with PyPI `prometheus-client` (scripts/test installs it).
pub fn prometheus_client_python() -> PathBuf {
    super::locate(
        "SLUICE_TEST_PROM_CLIENT_PYTHON",
        "python with prometheus-client (scripts/test)",
        &[super::cache_dir().join("venv-prometheus-client/bin/python")],
    )
}

/// A body for request number `n` (from 0): content type and text.
pub type Body = dyn Fn(usize) -> (String, String) + Send + Sync;

/// A loopback HTTP/1.1 server answering every GET with a generated body
/// (`Connection: close`).
pub struct Target {
    /// Its port on 127.0.0.1.
    pub port: u16,
    requests: Arc<AtomicUsize>,
    accepts: Arc<Mutex<Vec<String>>>,
}

impl Target {
    /// Serves `body` on a new port.
    pub fn start(body: Box<Body>) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let accepts = Arc::new(Mutex::new(Vec::new()));
        let (r, a) = (requests.clone(), accepts.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut accept = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("accept:") {
                        accept = v.trim().to_owned();
                    }
                }
                a.lock().unwrap().push(accept);
                let n = r.fetch_add(1, Ordering::SeqCst);
                let (ct, text) = body(n);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    text.len()
                );
                let _ = conn.write_all(head.as_bytes()).and_then(|_| conn.write_all(text.as_bytes()));
            }
        });
        Target { port, requests, accepts }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The `Accept` header of each request.
    pub fn accepts(&self) -> Vec<String> {
        self.accepts.lock().unwrap().clone()
    }
}

/// The text format's content type.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
