//! `type = "otlp"`: OpenTelemetry logs and metrics over gRPC (default
//! `127.0.0.1:4317`) and HTTP (`127.0.0.1:4318`, `POST /v1/logs` and
//! `/v1/metrics`, protobuf or JSON, gzip or not). Each log record becomes
//! one event, mapped as docs/otlp.md says, and then goes the way of every
//! other line: decode, enrichment, SLI rules, sinks. Each metric data
//! point becomes one metric sample; an export's samples leave as one
//! metric batch, which only the sinks that carry metrics receive.
//!
//! Backpressure, as the OTLP spec asks: a request that finds no room in the
//! pipeline within `queue_timeout` is refused with HTTP 503 or gRPC
//! `UNAVAILABLE`, with a retry delay, and SDKs retry it. With
//! `acknowledgements = true` a request is answered only once every sink
//! has delivered its records (or written them to its disk buffer): an
//! SDK's retry then makes delivery at-least-once end to end.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::body::{Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::IntCounterVec;
use prost::Message as _;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;

use super::socket::tls::TlsConfig;
use super::{SourceComponent, SourceCx, SourceError, SourceErrorKind};
use crate::config::{duration, ByteSize, ConfigError, Validate};
use crate::enrich::{Fragment, SourceContext};
use crate::event::{AckGroup, AckOutcome, Acknowledger, BatchBuilder, EventKind, FieldSet};
use crate::framing::{self, split_lines, Lines};
use crate::otlp::grpc::{self, Code};
use crate::otlp::metrics::DeltaSeries;
use crate::otlp::proto::{
    Any, Duration as ProtoDuration, ExportLogsServiceResponse, ExportMetricsPartialSuccess, ExportMetricsServiceRequest,
    ExportMetricsServiceResponse, RetryInfo, Status,
};
use crate::otlp::{json, metrics as otlp_metrics, wire, LOGS_GRPC_PATH, LOGS_HTTP_PATH, METRICS_GRPC_PATH, METRICS_HTTP_PATH};
use crate::pipeline::Task;
use crate::telemetry::counter_vec;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";
const GRPC: &str = "application/grpc";

/// Settings of the OTLP source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpSourceConfig {
    /// Where gRPC is served; `""` turns gRPC off.
    pub(crate) grpc_address: String,
    /// Where OTLP/HTTP is served; `""` turns it off.
    pub(crate) http_address: String,
    /// Largest request taken, before and after gzip; a larger one gets
    /// 413 or `RESOURCE_EXHAUSTED`.
    pub(crate) max_request_bytes: ByteSize,
    /// Answer a request only once every sink has delivered its records.
    pub(crate) acknowledgements: bool,
    /// Requests read and decoded at once, over all connections: with
    /// `max_request_bytes` it bounds the memory requests hold before the
    /// pipeline's budget takes over. One more waits up to `queue_timeout`,
    /// then is refused as retryable.
    pub(crate) max_concurrent_requests: usize,
    /// How long a request waits for room in the pipeline before it is
    /// refused as retryable.
    #[serde(deserialize_with = "duration")]
    pub(crate) queue_timeout: Duration,
    /// The retry delay a refused request is given.
    #[serde(deserialize_with = "duration")]
    pub(crate) retry_after: Duration,
    /// TLS for both listeners (the socket source's `tls` table).
    pub(crate) tls: Option<TlsConfig>,
    /// Delta series (Sums and histograms with delta temporality) whose
    /// running totals are kept; past it a new series' points are rejected.
    pub(crate) max_delta_series: usize,
}

/// A delta series not updated for this long may make room for a new one.
const DELTA_EXPIRE_AFTER: Duration = Duration::from_secs(300);

impl Default for OtlpSourceConfig {
    fn default() -> Self {
        OtlpSourceConfig {
            grpc_address: "127.0.0.1:4317".into(),
            http_address: "127.0.0.1:4318".into(),
            max_request_bytes: ByteSize(4 << 20),
            acknowledgements: false,
            max_concurrent_requests: 16,
            queue_timeout: Duration::from_secs(1),
            retry_after: Duration::from_secs(1),
            tls: None,
            max_delta_series: 10_000,
        }
    }
}

impl OtlpSourceConfig {
    fn listeners(&self) -> impl Iterator<Item = (Protocol, &str)> {
        [
            (Protocol::Grpc, self.grpc_address.as_str()),
            (Protocol::Http, self.http_address.as_str()),
        ]
        .into_iter()
        .filter(|(_, a)| !a.is_empty())
    }
}

impl Validate for OtlpSourceConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        for (key, address) in [("grpc_address", &self.grpc_address), ("http_address", &self.http_address)] {
            if !address.is_empty() && address.parse::<SocketAddr>().is_err() {
                errors.push(ConfigError::at(
                    path,
                    key,
                    format!("{address:?} is not an address like \"127.0.0.1:4317\" (\"\" turns it off)"),
                ));
            }
        }
        if self.grpc_address.is_empty() && self.http_address.is_empty() {
            errors.push(ConfigError::at(
                path,
                "http_address",
                "gRPC and HTTP are both off: nothing would be received",
            ));
        }
        let same = match (self.grpc_address.parse::<SocketAddr>(), self.http_address.parse::<SocketAddr>()) {
            (Ok(g), Ok(h)) => g == h && g.port() != 0,
            _ => false,
        };
        if same {
            errors.push(ConfigError::at(path, "http_address", "gRPC and HTTP need different ports"));
        }
        if !(1..=4096).contains(&self.max_concurrent_requests) {
            errors.push(ConfigError::at(path, "max_concurrent_requests", "must be between 1 and 4096"));
        }
        if self.max_request_bytes.0 < 1024 || self.max_request_bytes.0 > 1 << 30 {
            errors.push(ConfigError::at(path, "max_request_bytes", "must be between 1KiB and 1GiB"));
        }
        if !(1..=10_000_000).contains(&self.max_delta_series) {
            errors.push(ConfigError::at(path, "max_delta_series", "must be between 1 and 10000000"));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Grpc,
    Http,
}

/// Requests refused, by reason: what a client was told to fix or retry;
/// and data points rejected within accepted requests.
struct OtlpMetrics {
    refused: IntCounterVec,
    rejected: IntCounterVec,
}

fn metrics() -> &'static OtlpMetrics {
    static M: OnceLock<OtlpMetrics> = OnceLock::new();
    M.get_or_init(|| OtlpMetrics {
        refused: counter_vec(
            "sluice_otlp_requests_refused_total",
            "OTLP requests refused, by reason (busy, too_large, malformed, unsupported).",
            &["source", "reason"],
        ),
        rejected: counter_vec(
            "sluice_otlp_data_points_rejected_total",
            "OTLP metric data points rejected in accepted exports (reported as partial success), by reason.",
            &["source", "reason"],
        ),
    })
}

/// What every connection of the source shares.
struct Shared {
    cfg: OtlpSourceConfig,
    /// One permit per request being read, decoded or handed over.
    requests: tokio::sync::Semaphore,
    cx: SourceCx,
    ctx: Arc<SourceContext>,
    /// Running totals of delta metric series.
    deltas: std::sync::Mutex<DeltaSeries>,
}

impl SourceComponent for OtlpSourceConfig {
    /// Logs, and metric batches too.
    fn also_produces(&self) -> Option<EventKind> {
        Some(EventKind::Metric)
    }

    /// Binds every enabled listener, then serves until shutdown.
    fn build(&self, cx: SourceCx) -> Result<Task<SourceError>, SourceError> {
        let tls = match &self.tls {
            Some(t) => Some(t.server_config().map_err(|e| SourceError::new(&cx.name, e))?),
            None => None,
        };
        let cfg = self.clone();
        Ok(Box::pin(async move {
            let mut listeners = Vec::new();
            for (protocol, address) in cfg.listeners() {
                let bind = async {
                    let addr: SocketAddr = address.parse().map_err(|_| std::io::Error::other("not an address"))?;
                    TcpListener::bind(addr).await
                };
                let listener = bind.await.map_err(|error| {
                    SourceError::new(
                        &cx.name,
                        SourceErrorKind::Io {
                            action: "bind the OTLP listener",
                            error,
                        },
                    )
                })?;
                if let Ok(address) = listener.local_addr() {
                    match protocol {
                        Protocol::Grpc => tracing::info!(source = %cx.name, %address, "receiving OTLP over gRPC"),
                        Protocol::Http => tracing::info!(source = %cx.name, %address, "receiving OTLP over HTTP"),
                    }
                }
                let acceptor = tls.as_ref().map(|t| {
                    let mut t = t.clone();
                    t.alpn_protocols = match protocol {
                        Protocol::Grpc => vec![b"h2".to_vec()],
                        Protocol::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                    };
                    tokio_rustls::TlsAcceptor::from(Arc::new(t))
                });
                listeners.push((protocol, listener, acceptor));
            }
            let meta = cx.enrich.metadata(None);
            let shared = Arc::new(Shared {
                requests: tokio::sync::Semaphore::new(cfg.max_concurrent_requests),
                ctx: Arc::new(SourceContext::new(cx.name.clone(), "otlp", String::new(), meta)),
                deltas: std::sync::Mutex::new(DeltaSeries::new(cfg.max_delta_series, DELTA_EXPIRE_AFTER)),
                cfg,
                cx: cx.clone(),
            });
            let tasks: Vec<_> = listeners
                .into_iter()
                .map(|(protocol, listener, acceptor)| tokio::spawn(accept_loop(protocol, listener, acceptor, shared.clone())))
                .collect();
            let mut shutdown = cx.shutdown.clone();
            shutdown.wait().await;
            for t in tasks {
                t.abort();
            }
            Ok(())
        }))
    }
}

async fn accept_loop(protocol: Protocol, listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, shared: Arc<Shared>) {
    let handshake = shared.cfg.tls.as_ref().map(|t| t.handshake_timeout).unwrap_or_default();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(source = %shared.cx.name, %error, "OTLP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve(protocol, stream, shared).await,
                Some(acceptor) => match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve(protocol, stream, shared).await,
                    Ok(Err(error)) => tracing::info!(source = %shared.cx.name, %error, "OTLP TLS handshake failed"),
                    Err(_) => tracing::info!(source = %shared.cx.name, "OTLP TLS handshake timed out"),
                },
            }
        });
    }
}

async fn serve<S>(protocol: Protocol, stream: S, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move {
            Ok::<_, std::convert::Infallible>(match protocol {
                Protocol::Grpc => grpc_request(req, &shared).await,
                Protocol::Http => http_request(req, &shared).await,
            })
        }
    });
    let io = TokioIo::new(stream);
    let _ = match protocol {
        Protocol::Grpc => {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc)
                .await
        }
        Protocol::Http => hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await,
    };
}

/// Why a request was not taken.
#[derive(Debug)]
enum Refusal {
    /// No room in the pipeline in time, or shutting down: retry later.
    Busy,
    /// Over `max_request_bytes`.
    TooLarge,
    /// Not a valid request.
    Malformed(String),
    /// A path, method, content type or encoding sluice does not serve.
    Unsupported(String),
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::TooLarge => "too_large",
            Refusal::Malformed(_) => "malformed",
            Refusal::Unsupported(_) => "unsupported",
        }
    }

    fn message(&self, limit: u64) -> String {
        match self {
            Refusal::Busy => "the pipeline is full; retry later".into(),
            Refusal::TooLarge => format!("the request is over max_request_bytes ({limit} bytes)"),
            Refusal::Malformed(m) | Refusal::Unsupported(m) => m.clone(),
        }
    }
}

/// A slot among `max_concurrent_requests`, waited for up to
/// `queue_timeout`.
async fn request_permit(shared: &Shared) -> Result<tokio::sync::SemaphorePermit<'_>, Refusal> {
    match tokio::time::timeout(shared.cfg.queue_timeout, shared.requests.acquire()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(Refusal::Busy),
    }
}

/// Reads a body of at most `limit` bytes into a spare read buffer (see
/// [`framing::spare_buffer`]; [`framing::recycle`] gives it back).
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Refusal> {
    let hint = usize::try_from(hyper::body::Body::size_hint(&body).lower())
        .unwrap_or(limit)
        .min(limit);
    let mut body = Limited::new(body, limit);
    let mut buf = framing::spare_buffer(hint);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(Refusal::TooLarge),
            Err(e) => return Err(Refusal::Malformed(format!("cannot read the body: {e}"))),
        }
    }
    Ok(Bytes::from(buf))
}

/// What an export asks for: logs or metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Logs,
    Metrics,
}

impl Signal {
    fn of_http_path(path: &str) -> Option<Signal> {
        match path {
            LOGS_HTTP_PATH => Some(Signal::Logs),
            METRICS_HTTP_PATH => Some(Signal::Metrics),
            _ => None,
        }
    }

    fn of_grpc_path(path: &str) -> Option<Signal> {
        match path {
            LOGS_GRPC_PATH => Some(Signal::Logs),
            METRICS_GRPC_PATH => Some(Signal::Metrics),
            _ => None,
        }
    }

    /// Reads a request of this signal from protobuf, or OTLP/JSON. Log
    /// records are rendered as events at once, with `fragment`'s members.
    fn decode(self, body: &[u8], json: bool, fragment: &Fragment) -> Result<Export, Refusal> {
        let bad_json = |e: json::JsonError| Refusal::Malformed(format!("bad OTLP/JSON: {e}"));
        let bad_proto = |e: prost::DecodeError| Refusal::Malformed(format!("bad OTLP protobuf: {e}"));
        let bad_wire = |e: wire::WireError| Refusal::Malformed(format!("bad OTLP protobuf: {e}"));
        let render = |request: &[u8]| {
            // Events take about three times the bytes of their protobuf.
            let mut events = framing::spare_buffer(request.len().saturating_mul(3));
            wire::render_logs(request, fragment, &mut events).map(|records| Export::Logs { events, records })
        };
        Ok(match (self, json) {
            (Signal::Logs, true) => render(&json::logs_request(body).map_err(bad_json)?.encode_to_vec()).map_err(bad_wire)?,
            (Signal::Logs, false) => render(body).map_err(bad_wire)?,
            (Signal::Metrics, true) => Export::Metrics(json::metrics_request(body).map_err(bad_json)?),
            (Signal::Metrics, false) => Export::Metrics(ExportMetricsServiceRequest::decode(body).map_err(bad_proto)?),
        })
    }

    /// The answer to an accepted export, in protobuf.
    fn response(self, accepted: &Accepted) -> Vec<u8> {
        match self {
            Signal::Logs => ExportLogsServiceResponse::default().encode_to_vec(),
            Signal::Metrics => ExportMetricsServiceResponse {
                partial_success: (accepted.rejected > 0).then(|| ExportMetricsPartialSuccess {
                    rejected_data_points: accepted.rejected as i64,
                    error_message: accepted.message.clone(),
                }),
            }
            .encode_to_vec(),
        }
    }

    /// The answer to an accepted export, in OTLP/JSON.
    fn json_response(self, accepted: &Accepted) -> Bytes {
        if accepted.rejected == 0 {
            return Bytes::from_static(b"{}");
        }
        let partial = serde_json::json!({"partialSuccess": {
            "rejectedDataPoints": accepted.rejected.to_string(),
            "errorMessage": accepted.message,
        }});
        Bytes::from(partial.to_string())
    }
}

/// A decoded export request.
enum Export {
    /// Log records rendered as event lines, the source's members in.
    Logs {
        events: Vec<u8>,
        records: usize,
    },
    Metrics(ExportMetricsServiceRequest),
}

/// What an accepted export did not take: metric data points rejected, and
/// why (the partial success).
#[derive(Debug, Default)]
struct Accepted {
    rejected: usize,
    message: String,
}

/// Takes a decoded request into the pipeline: its records as one batch
/// (or its data points as one metric batch), waiting for every sink when
/// acknowledgements are on.
async fn accept(export: Export, shared: &Shared) -> Result<Accepted, Refusal> {
    let (buf, count) = match export {
        Export::Logs { events, records } => (events, records),
        Export::Metrics(request) => return accept_metrics(&request, shared).await,
    };
    if count == 0 {
        return Ok(Accepted::default());
    }
    let mut spans = Vec::with_capacity(count);
    split_lines(&buf, &mut spans);
    let lines = Lines {
        chunk: Bytes::from(buf),
        spans,
        dropped: 0,
        may_hold_breaks: false,
    };
    let acks = shared.cfg.acknowledgements.then(AckGroup::new);
    let ack = acks.as_ref().map(|(group, _)| group.next());
    let taken = shared
        .cx
        .output
        .send_rendered_within(lines, shared.ctx.clone(), ack, shared.cfg.queue_timeout)
        .await;
    delivered(taken, acks).await?;
    Ok(Accepted::default())
}

/// Takes a metrics request into the pipeline as one metric batch.
async fn accept_metrics(request: &ExportMetricsServiceRequest, shared: &Shared) -> Result<Accepted, Refusal> {
    let points = otlp_metrics::point_count(request);
    let mut buf = Vec::with_capacity(points * 256);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let written = {
        let mut deltas = shared.deltas.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        otlp_metrics::write_samples(request, &shared.ctx.fragment, &mut deltas, now_ms, &mut buf)
    };
    for (reject, n) in written.rejections() {
        metrics()
            .rejected
            .with_label_values(&[&shared.cx.name, reject.reason()])
            .inc_by(n as u64);
    }
    let accepted = Accepted {
        rejected: written.rejected_total(),
        message: written.message(),
    };
    if written.samples == 0 {
        return Ok(accepted);
    }
    let mut out = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), buf.len(), written.samples);
    for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        out.buffer().extend_from_slice(line);
        out.finish_event();
    }
    let acks = shared.cfg.acknowledgements.then(AckGroup::new);
    let ack: Option<Acknowledger> = acks.as_ref().map(|(group, _)| group.next());
    let batch = out
        .build(shared.ctx.clone(), std::time::SystemTime::now())
        .with_kind(EventKind::Metric)
        .with_ack(ack);
    let taken = shared.cx.output.send_batch_within(batch, shared.cfg.queue_timeout).await;
    delivered(taken, acks).await?;
    Ok(accepted)
}

/// Whether a batch handed to the pipeline was taken and, with
/// acknowledgements, delivered by every sink.
async fn delivered(
    taken: Result<bool, crate::pipeline::PipelineClosed>,
    acks: Option<(AckGroup, crate::event::AckReceiver)>,
) -> Result<(), Refusal> {
    if !taken.map_err(|_| Refusal::Busy)? {
        return Err(Refusal::Busy);
    }
    if let Some((group, mut rx)) = acks {
        drop(group);
        match rx.recv().await {
            Some(c) if c.outcome != AckOutcome::Abandoned => {}
            // Shut down before every sink delivered: the client retries.
            _ => return Err(Refusal::Busy),
        }
    }
    Ok(())
}

fn refused(shared: &Shared, r: &Refusal) {
    metrics().refused.with_label_values(&[&shared.cx.name, r.reason()]).inc();
    if !matches!(r, Refusal::Busy) {
        tracing::debug!(source = %shared.cx.name, reason = r.reason(), error = %r.message(shared.cfg.max_request_bytes.0), "OTLP request refused");
    }
}

// --- OTLP/HTTP --------------------------------------------------------------

async fn http_request(req: Request<Incoming>, shared: &Shared) -> Response<Reply> {
    let json = content_type(req.headers()).is_some_and(|t| t == JSON);
    let signal = Signal::of_http_path(req.uri().path());
    match http_export(req, signal, shared).await {
        Ok((signal, accepted)) => {
            let body = if json {
                signal.json_response(&accepted)
            } else {
                Bytes::from(signal.response(&accepted))
            };
            response(StatusCode::OK, if json { JSON } else { PROTOBUF }, body)
        }
        Err(r) => {
            refused(shared, &r);
            let status = match r {
                Refusal::Busy => StatusCode::SERVICE_UNAVAILABLE,
                Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
                Refusal::Unsupported(ref m) if m.starts_with("no ") => StatusCode::NOT_FOUND,
                Refusal::Unsupported(ref m) if m.starts_with("method") => StatusCode::METHOD_NOT_ALLOWED,
                Refusal::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            };
            let message = r.message(shared.cfg.max_request_bytes.0);
            let code = match r {
                Refusal::Busy => Code::Unavailable,
                Refusal::TooLarge => Code::ResourceExhausted,
                Refusal::Malformed(_) => Code::InvalidArgument,
                Refusal::Unsupported(_) => Code::Unimplemented,
            };
            let body = if json {
                Bytes::from(serde_json::json!({"code": code as i32, "message": message}).to_string())
            } else {
                Bytes::from(
                    Status {
                        code: code as i32,
                        message,
                        details: Vec::new(),
                    }
                    .encode_to_vec(),
                )
            };
            let mut resp = response(status, if json { JSON } else { PROTOBUF }, body);
            if matches!(r, Refusal::Busy) {
                resp.headers_mut().insert(RETRY_AFTER, retry_after_seconds(shared.cfg.retry_after));
            }
            resp
        }
    }
}

async fn http_export(req: Request<Incoming>, signal: Option<Signal>, shared: &Shared) -> Result<(Signal, Accepted), Refusal> {
    let Some(signal) = signal else {
        return Err(Refusal::Unsupported(format!(
            "no OTLP endpoint at {} (this source takes {LOGS_HTTP_PATH} and {METRICS_HTTP_PATH})",
            req.uri().path()
        )));
    };
    if req.method() != Method::POST {
        return Err(Refusal::Unsupported(format!("method {} (OTLP takes POST)", req.method())));
    }
    let kind = match content_type(req.headers()) {
        Some(t) if t == PROTOBUF || t == JSON => t,
        other => {
            return Err(Refusal::Unsupported(format!(
                "content type {:?} (OTLP/HTTP takes {PROTOBUF} or {JSON})",
                other.unwrap_or_default()
            )))
        }
    };
    let gzip = match req.headers().get(CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?")) {
        None | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => return Err(Refusal::Unsupported(format!("content encoding {other:?} (gzip or none)"))),
    };
    let _permit = request_permit(shared).await?;
    let limit = shared.cfg.max_request_bytes.0 as usize;
    let mut body = read_body(req.into_body(), limit).await?;
    if gzip {
        body = grpc::gunzip(&body, limit).map(Bytes::from).map_err(|e| match e {
            grpc::GunzipError::TooLarge => Refusal::TooLarge,
            grpc::GunzipError::Bad(m) => Refusal::Malformed(format!("bad gzip: {m}")),
        })?;
    }
    let export = signal.decode(&body, kind == JSON, &shared.ctx.fragment);
    framing::recycle(body);
    Ok((signal, accept(export?, shared).await?))
}

/// The media type without parameters, lowercased.
fn content_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

fn response(status: StatusCode, kind: &'static str, body: Bytes) -> Response<Reply> {
    let mut r = Response::new(Reply {
        data: (!body.is_empty()).then_some(body),
        trailers: None,
    });
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

fn retry_after_seconds(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_secs_f64().ceil().max(1.0) as u64)
}

/// A response body: at most one data frame, then trailers if any (gRPC's
/// status travels in trailers after the message).
struct Reply {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for Reply {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match self.data.take() {
            Some(d) => Some(Frame::data(d)),
            None => self.trailers.take().map(Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

// --- gRPC -------------------------------------------------------------------

async fn grpc_request(req: Request<Incoming>, shared: &Shared) -> Response<Reply> {
    match grpc_export(req, shared).await {
        Ok((signal, accepted)) => {
            let mut r = response(StatusCode::OK, GRPC, Bytes::from(grpc::frame(&signal.response(&accepted))));
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            r.body_mut().trailers = Some(trailers);
            r
        }
        Err(r) => {
            refused(shared, &r);
            let code = match r {
                Refusal::Busy => Code::Unavailable,
                Refusal::TooLarge => Code::ResourceExhausted,
                Refusal::Malformed(_) => Code::InvalidArgument,
                Refusal::Unsupported(_) => Code::Unimplemented,
            };
            let message = r.message(shared.cfg.max_request_bytes.0);
            let mut resp = response(StatusCode::OK, GRPC, Bytes::new());
            let h = resp.headers_mut();
            h.insert("grpc-status", HeaderValue::from(code as i32));
            if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
                h.insert("grpc-message", v);
            }
            if matches!(r, Refusal::Busy) {
                let retry = shared.cfg.retry_after;
                let status = Status {
                    code: code as i32,
                    message,
                    details: vec![Any {
                        type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                        value: RetryInfo {
                            retry_delay: Some(ProtoDuration {
                                seconds: retry.as_secs() as i64,
                                nanos: retry.subsec_nanos() as i32,
                            }),
                        }
                        .encode_to_vec(),
                    }],
                };
                let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD_NO_PAD, status.encode_to_vec());
                if let Ok(v) = HeaderValue::from_str(&b64) {
                    h.insert("grpc-status-details-bin", v);
                }
            }
            resp
        }
    }
}

async fn grpc_export(req: Request<Incoming>, shared: &Shared) -> Result<(Signal, Accepted), Refusal> {
    let Some(signal) = Signal::of_grpc_path(req.uri().path()) else {
        return Err(Refusal::Unsupported(format!("no method {} here", req.uri().path())));
    };
    if !content_type(req.headers()).is_some_and(|t| t.starts_with(GRPC)) {
        return Err(Refusal::Unsupported("content type is not application/grpc".into()));
    }
    let encoding = req.headers().get("grpc-encoding").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let _permit = request_permit(shared).await?;
    let limit = shared.cfg.max_request_bytes.0 as usize;
    // The 5-byte prefix on top of the message's limit.
    let body = read_body(req.into_body(), limit + 5).await?;
    let message = grpc::unframe(&body, encoding.as_deref(), limit).map_err(|e| match e {
        grpc::FrameError::TooLarge(_) => Refusal::TooLarge,
        grpc::FrameError::Encoding(m) => Refusal::Unsupported(format!("grpc-encoding {m:?} (gzip or none)")),
        other => Refusal::Malformed(other.to_string()),
    })?;
    let export = signal.decode(&message, false, &shared.ctx.fragment);
    drop(message);
    framing::recycle(body);
    Ok((signal, accept(export?, shared).await?))
}

/// `grpc-message` is percent-encoded outside printable ASCII.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(text: &str) -> Vec<String> {
        let cfg: OtlpSourceConfig = toml::from_str(text).unwrap();
        let mut errors = Vec::new();
        cfg.validate("sources.otel", &mut errors);
        errors.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn listeners_are_checked_with_their_key_paths() {
        assert!(validate("").is_empty());
        let e = validate("grpc_address = \"nowhere\"");
        assert!(e[0].contains("sources.otel.grpc_address"), "{e:?}");
        let e = validate("grpc_address = \"\"\nhttp_address = \"\"");
        assert!(e[0].contains("both off"), "{e:?}");
        let e = validate("grpc_address = \"127.0.0.1:9\"\nhttp_address = \"127.0.0.1:9\"");
        assert!(e[0].contains("different ports"), "{e:?}");
        let e = validate("max_request_bytes = \"10B\"");
        assert!(e[0].contains("sources.otel.max_request_bytes"), "{e:?}");
    }

    #[test]
    fn log_only_and_metric_only_sinks_may_both_take_the_otlp_source() {
        use crate::topology::{Config, Format};
        let sinks = "[sinks.loki]\ntype = \"loki\"\nendpoint = \"http://127.0.0.1:3100\"\n\
                     [sinks.rw]\ntype = \"prometheus_remote_write\"\nendpoint = \"http://127.0.0.1:9090/api/v1/write\"\n";
        let text = format!("[sources.otel]\ntype = \"otlp\"\n{sinks}");
        let c = Config::from_str(&text, Format::Toml, &|_| None).unwrap();
        let mut fed: Vec<&str> = c.sinks_for("otel").collect();
        fed.sort();
        assert_eq!(fed, ["loki", "rw"]);
        let named =
            format!("{text}[sinks.rw2]\ntype = \"prometheus_remote_write\"\nendpoint = \"http://127.0.0.1:9\"\ninputs = [\"otel\"]\n");
        assert!(Config::from_str(&named, Format::Toml, &|_| None).is_ok());
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(percent_encode("a b%\n✓"), "a b%25%0A%E2%9C%93");
    }
}
