//! `type = "kafka"`: one Kafka message per event, through librdkafka.
//!
//! A producer thread takes batches from the sink's queue and hands every
//! event to librdkafka with the batch's [`Flight`] as the delivery opaque.
//! librdkafka's delivery reports (on the [`ThreadedProducer`]'s polling
//! thread) count each flight down; when its last message is settled the
//! batch is acknowledged: `Delivered`, or `Dropped` if some message failed
//! in a way no retry can fix (too large, invalid). Any other failure is
//! retried by sending the message again after an exponential backoff with
//! jitter. A full librdkafka queue is backpressure: the producer thread
//! waits for room, the sink's queue fills, the fan-out's policy applies.

mod config;
mod topic;

pub(crate) use config::{check_librdkafka_option, KafkaConfig};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::{SinkComponent, SinkCx, SinkError, SinkErrorKind};
use crate::buffer::{BudgetShare, QueueItem, QueueReceiver};
use crate::event::{AckOutcome, Acknowledger, FieldPath};
use crate::pipeline::Task;
use crate::telemetry::{metrics, Health};
use topic::{BoundTopic, TopicTemplate};

/// How long the producer thread waits before offering a message again when
/// librdkafka's queue is full. Short: the queue drains at broker speed.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(2);

/// First retry delay, and the most a delay grows to.
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// How often the producer thread looks at its work when idle.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// How long the final flush may take once every batch is settled (it only
/// waits for librdkafka's own bookkeeping then).
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// One batch on its way to Kafka. Every message sent holds a reference as
/// its delivery opaque; the batch's queue budget is released when the last
/// reference goes. The batch itself is let go as soon as librdkafka has
/// copied its events: from then on the budget share stands for that copy.
struct Flight {
    /// The batch's share of the queue budget.
    _share: BudgetShare,
    ack: Option<Acknowledger>,
    events: usize,
    bytes: usize,
    /// Messages not yet settled (delivered or dropped).
    remaining: AtomicUsize,
    /// Messages dropped for a permanent error.
    dropped: AtomicUsize,
    started: Instant,
}

/// A message to send again, copied out of librdkafka's failed message.
struct Retry {
    flight: Arc<Flight>,
    topic: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

enum Work {
    Batch(QueueItem),
    Retry(Retry),
    /// The queue ended: settle what is in flight, then stop.
    Close,
}

/// Sink-wide state shared by the producer thread and delivery reports.
struct Shared {
    sink: Arc<str>,
    health: Arc<Health>,
    unhealthy: AtomicBool,
    /// Failed rounds since the last success: the backoff exponent.
    failures: AtomicU32,
    /// When `failures` last grew, in ms since `epoch`.
    last_bump_ms: AtomicU64,
    epoch: Instant,
    /// Batches not yet acknowledged.
    in_flight: AtomicUsize,
    events: prometheus::IntCounter,
    bytes: prometheus::IntCounter,
    retries: prometheus::IntCounter,
    duration: prometheus::Histogram,
}

impl Shared {
    fn settle_one(&self, flight: &Flight) {
        if flight.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let dropped = flight.dropped.load(Ordering::Acquire);
        self.events.inc_by((flight.events - dropped.min(flight.events)) as u64);
        self.bytes.inc_by(flight.bytes as u64);
        self.duration.observe(flight.started.elapsed().as_secs_f64());
        if let Some(ack) = &flight.ack {
            ack.complete(if dropped > 0 { AckOutcome::Dropped } else { AckOutcome::Delivered });
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn error(&self, kind: &str) {
        metrics().sink_errors.with_label_values(&[&self.sink, kind]).inc();
    }

    fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.unhealthy.load(Ordering::Relaxed) && self.unhealthy.swap(false, Ordering::AcqRel) {
            self.health.sink_unhealthy(false);
            tracing::info!(sink = %self.sink, "Kafka deliveries succeed again");
        }
    }

    fn failed(&self, kind: &str, error: &KafkaError) {
        self.bump_backoff();
        self.mark_unhealthy(kind, error);
    }

    /// Grows the backoff by one step per failed round: when a broker goes
    /// away with thousands of messages in flight they fail together, and
    /// that is one round, not thousands.
    fn bump_backoff(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let n = self.failures.load(Ordering::Relaxed);
        let last = self.last_bump_ms.load(Ordering::Relaxed);
        if (n == 0 || now.saturating_sub(last) >= retry_delay(n).as_millis() as u64)
            && self
                .last_bump_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `/ready` answers 503 until a delivery succeeds again.
    fn mark_unhealthy(&self, kind: &str, error: &KafkaError) {
        if !self.unhealthy.swap(true, Ordering::AcqRel) {
            self.health.sink_unhealthy(true);
            tracing::warn!(sink = %self.sink, kind, %error, "Kafka delivery failing; retrying with backoff");
        }
    }

    /// The delay before the next retry: exponential in the failed rounds
    /// since the last success, with ±50% jitter so retries do not march in
    /// step.
    fn backoff(&self) -> Duration {
        retry_delay(self.failures.load(Ordering::Relaxed)).mul_f64(0.5 + jitter())
    }
}

/// `RETRY_BASE` doubled per failed round after the first, at most
/// `RETRY_MAX`.
fn retry_delay(rounds: u32) -> Duration {
    let doublings = rounds.saturating_sub(1).min(10);
    RETRY_BASE.saturating_mul(1u32 << doublings).min(RETRY_MAX)
}

/// A number in [0, 1) that differs from call to call (xorshift on a
/// per-thread state seeded from the clock).
fn jitter() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0x9e37_79b9, |d| d.as_nanos() as u64) | 1,
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// Errors no retry can fix: the message is dropped and counted.
fn permanent(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic
        )
    )
}

/// The `kind` label of `sluice_sink_errors_total` for an error.
fn error_kind(code: Option<RDKafkaErrorCode>) -> &'static str {
    use RDKafkaErrorCode as C;
    match code {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize) => "message_too_large",
        Some(C::InvalidRecord | C::InvalidTopic) => "rejected",
        Some(C::MessageTimedOut | C::RequestTimedOut) => "timeout",
        Some(C::BrokerTransportFailure | C::AllBrokersDown | C::BrokerNotAvailable | C::NetworkException) => "transport",
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition) => "unknown_topic",
        Some(C::NotLeaderForPartition | C::LeaderNotAvailable | C::NotEnoughReplicas | C::NotEnoughReplicasAfterAppend) => "leader",
        Some(C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed | C::Authentication | C::SaslAuthenticationFailed) => "auth",
        Some(C::PurgeQueue | C::PurgeInflight) => "purged",
        _ => "other",
    }
}

/// How long an error report identical to the one before it is not logged
/// again. rdkafka 0.39 hands every error event to `ClientContext::error`
/// twice (once in `Client::poll_event`, once in `BaseProducer::poll`), and
/// librdkafka repeats "all brokers down" every few hundred milliseconds
/// during an outage: one line per report per second is enough.
const REPEAT_WINDOW: Duration = Duration::from_secs(1);

/// The last client error logged: (error, reason, when).
type LastError = Option<(String, String, Instant)>;

/// librdkafka's callbacks: delivery reports, errors and logs.
struct SinkContext {
    shared: Arc<Shared>,
    work: mpsc::Sender<Work>,
    /// Only the polling thread reports errors; the lock is never contended.
    last_error: std::sync::Mutex<LastError>,
}

impl SinkContext {
    /// Whether this error report repeats the one logged last, within
    /// [`REPEAT_WINDOW`]; if not, it becomes the last one.
    fn repeats(&self, error: &str, reason: &str) -> bool {
        let now = Instant::now();
        let mut last = self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((e, r, at)) = last.as_ref() {
            if e == error && r == reason && now.duration_since(*at) < REPEAT_WINDOW {
                return true;
            }
        }
        *last = Some((error.to_owned(), reason.to_owned(), now));
        false
    }
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let sink = &*self.shared.sink;
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(sink, facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(sink, facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(sink, facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Debug => tracing::debug!(sink, facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reconnects by itself; losing every broker is worth
        // telling `/ready` before messages start to time out.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.shared.mark_unhealthy("transport", &error);
        }
        let text = error.to_string();
        if !self.repeats(&text, reason) {
            tracing::warn!(sink = %self.shared.sink, error = %text, reason, "Kafka client error");
        }
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Arc<Flight>;

    fn delivery(&self, result: &DeliveryResult<'_>, flight: Arc<Flight>) {
        match result {
            Ok(_) => {
                self.shared.succeeded();
                self.shared.settle_one(&flight);
            }
            Err((error, msg)) => {
                let code = error.rdkafka_error_code();
                let kind = error_kind(code);
                self.shared.error(kind);
                if permanent(code) {
                    flight.dropped.fetch_add(1, Ordering::AcqRel);
                    metrics().events_dropped.with_label_values(&[&self.shared.sink, kind]).inc();
                    self.shared.settle_one(&flight);
                    return;
                }
                self.shared.failed(kind, error);
                self.shared.retries.inc();
                let retry = Retry {
                    flight,
                    topic: msg.topic().to_owned(),
                    key: msg.key().map(<[u8]>::to_vec),
                    payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                };
                // The producer thread outlives the producer (it owns it), so
                // this only fails during teardown, when the flight is
                // abandoned with the rest.
                let _ = self.work.send(Work::Retry(retry));
            }
        }
    }
}

impl SinkComponent for KafkaConfig {
    /// Event fields the sink reads: template fields and the key.
    fn fields_needed(&self) -> Vec<FieldPath> {
        let mut out: Vec<FieldPath> = TopicTemplate::parse(&self.topic)
            .map(|t| t.fields().cloned().collect())
            .unwrap_or_default();
        if let Some(k) = self.key_field.as_deref().and_then(|k| FieldPath::parse(k).ok()) {
            out.push(k);
        }
        out
    }

    /// Creates the producer, checks the brokers answer (unless the health
    /// check is off), and starts the sink on its queue.
    async fn build(&self, cx: SinkCx, input: QueueReceiver) -> Result<Task<SinkError>, SinkError> {
        let fatal = |kind: SinkErrorKind| SinkError::new(&cx.name, kind);
        let setup = |message: String| fatal(SinkErrorKind::Setup(message));
        let topic = TopicTemplate::parse(&self.topic).map_err(|e| setup(format!("topic: {e}")))?;
        let key = match &self.key_field {
            Some(k) => {
                let path = FieldPath::parse(k).map_err(|e| setup(format!("key_field: {e}")))?;
                Some(
                    cx.fields
                        .index_of(&path)
                        .ok_or_else(|| setup(format!("key_field {k:?} is not extracted")))?,
                )
            }
            None => None,
        };
        let m = metrics();
        let shared = Arc::new(Shared {
            sink: cx.name.clone(),
            health: cx.health.clone(),
            unhealthy: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            last_bump_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            events: m.sink_events.with_label_values(&[&cx.name]),
            bytes: m.sink_bytes.with_label_values(&[&cx.name]),
            retries: m.sink_retries.with_label_values(&[&cx.name]),
            duration: m.sink_request_duration.with_label_values(&[&cx.name]),
        });
        let (work_tx, work_rx) = mpsc::channel();
        let context = SinkContext {
            shared: shared.clone(),
            work: work_tx.clone(),
            last_error: std::sync::Mutex::new(None),
        };
        let producer: ThreadedProducer<SinkContext> = self.client_config().create_with_context(context).map_err(|error| {
            fatal(SinkErrorKind::Kafka {
                action: "create the Kafka producer",
                error,
            })
        })?;
        let producer = Arc::new(producer);

        if self.healthcheck {
            let p = producer.clone();
            let timeout = self.healthcheck_timeout;
            let checked = tokio::task::spawn_blocking(move || p.client().fetch_metadata(None, timeout))
                .await
                .map_err(|e| fatal(SinkErrorKind::Died(format!("health check failed: {e}"))))?;
            if let Err(e) = checked {
                return Err(fatal(SinkErrorKind::Unhealthy(format!(
                    "cannot reach the Kafka brokers {} within {:?}: {e} (check bootstrap_servers, or set healthcheck = false to start anyway)",
                    self.bootstrap_servers, timeout
                ))));
            }
        }

        let literal_topic = topic.as_literal();
        let producer_thread = ProducerThread {
            producer: Arc::into_inner(producer)
                .ok_or_else(|| fatal(SinkErrorKind::Died("producer still shared after the health check".into())))?,
            shared,
            topic: topic.bind(&cx.fields, &self.topic_missing_value),
            literal_topic,
            key,
            delayed: VecDeque::new(),
            topic_buf: String::new(),
            key_buf: String::new(),
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("sluice-kafka-{}", cx.name))
            .spawn(move || {
                producer_thread.run(work_rx);
                let _ = done_tx.send(());
            })
            .map_err(|error| {
                fatal(SinkErrorKind::Io {
                    action: "start the producer thread",
                    error,
                })
            })?;
        Ok(Box::pin(forward(cx.name.clone(), input, work_tx, done_rx)))
    }
}

/// Moves batches from the queue to the producer thread; when the queue
/// ends, waits for every batch to be settled.
async fn forward(
    sink: Arc<str>,
    mut input: QueueReceiver,
    work: mpsc::Sender<Work>,
    done: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), SinkError> {
    while let Some(item) = input.recv().await {
        if work.send(Work::Batch(item)).is_err() {
            break;
        }
    }
    let _ = work.send(Work::Close);
    drop(work);
    done.await
        .map_err(|_| SinkError::new(&sink, SinkErrorKind::Died("the producer thread died".into())))
}

struct ProducerThread {
    producer: ThreadedProducer<SinkContext>,
    shared: Arc<Shared>,
    topic: BoundTopic,
    literal_topic: Option<String>,
    key: Option<usize>,
    /// Messages waiting for their retry time, in the order they failed.
    delayed: VecDeque<(Instant, Retry)>,
    topic_buf: String,
    key_buf: String,
}

impl ProducerThread {
    fn run(mut self, work: mpsc::Receiver<Work>) {
        let mut closing = false;
        loop {
            self.send_due_retries();
            if closing && self.delayed.is_empty() && self.shared.in_flight.load(Ordering::Acquire) == 0 {
                break;
            }
            let wait = self
                .delayed
                .front()
                .map_or(IDLE_WAIT, |(due, _)| due.saturating_duration_since(Instant::now()).min(IDLE_WAIT));
            match work.recv_timeout(wait) {
                Ok(Work::Batch(item)) => self.send_batch(item),
                Ok(Work::Retry(r)) => {
                    let due = Instant::now() + self.shared.backoff();
                    self.delayed.push_back((due, r));
                }
                Ok(Work::Close) => closing = true,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => closing = true,
            }
        }
        if let Err(e) = self.producer.flush(FINAL_FLUSH) {
            tracing::warn!(sink = %self.shared.sink, error = %e, "Kafka producer flush at shutdown did not finish");
        }
    }

    fn send_batch(&mut self, item: QueueItem) {
        let n = item.batch.len();
        if n == 0 {
            item.batch.acknowledge(AckOutcome::Delivered);
            return;
        }
        let (batch, share) = item.into_parts();
        let flight = Arc::new(Flight {
            _share: share,
            ack: batch.acknowledger().cloned(),
            events: n,
            bytes: batch.byte_len(),
            remaining: AtomicUsize::new(n),
            dropped: AtomicUsize::new(0),
            started: Instant::now(),
        });
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.literal_topic.is_none() {
            self.topic.start_batch(&batch);
        }
        for i in 0..n {
            let topic = match &self.literal_topic {
                Some(t) => t.as_str(),
                None => {
                    self.topic.render(&batch, i, &mut self.topic_buf);
                    self.topic_buf.as_str()
                }
            };
            self.key_buf.clear();
            let has_key = self.key.is_some_and(|k| batch.value(i, k).render(&mut self.key_buf));
            let mut record = BaseRecord::with_opaque_to(topic, flight.clone()).payload(batch.event(i));
            if has_key {
                record = record.key(self.key_buf.as_bytes());
            }
            send(&self.producer, &self.shared, &mut self.delayed, record);
        }
    }

    fn send_due_retries(&mut self) {
        let now = Instant::now();
        while self.delayed.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, r)) = self.delayed.pop_front() else { break };
            let mut record = BaseRecord::with_opaque_to(&r.topic, r.flight.clone()).payload(r.payload.as_slice());
            if let Some(k) = &r.key {
                record = record.key(k.as_slice());
            }
            send(&self.producer, &self.shared, &mut self.delayed, record);
        }
    }
}

/// Offers one message to librdkafka: waits while its queue is full, drops
/// and counts it on a permanent error, schedules a retry on any other.
fn send(
    producer: &ThreadedProducer<SinkContext>,
    shared: &Shared,
    delayed: &mut VecDeque<(Instant, Retry)>,
    mut record: BaseRecord<'_, [u8], [u8], Arc<Flight>>,
) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((e, rec)) => {
                let code = e.rdkafka_error_code();
                if code == Some(RDKafkaErrorCode::QueueFull) {
                    std::thread::sleep(QUEUE_FULL_WAIT);
                    record = rec;
                    continue;
                }
                let kind = error_kind(code);
                shared.error(kind);
                if permanent(code) {
                    rec.delivery_opaque.dropped.fetch_add(1, Ordering::AcqRel);
                    metrics().events_dropped.with_label_values(&[&shared.sink, kind]).inc();
                    shared.settle_one(&rec.delivery_opaque);
                    return;
                }
                shared.failed(kind, &e);
                shared.retries.inc();
                let retry = Retry {
                    flight: rec.delivery_opaque.clone(),
                    topic: rec.topic.to_owned(),
                    key: rec.key.map(<[u8]>::to_vec),
                    payload: rec.payload.map(<[u8]>::to_vec).unwrap_or_default(),
                };
                delayed.push_back((Instant::now() + shared.backoff(), retry));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_per_round_up_to_the_cap() {
        assert_eq!(retry_delay(0), RETRY_BASE);
        assert_eq!(retry_delay(1), RETRY_BASE);
        assert_eq!(retry_delay(2), RETRY_BASE * 2);
        assert_eq!(retry_delay(4), RETRY_BASE * 8);
        assert_eq!(retry_delay(100), RETRY_MAX);
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }

    #[test]
    fn only_errors_no_retry_can_fix_are_permanent() {
        use RDKafkaErrorCode as C;
        for c in [C::MessageSizeTooLarge, C::InvalidMessageSize, C::InvalidRecord, C::InvalidTopic] {
            assert!(permanent(Some(c)), "{c:?}");
        }
        for c in [
            C::MessageTimedOut,
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::NotLeaderForPartition,
            C::UnknownTopicOrPartition,
            C::TopicAuthorizationFailed,
            C::QueueFull,
            C::InvalidMessage,
        ] {
            assert!(!permanent(Some(c)), "{c:?}");
        }
        assert!(!permanent(None));
    }
}
