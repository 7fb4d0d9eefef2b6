//! End-to-end acknowledgement: a source's checkpoint moves past a batch only
//! once every sink that received it has finished with it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// How one sink finished with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// Delivered, or written to the sink's disk buffer.
    Delivered,
    /// Skipped by the sink's own policy (`drop_newest`, a permanent 4xx) and
    /// counted there. The source may move past it: retrying cannot help.
    Dropped,
    /// Not delivered and not given up on (shutdown, crash): the source must
    /// not move past it, so it is read again after a restart.
    Abandoned,
}

/// Completion of one batch, as the source's [`AckReceiver`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The sequence number the [`AckGroup`] gave the batch.
    pub seq: u64,
    /// `Abandoned` if any sink abandoned it, else `Dropped` if any dropped it.
    pub outcome: AckOutcome,
}

/// The receiving end: the source reads completions from here (in any order)
/// and moves its checkpoint over the contiguous prefix that is done.
pub(crate) type AckReceiver = mpsc::UnboundedReceiver<Completion>;

/// Hands out acknowledgers for one source (or one file of a source).
#[derive(Debug, Clone)]
pub struct AckGroup {
    next_seq: Arc<AtomicU64>,
    tx: mpsc::UnboundedSender<Completion>,
}

impl AckGroup {
    /// A new group and the receiver its completions arrive on.
    pub fn new() -> (AckGroup, AckReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            AckGroup {
                next_seq: Arc::new(AtomicU64::new(0)),
                tx,
            },
            rx,
        )
    }

    /// An acknowledger for the next batch. Its sequence numbers start at 0
    /// and increase by one per call.
    pub fn next(&self) -> Acknowledger {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        Acknowledger {
            state: Arc::new(AckState {
                seq,
                remaining: AtomicUsize::new(0),
                armed: AtomicBool::new(false),
                worst: std::sync::atomic::AtomicU8::new(0),
                tx: self.tx.clone(),
            }),
        }
    }
}

/// Attached to a batch; shared by every sink the batch goes to.
#[derive(Debug, Clone)]
pub struct Acknowledger {
    state: Arc<AckState>,
}

#[derive(Debug)]
struct AckState {
    seq: u64,
    remaining: AtomicUsize,
    /// Set once the fan-out has said how many sinks to wait for.
    armed: AtomicBool,
    /// 0 delivered, 1 dropped, 2 abandoned.
    worst: std::sync::atomic::AtomicU8,
    tx: mpsc::UnboundedSender<Completion>,
}

impl Acknowledger {
    /// The batch's sequence number within its [`AckGroup`].
    pub(crate) fn seq(&self) -> u64 {
        self.state.seq
    }

    /// Called once by the fan-out: the batch goes to `sinks` sinks. With no
    /// sink at all the batch is complete at once.
    pub fn expect(&self, sinks: usize) {
        self.state.remaining.store(sinks, Ordering::Release);
        self.state.armed.store(true, Ordering::Release);
        if sinks == 0 {
            self.state.send();
        }
    }

    /// One sink is done with the batch.
    pub(crate) fn complete(&self, outcome: AckOutcome) {
        let rank = match outcome {
            AckOutcome::Delivered => 0,
            AckOutcome::Dropped => 1,
            AckOutcome::Abandoned => 2,
        };
        self.state.worst.fetch_max(rank, Ordering::AcqRel);
        if self.state.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.send();
        }
    }
}

impl AckState {
    fn send(&self) {
        let outcome = match self.worst.load(Ordering::Acquire) {
            0 => AckOutcome::Delivered,
            1 => AckOutcome::Dropped,
            _ => AckOutcome::Abandoned,
        };
        // The source may be gone (shutdown); then nobody needs to know.
        let _ = self.tx.send(Completion { seq: self.seq, outcome });
    }
}

impl Drop for AckState {
    fn drop(&mut self) {
        // A batch dropped before every sink finished (a crash path, a sink
        // that exited) is abandoned, never silently acknowledged.
        if !self.armed.load(Ordering::Acquire) || self.remaining.load(Ordering::Acquire) > 0 {
            self.worst.store(2, Ordering::Release);
            self.send();
        }
    }
}

/// Tracks out-of-order completions and yields how far the source may move:
/// the checkpoint advances over the longest prefix of completed batches.
#[derive(Debug, Default)]
pub(crate) struct AckWindow {
    /// Sequence number of the first batch not yet complete.
    next: u64,
    /// Completed batches at or after `next`, kept until the gap fills.
    done: std::collections::BTreeMap<u64, AckOutcome>,
}

impl AckWindow {
    /// Records a completion; returns the number of batches the contiguous
    /// prefix grew by and whether any of them was abandoned (the caller must
    /// then stop the checkpoint before it).
    pub(crate) fn complete(&mut self, c: Completion) -> Vec<(u64, AckOutcome)> {
        self.done.insert(c.seq, c.outcome);
        let mut advanced = Vec::new();
        while let Some(outcome) = self.done.remove(&self.next) {
            advanced.push((self.next, outcome));
            self.next += 1;
        }
        advanced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batch_completes_only_after_every_sink() {
        let (group, mut rx) = AckGroup::new();
        let ack = group.next();
        ack.expect(3);
        ack.complete(AckOutcome::Delivered);
        ack.complete(AckOutcome::Dropped);
        assert!(rx.try_recv().is_err());
        ack.complete(AckOutcome::Delivered);
        let c = rx.try_recv().unwrap();
        assert_eq!(c.seq, 0);
        assert_eq!(c.outcome, AckOutcome::Dropped);
        drop(ack);
        assert!(rx.try_recv().is_err(), "completed batches are reported once");
    }

    #[tokio::test]
    async fn dropped_unfinished_batch_is_abandoned() {
        let (group, mut rx) = AckGroup::new();
        let ack = group.next();
        ack.expect(2);
        ack.complete(AckOutcome::Delivered);
        drop(ack);
        assert_eq!(rx.try_recv().unwrap().outcome, AckOutcome::Abandoned);
    }

    #[test]
    fn window_advances_over_contiguous_prefix_only() {
        let mut w = AckWindow::default();
        let c = |seq| Completion {
            seq,
            outcome: AckOutcome::Delivered,
        };
        assert!(w.complete(c(1)).is_empty());
        assert!(w.complete(c(2)).is_empty());
        assert_eq!(w.complete(c(0)).len(), 3);
        assert!(w.done.is_empty(), "nothing waits for an earlier batch");
    }
}
