//! `type = "prometheus_remote_write"`: sends metric samples to Prometheus,
//! Mimir, Thanos, VictoriaMetrics or Cortex with remote write 1.0
//! (protobuf, snappy).
//!
//! Each metric batch's samples ([`crate::metrics::sample`]) become series
//! ([`encode`]) with the external labels and the batch's metadata labels
//! added. A request leaves at `batch.max_samples` samples, or
//! `batch.timeout` after its first one.
//!
//! Delivery, as the remote write spec asks: 5xx, 429 and connection errors
//! are retried with backoff (through the shared [`Endpoint`]) until they
//! succeed; other 4xx are not retried and their samples are counted as
//! dropped; 401, 403 and 404 stop the sink (credentials or address). A
//! source batch is acknowledged once every request carrying its samples is
//! done.

mod config;
pub mod encode;

pub use config::RemoteWriteConfig;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;

use self::encode::SeriesBuilder;
use super::delivery::{self, Answer, Endpoint, ErrorKind, Verdict};
use super::http::RequestOutcome as Outcome;
use super::http::{self, sleep_until, AckTracker, TrackId};
use super::metadata_labels::AddedLabels;
use super::{SinkComponent, SinkCx, SinkError, SinkErrorKind};
use crate::buffer::{QueueItem, QueueReceiver};
use crate::event::{AckOutcome, Batch, EventKind};
use crate::metrics::Sample;
use crate::pipeline::Task;
use crate::telemetry::metrics;

impl SinkComponent for RemoteWriteConfig {
    /// Metric samples only.
    fn accepts(&self, kind: EventKind) -> bool {
        kind == EventKind::Metric
    }

    /// Prepares the client and starts the sink.
    async fn build(&self, cx: SinkCx, input: QueueReceiver) -> Result<Task<SinkError>, SinkError> {
        let shared = Arc::new(Shared::new(self, &cx).map_err(|e| SinkError::new(&cx.name, SinkErrorKind::Setup(e)))?);
        let sink = RemoteWriteSink {
            shared,
            config: self.clone(),
            tracker: AckTracker::default(),
            pending: Pending::default(),
            last_body: 0,
            added: AddedLabels::new(&self.external_labels, &self.metadata_labels),
        };
        Ok(Box::pin(sink.run(input)))
    }
}

/// What request tasks share.
struct Shared {
    name: Arc<str>,
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    endpoint: Endpoint,
    samples: prometheus::IntCounter,
    bytes: prometheus::IntCounter,
    rejected: prometheus::IntCounter,
    invalid: prometheus::IntCounter,
}

impl Shared {
    fn new(cfg: &RemoteWriteConfig, cx: &SinkCx) -> Result<Shared, String> {
        let url = reqwest::Url::parse(&cfg.endpoint).map_err(|e| format!("endpoint: invalid URL: {e}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("snappy"));
        headers.insert("X-Prometheus-Remote-Write-Version", HeaderValue::from_static("0.1.0"));
        http::add_target_headers(&mut headers, cfg.tenant_id.as_deref(), cfg.auth.as_ref())?;
        let m = metrics();
        let name: &str = &cx.name;
        Ok(Shared {
            name: cx.name.clone(),
            client: http::client(cfg.request.timeout, cfg.tls.as_ref(), &cx.name)?,
            url,
            headers,
            endpoint: Endpoint::new(cx.name.clone(), "remote write", cfg.retry.clone(), cx.health.clone()),
            samples: m.sink_events.with_label_values(&[name]),
            bytes: m.sink_bytes.with_label_values(&[name]),
            rejected: m.events_dropped.with_label_values(&[name, "rejected"]),
            invalid: m.events_dropped.with_label_values(&[name, "not_a_metric"]),
        })
    }
}

/// The request being filled: its series already encoded as protobuf.
#[derive(Default)]
struct Pending {
    body: Vec<u8>,
    samples: usize,
    parts: Vec<TrackId>,
    opened: Option<Instant>,
}

/// A request ready to send.
struct Request {
    /// An encoded `WriteRequest`, not yet compressed.
    body: Vec<u8>,
    samples: usize,
    parts: Vec<TrackId>,
}

/// A source batch whose samples are being added to requests, a request at
/// a time, so that a large batch (a statsd flush of every series) does not
/// hold back sending the requests it fills.
struct Intake {
    id: TrackId,
    batch: Arc<Batch>,
    /// The next event to add.
    next: usize,
    builder: SeriesBuilder,
    /// Whether the pending request already carries a part of this batch.
    in_pending: bool,
    invalid: u64,
}

/// The sink's state, owned by its task.
struct RemoteWriteSink {
    shared: Arc<Shared>,
    config: RemoteWriteConfig,
    tracker: AckTracker,
    pending: Pending,
    /// Bytes of the last request sealed: the next one reserves as much.
    last_body: usize,
    /// `external_labels` and `metadata_labels`.
    added: AddedLabels,
}

impl RemoteWriteSink {
    async fn run(mut self, mut input: QueueReceiver) -> Result<(), SinkError> {
        let mut inflight: JoinSet<(Vec<TrackId>, Outcome)> = JoinSet::new();
        let mut sealed: VecDeque<Request> = VecDeque::new();
        let mut intake: Option<Intake> = None;
        let mut input_open = true;
        let timeout = self.config.batch.timeout;
        loop {
            while inflight.len() < self.config.request.concurrency(1) {
                let Some(r) = sealed.pop_front() else { break };
                inflight.spawn(send(self.shared.clone(), r));
            }
            if !input_open && intake.is_none() && sealed.is_empty() && inflight.is_empty() {
                return Ok(());
            }
            // The batch being added goes on while its next request has a
            // slot to go to; each filled request is sent before the next
            // is built.
            if sealed.is_empty() {
                if let Some(i) = intake.as_mut() {
                    if self.fill(i, &mut sealed) {
                        intake = None;
                    }
                    continue;
                }
            }
            let deadline = self.pending.opened.map(|t| tokio::time::Instant::from_std(t + timeout));
            // A request waiting for a slot stops intake: the queue fills and
            // backpressure reaches the sources.
            let accepting = input_open && sealed.is_empty() && intake.is_none();
            tokio::select! {
                Some(res) = inflight.join_next(), if !inflight.is_empty() => {
                    let (parts, outcome) = res.unwrap_or_else(|e| (Vec::new(), Outcome::Fatal(format!("request task failed: {e}"))));
                    self.finish(parts, outcome)?;
                }
                item = input.recv(), if accepting => match item {
                    Some(item) => intake = self.take(item),
                    None => {
                        input_open = false;
                        sealed.extend(self.seal());
                    }
                },
                _ = sleep_until(deadline), if deadline.is_some() => sealed.extend(self.seal()),
            }
        }
    }

    /// Starts tracking a batch; its samples are added by [`Self::fill`].
    /// The queue item (and its budget) is held until every request
    /// carrying its samples is done.
    fn take(&mut self, item: QueueItem) -> Option<Intake> {
        let batch = item.batch.clone();
        let id = self.tracker.track(item, true);
        if batch.kind() != EventKind::Metric {
            // Validation keeps logs away; a log batch that arrives anyway
            // (through a reload race) is counted, not sent.
            self.shared.invalid.inc_by(batch.len() as u64);
            self.tracker.add_part(id);
            self.tracker.part_done(id, AckOutcome::Dropped);
            self.tracker.seal(id);
            return None;
        }
        let builder = SeriesBuilder::new(self.added.of_batch(&batch.source));
        Some(Intake {
            id,
            batch,
            next: 0,
            builder,
            in_pending: false,
            invalid: 0,
        })
    }

    /// Adds the intake's samples to the pending request until it fills
    /// (it goes to `sealed`) or the batch ends; true when the batch has
    /// ended.
    fn fill(&mut self, intake: &mut Intake, sealed: &mut VecDeque<Request>) -> bool {
        while intake.next < intake.batch.len() {
            let event = intake.batch.event(intake.next);
            intake.next += 1;
            let Ok(sample) = Sample::parse(event) else {
                intake.invalid += 1;
                continue;
            };
            if !intake.in_pending {
                self.tracker.add_part(intake.id);
                self.pending.parts.push(intake.id);
                if self.pending.opened.is_none() {
                    self.pending.opened = Some(Instant::now());
                    self.pending.body.reserve(self.last_body);
                }
                intake.in_pending = true;
            }
            let mut own = self.own_labels(event, &intake.builder);
            let builder = own.as_mut().unwrap_or(&mut intake.builder);
            self.pending.samples += builder.add(&sample, &mut self.pending.body);
            if self.pending.samples >= self.config.batch.max_samples {
                sealed.extend(self.seal());
                intake.in_pending = false;
                return false;
            }
        }
        if intake.invalid > 0 {
            self.shared.invalid.inc_by(intake.invalid);
            self.tracker.add_part(intake.id);
            self.tracker.part_done(intake.id, AckOutcome::Dropped);
        }
        self.tracker.seal(intake.id);
        true
    }

    /// The labels of a sample whose own metadata members (an OTLP
    /// resource's) give `metadata_labels` values: they win over the
    /// batch's. `None` when it has none.
    fn own_labels(&self, event: &[u8], batch: &SeriesBuilder) -> Option<SeriesBuilder> {
        self.added.of_event(event, &batch.extra).map(SeriesBuilder::new)
    }

    /// Closes the pending request, if it holds anything.
    fn seal(&mut self) -> Option<Request> {
        let p = std::mem::take(&mut self.pending);
        self.last_body = self.last_body.max(p.body.len());
        (!p.parts.is_empty()).then_some(Request {
            body: p.body,
            samples: p.samples,
            parts: p.parts,
        })
    }

    /// Acknowledges the batches of a finished request.
    fn finish(&mut self, parts: Vec<TrackId>, outcome: Outcome) -> Result<(), SinkError> {
        self.tracker.request_done(&self.shared.name, &parts, outcome)
    }
}

/// Encodes and sends one request until the endpoint answers something
/// final.
async fn send(shared: Arc<Shared>, r: Request) -> (Vec<TrackId>, Outcome) {
    let Request { body, samples, parts } = r;
    let body = match encode::compress(&body) {
        Ok(b) => Bytes::from(b),
        Err(e) => return (parts, Outcome::Fatal(format!("cannot compress a request: {e}"))),
    };
    let len = body.len() as u64;
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
            |resp| judge(&shared, resp, samples as u64),
        )
        .await;
    if let Outcome::Delivered = outcome {
        shared.samples.inc_by(samples as u64);
        shared.bytes.inc_by(len);
    }
    (parts, outcome)
}

/// What the endpoint's answer means.
async fn judge(shared: &Shared, resp: reqwest::Response, samples: u64) -> Answer<Outcome> {
    let (status, text) = match delivery::classify(resp).await {
        Verdict::Success => return Answer::Accepted(Outcome::Delivered),
        Verdict::Retry(failed) => return Answer::Retry(failed),
        Verdict::Final(status, text) => (status, text),
    };
    if delivery::is_misconfiguration(status) {
        return Answer::Refused(
            ErrorKind::Client,
            Outcome::Fatal(format!(
                "{} answered {status} to remote write: {} (check endpoint, tenant_id and auth)",
                shared.url,
                http::excerpt(text.trim())
            )),
        );
    }
    shared.rejected.inc_by(samples);
    tracing::warn!(sink = %shared.name, status = %status, samples, answer = %http::excerpt(text.trim()),
        "remote write refused a request; its samples are counted in sluice_events_dropped_total and not retried");
    Answer::Refused(ErrorKind::Client, Outcome::Dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback HTTP server answering requests with `statuses` in turn
    /// (the last one from then on); returns its URL and the request count.
    async fn scripted_server(statuses: Vec<u16>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v1/write", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (statuses, count) = (statuses.clone(), count.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        // One request: its head, then Content-Length bytes.
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..head_end + len);
                        let i = count.fetch_add(1, Ordering::SeqCst);
                        let status = statuses[i.min(statuses.len() - 1)];
                        let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                        if conn.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    async fn deliver_once(statuses: Vec<u16>) -> (Outcome, usize) {
        let (url, seen) = scripted_server(statuses).await;
        let cfg: RemoteWriteConfig = serde_json::from_value(serde_json::json!({
            "endpoint": url,
            "retry": {"initial_backoff": "10ms", "max_backoff": "20ms"},
        }))
        .unwrap();
        let cx = SinkCx {
            name: "rw".into(),
            fields: Arc::new(crate::event::FieldSet::new()),
            health: Arc::new(crate::telemetry::Health::default()),
            data_dir: None,
        };
        let shared = Arc::new(Shared::new(&cfg, &cx).unwrap());
        let series = encode::TimeSeries {
            labels: vec![encode::Label {
                name: "__name__".into(),
                value: "x".into(),
            }],
            samples: vec![encode::PromSample { value: 1.0, timestamp: 1 }],
        };
        let request = Request {
            body: prost::Message::encode_to_vec(&encode::WriteRequest { timeseries: vec![series] }),
            samples: 1,
            parts: Vec::new(),
        };
        let (_, outcome) = send(shared, request).await;
        (outcome, seen.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_large_batch_sends_its_first_request_before_reading_the_rest() {
        // A server that never answers: the first request holds the only
        // slot. The batch fills three requests and ends with an event that
        // is not a sample; while the first request waits, the sink has
        // built the next one and stopped, so that event is not read yet.
        // (A sink that encodes a whole batch before sending any of it
        // would already have counted it.)
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v1/write", listener.local_addr().unwrap());
        let (arrived, mut first) = tokio::sync::mpsc::channel::<()>(1);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let arrived = arrived.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1 << 16];
                    let _ = conn.read(&mut buf).await;
                    let _ = arrived.send(()).await;
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                });
            }
        });
        let name = "rw-large-batch";
        let cfg: RemoteWriteConfig = serde_json::from_value(serde_json::json!({
            "endpoint": url,
            "batch": {"max_samples": 10, "timeout": "1h"},
            "request": {"concurrency": 1},
        }))
        .unwrap();
        let cx = SinkCx {
            name: name.into(),
            fields: Arc::new(crate::event::FieldSet::new()),
            health: Arc::new(crate::telemetry::Health::default()),
            data_dir: None,
        };
        let mut b = crate::event::BatchBuilder::with_capacity(Arc::new(crate::event::FieldSet::new()), 4096, 31);
        for i in 0..30 {
            crate::metrics::sample::write_sample(
                b.buffer(),
                "hits",
                [("shard", i.to_string().as_str())],
                1_700_000_000_000,
                &crate::metrics::SampleValue::Counter(1.0),
                &crate::enrich::Fragment::default(),
            );
            b.finish_event();
        }
        b.buffer().extend_from_slice(b"{\"message\":\"not a sample\"}");
        b.finish_event();
        let context = Arc::new(crate::enrich::SourceContext::new(
            "t".into(),
            "statsd",
            String::new(),
            Default::default(),
        ));
        let batch = b.build(context, std::time::SystemTime::now()).with_kind(EventKind::Metric);
        let (tx, rx) = crate::buffer::queue(name, &crate::buffer::BufferConfig::default());
        tx.send(Arc::new(batch)).await.unwrap();
        let sink = tokio::spawn(cfg.build(cx, rx).await.unwrap());
        tokio::time::timeout(std::time::Duration::from_secs(30), first.recv())
            .await
            .expect("the first request arrives");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let invalid = metrics().events_dropped.with_label_values(&[name, "not_a_metric"]).get();
        sink.abort();
        assert_eq!(invalid, 0, "the batch's last event was read before its first request was answered");
    }

    #[tokio::test]
    async fn server_errors_and_429_are_retried_until_accepted() {
        let (outcome, requests) = deliver_once(vec![503, 429, 500, 204]).await;
        assert!(matches!(outcome, Outcome::Delivered));
        assert_eq!(requests, 4);
    }

    #[tokio::test]
    async fn other_client_errors_are_not_retried() {
        let (outcome, requests) = deliver_once(vec![400, 204]).await;
        assert!(matches!(outcome, Outcome::Dropped));
        assert_eq!(requests, 1, "a 400 is final");
        let (outcome, requests) = deliver_once(vec![401, 204]).await;
        assert!(matches!(outcome, Outcome::Fatal(_)), "refused credentials stop the sink");
        assert_eq!(requests, 1);
    }
}
