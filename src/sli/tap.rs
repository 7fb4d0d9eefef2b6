//! The SLI tap: sees every batch once, before fan-out, and updates every
//! rule's series under one lock per batch.

use hashbrown::DefaultHashBuilder;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::config::SliRule;
use super::labels::LabelGroup;
use super::rule::{CompiledRule, Row, TapFields, Verdict};
use super::series::{Outcome, SeriesTable};
use crate::event::{Batch, FieldPath, FieldSet};
use crate::pipeline::BatchTap;

/// Why a matched event was not (fully) measured, by index in
/// [`RuleState::incomplete`].
pub(crate) const INCOMPLETE_REASONS: [&str; 2] = ["no_outcome", "no_latency"];

/// A rule with its series.
#[derive(Debug)]
pub(crate) struct RuleState {
    /// The compiled rule.
    pub rule: CompiledRule,
    /// Its series, bounded by the rule's limit.
    pub table: SeriesTable,
    /// Matched events by [`INCOMPLETE_REASONS`].
    pub incomplete: [u64; 2],
}

/// Everything the tap updates, behind one lock.
#[derive(Debug)]
pub(crate) struct TapState {
    /// Rules in config order.
    pub rules: Vec<RuleState>,
    /// Label configurations, shared by rules.
    pub groups: Vec<LabelGroup>,
    fields: TapFields,
    /// The field set the last batch carried and where the tap's fields are
    /// in it.
    bound: Option<(Arc<FieldSet>, Vec<Option<usize>>)>,
    hasher: DefaultHashBuilder,
    text: String,
}

/// State shared between the tap and the `/metrics` collector.
#[derive(Debug)]
pub(crate) struct Shared {
    started: Instant,
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
/// [`BatchTap`] and have the decoder extract [`SliTap::fields`]. Its series
/// appear on `/metrics` for as long as the tap lives.
#[derive(Debug, Clone)]
pub struct SliTap {
    shared: Arc<Shared>,
    fields: Vec<FieldPath>,
}

impl SliTap {
    /// A tap for validated rules (from [`crate::config::Config::sli`]).
    pub fn new(rules: &[SliRule]) -> SliTap {
        let mut fields = TapFields::default();
        let mut groups: Vec<LabelGroup> = Vec::new();
        let mut identities: Vec<String> = Vec::new();
        let mut compiled = Vec::new();
        for rule in rules {
            let sources = rule.labels.resolved();
            let id = LabelGroup::identity(&sources);
            let group = match identities.iter().position(|x| *x == id) {
                Some(g) => g,
                None => {
                    groups.push(LabelGroup::new(&sources, |p| fields.add(p)));
                    identities.push(id);
                    groups.len() - 1
                }
            };
            compiled.push(CompiledRule::new(rule, &mut fields, group));
        }
        let started = Instant::now();
        let rules = compiled
            .into_iter()
            .map(|rule| {
                let labels = groups[rule.group].names.len();
                let table = SeriesTable::new(rule.max_series, rule.bounds.len() + 1, labels, &rule.windows, 0);
                RuleState {
                    rule,
                    table,
                    incomplete: [0; 2],
                }
            })
            .collect();
        let shared = Arc::new(Shared {
            started,
            state: Mutex::new(TapState {
                rules,
                groups,
                fields: TapFields::default(),
                bound: None,
                hasher: DefaultHashBuilder::default(),
                text: String::new(),
            }),
        });
        let paths = fields.paths().to_vec();
        shared.lock().fields = fields;
        super::exposition::attach(&shared);
        SliTap { shared, fields: paths }
    }

    /// The event fields the rules read; add them to the pipeline's
    /// [`FieldSet`].
    pub fn fields(&self) -> Vec<FieldPath> {
        self.fields.clone()
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
}

impl BatchTap for SliTap {
    fn observe(&self, batch: &Batch) {
        if batch.is_empty() {
            return;
        }
        let now_ms = self.shared.now_ms();
        self.shared.lock().observe(batch, now_ms);
    }
}

impl TapState {
    /// Counts every event of `batch` for every rule, at `now_ms`.
    pub(crate) fn observe(&mut self, batch: &Batch, now_ms: u64) {
        let TapState {
            rules,
            groups,
            fields,
            bound,
            hasher,
            text,
        } = self;
        if !bound.as_ref().is_some_and(|(set, _)| Arc::ptr_eq(set, batch.fields())) {
            *bound = Some((batch.fields().clone(), fields.bind(batch.fields())));
        }
        let Some((_, map)) = bound.as_ref() else { return };
        for g in groups.iter_mut() {
            g.begin_batch(&batch.source);
        }
        for i in 0..batch.len() {
            let row = Row::new(batch, map, i);
            for r in rules.iter_mut() {
                let (error, latency, latency_missing) = match r.rule.judge(&row, text) {
                    Verdict::Skip => continue,
                    Verdict::NoOutcome => {
                        r.incomplete[0] += 1;
                        continue;
                    }
                    Verdict::NoLatency => {
                        r.incomplete[1] += 1;
                        continue;
                    }
                    Verdict::Counted {
                        error,
                        latency,
                        latency_missing,
                    } => (error, latency, latency_missing),
                };
                r.incomplete[1] += latency_missing as u64;
                let (hash, key) = groups[r.rule.group].key(&row, hasher);
                let slot = r.table.slot(hash, key, &r.rule.windows, now_ms);
                let series = r.table.get_mut(slot);
                series.advance(&r.rule.windows, now_ms);
                let slow = match (latency, r.rule.latency.as_ref().and_then(|l| l.threshold)) {
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
                series.outcomes[outcome as usize] += 1;
                if let Some(l) = latency {
                    // Bucket `le=b` counts l <= b; past the last bound is +Inf.
                    series.buckets[r.rule.bounds.partition_point(|&b| b < l)] += 1;
                    series.sum += l;
                }
            }
        }
    }
}
