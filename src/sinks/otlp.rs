//! `type = "otlp"`: sends events as OTLP logs and metric samples as OTLP
//! metrics, over OTLP/HTTP protobuf (`POST {endpoint}/v1/logs` and
//! `/v1/metrics`, the default) or gRPC, gzip-compressed by default. Events
//! map onto log records, and samples onto data points, by the tables in
//! docs/otlp.md (the `otlp` source's in reverse) and are grouped by
//! resource: sluice's release, process, host and Kubernetes metadata
//! become the resource's semantic-convention attributes. A request carries
//! one kind: log batches and metric batches fill requests of their own.
//!
//! Delivery goes through the shared layer ([`Endpoint::send`]): 429, 5xx,
//! gRPC `UNAVAILABLE` and the other retryable gRPC codes, and connection
//! errors are retried with backoff, honouring `Retry-After` and gRPC's
//! `RetryInfo`; other answers are final. A partial success counts the
//! records the receiver rejected as dropped. A source batch is
//! acknowledged once the request carrying it is done.

use bytes::Bytes;
use prometheus::IntCounter;
use prost::Message as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinSet;

use super::delivery::{self, Answer, Endpoint, ErrorKind, Failed, RetryConfig};
use super::http::{self, AckTracker, RequestOutcome, TrackId};
use super::{SinkComponent, SinkCx, SinkError, SinkErrorKind};
use crate::buffer::{QueueItem, QueueReceiver};
use crate::config::{duration, ConfigError, Validate};
use crate::event::{Batch, EventKind};
use crate::otlp::encode::LogsEncoder;
use crate::otlp::proto::{ExportLogsServiceResponse, ExportMetricsServiceResponse, RetryInfo, Status};
use crate::otlp::{grpc, metrics as otlp_metrics, LOGS_GRPC_PATH, LOGS_HTTP_PATH, METRICS_GRPC_PATH, METRICS_HTTP_PATH};
use crate::pipeline::Task;
use crate::telemetry::metrics;

/// How the sink talks to the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Protocol {
    /// OTLP/HTTP with protobuf bodies.
    #[default]
    Http,
    /// gRPC (HTTP/2; `http://` endpoints speak it without TLS).
    Grpc,
}

/// Body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Compression {
    /// gzip (the default).
    #[default]
    Gzip,
    /// None.
    None,
}

/// Requests on the wire at once by default. OTLP needs no order between
/// requests, and with one at a time the receiver sat idle while the next
/// one travelled (BENCHMARKS.md, "OTLP sink against a receiver on its own
/// core"); the OpenTelemetry Collector's exporters send from 10 consumers.
const CONCURRENCY: usize = 4;

/// Settings of the OTLP sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpSinkConfig {
    /// The receiver: `http://collector:4318` (HTTP) or
    /// `http://collector:4317` (gRPC).
    pub(crate) endpoint: String,
    /// `http` (default) or `grpc`.
    #[serde(default)]
    pub(crate) protocol: Protocol,
    /// `gzip` (default) or `none`.
    #[serde(default)]
    pub(crate) compression: Compression,
    /// Headers sent with every request (authentication: put the secret in
    /// an environment variable and write `"${OTLP_TOKEN}"`).
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    /// When a request is sent.
    #[serde(default)]
    pub(crate) batch: OtlpBatch,
    /// Request time and concurrency (the HTTP sinks' `request` table;
    /// [`CONCURRENCY`] requests on the wire unless it says otherwise).
    #[serde(default)]
    pub(crate) request: http::RequestConfig,
    /// Backoff between attempts.
    #[serde(default)]
    pub(crate) retry: RetryConfig,
    /// TLS: a custom CA bundle, a client certificate, the server name.
    #[serde(default)]
    pub(crate) tls: Option<crate::sinks::tls::HttpTlsConfig>,
}

/// The `batch` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct OtlpBatch {
    /// A request leaves once it holds this many records (whole source
    /// batches are never split, so it may hold a few more).
    pub(crate) max_events: usize,
    /// Longest a record waits for its request to fill.
    #[serde(deserialize_with = "duration")]
    pub(crate) timeout: Duration,
}

impl Default for OtlpBatch {
    fn default() -> Self {
        OtlpBatch {
            max_events: 2000,
            timeout: Duration::from_secs(1),
        }
    }
}

impl Validate for OtlpSinkConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        match reqwest::Url::parse(&self.endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => errors.push(ConfigError::at(
                path,
                "endpoint",
                format!("{:?} is not an http:// or https:// URL", self.endpoint),
            )),
        }
        for (name, value) in &self.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() || HeaderValue::from_str(value).is_err() {
                errors.push(ConfigError::at(path, &format!("headers.{name}"), "not a valid HTTP header"));
            }
        }
        if self.batch.max_events == 0 {
            errors.push(ConfigError::at(path, "batch.max_events", "must be at least 1"));
        }
        self.request.validate(path, errors);
        self.retry.validate(&format!("{path}.retry"), errors);
        if let Some(t) = &self.tls {
            t.validate(&format!("{path}.tls"), errors);
        }
    }
}

impl SinkComponent for OtlpSinkConfig {
    /// Logs and metric samples, each to its own OTLP service.
    fn accepts(&self, kind: EventKind) -> bool {
        matches!(kind, EventKind::Log | EventKind::Metric)
    }

    async fn build(&self, cx: SinkCx, input: QueueReceiver) -> Result<Task<SinkError>, SinkError> {
        let shared = Arc::new(Shared::new(self, &cx).map_err(|e| SinkError::new(&cx.name, SinkErrorKind::Setup(e)))?);
        let sink = OtlpSink {
            shared,
            max_events: self.batch.max_events,
            timeout: self.batch.timeout,
            // One request more than may be on the wire: the next one
            // encodes while the others are answered.
            requests: self.request.concurrency(CONCURRENCY) + 1,
            tracker: AckTracker::default(),
            pending: Default::default(),
        };
        Ok(Box::pin(sink.run(input)))
    }
}

/// What request tasks share.
struct Shared {
    name: Arc<str>,
    client: reqwest::Client,
    /// Where logs go, then metrics (by [`EventKind`] as an index).
    urls: [reqwest::Url; 2],
    headers: HeaderMap,
    protocol: Protocol,
    compression: Compression,
    endpoint: Endpoint,
    events: IntCounter,
    bytes: IntCounter,
    rejected: IntCounter,
    /// Events of a metric batch that are not samples.
    not_a_metric: IntCounter,
    /// One permit per request that may be on the wire at once
    /// (`request.concurrency`); a request encodes before it holds one.
    on_the_wire: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    fn new(cfg: &OtlpSinkConfig, cx: &SinkCx) -> Result<Shared, String> {
        let base = cfg.endpoint.trim_end_matches('/');
        let paths = match cfg.protocol {
            Protocol::Http => [LOGS_HTTP_PATH, METRICS_HTTP_PATH],
            Protocol::Grpc => [LOGS_GRPC_PATH, METRICS_GRPC_PATH],
        };
        let url = |path| reqwest::Url::parse(&format!("{base}{path}")).map_err(|e| format!("invalid endpoint: {e}"));
        let urls = [url(paths[0])?, url(paths[1])?];
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("headers.{name}: not a header name"))?;
            let mut value = HeaderValue::from_str(value).map_err(|_| format!("headers.{name}: not a header value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = match cfg.protocol {
            Protocol::Http => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
                if cfg.compression == Compression::Gzip {
                    headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                }
                http::client(cfg.request.timeout, cfg.tls.as_ref(), &cx.name)?
            }
            Protocol::Grpc => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                headers.insert("te", HeaderValue::from_static("trailers"));
                if cfg.compression == Compression::Gzip {
                    headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
                }
                grpc_client(cfg.request.timeout, urls[0].scheme() == "http", cfg.tls.as_ref(), &cx.name)?
            }
        };
        let m = metrics();
        let name: &str = &cx.name;
        Ok(Shared {
            name: cx.name.clone(),
            client,
            urls,
            headers,
            protocol: cfg.protocol,
            compression: cfg.compression,
            endpoint: Endpoint::new(cx.name.clone(), "OTLP export", cfg.retry.clone(), cx.health.clone()),
            events: m.sink_events.with_label_values(&[name]),
            bytes: m.sink_bytes.with_label_values(&[name]),
            rejected: m.events_dropped.with_label_values(&[name, "rejected"]),
            not_a_metric: m.events_dropped.with_label_values(&[name, "not_a_metric"]),
            on_the_wire: Arc::new(tokio::sync::Semaphore::new(cfg.request.concurrency(CONCURRENCY))),
        })
    }
}

/// An HTTP/2 client for gRPC: prior knowledge on `http://` (h2c).
fn grpc_client(
    request_timeout: Duration,
    cleartext: bool,
    tls: Option<&crate::sinks::tls::HttpTlsConfig>,
    sink: &str,
) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10).min(request_timeout))
        .timeout(request_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")));
    if cleartext {
        b = b.http2_prior_knowledge();
    }
    if let Some(tls) = tls {
        let mut config = tls.client_config(sink).map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        b = b.use_preconfigured_tls(config);
    }
    b.build().map_err(|e| format!("cannot build the gRPC client: {e}"))
}

struct Done {
    parts: Vec<TrackId>,
    outcome: RequestOutcome,
}

/// Batches of one kind waiting for the next request.
#[derive(Default)]
struct Pending {
    /// The batches, with their tracking ids.
    batches: Vec<(Arc<Batch>, TrackId)>,
    events: usize,
    opened: Option<tokio::time::Instant>,
}

/// The sink's state, owned by its task.
struct OtlpSink {
    shared: Arc<Shared>,
    max_events: usize,
    timeout: Duration,
    /// Requests started at most: those on the wire and one encoding.
    requests: usize,
    tracker: AckTracker,
    /// Log batches, then metric batches (by [`EventKind`] as an index):
    /// a request carries one kind.
    pending: [Pending; 2],
}

const KINDS: [EventKind; 2] = [EventKind::Log, EventKind::Metric];

impl OtlpSink {
    async fn run(mut self, mut input: QueueReceiver) -> Result<(), SinkError> {
        let mut inflight: JoinSet<Done> = JoinSet::new();
        let mut input_open = true;
        loop {
            let idle = self.pending.iter().all(|p| p.batches.is_empty());
            if !input_open && idle && inflight.is_empty() {
                return Ok(());
            }
            let full = KINDS.into_iter().find(|k| {
                let p = &self.pending[*k as usize];
                p.events >= self.max_events || (!input_open && !p.batches.is_empty())
            });
            if let Some(kind) = full.filter(|_| inflight.len() < self.requests) {
                self.send(kind, &mut inflight);
                continue;
            }
            let full = full.is_some();
            let first = KINDS
                .into_iter()
                .filter_map(|k| self.pending[k as usize].opened.map(|t| (t + self.timeout, k)))
                .min_by_key(|(t, _)| *t);
            let deadline = first.map(|(t, _)| t);
            tokio::select! {
                Some(res) = inflight.join_next(), if !inflight.is_empty() => {
                    let done = res.unwrap_or_else(|e| Done {
                        parts: Vec::new(),
                        outcome: RequestOutcome::Fatal(format!("request task failed: {e}")),
                    });
                    self.finish(done)?;
                }
                // A full request waiting for a slot stops intake: the
                // queue fills and backpressure reaches the sources.
                item = input.recv(), if input_open && !full => match item {
                    Some(item) => self.add(item),
                    None => input_open = false,
                },
                _ = http::sleep_until(deadline), if deadline.is_some() && !full && inflight.len() < self.requests => {
                    if let Some((_, kind)) = first {
                        self.send(kind, &mut inflight);
                    }
                }
            }
        }
    }

    fn add(&mut self, item: QueueItem) {
        let batch = item.batch.clone();
        let id = self.tracker.track(item, true);
        self.tracker.add_part(id);
        self.tracker.seal(id);
        let p = &mut self.pending[batch.kind() as usize];
        p.events += batch.len();
        p.batches.push((batch, id));
        p.opened.get_or_insert_with(tokio::time::Instant::now);
    }

    /// Starts a request with every pending batch of `kind`.
    fn send(&mut self, kind: EventKind, inflight: &mut JoinSet<Done>) {
        let batches = std::mem::take(&mut self.pending[kind as usize]).batches;
        if batches.is_empty() {
            return;
        }
        inflight.spawn(export(self.shared.clone(), kind, batches));
    }

    fn finish(&mut self, done: Done) -> Result<(), SinkError> {
        self.tracker.request_done(&self.shared.name, &done.parts, done.outcome)
    }
}

/// Encodes (on the blocking pool) and delivers one request of `kind`.
/// It queues for its place on the wire as it starts, so requests go out
/// in the order they were started, and encodes while the requests ahead
/// of it are answered: encoding and the receiver's work overlap even with
/// `request.concurrency = 1`.
async fn export(shared: Arc<Shared>, kind: EventKind, batches: Vec<(Arc<Batch>, TrackId)>) -> Done {
    let parts: Vec<TrackId> = batches.iter().map(|(_, id)| *id).collect();
    let (protocol, compression) = (shared.protocol, shared.compression);
    let encoding = tokio::task::spawn_blocking(move || match kind {
        EventKind::Log => encode(&batches, protocol, compression),
        EventKind::Metric => encode_metrics(&batches, protocol, compression),
    });
    // The semaphore is never closed, so the permit always comes.
    let (encoded, _on_the_wire) = tokio::join!(encoding, shared.on_the_wire.clone().acquire_owned());
    let (body, records, bytes) = match encoded {
        Ok(e) => e,
        Err(e) => {
            return Done {
                parts,
                outcome: RequestOutcome::Fatal(format!("encoder task failed: {e}")),
            }
        }
    };
    if kind == EventKind::Metric && records < bytes.1 {
        shared.not_a_metric.inc_by(bytes.1 - records);
    }
    let bytes = bytes.0;
    if records == 0 {
        return Done {
            parts,
            outcome: RequestOutcome::Delivered,
        };
    }
    let body = Bytes::from(body);
    let url = &shared.urls[kind as usize];
    let outcome = shared
        .endpoint
        .send(
            || shared.client.post(url.clone()).headers(shared.headers.clone()).body(body.clone()),
            |resp| judge(&shared, kind, resp, records),
        )
        .await;
    let kept = match &outcome {
        (RequestOutcome::Delivered, _) => records,
        (RequestOutcome::Dropped, rejected) => records.saturating_sub(*rejected),
        (RequestOutcome::Fatal(_), _) => 0,
    };
    shared.events.inc_by(kept);
    shared.bytes.inc_by(bytes * kept / records.max(1));
    Done { parts, outcome: outcome.0 }
}

/// The request body for `batches`, with its record count, and the bytes
/// of event JSON it carries and how many events they were.
fn encode(batches: &[(Arc<Batch>, TrackId)], protocol: Protocol, compression: Compression) -> (Vec<u8>, u64, (u64, u64)) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut encoder = LogsEncoder::default();
    let mut bytes = 0u64;
    for (batch, _) in batches {
        for event in batch.events() {
            bytes += event.len() as u64;
            // Every event is a JSON object by the batch's invariant; a
            // value that would not parse still goes out, as its text.
            encoder.push(event, now);
        }
    }
    let records = encoder.len() as u64;
    let message = encoder.take();
    (wrap(message, protocol, compression), records, (bytes, records))
}

/// The request body for metric `batches`: every sample as a data point.
/// Events that are not samples are left out (the caller counts them).
fn encode_metrics(batches: &[(Arc<Batch>, TrackId)], protocol: Protocol, compression: Compression) -> (Vec<u8>, u64, (u64, u64)) {
    let mut builder = otlp_metrics::MetricsBuilder::default();
    let (mut bytes, mut events) = (0u64, 0u64);
    for (batch, _) in batches {
        for event in batch.events() {
            events += 1;
            if builder.push(event) {
                bytes += event.len() as u64;
            }
        }
    }
    let points = builder.len() as u64;
    let message = builder.take().encode_to_vec();
    (wrap(message, protocol, compression), points, (bytes, events))
}

/// A message as the request body: compressed, and framed for gRPC.
fn wrap(message: Vec<u8>, protocol: Protocol, compression: Compression) -> Vec<u8> {
    match (protocol, compression) {
        (Protocol::Http, Compression::None) => message,
        // Level 1, gzip's fast setting; writing into a Vec cannot fail.
        (Protocol::Http, Compression::Gzip) => super::loki::encode::gzip(&message, 1).unwrap_or_default(),
        (Protocol::Grpc, Compression::None) => grpc::frame(&message),
        (Protocol::Grpc, Compression::Gzip) => grpc::frame_gzip(&message),
    }
}

/// Records (or data points) a successful answer says were rejected.
fn rejected_in(kind: EventKind, message: &[u8]) -> u64 {
    let rejected = match kind {
        EventKind::Log => ExportLogsServiceResponse::decode(message)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| p.rejected_log_records),
        EventKind::Metric => ExportMetricsServiceResponse::decode(message)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| p.rejected_data_points),
    };
    rejected.map_or(0, |n| n.max(0) as u64)
}

/// What the receiver's answer means: the outcome and how many records it
/// rejected.
async fn judge(shared: &Shared, kind: EventKind, resp: reqwest::Response, records: u64) -> Answer<(RequestOutcome, u64)> {
    match shared.protocol {
        Protocol::Http => judge_http(shared, kind, resp, records).await,
        Protocol::Grpc => judge_grpc(shared, kind, resp, records).await,
    }
}

async fn judge_http(shared: &Shared, sent: EventKind, resp: reqwest::Response, records: u64) -> Answer<(RequestOutcome, u64)> {
    let status = resp.status();
    let retry_after = delivery::retry_after(resp.headers());
    let body = resp.bytes().await.unwrap_or_default();
    if status.is_success() {
        return partial(shared, records, rejected_in(sent, &body));
    }
    let message = Status::decode(body.clone())
        .map(|s| s.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
    let kind = ErrorKind::of_status(status);
    if kind.is_retryable() {
        return Answer::Retry(Failed {
            kind,
            detail: format!("{status}: {}", http::excerpt(message.trim())),
            retry_after,
        });
    }
    refused(
        shared,
        sent,
        records,
        &format!("{status}: {}", http::excerpt(message.trim())),
        delivery::is_misconfiguration(status),
    )
}

async fn judge_grpc(shared: &Shared, sent: EventKind, resp: reqwest::Response, records: u64) -> Answer<(RequestOutcome, u64)> {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap_or_default();
    if !status.is_success() {
        // Not an answer of the gRPC server itself (a proxy's).
        let kind = ErrorKind::of_status(status);
        let detail = format!("{status} from {}", shared.urls[sent as usize]);
        return if kind.is_retryable() {
            Answer::Retry(Failed {
                kind,
                detail,
                retry_after: delivery::retry_after(&headers),
            })
        } else {
            refused(shared, sent, records, &detail, delivery::is_misconfiguration(status))
        };
    }
    let code = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(grpc::Code::of);
    match code {
        // A trailers-only answer carries its status in the headers. With
        // no status there, the answer is a response message: only a call
        // that succeeded has one.
        None | Some(0) => match grpc::unframe(&body, headers.get("grpc-encoding").and_then(|v| v.to_str().ok()), 64 << 20) {
            Ok(m) => partial(shared, records, rejected_in(sent, &m)),
            Err(e) => Answer::Retry(Failed {
                kind: ErrorKind::Protocol,
                detail: format!("a gRPC answer without status or message: {e}"),
                retry_after: None,
            }),
        },
        Some(code) => {
            let message = headers
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .map(percent_decode)
                .unwrap_or_default();
            let retry_info = headers
                .get("grpc-status-details-bin")
                .and_then(|v| v.to_str().ok())
                .and_then(retry_delay);
            let detail = format!("gRPC status {code}: {}", http::excerpt(&message));
            // Retryable per the OTLP spec; RESOURCE_EXHAUSTED only when the
            // server says when to come back.
            let retryable = matches!(code, 1 | 4 | 10 | 11 | 14 | 15) || (code == 8 && retry_info.is_some());
            if retryable {
                Answer::Retry(Failed {
                    kind: if code == 8 { ErrorKind::Throttled } else { ErrorKind::Server },
                    detail,
                    retry_after: retry_info,
                })
            } else {
                refused(shared, sent, records, &detail, matches!(code, 5 | 7 | 12 | 16))
            }
        }
    }
}

/// Some records (maybe none) rejected in an accepted request.
fn partial(shared: &Shared, records: u64, rejected: u64) -> Answer<(RequestOutcome, u64)> {
    if rejected == 0 {
        return Answer::Accepted((RequestOutcome::Delivered, 0));
    }
    let rejected = rejected.min(records);
    shared.rejected.inc_by(rejected);
    tracing::warn!(sink = %shared.name, rejected, "the OTLP receiver rejected records; they are counted in sluice_events_dropped_total");
    Answer::Refused(ErrorKind::Rejected, (RequestOutcome::Dropped, rejected))
}

/// A final refusal: every record is dropped (counted), or the sink stops
/// when the answer says it is misconfigured.
fn refused(shared: &Shared, kind: EventKind, records: u64, detail: &str, misconfigured: bool) -> Answer<(RequestOutcome, u64)> {
    if misconfigured {
        return Answer::Refused(
            ErrorKind::Client,
            (
                RequestOutcome::Fatal(format!(
                    "the OTLP receiver at {} answered {detail} (check endpoint, protocol and headers)",
                    shared.urls[kind as usize]
                )),
                records,
            ),
        );
    }
    shared.rejected.inc_by(records);
    tracing::warn!(sink = %shared.name, records, answer = %detail, "the OTLP receiver refused an export; its records are counted in sluice_events_dropped_total and not retried");
    Answer::Refused(ErrorKind::Client, (RequestOutcome::Dropped, records))
}

/// The delay of a `RetryInfo` in a `grpc-status-details-bin` header.
fn retry_delay(b64: &str) -> Option<Duration> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(b64.trim_end_matches('='))
        .ok()?;
    let status = Status::decode(raw.as_slice()).ok()?;
    status
        .details
        .iter()
        .filter(|a| a.type_url.ends_with("google.rpc.RetryInfo"))
        .find_map(|a| RetryInfo::decode(a.value.as_slice()).ok()?.retry_delay)
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_retry_info_and_messages_are_read() {
        use crate::otlp::proto::{Any, Duration as D};
        let status = Status {
            code: 14,
            message: "busy".into(),
            details: vec![Any {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: RetryInfo {
                    retry_delay: Some(D { seconds: 2, nanos: 500 }),
                }
                .encode_to_vec(),
            }],
        };
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(status.encode_to_vec());
        assert_eq!(retry_delay(&b64), Some(Duration::new(2, 500)));
        assert_eq!(retry_delay("not base64!"), None);
        assert_eq!(percent_decode("a%20b%E2%9C%93%"), "a b✓%");
    }

    #[test]
    fn settings_are_checked_with_their_key_paths() {
        let cfg: OtlpSinkConfig =
            toml::from_str("endpoint = \"ftp://x\"\nheaders = { \"bad name\" = \"v\" }\n[request]\nconcurrency = 0").unwrap();
        let mut errors = Vec::new();
        cfg.validate("sinks.o", &mut errors);
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(text.iter().any(|e| e.contains("sinks.o.endpoint")), "{text:?}");
        assert!(text.iter().any(|e| e.contains("sinks.o.headers.bad name")), "{text:?}");
        assert!(text.iter().any(|e| e.contains("sinks.o.request.concurrency")), "{text:?}");
    }

    #[test]
    fn four_requests_go_on_the_wire_unless_the_config_says_otherwise() {
        let concurrency = |toml_text: &str| {
            toml::from_str::<OtlpSinkConfig>(toml_text)
                .unwrap()
                .request
                .concurrency(CONCURRENCY)
        };
        assert_eq!(concurrency("endpoint = \"http://x\""), 4);
        // A request table that sets something else keeps the default.
        assert_eq!(concurrency("endpoint = \"http://x\"\n[request]\ntimeout = \"5s\""), 4);
        assert_eq!(concurrency("endpoint = \"http://x\"\n[request]\nconcurrency = 1"), 1);
    }
}
