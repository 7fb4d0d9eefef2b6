//! `sample`: keeps 1 event in `rate`, chosen by a hash of a key field
//! (`request_id`), so every agent sampling the same requests keeps the same
//! ones. Events meeting `always_keep` are kept as they are; a sampled
//! event gets the rate in `rate_field` (the one change this transform
//! makes, to the events it keeps by sampling).

use serde::Deserialize;
use serde_json::Value;

use super::graph::{Compiler, CondId, KeyId, Run, Step};
use super::stream::{set_at, Item};
use super::TransformComponent;
use crate::condition::Condition;
use crate::config::{ConfigError, Validate};
use crate::event::FieldPath;

/// `[transforms.<name>] type = "sample"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// Keep 1 event in this many (at least 1).
    rate: u64,
    /// The field whose value decides; events without it are decided by
    /// their whole text. Default: the whole text.
    #[serde(default)]
    key: Option<String>,
    /// Events that meet it are always kept, unchanged.
    #[serde(default)]
    always_keep: Option<Condition>,
    /// Where a sampled event gets the rate; `""` for nowhere. Default
    /// `sample_rate`.
    #[serde(default = "default_rate_field")]
    rate_field: String,
}

fn default_rate_field() -> String {
    "sample_rate".into()
}

impl Validate for SampleConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.rate == 0 {
            errors.push(ConfigError::new(format!("{path}.rate"), "must be at least 1"));
        }
        if let Some(k) = &self.key {
            if let Err(e) = FieldPath::parse(k) {
                errors.push(ConfigError::new(format!("{path}.key"), e));
            }
        }
        if !self.rate_field.is_empty() {
            if let Err(e) = FieldPath::parse(&self.rate_field) {
                errors.push(ConfigError::new(format!("{path}.rate_field"), e));
            }
        }
        if let Some(c) = &self.always_keep {
            c.validate(&format!("{path}.always_keep"), errors);
        }
    }
}

impl TransformComponent for SampleConfig {
    fn build(&self, _name: &str, cx: &mut Compiler) -> Box<dyn Step> {
        let path = |p: &str| FieldPath::parse(p).ok();
        Box::new(Sample {
            rate: self.rate.max(1),
            key: self.key.as_deref().and_then(path).map(|p| cx.key(&p)),
            always_keep: self.always_keep.as_ref().map(|c| cx.condition(c)),
            rate_field: path(&self.rate_field).map(|p| p.segments().to_vec()),
        })
    }
}

struct Sample {
    rate: u64,
    key: Option<KeyId>,
    always_keep: Option<CondId>,
    rate_field: Option<Vec<String>>,
}

/// FNV-1a, 64 bits: the same on every machine and release, so agents
/// agree on which keys are kept.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Step for Sample {
    fn run(&self, input: Vec<Item>, run: &mut Run<'_>, out: &mut [Vec<Item>]) {
        let [kept] = out else { return };
        let mut key = String::new();
        for mut item in input {
            if self.always_keep.is_some_and(|c| run.holds(c, &item)) {
                kept.push(item);
                continue;
            }
            let hash = match self.key.and_then(|k| run.key_text(k, &item, &mut key)) {
                Some(key) => stable_hash(key.as_bytes()),
                None => stable_hash(run.bytes(&item)),
            };
            if hash % self.rate != 0 {
                continue;
            }
            if let Some(field) = &self.rate_field {
                if let Some(event) = run.change(&mut item) {
                    set_at(event, field, Value::from(self.rate));
                }
            }
            kept.push(item);
        }
    }

    fn drop_reason(&self) -> &'static str {
        "sampled"
    }
}
