//! Settings of the Prometheus remote write sink
//! (`type = "prometheus_remote_write"`).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{duration, key_path, ConfigError, Validate};
use crate::sinks::delivery::RetryConfig;
use crate::sinks::http::{validate_target, HttpAuth, RequestConfig};
use crate::sinks::metadata_labels::validate_label_table;

/// Settings of the remote write sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    /// The remote write URL: `http://prometheus:9090/api/v1/write`,
    /// `http://mimir/api/v1/push`.
    pub(crate) endpoint: String,
    /// `X-Scope-OrgID`: the tenant, for Mimir, Cortex or Thanos receive.
    #[serde(default)]
    pub(crate) tenant_id: Option<String>,
    /// Labels added to every series (a series' own label of the same name
    /// wins), like Prometheus' `external_labels`.
    #[serde(default)]
    pub(crate) external_labels: BTreeMap<String, String>,
    /// Labels from the source's metadata: label name → dotted path
    /// (`release = "release.version"`). Missing paths add no label.
    #[serde(default)]
    pub(crate) metadata_labels: BTreeMap<String, String>,
    /// When a request is sent.
    #[serde(default)]
    pub(crate) batch: RemoteWriteBatch,
    /// HTTP request settings.
    #[serde(default)]
    pub(crate) request: RequestConfig,
    /// Backoff between attempts.
    #[serde(default)]
    pub(crate) retry: RetryConfig,
    /// Credentials, read from files.
    #[serde(default)]
    pub(crate) auth: Option<HttpAuth>,
    /// TLS: a custom CA bundle, a client certificate, the server name.
    #[serde(default)]
    pub(crate) tls: Option<crate::sinks::tls::HttpTlsConfig>,
}

/// The `batch` table: a request leaves at `max_samples`, or `timeout`
/// after its first sample.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RemoteWriteBatch {
    /// Most samples in one request (a histogram sample is one per bucket,
    /// plus `_sum` and `_count`).
    pub(crate) max_samples: usize,
    /// Longest a sample waits for its request to fill.
    #[serde(deserialize_with = "duration")]
    pub(crate) timeout: Duration,
}

impl Default for RemoteWriteBatch {
    fn default() -> Self {
        RemoteWriteBatch {
            max_samples: 5_000,
            timeout: Duration::from_secs(1),
        }
    }
}

/// Checks what serde cannot; each error carries its key path.
impl Validate for RemoteWriteConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        validate_target(path, &self.endpoint, self.tenant_id.as_deref(), errors);
        self.request.validate(path, errors);
        if let Some(t) = &self.tls {
            t.validate(&crate::config::key_path(path, "tls"), errors);
        }
        if let Some(a) = &self.auth {
            a.validate(path, errors);
        }
        self.retry.validate(&key_path(path, "retry"), errors);
        validate_label_table(path, "external_labels", &self.external_labels, errors);
        validate_label_table(path, "metadata_labels", &self.metadata_labels, errors);
        let mut err = |key: &str, msg: String| errors.push(ConfigError::at(path, key, msg));
        if self.batch.max_samples == 0 {
            err("batch.max_samples", "must be at least 1".into());
        }
        if self.batch.timeout.is_zero() {
            err("batch.timeout", "must be above 0".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::topology::{Config, Format};

    fn errors(sink: &str) -> Vec<String> {
        let text =
            format!("[sources.m]\ntype = \"statsd\"\naddress = \"127.0.0.1:8125\"\n[sinks.rw]\ntype = \"prometheus_remote_write\"\n{sink}");
        match Config::from_str(&text, Format::Toml, &|_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn a_minimal_remote_write_config_is_valid() {
        assert_eq!(errors("endpoint = \"http://127.0.0.1:9090/api/v1/write\"\n"), Vec::<String>::new());
    }

    #[test]
    fn remote_write_mistakes_are_reported_with_their_key_paths() {
        let e = errors(
            "endpoint = \"ftp://x\"\ntenant_id = \"\"\nexternal_labels = { \"bad-name\" = \"x\", __r = \"y\" }\n\
             [sinks.rw.batch]\nmax_samples = 0\n[sinks.rw.auth]\nuser = \"u\"\n",
        )
        .join("\n");
        for want in [
            "sinks.rw.endpoint: must be an http or https URL",
            "sinks.rw.tenant_id:",
            "sinks.rw.external_labels.bad-name:",
            "sinks.rw.external_labels.__r:",
            "sinks.rw.batch.max_samples: must be at least 1",
            "sinks.rw.auth: basic auth needs both user and password_file",
        ] {
            assert!(e.contains(want), "missing {want:?} in {e}");
        }
    }

    #[test]
    fn wiring_logs_into_remote_write_is_an_error_at_its_input() {
        let text = "[sources.logs]\ntype = \"stdin\"\n[sinks.rw]\ntype = \"prometheus_remote_write\"\n\
                    endpoint = \"http://127.0.0.1:9090/api/v1/write\"\ninputs = [\"logs\"]\n";
        let e = Config::from_str(text, Format::Toml, &|_| None).unwrap_err();
        let e: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
        assert!(
            e.iter()
                .any(|e| e == "sinks.rw.inputs[0]: source \"logs\" (stdin) sends logs, which a prometheus_remote_write sink cannot carry"),
            "{e:?}"
        );
    }
}
