//! `{{ field }}` templates over event fields and source metadata.
//!
//! The one `{{ path }}` template language of the sinks: Loki labels, S3
//! key prefixes, Kafka topics (`kafka/topic.rs` adds Kafka's naming rules).
//!
//! A template is literal text with `{{ path }}` placeholders. A placeholder
//! renders the event's own field `path` (extracted by the decoder, so every
//! path must be declared in `fields_needed`), or, when the event does not
//! have it (or has it empty), the value at `path` in the batch's source
//! metadata (`release.version`, `host`, `kubernetes.namespace`). Objects,
//! arrays, nulls, empty and absent values render as nothing.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::event::{Batch, FieldPath, FieldSet};

/// One piece of a template.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    /// Text copied as is.
    Literal(String),
    /// A field path, rendered from the event or the source metadata.
    Field {
        /// The parsed path.
        path: FieldPath,
        /// The path as written (`release.version`), for metadata lookups.
        dotted: String,
    },
}

/// A parsed template. Invariant: no two `Literal` segments are adjacent
/// and no literal is empty.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template {
    source: String,
    segments: Vec<Segment>,
}

impl Template {
    /// Parses `text`. `{{` must be closed by `}}` and hold a non-empty
    /// dotted path; spaces inside the braces are ignored.
    pub(crate) fn parse(text: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut rest = text;
        let mut literal = String::new();
        while let Some(open) = rest.find("{{") {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                return Err(format!("unclosed `{{{{` in template {text:?}"));
            };
            let inner = after[..close].trim();
            if inner.is_empty() {
                return Err(format!("empty `{{{{ }}}}` in template {text:?}"));
            }
            if inner.contains(char::is_whitespace) || inner.contains('{') {
                return Err(format!("invalid field path {inner:?} in template {text:?}"));
            }
            let path = FieldPath::parse(inner).map_err(|e| format!("{e} in template {text:?}"))?;
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
            }
            segments.push(Segment::Field {
                path,
                dotted: inner.to_owned(),
            });
            rest = &after[close + 2..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template {
            source: text.to_owned(),
            segments,
        })
    }

    /// The template as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.source
    }

    /// The field paths it refers to (for `fields_needed`).
    pub(crate) fn fields(&self) -> impl Iterator<Item = &FieldPath> + '_ {
        self.segments.iter().filter_map(|s| match s {
            Segment::Field { path, .. } => Some(path),
            Segment::Literal(_) => None,
        })
    }

    /// True when the template has no placeholder: it renders the same for
    /// every event.
    pub(crate) fn is_literal(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Literal(_)))
    }

    /// Applies `f` to every literal segment (S3 uses it to expand strftime
    /// in the literal text only, never in field values).
    pub(crate) fn map_literals(&self, mut f: impl FnMut(&str) -> String) -> Vec<RenderPart> {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => RenderPart::Literal(f(l)),
                Segment::Field { .. } => RenderPart::Field,
            })
            .collect()
    }

    /// Binds the template to the pipeline's field set: looks up the column
    /// of every placeholder once, so rendering is a table lookup.
    pub(crate) fn bind(&self, fields: &FieldSet) -> BoundTemplate {
        let columns = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Field { path, .. } => fields.index_of(path),
                Segment::Literal(_) => None,
            })
            .collect();
        BoundTemplate {
            template: self.clone(),
            columns,
        }
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Template::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A rendered piece, for callers that post-process literals.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RenderPart {
    /// Literal text, already post-processed.
    Literal(String),
    /// A placeholder, rendered per event.
    Field,
}

/// A template with the decoder columns of its placeholders resolved.
#[derive(Debug, Clone)]
pub(crate) struct BoundTemplate {
    template: Template,
    /// Parallel to the template's segments; `None` for literals and for a
    /// path the decoder does not extract (then only metadata is used).
    columns: Vec<Option<usize>>,
}

impl BoundTemplate {
    /// The template.
    pub(crate) fn template(&self) -> &Template {
        &self.template
    }

    /// Renders event `i` of `batch` into `out`.
    pub(crate) fn render(&self, batch: &Batch, i: usize, out: &mut String) {
        for (seg, col) in self.template.segments.iter().zip(&self.columns) {
            match seg {
                Segment::Literal(l) => out.push_str(l),
                Segment::Field { dotted, .. } => {
                    if !render_event(batch, i, *col, out) {
                        render_meta(batch, dotted, out);
                    }
                }
            }
        }
    }

    /// Looks up, once for `batch`, what each placeholder renders for an
    /// event that lacks its field; for [`Self::render_parts`].
    pub(crate) fn batch_meta(&self, batch: &Batch, meta: &mut BatchMeta) {
        meta.values.clear();
        for seg in &self.template.segments {
            if let Segment::Field { dotted, .. } = seg {
                let mut value = String::new();
                render_meta(batch, dotted, &mut value);
                meta.values.push(value);
            }
        }
    }

    /// Renders event `i` with pre-processed literal `parts` (from
    /// [`Template::map_literals`]) and the batch's metadata values (from
    /// [`Self::batch_meta`]); each placeholder's value passes through
    /// `clean` (which also decides what a missing value becomes).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn render_parts(
        &self,
        parts: &[RenderPart],
        meta: &BatchMeta,
        batch: &Batch,
        i: usize,
        out: &mut String,
        scratch: &mut String,
        clean: impl Fn(&str, &mut String),
    ) {
        let mut columns = self
            .template
            .segments
            .iter()
            .zip(&self.columns)
            .filter_map(|(seg, col)| matches!(seg, Segment::Field { .. }).then_some(*col));
        let mut field = 0;
        for part in parts {
            match part {
                RenderPart::Literal(l) => out.push_str(l),
                RenderPart::Field => {
                    scratch.clear();
                    let col = columns.next().flatten();
                    if !render_event(batch, i, col, scratch) {
                        if let Some(v) = meta.values.get(field) {
                            scratch.push_str(v);
                        }
                    }
                    field += 1;
                    clean(scratch, out);
                }
            }
        }
    }
}

/// The metadata value of each placeholder of a template for one batch:
/// what an event that lacks the field renders, looked up once per batch
/// rather than once per event. Empty when the metadata has no value.
#[derive(Debug, Default)]
pub(crate) struct BatchMeta {
    values: Vec<String>,
}

/// Renders an event's own value of a placeholder; false (and nothing
/// written) when it has none. An empty value counts as none.
fn render_event(batch: &Batch, i: usize, column: Option<usize>, out: &mut String) -> bool {
    let Some(c) = column else { return false };
    let start = out.len();
    batch.value(i, c).render(out) && out.len() > start
}

/// Renders the source metadata's value at `dotted`, if it has a
/// non-empty scalar there.
fn render_meta(batch: &Batch, dotted: &str, out: &mut String) {
    match batch.source.meta_value(dotted) {
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Number(n)) => out.push_str(&n.to_string()),
        Some(Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_literals_and_fields() {
        let t = Template::parse("logs/{{ service }}-{{release.version}}/x").unwrap();
        let paths: Vec<String> = t.fields().map(|p| p.to_string()).collect();
        assert_eq!(paths, ["service", "release.version"]);
        assert!(!t.is_literal());
        assert!(Template::parse("plain").unwrap().is_literal());
        assert!(Template::parse("").unwrap().is_literal());
    }

    #[test]
    fn an_event_value_wins_and_a_missing_or_empty_one_falls_back_to_metadata() {
        use crate::decode::Decoder;
        use crate::enrich::{Fragment, SourceContext};
        use crate::event::BatchBuilder;
        use std::sync::Arc;

        let mut fs = FieldSet::new();
        fs.add(FieldPath::parse("service").unwrap());
        let fs = Arc::new(fs);
        let mut out = BatchBuilder::with_capacity(fs.clone(), 256, 4);
        let mut d = Decoder::new();
        for l in [r#"{"service":"api"}"#, r#"{"x":1}"#, r#"{"service":""}"#, r#"{"service":null}"#] {
            d.decode_line(l.as_bytes(), false, &[], &Fragment::default(), &mut out);
        }
        let serde_json::Value::Object(meta) = serde_json::json!({"service": "from-meta"}) else {
            panic!()
        };
        let batch = out.build(
            Arc::new(SourceContext::new("s".into(), "stdin", String::new(), meta)),
            std::time::SystemTime::now(),
        );
        let t = Template::parse("svc={{ service }}").unwrap().bind(&fs);
        let rendered: Vec<String> = (0..4)
            .map(|i| {
                let mut s = String::new();
                t.render(&batch, i, &mut s);
                s
            })
            .collect();
        assert_eq!(rendered, ["svc=api", "svc=from-meta", "svc=from-meta", "svc=from-meta"]);
    }

    #[test]
    fn malformed_templates_are_errors() {
        assert!(Template::parse("{{ service").is_err());
        assert!(Template::parse("{{ }}").is_err());
        assert!(Template::parse("{{ a..b }}").is_err());
        assert!(Template::parse("{{ a b }}").is_err());
    }
}
