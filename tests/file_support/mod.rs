//! The file-source harness of tests/resource_faults.rs under its old
//! names, as a thin layer over `support::Sluice` (tests/support/sluice.rs)
//! and `support::file_source`. Kept until resource_faults.rs uses those
//! directly; no other test file includes it.
#![allow(dead_code, unused_imports)]

// A file that includes this module may also include `support` itself
// (tests/resource_faults.rs does on another branch): two copies then, which
// is harmless for test helpers.
#[allow(clippy::duplicate_mod)]
#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use support::file_source::{append, config, config_with_api, counts, parse};

/// A running sluice whose stdout lines are collected.
pub struct Sluice {
    inner: support::Sluice,
    /// Where [`Sluice::stop`] leaves a copy of sluice's log.
    pub stderr_path: PathBuf,
}

impl Sluice {
    /// Starts sluice on `config`; its log is copied to `dir` on stop.
    pub fn start(dir: &Path, config: &str) -> Sluice {
        Sluice::start_with(dir, config, &[], |_| {})
    }

    /// [`Sluice::start`] with extra environment variables, and `adjust`
    /// applied to the command before it is spawned.
    pub fn start_with(dir: &Path, config: &str, env: &[(&str, &str)], adjust: impl FnOnce(&mut Command) + 'static) -> Sluice {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let inner = support::Sluice::builder()
            .config(config)
            .envs(env.iter().copied())
            .adjust(adjust)
            .start();
        Sluice {
            inner,
            stderr_path: dir.join(format!("sluice-{n}.stderr")),
        }
    }

    /// Lines received so far.
    pub fn count(&self) -> usize {
        self.inner.count()
    }

    /// Waits until at least `n` lines arrived.
    pub fn wait_for(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        self.inner.wait_for(n, timeout)
    }

    /// The process's log so far.
    pub fn stderr(&self) -> String {
        self.inner.logs()
    }

    /// SIGTERM and a bounded wait; the log is left at `stderr_path`.
    pub fn stop(self) -> (ExitStatus, Vec<String>) {
        let out = self.inner.stop();
        let _ = std::fs::copy(self.inner.log_path(), &self.stderr_path);
        out
    }

    /// SIGKILL (no drain, no final checkpoint); the lines it wrote.
    pub fn kill9(self) -> Vec<String> {
        self.inner.kill9_timed().0
    }

    /// One sample of `/metrics`, if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.inner.metrics().series(series)
    }
}
