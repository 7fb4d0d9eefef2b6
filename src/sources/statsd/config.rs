//! Settings of the statsd source (`type = "statsd"`).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{duration, ByteSize, ConfigError, Validate};

/// Default flush interval: Prometheus' usual scrape interval.
const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// Default series limit per source: ample for one node's apps, small
/// enough that a label explosion costs megabytes, not gigabytes.
const DEFAULT_MAX_SERIES: usize = 10_000;

/// Default expiry: a series silent for five minutes is gone (Prometheus
/// stops showing a series after five minutes without samples too).
const DEFAULT_EXPIRE_AFTER: Duration = Duration::from_secs(300);

/// Default longest tag value: longer ones are refused (counted), which
/// bounds what one series' labels can take.
const DEFAULT_MAX_TAG_VALUE_BYTES: usize = 1024;

/// Default longest line: far above any real statsd line.
const DEFAULT_MAX_LINE_BYTES: u64 = 64 * 1024;

/// Default buckets for timers and distributions, in the unit the clients
/// send (milliseconds for statsd timers).
const DEFAULT_BUCKETS: [f64; 13] = [
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Which socket statsd arrives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StatsdMode {
    /// UDP (the default, as statsd clients send); needs `address`.
    #[default]
    Udp,
    /// TCP, one line per metric; needs `address`.
    Tcp,
    /// A unix datagram socket (DogStatsD's `unix://` socket); needs `path`.
    UnixDatagram,
}

/// Settings of the statsd source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StatsdConfig {
    /// `udp` (default), `tcp` or `unix_datagram`.
    #[serde(default)]
    pub(crate) mode: StatsdMode,
    /// Listen address for `udp` and `tcp` (`127.0.0.1:8125`).
    #[serde(default)]
    pub(crate) address: Option<SocketAddr>,
    /// Socket file for `unix_datagram`.
    #[serde(default)]
    pub(crate) path: Option<PathBuf>,
    /// How often the aggregated series are sent on.
    #[serde(default = "default_flush_interval", deserialize_with = "duration")]
    pub(crate) flush_interval: Duration,
    /// Series kept; past it updates go to `__overflow__` series.
    #[serde(default = "default_max_series")]
    pub(crate) max_series: usize,
    /// A series not updated for this long is removed.
    #[serde(default = "default_expire_after", deserialize_with = "duration")]
    pub(crate) expire_after: Duration,
    /// Upper bounds of the histogram buckets timers and distributions
    /// fill, ascending.
    #[serde(default = "default_buckets")]
    pub(crate) buckets: Vec<f64>,
    /// Longest tag value; a line with a longer one is refused and counted.
    #[serde(default = "default_max_tag_value_bytes")]
    pub(crate) max_tag_value_bytes: usize,
    /// Longest line; longer ones are dropped and counted.
    #[serde(default = "default_max_line_bytes")]
    pub(crate) max_line_bytes: ByteSize,
    /// Kernel receive buffer (SO_RCVBUF) for datagram sockets.
    #[serde(default)]
    pub(crate) receive_buffer_bytes: Option<ByteSize>,
    /// Most TCP connections open at once.
    #[serde(default = "default_max_connections")]
    pub(crate) max_connections: usize,
}

fn default_flush_interval() -> Duration {
    DEFAULT_FLUSH_INTERVAL
}
fn default_max_series() -> usize {
    DEFAULT_MAX_SERIES
}
fn default_expire_after() -> Duration {
    DEFAULT_EXPIRE_AFTER
}
fn default_buckets() -> Vec<f64> {
    DEFAULT_BUCKETS.to_vec()
}
fn default_max_tag_value_bytes() -> usize {
    DEFAULT_MAX_TAG_VALUE_BYTES
}
fn default_max_line_bytes() -> ByteSize {
    ByteSize(DEFAULT_MAX_LINE_BYTES)
}
fn default_max_connections() -> usize {
    1024
}

impl Validate for StatsdConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut err = |key: &str, msg: &str| errors.push(ConfigError::at(path, key, msg));
        match self.mode {
            StatsdMode::Udp | StatsdMode::Tcp => {
                if self.address.is_none() {
                    err("address", "udp and tcp need `address` (like \"127.0.0.1:8125\")");
                }
                if self.path.is_some() {
                    err("path", "only `mode = \"unix_datagram\"` has a socket file");
                }
            }
            StatsdMode::UnixDatagram => {
                if self.path.is_none() {
                    err("path", "a unix datagram socket needs `path`");
                }
                if self.address.is_some() {
                    err("address", "unix sockets use `path`, not `address`");
                }
            }
        }
        if self.flush_interval < Duration::from_millis(10) {
            err("flush_interval", "must be at least 10ms");
        }
        if self.max_series == 0 {
            err("max_series", "must be at least 1");
        }
        if self.expire_after < self.flush_interval {
            err("expire_after", "must be at least flush_interval");
        }
        if self.buckets.is_empty() {
            err("buckets", "needs at least one bound");
        }
        if self.buckets.iter().any(|b| !b.is_finite()) || self.buckets.windows(2).any(|w| w[0] >= w[1]) {
            err("buckets", "bounds must be finite and strictly ascending");
        }
        if self.max_tag_value_bytes == 0 {
            err("max_tag_value_bytes", "must be at least 1");
        }
        if self.max_line_bytes.0 == 0 || self.max_line_bytes.0 > 1 << 20 {
            err("max_line_bytes", "must be between 1 byte and 1MiB");
        }
        if self.max_connections == 0 {
            err("max_connections", "must be at least 1");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::topology::{Config, Format};

    fn errors(source: &str, sinks: &str) -> Vec<String> {
        let text = format!("[sources.m]\ntype = \"statsd\"\n{source}\n{sinks}");
        match Config::from_str(&text, Format::Toml, &|_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    const STDOUT: &str = "[sinks.out]\ntype = \"stdout\"\n";

    #[test]
    fn a_minimal_statsd_config_is_valid() {
        assert_eq!(errors("address = \"127.0.0.1:8125\"", STDOUT), Vec::<String>::new());
    }

    #[test]
    fn statsd_mistakes_are_reported_with_their_key_paths() {
        let e = errors(
            "mode = \"unix_datagram\"\naddress = \"127.0.0.1:1\"\nbuckets = [5.0, 1.0]\nmax_series = 0\nflush_interval = \"1ms\"",
            STDOUT,
        )
        .join("\n");
        for want in [
            "sources.m.path:",
            "sources.m.address:",
            "sources.m.buckets:",
            "sources.m.max_series:",
            "sources.m.flush_interval:",
        ] {
            assert!(e.contains(want), "missing {want} in {e}");
        }
    }

    #[test]
    fn wiring_metrics_into_a_sink_that_takes_logs_only_is_an_error_at_its_input() {
        let loki = "[sinks.loki]\ntype = \"loki\"\nendpoint = \"http://127.0.0.1:3100\"\ninputs = [\"logs\", \"m\"]\n\
                    [sources.logs]\ntype = \"stdin\"\n";
        let e = errors("address = \"127.0.0.1:8125\"", loki).join("\n");
        assert!(
            e.contains("sinks.loki.inputs[1]: source \"m\" (statsd) sends metrics, which a loki sink cannot carry"),
            "{e}"
        );
    }

    #[test]
    fn a_sink_without_inputs_is_fed_only_the_sources_it_can_carry() {
        let text = "[sources.m]\ntype = \"statsd\"\naddress = \"127.0.0.1:8125\"\n[sources.logs]\ntype = \"stdin\"\n\
                    [sinks.loki]\ntype = \"loki\"\nendpoint = \"http://127.0.0.1:3100\"\n[sinks.out]\ntype = \"stdout\"\n";
        let c = Config::from_str(text, Format::Toml, &|_| None).unwrap();
        assert_eq!(c.sinks_for("m").collect::<Vec<_>>(), vec!["out"]);
        assert_eq!(c.sinks_for("logs").collect::<Vec<_>>(), vec!["loki", "out"]);
    }
}
