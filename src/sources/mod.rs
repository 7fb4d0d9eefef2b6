//! Sources: where events come from. A source is one file here with a config
//! struct and a `build` function; [`parse_config`] and [`SourceConfig`] are
//! the registry that names them.

pub mod file;
pub mod kafka;
pub mod process;
pub mod socket;
pub mod stdin;

use serde_json::{Map, Value};
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{parse_at, ConfigError};
use crate::enrich::EnrichConfig;
use crate::pipeline::{ShutdownSignal, SourceOutput, Task};

/// A source's settings, by type.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// `type = "stdin"`.
    Stdin(stdin::StdinConfig),
    /// `type = "file"`.
    File(Box<file::FileConfig>),
    /// `type = "socket"`: unix, TCP or UDP sockets.
    Socket(Box<socket::SocketConfig>),
    /// `type = "process"`: a command's stdout and stderr (`sluice run`).
    Process(Box<process::ProcessConfig>),
    /// `type = "kafka"`: a consumer group (the aggregator tier).
    Kafka(Box<kafka::KafkaSourceConfig>),
}

/// Why a source could not start, or stopped for good.
#[derive(Debug, thiserror::Error)]
#[error("source {source_name}: {kind}")]
pub struct SourceError {
    /// The source's name in the config.
    pub source_name: String,
    /// What went wrong (boxed: a source's `Result` stays small).
    #[source]
    pub kind: Box<SourceErrorKind>,
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
    pub fn new(name: &str, kind: impl Into<SourceErrorKind>) -> SourceError {
        SourceError {
            source_name: name.to_owned(),
            kind: Box::new(kind.into()),
        }
    }
}

/// What a source gets to run with.
#[derive(Debug, Clone)]
pub struct SourceCx {
    /// The source's name.
    pub name: Arc<str>,
    /// Where its lines go.
    pub output: SourceOutput,
    /// Set when it should stop reading.
    pub shutdown: ShutdownSignal,
    /// Release and process metadata settings.
    pub enrich: Arc<EnrichConfig>,
    /// Where it may keep checkpoints.
    pub data_dir: Option<PathBuf>,
}

/// Parses the settings of a source of type `kind` at config `path`.
pub fn parse_config(kind: &str, path: &str, rest: Map<String, Value>) -> Result<SourceConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let value = Value::Object(rest);
    let parsed = match kind {
        "stdin" => parse_at(path, value, &mut errors).map(SourceConfig::Stdin),
        "file" => parse_at::<file::FileConfig>(path, value, &mut errors).and_then(|c| {
            let problems = c.problems();
            for (key, message) in &problems {
                errors.push(ConfigError::new(format!("{path}.{key}"), message.clone()));
            }
            problems.is_empty().then(|| SourceConfig::File(Box::new(c)))
        }),
        "socket" => socket::SocketConfig::parse(path, value, &mut errors).map(|c| SourceConfig::Socket(Box::new(c))),
        "process" => process::ProcessConfig::parse(path, value, &mut errors).map(|c| SourceConfig::Process(Box::new(c))),
        "kafka" => kafka::KafkaSourceConfig::parse(path, value, &mut errors).map(|c| SourceConfig::Kafka(Box::new(c))),
        other => {
            errors.push(ConfigError::new(
                format!("{path}.type"),
                format!("unknown source type {other:?}; known: stdin, file, socket, process, kafka"),
            ));
            None
        }
    };
    parsed.ok_or(errors)
}

impl SourceConfig {
    /// Whether the source keeps state (checkpoints) under `data_dir`.
    pub fn needs_data_dir(&self) -> bool {
        matches!(self, SourceConfig::File(_))
    }

    /// The type name.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Stdin(_) => "stdin",
            SourceConfig::File(_) => "file",
            SourceConfig::Socket(_) => "socket",
            SourceConfig::Process(_) => "process",
            SourceConfig::Kafka(_) => "kafka",
        }
    }

    /// Starts the source; the task ends when input ends or shutdown is asked.
    pub fn build(&self, cx: SourceCx) -> Result<Task<SourceError>, SourceError> {
        match self {
            SourceConfig::Stdin(c) => c.build(cx),
            SourceConfig::File(c) => c.build(cx),
            SourceConfig::Socket(c) => c.build(cx),
            SourceConfig::Process(c) => c.build(cx),
            SourceConfig::Kafka(c) => c.build(cx),
        }
    }
}
