//! Settings of the S3 sink (`type = "s3"`).

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{duration, key_path, ByteSize, ConfigError, Validate};
use crate::sinks::delivery::RetryConfig;
use crate::sinks::template::Template;

/// S3's smallest part, except the last: 5 MiB.
pub(crate) const MIN_PART_SIZE: u64 = 5 << 20;

/// S3's largest part.
pub(crate) const MAX_PART_SIZE: u64 = 5 << 30;

/// Settings of the S3 sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket objects go to.
    pub(crate) bucket: String,
    /// The S3 endpoint (`http://127.0.0.1:9000` for MinIO or s3s); AWS's
    /// regional endpoint when unset.
    #[serde(default)]
    pub(crate) endpoint: Option<String>,
    /// The signing region.
    #[serde(default = "default_region")]
    pub(crate) region: String,
    /// `path` (`endpoint/bucket/key`) or `virtual_host`
    /// (`bucket.endpoint/key`); path with an explicit endpoint, virtual
    /// host on AWS.
    #[serde(default)]
    pub(crate) url_style: Option<UrlStyle>,
    /// Key prefix: strftime directives (`%Y/%m/%d/%H`, UTC, the time the
    /// object was opened) and `{{ field }}` templates (event fields, else
    /// source metadata; characters other than `A-Za-z0-9._-` become `_`).
    #[serde(default = "default_key_prefix")]
    pub(crate) key_prefix: Template,
    /// `gzip` (default), `zstd` or `none`.
    #[serde(default)]
    pub(crate) compression: S3Compression,
    /// Compression level: gzip 1–9 (default 6), zstd 1–19 (default 3).
    #[serde(default)]
    pub(crate) compression_level: Option<u32>,
    /// When an object is cut.
    #[serde(default)]
    pub(crate) batch: S3Batch,
    /// Multipart upload: objects whose compressed size passes `part_size`
    /// are uploaded in parts of at least that size while they fill.
    #[serde(default)]
    pub(crate) multipart: S3Multipart,
    /// HTTP request settings.
    #[serde(default)]
    pub(crate) request: S3Request,
    /// Backoff between attempts.
    #[serde(default)]
    pub(crate) retry: RetryConfig,
    /// `HEAD` the bucket at start-up: wrong credentials or an unknown
    /// bucket are a start-up error.
    #[serde(default = "yes")]
    pub(crate) healthcheck: bool,
    /// Most objects open at once (key prefixes with field templates open
    /// one per distinct prefix); past it the oldest is cut.
    #[serde(default = "default_max_open_objects")]
    pub(crate) max_open_objects: usize,
    /// File holding the access key id (else `AWS_ACCESS_KEY_ID`).
    #[serde(default)]
    pub(crate) access_key_id_file: Option<PathBuf>,
    /// File holding the secret access key (else `AWS_SECRET_ACCESS_KEY`).
    #[serde(default)]
    pub(crate) secret_access_key_file: Option<PathBuf>,
    /// File holding a session token (else `AWS_SESSION_TOKEN`, optional).
    #[serde(default)]
    pub(crate) session_token_file: Option<PathBuf>,
    /// TLS: a custom CA bundle, a client certificate, the server name.
    #[serde(default)]
    pub(crate) tls: Option<crate::sinks::tls::HttpTlsConfig>,
    /// The credential chain's settings (profile, STS endpoint, refresh).
    #[serde(default)]
    pub(crate) credentials: super::credentials::CredentialsConfig,
}

/// How bucket and key map to a URL.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum UrlStyle {
    /// `endpoint/bucket/key`.
    Path,
    /// `bucket.endpoint/key`.
    VirtualHost,
}

/// Object compression.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum S3Compression {
    /// gzip (`.ndjson.gz`).
    #[default]
    Gzip,
    /// Zstandard (`.ndjson.zst`).
    Zstd,
    /// Plain NDJSON (`.ndjson`).
    None,
}

impl S3Compression {
    /// The object name suffix.
    pub(crate) fn extension(self) -> &'static str {
        match self {
            S3Compression::Gzip => ".ndjson.gz",
            S3Compression::Zstd => ".ndjson.zst",
            S3Compression::None => ".ndjson",
        }
    }
}

/// The `batch` table: an object is cut at either limit.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct S3Batch {
    /// Most NDJSON bytes (before compression) in one object.
    pub(crate) max_bytes: ByteSize,
    /// Longest an object stays open after its first event.
    #[serde(deserialize_with = "duration")]
    pub(crate) timeout: Duration,
}

impl Default for S3Batch {
    fn default() -> Self {
        S3Batch {
            max_bytes: ByteSize(100 << 20),
            timeout: Duration::from_secs(300),
        }
    }
}

/// The `multipart` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct S3Multipart {
    /// Compressed bytes per part (at least 5MiB; the last part may be
    /// smaller). An object that ends below it is one `PUT`.
    pub(crate) part_size: ByteSize,
    /// Parts of one object uploading at once.
    pub(crate) parts_in_flight: usize,
}

impl Default for S3Multipart {
    fn default() -> Self {
        S3Multipart {
            part_size: ByteSize(8 << 20),
            parts_in_flight: 2,
        }
    }
}

/// The `request` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct S3Request {
    /// Longest one request may take, answer included.
    #[serde(deserialize_with = "duration")]
    pub(crate) timeout: Duration,
    /// Objects finishing (last part, completion or `PUT`) at once.
    pub(crate) concurrency: usize,
}

impl Default for S3Request {
    fn default() -> Self {
        S3Request {
            timeout: Duration::from_secs(60),
            concurrency: 4,
        }
    }
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn default_key_prefix() -> Template {
    Template::parse("%Y/%m/%d/").unwrap_or_else(|_| unreachable!("constant template"))
}

fn default_max_open_objects() -> usize {
    64
}

fn yes() -> bool {
    true
}

impl S3Config {
    /// The URL style actually used.
    pub(crate) fn effective_url_style(&self) -> UrlStyle {
        self.url_style.unwrap_or(if self.endpoint.is_some() {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        })
    }

    /// The endpoint actually used.
    pub(crate) fn effective_endpoint(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", self.region))
    }

    /// The compression level actually used.
    pub(crate) fn effective_level(&self) -> u32 {
        self.compression_level.unwrap_or(match self.compression {
            S3Compression::Gzip => 6,
            S3Compression::Zstd => 3,
            S3Compression::None => 0,
        })
    }
}

/// Checks what serde cannot; each error carries its key path.
impl Validate for S3Config {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut err = |key: &str, msg: String| errors.push(ConfigError::at(path, key, msg));
        if self.bucket.is_empty() {
            err("bucket", "must not be empty".into());
        }
        if let Some(e) = &self.endpoint {
            if let Err(why) = super::credentials::http_url(e) {
                err("endpoint", why);
            }
        }
        match (&self.access_key_id_file, &self.secret_access_key_file) {
            (Some(_), None) => err("secret_access_key_file", "must be set with access_key_id_file".into()),
            (None, Some(_)) => err("access_key_id_file", "must be set with secret_access_key_file".into()),
            _ => {}
        }
        if self.session_token_file.is_some() && self.access_key_id_file.is_none() {
            err("session_token_file", "needs access_key_id_file and secret_access_key_file".into());
        }
        if self.region.is_empty() {
            err("region", "must not be empty".into());
        }
        let probe = jiff::Timestamp::UNIX_EPOCH;
        for part in self.key_prefix.map_literals(|l| l.to_owned()) {
            if let super::super::template::RenderPart::Literal(l) = part {
                if let Err(e) = jiff::fmt::strtime::format(l.as_str(), probe) {
                    err("key_prefix", format!("invalid strftime format {l:?}: {e}"));
                }
            }
        }
        if self.key_prefix.as_str().starts_with('/') {
            err("key_prefix", "must not start with `/`".into());
        }
        let level = self.effective_level();
        match self.compression {
            S3Compression::Gzip if !(1..=9).contains(&level) => err("compression_level", "gzip takes 1 to 9".into()),
            S3Compression::Zstd if !(1..=19).contains(&level) => err("compression_level", "zstd takes 1 to 19".into()),
            _ => {}
        }
        if self.batch.max_bytes.0 < 1024 {
            err("batch.max_bytes", "must be at least 1KiB".into());
        }
        if self.batch.timeout.is_zero() {
            err("batch.timeout", "must be above 0".into());
        }
        if self.multipart.part_size.0 < MIN_PART_SIZE || self.multipart.part_size.0 > MAX_PART_SIZE {
            err("multipart.part_size", "must be between 5MiB and 5GiB (S3's limits)".into());
        }
        if self.multipart.parts_in_flight == 0 {
            err("multipart.parts_in_flight", "must be at least 1".into());
        }
        if self.request.concurrency == 0 {
            err("request.concurrency", "must be at least 1".into());
        }
        if self.request.timeout.is_zero() {
            err("request.timeout", "must be above 0".into());
        }
        if self.max_open_objects == 0 {
            err("max_open_objects", "must be at least 1".into());
        }
        self.retry.validate(&key_path(path, "retry"), errors);
        if let Some(t) = &self.tls {
            t.validate(&key_path(path, "tls"), errors);
        }
        self.credentials.validate(&key_path(path, "credentials"), errors);
    }
}

#[cfg(test)]
mod tests {
    use crate::topology::{Config, Format};

    fn errors(sink: &str) -> String {
        let text = format!("[sources.in]\ntype = \"stdin\"\n[sinks.s3]\ntype = \"s3\"\n{sink}");
        match Config::from_str(&text, Format::Toml, &|_| None) {
            Ok(_) => String::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"),
        }
    }

    #[test]
    fn a_minimal_config_is_valid() {
        assert_eq!(errors("bucket = \"logs\"\n"), "");
    }

    #[test]
    fn mistakes_are_reported_with_their_key_paths() {
        let e = errors(
            "bucket = \"logs\"\nkey_prefix = \"/x/%\"\ncompression = \"zstd\"\ncompression_level = 30\n\
             [sinks.s3.multipart]\npart_size = \"1MiB\"\n",
        );
        for want in [
            "sinks.s3.key_prefix: invalid strftime",
            "sinks.s3.key_prefix: must not start with `/`",
            "sinks.s3.compression_level: zstd takes 1 to 19",
            "sinks.s3.multipart.part_size: must be between 5MiB and 5GiB",
        ] {
            assert!(e.contains(want), "missing {want:?} in {e}");
        }
        assert!(errors("bucket = \"logs\"\nsecret_access_key = \"x\"\n").contains("unknown field"));
    }

    #[test]
    fn credential_settings_are_checked_with_their_key_paths() {
        let e = errors(
            "bucket = \"logs\"\naccess_key_id_file = \"/k\"\n[sinks.s3.credentials]\nsts_endpoint = \"ftp://x\"\n\
             refresh_before = \"0s\"\nprofile = \"\"\n",
        );
        for want in [
            "sinks.s3.secret_access_key_file: must be set with access_key_id_file",
            "sinks.s3.credentials.sts_endpoint: must be an http or https URL",
            "sinks.s3.credentials.refresh_before: must be above 0",
            "sinks.s3.credentials.profile: must not be empty",
        ] {
            assert!(e.contains(want), "missing {want:?} in {e}");
        }
        assert!(errors("bucket = \"logs\"\n[sinks.s3.credentials]\nrole = \"x\"\n").contains("unknown field"));
        assert_eq!(
            errors("bucket = \"logs\"\n[sinks.s3.credentials]\nprofile = \"ci\"\nrefresh_before = \"10m\"\n"),
            ""
        );
    }
}
