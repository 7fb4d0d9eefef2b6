//! Label values of an event, packed into a series key.
//!
//! Rules with the same label configuration share one [`LabelGroup`], so an
//! event matched by three such rules has its key built and hashed once.

use std::hash::BuildHasher;
use std::sync::Arc;

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

/// A label configuration shared by rules. Immutable once built, so batches
/// decoded in parallel use it at once, each with its own [`KeyScratch`].
#[derive(Debug)]
pub(crate) struct LabelGroup {
    /// The label names, in key order.
    pub(crate) names: Vec<Arc<str>>,
    specs: Vec<LabelSpec>,
}

/// The metadata values of the batch being judged, and the buffers that
/// build an event's key.
#[derive(Debug, Default)]
pub(crate) struct KeyScratch {
    /// Metadata values for the current batch, per label.
    meta_values: Vec<Option<String>>,
    key: Vec<u8>,
    text: String,
    norm: Vec<u8>,
    rewritten: String,
    rewrite_tmp: String,
}

impl LabelGroup {
    /// The label sources of an SLI rule (service, release, route, method)
    /// as named labels, with the SLI defaults applied: a missing value is
    /// `unknown`, and `route` is normalised.
    pub(crate) fn sli_labels(sources: &[Option<LabelSource>; 4]) -> Vec<(String, LabelSource)> {
        LABEL_NAMES
            .iter()
            .zip(sources)
            .filter_map(|(name, src)| {
                let mut src = src.clone()?;
                src.default.get_or_insert_with(|| DEFAULT_MISSING_LABEL.to_owned());
                src.normalize.get_or_insert(*name == "route");
                Some((name.to_string(), src))
            })
            .collect()
    }

    /// Compiles named label sources, in key order; `field` maps a path to
    /// the tap's field index.
    pub(crate) fn new(labels: &[(String, LabelSource)], mut field: impl FnMut(&crate::event::FieldPath) -> FieldIndex) -> LabelGroup {
        let mut names = Vec::new();
        let mut specs = Vec::new();
        for (name, src) in labels {
            names.push(Arc::from(name.as_str()));
            specs.push(LabelSpec {
                fields: src.field.iter().map(&mut field).collect(),
                meta: src.meta.clone(),
                fixed: src.value.clone(),
                default: src.default.clone().unwrap_or_else(|| DEFAULT_MISSING_LABEL.to_owned()),
                normalize: src.normalize.unwrap_or(false),
                patterns: src
                    .patterns
                    .iter()
                    .map(|p| Rewrite::new(p.pattern.0.clone(), p.replace.clone()))
                    .collect(),
            });
        }
        LabelGroup { names, specs }
    }

    /// A string that is equal for groups that compute the same labels.
    pub(crate) fn identity(labels: &[(String, LabelSource)]) -> String {
        format!("{labels:?}")
    }

    /// Looks up a batch's metadata values.
    pub(crate) fn begin_batch(&self, source: &SourceContext, scratch: &mut KeyScratch) {
        scratch.meta_values.clear();
        scratch.meta_values.extend(self.specs.iter().map(|spec| {
            spec.meta.as_deref().and_then(|p| source.meta_value(p)).and_then(|v| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                _ => None,
            })
        }));
    }

    /// The key of the event in `row`, and its hash.
    #[inline]
    pub(crate) fn key<'s>(&self, scratch: &'s mut KeyScratch, row: &Row<'_, '_>, hasher: &impl BuildHasher) -> (u64, &'s [u8]) {
        self.build(scratch, row);
        (hasher.hash_one(scratch.key.as_slice()), &scratch.key)
    }

    fn build(&self, scratch: &mut KeyScratch, row: &Row<'_, '_>) {
        let KeyScratch {
            meta_values,
            key,
            text,
            norm,
            rewritten,
            rewrite_tmp,
            ..
        } = scratch;
        key.clear();
        for (spec, meta) in self.specs.iter().zip(meta_values.iter()) {
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
