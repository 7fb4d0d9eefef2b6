//! `type = "prometheus_scrape"`: pulls `/metrics` from static targets and,
//! in Kubernetes, from this node's pods annotated
//! `prometheus.io/scrape: "true"`.
//!
//! Each target is scraped every `interval` on its own task, at an offset
//! within the interval fixed by its URL (as Prometheus spreads its scrapes).
//! A scrape asks for OpenMetrics or text 0.0.4 with Prometheus' `Accept`
//! header, parses the body by its `Content-Type` ([`exposition`]), and
//! sends one metric batch: one JSON sample per metric (histograms and
//! summaries whole), then `up`, `scrape_duration_seconds` and
//! `scrape_samples_scraped` for the target, as Prometheus records them.
//!
//! Labels: the target's `job` and `instance` (and, for a pod, `namespace`,
//! `pod` and `container`) are added; a scraped label of the same name is
//! renamed `exported_<name>`, or kept with `honor_labels = true`. A pod's
//! samples carry that pod's metadata (release, process type, `kubernetes`)
//! exactly as its log lines do: the same file source's pod cache and the
//! same [`kubernetes::metadata`] build it.
//!
//! The series limit: each target's guard remembers the series it sent (as
//! 64-bit hashes), and the source's budget counts them all; past
//! `max_series`, a new series is dropped and counted
//! in `sluice_metric_updates_dropped_total{reason="series_limit"}`, so
//! memory is fixed by the configuration whatever the targets expose.

mod config;
pub(crate) mod exposition;

pub use config::PrometheusScrapeConfig;

use prometheus::IntGaugeVec;
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use self::exposition::{Exposition, Format, Invalid, Limits, Value};
use super::file::kubernetes::{self, PathMeta, PodInfo, SharedPods};
use super::{SourceComponent, SourceCx, SourceError};
use crate::enrich::SourceContext;
use crate::event::{BatchBuilder, EventKind, FieldSet};
use crate::metrics::sample::{write_sample, SampleValue};
use crate::metrics::source_metrics;
use crate::pipeline::{PipelineClosed, SourceOutput};

/// The `Accept` header Prometheus sends: OpenMetrics first, then text.
const ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                      text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// How often the pod cache is looked at for new, changed and gone pods.
const DISCOVERY_TICK: Duration = Duration::from_secs(1);

/// Why one scrape failed (its target's `up` is 0).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScrapeError {
    /// No answer, or the connection broke, or the timeout passed.
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The target answered with an error status.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// The body was larger than `max_body_bytes`.
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
}

/// `sluice_scrape_targets{source}`: targets scraped now.
fn targets_gauge() -> &'static IntGaugeVec {
    static G: OnceLock<IntGaugeVec> = OnceLock::new();
    G.get_or_init(|| {
        crate::telemetry::gauge_vec(
            "sluice_scrape_targets",
            "Targets a prometheus_scrape source scrapes now (static and discovered).",
            &["source"],
        )
    })
}

/// One thing to scrape.
#[derive(Debug, PartialEq)]
struct Target {
    url: String,
    /// `job`, `instance`, and the pod's labels; added to every series.
    labels: Vec<(String, String)>,
    /// The target's metadata (the pod's, for a pod).
    meta: serde_json::Map<String, serde_json::Value>,
}

/// The series limit of one source: the series its targets hold, against
/// `max_series`. Shared by the targets' tasks.
#[derive(Debug)]
pub(crate) struct SeriesBudget {
    max_series: usize,
    /// The sum of the targets' [`SeriesGuard::len`]; at most `max_series`.
    held: usize,
}

impl SeriesBudget {
    /// A budget with no series held.
    pub(crate) fn new(max_series: usize) -> SeriesBudget {
        SeriesBudget { max_series, held: 0 }
    }
}

/// The series one target has sent (as 64-bit hashes), with when each was
/// last sent; new ones count against the source's [`SeriesBudget`].
///
/// One table per target rather than one for the source: a scrape touches
/// a table of its own target's size (1,000 series: some 25 KB) instead of
/// hopping through one of every series of every target, whose cache misses
/// were a quarter of the scrape's CPU at 1,000 targets. Targets never share
/// a series unless `honor_labels` lets one target's labels equal another's;
/// then the series counts once per target.
#[derive(Debug)]
pub(crate) struct SeriesGuard {
    expire_after: Duration,
    /// Keyed by the series' hash (already a hash: foldhash rehashes it
    /// cheaply).
    seen: hashbrown::HashMap<u64, Instant>,
}

impl SeriesGuard {
    /// An empty guard.
    pub(crate) fn new(expire_after: Duration) -> SeriesGuard {
        SeriesGuard {
            expire_after,
            seen: hashbrown::HashMap::new(),
        }
    }

    /// True when the series may be sent: known, or new within the budget.
    fn admit(&mut self, budget: &mut SeriesBudget, key: u64, now: Instant) -> bool {
        if let Some(t) = self.seen.get_mut(&key) {
            *t = now;
            return true;
        }
        if budget.held >= budget.max_series {
            return false;
        }
        budget.held += 1;
        self.seen.insert(key, now);
        true
    }

    /// Forgets series not sent for `expire_after`; returns how many.
    fn expire(&mut self, budget: &mut SeriesBudget, now: Instant) -> usize {
        let before = self.seen.len();
        let keep = self.expire_after;
        self.seen.retain(|_, t| now.saturating_duration_since(*t) < keep);
        let gone = before - self.seen.len();
        budget.held = budget.held.saturating_sub(gone);
        gone
    }

    /// Forgets every series (the target is gone); returns how many.
    fn release(&mut self, budget: &mut SeriesBudget) -> usize {
        let gone = self.seen.len();
        self.seen.clear();
        budget.held = budget.held.saturating_sub(gone);
        gone
    }

    /// Series held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

/// What every target task of one source shares.
struct Scraper {
    source: Arc<str>,
    client: reqwest::Client,
    interval: Duration,
    timeout: Duration,
    honor_labels: bool,
    honor_timestamps: bool,
    limits: Limits,
    max_body_bytes: u64,
    budget: Mutex<SeriesBudget>,
    expire_after: Duration,
    /// Hashes series for the guard: foldhash, randomly seeded per source
    /// (SipHash cost a tenth of the scrape's CPU).
    hasher: hashbrown::DefaultHashBuilder,
    output: SourceOutput,
}

/// Counts of one scrape's render, added to the self-metrics once.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct RenderCounts {
    /// Samples written (per-target series included).
    pub(crate) written: u64,
    /// New series past the limit, dropped.
    pub(crate) dropped: u64,
    /// Metrics with a NaN or infinite number, which the sample schema
    /// cannot carry (JSON has no such numbers), skipped.
    pub(crate) not_finite: u64,
}

impl Scraper {
    async fn fetch(&self, url: &str) -> Result<(Vec<u8>, Format), ScrapeError> {
        let mut resp = self
            .client
            .get(url)
            .header("Accept", ACCEPT)
            .header("X-Prometheus-Scrape-Timeout-Seconds", format!("{}", self.timeout.as_secs_f64()))
            .timeout(self.timeout)
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(ScrapeError::Status(resp.status().as_u16()));
        }
        let format = Format::from_content_type(resp.headers().get("content-type").and_then(|v| v.to_str().ok()));
        let mut body = Vec::with_capacity(resp.content_length().unwrap_or(64 * 1024).min(self.max_body_bytes) as usize);
        while let Some(chunk) = resp.chunk().await? {
            if (body.len() + chunk.len()) as u64 > self.max_body_bytes {
                return Err(ScrapeError::TooLarge(self.max_body_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, format))
    }

    /// Scrapes `target` once and sends its batch; `Err` once the pipeline
    /// is closed.
    async fn scrape(
        &self,
        target: &Target,
        context: &Arc<SourceContext>,
        was_up: &mut bool,
        series: &mut SeriesGuard,
    ) -> Result<(), PipelineClosed> {
        let started = Instant::now();
        let scrape_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let fetched = self.fetch(&target.url).await;
        let duration = started.elapsed().as_secs_f64();
        let body = match fetched {
            Ok(body) => {
                if !*was_up {
                    tracing::info!(source = %self.source, target = %target.url, "scrape target up");
                }
                *was_up = true;
                Some(body)
            }
            Err(e) => {
                if *was_up {
                    tracing::warn!(source = %self.source, target = %target.url, error = %e, "scrape failed");
                }
                *was_up = false;
                None
            }
        };
        // The parsed body borrows `body` and is gone before the send.
        let batch = {
            let expo = body.as_ref().map(|(b, format)| exposition::parse(b, *format, self.limits));
            // Room for a usual target; a huge one (mostly refused by the
            // series guard) grows the batch as it goes.
            let n = expo.as_ref().map_or(3, |e| e.metrics.len() + 3).min(4096);
            let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), n * 200, n);
            let now = Instant::now();
            let (counts, expired) = {
                let mut budget = self.budget.lock().unwrap_or_else(PoisonError::into_inner);
                let counts = render(
                    &mut out,
                    RenderInput {
                        target,
                        expo: expo.as_ref(),
                        scrape_ms,
                        duration,
                        honor_labels: self.honor_labels,
                        honor_timestamps: self.honor_timestamps,
                        fragment: &context.fragment,
                    },
                    series,
                    &mut budget,
                    &self.hasher,
                    now,
                );
                (counts, series.expire(&mut budget, now))
            };
            let m = source_metrics();
            let source: &str = &self.source;
            m.updates.with_label_values(&[source]).inc_by(counts.written);
            if counts.dropped > 0 {
                m.dropped.with_label_values(&[source, "series_limit"]).inc_by(counts.dropped);
            }
            if counts.not_finite > 0 {
                m.dropped.with_label_values(&[source, "not_finite"]).inc_by(counts.not_finite);
            }
            if expired > 0 {
                m.expired.with_label_values(&[source]).inc_by(expired as u64);
            }
            if let Some(e) = &expo {
                for reason in Invalid::ALL {
                    let n = e.invalid[reason as usize];
                    if n > 0 {
                        m.invalid.with_label_values(&[source, reason.as_str()]).inc_by(n);
                    }
                }
            }
            out.build(context.clone(), SystemTime::now()).with_kind(EventKind::Metric)
        };
        drop(body);
        self.output.send_batch(batch).await
    }

    /// Sets `sluice_metric_series` (each target expires its own silent
    /// series as it scrapes).
    fn report_series(&self) {
        let held = self.budget.lock().unwrap_or_else(PoisonError::into_inner).held;
        source_metrics().series.with_label_values(&[&self.source]).set(held as i64);
    }

    /// Gives back a stopped target's series to the budget; they count as
    /// expired.
    fn release(&self, series: &mut SeriesGuard) {
        let gone = series.release(&mut self.budget.lock().unwrap_or_else(PoisonError::into_inner));
        if gone > 0 {
            source_metrics().expired.with_label_values(&[&self.source]).inc_by(gone as u64);
        }
    }
}

/// What one scrape's batch is made from.
pub(crate) struct RenderInput<'a> {
    target: &'a Target,
    /// The parsed body; `None` when the scrape failed.
    expo: Option<&'a Exposition<'a>>,
    scrape_ms: i64,
    duration: f64,
    honor_labels: bool,
    honor_timestamps: bool,
    fragment: &'a crate::enrich::Fragment,
}

/// Writes one scrape's samples and the target's `up`,
/// `scrape_duration_seconds` and `scrape_samples_scraped` into `out`.
fn render(
    out: &mut BatchBuilder,
    input: RenderInput<'_>,
    guard: &mut SeriesGuard,
    budget: &mut SeriesBudget,
    hasher: &impl BuildHasher,
    now: Instant,
) -> RenderCounts {
    let mut counts = RenderCounts::default();
    let target_labels: Vec<(&str, &str)> = input.target.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut labels: Vec<(Cow<'_, str>, &str)> = Vec::with_capacity(16);
    let mut bounds = Vec::new();
    let mut cumulative = Vec::new();
    for m in input.expo.map(|e| e.metrics.as_slice()).unwrap_or_default() {
        if !all_finite(&m.value) {
            counts.not_finite += 1;
            continue;
        }
        let scraped = input.expo.map(|e| e.labels_of(m)).unwrap_or_default();
        merge_labels(scraped, &target_labels, input.honor_labels, &mut labels);
        let mut h = hasher.build_hasher();
        m.name.hash(&mut h);
        std::mem::discriminant(&m.value).hash(&mut h);
        for (k, v) in &labels {
            k.hash(&mut h);
            v.hash(&mut h);
        }
        if !guard.admit(budget, h.finish(), now) {
            counts.dropped += 1;
            continue;
        }
        let ts = match m.timestamp_ms {
            Some(ts) if input.honor_timestamps => ts,
            _ => input.scrape_ms,
        };
        let value = match &m.value {
            Value::Counter(v) => SampleValue::Counter(*v),
            Value::Gauge(v) => SampleValue::Gauge(*v),
            Value::Histogram { buckets, count, sum } => {
                bounds.clear();
                cumulative.clear();
                for (le, c) in buckets {
                    bounds.push(*le);
                    cumulative.push(*c);
                }
                SampleValue::Histogram {
                    bounds: &bounds,
                    cumulative: &cumulative,
                    count: *count,
                    sum: *sum,
                }
            }
            Value::Summary { quantiles, count, sum } => SampleValue::Summary {
                quantiles,
                count: *count,
                sum: *sum,
            },
        };
        write_sample(
            out.buffer(),
            m.name,
            labels.iter().map(|(k, v)| (k.as_ref(), *v)),
            ts,
            &value,
            input.fragment,
        );
        out.finish_event();
        counts.written += 1;
    }
    let scraped = input.expo.map_or(0, |e| e.samples);
    for (name, v) in [
        ("up", if input.expo.is_some() { 1.0 } else { 0.0 }),
        ("scrape_duration_seconds", input.duration),
        ("scrape_samples_scraped", scraped as f64),
    ] {
        write_sample(
            out.buffer(),
            name,
            target_labels.iter().copied(),
            input.scrape_ms,
            &SampleValue::Gauge(v),
            input.fragment,
        );
        out.finish_event();
        counts.written += 1;
    }
    counts
}

/// Whether every number of a metric is finite (JSON, and so the sample
/// schema, has no NaN or infinities).
fn all_finite(v: &Value) -> bool {
    match v {
        Value::Counter(x) | Value::Gauge(x) => x.is_finite(),
        Value::Histogram { buckets, count, sum } => {
            count.is_finite() && sum.is_finite() && buckets.iter().all(|(le, c)| le.is_finite() && c.is_finite())
        }
        Value::Summary { quantiles, count, sum } => {
            count.is_finite() && sum.is_finite() && quantiles.iter().all(|(q, x)| q.is_finite() && x.is_finite())
        }
    }
}

/// The labels of one series: the scraped ones (empty values left out) and
/// the target's, with Prometheus' rule for a name in both.
fn merge_labels<'a>(
    scraped: &'a [(&'a str, Cow<'a, str>)],
    target: &[(&'a str, &'a str)],
    honor: bool,
    labels: &mut Vec<(Cow<'a, str>, &'a str)>,
) {
    labels.clear();
    let in_target = |k: &str| target.iter().any(|(t, _)| *t == k);
    let in_scraped = |k: &str| scraped.iter().any(|(s, _)| *s == k);
    for (k, v) in scraped {
        if v.is_empty() {
            continue;
        }
        if !honor && in_target(k) {
            let mut name = format!("exported_{k}");
            while in_target(&name) || in_scraped(&name) {
                name.insert_str(0, "exported_");
            }
            labels.push((Cow::Owned(name), v));
        } else {
            labels.push((Cow::Borrowed(*k), v));
        }
    }
    for (k, v) in target {
        if honor && scraped.iter().any(|(s, sv)| s == k && !sv.is_empty()) {
            continue;
        }
        labels.push((Cow::Borrowed(*k), *v));
    }
}

/// `host:port` of a URL, as Prometheus' `instance` label.
fn instance_of(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The targets this node's annotated pods make.
fn pod_targets(shared: &SharedPods, base: &serde_json::Map<String, serde_json::Value>, job: &str) -> Vec<Target> {
    let mut targets = Vec::new();
    for pod in shared.cache.live() {
        if let Some(t) = pod_target(&pod, shared, base, job) {
            targets.push(t);
        }
    }
    targets
}

fn pod_target(pod: &PodInfo, shared: &SharedPods, base: &serde_json::Map<String, serde_json::Value>, job: &str) -> Option<Target> {
    let annotation = |k: &str| pod.annotations.get(k).and_then(|v| v.as_str());
    if annotation("prometheus.io/scrape") != Some("true") {
        return None;
    }
    let ip = pod.ip.as_deref()?;
    let port = match annotation("prometheus.io/port") {
        Some(p) => p.trim().parse::<u16>().ok()?,
        None => pod.ports.first()?.1,
    };
    let path = annotation("prometheus.io/path").unwrap_or("/metrics");
    let path = if path.starts_with('/') {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(format!("/{path}"))
    };
    let scheme = match annotation("prometheus.io/scheme") {
        None | Some("http") => "http",
        Some("https") => "https",
        Some(_) => return None,
    };
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip.to_owned() };
    let url = format!("{scheme}://{host}:{port}{path}");
    let parsed = reqwest::Url::parse(&url).ok()?;
    // The container that declares the port; else the pod's first one.
    let container = pod
        .ports
        .iter()
        .find(|(_, p)| *p == port)
        .map(|(c, _)| c.clone())
        .or_else(|| pod.images.first().map(|(c, _)| c.clone()))
        .unwrap_or_default();
    let pm = PathMeta {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        pod_uid: Some(pod.uid.clone()),
        container: container.clone(),
        restart: None,
        container_id: None,
    };
    let meta = kubernetes::metadata(base, &shared.config, &pm, Some(pod));
    Some(Target {
        url,
        labels: vec![
            ("job".into(), job.to_owned()),
            ("instance".into(), instance_of(&parsed)),
            ("namespace".into(), pod.namespace.clone()),
            ("pod".into(), pod.name.clone()),
            ("container".into(), container),
        ],
        meta,
    })
}

/// Scrapes one target every interval until `stop` fires (its sender is
/// dropped) or the pipeline closes.
async fn run_target(scraper: Arc<Scraper>, target: Target, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let context = Arc::new(SourceContext::new(
        scraper.source.clone(),
        "prometheus_scrape",
        String::new(),
        target.meta.clone(),
    ));
    // Spread the targets over the interval, each at a fixed offset.
    let interval_ms = scraper.interval.as_millis().max(1) as u64;
    let offset = Duration::from_millis(scraper.hasher.hash_one(&target.url) % interval_ms);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, scraper.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = true;
    let mut series = SeriesGuard::new(scraper.expire_after);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = ticks.tick() => {
                if scraper.scrape(&target, &context, &mut was_up, &mut series).await.is_err() {
                    break;
                }
            }
        }
    }
    scraper.release(&mut series);
}

/// A running target: what it scrapes, the sender whose drop stops it, and
/// its task.
type TargetTask = (Arc<Target>, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>);

/// The running target tasks, by URL.
#[derive(Default)]
struct Running {
    tasks: HashMap<String, TargetTask>,
}

impl Running {
    fn start(&mut self, scraper: &Arc<Scraper>, target: Target) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let url = target.url.clone();
        let kept = Arc::new(Target {
            url: target.url.clone(),
            labels: target.labels.clone(),
            meta: target.meta.clone(),
        });
        let handle = tokio::spawn(run_target(scraper.clone(), target, rx));
        self.tasks.insert(url, (kept, tx, handle));
    }

    /// Makes the discovered targets `want`, leaving `keep` (static) alone.
    fn sync(&mut self, scraper: &Arc<Scraper>, want: Vec<Target>, keep: &[String]) {
        let wanted: HashMap<&str, &Target> = want.iter().map(|t| (t.url.as_str(), t)).collect();
        let gone: Vec<String> = self
            .tasks
            .iter()
            .filter(|(url, (t, _, _))| !keep.contains(url) && wanted.get(url.as_str()).is_none_or(|w| **w != **t))
            .map(|(url, _)| url.clone())
            .collect();
        for url in gone {
            if let Some((_, stop, _)) = self.tasks.remove(&url) {
                drop(stop);
                tracing::info!(source = %scraper.source, target = %url, "scrape target removed");
            }
        }
        for t in want {
            if !self.tasks.contains_key(&t.url) {
                tracing::info!(source = %scraper.source, target = %t.url, "scrape target discovered");
                self.start(scraper, t);
            }
        }
    }

    async fn stop_all(self) {
        let mut handles = Vec::new();
        for (_, (_, stop, handle)) in self.tasks {
            drop(stop);
            handles.push(handle);
        }
        for h in handles {
            let _ = h.await;
        }
    }
}

impl SourceComponent for PrometheusScrapeConfig {
    /// Metric samples.
    fn produces(&self) -> EventKind {
        EventKind::Metric
    }

    /// Starts one task per static target, and the pod discovery.
    fn build(&self, cx: SourceCx) -> Result<super::Task<SourceError>, SourceError> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(self.timeout)
            .pool_max_idle_per_host(1)
            .build()
            .map_err(|e| {
                SourceError::new(
                    &cx.name,
                    super::SourceErrorKind::Setting {
                        key: "targets",
                        message: format!("cannot build the HTTP client: {e}"),
                    },
                )
            })?;
        let scraper = Arc::new(Scraper {
            source: cx.name.clone(),
            client,
            interval: self.interval,
            timeout: self.timeout,
            honor_labels: self.honor_labels,
            honor_timestamps: self.honor_timestamps,
            limits: Limits {
                max_label_value_bytes: self.max_label_value_bytes,
                max_labels: self.max_labels,
            },
            max_body_bytes: self.max_body_bytes.0,
            budget: Mutex::new(SeriesBudget::new(self.max_series)),
            expire_after: self.expire_after,
            hasher: Default::default(),
            output: cx.output.clone(),
        });
        let job = self.job.clone().unwrap_or_else(|| cx.name.to_string());
        let base = cx.enrich.metadata(None);
        let statics: Vec<Target> = self
            .targets
            .iter()
            .filter_map(|t| {
                let url = reqwest::Url::parse(t).ok()?;
                Some(Target {
                    url: t.clone(),
                    labels: vec![("job".into(), job.clone()), ("instance".into(), instance_of(&url))],
                    meta: base.clone(),
                })
            })
            .collect();
        let keep: Vec<String> = statics.iter().map(|t| t.url.clone()).collect();
        let pods_from = self.kubernetes.as_ref().map(|k| k.file_source.clone());
        let mut shutdown = cx.shutdown.clone();
        let expire_every = self.interval;
        Ok(Box::pin(async move {
            let mut running = Running::default();
            for t in statics {
                running.start(&scraper, t);
            }
            let mut last_generation = None;
            let mut warned = false;
            let mut last_expire = Instant::now();
            let mut tick = tokio::time::interval(DISCOVERY_TICK);
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.wait() => break,
                    _ = tick.tick() => {}
                }
                if last_expire.elapsed() >= expire_every {
                    last_expire = Instant::now();
                    scraper.report_series();
                }
                if let Some(from) = &pods_from {
                    match kubernetes::shared_pods(from) {
                        None if !warned => {
                            warned = true;
                            tracing::warn!(source = %scraper.source, file_source = %from, "no pod cache yet: kubernetes.file_source must name a file source with kubernetes.api = true");
                        }
                        None => {}
                        Some(shared) => {
                            let generation = shared.cache.generation();
                            if last_generation != Some(generation) {
                                last_generation = Some(generation);
                                running.sync(&scraper, pod_targets(&shared, &base, &job), &keep);
                            }
                        }
                    }
                }
                targets_gauge()
                    .with_label_values(&[&scraper.source])
                    .set(running.tasks.len() as i64);
            }
            running.stop_all().await;
            targets_gauge().with_label_values(&[&scraper.source]).set(0);
            Ok(())
        }))
    }
}

/// Parses an exposition in both formats and renders it under a small
/// series limit (the fuzz target's entry point): every written sample must
/// be valid in the metric sample schema, and no input may panic. Returns
/// the distinct series written (a body may repeat a series; the guard
/// bounds distinct series, not lines).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_exposition(data: &[u8]) -> usize {
    let limits = Limits {
        max_label_value_bytes: 64,
        max_labels: 8,
    };
    let mut distinct = std::collections::HashSet::new();
    for format in [Format::Text, Format::OpenMetrics] {
        let expo = exposition::parse(data, format, limits);
        let target = Target {
            url: "http://t/metrics".into(),
            labels: vec![("job".into(), "j".into()), ("instance".into(), "t:80".into())],
            meta: Default::default(),
        };
        let mut guard = SeriesGuard::new(Duration::from_secs(60));
        let mut budget = SeriesBudget::new(8);
        let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), 4096, 16);
        for honor_labels in [false, true] {
            render(
                &mut out,
                RenderInput {
                    target: &target,
                    expo: Some(&expo),
                    scrape_ms: 0,
                    duration: 0.0,
                    honor_labels,
                    honor_timestamps: true,
                    fragment: &Default::default(),
                },
                &mut guard,
                &mut budget,
                &std::collections::hash_map::RandomState::new(),
                Instant::now(),
            );
        }
        let batch = out.build(
            Arc::new(SourceContext::new(
                "fuzz".into(),
                "prometheus_scrape",
                String::new(),
                Default::default(),
            )),
            SystemTime::now(),
        );
        for e in batch.events() {
            match crate::metrics::Sample::parse(e) {
                Ok(s) => {
                    distinct.insert(format!("{}\u{0}{}\u{0}{:?}", s.name, s.kind.as_str(), s.labels));
                }
                Err(err) => panic!("rendered an invalid sample {err}: {}", String::from_utf8_lossy(e)),
            }
        }
    }
    distinct.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target() -> Target {
        Target {
            url: "http://h:9/metrics".into(),
            labels: vec![("job".into(), "node".into()), ("instance".into(), "h:9".into())],
            meta: Default::default(),
        }
    }

    fn rendered(body: &str, honor_labels: bool, guard: &mut (SeriesBudget, SeriesGuard)) -> (Vec<serde_json::Value>, RenderCounts) {
        let expo = exposition::parse(
            body.as_bytes(),
            Format::Text,
            Limits {
                max_label_value_bytes: 1024,
                max_labels: 16,
            },
        );
        let t = target();
        let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), 4096, 16);
        let counts = render(
            &mut out,
            RenderInput {
                target: &t,
                expo: Some(&expo),
                scrape_ms: 5000,
                duration: 0.25,
                honor_labels,
                honor_timestamps: true,
                fragment: &Default::default(),
            },
            &mut guard.1,
            &mut guard.0,
            &std::collections::hash_map::RandomState::new(),
            Instant::now(),
        );
        let batch = out.build(
            Arc::new(SourceContext::new(
                "t".into(),
                "prometheus_scrape",
                String::new(),
                Default::default(),
            )),
            SystemTime::now(),
        );
        (batch.events().map(|e| serde_json::from_slice(e).unwrap()).collect(), counts)
    }

    fn guard() -> (SeriesBudget, SeriesGuard) {
        (SeriesBudget::new(1000), SeriesGuard::new(Duration::from_secs(60)))
    }

    #[test]
    fn conflicting_labels_are_renamed_exported_unless_honor_labels() {
        let body = "m{job=\"app\",exported_job=\"x\",a=\"1\",empty=\"\"} 3 1000\n";
        let (s, _) = rendered(body, false, &mut guard());
        assert_eq!(
            s[0]["labels"],
            json!({"exported_exported_job": "app", "exported_job": "x", "a": "1", "job": "node", "instance": "h:9"})
        );
        assert_eq!(s[0]["timestamp_ms"], 1000, "the exposition's timestamp is kept");
        let (s, _) = rendered(body, true, &mut guard());
        assert_eq!(
            s[0]["labels"],
            json!({"job": "app", "exported_job": "x", "a": "1", "instance": "h:9"})
        );
    }

    #[test]
    fn every_scrape_reports_up_duration_and_samples_scraped_per_target() {
        let (s, counts) = rendered(
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\nbad{ 1\n",
            false,
            &mut guard(),
        );
        assert_eq!(counts.written, 4);
        let by = |n: &str| s.iter().find(|v| v["metric"] == n).cloned().unwrap();
        assert_eq!(by("h")["buckets"], json!([{"le": 1, "count": 1}]));
        assert_eq!(by("h")["count"], 2);
        assert_eq!(by("up")["value"], 1);
        assert_eq!(by("up")["labels"], json!({"job": "node", "instance": "h:9"}));
        assert_eq!(by("scrape_duration_seconds")["value"], 0.25);
        assert_eq!(by("scrape_samples_scraped")["value"], 4, "the bad line is not a sample");
        assert_eq!(by("up")["timestamp_ms"], 5000);
    }

    #[test]
    fn nan_and_infinite_values_are_skipped_and_counted_not_written_as_invalid_samples() {
        let (s, counts) = rendered(
            "m NaN\nn{a=\"1\"} -Inf\n# TYPE q summary\nq{quantile=\"0.5\"} NaN\nq_sum 0\nq_count 0\nok 1\n",
            false,
            &mut guard(),
        );
        assert_eq!(counts.not_finite, 3);
        for v in &s {
            assert!(v["value"] != serde_json::Value::Null, "{v}");
        }
        assert!(s.iter().any(|v| v["metric"] == "ok"));
    }

    #[test]
    fn a_million_distinct_label_values_stay_within_the_series_limit() {
        let mut g = guard();
        let mut dropped = 0;
        let mut written = 0;
        for chunk in 0..10 {
            let body: String = (0..100_000)
                .map(|i| format!("req_total{{user=\"u{}\"}} 1\n", chunk * 100_000 + i))
                .collect();
            let (_, counts) = rendered(&body, false, &mut g);
            dropped += counts.dropped;
            written += counts.written - 3;
        }
        assert_eq!(g.1.len(), 1000, "the guard holds at most max_series series");
        assert_eq!(g.0.held, 1000);
        assert_eq!(written, 1000);
        assert_eq!(dropped, 999_000, "every series past the limit is counted");
    }

    #[test]
    fn the_series_limit_is_the_sources_and_expired_or_released_series_free_their_place() {
        let mut budget = SeriesBudget::new(3);
        let mut a = SeriesGuard::new(Duration::from_secs(60));
        let mut b = SeriesGuard::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(a.admit(&mut budget, 1, t0));
        assert!(a.admit(&mut budget, 2, t0));
        assert!(b.admit(&mut budget, 3, t0));
        assert!(!b.admit(&mut budget, 4, t0), "the limit counts every target's series");
        assert!(a.admit(&mut budget, 1, t0), "a known series is always sent");
        let later = t0 + Duration::from_secs(61);
        assert!(a.admit(&mut budget, 1, later));
        assert_eq!(a.expire(&mut budget, later), 1, "series 2 was not sent for expire_after");
        assert!(b.admit(&mut budget, 4, later), "its place is free again");
        assert_eq!(b.release(&mut budget), 2, "a stopped target gives its series back");
        assert_eq!(budget.held, 1);
        assert_eq!((a.len(), b.len()), (1, 0));
    }

    #[test]
    fn annotated_pods_become_targets_with_their_log_metadata() {
        let pod = PodInfo::from_json(&json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1",
                         "labels": {"app.kubernetes.io/version": "2.0.1", "app.kubernetes.io/component": "web"},
                         "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "stats"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "side", "image": "s:1"}, {"name": "app", "image": "a:1", "ports": [{"containerPort": 8080}]}]},
            "status": {"podIP": "10.0.0.7"}
        }))
        .unwrap();
        let shared = SharedPods {
            config: Default::default(),
            cache: Default::default(),
        };
        let t = pod_target(&pod, &shared, &Default::default(), "pods").unwrap();
        assert_eq!(t.url, "http://10.0.0.7:8080/stats");
        assert!(t.labels.contains(&("container".into(), "app".into())));
        assert_eq!(t.meta["release"]["version"], "2.0.1");
        assert_eq!(t.meta["process"]["type"], "web");
        let mut quiet = pod.clone();
        quiet.annotations.remove("prometheus.io/scrape");
        assert!(pod_target(&quiet, &shared, &Default::default(), "pods").is_none());
    }
}
