//! A sluice process under test: started from a config text, its stdout
//! (the event stream) and stderr (its logs) collected by threads, killed
//! on drop. Used by the socket, syslog and `sluice run` tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A running sluice.
pub struct Sluice {
    pub child: Child,
    /// Event lines from stdout, unless the test reads stdout itself.
    pub lines: Option<mpsc::Receiver<String>>,
    stderr: Arc<Mutex<String>>,
    /// Where the config (and test sockets) live.
    pub dir: tempfile::TempDir,
}

/// How the test wants stdout.
pub enum Output {
    /// Collected line by line on a channel.
    Lines,
    /// Left to the test (`child.stdout`).
    Raw,
}

impl Sluice {
    /// Starts `sluice --config <text written to a file>`; `{dir}` in the
    /// text is replaced by the process's temporary directory.
    pub fn start(config: &str, output: Output) -> Sluice {
        let dir = tempfile::tempdir().expect("temp dir");
        Sluice::start_in(dir, config, output)
    }

    /// Like [`Sluice::start`], in a given directory.
    pub fn start_in(dir: tempfile::TempDir, config: &str, output: Output) -> Sluice {
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, config.replace("{dir}", &dir.path().display().to_string())).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("--config").arg(&path);
        Sluice::spawn(cmd, dir, output)
    }

    /// Runs a prepared command (`sluice run …`).
    pub fn spawn(mut cmd: Command, dir: tempfile::TempDir, output: Output) -> Sluice {
        cmd.env("SLUICE_LOG", "info")
            .env_remove("SLUICE_RELEASE")
            .env_remove("SLUICE_PROCESS_TYPE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start sluice");
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let lines = match output {
            Output::Raw => None,
            Output::Lines => {
                let out = child.stdout.take().expect("stdout");
                let (tx, rx) = mpsc::channel();
                thread::spawn(move || {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { break };
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                });
                Some(rx)
            }
        };
        Sluice { child, lines, stderr, dir }
    }

    /// A path inside the process's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// sluice's own logs so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the logs contain `text`.
    pub fn wait_for_log(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.logs().contains(text) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sluice exited ({status}) before logging {text:?}; logs:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the logs within {timeout:?}:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for sluice's JSON log line with `message` (and `source`, when
    /// given) and returns its `address` field: the address it really
    /// bound, so tests can ask for port 0 and never race for a port.
    pub fn logged_address(&mut self, message: &str, source: Option<&str>, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.logs().lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                let wanted = v["message"] == message && source.is_none_or(|s| v["source"] == s);
                wanted.then(|| v["address"].as_str().map(str::to_owned)).flatten()
            });
            if let Some(a) = found {
                return a;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sluice exited ({status}) before logging {message:?}; logs:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "no {message:?} in the logs within {timeout:?}:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The address of the API (`[api] address = "127.0.0.1:0"`).
    pub fn api_address(&mut self) -> String {
        self.logged_address("serving /metrics, /health and /ready", None, Duration::from_secs(30))
    }

    /// The next `n` events from stdout, parsed.
    pub fn events(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let rx = self.lines.as_ref().expect("stdout collected as lines");
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))),
                Err(_) => panic!(
                    "{} of {n} events within {timeout:?}; got {out:?}; logs:\n{}",
                    out.len(),
                    self.logs()
                ),
            }
        }
        out
    }

    /// Events that arrive within `quiet` of each other, until none does.
    pub fn remaining_events(&self, quiet: Duration) -> Vec<serde_json::Value> {
        let rx = self.lines.as_ref().expect("stdout collected as lines");
        let mut out = Vec::new();
        while let Ok(line) = rx.recv_timeout(quiet) {
            out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")));
        }
        out
    }

    /// Takes stdout for the test to read.
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("raw stdout")
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not exit within {timeout:?}; logs:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        proc_status_kib(self.child.id(), field)
    }

    /// The value of one sample on `/metrics` at `api` (`host:port`), the
    /// line that starts with `series` (`name{labels}`); 0 when absent.
    pub fn metric(api: &str, series: &str) -> f64 {
        let text = http_get(api, "/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of `/proc/<pid>/status`, in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A minimal HTTP/1.0 GET (the API of the process under test).
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

/// Runs a client command to completion (bounded), panicking with its
/// output if it fails.
pub fn run_client(cmd: &mut Command, timeout: Duration) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            if !status.success() {
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("{cmd:?} failed ({status}): {err}");
            }
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until a unix socket file exists.
pub fn wait_for_path(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear within {timeout:?}", path.display());
        thread::sleep(Duration::from_millis(10));
    }
}
