//! The config floor: what every component's settings are made of (sizes,
//! durations, `${VAR}` interpolation) and how a problem is reported
//! ([`ConfigError`], with its key path). It imports nothing of sluice's; the
//! top-level config that joins the components is `topology::Config`.

mod interpolate;
mod units;

pub use interpolate::interpolate;
pub(crate) use units::NumberOrText;
pub use units::{duration, ByteSize};

use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt;

/// One problem in a config, with the key path it concerns
/// (`sinks.loki.batch.max_bytes`) or the line, for interpolation errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: a dotted key path or `line N`.
    pub path: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every error found in a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The process environment.
pub fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Deserialises `value` into `T`, recording any error with its full key path.
pub fn parse_at<T: DeserializeOwned>(prefix: &str, value: Value, errors: &mut Vec<ConfigError>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = match (prefix.is_empty(), inner.as_str()) {
                (_, ".") => prefix.to_owned(),
                (true, p) => p.to_owned(),
                (false, p) if p.starts_with('[') => format!("{prefix}{p}"),
                (false, p) => format!("{prefix}.{p}"),
            };
            errors.push(ConfigError::new(path, e.into_inner().to_string()));
            None
        }
    }
}
