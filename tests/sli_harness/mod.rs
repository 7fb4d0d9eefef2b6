//! The real `sluice` binary reading stdin, for the SLI tests: the test
//! writes events into the pipe, keeps it open while it reads `/metrics`,
//! and parses the exposition into samples it can look up by labels.
//!
//! Use with `mod support; mod sli_harness;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::{http_get, wait_until};

/// How long sluice may take to answer `/health` after start.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The repository root (for `config/`, `deploy/`).
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A running `sluice --config …` with stdin as its source and a blackhole
/// sink. Killed on drop.
pub struct Sluice {
    child: Child,
    stdin: Option<ChildStdin>,
    /// `http://127.0.0.1:PORT`.
    pub api: String,
    /// `127.0.0.1:PORT`, for a Prometheus scrape target.
    pub api_addr: String,
    dir: TempDir,
}

impl Sluice {
    /// Starts sluice with `sli_rules` (TOML `[[sli]]` tables) appended to a
    /// stdin → blackhole pipeline; `env` adds variables (`SLUICE_RELEASE`).
    pub fn start(sli_rules: &str, env: &[(&str, &str)]) -> Sluice {
        let dir = TempDir::new().expect("temp dir");
        let config =
            format!("[sources.stdin]\ntype = \"stdin\"\ndetect_writer = false\n\n[sinks.null]\ntype = \"blackhole\"\n\n{sli_rules}\n");
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, config).expect("write config");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("--config")
            .arg(&path)
            // The kernel picks the port; it is read back from the log.
            .env("SLUICE_API_ADDRESS", "127.0.0.1:0")
            .env("SLUICE_LOG", "info")
            .env_remove("SLUICE_RELEASE")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child = cmd.spawn().expect("start sluice");
        let stdin = child.stdin.take();
        let log = dir.path().join("stderr.log");
        let api_addr = wait_until("sluice to log its API address", START_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "sluice exited at start ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            crate::support::api_address_in_log(&std::fs::read_to_string(&log).unwrap_or_default())
        });
        let mut s = Sluice {
            child,
            stdin,
            api: format!("http://{api_addr}"),
            api_addr,
            dir,
        };
        let url = format!("{}/health", s.api);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("sluice exited at start ({status}): {}", s.stderr());
            }
            if std::net::TcpStream::connect(&s.api_addr).is_ok() && http_get(&url).0 == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "sluice did not serve /health: {}", s.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// Writes `text` into sluice's stdin.
    pub fn write(&mut self, text: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text).expect("write to sluice stdin");
        stdin.flush().expect("flush sluice stdin");
    }

    /// Hands stdin to the caller (a writer thread); dropping it ends input.
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().expect("stdin open")
    }

    /// The `/metrics` text.
    pub fn metrics_text(&self) -> String {
        let (status, body) = http_get(&format!("{}/metrics", self.api));
        assert_eq!(status, 200, "/metrics answered {status}");
        body
    }

    /// The parsed `/metrics`.
    pub fn samples(&self) -> Samples {
        Samples::parse(&self.metrics_text())
    }

    /// Polls `/metrics` until `done` accepts the samples.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut(&Samples) -> bool) -> Samples {
        wait_until(what, timeout, || {
            let s = self.samples();
            done(&s).then_some(s)
        })
    }

    /// Resident memory of the sluice process.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("read /proc status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status");
        kb * 1024
    }

    /// What sluice logged.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Closes stdin and waits for a clean exit.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for sluice") {
                assert!(status.success(), "sluice exited with {status}: {}", self.stderr());
                return;
            }
            assert!(Instant::now() < deadline, "sluice did not exit at end of input");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of the exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_sum`, `_count` suffixes).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Every sample of one `/metrics` answer.
#[derive(Debug, Clone)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// Parses the Prometheus text format (as sluice writes it: no
    /// timestamps, escaped label values).
    pub fn parse(text: &str) -> Samples {
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => (name.to_owned(), parse_labels(rest.strip_suffix('}').expect("closing brace"))),
            };
            out.push(Sample { name, labels, value });
        }
        Samples(out)
    }

    /// Samples named `name` whose labels include all of `want`.
    pub fn matching<'a>(&'a self, name: &'a str, want: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0
            .iter()
            .filter(move |s| s.name == name && want.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
    }

    /// The sum of the samples [`Samples::matching`] selects (0 if none).
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.matching(name, want).map(|s| s.value).sum()
    }

    /// The one sample with exactly these labels, if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.0.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
    }
}

fn parse_labels(mut s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    while !s.is_empty() {
        let (name, rest) = s.split_once("=\"").expect("label =\"");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => break,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.expect("closing quote of a label value");
        out.insert(name.to_owned(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    out
}

/// A small deterministic generator (xorshift64*), so a failing input can be
/// regenerated from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Prometheus' `histogram_quantile`: linear interpolation inside the bucket
/// where the rank falls. `buckets` are (upper bound, cumulative count),
/// sorted, ending with `+Inf`.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let total = buckets.last().expect("buckets").1;
    let rank = q * total;
    let i = buckets.iter().position(|(_, c)| *c >= rank).expect("rank within total");
    if buckets[i].0.is_infinite() {
        return buckets[i - 1].0;
    }
    let (lo, below) = if i == 0 { (0.0, 0.0) } else { buckets[i - 1] };
    let (hi, count) = buckets[i];
    lo + (hi - lo) * (rank - below) / (count - below)
}

/// The fast-burn threshold the alerting rules use on the 5m window.
pub fn fast_burn_threshold() -> f64 {
    let rules = std::fs::read_to_string(repo_path("deploy/prometheus/sluice-sli-rules.yml")).expect("read rules file");
    rules
        .lines()
        .find(|l| l.contains("sluice_sli_error_budget_burn_rate{window=\"5m\"}"))
        .and_then(|l| l.rsplit_once('>'))
        .and_then(|(_, v)| v.trim().parse().ok())
        .expect("a 5m burn-rate threshold in the rules file")
}
