//! Settings of the Prometheus scrape source (`type = "prometheus_scrape"`).

use serde::Deserialize;
use std::time::Duration;

use crate::config::{duration, ByteSize, ConfigError, Validate};

/// Prometheus' own default scrape interval.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
/// Prometheus' own default scrape timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Series kept across all targets of the source: a node's pods with a
/// thousand series each, with room; a label explosion costs megabytes.
const DEFAULT_MAX_SERIES: usize = 100_000;
/// A series not scraped for five minutes is forgotten (Prometheus marks
/// series stale far sooner; the guard only needs a bound).
const DEFAULT_EXPIRE_AFTER: Duration = Duration::from_secs(300);
/// Longest label value: a URL or a stack of ids fits; a body that puts a
/// document in a label does not grow a series key without bound.
const DEFAULT_MAX_LABEL_VALUE_BYTES: usize = 4096;
/// Most labels on one sample (Prometheus' `label_limit` is unlimited by
/// default; real exporters stay far below this).
const DEFAULT_MAX_LABELS: usize = 64;
/// Largest body read from a target (Prometheus' `body_size_limit`).
const DEFAULT_MAX_BODY_BYTES: u64 = 32 << 20;

/// Settings of the Prometheus scrape source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrometheusScrapeConfig {
    /// Static targets: full URLs (`http://127.0.0.1:9100/metrics`).
    #[serde(default)]
    pub(crate) targets: Vec<String>,
    /// Scrape every target this often.
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub(crate) interval: Duration,
    /// A scrape that takes longer fails (`up` = 0).
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub(crate) timeout: Duration,
    /// On a label conflict keep the scraped label (true) or rename it to
    /// `exported_<name>` (false, Prometheus' default).
    #[serde(default)]
    pub(crate) honor_labels: bool,
    /// Keep the timestamps the exposition carries (Prometheus' default);
    /// without, every sample gets the scrape's time.
    #[serde(default = "default_true")]
    pub(crate) honor_timestamps: bool,
    /// The `job` label; default: the source's name.
    #[serde(default)]
    pub(crate) job: Option<String>,
    /// Series kept across all targets; new series past it are dropped and
    /// counted.
    #[serde(default = "default_max_series")]
    pub(crate) max_series: usize,
    /// A series not scraped for this long leaves the guard.
    #[serde(default = "default_expire_after", deserialize_with = "duration")]
    pub(crate) expire_after: Duration,
    /// Longest label value; a line with a longer one is skipped and counted.
    #[serde(default = "default_max_label_value_bytes")]
    pub(crate) max_label_value_bytes: usize,
    /// Most labels on one sample; a line with more is skipped and counted.
    #[serde(default = "default_max_labels")]
    pub(crate) max_labels: usize,
    /// Largest body read; a larger one fails the scrape.
    #[serde(default = "default_max_body_bytes")]
    pub(crate) max_body_bytes: ByteSize,
    /// Pod discovery through a file source's Kubernetes pod cache.
    #[serde(default)]
    pub(crate) kubernetes: Option<ScrapeKubernetes>,
}

/// `[sources.<name>.kubernetes]`: scrape this node's annotated pods.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScrapeKubernetes {
    /// The file source (with `kubernetes.api = true`) whose pod cache and
    /// metadata settings are used: one watch, one cache, the same labels
    /// on a pod's logs and metrics.
    pub(crate) file_source: String,
}

fn default_interval() -> Duration {
    DEFAULT_INTERVAL
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn default_true() -> bool {
    true
}
fn default_max_series() -> usize {
    DEFAULT_MAX_SERIES
}
fn default_expire_after() -> Duration {
    DEFAULT_EXPIRE_AFTER
}
fn default_max_label_value_bytes() -> usize {
    DEFAULT_MAX_LABEL_VALUE_BYTES
}
fn default_max_labels() -> usize {
    DEFAULT_MAX_LABELS
}
fn default_max_body_bytes() -> ByteSize {
    ByteSize(DEFAULT_MAX_BODY_BYTES)
}

impl Validate for PrometheusScrapeConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut err = |key: String, msg: &str| errors.push(ConfigError::at(path, &key, msg));
        if self.targets.is_empty() && self.kubernetes.is_none() {
            err("targets".into(), "needs at least one target, or a `kubernetes` table");
        }
        for (i, t) in self.targets.iter().enumerate() {
            match reqwest::Url::parse(t) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                _ => err(format!("targets[{i}]"), "must be an http:// or https:// URL with a host"),
            }
        }
        if self.interval < Duration::from_millis(100) {
            err("interval".into(), "must be at least 100ms");
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            err("timeout".into(), "must be more than 0 and at most interval");
        }
        if self.max_series == 0 {
            err("max_series".into(), "must be at least 1");
        }
        if self.expire_after < self.interval {
            err("expire_after".into(), "must be at least interval");
        }
        if self.max_label_value_bytes == 0 {
            err("max_label_value_bytes".into(), "must be at least 1");
        }
        if self.max_labels == 0 {
            err("max_labels".into(), "must be at least 1");
        }
        if self.max_body_bytes.0 == 0 {
            err("max_body_bytes".into(), "must be at least 1 byte");
        }
        if let Some(k) = &self.kubernetes {
            if k.file_source.is_empty() {
                err("kubernetes.file_source".into(), "names the file source whose pod cache is used");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::topology::{Config, Format};

    fn errors(source: &str) -> Vec<String> {
        let text = format!("[sources.m]\ntype = \"prometheus_scrape\"\n{source}\n[sinks.out]\ntype = \"stdout\"\n");
        match Config::from_str(&text, Format::Toml, &|_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn a_minimal_scrape_config_is_valid() {
        assert_eq!(errors("targets = [\"http://127.0.0.1:9100/metrics\"]"), Vec::<String>::new());
        assert_eq!(errors("[sources.m.kubernetes]\nfile_source = \"pods\""), Vec::<String>::new());
    }

    #[test]
    fn scrape_mistakes_are_reported_with_their_key_paths() {
        let e = errors("targets = [\"ftp://x/\", \"nope\"]\ninterval = \"1s\"\ntimeout = \"2s\"\nmax_series = 0").join("\n");
        for want in [
            "sources.m.targets[0]:",
            "sources.m.targets[1]:",
            "sources.m.timeout:",
            "sources.m.max_series:",
        ] {
            assert!(e.contains(want), "missing {want} in {e}");
        }
        assert!(errors("").join("\n").contains("sources.m.targets:"));
    }
}
