//! Label values of an event, packed into a series key.
//!
//! Rules with the same label configuration share one [`LabelGroup`], so an
//! event matched by three such rules has its key built and hashed once.

use std::hash::BuildHasher;

use super::config::{LabelSource, DEFAULT_MISSING_LABEL};
use super::route::{normalize_into, rewrite_into, Rewrite};
use super::rule::{FieldIndex, Row};
use super::series::finish_key_value;
use crate::enrich::SourceContext;
use crate::event::FieldValueRef;

/// Longest label value kept, in bytes; longer values are cut (at a char
/// boundary). Bounds the memory of a series whatever the input.
pub(crate) const MAX_LABEL_BYTES: usize = 256;

/// Label names in output order; a rule uses the first two and any of the
/// others it configures.
pub(crate) const LABEL_NAMES: [&str; 4] = ["service", "release", "route", "method"];

/// Where one label's value comes from, compiled.
#[derive(Debug)]
struct LabelSpec {
    fields: Vec<FieldIndex>,
    meta: Option<String>,
    fixed: Option<String>,
    default: String,
    normalize: bool,
    patterns: Vec<Rewrite>,
}

/// A label configuration shared by rules, with the scratch space for the
/// key of the event being looked at.
#[derive(Debug)]
pub(crate) struct LabelGroup {
    /// The label names, in key order.
    pub names: Vec<&'static str>,
    specs: Vec<LabelSpec>,
    /// Metadata values for the current batch, per spec.
    meta_values: Vec<Option<String>>,
    key: Vec<u8>,
    hash: u64,
    /// The event `key` was built for; `usize::MAX` for none.
    event: usize,
    text: String,
    norm: Vec<u8>,
    rewritten: String,
    rewrite_tmp: String,
}

impl LabelGroup {
    /// Compiles the resolved label sources (service, release, route,
    /// method); `field` maps a path to the tap's field index.
    pub(crate) fn new(sources: &[Option<LabelSource>; 4], mut field: impl FnMut(&crate::event::FieldPath) -> FieldIndex) -> LabelGroup {
        let mut names = Vec::new();
        let mut specs = Vec::new();
        for (name, src) in LABEL_NAMES.iter().zip(sources) {
            let Some(src) = src else { continue };
            names.push(*name);
            specs.push(LabelSpec {
                fields: src.field.iter().map(&mut field).collect(),
                meta: src.meta.clone(),
                fixed: src.value.clone(),
                default: src.default.clone().unwrap_or_else(|| DEFAULT_MISSING_LABEL.to_owned()),
                normalize: src.normalize.unwrap_or(*name == "route"),
                patterns: src
                    .patterns
                    .iter()
                    .map(|p| Rewrite::new(p.pattern.0.clone(), p.replace.clone()))
                    .collect(),
            });
        }
        LabelGroup {
            meta_values: vec![None; specs.len()],
            names,
            specs,
            key: Vec::with_capacity(128),
            hash: 0,
            event: usize::MAX,
            text: String::new(),
            norm: Vec::new(),
            rewritten: String::new(),
            rewrite_tmp: String::new(),
        }
    }

    /// A string that is equal for groups that compute the same labels.
    pub(crate) fn identity(sources: &[Option<LabelSource>; 4]) -> String {
        format!("{sources:?}")
    }

    /// Looks up this batch's metadata values and forgets the last key.
    pub(crate) fn begin_batch(&mut self, source: &SourceContext) {
        for (spec, slot) in self.specs.iter().zip(&mut self.meta_values) {
            *slot = spec.meta.as_deref().and_then(|p| source.meta_value(p)).and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                _ => None,
            });
        }
        self.event = usize::MAX;
    }

    /// The key and its hash for the event in `row`, built once per event.
    #[inline]
    pub(crate) fn key(&mut self, row: &Row<'_, '_>, hasher: &impl BuildHasher) -> (u64, &[u8]) {
        if self.event != row.index() {
            self.build(row);
            self.hash = hasher.hash_one(self.key.as_slice());
            self.event = row.index();
        }
        (self.hash, &self.key)
    }

    fn build(&mut self, row: &Row<'_, '_>) {
        let LabelGroup {
            specs,
            meta_values,
            key,
            text,
            norm,
            rewritten,
            rewrite_tmp,
            ..
        } = self;
        key.clear();
        for (spec, meta) in specs.iter().zip(meta_values.iter()) {
            let value: &str = match &spec.fixed {
                Some(v) => v,
                None => {
                    let mut found = None;
                    for &f in &spec.fields {
                        match row.get(f) {
                            FieldValueRef::Str(s) => {
                                found = Some(s);
                                break;
                            }
                            v @ (FieldValueRef::Number(_) | FieldValueRef::Bool(_)) => {
                                text.clear();
                                v.render(text);
                                found = Some(text.as_str());
                                break;
                            }
                            _ => {}
                        }
                    }
                    found.or(meta.as_deref()).unwrap_or(&spec.default)
                }
            };
            let start = key.len();
            key.extend_from_slice(&[0; 4]);
            match (spec.normalize, spec.patterns.is_empty()) {
                (false, true) => key.extend_from_slice(value.as_bytes()),
                (true, true) => normalize_into(value, key),
                (normalize, false) => {
                    let value = if normalize {
                        norm.clear();
                        normalize_into(value, norm);
                        // Only whole segments are replaced, by ASCII.
                        std::str::from_utf8(norm).unwrap_or(value)
                    } else {
                        value
                    };
                    rewrite_into(value, &spec.patterns, rewritten, rewrite_tmp);
                    key.extend_from_slice(rewritten.as_bytes());
                }
            }
            finish_key_value(key, start, MAX_LABEL_BYTES);
        }
    }
}
