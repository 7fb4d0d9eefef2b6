//! Settings of the Loki sink (`type = "loki"`).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

use super::encode::is_valid_label_name;
use crate::config::{duration, key_path, ByteSize, ConfigError, Validate};
use crate::event::FieldPath;
use crate::sinks::delivery::RetryConfig;
use crate::sinks::http::{validate_target, HttpAuth, RequestConfig};
use crate::sinks::template::Template;

/// The push API path under `endpoint`.
pub(crate) const DEFAULT_PUSH_PATH: &str = "/loki/api/v1/push";

/// Settings of the Loki sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LokiConfig {
    /// Base URL of Loki (or its gateway): `http://loki:3100`.
    pub(crate) endpoint: String,
    /// Push path under the endpoint.
    #[serde(default = "default_path")]
    pub(crate) path: String,
    /// `X-Scope-OrgID`: the tenant, for a multi-tenant Loki.
    #[serde(default)]
    pub(crate) tenant_id: Option<String>,
    /// Wire format: `protobuf` (snappy, the default) or `json`.
    #[serde(default)]
    pub(crate) encoding: Encoding,
    /// Compression of the JSON form: `gzip` (default) or `none`. Protobuf
    /// is always snappy, as Loki requires.
    #[serde(default)]
    pub(crate) compression: Option<Compression>,
    /// gzip level for the JSON form, 1 (fast) to 9 (small).
    #[serde(default = "default_gzip_level")]
    pub(crate) gzip_level: u32,
    /// Labels: name → template over event fields and source metadata.
    /// Keep them few and low-cardinality; a label that renders empty is
    /// left out.
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, Template>,
    /// Add `source` (the source's name) and `host` unless `labels` sets
    /// them.
    #[serde(default = "yes")]
    pub(crate) default_labels: bool,
    /// Event fields sent as structured metadata (high-cardinality values
    /// such as `request_id`, `trace_id`); the name is the path with `.`
    /// replaced by `_`.
    #[serde(default)]
    pub(crate) structured_metadata: Vec<String>,
    /// The event field that holds the event's time; empty to always use
    /// the time sluice received the event.
    #[serde(default = "default_timestamp_field")]
    pub(crate) timestamp_field: String,
    /// How to read that field.
    #[serde(default)]
    pub(crate) timestamp_format: TimestampFormat,
    /// When a push is sent.
    #[serde(default)]
    pub(crate) batch: LokiBatch,
    /// HTTP request settings.
    #[serde(default)]
    pub(crate) request: RequestConfig,
    /// Backoff between attempts.
    #[serde(default)]
    pub(crate) retry: RetryConfig,
    /// Check Loki at start-up (`GET /ready`): unreachable or refusing our
    /// credentials is a start-up error.
    #[serde(default = "yes")]
    pub(crate) healthcheck: bool,
    /// Credentials, read from files (never written in the config).
    #[serde(default)]
    pub(crate) auth: Option<HttpAuth>,
    /// TLS: a custom CA bundle, a client certificate, the server name.
    #[serde(default)]
    pub(crate) tls: Option<crate::sinks::tls::HttpTlsConfig>,
}

/// Loki's push formats.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// `application/x-protobuf`, snappy-compressed.
    #[default]
    Protobuf,
    /// `application/json`.
    Json,
}

/// Compression of a push body.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Raw snappy block (protobuf only).
    Snappy,
    /// `Content-Encoding: gzip` (JSON only).
    Gzip,
    /// Uncompressed (JSON only).
    None,
}

/// How the timestamp field is read.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TimestampFormat {
    /// RFC 3339 text, or a Unix time whose unit is guessed from its size
    /// (seconds, milliseconds, microseconds or nanoseconds).
    #[default]
    Auto,
    /// RFC 3339 text only (`2024-05-01T12:00:00.123Z`).
    Rfc3339,
    /// Unix seconds (fractions allowed).
    UnixS,
    /// Unix milliseconds.
    UnixMs,
    /// Unix microseconds.
    UnixUs,
    /// Unix nanoseconds (as a string for full precision).
    UnixNs,
}

/// The `batch` table: a push leaves when any limit is reached.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LokiBatch {
    /// Most line bytes (before compression) in one push.
    pub(crate) max_bytes: ByteSize,
    /// Most entries in one push.
    pub(crate) max_events: usize,
    /// Longest an entry waits for its push to fill.
    #[serde(deserialize_with = "duration")]
    pub(crate) timeout: Duration,
}

impl Default for LokiBatch {
    fn default() -> Self {
        LokiBatch {
            max_bytes: ByteSize(1 << 20),
            max_events: 10_000,
            timeout: Duration::from_secs(1),
        }
    }
}

fn default_path() -> String {
    DEFAULT_PUSH_PATH.to_owned()
}

fn default_gzip_level() -> u32 {
    6
}

fn default_timestamp_field() -> String {
    "time".to_owned()
}

fn yes() -> bool {
    true
}

impl LokiConfig {
    /// The compression actually used.
    pub(crate) fn effective_compression(&self) -> Compression {
        match (self.encoding, self.compression) {
            (_, Some(c)) => c,
            (Encoding::Protobuf, None) => Compression::Snappy,
            (Encoding::Json, None) => Compression::Gzip,
        }
    }

    /// The structured metadata fields, parsed, with their Loki names.
    pub(crate) fn metadata_fields(&self) -> Vec<(String, FieldPath)> {
        self.structured_metadata
            .iter()
            .filter_map(|p| FieldPath::parse(p).ok().map(|fp| (p.replace('.', "_"), fp)))
            .collect()
    }

    /// The timestamp field, if any.
    pub(crate) fn timestamp_path(&self) -> Option<FieldPath> {
        (!self.timestamp_field.is_empty())
            .then(|| FieldPath::parse(&self.timestamp_field).ok())
            .flatten()
    }
}

/// Checks what serde cannot; each error carries its key path.
impl Validate for LokiConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        validate_target(path, &self.endpoint, self.tenant_id.as_deref(), errors);
        self.request.validate(path, errors);
        let mut err = |key: &str, msg: String| errors.push(ConfigError::at(path, key, msg));
        if !self.path.starts_with('/') {
            err("path", "must start with `/`".into());
        }
        match (self.encoding, self.effective_compression()) {
            (Encoding::Protobuf, Compression::Snappy) | (Encoding::Json, Compression::Gzip | Compression::None) => {}
            (Encoding::Protobuf, c) => err("compression", format!("protobuf pushes are always snappy-compressed, not {c:?}")),
            (Encoding::Json, Compression::Snappy) => err("compression", "the JSON form takes `gzip` or `none`".into()),
        }
        if !(1..=9).contains(&self.gzip_level) {
            err("gzip_level", "must be between 1 and 9".into());
        }
        for name in self.labels.keys() {
            if !is_valid_label_name(name) {
                err(&format!("labels.{name}"), "a label name must match [a-zA-Z_][a-zA-Z0-9_]*".into());
            }
        }
        if !self.default_labels && self.labels.is_empty() {
            err("labels", "Loki needs at least one label: set labels or keep default_labels".into());
        }
        for (i, p) in self.structured_metadata.iter().enumerate() {
            match FieldPath::parse(p) {
                Ok(_) if is_valid_label_name(&p.replace('.', "_")) => {}
                Ok(_) => err(
                    &format!("structured_metadata[{i}]"),
                    format!("{p:?} does not make a valid metadata name"),
                ),
                Err(e) => err(&format!("structured_metadata[{i}]"), e),
            }
        }
        if !self.timestamp_field.is_empty() {
            if let Err(e) = FieldPath::parse(&self.timestamp_field) {
                err("timestamp_field", e);
            }
        }
        if self.batch.max_events == 0 {
            err("batch.max_events", "must be at least 1".into());
        }
        if self.batch.max_bytes.0 < 1024 {
            err("batch.max_bytes", "must be at least 1KiB".into());
        }
        if self.batch.timeout.is_zero() {
            err("batch.timeout", "must be above 0".into());
        }
        if let Some(a) = &self.auth {
            a.validate(path, errors);
        }
        self.retry.validate(&key_path(path, "retry"), errors);
        if let Some(t) = &self.tls {
            t.validate(&key_path(path, "tls"), errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::topology::{Config, Format};

    fn errors(sink: &str) -> Vec<String> {
        let text = format!("[sources.in]\ntype = \"stdin\"\n[sinks.loki]\ntype = \"loki\"\n{sink}");
        match Config::from_str(&text, Format::Toml, &|_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn a_minimal_config_is_valid() {
        assert!(errors("endpoint = \"http://loki:3100\"\n").is_empty());
    }

    #[test]
    fn mistakes_are_reported_with_their_key_paths() {
        let e = errors(
            "endpoint = \"ftp://x\"\nlabels = { \"bad-name\" = \"x\", ok = \"{{ svc\" }\n\
             encoding = \"json\"\ncompression = \"snappy\"\nstructured_metadata = [\"a..b\"]\n\
             [sinks.loki.batch]\nmax_events = 0\n",
        );
        let joined = e.join("\n");
        assert!(joined.contains("sinks.loki.labels.ok: unclosed"), "{joined}");
        let e = errors(
            "endpoint = \"ftp://x\"\nlabels = { \"bad-name\" = \"x\" }\nencoding = \"json\"\ncompression = \"snappy\"\n\
             structured_metadata = [\"a..b\"]\n[sinks.loki.batch]\nmax_events = 0\n",
        );
        let joined = e.join("\n");
        for want in [
            "sinks.loki.endpoint: must be an http or https URL",
            "sinks.loki.labels.bad-name: a label name must match",
            "sinks.loki.compression: the JSON form takes",
            "sinks.loki.structured_metadata[0]",
            "sinks.loki.batch.max_events: must be at least 1",
        ] {
            assert!(joined.contains(want), "missing {want:?} in {joined}");
        }
        assert!(
            !errors("endpoint = \"http://x\"\ncolour = 1\n").is_empty(),
            "unknown keys are errors"
        );
    }
}
