//! Rules compiled for the hot path: which events count, their outcome and
//! their latency, read from the event as the decoder parsed it.
//!
//! A rule refers to fields by their index in the tap's own field list
//! ([`FieldIndex`]); the decoder has located every such field in the event,
//! so reading one is a few instructions, and only the fields a rule gets
//! to are read.

use std::sync::Arc;

use super::config::{LatencyUnit, SliRule};
use super::log_metrics::{MetricKind, MetricRule};
use super::window::WindowSpec;
use crate::condition::{MetaValues, Program, Values};
use crate::decode::EventValues;
use crate::event::{FieldSet, FieldValueRef};

/// An index into the tap's field set (the paths its rules read, each once,
/// in the order [`FieldSet::add`] gave them).
pub(crate) type FieldIndex = usize;

/// One event's values, addressed by tap field index: each read where it
/// lies in the parsed event when a rule or label asks for it.
pub(crate) struct Row<'r, 'a> {
    values: &'r EventValues<'a>,
}

impl<'r, 'a> Row<'r, 'a> {
    /// An event with `values` by tap field index.
    pub(crate) fn new(values: &'r EventValues<'a>) -> Row<'r, 'a> {
        Row { values }
    }

    /// The value of tap field `f`.
    #[inline(always)]
    pub(crate) fn get(&self, f: FieldIndex) -> FieldValueRef<'a> {
        self.values.get(f)
    }
}

impl<'a> Values<'a> for Row<'_, 'a> {
    #[inline(always)]
    fn get(&self, f: FieldIndex) -> FieldValueRef<'a> {
        self.values.get(f)
    }
}

/// Where a rule's latency is.
#[derive(Debug, Clone)]
pub(crate) struct LatencySpec {
    field: FieldIndex,
    unit: LatencyUnit,
    /// Seconds; slower successes are `slow`.
    pub(crate) threshold: Option<f64>,
}

impl LatencySpec {
    /// The event's latency in seconds; `None` when missing or not a
    /// finite, non-negative duration.
    #[inline]
    pub(crate) fn seconds(&self, row: &Row<'_, '_>) -> Option<f64> {
        let v = row.get(self.field);
        let secs = match (self.unit, v) {
            (LatencyUnit::Duration, FieldValueRef::Str(s)) => parse_duration(s)?,
            (unit, FieldValueRef::Str(s)) => match s.trim().parse::<f64>() {
                Ok(n) => n * unit_factor(unit),
                // "12.5ms" in a numeric field: take it as written.
                Err(_) => parse_duration(s)?,
            },
            (unit, FieldValueRef::Number(n)) => n * unit_factor(unit),
            _ => return None,
        };
        (secs.is_finite() && secs >= 0.0).then_some(secs)
    }
}

fn unit_factor(unit: LatencyUnit) -> f64 {
    match unit {
        LatencyUnit::Nanoseconds => 1e-9,
        LatencyUnit::Microseconds => 1e-6,
        LatencyUnit::Milliseconds => 1e-3,
        LatencyUnit::Seconds | LatencyUnit::Duration => 1.0,
    }
}

/// Parses a duration string as Go and most loggers write it: one or more
/// `<decimal><unit>` parts (`12.5ms`, `1m30s`, `250µs`), units `ns`, `us`,
/// `µs`, `ms`, `s`, `m`, `h`; `0` alone is zero. Returns seconds.
pub(crate) fn parse_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    if s == "0" {
        return Some(0.0);
    }
    let mut rest = s;
    let mut total = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = rest[num_end..].trim_start();
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * factor;
        rest = rest[unit_end..].trim_start();
    }
    Some(total)
}

/// How a rule decides what an event is to it.
#[derive(Debug)]
enum Judging {
    /// An `[[sli]]` rule: every `match` passes, then the outcome decides.
    Sli {
        matches: Vec<Program>,
        outcome: Program,
        /// Whether `outcome` passing means error (else it means success).
        outcome_is_error: bool,
    },
    /// A `[[metrics]]` rule: `when` passes, then the value is read (1 for
    /// a counter without `increment_by`).
    Metric { when: Option<Program>, value: Option<ValueSpec> },
}

/// Where a `[[metrics]]` rule's number is.
#[derive(Debug, Clone, Copy)]
struct ValueSpec {
    field: FieldIndex,
    /// A counter's increment: a negative number is invalid.
    non_negative: bool,
}

/// Why a `[[metrics]]` value was not read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BadValue {
    /// The field is missing or `null`.
    Missing,
    /// Not a finite number (or a string holding one), or a negative
    /// increment.
    Invalid,
}

impl ValueSpec {
    #[inline]
    fn read(&self, row: &Row<'_, '_>) -> Result<f64, BadValue> {
        let n = match row.get(self.field) {
            FieldValueRef::Number(n) => n,
            FieldValueRef::Str(s) => s.trim().parse::<f64>().map_err(|_| BadValue::Invalid)?,
            FieldValueRef::Missing | FieldValueRef::Null => return Err(BadValue::Missing),
            _ => return Err(BadValue::Invalid),
        };
        if !n.is_finite() || (self.non_negative && n < 0.0) {
            return Err(BadValue::Invalid);
        }
        Ok(n)
    }
}

/// What a `[[metrics]]` rule is exposed as.
#[derive(Debug)]
pub(crate) struct MetricFamilySpec {
    /// Counter, gauge or histogram.
    pub(crate) kind: MetricKind,
    /// The family name (counters end in `_total`).
    pub(crate) family: Arc<str>,
    /// The `# HELP` text.
    pub(crate) help: Arc<str>,
}

/// A rule ready for events.
#[derive(Debug)]
pub(crate) struct CompiledRule {
    /// The `sli` label value, or the `[[metrics]]` rule's name.
    pub(crate) name: Arc<str>,
    judging: Judging,
    /// Latency, if the rule has it.
    pub(crate) latency: Option<LatencySpec>,
    /// Histogram upper bounds, seconds (the `+Inf` bucket is implicit).
    pub(crate) bounds: Arc<[f64]>,
    /// Target fraction of good events.
    pub(crate) objective: Option<f64>,
    /// Burn-rate windows (empty without an objective).
    pub(crate) windows: Arc<[WindowSpec]>,
    /// Series limit.
    pub(crate) max_series: usize,
    /// Index of its [`super::labels::LabelGroup`].
    pub(crate) group: usize,
    /// Set for a `[[metrics]]` rule: what it is exposed as.
    pub(crate) metric: Option<MetricFamilySpec>,
    /// The sources whose events it judges; `None`: every source.
    pub(crate) sources: Option<Box<[Arc<str>]>>,
}

/// What one event is to a rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verdict {
    /// Not a request of this SLI (an event a `[[metrics]]` rule's `when`
    /// does not take).
    Skip,
    /// Matched, but the outcome field could not decide (a `[[metrics]]`
    /// value is missing).
    NoOutcome,
    /// Matched, but a latency SLI's latency is missing or invalid (a
    /// `[[metrics]]` value is not a valid number).
    NoLatency,
    /// Counted: an error (`true`) or not, with its latency if it has one
    /// (a `[[metrics]]` rule's value). `latency_missing` says a configured
    /// latency could not be read.
    Counted {
        error: bool,
        latency: Option<f64>,
        latency_missing: bool,
    },
}

impl CompiledRule {
    /// Compiles a validated rule.
    pub(crate) fn new(rule: &SliRule, fields: &mut FieldSet, group: usize) -> CompiledRule {
        let (outcome, outcome_is_error) = rule.outcome();
        let windows: Vec<WindowSpec> = if rule.objective.is_some() {
            rule.windows().into_iter().map(WindowSpec::new).collect()
        } else {
            Vec::new()
        };
        CompiledRule {
            name: rule.name.as_str().into(),
            judging: Judging::Sli {
                matches: rule.matches.iter().map(|c| Program::compile(c, fields)).collect(),
                outcome: Program::compile(&outcome, fields),
                outcome_is_error,
            },
            latency: rule.latency.as_ref().map(|l| LatencySpec {
                field: fields.add(l.field.clone()),
                unit: l.unit,
                threshold: l.threshold.map(|t| t.as_secs_f64()),
            }),
            bounds: rule.bucket_bounds().into(),
            objective: rule.objective,
            windows: windows.into(),
            max_series: rule.max_series,
            group,
            metric: None,
            sources: None,
        }
    }

    /// Compiles a validated `[[metrics]]` rule.
    pub(crate) fn metric(rule: &MetricRule, fields: &mut FieldSet, group: usize) -> CompiledRule {
        let value = match rule.kind {
            MetricKind::Counter => rule.increment_by.as_ref().map(|f| (f, true)),
            MetricKind::Gauge | MetricKind::Histogram => rule.value.as_ref().map(|f| (f, false)),
        };
        let help = match &rule.help {
            Some(h) => h.clone(),
            None => format!("Derived from events by the [[metrics]] rule {}.", rule.name),
        };
        CompiledRule {
            name: rule.name.as_str().into(),
            judging: Judging::Metric {
                when: rule.when.as_ref().map(|c| Program::compile(c, fields)),
                value: value.map(|(f, non_negative)| ValueSpec {
                    field: fields.add(f.clone()),
                    non_negative,
                }),
            },
            latency: None,
            bounds: rule.bucket_bounds().into(),
            objective: None,
            windows: Vec::new().into(),
            max_series: rule.max_series,
            group,
            metric: Some(MetricFamilySpec {
                kind: rule.kind,
                family: rule.family_name().into(),
                help: help.into(),
            }),
            sources: rule.sources.as_ref().map(|s| s.iter().map(|n| Arc::from(n.as_str())).collect()),
        }
    }

    /// Whether it judges events of source `name`.
    pub(crate) fn judges_source(&self, name: &str) -> bool {
        self.sources.as_ref().is_none_or(|s| s.iter().any(|n| **n == *name))
    }

    /// Decides what the event in `row` is to this rule; a field the event
    /// lacks is read from `meta`, its source's metadata.
    #[inline(always)]
    pub(crate) fn judge(&self, row: &Row<'_, '_>, meta: &MetaValues, text: &mut String) -> Verdict {
        let (matches, outcome, outcome_is_error) = match &self.judging {
            Judging::Sli {
                matches,
                outcome,
                outcome_is_error,
            } => (matches, outcome, *outcome_is_error),
            Judging::Metric { when, value } => return judge_metric(when.as_ref(), value.as_ref(), row, meta, text),
        };
        for c in matches {
            if !c.holds(row, meta, text) {
                return Verdict::Skip;
            }
        }
        let error = match outcome.eval(row, meta, text) {
            Some(passed) => passed == outcome_is_error,
            None => return Verdict::NoOutcome,
        };
        let (latency, latency_missing) = match &self.latency {
            None => (None, false),
            Some(l) => match l.seconds(row) {
                Some(s) => (Some(s), false),
                None if l.threshold.is_some() => return Verdict::NoLatency,
                None => (None, true),
            },
        };
        Verdict::Counted {
            error,
            latency,
            latency_missing,
        }
    }
}

/// A `[[metrics]]` rule's verdict: its value as the latency.
#[inline(always)]
fn judge_metric(when: Option<&Program>, value: Option<&ValueSpec>, row: &Row<'_, '_>, meta: &MetaValues, text: &mut String) -> Verdict {
    if when.is_some_and(|w| !w.holds(row, meta, text)) {
        return Verdict::Skip;
    }
    let v = match value.map(|v| v.read(row)) {
        None => 1.0,
        Some(Ok(v)) => v,
        Some(Err(BadValue::Missing)) => return Verdict::NoOutcome,
        Some(Err(BadValue::Invalid)) => return Verdict::NoLatency,
    };
    Verdict::Counted {
        error: false,
        latency: Some(v),
        latency_missing: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoder;
    use crate::decode::EventObserver;
    use crate::enrich::Fragment;
    use crate::event::BatchBuilder;
    use serde_json::json;

    fn rule(v: serde_json::Value) -> SliRule {
        let mut errors = Vec::new();
        let r = super::super::config::parse_rules(json!([v]), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        r.into_iter().next().unwrap()
    }

    /// Judges each event the decoder shows it, as the tap does.
    struct Judge {
        rule: CompiledRule,
        verdicts: Vec<Verdict>,
    }

    impl EventObserver for Judge {
        fn event(&mut self, values: &EventValues<'_>) {
            let v = self.rule.judge(&Row::new(values), &MetaValues::none(), &mut String::new());
            self.verdicts.push(v);
        }

        fn finish(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
            Box::new(self.verdicts)
        }
    }

    /// Decodes `lines`, reading exactly the rule's fields, and judges every
    /// event.
    fn judge_all(r: &SliRule, lines: &[&str]) -> Vec<Verdict> {
        let mut fields = FieldSet::new();
        let rule = CompiledRule::new(r, &mut fields, 0);
        let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), 1024, 8);
        let mut d = Decoder::new();
        d.observe(
            Arc::new(fields),
            Box::new(Judge {
                rule,
                verdicts: Vec::new(),
            }),
        );
        for l in lines {
            d.decode_line(l.as_bytes(), false, &[], &Fragment::default(), &mut out);
        }
        let verdicts = d.finish_observers().pop().expect("one observer");
        *verdicts.downcast::<Vec<Verdict>>().expect("the judge's verdicts")
    }

    fn counted(error: bool, latency: Option<f64>) -> Verdict {
        Verdict::Counted {
            error,
            latency,
            latency_missing: false,
        }
    }

    #[test]
    fn default_outcome_is_status_500_and_above() {
        let r = rule(json!({"name": "a"}));
        let v = judge_all(
            &r,
            &[
                r#"{"status":200}"#,
                r#"{"status":503}"#,
                r#"{"status":"500"}"#,
                r#"{"msg":"x"}"#,
                "plain",
                r#"{"status":"n/a"}"#,
            ],
        );
        assert_eq!(
            v,
            [
                counted(false, None),
                counted(true, None),
                counted(true, None),
                Verdict::NoOutcome,
                Verdict::NoOutcome,
                Verdict::NoOutcome
            ]
        );
    }

    #[test]
    fn match_conditions_all_apply() {
        let r = rule(json!({"name": "a", "match": [
            {"field": "kind", "equals": "access"},
            {"field": "path", "pattern": "^/api/"},
            {"field": "method", "one_of": ["GET", "POST"]},
            {"field": "internal", "exists": false},
        ]}));
        let v = judge_all(
            &r,
            &[
                r#"{"kind":"access","path":"/api/x","method":"GET","status":200}"#,
                r#"{"kind":"access","path":"/web/x","method":"GET","status":200}"#,
                r#"{"kind":"access","path":"/api/x","method":"PUT","status":200}"#,
                r#"{"kind":"audit","path":"/api/x","method":"GET","status":200}"#,
                r#"{"kind":"access","path":"/api/x","method":"POST","status":200,"internal":true}"#,
                r#"{"path":"/api/x","method":"GET","status":200}"#,
            ],
        );
        assert_eq!(v[0], counted(false, None));
        assert!(v[1..].iter().all(|x| *x == Verdict::Skip), "{v:?}");
    }

    #[test]
    fn success_condition_and_numbers_as_text() {
        let r = rule(json!({"name": "a", "success": {"field": "code", "prefix": "2"}}));
        let v = judge_all(&r, &[r#"{"code":204}"#, r#"{"code":"201"}"#, r#"{"code":404}"#, r#"{"code":true}"#]);
        assert_eq!(
            v,
            [counted(false, None), counted(false, None), counted(true, None), counted(true, None)]
        );
    }

    #[test]
    fn latency_units_and_threshold() {
        let r = rule(json!({"name": "a", "latency": {"field": "d", "unit": "ms", "threshold": "250ms"}}));
        let v = judge_all(
            &r,
            &[
                r#"{"status":200,"d":12.5}"#,
                r#"{"status":200,"d":"40"}"#,
                r#"{"status":200,"d":"1.5s"}"#,
                r#"{"status":200}"#,
                r#"{"status":200,"d":-3}"#,
            ],
        );
        assert_eq!(v[0], counted(false, Some(0.0125)));
        assert_eq!(v[1], counted(false, Some(0.04)));
        assert_eq!(v[2], counted(false, Some(1.5)));
        assert_eq!(v[3], Verdict::NoLatency);
        assert_eq!(v[4], Verdict::NoLatency);

        let r = rule(json!({"name": "b", "latency": {"field": "d", "unit": "us"}}));
        let v = judge_all(&r, &[r#"{"status":200,"d":1500}"#, r#"{"status":500,"d":"x"}"#]);
        assert_eq!(v[0], counted(false, Some(0.0015)));
        assert_eq!(
            v[1],
            Verdict::Counted {
                error: true,
                latency: None,
                latency_missing: true
            }
        );
    }

    #[test]
    fn duration_strings_parse_like_go() {
        let close = |s: &str, want: f64| {
            let got = parse_duration(s).unwrap_or_else(|| panic!("{s}"));
            assert!((got - want).abs() < 1e-12, "{s}: {got} != {want}");
        };
        close("12.5ms", 0.0125);
        close("1m30s", 90.0);
        close("250µs", 0.00025);
        close("250us", 0.00025);
        close("3ns", 3e-9);
        close("2h", 7200.0);
        close(" 1.5 s ", 1.5);
        close("0", 0.0);
        for bad in ["", "ms", "12", "12 parsecs", "1..2s", "-1s", "1s-"] {
            assert!(parse_duration(bad).is_none(), "{bad}");
        }
    }
}
