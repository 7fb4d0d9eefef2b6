//! A live look at the events leaving any source, transform or route output
//! (`GET /tap/<output>?limit=N`, `sluice tap OUTPUT`), as `vector tap`
//! does. Bounded (at most [`MAX_LIMIT`] events per look, handed over with
//! `try_send`, so a slow reader never holds the pipeline back) and free
//! when nobody looks: the pipeline checks one atomic per batch.

use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;

/// Most events one look may ask for.
pub(crate) const MAX_LIMIT: usize = 1000;

/// How long a look waits for its events before answering with what came.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(10);

/// One look in progress.
struct Look {
    output: String,
    tx: mpsc::Sender<Bytes>,
    /// Events it still takes.
    remaining: usize,
}

/// Looks in progress; `active` is their number, read per batch.
static LOOKS: Mutex<Vec<Look>> = Mutex::new(Vec::new());
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Whether anyone looks at all: the one check the pipeline makes per batch.
#[inline]
pub(crate) fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed) > 0
}

/// The outputs someone looks at.
pub(crate) fn wanted() -> BTreeSet<String> {
    LOOKS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|l| l.output.clone())
        .collect()
}

/// Starts a look at `output` for up to `limit` events.
pub(crate) fn look(output: &str, limit: usize) -> mpsc::Receiver<Bytes> {
    let limit = limit.clamp(1, MAX_LIMIT);
    let (tx, rx) = mpsc::channel(limit);
    let mut looks = LOOKS.lock().unwrap_or_else(PoisonError::into_inner);
    looks.push(Look {
        output: output.to_owned(),
        tx,
        remaining: limit,
    });
    ACTIVE.store(looks.len(), Ordering::Relaxed);
    rx
}

/// Offers the events of one batch leaving `output` to the looks at it.
pub(crate) fn offer<'a>(output: &str, events: impl Iterator<Item = &'a [u8]>) {
    let mut looks = LOOKS.lock().unwrap_or_else(PoisonError::into_inner);
    if !looks.iter().any(|l| l.output == output) {
        return;
    }
    for event in events {
        let mut taken = false;
        for l in looks.iter_mut().filter(|l| l.output == output && l.remaining > 0) {
            if l.tx.try_send(Bytes::copy_from_slice(event)).is_ok() {
                l.remaining -= 1;
            }
            taken = true;
        }
        if !taken {
            break;
        }
    }
    looks.retain(|l| l.remaining > 0 && !l.tx.is_closed());
    ACTIVE.store(looks.len(), Ordering::Relaxed);
}

/// Ends looks whose reader went away (a closed connection), so the
/// pipeline stops offering to them.
pub(crate) fn forget_closed() {
    let mut looks = LOOKS.lock().unwrap_or_else(PoisonError::into_inner);
    looks.retain(|l| l.remaining > 0 && !l.tx.is_closed());
    ACTIVE.store(looks.len(), Ordering::Relaxed);
}

/// Collects a look's events: until `limit` came or [`MAX_WAIT`] passed.
/// NDJSON, one event a line.
pub(crate) async fn collect(output: &str, limit: usize) -> Vec<u8> {
    let mut rx = look(output, limit);
    let mut body = Vec::new();
    let deadline = tokio::time::Instant::now() + MAX_WAIT;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        body.extend_from_slice(&event);
        body.push(b'\n');
    }
    drop(rx);
    forget_closed();
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_look_takes_at_most_its_limit_and_then_ends() {
        assert!(!active() || !wanted().contains("t_out"));
        let mut rx = look("t_out", 2);
        assert!(active());
        offer("other", [&b"{}"[..]].into_iter());
        offer("t_out", [&b"{\"a\":1}"[..], b"{\"a\":2}", b"{\"a\":3}"].into_iter());
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"{\"a\":2}"));
        assert!(!wanted().contains("t_out"), "a look that has its events ends");
        assert!(rx.recv().await.is_none());
    }
}
