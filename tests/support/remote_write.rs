//! A real Prometheus (Debian `prometheus`) as a remote write receiver
//! (`--web.enable-remote-write-receiver`), with no scrape targets, that can
//! be stopped and started again on the same port and TSDB; and the statsd
//! clients scripts/test installs (PyPI `statsd` and `datadog`, npm
//! `hot-shots`).

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{free_port, http_agent, locate, prometheus_bin, wait_until, ServiceProcess, START_TIMEOUT};

/// Prometheus receiving remote write on `url/api/v1/write`.
pub struct RemoteWriteReceiver {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    addr: String,
    process: Option<ServiceProcess>,
    dir: TempDir,
    starts: u32,
}

impl RemoteWriteReceiver {
    /// Starts Prometheus on a free port; waits for `/-/ready`.
    pub fn start() -> RemoteWriteReceiver {
        let dir = TempDir::new().expect("temp dir");
        fs::write(dir.path().join("prometheus.yml"), "global:\n  evaluation_interval: 1s\n").expect("write prometheus.yml");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut r = RemoteWriteReceiver {
            url: format!("http://{addr}"),
            addr,
            process: None,
            dir,
            starts: 0,
        };
        r.start_again();
        r
    }

    /// The remote write URL.
    pub fn write_url(&self) -> String {
        format!("{}/api/v1/write", self.url)
    }

    /// Stops Prometheus the way systemd does (SIGTERM, then wait): it
    /// flushes its head block and WAL.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(p.pid() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + START_TIMEOUT;
            while Instant::now() < deadline && std::path::Path::new(&format!("/proc/{}/stat", p.pid())).exists() && is_running(&mut p) {
                thread::sleep(Duration::from_millis(20));
            }
            p.stop();
        }
    }

    /// Starts Prometheus (again) on the same port and TSDB.
    pub fn start_again(&mut self) {
        self.starts += 1;
        let mut cmd = Command::new(prometheus_bin());
        cmd.current_dir(self.dir.path())
            .arg(format!("--config.file={}", self.dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", self.dir.path().join("data").display()))
            .arg(format!("--web.listen-address={}", self.addr))
            .arg("--web.enable-remote-write-receiver")
            .arg("--log.level=warn");
        let log = self.dir.path().join(format!("prometheus-{}.log", self.starts));
        let mut p = ServiceProcess::spawn("prometheus", cmd, log, false);
        p.wait_for_tcp(&self.addr, START_TIMEOUT);
        let ready = format!("{}/-/ready", self.url);
        wait_until("prometheus /-/ready", START_TIMEOUT, || {
            p.assert_running();
            http_agent()
                .get(&ready)
                .call()
                .ok()
                .filter(|r| r.status().as_u16() == 200)
                .map(|_| ())
        });
        self.process = Some(p);
    }

    /// An instant query; the result vector (empty when nothing matches).
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let mut resp = http_agent()
            .get(&format!("{}/api/v1/query", self.url))
            .query("query", promql)
            .call()
            .unwrap_or_else(|e| panic!("query {promql:?}: {e}"));
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("query {promql:?}: {e}: {body}"));
        assert_eq!(v["status"], "success", "query {promql:?}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value `promql` returns, if it returns one series.
    pub fn value(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        (r.len() == 1)
            .then(|| r[0]["value"][1].as_str().and_then(|s| s.parse().ok()))
            .flatten()
    }

    /// Polls until `promql` returns exactly `want`; panics with what it
    /// returned last.
    pub fn wait_for_value(&self, promql: &str, want: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.value(promql);
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: want {want}, got {got:?} ({:?})",
                self.query(promql)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the current Prometheus logged (warnings and errors).
    pub fn log(&self) -> String {
        self.process.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }
}

fn is_running(p: &mut ServiceProcess) -> bool {
    matches!(p.child.try_wait(), Ok(None))
}

/// The Python with PyPI `statsd` and `datadog` (scripts/test installs it).
pub fn statsd_python() -> PathBuf {
    locate(
        "SLUICE_TEST_STATSD_PYTHON",
        "python with statsd and datadog (scripts/test)",
        &[super::cache_dir().join("venv-statsd/bin/python")],
    )
}

/// `node_modules` holding npm `hot-shots` (scripts/test installs it).
pub fn statsd_node_modules() -> PathBuf {
    locate(
        "SLUICE_TEST_STATSD_NODE_MODULES",
        "node_modules with hot-shots (scripts/test)",
        &[super::cache_dir().join("node-statsd/node_modules")],
    )
}
