//! Topic templates: `logs-{{ service }}`, in the one `{{ path }}` template
//! language of the sinks ([`crate::sinks::template`]: an event field, else
//! the source's metadata at the same path). What is Kafka's own: literal
//! text must be legal in a topic name, a rendered value is cut to legal
//! characters, a value neither the event nor the metadata has becomes
//! `topic_missing_value`, and the name is cut to [`MAX_TOPIC_LEN`].

use crate::event::{Batch, FieldPath, FieldSet};
use crate::sinks::template::{BatchMeta, BoundTemplate, RenderPart, Template};

/// Longest topic name Kafka accepts.
pub(crate) const MAX_TOPIC_LEN: usize = 249;

/// Whether `c` may appear in a Kafka topic name.
pub(crate) fn legal_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A parsed topic template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TopicTemplate {
    template: Template,
}

impl TopicTemplate {
    /// Parses `text`; literal parts must already be legal topic characters.
    pub(crate) fn parse(text: &str) -> Result<TopicTemplate, String> {
        let template = Template::parse(text)?;
        for part in template.map_literals(str::to_owned) {
            if let RenderPart::Literal(l) = part {
                if let Some(c) = l.chars().find(|c| !legal_topic_char(*c)) {
                    return Err(format!(
                        "{c:?} cannot appear in a Kafka topic name (letters, digits, `.`, `_` and `-` only)"
                    ));
                }
            }
        }
        if text.is_empty() {
            return Err("the topic must not be empty".into());
        }
        Ok(TopicTemplate { template })
    }

    /// The fields the template reads.
    pub(crate) fn fields(&self) -> impl Iterator<Item = &FieldPath> {
        self.template.fields()
    }

    /// The topic when the template has no fields.
    pub(crate) fn as_literal(&self) -> Option<String> {
        self.template.is_literal().then(|| self.template.as_str().to_owned())
    }

    /// Binds the template to the pipeline's field set.
    pub(crate) fn bind(&self, fields: &FieldSet, missing: &str) -> BoundTopic {
        let mut clean_missing = String::new();
        sanitize(missing, &mut clean_missing);
        BoundTopic {
            parts: self.template.map_literals(str::to_owned),
            template: self.template.bind(fields),
            missing: clean_missing,
            meta: BatchMeta::default(),
            scratch: String::new(),
        }
    }
}

/// A topic template bound to field indexes.
#[derive(Debug)]
pub(crate) struct BoundTopic {
    template: BoundTemplate,
    /// The template's pieces, literals as written.
    parts: Vec<RenderPart>,
    /// `topic_missing_value`, already legal.
    missing: String,
    /// The metadata values of the batch given to [`Self::start_batch`].
    meta: BatchMeta,
    scratch: String,
}

impl BoundTopic {
    /// Looks up the batch's metadata values (once per batch).
    pub(crate) fn start_batch(&mut self, batch: &Batch) {
        self.template.batch_meta(batch, &mut self.meta);
    }

    /// Renders the topic of event `i` of the batch given to
    /// [`Self::start_batch`] into `out`.
    pub(crate) fn render(&mut self, batch: &Batch, i: usize, out: &mut String) {
        out.clear();
        let missing = self.missing.as_str();
        self.template
            .render_parts(&self.parts, &self.meta, batch, i, out, &mut self.scratch, |value, out| {
                if value.is_empty() {
                    out.push_str(missing);
                } else {
                    sanitize(value, out);
                }
            });
        if out.len() > MAX_TOPIC_LEN {
            // Legal topic characters are ASCII: any byte is a boundary.
            out.truncate(MAX_TOPIC_LEN);
        }
    }
}

/// Appends `value` with every character Kafka does not allow in a topic
/// name replaced by `_`.
fn sanitize(value: &str, out: &mut String) {
    if value.bytes().all(|b| legal_topic_char(b as char)) {
        out.push_str(value);
    } else {
        out.extend(value.chars().map(|c| if legal_topic_char(c) { c } else { '_' }));
    }
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
        let t = TopicTemplate::parse("logs-{{ service }}.{{http.host}}").unwrap();
        assert_eq!(t.fields().map(|f| f.to_string()).collect::<Vec<_>>(), ["service", "http.host"]);
        assert_eq!(TopicTemplate::parse("plain").unwrap().as_literal().as_deref(), Some("plain"));
        for bad in ["logs-{{ service", "logs-{{}}", "a}}", "has space", ""] {
            assert!(TopicTemplate::parse(bad).is_err(), "{bad:?}");
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
        let mut t = TopicTemplate::parse("logs-{{ service }}-{{ team }}").unwrap().bind(&fs, "unknown");
        t.start_batch(&batch);
        let mut s = String::new();
        t.render(&batch, 0, &mut s);
        assert_eq!(s, "logs-api_v1-core");
        t.render(&batch, 1, &mut s);
        assert_eq!(s, "logs-unknown-meta_team");
        t.render(&batch, 2, &mut s);
        assert_eq!(s, "logs-unknown-meta_team");
    }

    #[test]
    fn long_topics_are_cut_to_kafkas_limit() {
        let fs = Arc::new({
            let mut fs = FieldSet::new();
            fs.add(FieldPath::parse("service").unwrap());
            fs
        });
        let mut out = BatchBuilder::with_capacity(fs.clone(), 1024, 1);
        let line = format!(r#"{{"service":"{}"}}"#, "é".repeat(300));
        Decoder::new().decode_line(line.as_bytes(), false, &[], &Fragment::default(), &mut out);
        let batch = out.build(
            Arc::new(SourceContext::new("s".into(), "stdin", String::new(), Default::default())),
            std::time::SystemTime::now(),
        );
        let mut t = TopicTemplate::parse("logs-{{ service }}").unwrap().bind(&fs, "unknown");
        t.start_batch(&batch);
        let mut s = String::new();
        t.render(&batch, 0, &mut s);
        assert_eq!(s.len(), MAX_TOPIC_LEN);
        assert!(s.chars().all(legal_topic_char), "{s}");
    }
}
