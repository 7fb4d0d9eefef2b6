//! What the HTTP sinks (Loki, S3) share: the retry policy (exponential
//! backoff with jitter, `Retry-After`), the classification of a failed
//! attempt, the health flag behind `/ready`, and acknowledgement tracking
//! for source batches whose events travel in several requests.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::buffer::QueueItem;
use crate::config::duration;
use crate::event::{AckOutcome, Acknowledger};
use crate::telemetry::Health;

/// The longest `Retry-After` honoured: a server asking for more is waited
/// for this long, then asked again.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Consecutive failed attempts after which a sink reports itself unhealthy
/// on `/ready`. One failure is a blip; three in a row is an outage.
const UNHEALTHY_AFTER: u32 = 3;

/// The `retry` table of an HTTP sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Wait before the first retry; doubles with every failed attempt.
    #[serde(deserialize_with = "duration")]
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    #[serde(deserialize_with = "duration")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryConfig {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), String> {
        if self.initial_backoff.is_zero() {
            return Err("initial_backoff must be above 0".into());
        }
        if self.max_backoff < self.initial_backoff {
            return Err("max_backoff must be at least initial_backoff".into());
        }
        Ok(())
    }
}

/// Exponential backoff with "equal jitter": each wait is half the current
/// step plus a random share of the other half, so many senders that failed
/// together do not retry together, and no wait is shorter than half a step.
#[derive(Debug)]
pub(crate) struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at the configured initial step.
    pub(crate) fn new(cfg: &RetryConfig) -> Backoff {
        Backoff {
            step: cfg.initial_backoff,
            max: cfg.max_backoff,
        }
    }

    /// The wait before the next attempt, honouring a server's
    /// `Retry-After` (capped at [`MAX_RETRY_AFTER`]) when it asks for more.
    pub(crate) fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let half = self.step / 2;
        let jitter = Duration::from_nanos(fastrand::u64(0..=half.as_nanos().min(u64::MAX as u128) as u64));
        let delay = half + jitter;
        self.step = (self.step * 2).min(self.max);
        match retry_after {
            Some(ra) => delay.max(ra.min(MAX_RETRY_AFTER)),
            None => delay,
        }
    }
}

/// Parses a `Retry-After` header: delay seconds or an HTTP date.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(value).ok()?;
    let now = jiff::Timestamp::try_from(SystemTime::now()).ok()?;
    let wait = at.as_millisecond().saturating_sub(now.as_millisecond());
    Some(Duration::from_millis(wait.max(0) as u64))
}

/// Why one delivery attempt failed, as counted in
/// `sluice_sink_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// No connection (refused, reset, DNS).
    Connection,
    /// The request or its answer took longer than `request.timeout`.
    Timeout,
    /// 429 Too Many Requests.
    Throttled,
    /// A 5xx answer.
    Server,
    /// A 4xx answer other than 429 (not retried).
    Client,
    /// Loki refused some entries of a push (out of order, too old).
    Rejected,
    /// The answer could not be read or made no sense.
    Protocol,
}

impl ErrorKind {
    /// The metric label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Throttled => "http_429",
            ErrorKind::Server => "http_5xx",
            ErrorKind::Client => "http_4xx",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Protocol => "protocol",
        }
    }

    /// Classifies a transport error from reqwest.
    pub(crate) fn of(e: &reqwest::Error) -> ErrorKind {
        if e.is_timeout() {
            ErrorKind::Timeout
        } else if e.is_connect() || e.is_request() || e.is_body() {
            ErrorKind::Connection
        } else {
            ErrorKind::Protocol
        }
    }

    /// Whether an answer with this status is worth retrying.
    pub(crate) fn of_status(status: reqwest::StatusCode) -> ErrorKind {
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            ErrorKind::Throttled
        } else if status.is_server_error() || status == reqwest::StatusCode::REQUEST_TIMEOUT {
            ErrorKind::Server
        } else {
            ErrorKind::Client
        }
    }

    /// Retried with backoff (connection, timeout, 408, 429, 5xx).
    pub(crate) fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Throttled | ErrorKind::Server | ErrorKind::Protocol
        )
    }
}

/// Statuses that say the sink is misconfigured (credentials, address):
/// dropping every batch would hide that, retrying cannot fix it, so the
/// sink stops with an error and the source re-reads after a restart.
pub(crate) fn is_misconfiguration(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 403 | 404)
}

/// A sink's entry in `/ready`: unhealthy after [`UNHEALTHY_AFTER`]
/// consecutive failed attempts, healthy again at the first success.
#[derive(Debug)]
pub(crate) struct HealthFlag {
    health: Arc<Health>,
    unhealthy: AtomicBool,
    failures: AtomicU32,
}

impl HealthFlag {
    /// A healthy flag reporting to `health`.
    pub(crate) fn new(health: Arc<Health>) -> HealthFlag {
        HealthFlag {
            health,
            unhealthy: AtomicBool::new(false),
            failures: AtomicU32::new(0),
        }
    }

    /// An attempt failed.
    pub(crate) fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= UNHEALTHY_AFTER {
            self.set_unhealthy();
        }
    }

    /// Marks the sink unhealthy at once (a failed start-up check that is
    /// not fatal).
    pub(crate) fn set_unhealthy(&self) {
        if !self.unhealthy.swap(true, Ordering::AcqRel) {
            self.health.sink_unhealthy(true);
        }
    }

    /// An attempt succeeded.
    pub(crate) fn success(&self) {
        self.failures.store(0, Ordering::Release);
        if self.unhealthy.swap(false, Ordering::AcqRel) {
            self.health.sink_unhealthy(false);
        }
    }
}

impl Drop for HealthFlag {
    fn drop(&mut self) {
        // A sink that ends gives its vote back.
        if *self.unhealthy.get_mut() {
            self.health.sink_unhealthy(false);
        }
    }
}

/// An id for a source batch inside [`AckTracker`].
pub(crate) type TrackId = u64;

/// Source batches a sink has taken but not finished. A batch's events may
/// be spread over several requests (or objects), and one request may carry
/// events of several batches: each batch is acknowledged once every part
/// of it is done, with the worst outcome of its parts.
#[derive(Debug, Default)]
pub(crate) struct AckTracker {
    next: TrackId,
    open: HashMap<TrackId, Tracked>,
}

#[derive(Debug)]
struct Tracked {
    /// Kept while the batch's events are in flight, so the queue budget
    /// covers them (Loki); `None` when the sink copied the events out and
    /// released the budget early (S3).
    item: Option<QueueItem>,
    ack: Option<Acknowledger>,
    /// Parts not yet done, and whether every part was handed out.
    remaining: usize,
    sealed: bool,
    worst: AckOutcome,
}

impl AckTracker {
    /// Starts tracking a batch. With `keep_item` the queue item (and its
    /// budget) is held until the batch is done.
    pub(crate) fn track(&mut self, item: QueueItem, keep_item: bool) -> TrackId {
        let id = self.next;
        self.next += 1;
        let ack = item.batch.ack.clone();
        self.open.insert(
            id,
            Tracked {
                item: keep_item.then_some(item),
                ack,
                remaining: 0,
                sealed: false,
                worst: AckOutcome::Delivered,
            },
        );
        id
    }

    /// One more part of batch `id` was handed to a request.
    pub(crate) fn add_part(&mut self, id: TrackId) {
        if let Some(t) = self.open.get_mut(&id) {
            t.remaining += 1;
        }
    }

    /// Every part of batch `id` has been handed out; it completes when
    /// they are done (at once if there were none).
    pub(crate) fn seal(&mut self, id: TrackId) {
        if let Some(t) = self.open.get_mut(&id) {
            t.sealed = true;
        }
        self.maybe_finish(id);
    }

    /// One part of batch `id` finished with `outcome`.
    pub(crate) fn part_done(&mut self, id: TrackId, outcome: AckOutcome) {
        if let Some(t) = self.open.get_mut(&id) {
            t.remaining = t.remaining.saturating_sub(1);
            t.worst = worse(t.worst, outcome);
        }
        self.maybe_finish(id);
    }

    fn maybe_finish(&mut self, id: TrackId) {
        let done = self.open.get(&id).is_some_and(|t| t.sealed && t.remaining == 0);
        if done {
            if let Some(t) = self.open.remove(&id) {
                complete(t.ack.as_ref(), t.worst);
                drop(t.item);
            }
        }
    }

    /// Batches not yet acknowledged.
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }

    /// Acknowledges every open batch as abandoned (the sink is stopping
    /// with an error: the source must read them again).
    pub(crate) fn abandon_all(&mut self) {
        for (_, t) in self.open.drain() {
            complete(t.ack.as_ref(), AckOutcome::Abandoned);
        }
    }
}

impl Drop for AckTracker {
    fn drop(&mut self) {
        self.abandon_all();
    }
}

fn complete(ack: Option<&Acknowledger>, outcome: AckOutcome) {
    if let Some(a) = ack {
        a.complete(outcome);
    }
}

fn worse(a: AckOutcome, b: AckOutcome) -> AckOutcome {
    let rank = |o| match o {
        AckOutcome::Delivered => 0,
        AckOutcome::Dropped => 1,
        AckOutcome::Abandoned => 2,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// Reads a secret from a file: trimmed, never logged. The error names the
/// file and the config key, not the content.
pub(crate) fn read_secret_file(path: &Path, key: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    let text = text.trim().to_owned();
    if text.is_empty() {
        return Err(format!("{key}: {} is empty", path.display()));
    }
    Ok(text)
}

/// A secret from a file if configured, else from an environment variable.
pub(crate) fn secret_from(file: Option<&PathBuf>, file_key: &str, env: &str) -> Result<Option<String>, String> {
    if let Some(p) = file {
        return read_secret_file(p, file_key).map(Some);
    }
    Ok(std::env::var(env).ok().filter(|v| !v.is_empty()))
}

/// Builds the HTTP client the sinks use: rustls, connection reuse,
/// bounded connect and request times.
pub(crate) fn client(request_timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10).min(request_timeout))
        .timeout(request_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// An error with its causes ("connection refused" sits deep in reqwest's).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// Shortens a server's answer for a log line.
pub(crate) fn excerpt(body: &str) -> &str {
    const MAX: usize = 512;
    if body.len() <= MAX {
        return body;
    }
    let mut end = MAX;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    &body[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_honours_retry_after() {
        let cfg = RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
        };
        let mut b = Backoff::new(&cfg);
        let d1 = b.next_delay(None);
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100), "{d1:?}");
        let d2 = b.next_delay(None);
        assert!(d2 >= Duration::from_millis(100) && d2 <= Duration::from_millis(200), "{d2:?}");
        for _ in 0..5 {
            let d = b.next_delay(None);
            assert!(d <= Duration::from_millis(400), "{d:?}");
        }
        assert_eq!(b.next_delay(Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(b.next_delay(Some(Duration::from_secs(3600))), MAX_RETRY_AFTER);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(reqwest::header::RETRY_AFTER, "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date in the past means now");
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn statuses_are_classified() {
        use reqwest::StatusCode as S;
        assert!(ErrorKind::of_status(S::TOO_MANY_REQUESTS).is_retryable());
        assert!(ErrorKind::of_status(S::BAD_GATEWAY).is_retryable());
        assert!(!ErrorKind::of_status(S::BAD_REQUEST).is_retryable());
        assert!(is_misconfiguration(S::FORBIDDEN));
    }
}
