//! The SLI tap. Each batch is judged on the decode pool, in parallel with
//! other batches, into a [`Partial`]: counts per (rule, label values) for
//! that batch alone. The fan-out task then merges it into the rules' series
//! under one lock, in batch order; the merge costs per distinct series in
//! the batch, not per event.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::config::SliRule;
use super::labels::{KeyScratch, LabelGroup};
use super::rule::{CompiledRule, Row, Verdict};
use super::series::{Outcome, SeriesTable};
use crate::enrich::SourceContext;
use crate::event::{Batch, EventObserver, FieldSet, FieldValueRef};
use crate::pipeline::{BatchTap, Prepared};

/// Why a matched event was not (fully) measured, by index in
/// [`RuleState::incomplete`].
pub(crate) const INCOMPLETE_REASONS: [&str; 2] = ["no_outcome", "no_latency"];

/// The rules and label groups, compiled; read-only, shared by every batch.
#[derive(Debug)]
pub(crate) struct Compiled {
    /// Rules in config order.
    pub rules: Vec<CompiledRule>,
    /// Label configurations, shared by rules.
    pub groups: Vec<LabelGroup>,
    hasher: DefaultHashBuilder,
}

/// A rule's series and counters.
#[derive(Debug)]
pub(crate) struct RuleState {
    /// Its series, bounded by the rule's limit.
    pub table: SeriesTable,
    /// Matched events by [`INCOMPLETE_REASONS`].
    pub incomplete: [u64; 2],
}

/// Everything the tap updates, behind one lock.
#[derive(Debug)]
pub(crate) struct TapState {
    /// Per rule, in config order.
    pub rules: Vec<RuleState>,
}

/// State shared between the tap and the `/metrics` collector.
#[derive(Debug)]
pub(crate) struct Shared {
    started: Instant,
    /// The rules.
    pub compiled: Compiled,
    state: Mutex<TapState>,
}

impl Shared {
    /// Milliseconds on the tap's monotonic clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The state. A panic while it was held (a bug) leaves counts that are
    /// still well-formed, so a poisoned lock is used as is.
    pub(crate) fn lock(&self) -> MutexGuard<'_, TapState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Derives SLI metrics from every batch: add it to the pipeline as a
/// [`BatchTap`]. Its series appear on `/metrics` for as long as the tap
/// lives.
#[derive(Debug, Clone)]
pub struct SliTap {
    shared: Arc<Shared>,
    fields: Arc<FieldSet>,
}

impl SliTap {
    /// A tap for validated rules (from [`crate::config::Config::sli`]).
    pub fn new(rules: &[SliRule]) -> SliTap {
        let mut fields = FieldSet::new();
        let mut groups: Vec<LabelGroup> = Vec::new();
        let mut identities: Vec<String> = Vec::new();
        let mut compiled = Vec::new();
        for rule in rules {
            let sources = rule.labels.resolved();
            let id = LabelGroup::identity(&sources);
            let group = match identities.iter().position(|x| *x == id) {
                Some(g) => g,
                None => {
                    groups.push(LabelGroup::new(&sources, |p| fields.add(p.clone())));
                    identities.push(id);
                    groups.len() - 1
                }
            };
            compiled.push(CompiledRule::new(rule, &mut fields, group));
        }
        let state = TapState {
            rules: compiled
                .iter()
                .map(|rule| RuleState {
                    table: SeriesTable::new(
                        rule.max_series,
                        rule.bounds.len() + 1,
                        groups[rule.group].names.len(),
                        &rule.windows,
                        0,
                    ),
                    incomplete: [0; 2],
                })
                .collect(),
        };
        let shared = Arc::new(Shared {
            started: Instant::now(),
            compiled: Compiled {
                rules: compiled,
                groups,
                hasher: DefaultHashBuilder::default(),
            },
            state: Mutex::new(state),
        });
        super::exposition::attach(&shared);
        SliTap {
            shared,
            fields: Arc::new(fields),
        }
    }

    /// The metrics of this tap alone in the Prometheus text format (what it
    /// adds to `/metrics`).
    pub fn render_text(&self) -> String {
        let families = super::exposition::families(&self.shared);
        let mut out = String::new();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::error!(error = %e, "cannot encode SLI metrics");
        }
        out
    }

    /// Merges a batch's counts at `now_ms` on the tap's clock.
    fn merge(&self, partial: &Partial, now_ms: u64) {
        self.shared.lock().apply(&self.shared.compiled, partial, now_ms);
    }
}

impl BatchTap for SliTap {
    /// The event fields the rules read, by [`super::rule::FieldIndex`].
    fn fields(&self) -> Arc<FieldSet> {
        self.fields.clone()
    }

    fn begin(&self, source: &SourceContext) -> Box<dyn EventObserver> {
        Box::new(BatchJudge::new(self.shared.clone(), source))
    }

    fn observe(&self, _batch: &Batch, prepared: Prepared) {
        match prepared.downcast::<Partial>() {
            Ok(partial) => self.merge(&partial, self.shared.now_ms()),
            Err(_) => tracing::error!("SLI tap handed another observer's result; batch not counted"),
        }
    }
}

/// Judges the events of one batch as they decode, into a [`Partial`]: the
/// per-event work, touching no shared state.
struct BatchJudge {
    shared: Arc<Shared>,
    partial: Partial,
    /// Per label group.
    scratch: Vec<KeyScratch>,
    text: String,
    /// Events seen so far.
    events: usize,
}

impl BatchJudge {
    fn new(shared: Arc<Shared>, source: &SourceContext) -> BatchJudge {
        let compiled = &shared.compiled;
        let mut scratch: Vec<KeyScratch> = compiled.groups.iter().map(|_| KeyScratch::default()).collect();
        for (g, s) in compiled.groups.iter().zip(&mut scratch) {
            g.begin_batch(source, s);
        }
        let partial = Partial {
            incomplete: vec![[0; 2]; compiled.rules.len()],
            ..Partial::default()
        };
        BatchJudge {
            shared,
            partial,
            scratch,
            text: String::new(),
            events: 0,
        }
    }
}

impl EventObserver for BatchJudge {
    #[inline]
    fn event(&mut self, values: &[FieldValueRef<'_>]) {
        let row = Row::new(values, self.events);
        self.shared
            .compiled
            .judge(&row, &mut self.partial, &mut self.scratch, &mut self.text);
        self.events += 1;
    }

    fn finish(self: Box<Self>) -> Prepared {
        Box::new(self.partial)
    }
}

/// One series' counts within a batch.
#[derive(Debug)]
struct Entry {
    rule: usize,
    /// The label group's hash of the key.
    hash: u64,
    /// The key, in [`Partial::keys`].
    key: Range<usize>,
    outcomes: [u64; 3],
    /// Start of its buckets in [`Partial::buckets`] (the rule's bucket count).
    buckets: usize,
    sum: f64,
}

/// What one batch adds to every rule.
#[derive(Debug, Default)]
pub(crate) struct Partial {
    /// Per rule, by [`INCOMPLETE_REASONS`].
    incomplete: Vec<[u64; 2]>,
    /// In the order their first event came, so series are created in
    /// arrival order.
    entries: Vec<Entry>,
    index: HashTable<u32>,
    keys: Vec<u8>,
    buckets: Vec<u64>,
}

impl Partial {
    /// The entry for `key` of `rule`, created with `nb` zero buckets.
    #[inline]
    fn entry(&mut self, rule: usize, hash: u64, key: &[u8], nb: usize) -> &mut Entry {
        let Partial {
            entries,
            index,
            keys,
            buckets,
            ..
        } = self;
        let h = hash ^ (rule as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let found = index
            .find(h, |&i| {
                let e = &entries[i as usize];
                e.rule == rule && keys[e.key.clone()] == *key
            })
            .copied();
        let i = match found {
            Some(i) => i as usize,
            None => {
                let start = keys.len();
                keys.extend_from_slice(key);
                let b = buckets.len();
                buckets.resize(b + nb, 0);
                entries.push(Entry {
                    rule,
                    hash,
                    key: start..keys.len(),
                    outcomes: [0; 3],
                    buckets: b,
                    sum: 0.0,
                });
                let i = entries.len() - 1;
                index.insert_unique(h, i as u32, |&j| {
                    let e = &entries[j as usize];
                    e.hash ^ (e.rule as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                });
                i
            }
        };
        &mut entries[i]
    }
}

impl Compiled {
    /// Judges the event in `row` for every rule into `partial`; `scratch`
    /// holds each label group's key.
    #[inline]
    fn judge(&self, row: &Row<'_, '_>, partial: &mut Partial, scratch: &mut [KeyScratch], text: &mut String) {
        for (r, rule) in self.rules.iter().enumerate() {
            let (error, latency, latency_missing) = match rule.judge(row, text) {
                Verdict::Skip => continue,
                Verdict::NoOutcome => {
                    partial.incomplete[r][0] += 1;
                    continue;
                }
                Verdict::NoLatency => {
                    partial.incomplete[r][1] += 1;
                    continue;
                }
                Verdict::Counted {
                    error,
                    latency,
                    latency_missing,
                } => (error, latency, latency_missing),
            };
            partial.incomplete[r][1] += latency_missing as u64;
            let (hash, key) = self.groups[rule.group].key(&mut scratch[rule.group], row, &self.hasher);
            let nb = rule.bounds.len() + 1;
            let slow = match (latency, rule.latency.as_ref().and_then(|l| l.threshold)) {
                (Some(l), Some(t)) => l > t,
                _ => false,
            };
            let outcome = if error {
                Outcome::Error
            } else if slow {
                Outcome::Slow
            } else {
                Outcome::Success
            };
            let e = partial.entry(r, hash, key, nb);
            e.outcomes[outcome as usize] += 1;
            if let Some(l) = latency {
                e.sum += l;
                // Bucket `le=b` counts l <= b; past the last bound is +Inf.
                let b = e.buckets + rule.bounds.partition_point(|&b| b < l);
                partial.buckets[b] += 1;
            }
        }
    }
}

impl TapState {
    /// Adds a batch's counts to the rules' series at `now_ms`.
    pub(crate) fn apply(&mut self, compiled: &Compiled, partial: &Partial, now_ms: u64) {
        for (state, inc) in self.rules.iter_mut().zip(&partial.incomplete) {
            state.incomplete[0] += inc[0];
            state.incomplete[1] += inc[1];
        }
        for e in &partial.entries {
            let (Some(state), Some(rule)) = (self.rules.get_mut(e.rule), compiled.rules.get(e.rule)) else {
                continue;
            };
            let events = e.outcomes.iter().sum();
            let slot = state
                .table
                .slot(e.hash, &partial.keys[e.key.clone()], &rule.windows, now_ms, events);
            let series = state.table.get_mut(slot);
            series.advance(&rule.windows, now_ms);
            for (total, n) in series.outcomes.iter_mut().zip(e.outcomes) {
                *total += n;
            }
            let nb = series.buckets.len();
            for (total, n) in series.buckets.iter_mut().zip(&partial.buckets[e.buckets..e.buckets + nb]) {
                *total += n;
            }
            series.sum += e.sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Decoder;
    use crate::enrich::SourceContext;
    use crate::event::{BatchBuilder, FieldPath};
    use serde_json::{json, Map, Value};

    fn tap(rules: Value) -> SliTap {
        let mut errors = Vec::new();
        let rules = super::super::config::parse_rules(rules, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        SliTap::new(&rules)
    }

    /// Decodes `lines` from a source with metadata `meta` while the tap
    /// judges them: the batch and the tap's counts for it.
    fn judged(tap: &SliTap, meta: Value, lines: &[String]) -> (Batch, Partial) {
        let Value::Object(meta) = meta else { panic!() };
        let ctx = Arc::new(SourceContext::new("t".into(), "test", String::new(), meta));
        let mut set = FieldSet::new();
        set.add(FieldPath::parse("unrelated").unwrap());
        let mut out = BatchBuilder::with_capacity(Arc::new(set), 4096, lines.len());
        out.observe(tap.fields(), tap.begin(&ctx));
        let mut d = Decoder::new();
        for l in lines {
            d.decode_line(l.as_bytes(), false, &[], &ctx.fragment, &mut out);
        }
        let prepared = out.finish_observers().pop().expect("one observer");
        let partial = *prepared.downcast::<Partial>().expect("the tap's counts");
        (out.build(ctx, std::time::SystemTime::now()), partial)
    }

    /// Sample lines of the rendered text as (name{labels}, value).
    fn samples(tap: &SliTap, now_ms: u64) -> Map<String, Value> {
        let fams = super::super::exposition::render_state(&tap.shared.compiled, &mut tap.shared.lock(), now_ms, &mut Default::default());
        let mut text = String::new();
        prometheus::TextEncoder::new().encode_utf8(&fams, &mut text).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_owned(), json!(v.parse::<f64>().unwrap()))
            })
            .collect()
    }

    fn line(service: &str, release: Option<&str>, status: u16, ms: f64) -> String {
        match release {
            Some(r) => format!(r#"{{"service":"{service}","release":{{"version":"{r}"}},"status":{status},"duration_ms":{ms}}}"#),
            None => format!(r#"{{"service":"{service}","status":{status},"duration_ms":{ms}}}"#),
        }
    }

    #[test]
    fn counts_by_service_and_release_with_metadata_fallback() {
        let t = tap(json!([{"name": "avail", "latency": {"field": "duration_ms", "buckets": [0.01, 0.1]}}]));
        let mut lines = Vec::new();
        for i in 0..100 {
            lines.push(line("api", Some("v2"), if i % 10 == 0 { 503 } else { 200 }, 5.0));
            lines.push(line("api", None, 200, 50.0));
        }
        lines.push("not json".into());
        lines.push(r#"{"service":"api"}"#.into());
        let (b, partial) = judged(&t, json!({"release": {"version": "v1"}}), &lines);
        t.observe(&b, Box::new(partial));
        let s = samples(&t, 0);
        let get = |k: &str| s.get(k).and_then(Value::as_f64).unwrap_or_else(|| panic!("{k} missing in {s:#?}"));
        assert_eq!(
            get(r#"sluice_sli_requests_total{sli="avail",service="api",release="v2",outcome="error"}"#),
            10.0
        );
        assert_eq!(
            get(r#"sluice_sli_requests_total{sli="avail",service="api",release="v2",outcome="success"}"#),
            90.0
        );
        assert_eq!(
            get(r#"sluice_sli_requests_total{sli="avail",service="api",release="v1",outcome="success"}"#),
            100.0
        );
        assert_eq!(
            get(r#"sluice_sli_latency_seconds_bucket{sli="avail",service="api",release="v1",le="0.01"}"#),
            0.0
        );
        assert_eq!(
            get(r#"sluice_sli_latency_seconds_bucket{sli="avail",service="api",release="v1",le="0.1"}"#),
            100.0
        );
        assert_eq!(
            get(r#"sluice_sli_latency_seconds_bucket{sli="avail",service="api",release="v2",le="0.01"}"#),
            100.0
        );
        assert_eq!(get(r#"sluice_sli_events_incomplete_total{sli="avail",reason="no_outcome"}"#), 2.0);
        assert_eq!(get(r#"sluice_sli_series{sli="avail"}"#), 2.0);
        assert!(
            !s.keys().any(|k| k.starts_with("sluice_sli_error_budget_burn_rate")),
            "no objective, no burn rate"
        );
    }

    #[test]
    fn burn_rate_follows_the_window() {
        let t = tap(json!([{"name": "canary", "objective": 0.999, "windows": ["5m", "1h"]}]));
        let mut lines = Vec::new();
        for i in 0..1000 {
            lines.push(line("api", Some("v1"), 200, 1.0));
            lines.push(line("api", Some("v2"), if i % 20 == 0 { 500 } else { 200 }, 1.0));
        }
        t.merge(&judged(&t, json!({}), &lines).1, 1_000);
        let burn = |now: u64, release: &str, w: &str| {
            let k = format!(r#"sluice_sli_error_budget_burn_rate{{sli="canary",service="api",release="{release}",window="{w}"}}"#);
            samples(&t, now)[&k].as_f64().unwrap()
        };
        assert!((burn(2_000, "v2", "5m") - 50.0).abs() < 1e-9);
        assert_eq!(burn(2_000, "v1", "5m"), 0.0);
        assert!((burn(2_000, "v2", "1h") - 50.0).abs() < 1e-9);
        // Six quiet minutes later the short window has forgotten, the long
        // one has not.
        assert_eq!(burn(361_000, "v2", "5m"), 0.0);
        assert!((burn(361_000, "v2", "1h") - 50.0).abs() < 1e-9);
        // Healthy traffic now dilutes the long window only by its share.
        let healthy: Vec<String> = (0..1000).map(|_| line("api", Some("v2"), 200, 1.0)).collect();
        t.merge(&judged(&t, json!({}), &healthy).1, 362_000);
        assert_eq!(burn(362_000, "v2", "5m"), 0.0);
        assert!((burn(362_000, "v2", "1h") - 25.0).abs() < 1e-9);
    }

    #[test]
    fn overflow_takes_new_values_past_the_limit() {
        let t = tap(json!([{"name": "routes", "max_series": 10, "labels": {"route": "path"}}]));
        let lines: Vec<String> = (0..50)
            .map(|i| format!(r#"{{"service":"s","path":"/r/x{i}/{i}","status":200}}"#))
            .collect();
        let (b, partial) = judged(&t, json!({}), &lines);
        t.observe(&b, Box::new(partial));
        let s = samples(&t, 0);
        let routes: std::collections::BTreeSet<&str> = s
            .keys()
            .filter(|k| k.starts_with("sluice_sli_requests_total") && k.contains("outcome=\"success\""))
            .map(|k| k.split("route=\"").nth(1).unwrap().split('"').next().unwrap())
            .collect();
        assert_eq!(routes.len(), 11);
        assert!(routes.contains("__overflow__") && routes.contains("/r/x0/:id"));
        assert_eq!(s[r#"sluice_sli_series_overflow_total{sli="routes"}"#], 40.0);
        let total: f64 = s
            .iter()
            .filter(|(k, _)| k.starts_with("sluice_sli_requests_total"))
            .map(|(_, v)| v.as_f64().unwrap())
            .sum();
        assert_eq!(total, 50.0);
    }
}
