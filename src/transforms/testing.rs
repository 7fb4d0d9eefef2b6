//! Config unit tests (`[[tests]]`, run by `sluice test --config FILE`):
//! input lines for one source, and the events expected at any output (a
//! source, a transform, a route output), or none. The lines go through the
//! same decoder and the same compiled transforms as in a running sluice,
//! with no sink and no I/O, so a pipeline can be checked before it is
//! rolled out.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use super::graph::{output_names, Graph};
use super::TransformSpec;
use crate::config::{ConfigError, Validate};
use crate::decode::Decoder;
use crate::enrich::SourceContext;
use crate::event::{Batch, BatchBuilder, FieldSet};
use crate::pipeline::{Output, Processing};

/// One `[[tests]]` case.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestCase {
    /// What it checks, for the report.
    pub(crate) name: String,
    /// The source the lines come from; default the config's only source.
    #[serde(default)]
    source: Option<String>,
    /// Lines as the source reads them; a table is written as a JSON line.
    input: Vec<Value>,
    /// What must come out.
    expect: Vec<Expectation>,
}

/// The events expected at one output.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    /// A source, a transform or a route output (`split.errors`).
    output: String,
    /// The events, in order: each must have every member given here (a
    /// nested table matches a subset of the event's object).
    #[serde(default)]
    events: Option<Vec<Map<String, Value>>>,
    /// How many events; `0` expects a drop.
    #[serde(default)]
    count: Option<usize>,
}

impl Validate for TestCase {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.expect.is_empty() {
            errors.push(ConfigError::new(format!("{path}.expect"), "must expect something"));
        }
        for (i, e) in self.expect.iter().enumerate() {
            if e.events.is_none() && e.count.is_none() {
                errors.push(ConfigError::new(format!("{path}.expect[{i}]"), "needs events or count"));
            }
        }
    }
}

/// Checks the cases against the config's components: the source exists,
/// every expected output is one.
pub(crate) fn check(
    tests: &[TestCase],
    sources: &BTreeSet<&str>,
    transforms: &BTreeMap<String, TransformSpec>,
    errors: &mut Vec<ConfigError>,
) {
    let outputs: BTreeSet<String> = sources
        .iter()
        .map(|s| s.to_string())
        .chain(transforms.iter().flat_map(|(n, s)| output_names(n, s)))
        .collect();
    for (t, case) in tests.iter().enumerate() {
        let path = format!("tests[{t}]");
        match &case.source {
            Some(s) if !sources.contains(s.as_str()) => {
                errors.push(ConfigError::new(format!("{path}.source"), format!("no source named {s:?}")))
            }
            None if sources.len() != 1 => errors.push(ConfigError::new(
                format!("{path}.source"),
                "the config has several sources: name the one the input comes from",
            )),
            _ => {}
        }
        for (i, e) in case.expect.iter().enumerate() {
            if !outputs.contains(&e.output) {
                errors.push(ConfigError::new(
                    format!("{path}.expect[{i}].output"),
                    format!("no source, transform or route output named {:?}", e.output),
                ));
            }
        }
    }
}

/// Decodes `lines` from `ctx`'s source through `plan` (when the source has
/// transforms) and returns the events of each of `outputs`.
pub(crate) fn run_lines(
    plan: Option<&Arc<dyn Processing>>,
    ctx: Arc<SourceContext>,
    lines: &[String],
    outputs: &BTreeSet<String>,
) -> BTreeMap<String, Vec<Value>> {
    let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), 4096, lines.len());
    let mut d = Decoder::new();
    if let Some(p) = plan {
        d.observe(p.fields(), p.begin(&ctx));
    }
    for l in lines {
        d.decode_line(l.as_bytes(), false, &[], &ctx.fragment, &mut out);
    }
    let prepared = d.finish_observers().pop();
    let batch = out.build(ctx.clone(), std::time::SystemTime::now());
    let parse = |b: &Batch| {
        b.events()
            .map(|e| serde_json::from_slice(e).unwrap_or(Value::Null))
            .collect::<Vec<Value>>()
    };
    let mut got: BTreeMap<String, Vec<Value>> = outputs.iter().map(|o| (o.clone(), Vec::new())).collect();
    match (plan, prepared) {
        (Some(p), Some(prepared)) => {
            for (name, output) in p.process(&batch, prepared) {
                let events = match &output {
                    Output::Whole => parse(&batch),
                    Output::Part(b) => parse(b),
                };
                got.insert(name.to_string(), events);
            }
        }
        _ => {
            if let Some(events) = got.get_mut(&*ctx.source) {
                *events = parse(&batch);
            }
        }
    }
    got
}

/// Whether `event` has every member of `want` (objects compared as
/// subsets, everything else exactly).
fn contains(event: &Value, want: &Value) -> bool {
    match (event, want) {
        (Value::Object(e), Value::Object(w)) => w.iter().all(|(k, v)| e.get(k).is_some_and(|x| contains(x, v))),
        (e, w) => e == w,
    }
}

/// Runs every case of a config; returns the report and whether all passed.
pub(crate) fn run(
    tests: &[TestCase],
    sources: &BTreeSet<&str>,
    transforms: &BTreeMap<String, TransformSpec>,
    meta: &Map<String, Value>,
) -> (String, bool) {
    let graph = Arc::new(Graph::build(transforms));
    let mut report = String::new();
    let mut passed = 0;
    for case in tests {
        let Some(source) = case.source.as_deref().or_else(|| sources.iter().next().copied()) else {
            continue;
        };
        let outputs: BTreeSet<String> = case.expect.iter().map(|e| e.output.clone()).collect();
        let plans = graph.plans([source].into_iter(), &outputs);
        let ctx = Arc::new(SourceContext::new(source.into(), "test", String::new(), meta.clone()));
        let lines: Vec<String> = case
            .input
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            })
            .collect();
        let got = run_lines(plans.get(source), ctx, &lines, &outputs);
        let mut failures = Vec::new();
        for e in &case.expect {
            let events = got.get(&e.output).map(Vec::as_slice).unwrap_or_default();
            if let Some(n) = e.count {
                if events.len() != n {
                    failures.push(format!("{}: expected {n} event(s), got {}", e.output, events.len()));
                }
            }
            if let Some(want) = &e.events {
                if want.len() != events.len() {
                    failures.push(format!("{}: expected {} event(s), got {}", e.output, want.len(), events.len()));
                }
                for (i, (w, g)) in want.iter().zip(events).enumerate() {
                    let w = Value::Object(w.clone());
                    if !contains(g, &w) {
                        failures.push(format!("{}: event {i} is {g}, expected it to contain {w}", e.output));
                    }
                }
            }
        }
        if failures.is_empty() {
            passed += 1;
            let _ = writeln!(report, "test {} ... ok", case.name);
        } else {
            let _ = writeln!(report, "test {} ... FAILED", case.name);
            for f in failures {
                let _ = writeln!(report, "    {f}");
            }
        }
    }
    let all = passed == tests.len();
    let _ = writeln!(report, "{passed} of {} test(s) passed", tests.len());
    (report, all)
}
