//! A condition as operators write it, and the checks serde cannot make.

use regex::Regex;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::config::{ConfigError, Validate};
use crate::event::FieldPath;

/// Deepest nesting of `all`, `any` and `not`: deeper is surely a mistake,
/// and the bound keeps compiling and judging free of deep recursion.
pub(crate) const MAX_DEPTH: usize = 16;

/// A condition: a test on one field (`field` with exactly one test; `gt`,
/// `gte`, `lt` and `lte` combine into one range), or `all`, `any` or `not`
/// of other conditions. Exactly one of the four forms is set.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Condition {
    /// The dotted path of the field (`status`, `http.status`). A path the
    /// event lacks is looked up in its source's metadata
    /// (`kubernetes.namespace`, `process.type`, `release.version`).
    #[serde(default, deserialize_with = "field_path")]
    pub(crate) field: Option<FieldPath>,
    /// The field is present (`true`) or absent (`false`); `null` counts as
    /// present.
    #[serde(default)]
    pub(crate) exists: Option<bool>,
    /// The field equals this string, number or boolean (`"503"` and `503`
    /// are equal).
    #[serde(default)]
    pub(crate) equals: Option<Scalar>,
    /// The field is present and differs from this value.
    #[serde(default)]
    pub(crate) not_equals: Option<Scalar>,
    /// The field equals one of these values.
    #[serde(default)]
    pub(crate) one_of: Option<Vec<Scalar>>,
    /// The field, as text, starts with this.
    #[serde(default)]
    pub(crate) prefix: Option<String>,
    /// The field, as text, contains this.
    #[serde(default)]
    pub(crate) contains: Option<String>,
    /// The field, as text, matches this regular expression (`regex` crate
    /// syntax; unanchored unless it says `^`/`$`).
    #[serde(default)]
    pub(crate) pattern: Option<Pattern>,
    /// The field is a number greater than this.
    #[serde(default)]
    pub(crate) gt: Option<f64>,
    /// The field is a number greater than or equal to this.
    #[serde(default)]
    pub(crate) gte: Option<f64>,
    /// The field is a number less than this.
    #[serde(default)]
    pub(crate) lt: Option<f64>,
    /// The field is a number less than or equal to this.
    #[serde(default)]
    pub(crate) lte: Option<f64>,
    /// Every one of these holds.
    #[serde(default)]
    pub(crate) all: Option<Vec<Condition>>,
    /// At least one of these holds.
    #[serde(default)]
    pub(crate) any: Option<Vec<Condition>>,
    /// This does not hold.
    #[serde(default)]
    pub(crate) not: Option<Box<Condition>>,
}

impl Condition {
    /// A test on `field` with nothing set yet.
    pub(crate) fn on(field: &str) -> Condition {
        Condition {
            field: Some(FieldPath::parse(field).unwrap_or_else(|_| unreachable!("constant path"))),
            ..Condition::default()
        }
    }

    /// `status >= 500`: the default error condition of an SLI rule.
    pub(crate) fn default_error() -> Condition {
        Condition {
            gte: Some(500.0),
            ..Condition::on("status")
        }
    }

    fn has_test(&self) -> bool {
        let range = [self.gt, self.gte, self.lt, self.lte];
        self.test_count() > 0 || range.iter().any(Option::is_some)
    }

    /// Kinds of test set, counting a range once.
    fn test_count(&self) -> usize {
        let range = [self.gt, self.gte, self.lt, self.lte];
        [
            self.exists.is_some(),
            self.equals.is_some(),
            self.not_equals.is_some(),
            self.one_of.is_some(),
            self.prefix.is_some(),
            self.contains.is_some(),
            self.pattern.is_some(),
            range.iter().any(Option::is_some),
        ]
        .iter()
        .filter(|k| **k)
        .count()
    }

    fn validate_at(&self, path: &str, depth: usize, errors: &mut Vec<ConfigError>) {
        if depth > MAX_DEPTH {
            errors.push(ConfigError::new(path, format!("nests all/any/not deeper than {MAX_DEPTH}")));
            return;
        }
        let forms = [
            self.field.is_some() || self.has_test(),
            self.all.is_some(),
            self.any.is_some(),
            self.not.is_some(),
        ];
        match forms.iter().filter(|f| **f).count() {
            1 => {}
            0 => {
                return errors.push(ConfigError::new(
                    path,
                    "needs a field and one test (exists, equals, not_equals, one_of, prefix, contains, pattern, or gt/gte/lt/lte), or all, any or not",
                ))
            }
            _ => return errors.push(ConfigError::new(path, "use one of: a field test, all, any, not")),
        }
        for (key, list) in [("all", &self.all), ("any", &self.any)] {
            if let Some(list) = list {
                if list.is_empty() {
                    errors.push(ConfigError::new(format!("{path}.{key}"), "must list at least one condition"));
                }
                for (i, c) in list.iter().enumerate() {
                    c.validate_at(&format!("{path}.{key}[{i}]"), depth + 1, errors);
                }
            }
        }
        if let Some(n) = &self.not {
            n.validate_at(&format!("{path}.not"), depth + 1, errors);
        }
        if self.field.is_none() {
            if self.has_test() {
                errors.push(ConfigError::new(format!("{path}.field"), "a test needs the field it tests"));
            }
            return;
        }
        match self.test_count() {
            1 => {}
            0 => errors.push(ConfigError::new(
                path,
                "needs one test: exists, equals, not_equals, one_of, prefix, contains, pattern, or gt/gte/lt/lte",
            )),
            _ => errors.push(ConfigError::new(
                path,
                "has more than one kind of test; use one (gt/gte/lt/lte may be combined into a range)",
            )),
        }
        if self.gt.is_some() && self.gte.is_some() {
            errors.push(ConfigError::new(format!("{path}.gte"), "use either gt or gte, not both"));
        }
        if self.lt.is_some() && self.lte.is_some() {
            errors.push(ConfigError::new(format!("{path}.lte"), "use either lt or lte, not both"));
        }
        for (key, v) in [("gt", self.gt), ("gte", self.gte), ("lt", self.lt), ("lte", self.lte)] {
            if v.is_some_and(|v| !v.is_finite()) {
                errors.push(ConfigError::new(format!("{path}.{key}"), "must be a finite number"));
            }
        }
        if let Some(list) = &self.one_of {
            if list.is_empty() {
                errors.push(ConfigError::new(format!("{path}.one_of"), "must list at least one value"));
            }
        }
    }
}

impl Validate for Condition {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        self.validate_at(path, 0, errors);
    }
}

/// A literal an event field is compared with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum Scalar {
    /// `true` / `false`.
    Bool(bool),
    /// Any number.
    Number(f64),
    /// A string.
    Str(String),
}

/// A regular expression, compiled when the config is read.
#[derive(Debug, Clone)]
pub(crate) struct Pattern(pub Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Pattern, D::Error> {
        let s = String::deserialize(d)?;
        Regex::new(&s)
            .map(Pattern)
            .map_err(|e| de::Error::custom(format!("invalid regular expression: {e}")))
    }
}

fn field_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<FieldPath>, D::Error> {
    let s = String::deserialize(d)?;
    FieldPath::parse(&s).map(Some).map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_valid;
    use serde_json::json;

    fn errors(v: serde_json::Value) -> Vec<String> {
        let mut errors = Vec::new();
        let _: Option<Condition> = parse_valid("c", v, &mut errors);
        errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn nested_conditions_report_their_key_paths() {
        assert!(errors(json!({"all": [{"field": "a", "exists": true}, {"not": {"field": "b", "contains": "x"}}]})).is_empty());
        let e = errors(json!({"any": [{"field": "a"}, {"not": {"field": "b", "gt": 1, "prefix": "x"}}, {"all": []}]}));
        assert!(e.iter().any(|e| e.starts_with("c.any[0]: needs one test")), "{e:?}");
        assert!(e.iter().any(|e| e.starts_with("c.any[1].not: has more than one kind")), "{e:?}");
        assert!(e.iter().any(|e| e == "c.any[2].all: must list at least one condition"), "{e:?}");
        let e = errors(json!({"field": "a", "equals": 1, "all": [{"field": "b", "exists": true}]}));
        assert_eq!(e, ["c: use one of: a field test, all, any, not"]);
        let e = errors(json!({"equals": 1}));
        assert_eq!(e, ["c.field: a test needs the field it tests"]);
    }

    #[test]
    fn nesting_is_bounded() {
        let mut v = json!({"field": "a", "exists": true});
        for _ in 0..=MAX_DEPTH {
            v = json!({ "not": v });
        }
        let e = errors(v);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("deeper than"), "{e:?}");
    }
}
