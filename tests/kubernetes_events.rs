//! The kubernetes_events source against the loopback HTTPS API server
//! stand-in (tests/support/kube_api.rs), which serves real Event and Lease
//! JSON with resource versions, watch replay, 410 Gone and 409 Conflict as
//! a real API server does. Two sluice instances campaign for one Lease:
//! only the holder reports; after `kill -9` of the holder the other takes
//! over once the Lease expires and resumes after what was acknowledged. A
//! restart resumes from the checkpoint without sending acknowledged events
//! again.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::file_source::parse;
use support::kube_api::{start_api, ApiState, TOKEN};
use support::{wait_until, Sluice};

const EVENTS: &str = "/apis/events.k8s.io/v1/events";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/sluice/leases/sluice-kubernetes-events";
const POD: &str = "/api/v1/namespaces/shop/pods/web-7d9f";
const POD_UID: &str = "0c1d2e3f-aaaa-4bbb-8ccc-123456789abc";

/// An Event as the kubelet writes it (through core/v1, hence the
/// deprecated fields), as `kubectl get events.v1.events.k8s.io -o json`
/// shows it; its note is `event-<n>`.
fn event(n: u32) -> Value {
    json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {
            "name": format!("web-7d9f.17c2f4a2b8c9{n:04x}"),
            "namespace": "shop",
            "uid": format!("5b0c6c29-1f1e-4c34-9a0e-{n:012}"),
            "creationTimestamp": "2026-12-06T10:00:00Z",
            "managedFields": []
        },
        "eventTime": null,
        "reportingController": "kubelet",
        "reportingInstance": "node-a",
        "reason": "BackOff",
        "regarding": {
            "kind": "Pod", "namespace": "shop", "name": "web-7d9f", "uid": POD_UID,
            "apiVersion": "v1", "resourceVersion": "900", "fieldPath": "spec.containers{app}"
        },
        "note": format!("event-{n}"),
        "type": "Warning",
        "deprecatedSource": {"component": "kubelet", "host": "node-a"},
        "deprecatedFirstTimestamp": "2026-12-06T10:00:00Z",
        "deprecatedLastTimestamp": "2026-12-06T10:00:05Z",
        "deprecatedCount": 5
    })
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "web-7d9f", "namespace": "shop", "uid": POD_UID, "resourceVersion": "900",
            "labels": {"app": "web", "app.kubernetes.io/version": "3.1.4"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-6d4b", "uid": "r1", "controller": true}]
        },
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "registry.local/shop/web:3.1.4"}]},
        "status": {"phase": "Running"}
    })
}

/// The stand-in, its CA and token files.
struct Cluster {
    _rt: tokio::runtime::Runtime,
    state: Arc<ApiState>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let state = Arc::new(ApiState::default());
        state.put_object(POD, pod());
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let port = start_api(&rt, state.clone(), &dir.path().join("ca.crt"));
        Cluster { _rt: rt, state, port, dir }
    }

    /// A sluice reporting events as `identity`, keeping its checkpoint in
    /// `<dir>/<data>`.
    fn sluice(&self, identity: &str, data: &str) -> Sluice {
        Sluice::start(&self.config(identity, &self.dir.path().join(data)))
    }

    fn config(&self, identity: &str, data: &Path) -> String {
        format!(
            r#"data_dir = "{data}"
shutdown_timeout = "20s"
[api]
enabled = false
[enrich]
disable_host = true
[sources.events]
type = "kubernetes_events"
api_url = "https://localhost:{port}"
token_file = "{dir}/token"
ca_file = "{dir}/ca.crt"
checkpoint_interval = "100ms"
[sources.events.leader_election]
lease_namespace = "sluice"
identity = "{identity}"
lease_duration = "4s"
renew_deadline = "3s"
retry_period = "300ms"
[sinks.out]
type = "stdout"
"#,
            data = data.display(),
            port = self.port,
            dir = self.dir.path().display(),
        )
    }

    fn lease(&self) -> Option<Value> {
        self.state.object(LEASE)
    }

    fn holder(&self) -> String {
        self.lease()
            .and_then(|l| l.pointer("/spec/holderIdentity").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default()
    }

    /// The acknowledged version the holder recorded in the Lease.
    fn recorded(&self) -> Option<u64> {
        let l = self.lease()?;
        let a = l
            .pointer("/metadata/annotations")?
            .get("sluice.dev/acknowledged-resource-versions")?
            .as_str()?;
        let m: BTreeMap<String, String> = serde_json::from_str(a).ok()?;
        m.get("*")?.parse().ok()
    }

    fn send(&self, n: u32) -> u64 {
        self.state.record(EVENTS, "ADDED", event(n))
    }
}

/// The `event-<n>` numbers of the lines, in order.
fn numbers(lines: &[String]) -> Vec<u32> {
    parse(lines)
        .iter()
        .map(|e| {
            e["message"]
                .as_str()
                .and_then(|m| m.strip_prefix("event-"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not an event line: {e}"))
        })
        .collect()
}

fn has_all(lines: &[String], want: &[u32]) -> bool {
    let got = numbers(lines);
    want.iter().all(|n| got.contains(n))
}

const LONG: Duration = Duration::from_secs(60);

#[test]
fn only_the_lease_holder_reports_and_the_other_takes_over_after_kill_9() {
    let c = Cluster::start();
    let a = c.sluice("sluice-a", "data-a");
    wait_until("sluice-a holds the Lease", LONG, || (c.holder() == "sluice-a").then_some(()));
    let b = c.sluice("sluice-b", "data-b");
    wait_until("the leader watches events", LONG, || (c.state.watching(EVENTS) == 1).then_some(()));

    let mut last = 0;
    for n in 1..=5 {
        last = c.send(n);
    }
    let lines = a.wait_until("events 1-5 from the leader", LONG, |l| has_all(l, &[1, 2, 3, 4, 5]));
    assert_eq!(numbers(&lines), [1, 2, 3, 4, 5], "each event once, in order");
    let first = &parse(&lines)[0];
    assert_eq!(first["level"], "warning");
    assert_eq!(first["kubernetes"]["namespace"], "shop");
    assert_eq!(first["kubernetes"]["pod"], "web-7d9f");
    assert_eq!(first["kubernetes"]["pod_uid"], POD_UID);
    assert_eq!(first["kubernetes"]["container"], "app");
    assert_eq!(first["kubernetes"]["kind"], "Pod");
    assert_eq!(first["kubernetes"]["node"], "node-a");
    assert_eq!(first["kubernetes"]["labels"]["app"], "web");
    assert_eq!(first["kubernetes"]["owner"], json!({"kind": "ReplicaSet", "name": "web-6d4b"}));
    assert_eq!(first["release"]["version"], "3.1.4");
    assert_eq!(first["kubernetes_event"]["reason"], "BackOff");
    assert_eq!(first["kubernetes_event"]["count"], 5);
    assert_eq!(first["kubernetes_event"]["reporting_controller"], "kubelet");

    // The leader records what its sink acknowledged in the Lease.
    wait_until("the acknowledged version in the Lease", LONG, || {
        (c.recorded() == Some(last)).then_some(())
    });
    assert_eq!(b.count(), 0, "the follower reports nothing; log:\n{}", b.logs());
    assert_eq!(c.state.watching(EVENTS), 1, "only the leader watches");
    let lease = c.lease().unwrap();
    let micro = |k: &str| lease["spec"][k].as_str().unwrap_or("").to_owned();
    for key in ["renewTime", "acquireTime"] {
        let t = micro(key);
        assert!(
            t.len() == 27 && t.ends_with('Z') && t.as_bytes()[19] == b'.',
            "{key} is a MicroTime: {t}"
        );
    }
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 4);

    // kill -9 the leader; events keep happening during the takeover.
    a.kill();
    c.send(6);
    c.send(7);
    b.wait_until("events 6 and 7 from the new leader", LONG, |l| has_all(l, &[6, 7]));
    assert_eq!(c.holder(), "sluice-b");
    c.send(8);
    let lines = b.wait_until("event 8", LONG, |l| has_all(l, &[8]));
    // The new leader resumed after what the old one acknowledged: nothing
    // before it again, and nothing lost.
    assert_eq!(numbers(&lines), [6, 7, 8], "log:\n{}", b.logs());
    let lease = c.lease().unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    let _ = b.stop();
}

#[test]
fn an_update_that_loses_the_race_gets_409_and_does_not_report() {
    let c = Cluster::start();
    // A Lease held by an instance that is gone, and a rival that wins the
    // race for it when sluice first tries to take it.
    c.state.put_object(
        LEASE,
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "sluice-kubernetes-events", "namespace": "sluice", "resourceVersion": "50", "uid": "l1"},
            "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 4,
                     "acquireTime": "2026-12-06T09:00:00.000000Z", "renewTime": "2026-12-06T09:00:10.000000Z",
                     "leaseTransitions": 3}
        }),
    );
    c.state.race_next_update.store(true, Ordering::SeqCst);
    c.send(1);
    let a = c.sluice("sluice-a", "data-a");
    let conflict = wait_until("a 409 Conflict", LONG, || {
        let w = c.state.lease_writes.lock().unwrap().clone();
        w.iter().any(|(m, _, s, h)| m == "PUT" && *s == 409 && h == "sluice-a").then_some(w)
    });
    assert!(
        !c.state.requests.lock().unwrap().iter().any(|(u, _)| u.starts_with(EVENTS)),
        "no event read before holding the Lease: {conflict:?}"
    );
    let lost_at = Instant::now();
    assert_eq!(c.holder(), "rival");
    // The rival never renews: sluice takes the Lease when it expires (not
    // before: 4 s unchanged on its own clock), and reports what happened
    // meanwhile.
    wait_until("sluice-a holds the Lease", LONG, || (c.holder() == "sluice-a").then_some(()));
    assert!(
        lost_at.elapsed() >= Duration::from_secs(3),
        "took the rival's Lease after {:?}, before it expired",
        lost_at.elapsed()
    );
    let lines = a.wait_until("event 1 once sluice-a leads", LONG, |l| has_all(l, &[1]));
    assert_eq!(numbers(&lines), [1]);
    assert_eq!(c.holder(), "sluice-a");
    assert_eq!(c.lease().unwrap()["spec"]["leaseTransitions"], 4);
    let _ = a.stop();
}

#[test]
fn restart_resumes_after_the_acknowledged_version_and_relists_after_410() {
    let c = Cluster::start();
    for n in 1..=3 {
        c.send(n);
    }
    let a = c.sluice("sluice-a", "data");
    a.wait_until("events 1-3", LONG, |l| has_all(l, &[1, 2, 3]));
    let (status, lines) = a.stop();
    assert!(status.success(), "{}", a.logs());
    assert_eq!(numbers(&lines), [1, 2, 3]);
    assert_eq!(c.holder(), "", "a graceful stop releases the Lease");

    // Events while it was down arrive after the restart; the acknowledged
    // ones do not come again.
    c.send(4);
    c.send(5);
    let a = c.sluice("sluice-a", "data");
    a.wait_until("events 4 and 5", LONG, |l| has_all(l, &[4, 5]));
    c.send(6);
    let lines = a.wait_until("event 6", LONG, |l| has_all(l, &[6]));
    assert_eq!(numbers(&lines), [4, 5, 6], "log:\n{}", a.logs());
    let (status, _) = a.stop();
    assert!(status.success());

    // The server no longer has the history after the checkpoint (410
    // Gone): sluice lists again and sends only what is newer.
    c.send(7);
    c.state.compact(EVENTS);
    let a = c.sluice("sluice-a", "data");
    a.wait_until("event 7", LONG, |l| has_all(l, &[7]));
    c.send(8);
    let lines = a.wait_until("event 8", LONG, |l| has_all(l, &[8]));
    assert_eq!(numbers(&lines), [7, 8], "log:\n{}", a.logs());
    assert!(a.logs().contains("listing again"), "{}", a.logs());
    let _ = a.stop();
}

#[test]
fn without_leader_election_one_instance_reports_on_one_watch_and_writes_no_lease() {
    let c = Cluster::start();
    c.send(1);
    c.send(2);
    let data = c.dir.path().join("data");
    let cfg = c.config("solo", &data).replace(
        "[sources.events.leader_election]\n",
        "[sources.events.leader_election]\nenabled = false\n",
    );
    let a = Sluice::start(&cfg);
    a.wait_until("events 1 and 2", LONG, |l| has_all(l, &[1, 2]));
    wait_until("a watch", LONG, || (c.state.watching(EVENTS) == 1).then_some(()));
    c.send(3);
    let lines = a.wait_until("event 3", LONG, |l| has_all(l, &[3]));
    assert_eq!(numbers(&lines), [1, 2, 3]);
    // One list and one watch, held open: not a loop of reconnects.
    std::thread::sleep(Duration::from_millis(500));
    let watches = c
        .state
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|(u, _)| u.starts_with(EVENTS) && u.contains("watch=true"))
        .count();
    assert_eq!(watches, 1, "log:\n{}", a.logs());
    assert!(c.lease().is_none(), "no Lease without leader election");
    let _ = a.stop();
}
