//! The config floor: what every component's settings are made of (sizes,
//! durations, `${VAR}` interpolation) and how a problem is reported
//! ([`ConfigError`], with its key path). It imports nothing of sluice's; the
//! top-level config that joins the components is `topology::Config`.

mod interpolate;
mod units;

pub(crate) use interpolate::interpolate;
pub(crate) use units::NumberOrText;
pub(crate) use units::{duration, ByteSize};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::fmt;

/// One problem in a config, with the key path it concerns
/// (`sinks.loki.batch.max_bytes`) or the line, for interpolation errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: a dotted key path or `line N`.
    pub(crate) path: String,
    /// What is wrong, in words an operator can act on.
    pub(crate) message: String,
}

impl ConfigError {
    /// An error at `path`.
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An error at `key` below `path`: `at("sinks.s3", "bucket", ..)` is at
    /// `sinks.s3.bucket`, `at("sli", "[2]", ..)` at `sli[2]`.
    pub(crate) fn at(path: &str, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(key_path(path, key), message)
    }
}

/// `key` below `path`, joined with a dot unless `key` is an index (`[2]`)
/// or either side is empty.
pub(crate) fn key_path(path: &str, key: &str) -> String {
    match (path.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (_, true) => path.to_owned(),
        _ if key.starts_with('[') => format!("{path}{key}"),
        _ => format!("{path}.{key}"),
    }
}

/// What every component config and sub-config implements: the checks serde
/// cannot make (ranges, URLs, settings that exclude each other). It appends
/// every problem it finds, each with its full key path below `path` (the
/// path of the table it was read from, like `sources.app` or
/// `sinks.s3.buffer`), so `sluice validate` reports them all at once.
pub trait Validate {
    /// Appends every problem with these settings to `errors`.
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>);
}

impl<T: Validate> Validate for Box<T> {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        (**self).validate(path, errors);
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
pub(crate) fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Deserialises `value` into `T`, recording any error with its full key
/// path. For a table with checks of its own, use [`parse_valid`].
pub(crate) fn parse_at<T: DeserializeOwned>(prefix: &str, value: Value, errors: &mut Vec<ConfigError>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let key = if inner == "." { "" } else { inner.as_str() };
            errors.push(ConfigError::at(prefix, key, e.into_inner().to_string()));
            None
        }
    }
}

/// The one way a component's table is read: deserialise it at `path`
/// ([`parse_at`]), then [`Validate`] it. Every problem lands in `errors`
/// with its key path; the settings come back only when there was none.
pub(crate) fn parse_valid<T: DeserializeOwned + Validate>(path: &str, value: Value, errors: &mut Vec<ConfigError>) -> Option<T> {
    let cfg: T = parse_at(path, value, errors)?;
    let before = errors.len();
    cfg.validate(path, errors);
    (errors.len() == before).then_some(cfg)
}

/// A component type's reader: [`parse_valid`] into its variant of the
/// registry's enum.
pub(crate) type ParseComponent<C> = fn(&str, Value, &mut Vec<ConfigError>) -> Option<C>;

/// Reads a `what` (source, sink) table at `path` with the reader that
/// `registry` lists for its `type`; an unknown type is an error at
/// `path.type` that lists the known ones.
pub(crate) fn parse_component<C>(
    what: &str,
    kind: &str,
    path: &str,
    rest: Map<String, Value>,
    registry: &[(&str, ParseComponent<C>)],
) -> Result<C, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let Some((_, parse)) = registry.iter().find(|(name, _)| *name == kind) else {
        let known: Vec<&str> = registry.iter().map(|(name, _)| *name).collect();
        let message = format!("unknown {what} type {kind:?}; known: {}", known.join(", "));
        return Err(vec![ConfigError::at(path, "type", message)]);
    };
    parse(path, Value::Object(rest), &mut errors).ok_or(errors)
}
