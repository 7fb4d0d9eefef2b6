//! Settings of the Kafka sink, their defaults and their validation.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::time::Duration;

use super::topic::TopicTemplate;
use crate::config::{duration, ConfigError, Validate};
use crate::event::FieldPath;

/// `type = "kafka"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`: the brokers to bootstrap from.
    pub(crate) bootstrap_servers: String,
    /// Topic, or a template over event fields and metadata:
    /// `logs-{{ service }}`.
    pub(crate) topic: String,
    /// Substituted for a template field that neither the event nor the
    /// source's metadata has.
    #[serde(default = "default_missing")]
    pub(crate) topic_missing_value: String,
    /// Event field whose value becomes the message key (same key, same
    /// partition). Without it messages have no key.
    #[serde(default)]
    pub(crate) key_field: Option<String>,
    /// Compression of record batches.
    #[serde(default)]
    pub(crate) compression: Compression,
    /// Broker acknowledgements a message needs to count as delivered.
    #[serde(default)]
    pub(crate) acks: Acks,
    /// Any other librdkafka producer property, passed through as is
    /// (`"linger.ms" = "5"`).
    #[serde(default)]
    pub(crate) librdkafka_options: BTreeMap<String, OptionValue>,
    /// Check at start-up that the brokers answer (fetch metadata); a failure
    /// stops sluice with an error naming them.
    #[serde(default = "default_true")]
    pub(crate) healthcheck: bool,
    /// How long the start-up check waits.
    #[serde(default = "default_healthcheck_timeout", deserialize_with = "duration")]
    pub(crate) healthcheck_timeout: Duration,
}

fn default_missing() -> String {
    "unknown".into()
}

fn default_true() -> bool {
    true
}

fn default_healthcheck_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `compression`: librdkafka's `compression.codec`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Compression {
    /// No compression (the default: every broker and consumer reads it).
    #[default]
    None,
    /// gzip.
    Gzip,
    /// snappy.
    Snappy,
    /// lz4.
    Lz4,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The librdkafka name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// `acks`: `"all"` (the default: every in-sync replica has it), `1` (the
/// leader has it) or `0` (sent is enough; nothing can be retried).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Acks {
    /// `all` / `-1`.
    #[default]
    All,
    /// `1`.
    Leader,
    /// `0`.
    None,
}

impl Acks {
    /// The librdkafka value of `acks`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "1",
            Acks::None => "0",
        }
    }
}

impl<'de> Deserialize<'de> for Acks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match OptionValue::deserialize(d)?.0.as_str() {
            "all" | "-1" => Ok(Acks::All),
            "1" | "leader" => Ok(Acks::Leader),
            "0" | "none" => Ok(Acks::None),
            other => Err(serde::de::Error::custom(format!("invalid acks {other:?}: use \"all\", 1 or 0"))),
        }
    }
}

/// A librdkafka property value: written as a string, number or boolean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OptionValue(pub String);

impl<'de> Deserialize<'de> for OptionValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            F(f64),
            B(bool),
        }
        Ok(OptionValue(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::I(i) => i.to_string(),
            Raw::F(f) => f.to_string(),
            Raw::B(b) => b.to_string(),
        }))
    }
}

/// Properties sluice sets from its own keys; passing them through
/// `librdkafka_options` as well would make two sources of truth.
const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "bootstrap_servers"),
    ("metadata.broker.list", "bootstrap_servers"),
    ("compression.codec", "compression"),
    ("compression.type", "compression"),
    ("acks", "acks"),
    ("request.required.acks", "acks"),
];

/// librdkafka defaults sluice changes (an option of the same name wins).
///
/// The sink lets a batch go once librdkafka has copied its events and keeps
/// the batch's share of the queue budget until they are delivered, so the
/// budget bounds librdkafka's copies. What the budget does not see is
/// librdkafka's own bookkeeping, about 215 bytes per message: the message
/// cap of 16,384 bounds that to about 3.4 MiB (librdkafka's default of
/// 100,000 allowed 20 MiB), at the same throughput to the broker. The byte
/// cap of 16 MiB (librdkafka: 1 GiB) keeps one sink from filling librdkafka
/// with a whole large budget before the first delivery report.
pub(crate) const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("client.id", "sluice"),
    ("queue.buffering.max.kbytes", "16384"),
    ("queue.buffering.max.messages", "16384"),
];

/// Checks what serde cannot: templates, field paths, options.
impl Validate for KafkaConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.bootstrap_servers.trim().is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.bootstrap_servers"),
                "must name at least one broker",
            ));
        }
        if let Err(e) = TopicTemplate::parse(&self.topic) {
            errors.push(ConfigError::new(format!("{path}.topic"), e));
        }
        if let Some(k) = &self.key_field {
            if let Err(e) = FieldPath::parse(k) {
                errors.push(ConfigError::new(format!("{path}.key_field"), e));
            }
        }
        for (key, value) in &self.librdkafka_options {
            if let Some((_, ours)) = RESERVED.iter().find(|(k, _)| k == key) {
                errors.push(ConfigError::new(
                    format!("{path}.librdkafka_options.{key}"),
                    format!("set this with the sink's `{ours}` key"),
                ));
                continue;
            }
            if let Err(e) = check_librdkafka_option(key, &value.0) {
                errors.push(ConfigError::new(format!("{path}.librdkafka_options.{key}"), e));
            }
        }
    }
}

/// Checks one librdkafka property's name and value, as librdkafka does
/// without starting a client (an unknown name, a value out of range, TLS
/// or SASL settings this build cannot serve).
pub(crate) fn check_librdkafka_option(key: &str, value: &str) -> Result<(), String> {
    let mut c = rdkafka::ClientConfig::new();
    c.set(key, value);
    c.create_native_config().map(drop).map_err(|e| e.to_string())
}

impl KafkaConfig {
    /// The librdkafka producer configuration.
    pub(crate) fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        for (k, v) in PRODUCER_DEFAULTS {
            c.set(*k, *v);
        }
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("compression.codec", self.compression.as_str())
            .set("acks", self.acks.as_str());
        for (k, v) in &self.librdkafka_options {
            c.set(k, &v.0);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::SinkComponent;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<KafkaConfig, serde_json::Error> {
        serde_json::from_value(v)
    }

    fn problems(c: &KafkaConfig) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        c.validate("sinks.k", &mut errors);
        errors
    }

    #[test]
    fn defaults_are_acks_all_no_compression_and_a_healthcheck() {
        let c = parse(json!({"bootstrap_servers": "k:9092", "topic": "logs"})).unwrap();
        assert_eq!(c.acks, Acks::All);
        assert_eq!(c.compression, Compression::None);
        assert!(c.healthcheck);
        assert!(problems(&c).is_empty());
        let cc = c.client_config();
        assert_eq!(cc.get("acks"), Some("all"));
        assert_eq!(cc.get("queue.buffering.max.kbytes"), Some("16384"));
    }

    #[test]
    fn options_pass_through_and_are_checked_by_librdkafka() {
        let c = parse(json!({
            "bootstrap_servers": "k:9092", "topic": "logs-{{ service }}", "key_field": "request.id",
            "acks": 1, "compression": "zstd",
            "librdkafka_options": {"linger.ms": 5, "enable.idempotence": false, "queue.buffering.max.kbytes": "1024"}
        }))
        .unwrap();
        assert!(problems(&c).is_empty(), "{:?}", problems(&c));
        let cc = c.client_config();
        assert_eq!(cc.get("linger.ms"), Some("5"));
        assert_eq!(cc.get("acks"), Some("1"));
        assert_eq!(cc.get("compression.codec"), Some("zstd"));
        assert_eq!(cc.get("queue.buffering.max.kbytes"), Some("1024"));
        let fields: Vec<String> = c.fields_needed().iter().map(|f| f.to_string()).collect();
        assert_eq!(fields, ["service", "request.id"]);

        let bad = parse(json!({
            "bootstrap_servers": "", "topic": "logs {{",
            "librdkafka_options": {"no.such.thing": "1", "acks": "all", "linger.ms": "soon"}
        }))
        .unwrap();
        let paths: Vec<String> = problems(&bad).into_iter().map(|e| e.path).collect();
        for want in [
            "sinks.k.bootstrap_servers",
            "sinks.k.topic",
            "sinks.k.librdkafka_options.no.such.thing",
            "sinks.k.librdkafka_options.acks",
            "sinks.k.librdkafka_options.linger.ms",
        ] {
            assert!(paths.iter().any(|p| p == want), "missing {want} in {paths:?}");
        }
        assert!(parse(json!({"bootstrap_servers": "k", "topic": "t", "compression": "brotli"})).is_err());
        assert!(parse(json!({"bootstrap_servers": "k", "topic": "t", "acks": 2})).is_err());
    }

    /// This build has TLS (OpenSSL, linked statically) and with it SASL
    /// SCRAM; PLAIN needs nothing. (The old build rejected the first with
    /// "OpenSSL not available at build time".)
    #[test]
    fn tls_and_sasl_settings_are_accepted() {
        for opts in [
            json!({"security.protocol": "ssl", "ssl.ca.location": "/etc/ssl/ca.pem", "ssl.endpoint.identification.algorithm": "https"}),
            json!({"security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "u", "sasl.password": "p"}),
            json!({"security.protocol": "sasl_ssl", "sasl.mechanisms": "SCRAM-SHA-256"}),
            json!({"security.protocol": "sasl_plaintext", "sasl.mechanisms": "PLAIN"}),
            json!({"security.protocol": "ssl", "ssl.certificate.location": "/c.pem", "ssl.key.location": "/k.pem"}),
        ] {
            let c = parse(json!({"bootstrap_servers": "k:9093", "topic": "t", "librdkafka_options": opts})).unwrap();
            assert!(problems(&c).is_empty(), "{opts}: {:?}", problems(&c));
        }
    }
}
