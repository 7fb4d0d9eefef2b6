//! The in-memory queue: an unbounded channel whose admission is bounded by
//! two semaphores, one counting events and one counting bytes. A batch's
//! permits travel with it and are released when the sink drops it, so the
//! budget covers what is queued *and* what the sink is still working on.

use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::{BufferConfig, WhenFull};
use crate::event::{AckOutcome, Batch};
use crate::telemetry::metrics;

/// A batch handed to a sink, holding its share of the queue budget.
#[derive(Debug)]
pub struct QueueItem {
    /// The batch, shared with every other sink it went to.
    pub batch: Arc<Batch>,
    share: BudgetShare,
}

impl QueueItem {
    /// Splits the item into its batch and its share of the budget. A sink
    /// whose client library copies the events (librdkafka) lets the batch go
    /// once they are copied and keeps the share until they are delivered:
    /// the budget then stands for the copy, instead of the batch and its
    /// copy both taking memory while only one is counted.
    pub(crate) fn into_parts(self) -> (Arc<Batch>, BudgetShare) {
        (self.batch, self.share)
    }
}

/// A batch's share of its sink's queue budget (events and bytes), given back
/// when dropped.
#[derive(Debug)]
pub(crate) struct BudgetShare {
    _events: Option<OwnedSemaphorePermit>,
    _bytes: Option<OwnedSemaphorePermit>,
    gauge: Option<Gauges>,
    events: i64,
    bytes: i64,
}

#[derive(Debug, Clone)]
struct Gauges {
    events: prometheus::IntGauge,
    bytes: prometheus::IntGauge,
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        if let Some(gauge) = &self.gauge {
            gauge.events.sub(self.events);
            gauge.bytes.sub(self.bytes);
        }
    }
}

/// The sending end of an in-memory queue. Cloneable: each source's fan-out
/// holds one (through [`super::QueueSender`]).
#[derive(Debug, Clone)]
pub(crate) struct MemorySender {
    tx: mpsc::UnboundedSender<QueueItem>,
    events: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_events: u32,
    max_bytes: u32,
    when_full: WhenFull,
    sink: Arc<str>,
    /// `None` when a disk buffer owns the sink's gauges (its read-ahead).
    gauge: Option<Gauges>,
    /// `sluice_buffer_received_events_total`, with the gauges.
    received: Option<prometheus::IntCounter>,
}

/// The sink's end of its queue.
#[derive(Debug)]
pub struct QueueReceiver {
    rx: mpsc::UnboundedReceiver<QueueItem>,
}

/// An in-memory queue for the sink named `sink`, whatever `config.kind`
/// says (disk buffers are opened with [`super::open`]).
pub fn queue(sink: &str, config: &BufferConfig) -> (super::QueueSender, QueueReceiver) {
    metrics().buffer_max_bytes.with_label_values(&[sink]).set(config.max_bytes.0 as i64);
    let (tx, rx) = memory_queue(sink, config.max_events, config.max_bytes.0, config.when_full, true);
    (super::QueueSender::memory(tx), rx)
}

/// An in-memory queue bounded by `max_events` and `max_bytes`; with
/// `gauges` it reports `sluice_buffer_events`/`_bytes` for `sink`.
pub(crate) fn memory_queue(
    sink: &str,
    max_events: usize,
    max_bytes: u64,
    when_full: WhenFull,
    gauges: bool,
) -> (MemorySender, QueueReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let m = metrics();
    let gauge = gauges.then(|| Gauges {
        events: m.buffer_events.with_label_values(&[sink]),
        bytes: m.buffer_bytes.with_label_values(&[sink]),
    });
    let received = gauges.then(|| m.buffer_received_events.with_label_values(&[sink]));
    let max_events = max_events.clamp(1, u32::MAX as usize) as u32;
    let max_bytes = max_bytes.clamp(1, u32::MAX as u64) as u32;
    (
        MemorySender {
            tx,
            events: Arc::new(Semaphore::new(max_events as usize)),
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_events,
            max_bytes,
            when_full,
            sink: sink.into(),
            gauge,
            received,
        },
        QueueReceiver { rx },
    )
}

/// The sink is gone; the batch could not be queued.
#[derive(Debug, thiserror::Error)]
#[error("sink {0} has stopped")]
pub struct SinkGone(pub Arc<str>);

impl MemorySender {
    /// Queues a batch, waiting for room under the `block` policy, or
    /// dropping it (counted, acknowledged as dropped) under `drop_newest`.
    /// A batch larger than the whole budget takes the whole budget.
    pub(crate) async fn send(&self, batch: Arc<Batch>) -> Result<(), SinkGone> {
        let (events, bytes) = (batch.len(), batch.memory_len());
        let n_events = (events as u32).clamp(1, self.max_events);
        let n_bytes = (bytes as u32).clamp(1, self.max_bytes);
        let permits = match self.when_full {
            WhenFull::Block => {
                let e = self.events.clone().acquire_many_owned(n_events).await;
                let b = self.bytes.clone().acquire_many_owned(n_bytes).await;
                match (e, b) {
                    (Ok(e), Ok(b)) => (e, b),
                    _ => return Err(SinkGone(self.sink.clone())),
                }
            }
            WhenFull::DropNewest => {
                let e = self.events.clone().try_acquire_many_owned(n_events);
                let b = self.bytes.clone().try_acquire_many_owned(n_bytes);
                match (e, b) {
                    (Ok(e), Ok(b)) => (e, b),
                    (Err(TryAcquireError::Closed), _) | (_, Err(TryAcquireError::Closed)) => return Err(SinkGone(self.sink.clone())),
                    _ => {
                        metrics()
                            .events_dropped
                            .with_label_values(&[&self.sink, "queue_full"])
                            .inc_by(events as u64);
                        batch.acknowledge(AckOutcome::Dropped);
                        return Ok(());
                    }
                }
            }
        };
        if let Some(gauge) = &self.gauge {
            gauge.events.add(events as i64);
            gauge.bytes.add(bytes as i64);
        }
        if let Some(received) = &self.received {
            received.inc_by(events as u64);
        }
        let share = BudgetShare {
            _events: Some(permits.0),
            _bytes: Some(permits.1),
            gauge: self.gauge.clone(),
            events: events as i64,
            bytes: bytes as i64,
        };
        let item = QueueItem { batch, share };
        self.tx.send(item).map_err(|_| SinkGone(self.sink.clone()))
    }
}

impl QueueReceiver {
    /// The next batch; `None` once every sender is gone and the queue is
    /// empty (shutdown: the sink flushes and exits).
    pub async fn recv(&mut self) -> Option<QueueItem> {
        self.rx.recv().await
    }

    /// The next batch, from a thread outside the runtime.
    pub(crate) fn blocking_recv(&mut self) -> Option<QueueItem> {
        self.rx.blocking_recv()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;
    use crate::enrich::SourceContext;
    use crate::event::{AckGroup, BatchBuilder, FieldSet};
    use std::time::{Duration, SystemTime};

    fn batch(events: usize, ack: Option<crate::event::Acknowledger>) -> Arc<Batch> {
        let mut b = BatchBuilder::with_capacity(Arc::new(FieldSet::new()), 64, events);
        for _ in 0..events {
            b.buffer().extend_from_slice(b"{}");
            b.finish_event();
        }
        let ctx = Arc::new(SourceContext::new("s".into(), "test", String::new(), serde_json::Map::new()));
        if let Some(a) = &ack {
            a.expect(1);
        }
        Arc::new(b.build(ctx, SystemTime::now()).with_ack(ack))
    }

    fn config(max_events: usize, when_full: WhenFull) -> BufferConfig {
        BufferConfig {
            max_events,
            max_bytes: ByteSize(1 << 20),
            when_full,
            ..BufferConfig::default()
        }
    }

    #[tokio::test]
    async fn block_policy_waits_until_the_sink_takes_a_batch() {
        let (tx, mut rx) = queue("block-test", &config(10, WhenFull::Block));
        tx.send(batch(8, None)).await.unwrap();
        let second = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(batch(8, None)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "no room: the sender waits");
        let first = rx.recv().await.unwrap();
        assert!(!second.is_finished(), "room comes back when the sink is done, not when it receives");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), second)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(rx.recv().await.unwrap().batch.len(), 8);
    }

    #[tokio::test]
    async fn drop_newest_skips_counts_and_acknowledges_as_dropped() {
        let (tx, mut rx) = queue("drop-test", &config(10, WhenFull::DropNewest));
        let (group, mut acks) = AckGroup::new();
        tx.send(batch(8, Some(group.next()))).await.unwrap();
        tx.send(batch(8, Some(group.next()))).await.unwrap();
        let c = acks.try_recv().unwrap();
        assert_eq!((c.seq, c.outcome), (1, AckOutcome::Dropped));
        let dropped = metrics().events_dropped.with_label_values(&["drop-test", "queue_full"]).get();
        assert_eq!(dropped, 8);
        let item = rx.recv().await.unwrap();
        item.batch.acknowledge(AckOutcome::Delivered);
        assert_eq!(acks.try_recv().unwrap().outcome, AckOutcome::Delivered);
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_budget_still_passes_alone() {
        let (tx, mut rx) = queue("big-test", &config(4, WhenFull::Block));
        tokio::time::timeout(Duration::from_secs(1), tx.send(batch(100, None)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rx.recv().await.unwrap().batch.len(), 100);
    }
}
