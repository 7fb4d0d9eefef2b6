//! Kubernetes metadata from a real API server stand-in: a loopback HTTPS
//! server (hyper on tokio-rustls, with a CA and certificate generated here)
//! that serves real Pod JSON for list and watch. sluice must send its
//! service-account token, ask for this node's pods only, enrich events with
//! labels, annotations, owner and image, follow changes from the watch, and
//! keep a deleted pod's metadata for its last lines.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::file_source::{append, config, parse};
use support::kube_api::{start_api, ApiState, TOKEN};
use support::Sluice;

const PODS: &str = "/api/v1/pods";

fn pod(version: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "api-7f9", "namespace": "shop", "uid": "0c1d2e3f-aaaa-4bbb-8ccc-123456789abc",
            "resourceVersion": "101",
            "labels": {"app": "api", "app.kubernetes.io/version": version, "app.kubernetes.io/component": "worker"},
            "annotations": {"team": "payments"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-6d4b", "uid": "r1", "controller": true}]
        },
        "spec": {"nodeName": "node-a", "containers": [{"name": "api", "image": "registry.local/shop/api:3.1.4"}]},
        "status": {"phase": "Running"}
    })
}

#[test]
fn pods_from_a_real_tls_api_server_enrich_events_and_follow_the_watch() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = Arc::new(ApiState::default());
    state.push(PODS, pod("3.1.4"));
    let ca = dir.path().join("ca.crt");
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let port = start_api(&rt, state.clone(), &ca);

    let api_dir = dir.path().join("pods/shop_api-7f9_0c1d2e3f-aaaa-4bbb-8ccc-123456789abc/api");
    let other_dir = dir.path().join("pods/shop_batch-1_99999999-0000/job");
    std::fs::create_dir_all(&api_dir).unwrap();
    std::fs::create_dir_all(&other_dir).unwrap();
    let cri = |id: &str| format!("2024-05-01T10:00:00.000000001Z stdout F {{\"id\":\"{id}\"}}");
    append(&api_dir.join("0.log"), [cri("first")]);
    append(&other_dir.join("0.log"), [cri("other")]);

    let cfg = api_config(dir.path(), port, &token, &ca);
    let s = Sluice::start(&cfg);
    let lines = s.wait_for(2, Duration::from_secs(30));
    let v = parse(&lines);
    let first = v.iter().find(|e| e["id"] == "first").unwrap();
    assert_eq!(first["kubernetes"]["namespace"], "shop");
    assert_eq!(first["kubernetes"]["pod"], "api-7f9");
    assert_eq!(first["kubernetes"]["container"], "api");
    assert_eq!(first["kubernetes"]["node"], "node-a");
    assert_eq!(first["kubernetes"]["labels"]["app"], "api");
    assert_eq!(first["kubernetes"]["annotations"]["team"], "payments");
    assert_eq!(first["kubernetes"]["owner"], json!({"kind": "ReplicaSet", "name": "api-6d4b"}));
    assert_eq!(first["kubernetes"]["image"], "registry.local/shop/api:3.1.4");
    assert_eq!(first["release"]["version"], "3.1.4");
    assert_eq!(first["process"]["type"], "worker");
    let other = v.iter().find(|e| e["id"] == "other").unwrap();
    assert_eq!(other["kubernetes"]["pod"], "batch-1", "path metadata without a pod");
    assert!(other["kubernetes"].get("labels").is_none());
    assert_eq!(other["process"]["type"], "job");

    // A new release rolls out: the watch says so, new lines carry it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.watching(PODS) == 0 {
        assert!(Instant::now() < deadline, "sluice never started a watch");
        std::thread::sleep(Duration::from_millis(20));
    }
    state.send_event(PODS, "MODIFIED", &pod("3.1.5"));
    // Lines keep coming; once the watch event is in, they carry 3.1.5.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut probe = 0;
    loop {
        probe += 1;
        append(&api_dir.join("0.log"), [cri(&format!("probe-{probe}"))]);
        let lines = s.wait_for(2 + probe, Duration::from_secs(10));
        let v = parse(&lines);
        if v.last().unwrap()["release"]["version"] == "3.1.5" {
            break;
        }
        assert!(Instant::now() < deadline, "the watch's MODIFIED event never reached new lines");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The pod is deleted; its last lines still get its metadata.
    state.send_event(PODS, "DELETED", &pod("3.1.5"));
    std::thread::sleep(Duration::from_millis(300));
    let before = s.count();
    append(&api_dir.join("0.log"), [cri("after-delete")]);
    let lines = s.wait_for(before + 1, Duration::from_secs(10));
    let last = parse(&lines).into_iter().find(|e| e["id"] == "after-delete").unwrap();
    assert_eq!(last["release"]["version"], "3.1.5");
    assert_eq!(last["kubernetes"]["labels"]["app"], "api");
    let _ = s.stop();

    let reqs = state.requests.lock().unwrap().clone();
    assert!(reqs.iter().all(|(_, auth)| auth == &format!("Bearer {TOKEN}")), "{reqs:?}");
    assert!(
        reqs.iter().all(|(u, _)| u.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{reqs:?}"
    );
    assert!(reqs.iter().any(|(u, _)| !u.contains("watch=true")), "listed");
    assert!(
        reqs.iter()
            .any(|(u, _)| u.contains("watch=true") && u.contains("resourceVersion=100")),
        "watched from the list's version"
    );
}

#[test]
fn untrusted_api_certificate_is_refused_and_path_metadata_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = Arc::new(ApiState::default());
    state.push(PODS, pod("3.1.4"));
    let port = start_api(&rt, state.clone(), &dir.path().join("real-ca.crt"));
    // sluice trusts a different CA than the one that signed the server.
    let other_ca = dir.path().join("other-ca.crt");
    let _ = start_api(&rt, Arc::new(ApiState::default()), &other_ca);
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let api_dir = dir.path().join("pods/shop_api-7f9_0c1d2e3f-aaaa-4bbb-8ccc-123456789abc/api");
    std::fs::create_dir_all(&api_dir).unwrap();
    append(&api_dir.join("0.log"), ["2024-05-01T10:00:00Z stdout F {\"id\":\"x\"}".to_owned()]);
    let kube = format!(
        "[sources.files.kubernetes]\nenabled = true\napi = true\napi_url = \"https://localhost:{port}\"\n\
         token_file = \"{}\"\nca_file = \"{}\"\nnode_name = \"node-a\"\ninitial_sync_timeout = \"1s\"",
        token.display(),
        other_ca.display()
    );
    let cfg = config(
        &dir.path().join("data"),
        &[format!("{}/pods/**/*.log", dir.path().display())],
        &kube,
    );
    let s = Sluice::start(&cfg);
    let lines = s.wait_for(1, Duration::from_secs(30));
    let v = parse(&lines);
    assert_eq!(v[0]["kubernetes"]["pod"], "api-7f9");
    assert!(v[0]["kubernetes"].get("labels").is_none(), "no metadata from an untrusted server");
    assert!(s.logs().contains("kubernetes API"), "{}", s.logs());
    assert!(state.requests.lock().unwrap().is_empty(), "no request got past the TLS handshake");
    let _ = s.stop();
}

#[test]
fn pod_annotation_picks_the_multiline_preset_for_its_containers_only() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = Arc::new(ApiState::default());
    let mut annotated = pod("3.1.4");
    annotated["metadata"]["annotations"]["sluice.dev/multiline"] = json!("java");
    state.push(PODS, annotated);
    let ca = dir.path().join("ca.crt");
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let port = start_api(&rt, state.clone(), &ca);

    let trace = [
        "java.lang.IllegalStateException: boom",
        "\tat A.b(A.java:1)",
        "\tat A.main(A.java:2)",
        "after",
    ];
    let cri = |lines: &[&str]| -> Vec<String> {
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("2024-05-01T10:00:00.00000000{i}Z stderr F {l}"))
            .collect()
    };
    let api_dir = dir.path().join("pods/shop_api-7f9_0c1d2e3f-aaaa-4bbb-8ccc-123456789abc/api");
    let other_dir = dir.path().join("pods/shop_batch-1_99999999-0000/job");
    std::fs::create_dir_all(&api_dir).unwrap();
    std::fs::create_dir_all(&other_dir).unwrap();
    append(&api_dir.join("0.log"), cri(&trace));
    append(&other_dir.join("0.log"), cri(&trace));

    let cfg = api_config(dir.path(), port, &token, &ca);
    let s = Sluice::start(&cfg);
    // The annotated pod: the trace and `after` (sent after its timeout).
    // The other pod, without multiline: its four lines as they are.
    let v = parse(&s.wait_for(6, Duration::from_secs(30)));
    let of = |pod: &str| -> Vec<String> {
        v.iter()
            .filter(|e| e["kubernetes"]["pod"] == pod)
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(of("api-7f9"), vec![trace[..3].join("\n"), "after".to_owned()]);
    assert_eq!(of("batch-1"), trace.to_vec());
}

/// The file source config of the tests: every pod log under `dir`, with
/// the API server on `port`.
fn api_config(dir: &Path, port: u16, token: &Path, ca: &Path) -> String {
    let kube = format!(
        "[sources.files.kubernetes]\nenabled = true\napi = true\napi_url = \"https://localhost:{port}\"\n\
         token_file = \"{}\"\nca_file = \"{}\"\nnode_name = \"node-a\"\ninitial_sync_timeout = \"10s\"",
        token.display(),
        ca.display()
    );
    config(&dir.join("data"), &[format!("{}/pods/**/*.log", dir.display())], &kube)
}

#[test]
fn namespace_labels_and_node_zone_and_instance_type_are_added_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = Arc::new(ApiState::default());
    state.push(PODS, pod("3.1.4"));
    // As `kubectl get namespace shop -o json` and `kubectl get node node-a -o json` show them.
    state.put_object(
        "/api/v1/namespaces/shop",
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "uid": "9a8b7c6d-0000-4000-8000-000000000001", "resourceVersion": "12",
                         "creationTimestamp": "2026-01-10T08:00:00Z",
                         "labels": {"kubernetes.io/metadata.name": "shop", "team": "payments", "tier": "prod"},
                         "annotations": {"owner": "payments@example.com"}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}
        }),
    );
    state.put_object(
        "/api/v1/nodes/node-a",
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-a", "uid": "1f2e3d4c-0000-4000-8000-000000000002", "resourceVersion": "77",
                         "labels": {"beta.kubernetes.io/arch": "amd64", "kubernetes.io/arch": "amd64",
                                    "kubernetes.io/hostname": "node-a", "kubernetes.io/os": "linux",
                                    "node.kubernetes.io/instance-type": "m5.large",
                                    "topology.kubernetes.io/region": "eu-west-1",
                                    "topology.kubernetes.io/zone": "eu-west-1a"}},
            "spec": {"providerID": "aws:///eu-west-1a/i-0abc123def4567890"},
            "status": {"nodeInfo": {"kubeletVersion": "v1.30.2"}}
        }),
    );
    let ca = dir.path().join("ca.crt");
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let port = start_api(&rt, state.clone(), &ca);
    let api_dir = dir.path().join("pods/shop_api-7f9_0c1d2e3f-aaaa-4bbb-8ccc-123456789abc/api");
    std::fs::create_dir_all(&api_dir).unwrap();
    append(&api_dir.join("0.log"), ["2024-05-01T10:00:00Z stdout F {\"id\":\"x\"}".to_owned()]);
    let cfg = api_config(dir.path(), port, &token, &ca).replace(
        "initial_sync_timeout = \"10s\"",
        "initial_sync_timeout = \"10s\"\nnamespace_labels = true\nnode_labels = true",
    );
    let s = Sluice::start(&cfg);
    let v = parse(&s.wait_for(1, Duration::from_secs(30)));
    let k = &v[0]["kubernetes"];
    assert_eq!(k["namespace_labels"]["team"], "payments", "{k}");
    assert_eq!(k["namespace_labels"]["tier"], "prod");
    assert_eq!(k["namespace_annotations"]["owner"], "payments@example.com");
    assert_eq!(k["zone"], "eu-west-1a");
    assert_eq!(k["region"], "eu-west-1");
    assert_eq!(k["instance_type"], "m5.large");
    assert_eq!(k["node_labels"]["kubernetes.io/os"], "linux");
    assert_eq!(k["labels"]["app"], "api", "the pod's own labels stay");
    let _ = s.stop();
    let reqs = state.requests.lock().unwrap().clone();
    for path in ["/api/v1/namespaces/shop", "/api/v1/nodes/node-a"] {
        assert!(reqs.iter().any(|(u, _)| u == path), "GET {path}: {reqs:?}");
    }
}
