//! SLI metrics and the `[[metrics]]` rules' series on `/metrics`: one
//! collector on the process registry renders every live tap's series at
//! scrape time. Counting happens per batch in
//! plain integers under the tap's lock; the Prometheus objects are built
//! only here, once per scrape.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::log_metrics::MetricKind;
use super::rule::{CompiledRule, MetricFamilySpec};
use super::tap::{Compiled, RuleState, Shared, TapState, INCOMPLETE_REASONS, INVALID_VALUE_REASONS};
use super::window::Counts;
use crate::telemetry::register;

/// `sluice_sli_requests_total{sli,service,release[,route,method],outcome}`.
pub(crate) const REQUESTS: &str = "sluice_sli_requests_total";
/// `sluice_sli_latency_seconds{sli,service,release[,route,method]}`.
pub(crate) const LATENCY: &str = "sluice_sli_latency_seconds";
/// `sluice_sli_error_budget_burn_rate{sli,service,release,window}`.
pub(crate) const BURN_RATE: &str = "sluice_sli_error_budget_burn_rate";
/// `sluice_sli_objective{sli}`.
pub(crate) const OBJECTIVE: &str = "sluice_sli_objective";
/// `sluice_sli_latency_threshold_seconds{sli}`.
pub(crate) const THRESHOLD: &str = "sluice_sli_latency_threshold_seconds";
/// `sluice_sli_series{sli}`.
pub(crate) const SERIES: &str = "sluice_sli_series";
/// `sluice_sli_series_overflow_total{sli}`.
pub(crate) const OVERFLOW: &str = "sluice_sli_series_overflow_total";
/// `sluice_sli_events_incomplete_total{sli,reason}`.
pub(crate) const INCOMPLETE: &str = "sluice_sli_events_incomplete_total";
/// `sluice_sli_series_memory_bytes{sli}`.
pub(crate) const MEMORY: &str = "sluice_sli_series_memory_bytes";
/// `sluice_log_metric_series{metric}`.
pub(crate) const METRIC_SERIES: &str = "sluice_log_metric_series";
/// `sluice_log_metric_series_overflow_total{metric}`.
pub(crate) const METRIC_OVERFLOW: &str = "sluice_log_metric_series_overflow_total";
/// `sluice_log_metric_events_invalid_total{metric,reason}`.
pub(crate) const METRIC_INVALID: &str = "sluice_log_metric_events_invalid_total";
/// `sluice_log_metric_series_memory_bytes{metric}`.
pub(crate) const METRIC_MEMORY: &str = "sluice_log_metric_series_memory_bytes";

const FAMILIES: [(&str, &str, MetricType, &[&str]); 13] = [
    (
        REQUESTS,
        "Requests counted by an SLI rule, by outcome (success, error, slow).",
        MetricType::COUNTER,
        &["sli", "service", "release", "outcome"],
    ),
    (
        LATENCY,
        "Latency of requests counted by an SLI rule.",
        MetricType::HISTOGRAM,
        &["sli", "service", "release"],
    ),
    (
        BURN_RATE,
        "Error-budget burn rate over a sliding window: bad/total over the window divided by (1 - objective).",
        MetricType::GAUGE,
        &["sli", "service", "release", "window"],
    ),
    (
        OBJECTIVE,
        "Target fraction of good requests of an SLI.",
        MetricType::GAUGE,
        &["sli"],
    ),
    (
        THRESHOLD,
        "Latency above which a successful request of an SLI is slow.",
        MetricType::GAUGE,
        &["sli"],
    ),
    (
        SERIES,
        "Label combinations an SLI keeps, not counting overflow.",
        MetricType::GAUGE,
        &["sli"],
    ),
    (
        OVERFLOW,
        "Requests counted in the __overflow__ series because the SLI's series limit was reached.",
        MetricType::COUNTER,
        &["sli"],
    ),
    (
        INCOMPLETE,
        "Matched events without a decidable outcome (not counted) or without a valid latency.",
        MetricType::COUNTER,
        &["sli", "reason"],
    ),
    (MEMORY, "Approximate memory held by an SLI's series.", MetricType::GAUGE, &["sli"]),
    (
        METRIC_SERIES,
        "Label combinations a [[metrics]] rule keeps, not counting overflow.",
        MetricType::GAUGE,
        &["metric"],
    ),
    (
        METRIC_OVERFLOW,
        "Events counted in a [[metrics]] rule's __overflow__ series because its series limit was reached.",
        MetricType::COUNTER,
        &["metric"],
    ),
    (
        METRIC_INVALID,
        "Events a [[metrics]] rule matched but could not measure: its value field missing or not a valid number.",
        MetricType::COUNTER,
        &["metric", "reason"],
    ),
    (
        METRIC_MEMORY,
        "Approximate memory held by a [[metrics]] rule's series.",
        MetricType::GAUGE,
        &["metric"],
    ),
];

/// Every live tap, rendered by one collector on the process registry.
struct Taps {
    descs: Vec<Desc>,
    live: Mutex<Vec<Weak<Shared>>>,
}

struct Registered(Arc<Taps>);

impl Collector for Registered {
    fn desc(&self) -> Vec<&Desc> {
        self.0.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let live: Vec<Arc<Shared>> = {
            let mut list = self.0.live.lock().unwrap_or_else(|e| e.into_inner());
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for shared in live.iter().rev() {
            // The newest tap wins a name clash (two pipelines in one test
            // process), so a label set is never rendered twice.
            out.extend(render(shared, &mut seen));
        }
        out
    }
}

fn taps() -> &'static Arc<Taps> {
    static TAPS: OnceLock<Arc<Taps>> = OnceLock::new();
    TAPS.get_or_init(|| {
        let descs = FAMILIES
            .iter()
            .filter_map(|(name, help, _, labels)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels.iter().map(|l| l.to_string()).collect(),
                    Default::default(),
                )
                .ok()
            })
            .collect();
        let taps = Arc::new(Taps {
            descs,
            live: Mutex::new(Vec::new()),
        });
        register("sluice_sli_*", Registered(taps.clone()));
        taps
    })
}

/// Makes a tap's series part of `/metrics` until it is dropped.
pub(crate) fn attach(shared: &Arc<Shared>) {
    taps().live.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(shared));
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_owned());
    l.set_value(value.to_owned());
    l
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs.iter().map(|(n, v)| label(n, v)).collect()
}

fn counter(labels: Vec<LabelPair>, v: u64) -> Metric {
    counter_value(labels, v as f64)
}

fn counter_value(labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(v);
    let mut m = Metric::from_label(labels);
    m.set_counter(c);
    m
}

fn gauge(labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::from_label(labels);
    m.set_gauge(g);
    m
}

/// Renders the rules of one tap whose names are not in `seen` yet.
fn render(shared: &Shared, seen: &mut std::collections::BTreeSet<Arc<str>>) -> Vec<MetricFamily> {
    let now_ms = shared.now_ms();
    render_state(&shared.compiled, &mut shared.lock(), now_ms, seen)
}

/// Renders `state` as of `now_ms` on its tap's clock.
pub(crate) fn render_state(
    compiled: &Compiled,
    state: &mut TapState,
    now_ms: u64,
    seen: &mut std::collections::BTreeSet<Arc<str>>,
) -> Vec<MetricFamily> {
    let mut fams: [(MetricFamily, Vec<Metric>); 13] = FAMILIES.map(|(name, help, ty, _)| {
        let mut f = MetricFamily::default();
        f.set_name(name.to_string());
        f.set_help(help.to_string());
        f.set_field_type(ty);
        (f, Vec::new())
    });
    let [requests, latency, burn, objective, threshold, series_count, overflow, incomplete, memory, m_series, m_overflow, m_invalid, m_memory] =
        &mut fams;
    let mut derived = Vec::new();

    for (rule, r) in compiled.rules.iter().zip(state.rules.iter_mut()) {
        if let Some(spec) = &rule.metric {
            if !seen.insert(format!("[[metrics]] {}", spec.family).into()) {
                continue;
            }
            derived.push(render_metric_rule(compiled, rule, spec, r));
            let metric = labels(&[("metric", &rule.name)]);
            m_series.1.push(gauge(metric.clone(), r.table.len() as f64));
            m_overflow.1.push(counter(metric.clone(), r.table.overflow_events()));
            for (reason, n) in INVALID_VALUE_REASONS.iter().zip(r.incomplete) {
                m_invalid.1.push(counter(labels(&[("metric", &rule.name), ("reason", reason)]), n));
            }
            m_memory.1.push(gauge(metric, r.table.heap_bytes() as f64));
            continue;
        }
        if !seen.insert(rule.name.clone()) {
            continue;
        }
        let sli = &*rule.name;
        let names = &compiled.groups[rule.group].names;
        let outcomes = if rule.latency.as_ref().is_some_and(|l| l.threshold.is_some()) {
            3
        } else {
            2
        };
        // (service, release) → counts per window, summed over routes/methods.
        let mut budget: BTreeMap<(String, String), Vec<Counts>> = BTreeMap::new();
        let windows = rule.windows.clone();
        for s in r.table.iter_mut() {
            s.advance(&windows, now_ms);
            let mut base = vec![label("sli", sli)];
            base.extend(names.iter().zip(s.label_values()).map(|(n, v)| label(n, v)));
            for (o, name) in super::series::Outcome::LABELS.iter().enumerate().take(outcomes) {
                let mut l = base.clone();
                l.push(label("outcome", name));
                requests.1.push(counter(l, s.outcomes[o]));
            }
            if rule.latency.is_some() {
                latency.1.push(histogram(base, &rule.bounds, &s.buckets, s.sum));
            }
            if !windows.is_empty() {
                let mut values = s.label_values();
                let service = values.next().unwrap_or_default().to_owned();
                let release = values.next().unwrap_or_default().to_owned();
                let cum = s.counts();
                let acc = budget
                    .entry((service, release))
                    .or_insert_with(|| vec![Counts::default(); windows.len()]);
                for (a, ring) in acc.iter_mut().zip(s.rings.iter()) {
                    let c = ring.in_window(cum);
                    a.total += c.total;
                    a.bad += c.bad;
                }
            }
        }
        if let Some(obj) = rule.objective {
            objective.1.push(gauge(labels(&[("sli", sli)]), obj));
            for ((service, release), counts) in &budget {
                for (w, c) in windows.iter().zip(counts) {
                    let ratio = if c.total == 0 { 0.0 } else { c.bad as f64 / c.total as f64 };
                    let l = labels(&[("sli", sli), ("service", service), ("release", release), ("window", &w.label)]);
                    burn.1.push(gauge(l, ratio / (1.0 - obj)));
                }
            }
        }
        if let Some(t) = rule.latency.as_ref().and_then(|l| l.threshold) {
            threshold.1.push(gauge(labels(&[("sli", sli)]), t));
        }
        series_count.1.push(gauge(labels(&[("sli", sli)]), r.table.len() as f64));
        overflow.1.push(counter(labels(&[("sli", sli)]), r.table.overflow_events()));
        for (reason, n) in INCOMPLETE_REASONS.iter().zip(r.incomplete) {
            incomplete.1.push(counter(labels(&[("sli", sli), ("reason", reason)]), n));
        }
        memory.1.push(gauge(labels(&[("sli", sli)]), r.table.heap_bytes() as f64));
    }
    // The text encoder rejects empty families (an SLI without latency).
    derived
        .into_iter()
        .chain(fams)
        .filter(|(_, metrics)| !metrics.is_empty())
        .map(|(mut f, metrics)| {
            f.set_metric(metrics);
            f
        })
        .collect()
}

/// A histogram metric from per-bucket (not cumulative) counts, the last
/// being `+Inf`.
fn histogram(labels: Vec<LabelPair>, bounds: &[f64], counts: &[u64], sum: f64) -> Metric {
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(bounds.len());
    for (bound, n) in bounds.iter().zip(counts) {
        cumulative += n;
        let mut b = Bucket::default();
        b.set_upper_bound(*bound);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    let mut h = Histogram::default();
    h.set_bucket(buckets);
    h.set_sample_count(counts.iter().sum());
    h.set_sample_sum(sum);
    let mut m = Metric::from_label(labels);
    m.set_histogram(h);
    m
}

/// The family of one `[[metrics]]` rule: a series per label combination
/// (the overflow series last), labelled as configured. A counter's value
/// is the sum of its increments, a gauge's the last value seen.
fn render_metric_rule(compiled: &Compiled, rule: &CompiledRule, spec: &MetricFamilySpec, r: &mut RuleState) -> (MetricFamily, Vec<Metric>) {
    let mut f = MetricFamily::default();
    f.set_name(spec.family.to_string());
    f.set_help(spec.help.to_string());
    f.set_field_type(match spec.kind {
        MetricKind::Counter => MetricType::COUNTER,
        MetricKind::Gauge => MetricType::GAUGE,
        MetricKind::Histogram => MetricType::HISTOGRAM,
    });
    let names = &compiled.groups[rule.group].names;
    let mut metrics = Vec::new();
    for s in r.table.iter_mut() {
        let pairs: Vec<LabelPair> = names.iter().zip(s.label_values()).map(|(n, v)| label(n, v)).collect();
        metrics.push(match spec.kind {
            MetricKind::Counter => counter_value(pairs, s.sum),
            MetricKind::Gauge => gauge(pairs, s.sum),
            MetricKind::Histogram => histogram(pairs, &rule.bounds, &s.buckets, s.sum),
        });
    }
    (f, metrics)
}
