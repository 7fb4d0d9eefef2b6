//! `type = "loki"`: pushes events to Grafana Loki.
//!
//! Each event becomes one entry: its line is the event's JSON, its time
//! comes from `timestamp_field` (else the receive time), its labels from
//! templates, and chosen high-cardinality fields travel as structured
//! metadata. Entries are grouped into streams by label set and ordered by
//! time within each stream; a push leaves when it reaches `batch.max_bytes`
//! or `batch.max_events`, or `batch.timeout` after its first entry.
//!
//! Delivery: 429, 5xx and connection errors are retried with exponential
//! backoff and jitter (honouring `Retry-After`) until they succeed; other
//! 4xx are not retried. A 400 in which Loki refused only some entries (out
//! of order, too old) keeps what Loki stored and counts the rest. A source
//! batch is acknowledged once every push that carries its events is done;
//! one push can carry several batches and one batch can span pushes.

pub mod config;
pub mod encode;
mod rejection;
mod timestamp;

pub use config::LokiConfig;

use bytes::Bytes;
use prometheus::{Histogram, IntCounter, IntCounterVec, Opts};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::task::JoinSet;

use self::config::{Compression, Encoding, TimestampFormat};
use self::encode::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter, Timestamp};
use super::http::{self, AckTracker, Backoff, ErrorKind, HealthFlag, RetryConfig, TrackId};
use super::template::BoundTemplate;
use super::{SinkCx, SinkError};
use crate::buffer::{QueueItem, QueueReceiver};
use crate::event::{AckOutcome, Batch, FieldPath};
use crate::pipeline::Task;
use crate::telemetry::metrics;

/// Metrics only the Loki sink has.
struct LokiMetrics {
    /// `sluice_loki_entries_rejected_total{sink,reason}`.
    rejected: IntCounterVec,
}

fn loki_metrics() -> &'static LokiMetrics {
    static M: OnceLock<LokiMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let rejected = IntCounterVec::new(
            Opts::new(
                "sluice_loki_entries_rejected_total",
                "Entries Loki refused in an otherwise accepted push, by reason (out_of_order, too_old, other).",
            ),
            &["sink", "reason"],
        )
        .expect("valid metric definition");
        // Registering can only fail on a duplicate name, which a test that
        // builds several sinks would hit; the counter still works.
        let _ = metrics().registry.register(Box::new(rejected.clone()));
        LokiMetrics { rejected }
    })
}

impl LokiConfig {
    /// Prepares the client, checks Loki (`GET /ready`) and starts the sink.
    pub async fn build(&self, cx: SinkCx, input: QueueReceiver) -> Result<Task<SinkError>, SinkError> {
        let fatal = |message: String| SinkError::Fatal {
            sink: cx.name.to_string(),
            message,
        };
        let shared = Arc::new(Shared::new(self, &cx).map_err(fatal)?);
        if self.healthcheck {
            shared.healthcheck(&self.endpoint).await.map_err(fatal)?;
        }
        let sink = LokiSink::new(self, &cx, shared);
        Ok(Box::pin(sink.run(input)))
    }
}

/// What push tasks share: the client, the target and the counters.
struct Shared {
    name: Arc<str>,
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    encoding: Encoding,
    compression: Compression,
    gzip_level: u32,
    retry: RetryConfig,
    health: HealthFlag,
    events: IntCounter,
    bytes: IntCounter,
    retries: IntCounter,
    dropped: IntCounter,
    duration: Histogram,
}

impl Shared {
    fn new(cfg: &LokiConfig, cx: &SinkCx) -> Result<Shared, String> {
        let base = cfg.endpoint.trim_end_matches('/');
        let url = reqwest::Url::parse(&format!("{base}{}", cfg.path)).map_err(|e| format!("invalid push URL: {e}"))?;
        let mut headers = HeaderMap::new();
        let compression = cfg.effective_compression();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(match cfg.encoding {
                Encoding::Protobuf => "application/x-protobuf",
                Encoding::Json => "application/json",
            }),
        );
        if compression == Compression::Gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        if let Some(t) = &cfg.tenant_id {
            let v = HeaderValue::from_str(t).map_err(|_| "tenant_id is not a valid header value".to_owned())?;
            headers.insert("X-Scope-OrgID", v);
        }
        if let Some(a) = &cfg.auth {
            let value = match (&a.user, &a.password_file, &a.bearer_token_file) {
                (Some(user), Some(pw), _) => {
                    use base64::Engine;
                    let password = http::read_secret_file(pw, "auth.password_file")?;
                    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                    format!("Basic {token}")
                }
                (_, _, Some(f)) => format!("Bearer {}", http::read_secret_file(f, "auth.bearer_token_file")?),
                _ => return Err("auth: set user and password_file, or bearer_token_file".into()),
            };
            let mut v = HeaderValue::from_str(&value).map_err(|_| "auth: the credentials are not a valid header value".to_owned())?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let m = metrics();
        let name: &str = &cx.name;
        Ok(Shared {
            name: cx.name.clone(),
            client: http::client(cfg.request.timeout)?,
            url,
            headers,
            encoding: cfg.encoding,
            compression,
            gzip_level: cfg.gzip_level,
            retry: cfg.retry.clone(),
            health: HealthFlag::new(cx.health.clone()),
            events: m.sink_events.with_label_values(&[name]),
            bytes: m.sink_bytes.with_label_values(&[name]),
            retries: m.sink_retries.with_label_values(&[name]),
            dropped: m.events_dropped.with_label_values(&[name, "rejected"]),
            duration: m.sink_request_duration.with_label_values(&[name]),
        })
    }

    /// `GET {endpoint}/ready`. Unreachable or refused credentials stop the
    /// start; any other answer (Loki still starting, a gateway without
    /// `/ready`) starts the sink as unhealthy until a push succeeds.
    async fn healthcheck(&self, endpoint: &str) -> Result<(), String> {
        let ready = format!("{}/ready", endpoint.trim_end_matches('/'));
        let mut req = self.client.get(&ready).timeout(Duration::from_secs(10));
        for key in [AUTHORIZATION.as_str(), "X-Scope-OrgID"] {
            if let Some(v) = self.headers.get(key) {
                req = req.header(key, v.clone());
            }
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                tracing::info!(sink = %self.name, url = %ready, "Loki is ready");
                Ok(())
            }
            Ok(resp) if matches!(resp.status().as_u16(), 401 | 403) => Err(format!(
                "Loki at {endpoint} refused our credentials ({}): check auth.user/auth.password_file or auth.bearer_token_file",
                resp.status()
            )),
            Ok(resp) => {
                tracing::warn!(sink = %self.name, url = %ready, status = %resp.status(),
                    "Loki is reachable but not ready; starting, and /ready reports this sink unhealthy until a push succeeds");
                self.health.set_unhealthy();
                Ok(())
            }
            Err(e) => Err(format!(
                "cannot reach Loki at {endpoint}: {} (set healthcheck = false to start anyway)",
                http::error_chain(&e)
            )),
        }
    }
}

/// Where a label's value comes from.
#[derive(Debug, Clone)]
enum LabelValue {
    /// The source's name (the default `source` label).
    SourceName,
    /// A template over event fields and metadata.
    Template(BoundTemplate),
}

/// Per-event plan computed in the first pass over a batch.
#[derive(Debug, Clone, Copy)]
struct EventPlan {
    /// Index into the batch's distinct label sets.
    key: u32,
    ts: i64,
    /// Range of this event's pairs in `meta_ranges`.
    meta_start: u32,
    meta_len: u32,
}

/// The push being filled.
#[derive(Default)]
struct Pending {
    req: PushRequest,
    /// Stream label sets as JSON objects (JSON encoding only), parallel to
    /// `req.streams`.
    stream_json: Vec<String>,
    /// Label text → index in `req.streams`.
    index: HashMap<String, usize>,
    events: usize,
    bytes: usize,
    /// Batches with events in this push, each once.
    parts: Vec<TrackId>,
    opened: Option<Instant>,
}

/// A push ready to go.
struct Sealed {
    req: PushRequest,
    stream_json: Vec<String>,
    events: usize,
    bytes: usize,
    parts: Vec<TrackId>,
}

/// How a push ended.
enum PushOutcome {
    /// Loki stored every entry.
    Delivered,
    /// Loki stored some entries and refused others (counted), or refused
    /// the whole push with a 4xx (counted): not retried.
    Dropped,
    /// The sink cannot work (credentials, address): stop.
    Fatal(String),
}

struct PushResult {
    parts: Vec<TrackId>,
    outcome: PushOutcome,
}

/// The sink's state, owned by its task.
struct LokiSink {
    shared: Arc<Shared>,
    labels: Vec<(String, LabelValue)>,
    /// True when some label depends on the event, not only on the batch.
    per_event_labels: bool,
    metadata: Vec<(Bytes, Option<usize>)>,
    ts_column: Option<usize>,
    ts_format: TimestampFormat,
    max_bytes: usize,
    max_events: usize,
    timeout: Duration,
    concurrency: usize,
    tracker: AckTracker,
    pending: Pending,
    // Scratch, reused across batches.
    plan: Vec<EventPlan>,
    keys: Vec<String>,
    key_json: Vec<String>,
    key_index: HashMap<String, u32>,
    key_to_stream: Vec<Option<usize>>,
    meta_arena: String,
    meta_ranges: Vec<(u32, u32, u32)>,
}

impl LokiSink {
    fn new(cfg: &LokiConfig, cx: &SinkCx, shared: Arc<Shared>) -> LokiSink {
        let mut labels: Vec<(String, LabelValue)> = cfg
            .labels
            .iter()
            .map(|(k, t)| (k.clone(), LabelValue::Template(t.bind(&cx.fields))))
            .collect();
        if cfg.default_labels {
            if !cfg.labels.contains_key("source") {
                labels.push(("source".into(), LabelValue::SourceName));
            }
            if !cfg.labels.contains_key("host") {
                if let Ok(t) = super::template::Template::parse("{{ host }}") {
                    labels.push(("host".into(), LabelValue::Template(t.bind(&cx.fields))));
                }
            }
        }
        // Loki sorts label names; so do we, so one label set has one text.
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        let per_event_labels = labels
            .iter()
            .any(|(_, v)| matches!(v, LabelValue::Template(t) if !t.template().is_literal()));
        let metadata = cfg
            .metadata_fields()
            .into_iter()
            .map(|(name, path)| (Bytes::from(name), cx.fields.index_of(&path)))
            .collect();
        let ts_column = cfg.timestamp_path().and_then(|p: FieldPath| cx.fields.index_of(&p));
        LokiSink {
            shared,
            labels,
            per_event_labels,
            metadata,
            ts_column,
            ts_format: cfg.timestamp_format,
            max_bytes: cfg.batch.max_bytes.0 as usize,
            max_events: cfg.batch.max_events,
            timeout: cfg.batch.timeout,
            concurrency: cfg.request.concurrency,
            tracker: AckTracker::default(),
            pending: Pending::default(),
            plan: Vec::new(),
            keys: Vec::new(),
            key_json: Vec::new(),
            key_index: HashMap::new(),
            key_to_stream: Vec::new(),
            meta_arena: String::new(),
            meta_ranges: Vec::new(),
        }
    }

    async fn run(mut self, mut input: QueueReceiver) -> Result<(), SinkError> {
        let mut inflight: JoinSet<PushResult> = JoinSet::new();
        let mut sealed: VecDeque<Sealed> = VecDeque::new();
        let mut input_open = true;
        loop {
            while inflight.len() < self.concurrency {
                let Some(s) = sealed.pop_front() else { break };
                inflight.spawn(push(self.shared.clone(), s));
            }
            if !input_open && sealed.is_empty() && inflight.is_empty() {
                debug_assert_eq!(self.tracker.len(), 0);
                return Ok(());
            }
            let deadline = self.pending.opened.map(|t| tokio::time::Instant::from_std(t + self.timeout));
            // A push waiting for a slot stops intake: the queue fills and
            // backpressure reaches the sources.
            let accepting = input_open && sealed.is_empty();
            tokio::select! {
                Some(res) = inflight.join_next(), if !inflight.is_empty() => {
                    let res = res.unwrap_or_else(|e| PushResult {
                        parts: Vec::new(),
                        outcome: PushOutcome::Fatal(format!("push task failed: {e}")),
                    });
                    self.finish(res)?;
                }
                item = input.recv(), if accepting => match item {
                    Some(item) => self.add(item, &mut sealed),
                    None => {
                        input_open = false;
                        sealed.extend(self.seal());
                    }
                },
                _ = sleep_until(deadline), if deadline.is_some() => sealed.extend(self.seal()),
            }
        }
    }

    /// Acknowledges the batches of a finished push.
    fn finish(&mut self, res: PushResult) -> Result<(), SinkError> {
        let outcome = match &res.outcome {
            PushOutcome::Delivered => AckOutcome::Delivered,
            PushOutcome::Dropped => AckOutcome::Dropped,
            PushOutcome::Fatal(_) => AckOutcome::Abandoned,
        };
        for id in &res.parts {
            self.tracker.part_done(*id, outcome);
        }
        if let PushOutcome::Fatal(message) = res.outcome {
            self.tracker.abandon_all();
            return Err(SinkError::Fatal {
                sink: self.shared.name.to_string(),
                message,
            });
        }
        Ok(())
    }

    /// Adds a batch's events to the pending push, sealing pushes as they
    /// fill.
    fn add(&mut self, item: QueueItem, sealed: &mut VecDeque<Sealed>) {
        let batch = item.batch.clone();
        let id = self.tracker.track(item, true);
        self.plan_batch(&batch);
        let arena = Bytes::from(std::mem::take(&mut self.meta_arena).into_bytes());
        self.key_to_stream.clear();
        self.key_to_stream.resize(self.keys.len(), None);
        let mut in_pending = false;
        for i in 0..batch.len() {
            let line = batch.event_bytes(i);
            let full =
                self.pending.events >= self.max_events || (self.pending.events > 0 && self.pending.bytes + line.len() > self.max_bytes);
            if full {
                sealed.extend(self.seal());
                self.key_to_stream.iter_mut().for_each(|s| *s = None);
                in_pending = false;
            }
            if !in_pending {
                self.tracker.add_part(id);
                self.pending.parts.push(id);
                self.pending.opened.get_or_insert_with(Instant::now);
                in_pending = true;
            }
            let p = self.plan[i];
            let stream = match self.key_to_stream[p.key as usize] {
                Some(s) => s,
                None => {
                    let s = self.stream_for(p.key as usize);
                    self.key_to_stream[p.key as usize] = Some(s);
                    s
                }
            };
            let structured_metadata = self.meta_ranges[p.meta_start as usize..(p.meta_start + p.meta_len) as usize]
                .iter()
                .map(|&(m, start, end)| LabelPairAdapter {
                    name: self.metadata[m as usize].0.clone(),
                    value: arena.slice(start as usize..end as usize),
                })
                .collect();
            self.pending.bytes += line.len();
            self.pending.events += 1;
            self.pending.req.streams[stream].entries.push(EntryAdapter {
                timestamp: Some(Timestamp::from_nanos(p.ts)),
                line,
                structured_metadata,
            });
        }
        self.tracker.seal(id);
        if self.pending.events >= self.max_events || self.pending.bytes >= self.max_bytes {
            sealed.extend(self.seal());
        }
    }

    /// The pending push's stream for the batch's label set `key`.
    fn stream_for(&mut self, key: usize) -> usize {
        if let Some(&s) = self.pending.index.get(self.keys[key].as_str()) {
            return s;
        }
        let s = self.pending.req.streams.len();
        self.pending.req.streams.push(StreamAdapter {
            labels: self.keys[key].clone(),
            entries: Vec::new(),
        });
        if self.shared.encoding == Encoding::Json {
            self.pending.stream_json.push(self.key_json[key].clone());
        }
        self.pending.index.insert(self.keys[key].clone(), s);
        s
    }

    /// First pass: every event's label set, time and structured metadata.
    fn plan_batch(&mut self, batch: &Batch) {
        self.plan.clear();
        self.keys.clear();
        self.key_json.clear();
        self.key_index.clear();
        self.meta_ranges.clear();
        self.meta_arena.clear();
        let received = batch.received_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
        let mut text = String::with_capacity(128);
        let mut value = String::with_capacity(64);
        let mut shared_key = None;
        for i in 0..batch.len() {
            let key = match shared_key {
                Some(k) => k,
                None => {
                    text.clear();
                    self.label_text(batch, i, &mut text, &mut value, None);
                    let k = match self.key_index.get(text.as_str()) {
                        Some(&k) => k,
                        None => {
                            let k = self.keys.len() as u32;
                            self.key_index.insert(text.clone(), k);
                            self.keys.push(text.clone());
                            if self.shared.encoding == Encoding::Json {
                                let mut json = String::new();
                                self.label_text(batch, i, &mut String::new(), &mut value, Some(&mut json));
                                self.key_json.push(json);
                            }
                            k
                        }
                    };
                    if !self.per_event_labels {
                        shared_key = Some(k);
                    }
                    k
                }
            };
            let ts = self
                .ts_column
                .and_then(|c| timestamp::event_nanos(batch.value(i, c), self.ts_format))
                .unwrap_or(received);
            let meta_start = self.meta_ranges.len() as u32;
            for (m, (_, column)) in self.metadata.iter().enumerate() {
                let Some(c) = column else { continue };
                let start = self.meta_arena.len();
                if batch.value(i, *c).render(&mut self.meta_arena) && self.meta_arena.len() > start {
                    self.meta_ranges.push((m as u32, start as u32, self.meta_arena.len() as u32));
                }
            }
            self.plan.push(EventPlan {
                key,
                ts,
                meta_start,
                meta_len: self.meta_ranges.len() as u32 - meta_start,
            });
        }
    }

    /// Renders event `i`'s label set as LogQL text (`{a="x", b="y"}`) and,
    /// when asked, as a JSON object. Labels that render empty are left
    /// out; with none left, the source name is the label.
    fn label_text(&self, batch: &Batch, i: usize, out: &mut String, value: &mut String, mut json: Option<&mut String>) {
        out.push('{');
        if let Some(j) = json.as_deref_mut() {
            j.push('{');
        }
        let mut first = true;
        for (name, lv) in &self.labels {
            value.clear();
            match lv {
                LabelValue::SourceName => value.push_str(&batch.source.source),
                LabelValue::Template(t) => t.render(batch, i, value),
            }
            if value.is_empty() {
                continue;
            }
            push_label(out, json.as_deref_mut(), first, name, value);
            first = false;
        }
        if first {
            push_label(out, json.as_deref_mut(), true, "source", &batch.source.source);
        }
        out.push('}');
        if let Some(j) = json {
            j.push('}');
        }
    }

    /// Closes the pending push.
    fn seal(&mut self) -> Option<Sealed> {
        if self.pending.events == 0 {
            self.pending.opened = None;
            return None;
        }
        let p = std::mem::take(&mut self.pending);
        Some(Sealed {
            req: p.req,
            stream_json: p.stream_json,
            events: p.events,
            bytes: p.bytes,
            parts: p.parts,
        })
    }
}

fn push_label(out: &mut String, json: Option<&mut String>, first: bool, name: &str, value: &str) {
    if !first {
        out.push_str(", ");
    }
    out.push_str(name);
    out.push('=');
    encode::quote_label_value(out, value);
    if let Some(j) = json {
        if !first {
            j.push(',');
        }
        // Serialising a str cannot fail.
        j.push_str(&serde_json::to_string(name).unwrap_or_default());
        j.push(':');
        j.push_str(&serde_json::to_string(value).unwrap_or_default());
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Encodes a push (on the blocking pool) and delivers it, retrying what
/// can be retried.
async fn push(shared: Arc<Shared>, sealed: Sealed) -> PushResult {
    let Sealed {
        mut req,
        stream_json,
        events,
        bytes,
        parts,
    } = sealed;
    let s = shared.clone();
    let body = tokio::task::spawn_blocking(move || {
        encode::order_entries(&mut req.streams);
        match (s.encoding, s.compression) {
            (Encoding::Protobuf, _) => encode::encode_protobuf(&req).map_err(|e| e.to_string()),
            (Encoding::Json, Compression::Gzip) => {
                encode::gzip(&encode::encode_json(&req, &stream_json), s.gzip_level).map_err(|e| e.to_string())
            }
            (Encoding::Json, _) => Ok(encode::encode_json(&req, &stream_json)),
        }
    })
    .await;
    let body = match body {
        Ok(Ok(b)) => Bytes::from(b),
        Ok(Err(e)) => return fail(parts, format!("cannot encode a push: {e}")),
        Err(e) => return fail(parts, format!("encoder task failed: {e}")),
    };
    let outcome = deliver(&shared, body, events as u64, bytes as u64).await;
    PushResult { parts, outcome }
}

fn fail(parts: Vec<TrackId>, message: String) -> PushResult {
    PushResult {
        parts,
        outcome: PushOutcome::Fatal(message),
    }
}

/// Sends one push until Loki answers something final.
async fn deliver(shared: &Shared, body: Bytes, events: u64, bytes: u64) -> PushOutcome {
    let mut backoff = Backoff::new(&shared.retry);
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let started = Instant::now();
        let sent = shared
            .client
            .post(shared.url.clone())
            .headers(shared.headers.clone())
            .body(body.clone())
            .send()
            .await;
        let (kind, detail, retry_after) = match sent {
            Ok(resp) if resp.status().is_success() => {
                shared.duration.observe(started.elapsed().as_secs_f64());
                shared.health.success();
                shared.events.inc_by(events);
                shared.bytes.inc_by(bytes);
                if attempt > 1 {
                    tracing::info!(sink = %shared.name, attempts = attempt, "push delivered after retries");
                }
                return PushOutcome::Delivered;
            }
            Ok(resp) => {
                let status = resp.status();
                let retry_after = http::retry_after(resp.headers());
                let text = resp.text().await.unwrap_or_default();
                shared.duration.observe(started.elapsed().as_secs_f64());
                let kind = ErrorKind::of_status(status);
                if !kind.is_retryable() {
                    return refused(shared, status, &text, events, bytes);
                }
                (kind, format!("{status}: {}", http::excerpt(text.trim())), retry_after)
            }
            Err(e) => {
                shared.duration.observe(started.elapsed().as_secs_f64());
                (ErrorKind::of(&e), http::error_chain(&e), None)
            }
        };
        metrics().sink_errors.with_label_values(&[&shared.name, kind.as_str()]).inc();
        shared.retries.inc();
        shared.health.failure();
        let delay = backoff.next_delay(retry_after);
        if attempt.is_power_of_two() {
            tracing::warn!(sink = %shared.name, attempt, error = %detail, retry_in = ?delay, "push failed; retrying");
        }
        tokio::time::sleep(delay).await;
    }
}

/// A final 4xx: a partial rejection is counted per entry, a whole refusal
/// for the whole push; credentials or a wrong address stop the sink.
fn refused(shared: &Shared, status: reqwest::StatusCode, text: &str, events: u64, bytes: u64) -> PushOutcome {
    // The push reached Loki and was answered: Loki itself is fine.
    shared.health.success();
    if http::is_misconfiguration(status) {
        metrics()
            .sink_errors
            .with_label_values(&[&shared.name, ErrorKind::Client.as_str()])
            .inc();
        return PushOutcome::Fatal(format!(
            "Loki answered {status} to a push to {}: {} (check endpoint, path, tenant_id and auth)",
            shared.url,
            http::excerpt(text.trim())
        ));
    }
    let rejection = if status == reqwest::StatusCode::BAD_REQUEST {
        rejection::parse(text, events)
    } else {
        rejection::Rejection {
            counts: vec![(rejection::Reason::Other, events)],
            partial: false,
        }
    };
    let refused = rejection.total();
    let kind = if rejection.partial {
        ErrorKind::Rejected
    } else {
        ErrorKind::Client
    };
    metrics().sink_errors.with_label_values(&[&shared.name, kind.as_str()]).inc();
    let lm = loki_metrics();
    for (reason, n) in &rejection.counts {
        lm.rejected.with_label_values(&[&shared.name, reason.as_str()]).inc_by(*n);
    }
    shared.dropped.inc_by(refused);
    let delivered = events - refused;
    shared.events.inc_by(delivered);
    shared.bytes.inc_by(bytes * delivered / events.max(1));
    tracing::warn!(
        sink = %shared.name,
        status = %status,
        refused,
        stored = delivered,
        answer = %http::excerpt(text.trim()),
        "Loki refused entries; they are counted in sluice_events_dropped_total and not retried"
    );
    PushOutcome::Dropped
}
