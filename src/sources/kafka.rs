//! `type = "kafka"`: the aggregator tier's input. A consumer group reads
//! the topics agents write to; each message is one event (agents already
//! enriched it: its fields win over the aggregator's metadata).
//!
//! At-least-once: messages are batched per partition, each batch carries
//! an acknowledger of that partition's [`AckGroup`], and a partition's
//! offset is committed only over the contiguous prefix of batches every
//! sink has finished with (an abandoned batch stops it, so the batch is
//! read again after a restart or rebalance). Commits happen on the consumer
//! task between polls, and rebalance callbacks run inside polls, so a
//! commit never races a revocation: on revocation the partition's
//! acknowledged progress is committed once more (it is still ours then) and
//! its pending state is dropped, so nothing is ever committed for it
//! afterwards.
//!
//! With `events = "metrics"` each message is one metric sample JSON object
//! (what a JSON sink writes for a metric batch) and the batches are metric
//! batches ([`samples`]), acknowledged the same way.

mod samples;

use bytes::BytesMut;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

use super::{SourceComponent, SourceCx, SourceError, SourceErrorKind};
use crate::config::{duration, ByteSize, ConfigError, Validate};
use crate::enrich::SourceContext;
use crate::event::{AckGroup, AckOutcome, AckReceiver, AckWindow, EventKind};
use crate::framing::{LineSpan, Lines, DEFAULT_MAX_LINE_BYTES};
use crate::pipeline::Task;
use crate::telemetry::{counter_vec, gauge_vec};

/// Pause after a consumer error, so a persistent one does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(200);

/// Where the consumer starts in a partition that has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OffsetReset {
    /// From the oldest message kept (the default: an aggregator should not
    /// skip what agents wrote before it first started).
    #[default]
    Earliest,
    /// Only messages written from now on.
    Latest,
}

/// What each message holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Messages {
    /// One event, decoded like any line (the default).
    #[default]
    Logs,
    /// One metric sample JSON object (`crate::metrics::sample`), as the
    /// Kafka sink writes a metric batch: the source sends metric batches.
    Metrics,
}

/// Settings of the Kafka source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// `host:port[,host:port…]`.
    pub(crate) bootstrap_servers: String,
    /// Topics to consume.
    pub(crate) topics: Vec<String>,
    /// `logs` (default) or `metrics`: what each message holds.
    #[serde(default)]
    pub(crate) events: Messages,
    /// The consumer group; aggregators sharing it share the partitions.
    #[serde(default = "default_group_id")]
    pub(crate) group_id: String,
    /// `earliest` (default) or `latest`.
    #[serde(default)]
    pub(crate) auto_offset_reset: OffsetReset,
    /// How long the group waits for a silent member before giving its
    /// partitions to others.
    #[serde(default = "default_session_timeout", deserialize_with = "duration")]
    pub(crate) session_timeout: Duration,
    /// How often acknowledged offsets are committed.
    #[serde(default = "default_commit_interval", deserialize_with = "duration")]
    pub(crate) commit_interval: Duration,
    /// Most messages in one batch (per partition).
    #[serde(default = "default_max_batch_events")]
    pub(crate) max_batch_events: usize,
    /// Most payload bytes in one batch (per partition).
    #[serde(default = "default_max_batch_bytes")]
    pub(crate) max_batch_bytes: ByteSize,
    /// Longest a message waits in a partly filled batch.
    #[serde(default = "default_batch_timeout", deserialize_with = "duration")]
    pub(crate) batch_timeout: Duration,
    /// Longest event kept whole; longer ones are truncated and flagged.
    #[serde(default = "default_max_event_bytes")]
    pub(crate) max_event_bytes: ByteSize,
    /// How often the consumer lag metric is refreshed.
    #[serde(default = "default_lag_interval", deserialize_with = "duration")]
    pub(crate) lag_interval: Duration,
    /// At shutdown, how long to wait for sinks to acknowledge what was
    /// read, for the final commit.
    #[serde(default = "default_drain_timeout", deserialize_with = "duration")]
    pub(crate) drain_timeout: Duration,
    /// Any other librdkafka consumer property (`security.protocol`,
    /// `sasl.username`, …); they override the settings above.
    #[serde(default)]
    pub(crate) librdkafka_options: BTreeMap<String, String>,
}

fn default_group_id() -> String {
    "sluice".into()
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(45)
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_batch_events() -> usize {
    2000
}
fn default_max_batch_bytes() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_batch_timeout() -> Duration {
    Duration::from_millis(100)
}
fn default_max_event_bytes() -> ByteSize {
    ByteSize(DEFAULT_MAX_LINE_BYTES as u64)
}
fn default_lag_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Kafka source metrics, registered once.
struct KafkaMetrics {
    /// `sluice_kafka_consumer_lag{source,topic,partition}`.
    lag: prometheus::IntGaugeVec,
    /// `sluice_kafka_commits_total{source,result}`.
    commits: prometheus::IntCounterVec,
    /// `sluice_kafka_rebalances_total{source,kind}`.
    rebalances: prometheus::IntCounterVec,
}

fn kafka_metrics() -> &'static KafkaMetrics {
    static M: OnceLock<KafkaMetrics> = OnceLock::new();
    M.get_or_init(|| KafkaMetrics {
        lag: gauge_vec(
            "sluice_kafka_consumer_lag",
            "Messages in a partition past the offset this consumer group committed.",
            &["source", "topic", "partition"],
        ),
        commits: counter_vec(
            "sluice_kafka_commits_total",
            "Offset commits, by result (ok, error).",
            &["source", "result"],
        ),
        rebalances: counter_vec(
            "sluice_kafka_rebalances_total",
            "Partition assignments and revocations.",
            &["source", "kind"],
        ),
    })
}

impl Validate for KafkaSourceConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let cfg = self;
        if cfg.bootstrap_servers.trim().is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.bootstrap_servers"),
                "must name at least one broker",
            ));
        }
        if cfg.topics.is_empty() || cfg.topics.iter().any(|t| t.is_empty()) {
            errors.push(ConfigError::new(format!("{path}.topics"), "needs at least one topic name"));
        }
        if cfg.group_id.is_empty() {
            errors.push(ConfigError::new(format!("{path}.group_id"), "must not be empty"));
        }
        if cfg.max_batch_events == 0 {
            errors.push(ConfigError::new(format!("{path}.max_batch_events"), "must be at least 1"));
        }
        if cfg.max_event_bytes.0 == 0 || cfg.max_event_bytes.0 > u32::MAX as u64 / 2 {
            errors.push(ConfigError::new(
                format!("{path}.max_event_bytes"),
                "must be between 1 byte and 2GiB",
            ));
        }
        if cfg.commit_interval.is_zero() {
            errors.push(ConfigError::new(format!("{path}.commit_interval"), "must be above zero"));
        }
        for (key, value) in &cfg.librdkafka_options {
            if let Err(e) = crate::sinks::kafka::check_librdkafka_option(key, value) {
                errors.push(ConfigError::new(format!("{path}.librdkafka_options.{key}"), e));
            }
        }
    }
}

impl KafkaSourceConfig {
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        let ms = |d: Duration| d.as_millis().max(1).to_string();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "auto.offset.reset",
                match self.auto_offset_reset {
                    OffsetReset::Earliest => "earliest",
                    OffsetReset::Latest => "latest",
                },
            )
            .set("session.timeout.ms", ms(self.session_timeout))
            .set("statistics.interval.ms", ms(self.lag_interval))
            // librdkafka prefetches up to 64 MiB per consumer by default;
            // a quarter of that keeps an aggregator's memory predictable.
            .set("queued.max.messages.kbytes", "16384");
        for (k, v) in &self.librdkafka_options {
            c.set(k, v);
        }
        c
    }
}

impl SourceComponent for KafkaSourceConfig {
    /// Logs, or metric samples with `events = "metrics"`.
    fn produces(&self) -> EventKind {
        match self.events {
            Messages::Logs => EventKind::Log,
            Messages::Metrics => EventKind::Metric,
        }
    }

    /// Creates the consumer and subscribes (so a bad setting fails at
    /// start-up), then starts the source.
    fn build(&self, cx: SourceCx) -> Result<Task<SourceError>, SourceError> {
        let fatal = |action: String, error| SourceError::new(&cx.name, SourceErrorKind::Kafka { action, error });
        let state = Arc::new(Mutex::new(Assignments::default()));
        let context = GroupContext {
            source: cx.name.clone(),
            state: state.clone(),
        };
        let consumer: StreamConsumer<GroupContext> = self
            .client_config()
            .create_with_context(context)
            .map_err(|e| fatal("create the Kafka consumer".into(), e))?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| fatal(format!("subscribe to {}", topics.join(", ")), e))?;
        tracing::info!(source = %cx.name, topics = %self.topics.join(","), group = %self.group_id, "consuming from Kafka");
        Ok(Box::pin(run(Arc::new(consumer), state, self.clone(), cx)))
    }
}

/// One assigned partition's acknowledgement state.
#[derive(Debug)]
struct Progress {
    /// Offset after each in-flight batch, by its sequence number.
    offsets: Mutex<BTreeMap<u64, i64>>,
    /// The offset that may be committed (next to read); -1 for none yet.
    committable: AtomicI64,
    /// The offset last committed by this consumer; -1 for none.
    committed: AtomicI64,
}

/// A partition this consumer owns, in one generation of ownership.
#[derive(Debug)]
struct Assigned {
    generation: u64,
    /// Hands out the partition's acknowledgers; taken at shutdown so no
    /// new batch starts and the tracker can end.
    group: Option<AckGroup>,
    progress: Arc<Progress>,
    tracker: Option<JoinHandle<()>>,
}

/// The partitions this consumer owns now.
#[derive(Debug, Default)]
struct Assignments {
    partitions: HashMap<(String, i32), Assigned>,
    next_generation: u64,
}

fn lock(state: &Mutex<Assignments>) -> MutexGuard<'_, Assignments> {
    // A panic while holding the lock cannot leave the map inconsistent in
    // a way that matters more than stopping would; keep going.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Moves a partition's committable offset over the contiguous prefix of
/// completed batches. An abandoned batch freezes it for this generation.
async fn track(mut rx: AckReceiver, progress: Arc<Progress>) {
    let mut window = AckWindow::default();
    let mut frozen = false;
    while let Some(c) = rx.recv().await {
        for (seq, outcome) in window.complete(c) {
            let offset = progress.offsets.lock().unwrap_or_else(|p| p.into_inner()).remove(&seq);
            if outcome == AckOutcome::Abandoned {
                frozen = true;
            }
            if let (false, Some(o)) = (frozen, offset) {
                progress.committable.store(o, Ordering::Release);
            }
        }
    }
}

/// librdkafka callbacks: rebalances and statistics. They run inside the
/// consumer's poll, on the source's task.
struct GroupContext {
    source: Arc<str>,
    state: Arc<Mutex<Assignments>>,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        let state = lock(&self.state);
        let lag = &kafka_metrics().lag;
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                let Some(a) = state.partitions.get(&(topic.clone(), *partition)) else {
                    continue;
                };
                // Behind what the group committed (ours, or a previous
                // owner's); with nothing committed yet, behind the start.
                let committed = a.progress.committed.load(Ordering::Acquire).max(p.committed_offset);
                let base = if committed >= 0 { committed } else { p.lo_offset };
                if base >= 0 && p.hi_offset >= 0 {
                    lag.with_label_values(&[&*self.source, topic.as_str(), &partition.to_string()])
                        .set((p.hi_offset - base).max(0));
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let m = kafka_metrics();
        match rebalance {
            Rebalance::Revoke(tpl) => {
                m.rebalances.with_label_values(&[&self.source, "revoke"]).inc();
                let mut last = TopicPartitionList::new();
                let mut state = lock(&self.state);
                for e in tpl.elements() {
                    let key = (e.topic().to_owned(), e.partition());
                    let Some(a) = state.partitions.remove(&key) else { continue };
                    // Still ours until this callback returns: commit what
                    // the sinks acknowledged, then forget the partition.
                    let c = a.progress.committable.load(Ordering::Acquire);
                    if c > a.progress.committed.load(Ordering::Acquire) {
                        let _ = last.add_partition_offset(e.topic(), e.partition(), Offset::Offset(c));
                    }
                    let _ = m.lag.remove_label_values(&[&self.source, e.topic(), &e.partition().to_string()]);
                    // Dropping the group ends the tracker once in-flight
                    // batches finish; nothing reads its progress again.
                    drop(a);
                }
                drop(state);
                tracing::info!(source = %self.source, partitions = tpl.count(), "partitions revoked");
                if last.count() > 0 {
                    match consumer.commit(&last, CommitMode::Sync) {
                        Ok(()) => m.commits.with_label_values(&[&self.source, "ok"]).inc(),
                        Err(error) => {
                            m.commits.with_label_values(&[&self.source, "error"]).inc();
                            tracing::warn!(source = %self.source, %error, "commit of revoked partitions failed; their last events will be read again");
                        }
                    }
                }
            }
            Rebalance::Assign(tpl) => {
                m.rebalances.with_label_values(&[&self.source, "assign"]).inc();
                let mut state = lock(&self.state);
                for e in tpl.elements() {
                    let generation = state.next_generation;
                    state.next_generation += 1;
                    let (group, rx) = AckGroup::new();
                    let progress = Arc::new(Progress {
                        offsets: Mutex::new(BTreeMap::new()),
                        committable: AtomicI64::new(-1),
                        committed: AtomicI64::new(-1),
                    });
                    let tracker = tokio::spawn(track(rx, progress.clone()));
                    state.partitions.insert(
                        (e.topic().to_owned(), e.partition()),
                        Assigned {
                            generation,
                            group: Some(group),
                            progress,
                            tracker: Some(tracker),
                        },
                    );
                }
                tracing::info!(source = %self.source, partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Error(error) => tracing::warn!(source = %self.source, %error, "rebalance error"),
        }
    }
}

/// Messages of one partition waiting to be sent as a batch.
struct Pending {
    topic: String,
    partition: i32,
    generation: u64,
    buf: BytesMut,
    spans: Vec<LineSpan>,
    next_offset: i64,
    since: Instant,
}

async fn run(
    consumer: Arc<StreamConsumer<GroupContext>>,
    state: Arc<Mutex<Assignments>>,
    cfg: KafkaSourceConfig,
    cx: SourceCx,
) -> Result<(), SourceError> {
    let mut shutdown = cx.shutdown.clone();
    let mut pending: Vec<Pending> = Vec::new();
    let mut contexts: HashMap<(String, i32), Arc<SourceContext>> = HashMap::new();
    let mut commit_tick = tokio::time::interval(cfg.commit_interval);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let max_event = cfg.max_event_bytes.0 as usize;
    let max_bytes = cfg.max_batch_bytes.0 as usize;
    let mut samples = (cfg.events == Messages::Metrics).then(|| samples::SampleReader::new(cx.name.clone()));
    loop {
        let deadline = pending
            .iter()
            .map(|p| p.since + cfg.batch_timeout)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            _ = commit_tick.tick() => commit(&consumer, &state, &cx.name).await,
            _ = tokio::time::sleep_until(deadline.into()), if !pending.is_empty() => {
                let now = Instant::now();
                let (due, keep): (Vec<Pending>, Vec<Pending>) = pending.drain(..).partition(|p| p.since + cfg.batch_timeout <= now);
                pending = keep;
                for p in due {
                    if send(p, &state, &mut contexts, samples.as_mut(), &cx).await.is_err() {
                        return Ok(());
                    }
                }
            }
            msg = consumer.recv() => {
                let m = match msg {
                    Ok(m) => m,
                    Err(error) => {
                        tracing::warn!(source = %cx.name, %error, "Kafka consumer error");
                        tokio::time::sleep(ERROR_PAUSE).await;
                        continue;
                    }
                };
                let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
                let i = match pending.iter().position(|p| p.partition == partition && p.topic == topic) {
                    Some(i) => i,
                    None => {
                        let generation = lock(&state).partitions.get(&(topic.to_owned(), partition)).map(|a| a.generation);
                        // A message of a partition no longer ours: its new
                        // owner reads it from the committed offset.
                        let Some(generation) = generation else { continue };
                        pending.push(Pending {
                            topic: topic.to_owned(),
                            partition,
                            generation,
                            buf: BytesMut::with_capacity(max_bytes.min(1 << 20)),
                            spans: Vec::new(),
                            next_offset: offset + 1,
                            since: Instant::now(),
                        });
                        pending.len() - 1
                    }
                };
                let p = &mut pending[i];
                let payload = m.payload().unwrap_or_default();
                let len = payload.len().min(max_event);
                let start = p.buf.len();
                p.buf.extend_from_slice(&payload[..len]);
                p.spans.push(LineSpan { start: start as u32, len: len as u32, truncated: len < payload.len() });
                p.next_offset = offset + 1;
                drop(m);
                if p.spans.len() >= cfg.max_batch_events || p.buf.len() >= max_bytes {
                    let p = pending.swap_remove(i);
                    if send(p, &state, &mut contexts, samples.as_mut(), &cx).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
    for p in pending.drain(..) {
        if send(p, &state, &mut contexts, samples.as_mut(), &cx).await.is_err() {
            break;
        }
    }
    drain(&consumer, &state, &cfg, &cx).await;
    // Closing leaves the group (a blocking call): off the runtime.
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    Ok(())
}

/// Sends one partition's batch with an acknowledger, unless the partition
/// was revoked since its first message arrived: as lines to decode, or,
/// with a [`samples::SampleReader`], as a metric batch.
async fn send(
    p: Pending,
    state: &Mutex<Assignments>,
    contexts: &mut HashMap<(String, i32), Arc<SourceContext>>,
    samples: Option<&mut samples::SampleReader>,
    cx: &SourceCx,
) -> Result<(), crate::pipeline::PipelineClosed> {
    let ack = {
        let state = lock(state);
        let Some(a) = state
            .partitions
            .get(&(p.topic.clone(), p.partition))
            .filter(|a| a.generation == p.generation)
        else {
            return Ok(());
        };
        let Some(group) = &a.group else { return Ok(()) };
        let ack = group.next();
        a.progress
            .offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ack.seq(), p.next_offset);
        ack
    };
    let key = (p.topic, p.partition);
    let ctx = contexts
        .entry(key.clone())
        .or_insert_with(|| {
            Arc::new(SourceContext::new(
                cx.name.clone(),
                "kafka",
                format!("{}/{}", key.0, key.1),
                cx.enrich.metadata(None),
            ))
        })
        .clone();
    if let Some(reader) = samples {
        return reader.send(&p.buf, &p.spans, ctx, ack, &cx.output).await;
    }
    let lines = Lines {
        chunk: p.buf.freeze(),
        spans: p.spans,
        dropped: 0,
        may_hold_breaks: true,
    };
    cx.output.send_lines(lines, ctx, Some(ack)).await
}

/// Commits every partition's acknowledged progress (synchronously, off the
/// runtime, and before the next poll: no rebalance can interleave).
async fn commit(consumer: &Arc<StreamConsumer<GroupContext>>, state: &Mutex<Assignments>, source: &Arc<str>) {
    let mut tpl = TopicPartitionList::new();
    let mut marks = Vec::new();
    {
        let state = lock(state);
        for ((topic, partition), a) in &state.partitions {
            let c = a.progress.committable.load(Ordering::Acquire);
            if c >= 0
                && c > a.progress.committed.load(Ordering::Acquire)
                && tpl.add_partition_offset(topic, *partition, Offset::Offset(c)).is_ok()
            {
                marks.push((a.progress.clone(), c));
            }
        }
    }
    if marks.is_empty() {
        return;
    }
    let consumer = consumer.clone();
    let result = tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await;
    let m = kafka_metrics();
    match result {
        Ok(Ok(())) => {
            m.commits.with_label_values(&[source, "ok"]).inc();
            for (progress, c) in marks {
                progress.committed.fetch_max(c, Ordering::AcqRel);
            }
        }
        Ok(Err(error)) => {
            m.commits.with_label_values(&[source, "error"]).inc();
            tracing::warn!(source = %source, %error, "offset commit failed; retrying at the next interval");
        }
        Err(error) => tracing::warn!(source = %source, %error, "offset commit task failed"),
    }
}

/// At shutdown: waits (bounded) for the sinks to finish what was read,
/// then commits the acknowledged offsets a last time.
async fn drain(consumer: &Arc<StreamConsumer<GroupContext>>, state: &Arc<Mutex<Assignments>>, cfg: &KafkaSourceConfig, cx: &SourceCx) {
    let trackers: Vec<JoinHandle<()>> = {
        let mut s = lock(state);
        s.partitions
            .values_mut()
            .filter_map(|a| {
                // Without its group, a tracker ends when the last
                // in-flight batch of its partition completes.
                a.group = None;
                a.tracker.take()
            })
            .collect()
    };
    let wait = async {
        for t in trackers {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(cfg.drain_timeout, wait).await.is_err() {
        tracing::warn!(source = %cx.name, "sinks did not acknowledge everything within drain_timeout; unacknowledged events will be read again");
    }
    commit(consumer, state, &cx.name).await;
}

#[cfg(test)]
mod tests {
    use crate::topology::{Config, Format};

    #[test]
    fn kafka_settings_are_checked_with_key_paths() {
        let text = r#"
[sources.k]
type = "kafka"
bootstrap_servers = ""
topics = []
max_batch_events = 0
commit_interval = "0s"
[sources.k.librdkafka_options]
"no.such.option" = "1"
"security.protocol" = "SASL_SSL"
"sasl.mechanisms" = "SCRAM-SHA-512"
[sinks.out]
type = "stdout"
"#;
        let errs: Vec<String> = Config::from_str(text, Format::Toml, &|_| None)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.path)
            .collect();
        for want in [
            "sources.k.bootstrap_servers",
            "sources.k.topics",
            "sources.k.max_batch_events",
            "sources.k.commit_interval",
            "sources.k.librdkafka_options.no.such.option",
        ] {
            assert!(errs.iter().any(|e| e == want), "missing {want} in {errs:?}");
        }
        assert!(
            !errs.iter().any(|e| e.contains("security.protocol") || e.contains("sasl")),
            "TLS and SCRAM are built in: {errs:?}"
        );
    }

    #[test]
    fn a_metrics_kafka_source_feeds_metric_sinks_and_is_refused_by_log_only_ones() {
        let base = "[sources.k]\ntype = \"kafka\"\nevents = \"metrics\"\nbootstrap_servers = \"127.0.0.1:9\"\ntopics = [\"t\"]\n";
        let rw = format!(
            "{base}[sinks.rw]\ntype = \"prometheus_remote_write\"\nendpoint = \"http://127.0.0.1:9/api/v1/write\"\ninputs = [\"k\"]\n"
        );
        Config::from_str(&rw, Format::Toml, &|_| None).expect("metrics into remote write");
        let loki = format!("{base}[sinks.l]\ntype = \"loki\"\nendpoint = \"http://127.0.0.1:3100\"\ninputs = [\"k\"]\n");
        let errs: Vec<String> = Config::from_str(&loki, Format::Toml, &|_| None)
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(
            errs.iter()
                .any(|e| e == "sinks.l.inputs[0]: source \"k\" (kafka) sends metrics, which a loki sink cannot carry"),
            "{errs:?}"
        );
        let logs = base.replace("events = \"metrics\"\n", "");
        let rw = format!(
            "{logs}[sinks.rw]\ntype = \"prometheus_remote_write\"\nendpoint = \"http://127.0.0.1:9/api/v1/write\"\ninputs = [\"k\"]\n"
        );
        assert!(
            Config::from_str(&rw, Format::Toml, &|_| None).is_err(),
            "a log Kafka source cannot feed remote write"
        );
    }

    #[test]
    fn the_aggregator_example_is_valid() {
        let text = include_str!("../../config/aggregator.toml");
        // The variables it requires (docs/deploy.md); the rest default.
        let env = |k: &str| match k {
            "KAFKA_BROKERS" => Some("127.0.0.1:9092".to_owned()),
            "LOKI_ENDPOINT" => Some("http://127.0.0.1:3100".to_owned()),
            "S3_BUCKET" => Some("archive".to_owned()),
            _ => None,
        };
        let c = Config::from_str(text, Format::Toml, &env).unwrap();
        let crate::sources::SourceConfig::Kafka(k) = &c.sources["kafka"] else {
            panic!("not kafka")
        };
        assert_eq!(k.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(k.group_id, "sluice-aggregators");
    }
}
