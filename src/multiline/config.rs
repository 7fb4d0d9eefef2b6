//! The `multiline` setting of a source: a preset name, or a table.
//!
//! ```toml
//! multiline = "auto"
//! multiline = { preset = "python", max_lines = 500, timeout = "1s" }
//! multiline = { start = "^\\d{4}-", mode = "continue_until_start" }
//! multiline = { start = "\\\\$", condition = "\\\\$", mode = "continue_past" }
//! ```

use regex::bytes::Regex;
use serde::{Deserialize, Deserializer};
use std::sync::Arc;
use std::time::Duration;

use super::presets::{Presets, PRESET_NAMES};
use super::rules::{Custom, Rules};
use crate::config::{duration, key_path, ByteSize, ConfigError, Validate};

/// Default cap on the lines of one group: a deep Java trace with causes is
/// a few hundred lines; past this it is more likely a stream that never
/// stops continuing.
pub(crate) const DEFAULT_MAX_LINES: usize = 1000;

/// Default cap on the bytes of one group (the default line cap too).
pub(crate) const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;

/// Default wait for a group's next line: writers print a trace in one go,
/// so a second without a line means the group is complete.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// How a custom rule's `condition` decides (Vector's modes, plus
/// `continue_until_start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Mode {
    /// Every line that does not match `start` joins the open group; a line
    /// that matches `start` opens the next one.
    ContinueUntilStart,
    /// Lines that match `condition` join; the first that does not ends the
    /// group and is not part of it.
    ContinueThrough,
    /// Lines that match `condition` join, and so does the first one that
    /// does not, which ends the group.
    ContinuePast,
    /// Lines that do not match `condition` join; the first that does ends
    /// the group and is not part of it.
    HaltBefore,
    /// Lines that do not match `condition` join, and so does the first one
    /// that does, which ends the group.
    HaltWith,
}

impl Mode {
    /// The name in config.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::ContinueUntilStart => "continue_until_start",
            Mode::ContinueThrough => "continue_through",
            Mode::ContinuePast => "continue_past",
            Mode::HaltBefore => "halt_before",
            Mode::HaltWith => "halt_with",
        }
    }
}

/// The table form of the setting.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MultilineTable {
    /// A built-in preset (`auto`, `java`, `python`, `go`, `node`, `ruby`,
    /// `dotnet`); excludes `start`, `condition` and `mode`.
    pub(crate) preset: Option<String>,
    /// Regex of a line that opens a group.
    pub(crate) start: Option<String>,
    /// Regex the mode judges lines after the first by.
    pub(crate) condition: Option<String>,
    /// How `condition` decides; with `start` alone, `continue_until_start`.
    pub(crate) mode: Option<Mode>,
    /// Most lines in one group; a group that would grow past it is sent
    /// flagged (`multiline_cut`).
    pub(crate) max_lines: usize,
    /// Most bytes in one group, likewise.
    pub(crate) max_bytes: ByteSize,
    /// How long an open group waits for its next line.
    #[serde(deserialize_with = "duration")]
    pub(crate) timeout: Duration,
    /// For JSON events: the string field whose lines are joined (the text
    /// of the first event's field becomes the whole group's). Without it,
    /// JSON events are never joined.
    pub(crate) field: Option<String>,
}

impl Default for MultilineTable {
    fn default() -> Self {
        MultilineTable {
            preset: None,
            start: None,
            condition: None,
            mode: None,
            max_lines: DEFAULT_MAX_LINES,
            max_bytes: ByteSize(DEFAULT_MAX_BYTES),
            timeout: DEFAULT_TIMEOUT,
            field: None,
        }
    }
}

/// A source's `multiline` setting.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MultilineConfig(pub(crate) MultilineTable);

impl<'de> Deserialize<'de> for MultilineConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::String(name) => Ok(MultilineConfig(MultilineTable {
                preset: Some(name),
                ..MultilineTable::default()
            })),
            v @ serde_json::Value::Object(_) => serde_json::from_value(v).map(MultilineConfig).map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom(
                "expected a preset name (\"auto\", \"java\", …) or a table ({ preset = …, start = …, mode = … })",
            )),
        }
    }
}

/// Settings fixed for a source's streams once compiled.
#[derive(Debug)]
pub(crate) struct Compiled {
    /// How lines group.
    pub(crate) rules: Rules,
    /// Most lines in a group.
    pub(crate) max_lines: usize,
    /// Most bytes in a group.
    pub(crate) max_bytes: usize,
    /// Wait for the next line.
    pub(crate) timeout: Duration,
    /// The JSON field joined, if any.
    pub(crate) field: Option<String>,
}

/// Why a setting cannot be compiled: the key below `multiline` and the
/// message.
type Problem = (&'static str, String);

impl MultilineConfig {
    /// The setting for a preset name (a pod annotation's value).
    pub(crate) fn preset(name: &str) -> MultilineConfig {
        MultilineConfig(MultilineTable {
            preset: Some(name.to_owned()),
            ..MultilineTable::default()
        })
    }

    /// Compiles the rules; every problem with its key.
    pub(crate) fn compile(&self) -> Result<Arc<Compiled>, Vec<Problem>> {
        let t = &self.0;
        let mut problems = Vec::new();
        let regex = |key: &'static str, p: &Option<String>, problems: &mut Vec<Problem>| {
            p.as_ref().and_then(|p| match Regex::new(p) {
                Ok(r) => Some(r),
                Err(e) => {
                    problems.push((key, format!("not a valid regex: {e}")));
                    None
                }
            })
        };
        let rules = match &t.preset {
            Some(name) => {
                if t.start.is_some() || t.condition.is_some() || t.mode.is_some() {
                    problems.push(("preset", "a preset excludes start, condition and mode".into()));
                }
                match Presets::by_name(name) {
                    Some(p) => Some(Rules::Presets(p)),
                    None => {
                        problems.push(("preset", format!("unknown preset {name:?}; one of {}", PRESET_NAMES.join(", "))));
                        None
                    }
                }
            }
            None => {
                let start = regex("start", &t.start, &mut problems);
                let condition = regex("condition", &t.condition, &mut problems);
                let mode = t.mode.unwrap_or(Mode::ContinueUntilStart);
                match mode {
                    Mode::ContinueUntilStart if t.start.is_none() => {
                        problems.push(("start", "continue_until_start needs a start pattern".into()))
                    }
                    Mode::ContinueUntilStart => {}
                    _ if t.condition.is_none() => problems.push(("condition", format!("mode {} needs a condition pattern", mode.name()))),
                    _ => {}
                }
                if t.start.is_none() && t.condition.is_none() {
                    problems.push(("preset", "set a preset, or a start pattern (and a condition with a mode)".into()));
                }
                Some(Rules::Custom(Custom { start, condition, mode }))
            }
        };
        if t.max_lines < 2 {
            problems.push(("max_lines", "must be at least 2".into()));
        }
        if t.max_bytes.0 == 0 {
            problems.push(("max_bytes", "must be more than 0".into()));
        }
        if t.timeout.is_zero() {
            problems.push(("timeout", "must be more than 0".into()));
        }
        if t.field.as_deref() == Some("") {
            problems.push(("field", "must not be empty".into()));
        }
        match rules {
            Some(rules) if problems.is_empty() => Ok(Arc::new(Compiled {
                rules,
                max_lines: t.max_lines,
                max_bytes: t.max_bytes.0.min(u32::MAX as u64) as usize,
                timeout: t.timeout,
                field: t.field.clone(),
            })),
            _ => Err(problems),
        }
    }
}

impl Validate for MultilineConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if let Err(problems) = self.compile() {
            for (key, message) in problems {
                errors.push(ConfigError::new(key_path(path, key), message));
            }
        }
    }
}

impl Validate for Option<MultilineConfig> {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if let Some(m) = self {
            m.validate(&key_path(path, "multiline"), errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_value: &str) -> Result<MultilineConfig, String> {
        let v: toml::Value = toml::from_str(&format!("multiline = {toml_value}")).map_err(|e| e.to_string())?;
        let json = serde_json::to_value(&v["multiline"]).map_err(|e| e.to_string())?;
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    fn errors(toml_value: &str) -> Vec<String> {
        let mut errors = Vec::new();
        parse(toml_value).unwrap().validate("sources.app.multiline", &mut errors);
        errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn every_documented_shape_parses() {
        assert_eq!(parse("\"auto\"").unwrap(), MultilineConfig::preset("auto"));
        let t = parse("{ preset = \"python\", max_lines = 500, timeout = \"2s\" }").unwrap().0;
        assert_eq!((t.max_lines, t.timeout), (500, Duration::from_secs(2)));
        let t = parse("{ start = \"^\\\\d{4}-\", mode = \"continue_until_start\" }").unwrap().0;
        assert_eq!(t.start.as_deref(), Some("^\\d{4}-"));
        for shape in [
            "\"java\"",
            "{ start = \"x\" }",
            "{ start = \"a\", condition = \"b\", mode = \"halt_with\" }",
        ] {
            assert!(errors(shape).is_empty(), "{shape}");
        }
    }

    #[test]
    fn bad_settings_are_reported_with_their_key() {
        assert_eq!(errors("\"cobol\"").len(), 1);
        assert!(errors("\"cobol\"")[0].starts_with("sources.app.multiline.preset: unknown preset"));
        assert!(errors("{ start = \"(\" }")[0].starts_with("sources.app.multiline.start: not a valid regex"));
        assert!(errors("{ start = \"a\", mode = \"halt_before\" }")[0].starts_with("sources.app.multiline.condition:"));
        assert!(errors("{ preset = \"go\", max_lines = 1 }")[0].starts_with("sources.app.multiline.max_lines:"));
        assert!(parse("{ preset = \"go\", colour = 1 }").is_err());
        assert!(parse("3").is_err());
    }
}
