//! The running source: per watched collection (all namespaces, or each
//! configured one) a list-then-watch loop that reports only while this
//! instance leads, and a tracker that checkpoints the resource version of
//! the last batch every sink acknowledged.
//!
//! At-least-once: a restart (or a new leader) watches from the last
//! acknowledged resource version, and skips what it lists or is sent again
//! at or before the last version it sent; only batches sent but not
//! acknowledged can come twice.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

use super::config::KubernetesEventsConfig;
use super::event::{later, not_after, regarding_pod, render, resource_version, PodRef};
use super::lease::{Elector, Role, Versions};
use crate::enrich::SourceContext;
use crate::event::AckGroup;
use crate::framing::{LineSpan, Lines};
use crate::sources::file::kubernetes::{urlencode, with_jitter, ApiClient, ApiError, KubernetesConfig, PodInfo, WatchEvent};
use crate::sources::journald::cursor::CursorFile;
use crate::sources::journald::source::{track, InFlight};
use crate::sources::{SourceCx, SourceError};
use crate::telemetry::{counter_vec, gauge_vec};

/// Longest wait between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Most pods kept in the lookup cache; past it, expired ones are dropped.
const MAX_CACHED_PODS: usize = 10_000;

/// kubernetes_events source metrics, registered once.
pub(crate) struct EventsMetrics {
    /// `sluice_kubernetes_events_total{source,outcome}`: `sent`,
    /// `duplicate` (at or before a version already sent), `invalid`.
    pub(crate) events: prometheus::IntCounterVec,
    /// `sluice_kubernetes_events_leader{source}`: 1 while this instance
    /// holds the Lease.
    pub(crate) leader: prometheus::IntGaugeVec,
    /// `sluice_kubernetes_events_api_errors_total{source}`.
    pub(crate) api_errors: prometheus::IntCounterVec,
    /// `sluice_kubernetes_events_relists_total{source}`: watches that had
    /// to list again (410 Gone, a broken stream).
    pub(crate) relists: prometheus::IntCounterVec,
}

/// The metrics, registered on first use.
pub(crate) fn metrics() -> &'static EventsMetrics {
    static M: OnceLock<EventsMetrics> = OnceLock::new();
    M.get_or_init(|| EventsMetrics {
        events: counter_vec(
            "sluice_kubernetes_events_total",
            "Kubernetes Events read, by outcome (sent, duplicate, invalid).",
            &["source", "outcome"],
        ),
        leader: gauge_vec(
            "sluice_kubernetes_events_leader",
            "1 while this instance holds the Lease and reports Kubernetes events.",
            &["source"],
        ),
        api_errors: counter_vec(
            "sluice_kubernetes_events_api_errors_total",
            "Failed requests to the Kubernetes API server (events, pods, the Lease).",
            &["source"],
        ),
        relists: counter_vec(
            "sluice_kubernetes_events_relists_total",
            "Event watches that had to list again (410 Gone, a broken stream).",
            &["source"],
        ),
    })
}

/// One watched collection.
pub(crate) struct Stream {
    /// `*` for every namespace, else the namespace: the key of its
    /// version in the Lease.
    pub(crate) key: String,
    /// The collection's path.
    pub(crate) path: String,
    /// Its checkpoint.
    pub(crate) file: CursorFile,
    /// The checkpointed version, if any.
    pub(crate) start: Option<String>,
}

impl Stream {
    /// The collection of `key` (`*` or a namespace).
    pub(crate) fn path_of(key: &str) -> String {
        if key == "*" {
            "/apis/events.k8s.io/v1/events".to_owned()
        } else {
            format!("/apis/events.k8s.io/v1/namespaces/{}/events", urlencode(key))
        }
    }
}

/// A looked-up pod (or that there was none) and when.
type CachedPod = (Instant, Option<Arc<PodInfo>>);

/// Pods looked up by namespace and name, kept for a while.
struct PodLookup {
    api: ApiClient,
    ttl: Duration,
    cache: Mutex<HashMap<(String, String), CachedPod>>,
    source: Arc<str>,
}

impl PodLookup {
    /// The pod `r` names; `None` when it is gone or cannot be read (its
    /// events are still sent, without the pod's labels).
    async fn get(&self, r: &PodRef) -> Option<Arc<PodInfo>> {
        let key = (r.namespace.clone(), r.name.clone());
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, pod)) = cache.get(&key) {
                let same = match (pod, &r.uid) {
                    (Some(p), Some(uid)) => &p.uid == uid,
                    _ => true,
                };
                if same && now.duration_since(*at) < self.ttl {
                    return pod.clone();
                }
            }
        }
        let url = format!(
            "{}/api/v1/namespaces/{}/pods/{}",
            self.api.base(),
            urlencode(&r.namespace),
            urlencode(&r.name)
        );
        let pod = match self.api.get_json(&url).await {
            Ok(v) => PodInfo::from_json(&v).map(Arc::new),
            Err(ApiError::Status { status: 404, .. }) => None,
            Err(e) => {
                metrics().api_errors.with_label_values(&[&self.source]).inc();
                tracing::warn!(source = %self.source, error = %e, "kubernetes API: the pod of an event");
                None
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_PODS {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| now.duration_since(*at) < ttl);
            if cache.len() >= MAX_CACHED_PODS {
                cache.clear();
            }
        }
        cache.insert(key, (now, pod.clone()));
        pod
    }
}

/// Why reporting stopped.
enum Ended {
    /// Shutdown, or the pipeline closed.
    Stop,
    /// Another instance leads now.
    LostLead,
}

/// What every collection's loop shares.
struct Shared {
    cfg: KubernetesEventsConfig,
    /// Which pod labels and annotations go on events.
    kcfg: KubernetesConfig,
    api: ApiClient,
    pods: PodLookup,
    ctx: Arc<SourceContext>,
    /// Acknowledged versions by collection key, for the Lease.
    acked: Arc<Mutex<Versions>>,
}

/// Runs the source until shutdown: the election (if on) and one loop per
/// collection.
pub(crate) async fn run(
    cfg: KubernetesEventsConfig,
    cx: SourceCx,
    api: ApiClient,
    streams: Vec<Stream>,
    elector: Option<Elector>,
) -> Result<(), SourceError> {
    let acked: Versions = streams.iter().filter_map(|s| Some((s.key.clone(), s.start.clone()?))).collect();
    let acked = Arc::new(Mutex::new(acked));
    let (role_tx, role_rx) = watch::channel(if elector.is_some() {
        Role::Follower
    } else {
        Role::Leader(Versions::new())
    });
    let (stop_elector, stop_rx) = oneshot::channel();
    // Without an election the sender stays here, so the role never reads
    // as closed (a closed channel ends the loops).
    let (election, _fixed_role) = match elector {
        Some(e) => (Some(tokio::spawn(e.run(role_tx, acked.clone(), stop_rx))), None),
        None => (None, Some(role_tx)),
    };
    let kcfg = KubernetesConfig {
        release_label: cfg.release_label.clone(),
        process_type_label: cfg.process_type_label.clone(),
        labels: cfg.labels,
        annotations: cfg.annotations,
        ..KubernetesConfig::default()
    };
    let shared = Arc::new(Shared {
        kcfg,
        pods: PodLookup {
            api: api.clone(),
            ttl: cfg.pod_cache_ttl,
            cache: Mutex::default(),
            source: cx.name.clone(),
        },
        api,
        ctx: Arc::new(SourceContext::new(
            cx.name.clone(),
            "kubernetes_events",
            "events.k8s.io/v1".into(),
            cx.enrich.metadata(None),
        )),
        acked,
        cfg,
    });
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|s| tokio::spawn(run_stream(shared.clone(), cx.clone(), s, role_rx.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    // Every batch is acknowledged (or given up on): the leader records the
    // final versions as it releases the Lease.
    let _ = stop_elector.send(());
    if let Some(e) = election {
        let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
    }
    Ok(())
}

/// One collection: waits to lead, reports, and checkpoints.
async fn run_stream(shared: Arc<Shared>, cx: SourceCx, stream: Stream, mut role: watch::Receiver<Role>) {
    let (group, rx) = AckGroup::new();
    let in_flight: InFlight = Arc::default();
    let (stop_tx, stop_rx) = oneshot::channel();
    let acked = shared.acked.clone();
    let key = stream.key.clone();
    let tracker = tokio::spawn(track(
        rx,
        in_flight.clone(),
        stream.file,
        shared.cfg.checkpoint_interval,
        cx.name.clone(),
        stop_rx,
        Some(Box::new(move |rv: &str| {
            acked.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), rv.to_owned());
        })),
    ));
    let mut reporter = Reporter {
        shared: shared.clone(),
        cx: cx.clone(),
        group,
        in_flight,
        path: stream.path,
        delivered: stream.start,
    };
    let mut shutdown = cx.shutdown.clone();
    let mut backoff = Duration::from_millis(500);
    loop {
        // Wait to lead.
        let resume = loop {
            if shutdown.is_set() {
                break None;
            }
            if let Role::Leader(v) = &*role.borrow_and_update() {
                break Some(v.get(&stream.key).cloned());
            }
            tokio::select! {
                r = role.changed() => if r.is_err() { break None },
                _ = shutdown.wait() => {}
            }
        };
        let Some(resume) = resume else { break };
        reporter.delivered = later(reporter.delivered.take(), resume);
        match reporter.report(&mut role, &mut shutdown).await {
            Ok(Ended::Stop) => break,
            Ok(Ended::LostLead) => backoff = Duration::from_millis(500),
            Err(e) => {
                metrics().api_errors.with_label_values(&[&cx.name]).inc();
                tracing::warn!(source = %cx.name, error = %e, retry_in_ms = backoff.as_millis() as u64, "kubernetes API: events");
                tokio::select! {
                    _ = tokio::time::sleep(with_jitter(backoff)) => {}
                    _ = shutdown.wait() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    // No new batch from here: the tracker ends when the last one in flight
    // completes, writing the final checkpoint.
    drop(reporter);
    let mut tracker = tracker;
    if tokio::time::timeout(shared.cfg.drain_timeout, &mut tracker).await.is_err() {
        tracing::warn!(source = %cx.name, "sinks did not acknowledge every event within drain_timeout; unacknowledged events will be sent again");
        let _ = stop_tx.send(());
        let _ = tracker.await;
    }
}

/// One collection's list and watch.
struct Reporter {
    shared: Arc<Shared>,
    cx: SourceCx,
    group: AckGroup,
    in_flight: InFlight,
    path: String,
    /// The latest resource version sent (or checkpointed, or recorded by
    /// a previous leader): anything at or before it is not sent again.
    delivered: Option<String>,
}

impl Reporter {
    /// Lists (unless resuming) and watches until shutdown or the lead is
    /// lost; an `Err` is retried by the caller after a pause.
    async fn report(
        &mut self,
        role: &mut watch::Receiver<Role>,
        shutdown: &mut crate::pipeline::ShutdownSignal,
    ) -> Result<Ended, ApiError> {
        let base = format!("{}{}", self.shared.api.base(), self.path);
        let m = metrics();
        let mut from = self.delivered.clone();
        loop {
            let start = match from.take() {
                Some(v) => v,
                None => {
                    let (items, rv) = self.shared.api.list(&base).await?;
                    if !self.emit(items, rv.clone()).await {
                        return Ok(Ended::Stop);
                    }
                    rv
                }
            };
            let url = format!(
                "{base}?watch=true&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion={}",
                urlencode(&start)
            );
            let mut stream = match self.shared.api.watch(&url).await {
                Ok(s) => s,
                Err(ApiError::Status { status: 410, .. }) => {
                    // Too old a version: the server no longer has it.
                    m.relists.with_label_values(&[&self.cx.name]).inc();
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut last = start;
            let mut events = Vec::new();
            loop {
                let more = tokio::select! {
                    r = stream.next_events(&mut events) => r?,
                    r = role.changed() => {
                        if r.is_err() || !matches!(*role.borrow(), Role::Leader(_)) {
                            return Ok(Ended::LostLead);
                        }
                        continue;
                    }
                    _ = shutdown.wait() => return Ok(Ended::Stop),
                };
                let mut objects = Vec::new();
                let mut relist = None;
                for ev in events.drain(..) {
                    match ev {
                        WatchEvent::Object(kind, obj) => {
                            if let Some(v) = resource_version(&obj) {
                                last = v.to_owned();
                            }
                            // DELETED is the Event's TTL running out, not news.
                            if kind == "ADDED" || kind == "MODIFIED" {
                                objects.push(obj);
                            }
                        }
                        WatchEvent::Relist(why) => {
                            relist = Some(why);
                            break;
                        }
                    }
                }
                if (!objects.is_empty() || self.delivered.as_deref() != Some(last.as_str())) && !self.emit(objects, last.clone()).await {
                    return Ok(Ended::Stop);
                }
                if let Some(why) = relist {
                    m.relists.with_label_values(&[&self.cx.name]).inc();
                    tracing::info!(source = %self.cx.name, reason = %why, "kubernetes event watch ended; listing again");
                    break;
                }
                if !more {
                    from = Some(last);
                    break;
                }
            }
        }
    }

    /// Sends `objects` as one batch whose checkpoint is `rv`, leaving out
    /// those at or before a version already sent; false when the pipeline
    /// is closed.
    async fn emit(&mut self, objects: Vec<Value>, rv: String) -> bool {
        let m = metrics();
        let name = &self.cx.name;
        let mut out = Vec::new();
        let mut spans = Vec::new();
        for obj in &objects {
            let erv = resource_version(obj);
            if let (Some(e), Some(d)) = (erv, self.delivered.as_deref()) {
                if not_after(e, d) {
                    m.events.with_label_values(&[name, "duplicate"]).inc();
                    continue;
                }
            }
            let pod = match (self.shared.cfg.pod_metadata, regarding_pod(obj)) {
                (true, Some(r)) => self.shared.pods.get(&r).await,
                _ => None,
            };
            let start = out.len();
            match render(obj, pod.as_deref(), &self.shared.kcfg, &mut out) {
                Ok(()) => {
                    spans.push(LineSpan {
                        start: start as u32,
                        len: (out.len() - start) as u32,
                        truncated: false,
                    });
                    out.push(b'\n');
                    m.events.with_label_values(&[name, "sent"]).inc();
                }
                Err(_) => {
                    out.truncate(start);
                    m.events.with_label_values(&[name, "invalid"]).inc();
                }
            }
        }
        for obj in &objects {
            self.delivered = later(self.delivered.take(), resource_version(obj).map(str::to_owned));
        }
        self.delivered = later(self.delivered.take(), Some(rv.clone()).filter(|v| !v.is_empty()));
        let ack = self.group.next();
        if !rv.is_empty() {
            self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(ack.seq(), rv);
        }
        if spans.is_empty() {
            ack.expect(0);
            return true;
        }
        let lines = Lines {
            chunk: out.into(),
            spans,
            dropped: 0,
            may_hold_breaks: false,
        };
        self.cx.output.send_lines(lines, self.shared.ctx.clone(), Some(ack)).await.is_ok()
    }
}
