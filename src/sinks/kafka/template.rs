//! Topic templates: `logs-{{ service }}`. Each `{{ path }}` is an event
//! field (extracted by the decoder) or, when the event lacks it, the
//! source's metadata at the same path (metadata is spliced into the event,
//! so this is the value the event as written carries).

use serde_json::Value;

use crate::event::{Batch, FieldPath, FieldSet};

/// Longest topic name Kafka accepts.
pub(crate) const MAX_TOPIC_LEN: usize = 249;

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Field(FieldPath),
}

/// Whether `c` may appear in a Kafka topic name.
pub(crate) fn legal_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl Template {
    /// Parses `text`; literal parts must already be legal topic characters.
    pub(crate) fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| format!("unclosed `{{{{` in template {text:?}"))?;
            let path = after[..close].trim();
            if path.is_empty() {
                return Err(format!("empty `{{{{ }}}}` in template {text:?}"));
            }
            parts.push(Part::Field(FieldPath::parse(path)?));
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("`}}}}` without `{{{{` in template {text:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        for p in &parts {
            if let Part::Literal(l) = p {
                if let Some(c) = l.chars().find(|c| !legal_topic_char(*c)) {
                    return Err(format!(
                        "{c:?} cannot appear in a Kafka topic name (letters, digits, `.`, `_` and `-` only)"
                    ));
                }
            }
        }
        if parts.is_empty() {
            return Err("the topic must not be empty".into());
        }
        Ok(Template { parts })
    }

    /// The fields the template reads.
    pub(crate) fn fields(&self) -> impl Iterator<Item = &FieldPath> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f),
            Part::Literal(_) => None,
        })
    }

    /// The template text when it has no fields.
    pub(crate) fn as_literal(&self) -> Option<String> {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => Some(l.as_str()),
                Part::Field(_) => None,
            })
            .collect()
    }

    /// Binds the template to the pipeline's field set.
    pub(crate) fn bind(&self, fields: &FieldSet, missing: &str) -> BoundTemplate {
        BoundTemplate {
            parts: self
                .parts
                .iter()
                .map(|p| match p {
                    Part::Literal(l) => BoundPart::Literal(l.clone()),
                    Part::Field(f) => BoundPart::Field {
                        index: fields.index_of(f),
                        path: f.to_string(),
                    },
                })
                .collect(),
            missing: sanitize(missing),
            fallbacks: Vec::new(),
        }
    }
}

/// A template bound to field indexes, with per-batch metadata fallbacks.
#[derive(Debug)]
pub(crate) struct BoundTemplate {
    parts: Vec<BoundPart>,
    missing: String,
    /// For the current batch: each field part's value from the source's
    /// metadata (sanitized), or the missing value.
    fallbacks: Vec<String>,
}

#[derive(Debug)]
enum BoundPart {
    Literal(String),
    Field { index: Option<usize>, path: String },
}

impl BoundTemplate {
    /// Prepares the metadata fallbacks for `batch` (once per batch).
    pub(crate) fn start_batch(&mut self, batch: &Batch) {
        self.fallbacks.clear();
        for p in &self.parts {
            if let BoundPart::Field { path, .. } = p {
                let v = batch.source.meta_value(path).and_then(|v| match v {
                    Value::String(s) if !s.is_empty() => Some(sanitize(s)),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                });
                self.fallbacks.push(v.unwrap_or_else(|| self.missing.clone()));
            }
        }
    }

    /// Renders event `i` of the batch given to [`Self::start_batch`].
    pub(crate) fn render(&self, batch: &Batch, i: usize, out: &mut String) {
        out.clear();
        let mut field = 0;
        for p in &self.parts {
            match p {
                BoundPart::Literal(l) => out.push_str(l),
                BoundPart::Field { index, .. } => {
                    let start = out.len();
                    let rendered = index.is_some_and(|idx| batch.value(i, idx).render(out));
                    if rendered && out.len() > start {
                        sanitize_from(out, start);
                    } else {
                        out.truncate(start);
                        out.push_str(&self.fallbacks[field]);
                    }
                    field += 1;
                }
            }
        }
        if out.len() > MAX_TOPIC_LEN {
            out.truncate(MAX_TOPIC_LEN);
        }
    }
}

fn sanitize(s: &str) -> String {
    let mut out = s.to_owned();
    sanitize_from(&mut out, 0);
    out
}

/// Replaces characters Kafka does not allow in topic names with `_`, from
/// byte `start` on.
fn sanitize_from(s: &mut String, start: usize) {
    if s[start..].chars().all(legal_topic_char) {
        return;
    }
    let fixed: String = s[start..].chars().map(|c| if legal_topic_char(c) { c } else { '_' }).collect();
    s.truncate(start);
    s.push_str(&fixed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoder;
    use crate::enrich::{Fragment, SourceContext};
    use crate::event::BatchBuilder;
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn templates_parse_literals_and_fields() {
        let t = Template::parse("logs-{{ service }}.{{http.host}}").unwrap();
        assert_eq!(t.fields().map(|f| f.to_string()).collect::<Vec<_>>(), ["service", "http.host"]);
        assert_eq!(Template::parse("plain").unwrap().as_literal().as_deref(), Some("plain"));
        for bad in ["logs-{{ service", "logs-{{}}", "a}}", "has space", ""] {
            assert!(Template::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rendering_uses_the_event_then_metadata_then_the_missing_value() {
        let mut fs = FieldSet::new();
        fs.add(FieldPath::parse("service").unwrap());
        fs.add(FieldPath::parse("team").unwrap());
        let fs = Arc::new(fs);
        let mut out = BatchBuilder::with_capacity(fs.clone(), 256, 4);
        let mut d = Decoder::new();
        for l in [r#"{"service":"api/v1","team":"core"}"#, r#"{"x":1}"#, r#"{"service":""}"#] {
            d.decode_line(l.as_bytes(), false, &[], &Fragment::default(), &mut out);
        }
        let serde_json::Value::Object(meta) = json!({"team": "meta team"}) else {
            panic!()
        };
        let batch = out.build(
            Arc::new(SourceContext::new("s".into(), "stdin", String::new(), meta)),
            std::time::SystemTime::now(),
        );
        let mut t = Template::parse("logs-{{ service }}-{{ team }}").unwrap().bind(&fs, "unknown");
        t.start_batch(&batch);
        let mut s = String::new();
        t.render(&batch, 0, &mut s);
        assert_eq!(s, "logs-api_v1-core");
        t.render(&batch, 1, &mut s);
        assert_eq!(s, "logs-unknown-meta_team");
        t.render(&batch, 2, &mut s);
        assert_eq!(s, "logs-unknown-meta_team");
    }
}
