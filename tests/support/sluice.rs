//! The one sluice child process of the tests: the real binary started from
//! a config text (and/or arguments), its stdout collected line by line (or
//! left to the test), its log in a file, its API address read from that
//! log, killed on drop.
//!
//! ```ignore
//! let mut s = Sluice::builder().config(&text).stdin_piped().start();
//! s.write("{\"n\":1}\n");
//! assert_eq!(s.metric("sluice_source_events_total{source=\"app\"}"), 1.0);
//! ```

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::metrics::{scrape, Metrics};
use super::{http_get, try_http_get, wait_until};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// How long sluice may take to log its API address or answer `/health`.
pub const SLUICE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long sluice may take to exit after SIGTERM in [`Sluice::stop`].
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The log line that carries the API's bound address.
const API_MESSAGE: &str = "serving /metrics, /health and /ready";

/// What happens to sluice's stdout.
pub enum Stdout {
    /// Collected line by line ([`Sluice::lines`], [`Sluice::events`]).
    Collect,
    /// Left to the test ([`Sluice::take_stdout`]).
    Raw,
    /// Discarded.
    Null,
}

/// How to start sluice. `--config <file>` comes first (when a config is
/// given), then the arguments.
pub struct SluiceBuilder {
    bin: PathBuf,
    config: Option<String>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    stdin_piped: bool,
    stdout: Stdout,
    dir: Option<TempDir>,
    log: Option<PathBuf>,
    adjust: Option<Adjust>,
}

/// A change to the command just before it is spawned.
type Adjust = Box<dyn FnOnce(&mut Command)>;

impl SluiceBuilder {
    /// Runs this binary instead of the test build's [`BIN`] (the soak runs
    /// the release build).
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = bin.into();
        self
    }

    /// The config text, written to `<dir>/sluice.toml`; `{dir}` in it is
    /// replaced by the process's directory.
    pub fn config(mut self, text: &str) -> Self {
        self.config = Some(text.to_owned());
        self
    }

    /// One argument (`run`, `replay`, a path, ...).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Several arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable (after the defaults: `SLUICE_LOG=info`, and
    /// no `SLUICE_RELEASE*`, `SLUICE_PROCESS_TYPE` or AWS credentials from
    /// the test's environment).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Several environment variables.
    pub fn envs<K: Into<OsString>, V: Into<OsString>>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self {
        self.env.extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Removes a variable of the test's environment (`NOTIFY_SOCKET`).
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env_remove.push(key.into());
        self
    }

    /// Pipes stdin ([`Sluice::write`]); without this stdin is `/dev/null`.
    pub fn stdin_piped(mut self) -> Self {
        self.stdin_piped = true;
        self
    }

    /// What to do with stdout (default: [`Stdout::Collect`]).
    pub fn stdout(mut self, stdout: Stdout) -> Self {
        self.stdout = stdout;
        self
    }

    /// Runs in `dir` (its config, log and the test's files) instead of a
    /// new temporary directory.
    pub fn in_dir(mut self, dir: TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Writes the log to `path` (kept after the process is gone) instead
    /// of `<dir>/sluice.log`.
    pub fn log_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// Changes the command just before it is spawned (resource limits).
    pub fn adjust(mut self, f: impl FnOnce(&mut Command) + 'static) -> Self {
        self.adjust = Some(Box::new(f));
        self
    }

    /// Spawns sluice; does not wait for anything.
    pub fn start(self) -> Sluice {
        let dir = match self.dir {
            Some(dir) => dir,
            None => TempDir::new().expect("temp dir"),
        };
        let mut cmd = Command::new(&self.bin);
        if let Some(text) = &self.config {
            let path = dir.path().join("sluice.toml");
            std::fs::write(&path, text.replace("{dir}", &dir.path().display().to_string()))
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            cmd.arg("--config").arg(path);
        }
        cmd.args(&self.args).env("SLUICE_LOG", "info");
        for var in [
            "SLUICE_RELEASE",
            "SLUICE_RELEASE_COMMIT",
            "SLUICE_PROCESS_TYPE",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ] {
            cmd.env_remove(var);
        }
        for var in &self.env_remove {
            cmd.env_remove(var);
        }
        cmd.envs(self.env);
        let log = self.log.unwrap_or_else(|| dir.path().join("sluice.log"));
        let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        cmd.stdin(if self.stdin_piped { Stdio::piped() } else { Stdio::null() })
            .stdout(match self.stdout {
                Stdout::Null => Stdio::null(),
                Stdout::Collect | Stdout::Raw => Stdio::piped(),
            })
            .stderr(log_file);
        if let Some(adjust) = self.adjust {
            adjust(&mut cmd);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start sluice ({cmd:?}): {e}"));
        let stdin = child.stdin.take();
        let collected = Arc::new(Mutex::new(Collected::default()));
        let mut raw_stdout = None;
        match self.stdout {
            Stdout::Collect => {
                let out = child.stdout.take().expect("piped stdout");
                let sink = collected.clone();
                thread::spawn(move || {
                    let mut reader = BufReader::with_capacity(1 << 20, out);
                    let mut buf = Vec::new();
                    // Bytes, not `lines()`: a line that is not UTF-8 shows up
                    // (lossily) instead of silently ending the collection.
                    while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                        if buf.last() == Some(&b'\n') {
                            buf.pop();
                            if buf.last() == Some(&b'\r') {
                                buf.pop();
                            }
                        }
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        buf.clear();
                        let mut c = sink.lock().unwrap_or_else(|p| p.into_inner());
                        c.arrivals.push(Instant::now());
                        c.lines.push(line);
                    }
                    sink.lock().unwrap_or_else(|p| p.into_inner()).eof = true;
                });
            }
            Stdout::Raw => raw_stdout = child.stdout.take(),
            Stdout::Null => collected.lock().unwrap_or_else(|p| p.into_inner()).eof = true,
        }
        Sluice {
            child: Mutex::new(child),
            stdin,
            raw_stdout,
            collected,
            cursor: AtomicUsize::new(0),
            api: OnceLock::new(),
            log,
            dir,
        }
    }
}

/// Stdout lines as they arrived.
#[derive(Default)]
struct Collected {
    lines: Vec<String>,
    /// When each line was read, index for index with `lines`.
    arrivals: Vec<Instant>,
    /// The pipe closed (or stdout is not collected).
    eof: bool,
}

/// A running sluice; killed and reaped on drop.
pub struct Sluice {
    child: Mutex<Child>,
    stdin: Option<ChildStdin>,
    raw_stdout: Option<ChildStdout>,
    collected: Arc<Mutex<Collected>>,
    /// Lines before this index were handed out by [`Sluice::events`] and
    /// its kin.
    cursor: AtomicUsize,
    /// `host:port` of the API, once read from the log.
    api: OnceLock<String>,
    log: PathBuf,
    dir: TempDir,
}

impl Sluice {
    /// How to start one.
    pub fn builder() -> SluiceBuilder {
        SluiceBuilder {
            bin: PathBuf::from(BIN),
            config: None,
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            stdin_piped: false,
            stdout: Stdout::Collect,
            dir: None,
            log: None,
            adjust: None,
        }
    }

    /// `sluice --config <config>`, stdin `/dev/null`, stdout collected.
    pub fn start(config: &str) -> Sluice {
        Sluice::builder().config(config).start()
    }

    /// `sluice --config <config>` with stdin piped, once its API answers
    /// `/health` (the config must enable the API on `127.0.0.1:0`).
    pub fn with_stdin(config: &str) -> Sluice {
        Sluice::builder().config(config).stdin_piped().start().serving()
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn collected(&self) -> MutexGuard<'_, Collected> {
        self.collected.lock().unwrap_or_else(|p| p.into_inner())
    }

    // --- files -------------------------------------------------------------

    /// The process's directory (config, log, and whatever the test puts
    /// there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside [`Sluice::dir`].
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The file sluice logs to (its stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// sluice's own log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    // --- process -----------------------------------------------------------

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    /// Sends a signal, unless sluice has exited already.
    pub fn signal(&self, sig: i32) {
        let mut child = self.child();
        // Holding the lock, a child not yet reaped keeps its pid: the signal
        // cannot reach a process that reused it.
        if let Ok(None) = child.try_wait() {
            // SAFETY: kill(2) on our own, unreaped child.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// The exit status, if it has exited.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.child().try_wait().unwrap_or_else(|e| panic!("wait for sluice: {e}"))
    }

    /// Panics with the log if sluice exited, saying what it was doing.
    fn assert_running(&self, what: &str) {
        if let Some(status) = self.try_status() {
            panic!("sluice exited ({status}) {what}; log:\n{}", self.logs());
        }
    }

    /// Waits for the exit and for the rest of stdout; kills it and panics
    /// with the log after `timeout`.
    pub fn wait(&self, timeout: Duration) -> ExitStatus {
        let Some(status) = self.wait_timeout(timeout) else {
            self.kill();
            panic!("sluice did not exit within {timeout:?}; log:\n{}", self.logs());
        };
        status
    }

    /// Waits up to `timeout` for the exit, then for the rest of stdout;
    /// `None` if sluice is still running (it is left running).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_status() {
                break status;
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        };
        // A child of `sluice run` may keep the pipe open; do not wait long.
        let drained = Instant::now() + Duration::from_secs(5);
        while !self.collected().eof && Instant::now() < drained {
            thread::sleep(Duration::from_millis(5));
        }
        Some(status)
    }

    /// Closes stdin and asserts a clean exit within `timeout`.
    pub fn finish(&mut self, timeout: Duration) {
        self.close_stdin();
        let status = self.wait(timeout);
        assert!(status.success(), "sluice exited with {status}; log:\n{}", self.logs());
    }

    /// SIGTERM, then a bounded wait for the exit; its status and every
    /// stdout line.
    pub fn stop(&self) -> (ExitStatus, Vec<String>) {
        self.signal(libc::SIGTERM);
        let status = self.wait(STOP_TIMEOUT);
        (status, self.lines())
    }

    /// SIGKILL and reap (no drain, no final checkpoint).
    pub fn kill(&self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// [`Sluice::kill`]; the stdout lines it wrote, when each arrived, and
    /// when the kill was sent.
    pub fn kill9_timed(&self) -> (Vec<String>, Vec<Instant>, Instant) {
        let at = Instant::now();
        self.kill();
        let _ = self.wait(Duration::from_secs(5));
        let c = self.collected();
        (c.lines.clone(), c.arrivals.clone(), at)
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        proc_status_kib(self.pid(), field)
    }

    // --- stdin -------------------------------------------------------------

    /// Writes to stdin.
    pub fn write(&mut self, data: impl AsRef<[u8]>) {
        let stdin = self.stdin.as_mut().expect("stdin piped and open");
        if let Err(e) = stdin.write_all(data.as_ref()).and_then(|()| stdin.flush()) {
            panic!("write to sluice: {e}; log:\n{}", self.logs());
        }
    }

    /// Writes `lines`, each followed by a newline.
    pub fn write_lines(&mut self, lines: &[String]) {
        let mut buf = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            buf.push_str(l);
            buf.push('\n');
        }
        self.write(buf);
    }

    /// Hands stdin to the caller (a writer thread that may block when sluice
    /// pushes back); dropping it ends the input.
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().expect("stdin piped and open")
    }

    /// Writes `lines` from a thread (sluice may stop reading: backpressure);
    /// the thread closes stdin when done unless `keep_open`.
    pub fn feed(&mut self, lines: Vec<String>, keep_open: bool) -> thread::JoinHandle<Option<ChildStdin>> {
        let mut stdin = self.take_stdin();
        thread::spawn(move || {
            for chunk in lines.chunks(500) {
                let mut buf = String::new();
                for l in chunk {
                    buf.push_str(l);
                    buf.push('\n');
                }
                if stdin.write_all(buf.as_bytes()).is_err() {
                    return None;
                }
            }
            keep_open.then_some(stdin)
        })
    }

    /// Ends the input: a stdin source drains and sluice exits.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    // --- stdout ------------------------------------------------------------

    /// Takes stdout for the test to read ([`Stdout::Raw`]).
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.raw_stdout.take().expect("stdout started as Stdout::Raw")
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.collected().lines.clone()
    }

    /// How many stdout lines so far.
    pub fn count(&self) -> usize {
        self.collected().lines.len()
    }

    /// Waits until at least `n` stdout lines arrived; returns them all.
    /// Panics with the log if sluice exits short of them or after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<String> {
        self.wait_until(&format!("{n} lines"), timeout, |lines| lines.len() >= n)
    }

    /// Waits until `check` holds for the stdout lines; panics with the log
    /// if sluice exits without it holding, or after `timeout`.
    pub fn wait_until(&self, what: &str, timeout: Duration, check: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            if check(&lines) {
                return lines;
            }
            if let Some(status) = self.try_status() {
                // Whatever it wrote before exiting may still be in the pipe.
                let _ = self.wait(Duration::ZERO);
                let lines = self.lines();
                if check(&lines) {
                    return lines;
                }
                panic!(
                    "sluice exited ({status}) before {what} ({} lines); log:\n{}",
                    lines.len(),
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({} lines); log:\n{}",
                lines.len(),
                self.logs()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The stdout lines not handed out yet (see [`Sluice::events`]); does
    /// not wait.
    pub fn new_lines(&self) -> Vec<String> {
        let c = self.collected();
        let from = self.cursor.swap(c.lines.len(), Ordering::SeqCst);
        c.lines[from.min(c.lines.len())..].to_vec()
    }

    /// The next `n` stdout lines not handed out yet, parsed as JSON.
    pub fn events(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let from = self.cursor.load(Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.count().saturating_sub(from);
            if have >= n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{have} of {n} events within {timeout:?}; got {:?}; log:\n{}",
                &self.lines()[from..],
                self.logs()
            );
            thread::sleep(Duration::from_millis(5));
        }
        self.cursor.store(from + n, Ordering::SeqCst);
        self.collected().lines[from..from + n].iter().map(|l| parse_json(l)).collect()
    }

    /// The events that arrive within `quiet` of each other, until none does.
    pub fn remaining_events(&self, quiet: Duration) -> Vec<serde_json::Value> {
        let mut seen = self.count();
        let mut last = Instant::now();
        while last.elapsed() < quiet {
            thread::sleep(Duration::from_millis(5));
            let now = self.count();
            if now > seen {
                seen = now;
                last = Instant::now();
            }
        }
        self.new_lines().iter().map(|l| parse_json(l)).collect()
    }

    // --- log and API -------------------------------------------------------

    /// Waits until the log contains `text`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        wait_until(&format!("{text:?} in the sluice log"), timeout, || {
            if self.logs().contains(text) {
                return Some(());
            }
            self.assert_running(&format!("before logging {text:?}"));
            None
        });
    }

    /// Waits for the JSON log line with `message` (and `source`, when given)
    /// and returns its `address` field: the address sluice really bound, so
    /// a test asks for port 0 and never races for a port.
    pub fn logged_address(&self, message: &str, source: Option<&str>, timeout: Duration) -> String {
        wait_until(&format!("{message:?} in the sluice log"), timeout, || {
            if let Some(address) = address_in_log(&self.logs(), message, source) {
                return Some(address);
            }
            self.assert_running(&format!("before logging {message:?}"));
            None
        })
    }

    /// `host:port` of the API (`[api] address = "127.0.0.1:0"` or
    /// `SLUICE_API_ADDRESS=127.0.0.1:0`), read from the log (waits for it).
    pub fn api_address(&self) -> String {
        if let Some(address) = self.api.get() {
            return address.clone();
        }
        let address = self.logged_address(API_MESSAGE, None, SLUICE_START_TIMEOUT);
        self.api.get_or_init(|| address).clone()
    }

    /// Waits until the API answers `/health` with 200; returns `self`.
    /// Panics with the log if sluice exits first or after
    /// [`SLUICE_START_TIMEOUT`].
    pub fn serving(self) -> Sluice {
        if let Err(e) = self.wait_serving(SLUICE_START_TIMEOUT) {
            panic!("{e}; log:\n{}", self.logs());
        }
        self
    }

    /// Waits until the API (its address read from the log) answers
    /// `/health` with 200; `Err` says why not (sluice exited, or `timeout`
    /// passed), for a caller that reports rather than panics (the soak's
    /// restarts).
    pub fn wait_serving(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Err(format!("sluice exited ({status}) before answering /health"));
            }
            let api = match self.api.get() {
                Some(api) => Some(api.clone()),
                None => address_in_log(&self.logs(), API_MESSAGE, None).map(|a| self.api.get_or_init(|| a).clone()),
            };
            if let Some(api) = api {
                if try_http_get(&format!("http://{api}/health")).is_ok_and(|(status, _)| status == 200) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("sluice did not answer /health within {timeout:?}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The parsed `/metrics`.
    pub fn metrics(&self) -> Metrics {
        scrape(&self.api_address())
    }

    /// One sample, `name{labels}` as it prints (labels in any order); 0 when
    /// absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics().value(series)
    }

    /// Polls `/metrics` until `done` accepts it.
    pub fn wait_for_metrics(&self, what: &str, timeout: Duration, mut done: impl FnMut(&Metrics) -> bool) -> Metrics {
        wait_until(what, timeout, || {
            let m = self.metrics();
            done(&m).then_some(m)
        })
    }

    /// The status `/ready` answers.
    pub fn ready_status(&self) -> u16 {
        http_get(&format!("http://{}/ready", self.api_address())).0
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.kill();
    }
}

fn parse_json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// The `address` of the first JSON log line in `log` with `message` (and
/// `source`, when given).
pub fn address_in_log(log: &str, message: &str, source: Option<&str>) -> Option<String> {
    log.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let wanted = v["message"] == message && source.is_none_or(|s| v["source"] == s);
        wanted.then(|| v["address"].as_str().map(str::to_owned)).flatten()
    })
}

/// A field of `/proc/<pid>/status`, in KiB; panics when the process or the
/// field is gone, so a dead process never reads as a small one.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    try_proc_status_kib(pid, field).unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status (is the process gone?)"))
}

/// [`proc_status_kib`], `None` when the process or the field is gone (a
/// sampler that may race a kill).
pub fn try_proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
