//! The SLI tap. Each batch is judged on the decode pool, in parallel with
//! other batches, into a [`Partial`]: counts per (rule, label values) for
//! that batch alone. The fan-out task then merges it into the rules' series
//! under one lock, in batch order; the merge costs per distinct series in
//! the batch, not per event.
//!
//! A [`Partial`] is reused from batch to batch, and keeps what it learnt:
//! the label keys it has met (so a known key is looked up, never stored
//! again) and, per rule, where each key's series is in the rule's table
//! (so the merge finds it without hashing).

use hashbrown::{DefaultHashBuilder, HashTable};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::config::SliRule;
use super::labels::{KeyScratch, LabelGroup};
use super::log_metrics::{MetricKind, MetricRule};
use super::rule::{CompiledRule, Row, Verdict};
use super::series::{Outcome, SeriesTable, Slot};
use crate::condition::MetaValues;
use crate::decode::EventObserver;
use crate::decode::{same_bytes, EventValues};
use crate::enrich::SourceContext;
use crate::event::{Batch, FieldSet};
use crate::pipeline::{BatchTap, Prepared};

/// Why a matched event was not (fully) measured, by index in
/// [`RuleState::incomplete`].
pub(crate) const INCOMPLETE_REASONS: [&str; 2] = ["no_outcome", "no_latency"];

/// The same for a `[[metrics]]` rule: its value field is missing, or not a
/// finite number (a negative counter increment).
pub(crate) const INVALID_VALUE_REASONS: [&str; 2] = ["missing_value", "invalid_value"];

/// The rules and label groups, compiled; read-only, shared by every batch.
#[derive(Debug)]
pub(crate) struct Compiled {
    /// Rules in config order.
    pub(crate) rules: Vec<CompiledRule>,
    /// Label configurations, shared by rules.
    pub(crate) groups: Vec<LabelGroup>,
    hasher: DefaultHashBuilder,
}

/// A rule's series and counters.
#[derive(Debug)]
pub(crate) struct RuleState {
    /// Its series, bounded by the rule's limit.
    pub(crate) table: SeriesTable,
    /// Matched events by [`INCOMPLETE_REASONS`].
    pub(crate) incomplete: [u64; 2],
}

/// Everything the tap updates, behind one lock.
#[derive(Debug)]
pub(crate) struct TapState {
    /// Per rule, in config order.
    pub(crate) rules: Vec<RuleState>,
}

/// State shared between the tap and the `/metrics` collector.
#[derive(Debug)]
pub(crate) struct Shared {
    started: Instant,
    /// The rules.
    pub(crate) compiled: Compiled,
    state: Mutex<TapState>,
    /// Merged [`Partial`]s, for the next batches.
    spare: Mutex<Vec<Partial>>,
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
    /// A tap for validated rules (from [`crate::topology::Config::sli`]).
    pub fn new(rules: &[SliRule]) -> SliTap {
        SliTap::with_metrics(rules, &[])
    }

    /// A tap for validated SLI rules and `[[metrics]]` rules (from
    /// [`crate::topology::Config::metrics`]), judged in one pass.
    pub fn with_metrics(rules: &[SliRule], metric_rules: &[MetricRule]) -> SliTap {
        let mut fields = FieldSet::new();
        let mut groups: Vec<LabelGroup> = Vec::new();
        let mut identities: Vec<String> = Vec::new();
        let mut compiled = Vec::new();
        let mut group_of = |labels: Vec<(String, super::config::LabelSource)>, fields: &mut FieldSet| {
            let id = LabelGroup::identity(&labels);
            match identities.iter().position(|x| *x == id) {
                Some(g) => g,
                None => {
                    groups.push(LabelGroup::new(&labels, |p| fields.add(p.clone())));
                    identities.push(id);
                    groups.len() - 1
                }
            }
        };
        for rule in rules {
            let group = group_of(LabelGroup::sli_labels(&rule.labels.resolved()), &mut fields);
            compiled.push(CompiledRule::new(rule, &mut fields, group));
        }
        for rule in metric_rules {
            let group = group_of(rule.resolved_labels(), &mut fields);
            compiled.push(CompiledRule::metric(rule, &mut fields, group));
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
            spare: Mutex::new(Vec::new()),
        });
        super::exposition::attach(&shared);
        SliTap {
            shared,
            fields: Arc::new(fields),
        }
    }

    /// Merges a batch's counts at `now_ms` on the tap's clock, then keeps
    /// its judge's caches for another batch.
    fn merge(&self, mut partial: Partial, now_ms: u64) {
        self.shared.lock().apply(&self.shared.compiled, &mut partial, now_ms);
        self.shared.give_back(partial);
    }
}

impl BatchTap for SliTap {
    /// The event fields the rules read, by [`super::rule::FieldIndex`].
    fn fields(&self) -> Arc<FieldSet> {
        self.fields.clone()
    }

    fn begin(&self, source: &SourceContext) -> Box<dyn EventObserver> {
        Box::new(BatchJudge::new(self.shared.clone(), source, &self.fields))
    }

    fn observe(&self, _batch: &Batch, prepared: Prepared) {
        match prepared.downcast::<Partial>() {
            Ok(partial) => self.merge(*partial, self.shared.now_ms()),
            Err(_) => tracing::error!("SLI tap handed another observer's result; batch not counted"),
        }
    }
}

/// Spare [`Partial`]s kept warm for the next batches; more than this many
/// batches judged at once get a fresh one, dropped after its merge.
const SPARE_PARTIALS: usize = 8;

/// A judge's cache of a label group's keys is cleared before a batch once
/// it holds this many keys beyond the largest series limit of the group's
/// rules (keys past the limit all count in overflow, so only input with
/// ever new label values gets there).
const CACHE_SLACK: usize = 256;

/// Judges the events of one batch as they decode, into a [`Partial`]: the
/// per-event work, touching no shared state.
struct BatchJudge {
    shared: Arc<Shared>,
    partial: Partial,
    /// Per label group.
    scratch: Vec<KeyScratch>,
    /// Per label group: the event whose key was looked up last, plus one,
    /// and that key's entry in the group's cache.
    memo: Vec<(usize, u32)>,
    text: String,
    /// Events seen so far.
    events: usize,
    /// The batch's source metadata, for fields an event lacks.
    meta: MetaValues,
    /// The rules that judge this batch's source, by index.
    active: Vec<usize>,
}

impl BatchJudge {
    fn new(shared: Arc<Shared>, source: &SourceContext, fields: &FieldSet) -> BatchJudge {
        let compiled = &shared.compiled;
        let mut scratch: Vec<KeyScratch> = compiled.groups.iter().map(|_| KeyScratch::default()).collect();
        for (g, s) in compiled.groups.iter().zip(&mut scratch) {
            g.begin_batch(source, s);
        }
        let mut partial = shared.take_partial();
        partial.trim(compiled);
        BatchJudge {
            memo: vec![(0, 0); compiled.groups.len()],
            partial,
            scratch,
            text: String::new(),
            events: 0,
            meta: MetaValues::resolve(fields, source),
            active: (0..compiled.rules.len())
                .filter(|&r| compiled.rules[r].judges_source(&source.source))
                .collect(),
            shared,
        }
    }
}

impl EventObserver for BatchJudge {
    #[inline]
    fn event(&mut self, values: &EventValues<'_>) {
        let row = Row::new(values);
        self.events += 1;
        let BatchJudge {
            shared,
            partial,
            scratch,
            memo,
            text,
            events,
            meta,
            active,
        } = self;
        let compiled = &shared.compiled;
        for &r in active.iter() {
            let rule = &compiled.rules[r];
            let cells = &mut partial.rules[r];
            let (error, latency) = match rule.judge(&row, meta, text) {
                Verdict::Skip => continue,
                Verdict::NoOutcome => {
                    cells.incomplete[0] += 1;
                    continue;
                }
                Verdict::NoLatency => {
                    cells.incomplete[1] += 1;
                    continue;
                }
                Verdict::Counted {
                    error,
                    latency,
                    latency_missing,
                } => {
                    cells.incomplete[1] += latency_missing as u64;
                    (error, latency)
                }
            };
            let g = rule.group;
            let entry = match memo[g] {
                (seen, entry) if seen == *events => entry,
                _ => {
                    let (hash, key) = compiled.groups[g].key(&mut scratch[g], &row, &compiled.hasher);
                    let entry = partial.groups[g].entry(hash, key);
                    memo[g] = (*events, entry);
                    entry
                }
            };
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
            // Bucket `le=b` counts l <= b; past the last bound is +Inf.
            let latency = latency.map(|l| (l, rule.bounds.partition_point(|&b| b < l)));
            partial.rules[r].count(entry as usize, outcome, latency);
        }
    }

    fn finish(self: Box<Self>) -> Prepared {
        Box::new(self.partial)
    }
}

/// The keys of one label group a judge has met, kept from batch to batch
/// so that a key seen before is found, not stored again.
#[derive(Debug, Default)]
struct KeyCache {
    index: HashTable<u32>,
    keys: Vec<u8>,
    /// Per entry: its key in `keys`, and the key's hash.
    entries: Vec<(Range<u32>, u64)>,
}

impl KeyCache {
    /// The entry of `key` (hashed to `hash`), added if new.
    #[inline]
    fn entry(&mut self, hash: u64, key: &[u8]) -> u32 {
        let KeyCache { index, keys, entries } = self;
        let found = index.find(hash, |&i| {
            let (range, h) = &entries[i as usize];
            *h == hash && same_bytes(&keys[range.start as usize..range.end as usize], key)
        });
        if let Some(&i) = found {
            return i;
        }
        let start = keys.len() as u32;
        keys.extend_from_slice(key);
        entries.push((start..keys.len() as u32, hash));
        let i = (entries.len() - 1) as u32;
        index.insert_unique(hash, i, |&j| entries[j as usize].1);
        i
    }

    /// The key of entry `i`, and its hash.
    fn key(&self, i: usize) -> (&[u8], u64) {
        let (range, hash) = &self.entries[i];
        (&self.keys[range.start as usize..range.end as usize], *hash)
    }

    fn clear(&mut self) {
        self.index.clear();
        self.keys.clear();
        self.entries.clear();
    }
}

/// Where a cache entry's series is in a rule's table, once merged.
const UNRESOLVED: u32 = u32::MAX;
const OVERFLOW: u32 = u32::MAX - 1;

/// One rule's counts for the batch being judged, per entry of its label
/// group's [`KeyCache`], and where each entry's series is in the rule's
/// table.
#[derive(Debug)]
struct RuleCells {
    /// Cells per entry: the outcomes, then the histogram buckets.
    stride: usize,
    /// A gauge: an entry's sum is its last value, not a total.
    last_value: bool,
    cells: Vec<u64>,
    /// Latency sum per entry, seconds.
    sums: Vec<f64>,
    /// Per entry: [`UNRESOLVED`], [`OVERFLOW`] or a series index.
    slots: Vec<u32>,
    /// Entries counted in this batch, in the order of their first event
    /// (the order new series are created in).
    touched: Vec<u32>,
    /// By [`INCOMPLETE_REASONS`].
    incomplete: [u64; 2],
}

impl RuleCells {
    fn new(buckets: usize, last_value: bool) -> RuleCells {
        RuleCells {
            stride: 3 + buckets,
            last_value,
            cells: Vec::new(),
            sums: Vec::new(),
            slots: Vec::new(),
            touched: Vec::new(),
            incomplete: [0; 2],
        }
    }

    /// Counts one event of entry `e` with its latency and bucket.
    #[inline]
    fn count(&mut self, e: usize, outcome: Outcome, latency: Option<(f64, usize)>) {
        if e >= self.slots.len() {
            self.slots.resize(e + 1, UNRESOLVED);
            self.sums.resize(e + 1, 0.0);
            self.cells.resize((e + 1) * self.stride, 0);
        }
        let cells = &mut self.cells[e * self.stride..(e + 1) * self.stride];
        // Every counted event adds one outcome: none yet, first this batch.
        if cells[..3].iter().sum::<u64>() == 0 {
            self.touched.push(e as u32);
        }
        cells[outcome as usize] += 1;
        if let Some((l, b)) = latency {
            cells[3 + b] += 1;
            if self.last_value {
                self.sums[e] = l;
            } else {
                self.sums[e] += l;
            }
        }
    }

    fn clear(&mut self) {
        self.cells.clear();
        self.sums.clear();
        self.slots.clear();
        self.touched.clear();
    }
}

/// What a judge made of one batch, with the key caches it carries from
/// batch to batch: after the merge its counts are zero again and it goes
/// back to the tap for another batch.
#[derive(Debug, Default)]
pub(crate) struct Partial {
    /// Per label group.
    groups: Vec<KeyCache>,
    /// Per rule, in config order.
    rules: Vec<RuleCells>,
}

impl Partial {
    fn new(compiled: &Compiled) -> Partial {
        Partial {
            groups: compiled.groups.iter().map(|_| KeyCache::default()).collect(),
            rules: compiled
                .rules
                .iter()
                .map(|r| RuleCells::new(r.bounds.len() + 1, r.metric.as_ref().is_some_and(|m| m.kind == MetricKind::Gauge)))
                .collect(),
        }
    }

    /// Clears the key caches grown past their bound.
    fn trim(&mut self, compiled: &Compiled) {
        for (g, cache) in self.groups.iter_mut().enumerate() {
            let rules = || compiled.rules.iter().enumerate().filter(|(_, r)| r.group == g);
            let limit = rules().map(|(_, r)| r.max_series).max().unwrap_or(0) + CACHE_SLACK;
            if cache.entries.len() > limit {
                cache.clear();
                for (r, _) in rules() {
                    self.rules[r].clear();
                }
            }
        }
    }
}

impl Shared {
    /// A spare [`Partial`], or a new one.
    fn take_partial(&self) -> Partial {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        spare.unwrap_or_else(|| Partial::new(&self.compiled))
    }

    /// Keeps a merged [`Partial`] for another batch, unless enough are kept.
    fn give_back(&self, partial: Partial) {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE_PARTIALS {
            spare.push(partial);
        }
    }
}

impl TapState {
    /// Adds a batch's counts to the rules' series at `now_ms`, leaving the
    /// batch's counts at zero.
    pub(crate) fn apply(&mut self, compiled: &Compiled, partial: &mut Partial, now_ms: u64) {
        let Partial { groups, rules } = partial;
        for ((state, rule), cells) in self.rules.iter_mut().zip(&compiled.rules).zip(rules.iter_mut()) {
            state.incomplete[0] += cells.incomplete[0];
            state.incomplete[1] += cells.incomplete[1];
            cells.incomplete = [0; 2];
            let cache = &groups[rule.group];
            let stride = cells.stride;
            for &e in &cells.touched {
                let e = e as usize;
                let counts = &mut cells.cells[e * stride..(e + 1) * stride];
                let events = counts[..3].iter().sum();
                let slot = match cells.slots[e] {
                    UNRESOLVED => {
                        let (key, hash) = cache.key(e);
                        let slot = state.table.slot(hash, key, &rule.windows, now_ms, events);
                        cells.slots[e] = match slot {
                            Slot::Series(i) => i as u32,
                            Slot::Overflow => OVERFLOW,
                        };
                        slot
                    }
                    OVERFLOW => {
                        state.table.add_overflow_events(events);
                        Slot::Overflow
                    }
                    i => Slot::Series(i as usize),
                };
                let series = state.table.get_mut(slot);
                series.advance(&rule.windows, now_ms);
                for (total, n) in series.outcomes.iter_mut().zip(&counts[..3]) {
                    *total += n;
                }
                for (total, n) in series.buckets.iter_mut().zip(&counts[3..]) {
                    *total += n;
                }
                if cells.last_value {
                    series.sum = cells.sums[e];
                } else {
                    series.sum += cells.sums[e];
                }
                counts.fill(0);
                cells.sums[e] = 0.0;
            }
            cells.touched.clear();
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
        let mut d = Decoder::new();
        d.observe(tap.fields(), tap.begin(&ctx));
        for l in lines {
            d.decode_line(l.as_bytes(), false, &[], &ctx.fragment, &mut out);
        }
        let prepared = d.finish_observers().pop().expect("one observer");
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
        t.merge(judged(&t, json!({}), &lines).1, 1_000);
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
        t.merge(judged(&t, json!({}), &healthy).1, 362_000);
        assert_eq!(burn(362_000, "v2", "5m"), 0.0);
        assert!((burn(362_000, "v2", "1h") - 25.0).abs() < 1e-9);
    }

    /// Requests per route value of rule `sli`, from the rendered text.
    fn requests_by_route(s: &Map<String, Value>, sli: &str) -> std::collections::BTreeMap<String, f64> {
        let mut by = std::collections::BTreeMap::new();
        let prefix = format!(r#"sluice_sli_requests_total{{sli="{sli}","#);
        for (k, v) in s.iter().filter(|(k, _)| k.starts_with(&prefix)) {
            let route = k.split("route=\"").nth(1).unwrap().split('"').next().unwrap();
            *by.entry(route.to_owned()).or_insert(0.0) += v.as_f64().unwrap();
        }
        by
    }

    #[test]
    fn reused_judges_count_exactly_across_batches() {
        // Three series allowed, batches judged two at a time, and far more
        // new routes than a judge's key cache keeps, so caches are reused,
        // trimmed and refilled while keys land in series and in overflow.
        let t = tap(json!([
            {"name": "routes", "max_series": 3, "labels": {"route": "path"}},
            {"name": "all", "latency": {"field": "ms", "unit": "ms"}, "labels": {"route": "path", "method": "method"}, "max_series": 10000},
        ]));
        let batch = |b: usize| -> Vec<String> {
            (0..200)
                .map(|i| {
                    let route = if i % 2 == 0 {
                        format!("/r/k{}", i % 6)
                    } else {
                        format!("/r/u{b}x{i}")
                    };
                    format!(r#"{{"service":"s","path":"{route}","status":200,"ms":1}}"#)
                })
                .collect()
        };
        for round in 0..4 {
            let (b1, p1) = judged(&t, json!({}), &batch(2 * round));
            let (b2, p2) = judged(&t, json!({}), &batch(2 * round + 1));
            t.observe(&b1, Box::new(p1));
            t.observe(&b2, Box::new(p2));
        }
        let s = samples(&t, 0);
        let routes = requests_by_route(&s, "routes");
        let want: std::collections::BTreeMap<String, f64> =
            [("/r/k0", 272.0), ("/r/u0x1", 1.0), ("/r/k2", 264.0), ("__overflow__", 1063.0)]
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
        assert_eq!(routes, want);
        assert_eq!(s[r#"sluice_sli_series_overflow_total{sli="routes"}"#], 1063.0);
        let all = requests_by_route(&s, "all");
        assert_eq!(all.len(), 3 + 800);
        assert_eq!(all.values().sum::<f64>(), 1600.0);
        assert_eq!(all["/r/k4"], 264.0);
        let count: f64 = s
            .iter()
            .filter(|(k, _)| k.starts_with(r#"sluice_sli_latency_seconds_count{sli="all""#))
            .map(|(_, v)| v.as_f64().unwrap())
            .sum();
        assert_eq!(count, 1600.0);
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

    /// A tap with `[[metrics]]` rules only.
    fn metric_tap(rules: Value) -> SliTap {
        let mut errors = Vec::new();
        let sources = std::collections::BTreeSet::from(["t", "other"]);
        let rules = super::super::log_metrics::parse_rules(rules, &sources, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        SliTap::with_metrics(&[], &rules)
    }

    #[test]
    fn metric_rules_count_observe_and_keep_the_last_value() {
        let t = metric_tap(json!([
            {"name": "http_errors", "kind": "counter", "when": {"field": "status", "gte": 500},
             "labels": {"route": "path", "ns": "kubernetes.namespace"}},
            {"name": "bytes_sent", "kind": "counter", "increment_by": "bytes"},
            {"name": "took_ms", "kind": "histogram", "value": "took", "buckets": [10, 100]},
            {"name": "depth", "kind": "gauge", "value": "depth"},
            {"name": "elsewhere", "kind": "counter", "sources": ["other"]},
        ]));
        let mut lines = Vec::new();
        for i in 0..100 {
            let status = if i % 4 == 0 { 503 } else { 200 };
            let path = if i % 2 == 0 { "/a" } else { "/b" };
            lines.push(format!(
                r#"{{"status":{status},"path":"{path}","bytes":{i},"took":{},"depth":{i}}}"#,
                i * 2
            ));
        }
        // Bad input: counted, never a panic.
        lines.push(r#"{"status":500,"bytes":"lots","took":"x","depth":null}"#.into());
        lines.push(r#"{"status":500,"bytes":-1,"took":"1e999","depth":true}"#.into());
        lines.push(r#"{"status":"500","bytes":"7"}"#.into());
        lines.push("not json at all".into());
        let (b, partial) = judged(&t, json!({"kubernetes": {"namespace": "shop"}}), &lines);
        t.observe(&b, Box::new(partial));
        let s = samples(&t, 0);
        let get = |k: &str| s.get(k).and_then(Value::as_f64).unwrap_or_else(|| panic!("{k} missing in {s:#?}"));
        // 25 of the 100 are 503s, all on /a; three bad lines are 500s without a path.
        assert_eq!(get(r#"http_errors_total{ns="shop",route="/a"}"#), 25.0);
        assert_eq!(get(r#"http_errors_total{ns="shop",route=""}"#), 3.0);
        assert!(!s.keys().any(|k| k.contains(r#"route="/b""#)), "{s:#?}");
        assert_eq!(get("bytes_sent_total"), (0..100).sum::<i32>() as f64 + 7.0);
        // took = 0, 2, …, 198: 6 are <= 10, 51 are <= 100.
        assert_eq!(get(r#"took_ms_bucket{le="10"}"#), 6.0);
        assert_eq!(get(r#"took_ms_bucket{le="100"}"#), 51.0);
        assert_eq!(get(r#"took_ms_bucket{le="+Inf"}"#), 100.0);
        assert_eq!(get("took_ms_count"), 100.0);
        assert_eq!(get("took_ms_sum"), (0..100).map(|i| i * 2).sum::<i32>() as f64);
        for (metric, reason, n) in [
            ("bytes_sent", "invalid_value", 2.0),
            ("bytes_sent", "missing_value", 1.0),
            ("took_ms", "invalid_value", 2.0),
            ("took_ms", "missing_value", 2.0),
        ] {
            let k = format!(r#"sluice_log_metric_events_invalid_total{{metric="{metric}",reason="{reason}"}}"#);
            assert_eq!(get(&k), n, "{k}");
        }
        assert_eq!(get("depth"), 99.0);
        assert!(!s.keys().any(|k| k.starts_with("elsewhere")), "another source's rule: {s:#?}");
        assert_eq!(get(r#"sluice_log_metric_series{metric="http_errors"}"#), 2.0);
    }

    #[test]
    fn metric_rule_series_past_the_limit_go_to_overflow() {
        let t = metric_tap(json!([{"name": "users", "kind": "counter", "labels": {"user": "user"}, "max_series": 5}]));
        let lines: Vec<String> = (0..40).map(|i| format!(r#"{{"user":"u{}"}}"#, i % 20)).collect();
        let (b, partial) = judged(&t, json!({}), &lines);
        t.observe(&b, Box::new(partial));
        let s = samples(&t, 0);
        let users: Vec<&String> = s.keys().filter(|k| k.starts_with("users_total")).collect();
        assert_eq!(users.len(), 6, "{users:?}");
        assert_eq!(s[r#"users_total{user="__overflow__"}"#], 30.0);
        assert_eq!(s[r#"users_total{user="u0"}"#], 2.0);
        assert_eq!(s[r#"sluice_log_metric_series_overflow_total{metric="users"}"#], 30.0);
        assert_eq!(s[r#"sluice_log_metric_series{metric="users"}"#], 5.0);
    }
}
