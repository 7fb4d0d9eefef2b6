//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go
//! does it: the holder renews every `retry_period`; another instance takes
//! the Lease only when its record has not changed for `leaseDurationSeconds`
//! as measured on the taker's own clock (no clock skew between nodes
//! matters), and every write carries the `resourceVersion` it read, so of
//! two writers racing, the API server answers 409 Conflict to one.
//!
//! The leader also writes, in the annotation [`RESUME_ANNOTATION`], the
//! resource versions its sinks acknowledged, per watched collection: the
//! next leader, on another node with its own checkpoints, resumes from
//! there. What the old leader sent after its last renewal may come twice.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

use super::config::LeaderElectionConfig;
use super::event::later;
use crate::sources::file::kubernetes::{urlencode, ApiClient, ApiError};

/// The Lease annotation holding the acknowledged resource versions, as a
/// JSON object: collection key (a namespace, or `*` for all) → version.
pub(crate) const RESUME_ANNOTATION: &str = "sluice.dev/acknowledged-resource-versions";

/// Acknowledged resource versions by collection key.
pub(crate) type Versions = BTreeMap<String, String>;

/// What this instance may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// Another instance reports, or none yet: do not.
    Follower,
    /// This instance holds the Lease and reports, resuming after these
    /// versions (written by the previous leaders).
    Leader(Versions),
}

/// The Lease record as last seen, and when it last changed.
#[derive(Debug)]
struct Observed {
    resource_version: String,
    at: Instant,
}

/// One instance's side of the election.
#[derive(Debug)]
pub(crate) struct Elector {
    api: ApiClient,
    /// `…/namespaces/<ns>/leases`, for create.
    collection: String,
    /// `…/namespaces/<ns>/leases/<name>`, for get and update.
    item: String,
    name: String,
    namespace: String,
    identity: String,
    cfg: LeaderElectionConfig,
    source: Arc<str>,
    observed: Option<Observed>,
}

/// A Kubernetes `MicroTime`: RFC 3339 in UTC with microseconds.
pub(crate) fn micro_time(t: jiff::Timestamp) -> String {
    format!("{}.{:06}Z", t.strftime("%Y-%m-%dT%H:%M:%S"), t.subsec_microsecond())
}

/// The acknowledged versions recorded in a Lease; anything unreadable
/// counts as none.
pub(crate) fn recorded_versions(lease: &Value) -> Versions {
    lease
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(RESUME_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Versions>(s).ok())
        .unwrap_or_default()
}

/// `a` with each of `b`'s versions that is later.
pub(crate) fn merge_versions(mut a: Versions, b: &Versions) -> Versions {
    for (k, v) in b {
        let cur = a.remove(k);
        if let Some(m) = later(cur, Some(v.clone())) {
            a.insert(k.clone(), m);
        }
    }
    a
}

/// Whole seconds, rounded up, at least 1.
fn seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl Elector {
    /// An elector for the Lease `cfg.lease_name` in `namespace`, as `identity`.
    pub(crate) fn new(api: ApiClient, cfg: LeaderElectionConfig, namespace: String, identity: String, source: Arc<str>) -> Elector {
        let collection = format!(
            "{}/apis/coordination.k8s.io/v1/namespaces/{}/leases",
            api.base(),
            urlencode(&namespace)
        );
        let item = format!("{collection}/{}", urlencode(&cfg.lease_name));
        Elector {
            api,
            collection,
            item,
            name: cfg.lease_name.clone(),
            namespace,
            identity,
            cfg,
            source,
            observed: None,
        }
    }

    fn observe(&mut self, lease: &Value, now: Instant) {
        let rv = lease
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if self.observed.as_ref().is_none_or(|o| o.resource_version != rv) {
            self.observed = Some(Observed {
                resource_version: rv,
                at: now,
            });
        }
    }

    fn annotations(versions: &Versions) -> Map<String, Value> {
        let mut a = Map::new();
        if !versions.is_empty() {
            a.insert(
                RESUME_ANNOTATION.into(),
                Value::from(serde_json::to_string(versions).unwrap_or_default()),
            );
        }
        a
    }

    /// One round: creates, takes over or renews the Lease. `Some`: this
    /// instance holds it, with the versions to resume after; `None`:
    /// another does (or won a race).
    pub(crate) async fn try_acquire_or_renew(&mut self, acked: &Versions) -> Result<Option<Versions>, ApiError> {
        let now = Instant::now();
        let stamp = micro_time(jiff::Timestamp::now());
        let mut lease = match self.api.get_json(&self.item).await {
            Ok(l) => l,
            Err(ApiError::Status { status: 404, .. }) => {
                let body = json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace, "annotations": Self::annotations(acked)},
                    "spec": {
                        "holderIdentity": self.identity,
                        "leaseDurationSeconds": seconds(self.cfg.lease_duration),
                        "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0
                    }
                });
                return match self.api.json(reqwest::Method::POST, &self.collection, Some(&body)).await {
                    Ok(created) => {
                        self.observe(&created, now);
                        Ok(Some(acked.clone()))
                    }
                    Err(ApiError::Status { status: 409, .. }) => Ok(None),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        self.observe(&lease, now);
        let spec = lease.get("spec").cloned().unwrap_or(Value::Null);
        let holder = spec.get("holderIdentity").and_then(Value::as_str).unwrap_or("").to_owned();
        let duration = spec
            .get("leaseDurationSeconds")
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .unwrap_or(self.cfg.lease_duration);
        let unchanged_for = self.observed.as_ref().map_or(Duration::ZERO, |o| now.duration_since(o.at));
        if !holder.is_empty() && holder != self.identity && unchanged_for < duration {
            return Ok(None);
        }
        let versions = merge_versions(recorded_versions(&lease), acked);
        let transitions = spec.get("leaseTransitions").and_then(Value::as_u64).unwrap_or(0);
        let mut new_spec = spec.as_object().cloned().unwrap_or_default();
        new_spec.insert("holderIdentity".into(), Value::from(self.identity.as_str()));
        new_spec.insert("leaseDurationSeconds".into(), Value::from(seconds(self.cfg.lease_duration)));
        new_spec.insert("renewTime".into(), Value::from(stamp.as_str()));
        if holder != self.identity {
            new_spec.insert("acquireTime".into(), Value::from(stamp.as_str()));
            new_spec.insert("leaseTransitions".into(), Value::from(transitions + 1));
        }
        lease["spec"] = Value::Object(new_spec);
        self.set_annotation(&mut lease, &versions);
        match self.api.json(reqwest::Method::PUT, &self.item, Some(&lease)).await {
            Ok(updated) => {
                self.observe(&updated, now);
                if holder != self.identity {
                    tracing::info!(source = %self.source, lease = %self.name, previous = %holder, "took the Lease: this instance reports Kubernetes events");
                }
                Ok(Some(versions))
            }
            Err(ApiError::Status { status: 409, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn set_annotation(&self, lease: &mut Value, versions: &Versions) {
        if versions.is_empty() {
            return;
        }
        if let Some(meta) = lease.get_mut("metadata").and_then(Value::as_object_mut) {
            let a = meta.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
            if !a.is_object() {
                *a = Value::Object(Map::new());
            }
            if let Some(a) = a.as_object_mut() {
                a.extend(Self::annotations(versions));
            }
        }
    }

    /// Gives the Lease up (holder empty, duration 1 s), recording `acked`,
    /// so another instance takes over at once; only if still the holder.
    pub(crate) async fn release(&mut self, acked: &Versions) -> Result<(), ApiError> {
        let mut lease = self.api.get_json(&self.item).await?;
        if lease.pointer("/spec/holderIdentity").and_then(Value::as_str) != Some(self.identity.as_str()) {
            return Ok(());
        }
        let stamp = micro_time(jiff::Timestamp::now());
        let versions = merge_versions(recorded_versions(&lease), acked);
        if let Some(spec) = lease.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("holderIdentity".into(), Value::from(""));
            spec.insert("leaseDurationSeconds".into(), Value::from(1));
            spec.insert("renewTime".into(), Value::from(stamp.as_str()));
        }
        self.set_annotation(&mut lease, &versions);
        self.api.json(reqwest::Method::PUT, &self.item, Some(&lease)).await.map(|_| ())
    }

    /// Campaigns every `retry_period` until `stop`, telling `role` when
    /// this instance leads and when it stops leading (lost the Lease, or
    /// could not renew it within `renew_deadline`). At `stop`, a leader
    /// releases the Lease with the final `acked` versions.
    pub(crate) async fn run(mut self, role: watch::Sender<Role>, acked: Arc<Mutex<Versions>>, mut stop: oneshot::Receiver<()>) {
        let m = super::source::metrics();
        let mut leading = false;
        let mut last_renew = Instant::now();
        let mut tick = tokio::time::interval(self.cfg.retry_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let snapshot = |a: &Arc<Mutex<Versions>>| a.lock().unwrap_or_else(|p| p.into_inner()).clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => break,
            }
            let versions = snapshot(&acked);
            let attempt = tokio::time::timeout(self.cfg.renew_deadline, self.try_acquire_or_renew(&versions)).await;
            match attempt {
                Ok(Ok(Some(resume))) => {
                    last_renew = Instant::now();
                    if !leading {
                        leading = true;
                        m.leader.with_label_values(&[&self.source]).set(1);
                        let _ = role.send(Role::Leader(resume));
                    }
                }
                Ok(Ok(None)) => {
                    if leading {
                        tracing::warn!(source = %self.source, lease = %self.name, "lost the Lease to another instance: no longer reporting Kubernetes events");
                        leading = false;
                        m.leader.with_label_values(&[&self.source]).set(0);
                        let _ = role.send(Role::Follower);
                    }
                }
                Ok(Err(e)) => self.failed(&e.to_string(), &mut leading, last_renew, &role),
                Err(_) => self.failed("timed out", &mut leading, last_renew, &role),
            }
        }
        if leading {
            m.leader.with_label_values(&[&self.source]).set(0);
            if let Err(e) = self.release(&snapshot(&acked)).await {
                tracing::warn!(source = %self.source, error = %e, "could not release the Lease; another instance takes it when it expires");
            }
        }
    }

    fn failed(&self, error: &str, leading: &mut bool, last_renew: Instant, role: &watch::Sender<Role>) {
        let m = super::source::metrics();
        m.api_errors.with_label_values(&[&self.source]).inc();
        tracing::warn!(source = %self.source, lease = %self.name, %error, "kubernetes API: the Lease");
        if *leading && last_renew.elapsed() >= self.cfg.renew_deadline {
            tracing::warn!(source = %self.source, lease = %self.name, "could not renew the Lease within renew_deadline: no longer reporting Kubernetes events");
            *leading = false;
            m.leader.with_label_values(&[&self.source]).set(0);
            let _ = role.send(Role::Follower);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time_has_six_digits_and_z() {
        let t: jiff::Timestamp = "2026-12-06T10:00:05.0012Z".parse().unwrap();
        assert_eq!(micro_time(t), "2026-12-06T10:00:05.001200Z");
    }

    #[test]
    fn recorded_versions_merge_to_the_later_of_each() {
        let lease = json!({"metadata": {"annotations": {RESUME_ANNOTATION: "{\"*\":\"120\",\"shop\":\"7\"}"}}});
        let mine: Versions = [("*".to_owned(), "100".to_owned()), ("ops".to_owned(), "3".to_owned())].into();
        let merged = merge_versions(recorded_versions(&lease), &mine);
        assert_eq!(merged["*"], "120");
        assert_eq!(merged["shop"], "7");
        assert_eq!(merged["ops"], "3");
        for bad in [
            json!({}),
            json!({"metadata": {"annotations": {RESUME_ANNOTATION: "not json"}}}),
            json!({"metadata": {"annotations": 5}}),
        ] {
            assert!(recorded_versions(&bad).is_empty());
        }
    }

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(seconds(Duration::from_millis(1500)), 2);
        assert_eq!(seconds(Duration::from_secs(15)), 15);
        assert_eq!(seconds(Duration::from_millis(200)), 1);
    }
}
