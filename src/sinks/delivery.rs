//! The one delivery layer of the HTTP sinks (Loki, S3, and the HTTP sinks
//! to come): a sink builds a request and judges the answer ([`Answer`]:
//! accepted, refused for good, or worth retrying); [`Endpoint::send`] does
//! the rest, the same way for every sink:
//!
//! - retries with exponential backoff and jitter, honouring `Retry-After`
//!   (capped at [`MAX_RETRY_AFTER`]), until the answer is final;
//! - counts every failed attempt in `sluice_sink_errors_total{sink,kind}`
//!   and `sluice_sink_retries_total{sink}`, and times every attempt in
//!   `sluice_sink_request_duration_seconds{sink}`;
//! - keeps the sink's `/ready` vote ([`HealthFlag`]);
//! - logs every failed attempt: a warning at most once per
//!   [`WARN_INTERVAL`] per endpoint, the others at info;
//! - wakes the requests waiting out a backoff after the endpoint could not
//!   be reached as soon as any request to it is answered, so an upload
//!   that failed during an outage does not sit out a long backoff after
//!   the endpoint is back.
//!
//! A small module of our own rather than tower's retry layer: reqwest's
//! client is not a tower service, and the parts that matter here (waking
//! the waiting requests of one endpoint, one warning per interval, the
//! sink's own error kinds) would be ours either way.

use serde::Deserialize;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{Histogram, IntCounter};
use tokio::sync::Notify;

use super::http;
use crate::config::{duration, ConfigError, Validate};
use crate::telemetry::{metrics, Health};

/// At most one warning about failed attempts per endpoint in this time;
/// the other failed attempts are logged at info. An outage is one warning
/// every few seconds, not one per request.
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The longest `Retry-After` honoured: a server asking for more is waited
/// for this long, then asked again.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Consecutive failed attempts after which a sink reports itself unhealthy
/// on `/ready`. One failure is a blip; three in a row is an outage.
const UNHEALTHY_AFTER: u32 = 3;

/// The `retry` table of an HTTP sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RetryConfig {
    /// Wait before the first retry; doubles with every failed attempt.
    #[serde(deserialize_with = "duration")]
    pub(crate) initial_backoff: Duration,
    /// The longest wait between two attempts.
    #[serde(deserialize_with = "duration")]
    pub(crate) max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Checks the bounds.
impl Validate for RetryConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.initial_backoff.is_zero() {
            errors.push(ConfigError::at(path, "initial_backoff", "must be above 0"));
        }
        if self.max_backoff < self.initial_backoff {
            errors.push(ConfigError::at(path, "max_backoff", "must be at least initial_backoff"));
        }
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

/// Why an attempt is worth retrying.
#[derive(Debug)]
pub(crate) struct Failed {
    /// As counted in `sluice_sink_errors_total{kind}`.
    pub(crate) kind: ErrorKind,
    /// For the log line: what was sent and what went wrong.
    pub(crate) detail: String,
    /// The server's `Retry-After`, if it sent one.
    pub(crate) retry_after: Option<Duration>,
}

impl Failed {
    /// A transport error (no answer, or an answer that could not be read).
    pub(crate) fn transport(what: &str, e: &reqwest::Error) -> Failed {
        Failed {
            kind: ErrorKind::of(e),
            detail: format!("{what}: {}", http::error_chain(e)),
            retry_after: None,
        }
    }

    /// Whether the endpoint could not be reached at all: such a request is
    /// woken when another request to the endpoint is answered. A server
    /// that answered (5xx, 429) may be failing this request alone, or be
    /// asking for less load: those wait out their backoff.
    fn unreachable(&self) -> bool {
        matches!(self.kind, ErrorKind::Connection | ErrorKind::Timeout)
    }
}

/// The first reading of an answer, the same for every HTTP sink.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// 2xx.
    Success,
    /// 5xx, 429, 408 or an unreadable answer: worth retrying.
    Retry(Failed),
    /// Any other status, with the answer's text: final.
    Final(reqwest::StatusCode, String),
}

/// Reads an answer's status (and, when it is not a success, its text).
pub(crate) async fn classify(resp: reqwest::Response) -> Verdict {
    let status = resp.status();
    if status.is_success() {
        return Verdict::Success;
    }
    let retry_after = retry_after(resp.headers());
    let text = resp.text().await.unwrap_or_default();
    let kind = ErrorKind::of_status(status);
    if kind.is_retryable() {
        return Verdict::Retry(Failed {
            kind,
            detail: format!("{status}: {}", http::excerpt(text.trim())),
            retry_after,
        });
    }
    Verdict::Final(status, text)
}

/// What a sink makes of one answer.
#[derive(Debug)]
pub(crate) enum Answer<T> {
    /// The endpoint kept what was sent.
    Accepted(T),
    /// The endpoint answered, and retrying cannot change the answer; the
    /// attempt is counted in `sluice_sink_errors_total{kind}`.
    Refused(ErrorKind, T),
    /// Send again after a backoff.
    Retry(Failed),
}

/// One endpoint a sink delivers to, shared by its requests: the retry
/// policy, the counters, the `/ready` vote, and the wake-up of requests
/// waiting in backoff.
#[derive(Debug)]
pub(crate) struct Endpoint {
    sink: Arc<str>,
    /// How log lines name one request (`push`, `S3 request`).
    what: &'static str,
    retry: RetryConfig,
    health: HealthFlag,
    retries: IntCounter,
    duration: Histogram,
    /// Requests the endpoint answered: a request whose attempt failed
    /// compares it with its value before the attempt, so an answer that
    /// arrived meanwhile is not missed.
    answered: AtomicU64,
    /// Woken when a request is answered.
    recovered: Notify,
    /// When the last warning about a failed attempt was logged.
    last_warn: Mutex<Option<Instant>>,
}

impl Endpoint {
    /// The endpoint of sink `sink`; `what` names a request in log lines.
    pub(crate) fn new(sink: Arc<str>, what: &'static str, retry: RetryConfig, health: Arc<Health>) -> Endpoint {
        let m = metrics();
        Endpoint {
            retries: m.sink_retries.with_label_values(&[&sink]),
            duration: m.sink_request_duration.with_label_values(&[&sink]),
            sink,
            what,
            retry,
            health: HealthFlag::new(health),
            answered: AtomicU64::new(0),
            recovered: Notify::new(),
            last_warn: Mutex::new(None),
        }
    }

    /// The sink's `/ready` vote (a start-up check may lower it).
    pub(crate) fn health(&self) -> &HealthFlag {
        &self.health
    }

    /// Counts one failed attempt that is not retried.
    pub(crate) fn count_error(&self, kind: ErrorKind) {
        metrics().sink_errors.with_label_values(&[&self.sink, kind.as_str()]).inc();
    }

    /// Sends the request `build` makes until `judge` finds the answer
    /// final; returns what `judge` made of it.
    pub(crate) async fn send<T, B, J, F>(&self, build: B, judge: J) -> T
    where
        B: Fn() -> reqwest::RequestBuilder,
        J: Fn(reqwest::Response) -> F,
        F: Future<Output = Answer<T>>,
    {
        let mut backoff = Backoff::new(&self.retry);
        let mut attempt: u32 = 0;
        // Whether this attempt was sent early, woken by an answer to
        // another request. If it fails too, it waits out its whole backoff:
        // a request the endpoint keeps failing alone is not retried at the
        // pace of the other requests' answers.
        let mut early = false;
        loop {
            attempt += 1;
            let answered_before = self.answered.load(Ordering::Acquire);
            let started = Instant::now();
            let answer = match build().send().await {
                Ok(resp) => judge(resp).await,
                Err(e) => Answer::Retry(Failed::transport(self.what, &e)),
            };
            self.duration.observe(started.elapsed().as_secs_f64());
            let failed = match answer {
                Answer::Accepted(t) => {
                    self.answered();
                    if attempt > 1 {
                        tracing::info!(sink = %self.sink, attempts = attempt, "{} succeeded after retries", self.what);
                    }
                    return t;
                }
                Answer::Refused(kind, t) => {
                    self.count_error(kind);
                    self.answered();
                    return t;
                }
                Answer::Retry(f) => f,
            };
            self.count_error(failed.kind);
            self.retries.inc();
            self.health.failure();
            let delay = backoff.next_delay(failed.retry_after);
            self.log_failure(attempt, &failed, delay);
            // Registered before the check, so an answer between the two
            // still wakes this request.
            let woken = self.recovered.notified();
            if failed.unreachable() && failed.retry_after.is_none() && !early {
                if self.answered.load(Ordering::Acquire) != answered_before {
                    early = true;
                    continue;
                }
                early = tokio::select! {
                    _ = tokio::time::sleep(delay) => false,
                    _ = woken => true,
                };
            } else {
                early = false;
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// The endpoint answered a request: it is healthy, and the requests
    /// waiting after it could not be reached go again now.
    fn answered(&self) {
        self.health.success();
        self.answered.fetch_add(1, Ordering::AcqRel);
        self.recovered.notify_waiters();
    }

    /// Every failed attempt is logged; the first in a [`WARN_INTERVAL`] as
    /// a warning.
    fn log_failure(&self, attempt: u32, failed: &Failed, delay: Duration) {
        let now = Instant::now();
        let warn = {
            let mut last = self.last_warn.lock().unwrap_or_else(PoisonError::into_inner);
            let due = last.is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL);
            if due {
                *last = Some(now);
            }
            due
        };
        let (sink, kind, retry_in_ms) = (&*self.sink, failed.kind.as_str(), delay.as_millis() as u64);
        if warn {
            tracing::warn!(sink, attempt, kind, error = %failed.detail, retry_in_ms, "{} failed; retrying", self.what);
        } else {
            tracing::info!(sink, attempt, kind, error = %failed.detail, retry_in_ms, "{} failed; retrying", self.what);
        }
    }
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
