//! Helpers for the file source tests: run the real sluice binary on a
//! config, collect its stdout, stop or kill it. Each test file includes
//! this module with `mod file_support;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running sluice whose stdout lines are collected.
pub struct Sluice {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// When each line was read from sluice's stdout.
    arrivals: Arc<Mutex<Vec<Instant>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    pub stderr_path: PathBuf,
    /// `Some` when the config enables the API.
    api_port: Option<u16>,
}

impl Sluice {
    /// Starts sluice with `config` written to `dir/sluice-<n>.toml`.
    pub fn start(dir: &Path, config: &str) -> Sluice {
        Sluice::start_env(dir, config, &[])
    }

    /// [`Sluice::start`] with extra environment variables.
    pub fn start_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Sluice {
        Sluice::start_with(dir, config, env, |_| {})
    }

    /// [`Sluice::start_env`], with `adjust` applied to the command before
    /// it is spawned (resource limits, …).
    pub fn start_with(dir: &Path, config: &str, env: &[(&str, &str)], adjust: impl FnOnce(&mut Command)) -> Sluice {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cfg_path = dir.join(format!("sluice-{n}.toml"));
        std::fs::write(&cfg_path, config).unwrap();
        let stderr_path = dir.join(format!("sluice-{n}.stderr"));
        let api_port = config.contains("address = \"127.0.0.1:0\"").then_some(0);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("--config")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .env("SLUICE_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("start sluice");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (sink, times) = (lines.clone(), arrivals.clone());
        let reader = std::thread::spawn(move || {
            let r = BufReader::with_capacity(1 << 20, stdout);
            for line in r.lines() {
                let Ok(line) = line else { break };
                // Arrival first: a reader of `lines` then always finds it.
                times.lock().unwrap().push(Instant::now());
                sink.lock().unwrap().push(line);
            }
        });
        Sluice {
            child,
            lines,
            arrivals,
            reader: Some(reader),
            stderr_path,
            api_port,
        }
    }

    /// Lines received so far.
    pub fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// A copy of the lines received so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until at least `n` lines arrived; panics with the stderr log
    /// after `timeout`.
    pub fn wait_for(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count() >= n {
                return self.lines();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                if self.count() >= n {
                    return self.lines();
                }
                panic!(
                    "sluice exited ({status}) with {} of {n} lines; stderr:\n{}",
                    self.count(),
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!("only {} of {n} lines after {timeout:?}; stderr:\n{}", self.count(), self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `check` holds for the lines, or panics after `timeout`.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, check: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            if check(&lines) {
                return lines;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what} ({} lines); stderr:\n{}", lines.len(), self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns its status
    /// and every line it wrote.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<String>) {
        // SAFETY: signalling a child we own.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.wait_exit(Duration::from_secs(20));
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.lines())
    }

    /// Waits for the process to exit by itself (bounded).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sluice did not exit within {timeout:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: no drain, no final checkpoint. Returns the lines written.
    pub fn kill9(self) -> Vec<String> {
        self.kill9_timed().0
    }

    /// [`Sluice::kill9`], with when each line arrived and when the kill
    /// was sent.
    pub fn kill9_timed(mut self) -> (Vec<String>, Vec<Instant>, Instant) {
        let at = Instant::now();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let times = self.arrivals.lock().unwrap().clone();
        (self.lines(), times, at)
    }

    /// The API's port, read from sluice's log (the config binds port 0, so
    /// parallel test suites never race for a port).
    fn api_port(&self) -> u16 {
        self.api_port.expect("config enables the api");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.stderr();
            let port = log.lines().filter(|l| l.contains("serving /metrics")).find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v["address"].as_str()?.rsplit(':').next()?.parse().ok()
            });
            if let Some(p) = port {
                return p;
            }
            assert!(Instant::now() < deadline, "sluice never said where it serves /metrics:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `/metrics` text (needs `[api]` enabled).
    pub fn metrics(&self) -> String {
        let port = self.api_port();
        // The API may not be listening yet right after start.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut s = loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("no API on port {port}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        out
    }

    /// The value of a metric series (`name{labels}` as it prints), if any.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config reading `include` into stdout, with checkpoints in `data`.
/// `extra` goes into the source table.
pub fn config(data: &Path, include: &[String], extra: &str) -> String {
    let inc: Vec<String> = include.iter().map(|i| format!("{i:?}")).collect();
    format!(
        r#"data_dir = "{}"
shutdown_timeout = "20s"
[api]
enabled = false
[enrich]
disable_host = true
[sources.files]
type = "file"
include = [{}]
scan_interval = "100ms"
poll_interval = "20ms"
checkpoint_interval = "200ms"
rotate_wait = "1s"
{extra}
[sinks.out]
type = "stdout"
"#,
        data.display(),
        inc.join(", ")
    )
}

/// [`config`] with the API on an ephemeral port (for `/metrics`).
pub fn config_with_api(data: &Path, include: &[String], extra: &str) -> String {
    config(data, include, extra).replace("[api]\nenabled = false", "[api]\nenabled = true\naddress = \"127.0.0.1:0\"")
}

/// Parses each line as JSON.
pub fn parse(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Counts of each value of a string field.
pub fn counts(lines: &[String], field: &str) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for v in parse(lines) {
        let key = match &v[field] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

/// Appends lines to a file (created if missing).
pub fn append(path: &Path, lines: impl IntoIterator<Item = String>) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    let mut buf = String::new();
    for l in lines {
        buf.push_str(&l);
        buf.push('\n');
    }
    f.write_all(buf.as_bytes()).unwrap();
}
