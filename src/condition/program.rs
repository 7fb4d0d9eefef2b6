//! Conditions compiled for the hot path. A [`Program`] refers to fields by
//! their index in a [`FieldSet`] that the decoder locates in each event, so
//! judging reads only the fields a test gets to, where they lie in the
//! parsed event; nothing is copied or parsed again.

use memchr::memmem::Finder;
use regex::Regex;

use super::config::{Condition, Scalar};
use crate::decode::{same_bytes, starts_with, EventValues, TextKind, TextTest};
use crate::enrich::SourceContext;
use crate::event::{FieldSet, FieldValueRef};

/// One event's values of a field set, by index.
pub(crate) trait Values<'a> {
    /// The value of field `i`; `Missing` when the event lacks it.
    fn get(&self, i: usize) -> FieldValueRef<'a>;
}

impl<'a> Values<'a> for EventValues<'a> {
    #[inline(always)]
    fn get(&self, i: usize) -> FieldValueRef<'a> {
        EventValues::get(self, i)
    }
}

/// A value of the source's metadata, owned for the length of a batch.
#[derive(Debug, Clone, PartialEq)]
enum MetaValue {
    Missing,
    Null,
    Bool(bool),
    Number(f64),
    Str(String),
    Composite,
}

/// The source metadata's value of each field of a [`FieldSet`], looked up
/// once per batch: a field an event lacks is judged on its source's
/// metadata (`kubernetes.namespace`, `process.type`, `release.version`),
/// as the event will carry it once enriched.
#[derive(Debug, Clone, Default)]
pub(crate) struct MetaValues {
    values: Vec<MetaValue>,
}

impl MetaValues {
    /// No metadata: every field the event lacks is missing.
    #[cfg(test)]
    pub(crate) fn none() -> MetaValues {
        MetaValues::default()
    }

    /// The metadata values of `fields` from `source`.
    pub(crate) fn resolve(fields: &FieldSet, source: &SourceContext) -> MetaValues {
        use serde_json::Value;
        let values = fields
            .paths()
            .iter()
            .map(|p| match source.meta_value(&p.to_string()) {
                None => MetaValue::Missing,
                Some(Value::Null) => MetaValue::Null,
                Some(Value::Bool(b)) => MetaValue::Bool(*b),
                Some(Value::Number(n)) => n.as_f64().map_or(MetaValue::Missing, MetaValue::Number),
                Some(Value::String(s)) => MetaValue::Str(s.clone()),
                Some(_) => MetaValue::Composite,
            })
            .collect();
        MetaValues { values }
    }

    /// The metadata value of field `i`.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> FieldValueRef<'_> {
        match self.values.get(i) {
            None | Some(MetaValue::Missing) => FieldValueRef::Missing,
            Some(MetaValue::Null) => FieldValueRef::Null,
            Some(MetaValue::Bool(b)) => FieldValueRef::Bool(*b),
            Some(MetaValue::Number(n)) => FieldValueRef::Number(*n),
            Some(MetaValue::Str(s)) => FieldValueRef::Str(s),
            Some(MetaValue::Composite) => FieldValueRef::Composite,
        }
    }
}

/// A literal ready for comparison: strings that look like numbers or
/// booleans also compare with numbers and booleans.
#[derive(Debug, Clone)]
struct Literal {
    text: String,
    number: Option<f64>,
    boolean: Option<bool>,
}

impl Literal {
    fn new(s: &Scalar) -> Literal {
        match s {
            Scalar::Bool(b) => Literal {
                text: b.to_string(),
                number: None,
                boolean: Some(*b),
            },
            Scalar::Number(n) => Literal {
                text: ryu::Buffer::new().format(*n).trim_end_matches(".0").to_owned(),
                number: Some(*n),
                boolean: None,
            },
            Scalar::Str(s) => Literal {
                text: s.clone(),
                number: s.trim().parse().ok(),
                boolean: match s.as_str() {
                    "true" => Some(true),
                    "false" => Some(false),
                    _ => None,
                },
            },
        }
    }

    #[inline]
    fn matches(&self, v: FieldValueRef<'_>) -> bool {
        match v {
            FieldValueRef::Str(s) => {
                same_bytes(s.as_bytes(), self.text.as_bytes()) || (self.number.is_some() && s.trim().parse::<f64>().ok() == self.number)
            }
            FieldValueRef::Number(n) => self.number == Some(n),
            FieldValueRef::Bool(b) => self.boolean == Some(b),
            _ => false,
        }
    }
}

/// The test of one field.
#[derive(Debug, Clone)]
enum Test {
    Exists(bool),
    Equals(Literal),
    NotEquals(Literal),
    OneOf(Vec<Literal>),
    Prefix(String),
    Contains(Box<Finder<'static>>),
    Pattern(Regex),
    /// Bounds with inclusiveness; infinite when not set.
    Range {
        lo: f64,
        lo_incl: bool,
        hi: f64,
        hi_incl: bool,
    },
}

#[derive(Debug, Clone)]
enum Node {
    Test { field: usize, test: Test },
    All(Box<[Node]>),
    Any(Box<[Node]>),
    Not(Box<Node>),
}

/// A compiled condition.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    root: Node,
    /// The program as one test of a string, when it is that (or `not` of
    /// it): judged on a string value without the walk.
    text: Option<TextTest>,
}

/// The program `root` as one [`TextTest`], when it is one: judged on a
/// string value as [`test_value`] does.
fn text_test(root: &Node) -> Option<TextTest> {
    let (node, negate) = match root {
        Node::Not(n) => (&**n, true),
        n => (n, false),
    };
    let Node::Test { field, test } = node else {
        return None;
    };
    let text = |l: &Literal| (l.number.is_none() && l.boolean.is_none()).then(|| Box::from(l.text.as_bytes()));
    let kind = match test {
        Test::Equals(l) => TextKind::one_of(Box::new([text(l)?])),
        Test::OneOf(ls) => TextKind::one_of(ls.iter().map(text).collect::<Option<_>>()?),
        Test::Prefix(p) => TextKind::Prefix(p.as_bytes().into()),
        _ => return None,
    };
    Some(TextTest::new(*field, kind, negate))
}

impl Program {
    /// Compiles a validated condition, adding the fields it reads to
    /// `fields` (the set the decoder will locate for it).
    pub(crate) fn compile(c: &Condition, fields: &mut FieldSet) -> Program {
        let root = compile(c, fields);
        Program {
            text: text_test(&root),
            root,
        }
    }

    /// Whether the event passes. `None` when a test on one field cannot
    /// decide: every test but `exists` needs the field present (and ranges
    /// need a number). Inside `all`, `any` and `not`, such a test fails, so
    /// `not` of it passes. `text` is scratch space for numbers tested as
    /// text.
    #[inline(always)]
    pub(crate) fn eval<'a>(&self, values: &impl Values<'a>, meta: &MetaValues, text: &mut String) -> Option<bool> {
        // A test of a string on a string value: its bytes compared, no more.
        if let Some(t) = &self.text {
            if let FieldValueRef::Str(s) = values.get(t.field()) {
                return Some(t.on_string(s.as_bytes()));
            }
        }
        // The usual condition is one test, or `not` of one: judged here,
        // without a call into the recursive walk.
        match &self.root {
            Node::Test { field, test } => test_field(*field, test, values, meta, text),
            Node::Not(n) => match &**n {
                Node::Test { field, test } => Some(test_field(*field, test, values, meta, text) != Some(true)),
                n => Some(eval(n, values, meta, text) != Some(true)),
            },
            root => eval(root, values, meta, text),
        }
    }

    /// The program as a test of a string that the decoder can judge on
    /// the text of a line ([`TextTest::on_line`]), when it is one.
    pub(crate) fn line_test(&self) -> Option<&TextTest> {
        self.text.as_ref().filter(|t| t.plain())
    }

    /// Whether the event passes for sure.
    #[inline]
    pub(crate) fn holds<'a>(&self, values: &impl Values<'a>, meta: &MetaValues, text: &mut String) -> bool {
        self.eval(values, meta, text) == Some(true)
    }
}

fn compile(c: &Condition, fields: &mut FieldSet) -> Node {
    let list = |cs: &[Condition], fields: &mut FieldSet| cs.iter().map(|c| compile(c, fields)).collect::<Box<[Node]>>();
    if let Some(all) = &c.all {
        return Node::All(list(all, fields));
    }
    if let Some(any) = &c.any {
        return Node::Any(list(any, fields));
    }
    if let Some(not) = &c.not {
        return Node::Not(Box::new(compile(not, fields)));
    }
    let test = if let Some(e) = c.exists {
        Test::Exists(e)
    } else if let Some(v) = &c.equals {
        Test::Equals(Literal::new(v))
    } else if let Some(v) = &c.not_equals {
        Test::NotEquals(Literal::new(v))
    } else if let Some(list) = &c.one_of {
        Test::OneOf(list.iter().map(Literal::new).collect())
    } else if let Some(p) = &c.prefix {
        Test::Prefix(p.clone())
    } else if let Some(p) = &c.contains {
        Test::Contains(Box::new(Finder::new(p.as_bytes()).into_owned()))
    } else if let Some(p) = &c.pattern {
        Test::Pattern(p.0.clone())
    } else {
        let (lo, lo_incl) = match (c.gt, c.gte) {
            (Some(v), _) => (v, false),
            (None, Some(v)) => (v, true),
            (None, None) => (f64::NEG_INFINITY, true),
        };
        let (hi, hi_incl) = match (c.lt, c.lte) {
            (Some(v), _) => (v, false),
            (None, Some(v)) => (v, true),
            (None, None) => (f64::INFINITY, true),
        };
        Test::Range { lo, lo_incl, hi, hi_incl }
    };
    // A validated field test has its field; an unvalidated one without
    // tests nothing (an empty `all`).
    match &c.field {
        Some(path) => Node::Test {
            field: fields.add(path.clone()),
            test,
        },
        None => Node::All(Box::new([])),
    }
}

fn eval<'a>(node: &Node, values: &impl Values<'a>, meta: &MetaValues, text: &mut String) -> Option<bool> {
    match node {
        Node::Test { field, test } => test_field(*field, test, values, meta, text),
        Node::All(nodes) => Some(nodes.iter().all(|n| eval(n, values, meta, text) == Some(true))),
        Node::Any(nodes) => Some(nodes.iter().any(|n| eval(n, values, meta, text) == Some(true))),
        Node::Not(n) => Some(eval(n, values, meta, text) != Some(true)),
    }
}

/// `test` on the event's value of `field`, or its source's when it has
/// none.
#[inline(always)]
fn test_field<'a>(field: usize, test: &Test, values: &impl Values<'a>, meta: &MetaValues, text: &mut String) -> Option<bool> {
    let v = match values.get(field) {
        FieldValueRef::Missing => meta.get(field),
        v => v,
    };
    test_value(test, v, text)
}

#[inline(always)]
fn test_value(test: &Test, v: FieldValueRef<'_>, text: &mut String) -> Option<bool> {
    if let Test::Exists(want) = test {
        return Some(!matches!(v, FieldValueRef::Missing) == *want);
    }
    if matches!(v, FieldValueRef::Missing | FieldValueRef::Null) {
        return None;
    }
    Some(match test {
        Test::Exists(_) => unreachable!("handled above"),
        Test::Equals(l) => l.matches(v),
        Test::NotEquals(l) => !l.matches(v),
        Test::OneOf(ls) => ls.iter().any(|l| l.matches(v)),
        Test::Prefix(p) => {
            let t = as_text(v, text)?.as_bytes();
            starts_with(t, p.as_bytes())
        }
        Test::Contains(f) => f.find(as_text(v, text)?.as_bytes()).is_some(),
        Test::Pattern(re) => re.is_match(as_text(v, text)?),
        Test::Range { lo, lo_incl, hi, hi_incl } => {
            let n = v.as_f64()?;
            (if *lo_incl { n >= *lo } else { n > *lo }) && (if *hi_incl { n <= *hi } else { n < *hi })
        }
    })
}

fn as_text<'a>(v: FieldValueRef<'a>, text: &'a mut String) -> Option<&'a str> {
    match v {
        FieldValueRef::Str(s) => Some(s),
        _ => {
            text.clear();
            v.render(text).then_some(text.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_valid;
    use serde_json::json;

    /// Field values by index, as a slice.
    struct Row<'a>(Vec<FieldValueRef<'a>>);

    impl<'a> Values<'a> for Row<'a> {
        fn get(&self, i: usize) -> FieldValueRef<'a> {
            self.0.get(i).copied().unwrap_or(FieldValueRef::Missing)
        }
    }

    /// The values of `fields` in `event`, by path.
    fn values_of<'a>(fields: &FieldSet, event: &'a serde_json::Value) -> Row<'a> {
        Row(fields
            .paths()
            .iter()
            .map(|p| {
                let mut v = event;
                for s in p.segments() {
                    match v.get(s) {
                        Some(x) => v = x,
                        None => return FieldValueRef::Missing,
                    }
                }
                match v {
                    serde_json::Value::Null => FieldValueRef::Null,
                    serde_json::Value::Bool(b) => FieldValueRef::Bool(*b),
                    serde_json::Value::Number(n) => FieldValueRef::Number(n.as_f64().unwrap_or_default()),
                    serde_json::Value::String(s) => FieldValueRef::Str(s),
                    _ => FieldValueRef::Composite,
                }
            })
            .collect())
    }

    /// Compiles `c` and judges an event given as a JSON object of plain
    /// values, with `meta` as its source's metadata.
    fn judge(c: serde_json::Value, event: serde_json::Value, meta: serde_json::Value) -> Option<bool> {
        let mut errors = Vec::new();
        let cond: Condition = parse_valid("c", c, &mut errors).unwrap_or_else(|| panic!("{errors:?}"));
        let mut fields = FieldSet::new();
        let program = Program::compile(&cond, &mut fields);
        let serde_json::Value::Object(meta) = meta else {
            panic!("meta must be an object")
        };
        let ctx = SourceContext::new("t".into(), "test", String::new(), meta);
        let meta = MetaValues::resolve(&fields, &ctx);
        program.eval(&values_of(&fields, &event), &meta, &mut String::new())
    }

    #[test]
    fn contains_tests_text_and_numbers_as_text() {
        let c = json!({"field": "msg", "contains": "time"});
        assert_eq!(judge(c.clone(), json!({"msg": "a timeout"}), json!({})), Some(true));
        assert_eq!(judge(c.clone(), json!({"msg": "ok"}), json!({})), Some(false));
        assert_eq!(judge(c, json!({}), json!({})), None);
        assert_eq!(
            judge(json!({"field": "code", "contains": "04"}), json!({"code": 404}), json!({})),
            Some(true)
        );
    }

    #[test]
    fn all_any_and_not_combine_and_a_missing_field_fails_inside_them() {
        let quiet = json!({"not": {"field": "path", "one_of": ["/healthz", "/metrics"]}});
        assert_eq!(judge(quiet.clone(), json!({"path": "/healthz"}), json!({})), Some(false));
        assert_eq!(judge(quiet.clone(), json!({"path": "/api"}), json!({})), Some(true));
        assert_eq!(judge(quiet, json!({}), json!({})), Some(true), "no path: not a health check");
        let c = json!({"all": [
            {"field": "level", "equals": "error"},
            {"any": [{"field": "status", "gte": 500}, {"field": "msg", "pattern": "^panic"}]},
        ]});
        assert_eq!(judge(c.clone(), json!({"level": "error", "status": 503}), json!({})), Some(true));
        assert_eq!(
            judge(c.clone(), json!({"level": "error", "msg": "panic: x"}), json!({})),
            Some(true)
        );
        assert_eq!(judge(c.clone(), json!({"level": "error", "status": 200}), json!({})), Some(false));
        assert_eq!(judge(c, json!({"level": "info", "status": 503}), json!({})), Some(false));
    }

    #[test]
    fn a_field_the_event_lacks_is_read_from_its_source_metadata() {
        let c = json!({"field": "kubernetes.namespace", "equals": "payments"});
        let meta = json!({"kubernetes": {"namespace": "payments"}, "process": {"type": "web"}});
        assert_eq!(judge(c.clone(), json!({"msg": "x"}), meta.clone()), Some(true));
        assert_eq!(
            judge(c, json!({"kubernetes": {"namespace": "other"}}), meta.clone()),
            Some(false),
            "the event's own field wins"
        );
        let c = json!({"all": [{"field": "process.type", "equals": "web"}, {"field": "release.version", "exists": false}]});
        assert_eq!(judge(c, json!({}), meta), Some(true));
    }

    #[test]
    fn field_tests_keep_the_sli_semantics() {
        let cases = [
            (json!({"field": "s", "equals": "503"}), json!({"s": 503}), Some(true)),
            (json!({"field": "s", "not_equals": 200}), json!({"s": "200"}), Some(false)),
            (json!({"field": "s", "not_equals": 200}), json!({}), None),
            (json!({"field": "s", "exists": false}), json!({"s": null}), Some(false)),
            (json!({"field": "s", "gt": 1, "lte": 3}), json!({"s": "3"}), Some(true)),
            (json!({"field": "s", "gt": 1, "lte": 3}), json!({"s": 1}), Some(false)),
            (json!({"field": "s", "prefix": "2"}), json!({"s": 204}), Some(true)),
            (json!({"field": "b", "equals": true}), json!({"b": "true"}), Some(true)),
            (json!({"field": "b", "equals": true}), json!({"b": "yes"}), Some(false)),
            (json!({"field": "b", "equals": "true"}), json!({"b": true}), Some(true)),
        ];
        for (c, e, want) in cases {
            assert_eq!(judge(c.clone(), e.clone(), json!({})), want, "{c} on {e}");
        }
    }

    /// `equals` the first of `literals` (kind 0), `one_of` them all (1),
    /// or `prefix` the first (2), on the field `f`.
    fn string_test(kind: usize, literals: &[String]) -> serde_json::Value {
        let literal = |l: &String| serde_json::Value::String(l.clone());
        match kind {
            0 => json!({"field": "f", "equals": literal(&literals[0])}),
            1 => json!({"field": "f", "one_of": literals.iter().map(literal).collect::<Vec<_>>()}),
            _ => json!({"field": "f", "prefix": literals[0]}),
        }
    }

    /// `test`, or `not` of it, compiled: the condition, its program and
    /// the fields it reads; `None` when it is not valid.
    fn compiled(test: serde_json::Value, negate: bool) -> Option<(serde_json::Value, Program, FieldSet)> {
        let c = if negate { json!({"not": test}) } else { test };
        let mut errors = Vec::new();
        let cond = parse_valid::<Condition>("c", c.clone(), &mut errors)?;
        let mut fields = FieldSet::new();
        let program = Program::compile(&cond, &mut fields);
        Some((c, program, fields))
    }

    proptest::proptest! {
        /// A test of a string judged on its bytes ([`TextTest`]) answers
        /// as the walk over the tree does, for every kind of value and for
        /// a field the event lacks (judged on the metadata).
        #[test]
        fn a_text_test_answers_as_the_walk(
            kind in 0usize..6,
            negate in proptest::bool::ANY,
            literals in proptest::collection::vec("|a|ab|/api/|/healthz|error|é", 1..3),
            value in 0usize..6,
            text in "|a|ab|abc|/api/x|/healthz|error|errors|é|ée",
            meta in proptest::option::of("a|ab|/healthz|error"),
        ) {
            let test = match kind {
                0 | 1 => string_test(kind, &literals),
                2 if !literals[0].is_empty() => string_test(kind, &literals),
                3 => json!({"field": "f", "equals": 5}),
                4 => json!({"field": "f", "one_of": ["5", "x"]}),
                _ => json!({"field": "f", "equals": "true"}),
            };
            let Some((c, program, fields)) = compiled(test, negate) else {
                return Ok(());
            };
            let walk = Program { text: None, ..program.clone() };
            let event = match value {
                0 => json!({"f": text}),
                1 => json!({"f": 5}),
                2 => json!({"f": true}),
                3 => json!({"f": null}),
                4 => json!({"f": {"a": 1}}),
                _ => json!({}),
            };
            let meta = match meta {
                Some(m) => json!({"f": m}),
                None => json!({}),
            };
            let serde_json::Value::Object(meta) = meta else { unreachable!() };
            let ctx = SourceContext::new("t".into(), "test", String::new(), meta);
            let meta = MetaValues::resolve(&fields, &ctx);
            let values = values_of(&fields, &event);
            proptest::prop_assert_eq!(
                program.eval(&values, &meta, &mut String::new()),
                walk.eval(&values, &meta, &mut String::new()),
                "{} on {}", c, event
            );
        }

        /// A test judged on the text of a value in a line
        /// ([`TextTest::on_line`]) answers as on the value whenever the
        /// text settles it, and the text settles every string without an
        /// escape.
        #[test]
        fn a_test_on_the_line_answers_as_on_the_value(
            kind in 0usize..3,
            negate in proptest::bool::ANY,
            literals in proptest::collection::vec("|a|ab|/api/|/healthz|/metrics|error|é|a\"b|a\\\\b|abcdefghijklmnopq", 1..3),
            pieces in proptest::collection::vec("a|b|/|api|pi/|/healthz|healthz|error|rror|s|é|\\\\/|\\\\u0065|\\\\\"|\\\\\\\\|\\\\n|\\\\u00e9|abcdefghijklmnopq", 0..5),
        ) {
            let Some((c, program, fields)) = compiled(string_test(kind, &literals), negate) else {
                return Ok(());
            };
            let tested = if kind == 1 { &literals[..] } else { &literals[..1] };
            let plain = tested.iter().all(|l| !l.contains(['"', '\\']));
            proptest::prop_assert_eq!(program.line_test().is_some(), plain);
            let Some(t) = program.line_test() else {
                return Ok(());
            };
            let written = pieces.concat();
            let line = format!(r#"{{"f":"{written}","g":1}}"#);
            let event: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
            let want = program.eval(&values_of(&fields, &event), &MetaValues::none(), &mut String::new());
            let got = t.on_line(line.as_bytes(), 5);
            if got.is_some() {
                proptest::prop_assert_eq!(got, want, "{} on {}", c, line);
            }
            proptest::prop_assert!(got.is_some() || written.contains('\\'), "{} on {} not settled", c, line);
            for other in [r#"{"f":5}"#, r#"{"f":null}"#, r#"{"f":{"a":"b"}}"#, r#"{"f":["a"]}"#] {
                proptest::prop_assert_eq!(t.on_line(other.as_bytes(), 5), None);
            }
        }
    }
}
