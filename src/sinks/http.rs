//! What the HTTP sinks (Loki, S3) share besides delivery (which is
//! [`super::delivery`]): the HTTP client, secrets read from files, error
//! text for log lines, and acknowledgement tracking for source batches
//! whose events travel in several requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tls::HttpTlsConfig;
use super::{SinkError, SinkErrorKind};
use crate::buffer::QueueItem;
use crate::event::{AckOutcome, Acknowledger};

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
        let ack = item.batch.acknowledger().cloned();
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

/// The `request` table of an HTTP sink.
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RequestConfig {
    /// Longest one request may take, answer included.
    #[serde(deserialize_with = "crate::config::duration")]
    pub(crate) timeout: Duration,
    /// Requests in flight at once; unset, the sink's own default
    /// ([`RequestConfig::concurrency`]). 1 keeps every stream's (or
    /// series') entries in order across requests, which Prometheus and a
    /// Loki with `unordered_writes = false` need.
    concurrency: Option<usize>,
}

impl Default for RequestConfig {
    fn default() -> Self {
        RequestConfig {
            timeout: Duration::from_secs(30),
            concurrency: None,
        }
    }
}

impl RequestConfig {
    /// Requests in flight at once: as configured, else `default`, the
    /// sink's.
    pub(crate) fn concurrency(&self, default: usize) -> usize {
        self.concurrency.unwrap_or(default)
    }

    /// Checks the bounds; `path` is the sink's key path.
    pub(crate) fn validate(&self, path: &str, errors: &mut Vec<crate::config::ConfigError>) {
        if self.concurrency == Some(0) {
            errors.push(crate::config::ConfigError::at(path, "request.concurrency", "must be at least 1"));
        }
        if self.timeout.is_zero() {
            errors.push(crate::config::ConfigError::at(path, "request.timeout", "must be above 0"));
        }
    }
}

/// Checks an HTTP sink's `endpoint` (an http or https URL) and `tenant_id`
/// (a non-empty header value), with their key paths below `path`.
pub(crate) fn validate_target(path: &str, endpoint: &str, tenant_id: Option<&str>, errors: &mut Vec<crate::config::ConfigError>) {
    let mut err = |key: &str, msg: String| errors.push(crate::config::ConfigError::at(path, key, msg));
    match reqwest::Url::parse(endpoint) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        Ok(u) => err("endpoint", format!("must be an http or https URL, not {}", u.scheme())),
        Err(e) => err("endpoint", format!("invalid URL {endpoint:?}: {e}")),
    }
    if let Some(t) = tenant_id {
        if t.is_empty() || reqwest::header::HeaderValue::from_str(t).is_err() {
            err("tenant_id", "must be a non-empty header value".into());
        }
    }
}

/// Adds the tenant (`X-Scope-OrgID`) and `Authorization` headers an HTTP
/// sink is configured with.
pub(crate) fn add_target_headers(
    headers: &mut reqwest::header::HeaderMap,
    tenant_id: Option<&str>,
    auth: Option<&HttpAuth>,
) -> Result<(), String> {
    if let Some(t) = tenant_id {
        let v = reqwest::header::HeaderValue::from_str(t).map_err(|_| "tenant_id is not a valid header value".to_owned())?;
        headers.insert("X-Scope-OrgID", v);
    }
    if let Some(a) = auth {
        headers.insert(reqwest::header::AUTHORIZATION, a.header()?);
    }
    Ok(())
}

/// The `auth` table of an HTTP sink: basic auth or a bearer token, each
/// secret read from a file (never written in the config).
#[derive(Debug, Clone, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpAuth {
    /// Basic-auth user name.
    pub(crate) user: Option<String>,
    /// File holding the basic-auth password.
    pub(crate) password_file: Option<PathBuf>,
    /// File holding a bearer token.
    pub(crate) bearer_token_file: Option<PathBuf>,
}

impl HttpAuth {
    /// Checks that exactly one way to authenticate is complete.
    pub(crate) fn validate(&self, path: &str, errors: &mut Vec<crate::config::ConfigError>) {
        let mut err = |msg: &str| errors.push(crate::config::ConfigError::at(path, "auth", msg));
        let basic = self.user.is_some() || self.password_file.is_some();
        if basic && (self.user.is_none() || self.password_file.is_none()) {
            err("basic auth needs both user and password_file");
        }
        if basic && self.bearer_token_file.is_some() {
            err("use either basic auth or bearer_token_file, not both");
        }
        if !basic && self.bearer_token_file.is_none() {
            err("set user and password_file, or bearer_token_file");
        }
    }

    /// The `Authorization` header, its secret read from its file now and
    /// marked sensitive (never logged).
    pub(crate) fn header(&self) -> Result<reqwest::header::HeaderValue, String> {
        let value = match (&self.user, &self.password_file, &self.bearer_token_file) {
            (Some(user), Some(pw), _) => {
                use base64::Engine;
                let password = read_secret_file(pw, "auth.password_file")?;
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                format!("Basic {token}")
            }
            (_, _, Some(f)) => format!("Bearer {}", read_secret_file(f, "auth.bearer_token_file")?),
            _ => return Err("auth: set user and password_file, or bearer_token_file".into()),
        };
        let mut v =
            reqwest::header::HeaderValue::from_str(&value).map_err(|_| "auth: the credentials are not a valid header value".to_owned())?;
        v.set_sensitive(true);
        Ok(v)
    }
}

/// How one request of an HTTP sink ended.
#[derive(Debug)]
pub(crate) enum RequestOutcome {
    /// The endpoint kept everything.
    Delivered,
    /// The endpoint refused some or all of it for good (counted by the
    /// sink): not retried.
    Dropped,
    /// The sink cannot work (credentials, address): stop.
    Fatal(String),
}

impl AckTracker {
    /// Acknowledges the batches of a finished request (`parts`). A fatal
    /// outcome abandons every open batch and becomes sink `sink`'s error.
    pub(crate) fn request_done(&mut self, sink: &str, parts: &[TrackId], outcome: RequestOutcome) -> Result<(), SinkError> {
        let ack = match &outcome {
            RequestOutcome::Delivered => AckOutcome::Delivered,
            RequestOutcome::Dropped => AckOutcome::Dropped,
            RequestOutcome::Fatal(_) => AckOutcome::Abandoned,
        };
        for id in parts {
            self.part_done(*id, ack);
        }
        if let RequestOutcome::Fatal(message) = outcome {
            self.abandon_all();
            return Err(SinkError::new(sink, SinkErrorKind::Refused(message)));
        }
        Ok(())
    }
}

/// Waits until `deadline`, or forever without one (a batch timer that is
/// not running).
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
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

/// Builds the HTTP client the sinks use: rustls, connection reuse,
/// bounded connect and request times; with `tls`, sink `sink`'s CA bundle,
/// client certificate and server name (see [`super::tls`]).
pub(crate) fn client(request_timeout: Duration, tls: Option<&HttpTlsConfig>, sink: &str) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10).min(request_timeout))
        .timeout(request_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")));
    if let Some(tls) = tls {
        builder = builder.use_preconfigured_tls(tls.client_config(sink).map_err(|e| e.to_string())?);
    }
    builder.build().map_err(|e| format!("cannot build the HTTP client: {e}"))
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
