//! The real `sluice` binary as a child process for sink tests: a config
//! file with a stdin source, stdin piped, logs in a file. The API binds
//! port 0 and the test reads the real address from sluice's log, so
//! parallel suites never race for a port. Killed on drop.
// Each test file uses part of this module; the rest must not warn.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// The metadata every event gets from the config below.
pub const META_SUFFIX: &str = r#","release":{"version":"1.4.2"},"host":"node-7"}"#;

/// What a sink receives for an input line: the line with the configured
/// metadata spliced in before its closing brace.
pub fn enriched(line: &str) -> String {
    format!("{}{META_SUFFIX}", &line[..line.len() - 1])
}

/// A running `sluice`.
pub struct RunningSluice {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The API address (`/metrics`, `/ready`), once read from the log.
    api: std::cell::OnceCell<String>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RunningSluice {
    /// Starts sluice with a stdin source named `app`, enrichment that adds
    /// `release.version = 1.4.2` and `host = node-7`, and `sinks` (TOML).
    pub fn start(sinks: &str, env: &[(&str, &str)]) -> RunningSluice {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "shutdown_timeout = \"20s\"\n[api]\naddress = \"127.0.0.1:0\"\n\
             [enrich]\nhost = \"node-7\"\nrelease = \"1.4.2\"\n\
             [sources.app]\ntype = \"stdin\"\ndetect_writer = false\n{sinks}"
        );
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.path().join("sluice.log");
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&path)
            .env("SLUICE_LOG", "info")
            .env_remove("SLUICE_RELEASE")
            .env_remove("SLUICE_RELEASE_COMMIT")
            .env_remove("SLUICE_PROCESS_TYPE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn sluice");
        let stdin = child.stdin.take();
        RunningSluice {
            child,
            stdin,
            api: std::cell::OnceCell::new(),
            log,
            _dir: dir,
        }
    }

    /// Writes to sluice's stdin.
    pub fn write(&mut self, data: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(data.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Writes lines, each followed by a newline.
    pub fn write_lines(&mut self, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        self.write(&text);
    }

    /// Ends the input: sluice drains, flushes and exits.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the exit; kills and panics with the log after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if t0.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("sluice did not exit within {timeout:?}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes stdin and asserts a clean exit within `timeout`.
    pub fn finish(&mut self, timeout: Duration) {
        self.close_stdin();
        let status = self.wait(timeout);
        assert!(status.success(), "sluice exited with {status}; log:\n{}", self.log_text());
    }

    /// sluice's own logs so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One sample of `/metrics`, by its exact name and labels (0 if absent).
    pub fn metric(&self, series: &str) -> f64 {
        let (status, body) = crate::support::http_get(&format!("http://{}/metrics", self.api()));
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// The status `/ready` answers.
    pub fn ready_status(&self) -> u16 {
        crate::support::http_get(&format!("http://{}/ready", self.api())).0
    }

    /// Waits until the API serves.
    pub fn wait_api(&self) {
        self.api();
    }

    /// The address the API bound, from sluice's log line
    /// `serving /metrics, /health and /ready` (waits for it).
    pub fn api(&self) -> &str {
        self.api.get_or_init(|| {
            crate::support::wait_until("the sluice API address in its log", Duration::from_secs(30), || {
                self.log_text().lines().find_map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).ok()?;
                    (v["message"] == "serving /metrics, /health and /ready")
                        .then(|| v["address"].as_str().map(str::to_owned))
                        .flatten()
                })
            })
        })
    }
}

impl Drop for RunningSluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
