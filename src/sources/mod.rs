//! Sources: where events come from. A source type is one file or folder
//! here with a config struct implementing [`SourceComponent`], plus one line
//! in the registry at the end of this file.

pub mod file;
pub mod host_metrics;
pub(crate) mod internal_metrics;
pub mod journald;
pub(crate) mod kafka;
pub mod kubernetes_events;
pub(crate) mod otlp;
pub(crate) mod process;
pub mod prometheus_scrape;
pub mod socket;
pub mod statsd;
pub(crate) mod stdin;

use serde_json::{Map, Value};
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{parse_component, parse_valid, ConfigError, Validate};
use crate::enrich::EnrichConfig;
use crate::event::EventKind;
use crate::pipeline::{ShutdownSignal, SourceOutput, Task};

/// Why a source could not start, or stopped for good.
#[derive(Debug, thiserror::Error)]
#[error("source {source_name}: {kind}")]
pub struct SourceError {
    /// The source's name in the config.
    pub(crate) source_name: String,
    /// What went wrong (boxed: a source's `Result` stays small).
    #[source]
    pub(crate) kind: Box<SourceErrorKind>,
}

/// What went wrong in a source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceErrorKind {
    /// A setting it needs is missing or unusable; `key` is its config key
    /// below the source (`data_dir` for the top-level one).
    #[error("{key}: {message}")]
    Setting {
        /// The config key.
        key: &'static str,
        /// What to set, in words an operator can act on.
        message: String,
    },
    /// An operating-system call failed for good.
    #[error("cannot {action}: {error}")]
    Io {
        /// What it was doing (`read stdin`, `start a reader thread`).
        action: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// A thread the source runs on died without saying why.
    #[error("its {0} thread died")]
    ThreadDied(&'static str),
    /// A command (`sluice run`, `type = "process"`) could not be run.
    #[error("cannot {action} {program:?}: {error}")]
    Command {
        /// `start` or `wait for`.
        action: &'static str,
        /// The program.
        program: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// The socket could not be set up or failed.
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    /// Checkpoints cannot be kept.
    #[error(transparent)]
    Checkpoint(#[from] file::checkpoint::CheckpointError),
    /// The Kubernetes API client cannot be set up.
    #[error(transparent)]
    Kubernetes(#[from] file::kubernetes::ApiError),
    /// An `include` or `exclude` pattern does not compile.
    #[error("invalid glob: {0}")]
    Glob(#[from] globset::Error),
    /// The statsd source's socket could not be set up.
    #[error(transparent)]
    Statsd(#[from] statsd::StatsdError),
    /// `journalctl` exited with an error before reading any entry, or
    /// without `follow`.
    #[error("journalctl exited ({status}): {stderr}")]
    Journalctl {
        /// How it exited.
        status: String,
        /// The end of what it wrote on stderr.
        stderr: String,
    },
    /// The Kafka client failed.
    #[error("cannot {action}: {error}")]
    Kafka {
        /// What it was doing.
        action: String,
        /// The client's error.
        error: rdkafka::error::KafkaError,
    },
}

impl SourceError {
    /// An error of source `name`.
    pub(crate) fn new(name: &str, kind: impl Into<SourceErrorKind>) -> SourceError {
        SourceError {
            source_name: name.to_owned(),
            kind: Box::new(kind.into()),
        }
    }
}

/// What a source gets to run with.
#[derive(Debug, Clone)]
pub(crate) struct SourceCx {
    /// The source's name.
    pub(crate) name: Arc<str>,
    /// Where its lines go.
    pub(crate) output: SourceOutput,
    /// Set when it should stop reading.
    pub(crate) shutdown: ShutdownSignal,
    /// Release and process metadata settings.
    pub(crate) enrich: Arc<EnrichConfig>,
    /// Where it may keep checkpoints.
    pub(crate) data_dir: Option<PathBuf>,
}

/// What a source type is: a config that checks itself ([`Validate`]) and
/// starts the source. Each type implements it in its own folder; the
/// registry below names it.
pub(crate) trait SourceComponent: Validate {
    /// Starts the source; the task ends when input ends or shutdown is asked.
    fn build(&self, cx: SourceCx) -> Result<Task<SourceError>, SourceError>;

    /// Whether the source keeps state (checkpoints) under `data_dir`.
    fn needs_data_dir(&self) -> bool {
        false
    }

    /// What the source's batches hold: logs, or metric samples.
    fn produces(&self) -> EventKind {
        EventKind::Log
    }

    /// The other kind, for a source that sends both (OTLP: logs and
    /// metrics).
    fn also_produces(&self) -> Option<EventKind> {
        None
    }
}

/// Compiles a source's `multiline` setting (validated with the config, so
/// a problem here is reported as the setting it is).
pub(crate) fn compile_multiline(
    m: &crate::multiline::MultilineConfig,
    source: &str,
) -> Result<Arc<crate::multiline::config::Compiled>, SourceError> {
    m.compile().map_err(|problems| {
        let message = problems
            .into_iter()
            .map(|(k, m)| format!("{k}: {m}"))
            .collect::<Vec<_>>()
            .join("; ");
        SourceError::new(source, SourceErrorKind::Setting { key: "multiline", message })
    })
}

/// The source registry: one line per type, `"name" => Variant(Config)`.
/// It makes [`SourceConfig`], [`parse_config`] and the dispatch to each
/// type's [`SourceComponent`].
macro_rules! source_registry {
    ($($name:literal => $variant:ident($config:ty)),+ $(,)?) => {
        /// A source's settings, by type.
        #[derive(Debug, Clone, PartialEq)]
        pub enum SourceConfig {
            $(#[doc = concat!("`type = \"", $name, "\"`.")] $variant($config),)+
        }

        /// Parses and checks the settings of a source of type `kind` at
        /// config `path`, returning every error with its key path.
        pub(crate) fn parse_config(kind: &str, path: &str, rest: Map<String, Value>) -> Result<SourceConfig, Vec<ConfigError>> {
            parse_component("source", kind, path, rest, &[
                $(($name, |path, value, errors| parse_valid::<$config>(path, value, errors).map(SourceConfig::$variant)),)+
            ])
        }

        impl SourceConfig {
            /// The type name.
            pub(crate) fn kind(&self) -> &'static str {
                match self {
                    $(SourceConfig::$variant(_) => $name,)+
                }
            }

            /// Whether the source keeps state (checkpoints) under `data_dir`.
            pub(crate) fn needs_data_dir(&self) -> bool {
                match self {
                    $(SourceConfig::$variant(c) => c.needs_data_dir(),)+
                }
            }

            /// What the source's batches hold: logs, or metric samples.
            pub(crate) fn produces(&self) -> EventKind {
                match self {
                    $(SourceConfig::$variant(c) => c.produces(),)+
                }
            }

            /// Every kind the source's batches may hold.
            pub(crate) fn kinds(&self) -> Vec<EventKind> {
                match self {
                    $(SourceConfig::$variant(c) => std::iter::once(c.produces()).chain(c.also_produces()).collect(),)+
                }
            }

            /// Starts the source; the task ends when input ends or shutdown is asked.
            pub(crate) fn build(&self, cx: SourceCx) -> Result<Task<SourceError>, SourceError> {
                match self {
                    $(SourceConfig::$variant(c) => c.build(cx),)+
                }
            }
        }
    };
}

source_registry! {
    "stdin" => Stdin(stdin::StdinConfig),
    "file" => File(Box<file::FileConfig>),
    "socket" => Socket(Box<socket::SocketConfig>),
    "process" => Process(Box<process::ProcessConfig>),
    "kafka" => Kafka(Box<kafka::KafkaSourceConfig>),
    "otlp" => Otlp(Box<otlp::OtlpSourceConfig>),
    "statsd" => Statsd(Box<statsd::StatsdConfig>),
    "internal_metrics" => InternalMetrics(internal_metrics::InternalMetricsConfig),
    "journald" => Journald(Box<journald::JournaldConfig>),
    "kubernetes_events" => KubernetesEvents(Box<kubernetes_events::KubernetesEventsConfig>),
    "host_metrics" => HostMetrics(Box<host_metrics::HostMetricsConfig>),
    "prometheus_scrape" => PrometheusScrape(Box<prometheus_scrape::PrometheusScrapeConfig>),
}
