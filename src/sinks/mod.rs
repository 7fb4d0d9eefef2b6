//! Sinks: where events go. A sink type is one file or folder here with a
//! config struct implementing [`SinkComponent`], plus one line in the
//! registry at the end of this file.
//!
//! Every sink follows one contract: take [`QueueItem`]s from its queue,
//! deliver them, then call `batch.acknowledge(..)` exactly once per item.
//! When the queue ends (`recv` returns `None`) it flushes and returns.

pub(crate) mod blackhole;
pub(crate) mod delivery;
pub(crate) mod http;
pub(crate) mod kafka;
pub mod loki;
pub(crate) mod metadata_labels;
pub(crate) mod otlp;
pub mod prometheus_exporter;
pub mod prometheus_remote_write;
pub mod s3;
pub(crate) mod stdout;
pub(crate) mod template;
pub(crate) mod tls;

use serde_json::{Map, Value};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use crate::buffer::QueueReceiver;
use crate::config::{parse_component, parse_valid, ConfigError, Validate};
use crate::event::{EventKind, FieldPath, FieldSet};
use crate::pipeline::Task;
use crate::telemetry::Health;

/// Why a sink could not start, or stopped for good. Delivery failures that
/// retrying can fix are not errors: a sink retries them itself.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {kind}")]
pub struct SinkError {
    /// The sink's name in the config.
    pub(crate) sink: String,
    /// What went wrong (boxed: a sink's `Result` stays small).
    #[source]
    pub(crate) kind: Box<SinkErrorKind>,
}

/// What went wrong in a sink.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SinkErrorKind {
    /// Its settings cannot work (an endpoint URL, credentials, a template),
    /// in words that name the key.
    #[error("{0}")]
    Setup(String),
    /// The backend did not answer its start-up check (`healthcheck`).
    #[error("{0}")]
    Unhealthy(String),
    /// The backend refused a delivery for good (authentication, a missing
    /// bucket): retrying cannot help.
    #[error("{0}")]
    Refused(String),
    /// Standard output was closed by its reader.
    #[error("standard output was closed by its reader")]
    OutputClosed,
    /// An operating-system call failed for good.
    #[error("cannot {action}: {error}")]
    Io {
        /// What it was doing.
        action: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// The Kafka client could not be created.
    #[error("cannot {action}: {error}")]
    Kafka {
        /// What it was doing.
        action: &'static str,
        /// The client's error.
        error: rdkafka::error::KafkaError,
    },
    /// A task or thread of the sink died (a bug, not an input).
    #[error("{0}")]
    Died(String),
}

impl SinkError {
    /// An error of sink `name`.
    pub(crate) fn new(name: &str, kind: SinkErrorKind) -> SinkError {
        SinkError {
            sink: name.to_owned(),
            kind: Box::new(kind),
        }
    }
}

/// What a sink gets to run with.
#[derive(Debug, Clone)]
pub struct SinkCx {
    /// The sink's name.
    pub name: Arc<str>,
    /// Fields the decoder extracts; look up the indexes of the ones this
    /// sink asked for in [`SinkConfig::fields_needed`].
    pub fields: Arc<FieldSet>,
    /// Report health changes here (`/ready`).
    pub health: Arc<Health>,
    /// Where it may keep a disk buffer.
    pub data_dir: Option<PathBuf>,
}

/// What a sink type is: a config that checks itself ([`Validate`]), names
/// the event fields it reads, and starts the sink. Each type implements it
/// in its own folder; the registry below names it.
pub trait SinkComponent: Validate {
    /// Event fields this sink reads (labels, keys, timestamps).
    fn fields_needed(&self) -> Vec<FieldPath> {
        Vec::new()
    }

    /// Whether the sink can carry events of `kind` (every sink takes
    /// logs and metrics unless it says otherwise).
    fn accepts(&self, kind: EventKind) -> bool {
        let _ = kind;
        true
    }

    /// Checks the destination and starts the sink on its queue.
    fn build(&self, cx: SinkCx, input: QueueReceiver) -> impl Future<Output = Result<Task<SinkError>, SinkError>> + Send;
}

/// The sink registry: one line per type, `"name" => Variant(Config)`. It
/// makes [`SinkConfig`], [`parse_config`] and the dispatch to each type's
/// [`SinkComponent`].
macro_rules! sink_registry {
    ($($name:literal => $variant:ident($config:ty)),+ $(,)?) => {
        /// A sink's settings, by type.
        #[derive(Debug, Clone, PartialEq)]
        pub enum SinkConfig {
            $(#[doc = concat!("`type = \"", $name, "\"`.")] $variant($config),)+
        }

        /// Parses and checks the settings of a sink of type `kind` at config
        /// `path`, returning every error with its key path.
        pub(crate) fn parse_config(kind: &str, path: &str, rest: Map<String, Value>) -> Result<SinkConfig, Vec<ConfigError>> {
            parse_component("sink", kind, path, rest, &[
                $(($name, |path, value, errors| parse_valid::<$config>(path, value, errors).map(SinkConfig::$variant)),)+
            ])
        }

        impl SinkConfig {
            /// The type name.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(SinkConfig::$variant(_) => $name,)+
                }
            }

            /// Event fields this sink reads (labels, keys, timestamps).
            pub fn fields_needed(&self) -> Vec<FieldPath> {
                match self {
                    $(SinkConfig::$variant(c) => c.fields_needed(),)+
                }
            }

            /// Whether the sink can carry events of `kind`.
            pub fn accepts(&self, kind: EventKind) -> bool {
                match self {
                    $(SinkConfig::$variant(c) => c.accepts(kind),)+
                }
            }

            /// Checks the destination and starts the sink on its queue.
            pub async fn build(&self, cx: SinkCx, input: QueueReceiver) -> Result<Task<SinkError>, SinkError> {
                match self {
                    $(SinkConfig::$variant(c) => c.build(cx, input).await,)+
                }
            }
        }
    };
}

sink_registry! {
    "stdout" => Stdout(stdout::StdoutConfig),
    "blackhole" => Blackhole(blackhole::BlackholeConfig),
    "kafka" => Kafka(kafka::KafkaConfig),
    "loki" => Loki(Box<loki::LokiConfig>),
    "s3" => S3(Box<s3::S3Config>),
    "otlp" => Otlp(Box<otlp::OtlpSinkConfig>),
    "prometheus_remote_write" => PrometheusRemoteWrite(Box<prometheus_remote_write::RemoteWriteConfig>),
    "prometheus_exporter" => PrometheusExporter(prometheus_exporter::ExporterConfig),
}
