//! `fields`: reshapes every event it gets. In this order: `copy`, `rename`,
//! `set` (a value, or a text template with `{{ path }}` parts), `coerce`
//! (to integer, float, boolean or string), `remove`. The event is parsed
//! once for the first changing transform and serialised once at the
//! output, however many transforms change it.

use serde::Deserialize;
use serde_json::{Map, Number, Value};

use super::graph::{Compiler, Run, Step};
use super::stream::{lookup, remove_at, set_at, Item};
use super::TransformComponent;
use crate::config::{ConfigError, Validate};
use crate::event::FieldPath;

/// `[transforms.<name>] type = "fields"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsConfig {
    /// `to = from`... written `from = "to"`: copies the value at `from` to
    /// `to`.
    #[serde(default)]
    copy: Map<String, Value>,
    /// `old = "new"`: moves the value.
    #[serde(default)]
    rename: Map<String, Value>,
    /// `path = value`; a string with `{{ path }}` parts is a template.
    #[serde(default)]
    set: Map<String, Value>,
    /// `path = "integer" | "float" | "boolean" | "string"`.
    #[serde(default)]
    coerce: Map<String, Value>,
    /// Paths to remove.
    #[serde(default)]
    remove: Vec<String>,
}

/// A type `coerce` converts to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Integer,
    Float,
    Boolean,
    String,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "integer" => Kind::Integer,
            "float" => Kind::Float,
            "boolean" => Kind::Boolean,
            "string" => Kind::String,
            _ => return None,
        })
    }
}

/// A piece of a `set` template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(Vec<String>),
}

/// Splits `a {{ b.c }} d` into parts; `None` when a `{{` is not closed or
/// a path is invalid.
fn template(s: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| format!("unclosed {{{{ in template {s:?}"))?;
        let path = FieldPath::parse(after[..close].trim())?;
        parts.push(Part::Field(path.segments().to_vec()));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

fn path_at(path: &str, key: &str, errors: &mut Vec<ConfigError>) -> Option<Vec<String>> {
    match FieldPath::parse(key) {
        Ok(p) => Some(p.segments().to_vec()),
        Err(e) => {
            errors.push(ConfigError::new(path, e));
            None
        }
    }
}

/// The operations, checked and compiled; `errors` gets each problem.
fn compile(c: &FieldsConfig, path: &str, errors: &mut Vec<ConfigError>) -> Ops {
    let mut ops = Ops::default();
    for (key, target, list) in [("copy", &c.copy, &mut ops.copy), ("rename", &c.rename, &mut ops.rename)] {
        for (from, to) in target {
            let at = format!("{path}.{key}.{from}");
            let to = match to {
                Value::String(t) => path_at(&at, t, errors),
                _ => {
                    errors.push(ConfigError::new(&at, "must be the destination path, a string"));
                    None
                }
            };
            if let (Some(f), Some(t)) = (path_at(&at, from, errors), to) {
                list.push((f, t));
            }
        }
    }
    for (key, v) in &c.set {
        let at = format!("{path}.set.{key}");
        let Some(p) = path_at(&at, key, errors) else { continue };
        let value = match v {
            Value::String(s) if s.contains("{{") => match template(s) {
                Ok(parts) => SetValue::Template(parts),
                Err(e) => {
                    errors.push(ConfigError::new(&at, e));
                    continue;
                }
            },
            v => SetValue::Value(v.clone()),
        };
        ops.set.push((p, value));
    }
    for (key, v) in &c.coerce {
        let at = format!("{path}.coerce.{key}");
        let kind = v.as_str().and_then(Kind::parse);
        if kind.is_none() {
            errors.push(ConfigError::new(&at, "must be one of integer, float, boolean, string"));
        }
        if let (Some(p), Some(k)) = (path_at(&at, key, errors), kind) {
            ops.coerce.push((p, k));
        }
    }
    for (i, r) in c.remove.iter().enumerate() {
        if let Some(p) = path_at(&format!("{path}.remove[{i}]"), r, errors) {
            ops.remove.push(p);
        }
    }
    ops
}

impl Validate for FieldsConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let before = errors.len();
        let ops = compile(self, path, errors);
        let empty = ops.copy.is_empty() && ops.rename.is_empty() && ops.set.is_empty() && ops.coerce.is_empty() && ops.remove.is_empty();
        if empty && errors.len() == before {
            errors.push(ConfigError::new(path, "needs at least one of copy, rename, set, coerce, remove"));
        }
    }
}

impl TransformComponent for FieldsConfig {
    fn build(&self, _name: &str, _cx: &mut Compiler) -> Box<dyn Step> {
        // Validated: compiling again finds no error.
        Box::new(compile(self, "", &mut Vec::new()))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum SetValue {
    Value(Value),
    Template(Vec<Part>),
}

#[derive(Debug, Default)]
struct Ops {
    copy: Vec<(Vec<String>, Vec<String>)>,
    rename: Vec<(Vec<String>, Vec<String>)>,
    set: Vec<(Vec<String>, SetValue)>,
    coerce: Vec<(Vec<String>, Kind)>,
    remove: Vec<Vec<String>>,
}

impl Ops {
    /// Applies every operation to one event.
    fn apply(&self, event: &mut Map<String, Value>) {
        for (from, to) in &self.copy {
            if let Some(v) = lookup(event, from).cloned() {
                set_at(event, to, v);
            }
        }
        for (from, to) in &self.rename {
            if let Some(v) = remove_at(event, from) {
                set_at(event, to, v);
            }
        }
        for (path, value) in &self.set {
            let v = match value {
                SetValue::Value(v) => v.clone(),
                SetValue::Template(parts) => {
                    let mut s = String::new();
                    for p in parts {
                        match p {
                            Part::Text(t) => s.push_str(t),
                            Part::Field(f) => match lookup(event, f) {
                                Some(Value::String(v)) => s.push_str(v),
                                Some(Value::Null) | None => {}
                                Some(v) => s.push_str(&v.to_string()),
                            },
                        }
                    }
                    Value::String(s)
                }
            };
            set_at(event, path, v);
        }
        for (path, kind) in &self.coerce {
            if let Some(v) = lookup(event, path) {
                if let Some(c) = coerce(v, *kind) {
                    set_at(event, path, c);
                }
            }
        }
        for path in &self.remove {
            remove_at(event, path);
        }
    }
}

/// `v` as `kind`; `None` when it does not convert (the value then stays).
fn coerce(v: &Value, kind: Kind) -> Option<Value> {
    let text = match v {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    Some(match kind {
        Kind::String => Value::String(match v {
            Value::String(s) => s.clone(),
            _ => text,
        }),
        Kind::Integer => match text.parse::<i64>() {
            Ok(i) => Value::from(i),
            Err(_) => {
                let f = text
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15)?;
                Value::from(f as i64)
            }
        },
        Kind::Float => Value::Number(Number::from_f64(text.parse::<f64>().ok()?)?),
        Kind::Boolean => match text.as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return None,
        },
    })
}

impl Step for Ops {
    fn run(&self, input: Vec<Item>, run: &mut Run<'_>, out: &mut [Vec<Item>]) {
        let [changed] = out else { return };
        changed.reserve(input.len());
        for mut item in input {
            if let Some(event) = run.change(&mut item) {
                self.apply(event);
            }
            changed.push(item);
        }
    }

    fn drop_reason(&self) -> &'static str {
        "none"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ops(v: Value) -> Result<Ops, Vec<String>> {
        let c: FieldsConfig = serde_json::from_value(v).map_err(|e| vec![e.to_string()])?;
        let mut errors = Vec::new();
        let ops = compile(&c, "t", &mut errors);
        if errors.is_empty() {
            Ok(ops)
        } else {
            Err(errors.iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn copy_rename_set_coerce_remove_apply_in_that_order() {
        let o = ops(json!({
            "copy": {"level": "severity"},
            "rename": {"msg": "message"},
            "set": {"env": "prod", "summary": "{{ level }}: {{ message }} ({{ code }})", "meta.n": 1},
            "coerce": {"code": "integer", "ok": "boolean", "ratio": "float", "id": "string"},
            "remove": ["debug", "nested.x"],
        }))
        .unwrap();
        let Value::Object(mut e) = json!({"level": "warn", "msg": "slow", "code": "504", "ok": "true", "ratio": "0.5", "id": 7, "debug": 1, "nested": {"x": 1, "y": 2}})
        else {
            unreachable!()
        };
        o.apply(&mut e);
        assert_eq!(
            Value::Object(e),
            json!({"level": "warn", "code": 504, "ok": true, "ratio": 0.5, "id": "7", "nested": {"y": 2},
                   "severity": "warn", "message": "slow", "env": "prod", "summary": "warn: slow (504)", "meta": {"n": 1}})
        );
    }

    #[test]
    fn a_value_that_does_not_convert_stays() {
        assert_eq!(coerce(&json!("abc"), Kind::Integer), None);
        assert_eq!(coerce(&json!("2.0"), Kind::Integer), Some(json!(2)));
        assert_eq!(coerce(&json!("yes"), Kind::Boolean), None);
        assert_eq!(coerce(&json!({"a": 1}), Kind::String), None);
    }

    #[test]
    fn bad_paths_templates_and_kinds_are_errors_at_their_keys() {
        let e = ops(json!({"set": {"a..b": 1, "c": "{{ d "}, "coerce": {"x": "date"}, "rename": {"y": 3}})).unwrap_err();
        for want in [
            "t.set.a..b",
            "t.set.c: unclosed",
            "t.coerce.x: must be one of",
            "t.rename.y: must be the destination",
        ] {
            assert!(e.iter().any(|x| x.starts_with(want)), "missing {want} in {e:?}");
        }
    }
}
