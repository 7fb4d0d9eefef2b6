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

mod builder;
pub mod config;
pub(crate) mod encode;
mod rejection;
mod timestamp;

pub use builder::Push;
pub use builder::PushBuilder;
pub use config::LokiConfig;

use bytes::Bytes;
use prometheus::{IntCounter, IntCounterVec};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::task::JoinSet;

use self::config::{Compression, Encoding};
use super::delivery::{self, Answer, Endpoint, ErrorKind, Verdict};
// How a push ended: `Dropped` when Loki stored some entries and refused
// others (counted), or refused the whole push with a 4xx (counted).
use super::http::RequestOutcome as PushOutcome;
use super::http::{self, sleep_until, AckTracker, TrackId};
use super::{SinkComponent, SinkCx, SinkError, SinkErrorKind};
use crate::buffer::{QueueItem, QueueReceiver};
use crate::event::{EventKind, FieldPath};
use crate::pipeline::Task;
use crate::telemetry::{counter_vec, metrics};

/// Metrics only the Loki sink has.
struct LokiMetrics {
    /// `sluice_loki_entries_rejected_total{sink,reason}`.
    rejected: IntCounterVec,
}

fn loki_metrics() -> &'static LokiMetrics {
    static M: OnceLock<LokiMetrics> = OnceLock::new();
    M.get_or_init(|| LokiMetrics {
        rejected: counter_vec(
            "sluice_loki_entries_rejected_total",
            "Entries Loki refused in an otherwise accepted push, by reason (out_of_order, too_old, other).",
            &["sink", "reason"],
        ),
    })
}

impl SinkComponent for LokiConfig {
    /// Event fields the decoder must extract for this sink.
    fn fields_needed(&self) -> Vec<FieldPath> {
        let mut out: Vec<FieldPath> = self.labels.values().flat_map(|t| t.fields().cloned()).collect();
        if self.default_labels && !self.labels.contains_key("host") {
            out.push(FieldPath::parse("host").unwrap_or_else(|_| unreachable!("constant path")));
        }
        out.extend(self.metadata_fields().into_iter().map(|(_, p)| p));
        out.extend(self.timestamp_path());
        out
    }

    /// Loki stores log lines only.
    fn accepts(&self, kind: EventKind) -> bool {
        kind == EventKind::Log
    }

    /// Prepares the client, checks Loki (`GET /ready`) and starts the sink.
    async fn build(&self, cx: SinkCx, input: QueueReceiver) -> Result<Task<SinkError>, SinkError> {
        let fatal = |kind: SinkErrorKind| SinkError::new(&cx.name, kind);
        let shared = Arc::new(Shared::new(self, &cx).map_err(|e| fatal(SinkErrorKind::Setup(e)))?);
        if self.healthcheck {
            shared
                .healthcheck(&self.endpoint)
                .await
                .map_err(|e| fatal(SinkErrorKind::Unhealthy(e)))?;
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
    /// Retries, error counts, request times and `/ready`.
    endpoint: Endpoint,
    events: IntCounter,
    bytes: IntCounter,
    dropped: IntCounter,
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
        http::add_target_headers(&mut headers, cfg.tenant_id.as_deref(), cfg.auth.as_ref())?;
        let m = metrics();
        let name: &str = &cx.name;
        Ok(Shared {
            name: cx.name.clone(),
            client: http::client(cfg.request.timeout, cfg.tls.as_ref(), name)?,
            url,
            headers,
            encoding: cfg.encoding,
            compression,
            gzip_level: cfg.gzip_level,
            endpoint: Endpoint::new(cx.name.clone(), "push", cfg.retry.clone(), cx.health.clone()),
            events: m.sink_events.with_label_values(&[name]),
            bytes: m.sink_bytes.with_label_values(&[name]),
            dropped: m.events_dropped.with_label_values(&[name, "rejected"]),
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
                self.endpoint.health().set_unhealthy();
                Ok(())
            }
            Err(e) => Err(format!(
                "cannot reach Loki at {endpoint}: {} (set healthcheck = false to start anyway)",
                http::error_chain(&e)
            )),
        }
    }
}

struct PushResult {
    parts: Vec<TrackId>,
    outcome: PushOutcome,
}

/// The sink's state, owned by its task.
struct LokiSink {
    shared: Arc<Shared>,
    builder: PushBuilder,
    timeout: Duration,
    concurrency: usize,
    tracker: AckTracker,
    /// Reused output of [`PushBuilder::add`].
    filled: Vec<Push>,
}

impl LokiSink {
    fn new(cfg: &LokiConfig, cx: &SinkCx, shared: Arc<Shared>) -> LokiSink {
        LokiSink {
            shared,
            builder: PushBuilder::new(cfg, &cx.fields),
            timeout: cfg.batch.timeout,
            concurrency: cfg.request.concurrency(1),
            tracker: AckTracker::default(),
            filled: Vec::new(),
        }
    }

    async fn run(mut self, mut input: QueueReceiver) -> Result<(), SinkError> {
        let mut inflight: JoinSet<PushResult> = JoinSet::new();
        let mut sealed: VecDeque<Encoded> = VecDeque::new();
        let mut input_open = true;
        loop {
            while inflight.len() < self.concurrency {
                let Some(p) = sealed.pop_front() else { break };
                inflight.spawn(push(self.shared.clone(), p));
            }
            if !input_open && sealed.is_empty() && inflight.is_empty() {
                debug_assert_eq!(self.tracker.len(), 0);
                return Ok(());
            }
            let deadline = self.builder.opened().map(|t| tokio::time::Instant::from_std(t + self.timeout));
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
                        sealed.extend(self.builder.seal().map(|p| encode(&self.shared, p)));
                    }
                },
                _ = sleep_until(deadline), if deadline.is_some() => sealed.extend(self.builder.seal().map(|p| encode(&self.shared, p))),
            }
        }
    }

    /// Adds a batch's events to the pending push; pushes that fill go to
    /// `sealed`. The queue item (and its budget) is held until every push
    /// carrying its events is done.
    fn add(&mut self, item: QueueItem, sealed: &mut VecDeque<Encoded>) {
        let batch = item.batch.clone();
        let id = self.tracker.track(item, true);
        let parts = self.builder.add(&batch, id, &mut self.filled);
        for _ in 0..parts {
            self.tracker.add_part(id);
        }
        self.tracker.seal(id);
        let shared = &self.shared;
        sealed.extend(self.filled.drain(..).map(|p| encode(shared, p)));
    }

    /// Acknowledges the batches of a finished push.
    fn finish(&mut self, res: PushResult) -> Result<(), SinkError> {
        self.tracker.request_done(&self.shared.name, &res.parts, res.outcome)
    }
}

/// Starts encoding a push on the blocking pool at once, so it is ready the
/// moment a request slot frees (Loki never waits for our encoder).
fn encode(shared: &Shared, mut p: Push) -> Encoded {
    let parts = p.take_parts();
    let (events, bytes) = (p.events() as u64, p.bytes() as u64);
    let (encoding, compression, level) = (shared.encoding, shared.compression, shared.gzip_level);
    Encoded {
        body: tokio::task::spawn_blocking(move || p.encode(encoding, compression, level)),
        parts,
        events,
        bytes,
    }
}

/// A push whose body is being encoded.
struct Encoded {
    body: tokio::task::JoinHandle<Result<Vec<u8>, String>>,
    parts: Vec<TrackId>,
    events: u64,
    bytes: u64,
}

/// Waits for a push's body and delivers it, retrying what can be retried.
async fn push(shared: Arc<Shared>, e: Encoded) -> PushResult {
    let Encoded {
        body,
        parts,
        events,
        bytes,
    } = e;
    let body = match body.await {
        Ok(Ok(b)) => Bytes::from(b),
        Ok(Err(e)) => return fail(parts, format!("cannot encode a push: {e}")),
        Err(e) => return fail(parts, format!("encoder task failed: {e}")),
    };
    let outcome = deliver(&shared, body, events, bytes).await;
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
    let outcome = shared
        .endpoint
        .send(
            || {
                shared
                    .client
                    .post(shared.url.clone())
                    .headers(shared.headers.clone())
                    .body(body.clone())
            },
            |resp| judge(shared, resp, events, bytes),
        )
        .await;
    if let PushOutcome::Delivered = outcome {
        shared.events.inc_by(events);
        shared.bytes.inc_by(bytes);
    }
    outcome
}

/// What Loki's answer to a push means.
async fn judge(shared: &Shared, resp: reqwest::Response, events: u64, bytes: u64) -> Answer<PushOutcome> {
    match delivery::classify(resp).await {
        Verdict::Success => Answer::Accepted(PushOutcome::Delivered),
        Verdict::Retry(failed) => Answer::Retry(failed),
        Verdict::Final(status, text) => refused(shared, status, &text, events, bytes),
    }
}

/// A final 4xx: a partial rejection is counted per entry, a whole refusal
/// for the whole push; credentials or a wrong address stop the sink.
fn refused(shared: &Shared, status: reqwest::StatusCode, text: &str, events: u64, bytes: u64) -> Answer<PushOutcome> {
    if delivery::is_misconfiguration(status) {
        return Answer::Refused(
            ErrorKind::Client,
            PushOutcome::Fatal(format!(
                "Loki answered {status} to a push to {}: {} (check endpoint, path, tenant_id and auth)",
                shared.url,
                http::excerpt(text.trim())
            )),
        );
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
    Answer::Refused(kind, PushOutcome::Dropped)
}
