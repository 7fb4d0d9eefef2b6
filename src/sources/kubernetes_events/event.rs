//! One `events.k8s.io/v1` Event as one sluice event: a JSON line with the
//! note as `message`, the type as `level`, the last time it was seen as
//! `time`, the Event's own fields in `kubernetes_event`, and the object it
//! is about (`regarding`) in `kubernetes`, in the shape pod logs have it:
//!
//! ```text
//! {"message":"Back-off restarting failed container app in pod web-7d9f",
//!  "level":"warning","time":"2026-12-06T10:00:05.000000Z",
//!  "kubernetes":{"namespace":"shop","pod":"web-7d9f","pod_uid":"…","container":"app",
//!                "kind":"Pod","name":"web-7d9f","node":"node-a","labels":{…},"owner":{…}},
//!  "release":{"version":"3.1.4"},"process":{"type":"app"},
//!  "kubernetes_event":{"reason":"BackOff","type":"Warning","action":"…","count":5,…}}
//! ```
//!
//! The Event comes from the API server, so it is read field by field into
//! what sluice uses: a missing or mistyped field is left out, never an
//! error; an object that is not an Event at all is counted and skipped.

use serde_json::{Map, Value};

use crate::sources::file::kubernetes::{metadata, KubernetesConfig, PathMeta, PodInfo};

/// The pod an Event is about: namespace, name, and UID if the Event has it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PodRef {
    /// Namespace.
    pub(crate) namespace: String,
    /// Name.
    pub(crate) name: String,
    /// UID.
    pub(crate) uid: Option<String>,
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The Event's own resource version, if it is a number (etcd's revision,
/// which every API server uses; other values are never compared).
pub(crate) fn resource_version(event: &Value) -> Option<&str> {
    event.pointer("/metadata/resourceVersion").and_then(Value::as_str)
}

/// Whether resource version `rv` is at or before `seen`: both numbers, and
/// not greater.
pub(crate) fn not_after(rv: &str, seen: &str) -> bool {
    match (rv.parse::<u64>(), seen.parse::<u64>()) {
        (Ok(a), Ok(b)) => a <= b,
        _ => false,
    }
}

/// The later of two resource versions (the first if they do not compare).
pub(crate) fn later(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if not_after(&a, &b) { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// The pod the Event is about, if it is about a pod.
pub(crate) fn regarding_pod(event: &Value) -> Option<PodRef> {
    let r = event.get("regarding")?;
    if str_at(r, "kind")? != "Pod" {
        return None;
    }
    Some(PodRef {
        namespace: str_at(r, "namespace")
            .or_else(|| event.pointer("/metadata/namespace").and_then(Value::as_str))?
            .to_owned(),
        name: str_at(r, "name")?.to_owned(),
        uid: str_at(r, "uid").map(str::to_owned),
    })
}

/// The container of a `fieldPath` such as `spec.containers{app}`.
fn container_of(field_path: &str) -> Option<&str> {
    let rest = field_path
        .strip_prefix("spec.containers{")
        .or_else(|| field_path.strip_prefix("spec.initContainers{"))
        .or_else(|| field_path.strip_prefix("spec.ephemeralContainers{"))?;
    rest.strip_suffix('}').filter(|c| !c.is_empty())
}

/// Why an object was not rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// Not an object with `metadata`: not an Event.
    NotAnEvent,
}

/// Renders `event` as one JSON line (no newline) into `out`. `pod` is the
/// pod it is about, when looked up; `kcfg` says which of its labels,
/// annotations and release labels are used.
pub(crate) fn render(event: &Value, pod: Option<&PodInfo>, kcfg: &KubernetesConfig, out: &mut Vec<u8>) -> Result<(), Skip> {
    let meta = event.get("metadata").filter(|m| m.is_object()).ok_or(Skip::NotAnEvent)?;
    let mut line = Map::new();
    let note = str_at(event, "note").or_else(|| str_at(event, "message")).unwrap_or("");
    line.insert("message".into(), Value::from(note));
    let etype = str_at(event, "type").unwrap_or("Normal");
    line.insert("level".into(), Value::from(if etype == "Warning" { "warning" } else { "info" }));
    let first = str_at(event, "eventTime").or_else(|| str_at(event, "deprecatedFirstTimestamp"));
    let last = event
        .pointer("/series/lastObservedTime")
        .and_then(Value::as_str)
        .or_else(|| str_at(event, "deprecatedLastTimestamp"))
        .or(first)
        .or_else(|| str_at(meta, "creationTimestamp"));
    if let Some(t) = last {
        line.insert("time".into(), Value::from(t));
    }

    let regarding = event.get("regarding").filter(|r| r.is_object());
    let (k, release, process) = regarding_metadata(event, regarding, pod, kcfg);
    line.insert("kubernetes".into(), Value::Object(k));
    if let Some(r) = release {
        line.insert("release".into(), r);
    }
    if let Some(p) = process {
        line.insert("process".into(), p);
    }

    let mut e = Map::new();
    let mut put = |key: &str, v: Option<&str>| {
        if let Some(v) = v {
            e.insert(key.into(), Value::from(v));
        }
    };
    put("reason", str_at(event, "reason"));
    put("type", Some(etype));
    put("action", str_at(event, "action"));
    put(
        "reporting_controller",
        str_at(event, "reportingController").or_else(|| event.pointer("/deprecatedSource/component").and_then(Value::as_str)),
    );
    put(
        "reporting_instance",
        str_at(event, "reportingInstance").or_else(|| event.pointer("/deprecatedSource/host").and_then(Value::as_str)),
    );
    put("first_timestamp", first);
    put("last_timestamp", last);
    put("name", str_at(meta, "name"));
    put("namespace", str_at(meta, "namespace"));
    put("uid", str_at(meta, "uid"));
    put("resource_version", str_at(meta, "resourceVersion"));
    put("field_path", regarding.and_then(|r| str_at(r, "fieldPath")));
    let count = event
        .pointer("/series/count")
        .and_then(Value::as_u64)
        .or_else(|| event.get("deprecatedCount").and_then(Value::as_u64))
        .unwrap_or(1);
    e.insert("count".into(), Value::from(count));
    if let Some(r) = event.get("related").filter(|r| r.is_object()) {
        let mut rel = Map::new();
        for key in ["kind", "namespace", "name", "uid"] {
            if let Some(v) = str_at(r, key) {
                rel.insert(key.into(), Value::from(v));
            }
        }
        e.insert("related".into(), Value::Object(rel));
    }
    line.insert("kubernetes_event".into(), Value::Object(e));
    serde_json::to_writer(&mut *out, &line).map_err(|_| Skip::NotAnEvent)
}

type Regarding = (Map<String, Value>, Option<Value>, Option<Value>);

/// The `kubernetes` object (and the release and process a pod's labels
/// give) of the Event's `regarding` object.
fn regarding_metadata(event: &Value, regarding: Option<&Value>, pod: Option<&PodInfo>, kcfg: &KubernetesConfig) -> Regarding {
    let ns = regarding
        .and_then(|r| str_at(r, "namespace"))
        .or_else(|| event.pointer("/metadata/namespace").and_then(Value::as_str))
        .filter(|s| !s.is_empty());
    let kind = regarding.and_then(|r| str_at(r, "kind"));
    let name = regarding.and_then(|r| str_at(r, "name"));
    let uid = regarding.and_then(|r| str_at(r, "uid"));
    if let (Some("Pod"), Some(ns), Some(name)) = (kind, ns, name) {
        let container = regarding.and_then(|r| str_at(r, "fieldPath")).and_then(container_of);
        // The pod log shape, from the same code as pod logs.
        let pm = PathMeta {
            namespace: ns.to_owned(),
            pod: name.to_owned(),
            pod_uid: uid.map(str::to_owned),
            container: container.unwrap_or("").to_owned(),
            restart: None,
            container_id: None,
        };
        // A pod of the same name but another UID is not this Event's pod.
        let pod = pod.filter(|p| uid.is_none_or(|u| u == p.uid));
        let mut m = metadata(&Map::new(), kcfg, &pm, pod);
        let mut k = match m.remove("kubernetes") {
            Some(Value::Object(k)) => k,
            _ => Map::new(),
        };
        if container.is_none() {
            k.remove("container");
        }
        k.insert("kind".into(), Value::from("Pod"));
        k.insert("name".into(), Value::from(name));
        let process = m
            .remove("process")
            .filter(|p| p.get("type").and_then(Value::as_str).is_some_and(|t| !t.is_empty()));
        return (k, m.remove("release"), process);
    }
    let mut k = Map::new();
    if let Some(ns) = ns {
        k.insert("namespace".into(), Value::from(ns));
    }
    for (key, v) in [("kind", kind), ("name", name), ("uid", uid)] {
        if let Some(v) = v {
            k.insert(key.into(), Value::from(v));
        }
    }
    if let (Some("Node"), Some(n)) = (kind, name) {
        k.insert("node".into(), Value::from(n));
    }
    (k, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An Event as `kubectl get events.v1.events.k8s.io -o json` shows one
    /// (the kubelet's back-off, written through the core/v1 API, hence the
    /// deprecated fields).
    fn backoff() -> Value {
        json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {
                "name": "web-7d9f.17c2f4a2b8c9d0e1", "namespace": "shop",
                "uid": "5b0c6c29-1f1e-4c34-9a0e-1c2d3e4f5a6b", "resourceVersion": "4711",
                "creationTimestamp": "2026-12-06T10:00:00Z"
            },
            "eventTime": null,
            "reportingController": "kubelet",
            "reportingInstance": "node-a",
            "action": null,
            "reason": "BackOff",
            "regarding": {
                "kind": "Pod", "namespace": "shop", "name": "web-7d9f",
                "uid": "0c1d2e3f-aaaa-4bbb-8ccc-123456789abc", "apiVersion": "v1",
                "resourceVersion": "4600", "fieldPath": "spec.containers{app}"
            },
            "note": "Back-off restarting failed container app in pod web-7d9f_shop",
            "type": "Warning",
            "deprecatedSource": {"component": "kubelet", "host": "node-a"},
            "deprecatedFirstTimestamp": "2026-12-06T10:00:00Z",
            "deprecatedLastTimestamp": "2026-12-06T10:00:05Z",
            "deprecatedCount": 5
        })
    }

    fn rendered(ev: &Value, pod: Option<&PodInfo>) -> Value {
        let mut out = Vec::new();
        render(ev, pod, &KubernetesConfig::default(), &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn pod_event_maps_to_the_pod_log_metadata_shape() {
        let pod = PodInfo::from_json(&json!({
            "metadata": {"name": "web-7d9f", "namespace": "shop", "uid": "0c1d2e3f-aaaa-4bbb-8ccc-123456789abc",
                         "labels": {"app": "web", "app.kubernetes.io/version": "3.1.4"},
                         "ownerReferences": [{"kind": "ReplicaSet", "name": "web-6d", "controller": true}]},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "shop/web:3.1.4"}]}
        }));
        let v = rendered(&backoff(), pod.as_ref());
        assert_eq!(v["message"], "Back-off restarting failed container app in pod web-7d9f_shop");
        assert_eq!(v["level"], "warning");
        assert_eq!(v["time"], "2026-12-06T10:00:05Z");
        let k = &v["kubernetes"];
        assert_eq!(k["namespace"], "shop");
        assert_eq!(k["pod"], "web-7d9f");
        assert_eq!(k["pod_uid"], "0c1d2e3f-aaaa-4bbb-8ccc-123456789abc");
        assert_eq!(k["container"], "app");
        assert_eq!(k["kind"], "Pod");
        assert_eq!(k["node"], "node-a");
        assert_eq!(k["labels"]["app"], "web");
        assert_eq!(k["owner"], json!({"kind": "ReplicaSet", "name": "web-6d"}));
        assert_eq!(v["release"]["version"], "3.1.4");
        assert_eq!(v["process"]["type"], "app");
        let e = &v["kubernetes_event"];
        assert_eq!(e["reason"], "BackOff");
        assert_eq!(e["type"], "Warning");
        assert_eq!(e["count"], 5);
        assert_eq!(e["reporting_controller"], "kubelet");
        assert_eq!(e["first_timestamp"], "2026-12-06T10:00:00Z");
        assert_eq!(e["resource_version"], "4711");
        assert!(e.get("action").is_none(), "null is left out");
    }

    #[test]
    fn a_pod_with_another_uid_lends_no_labels() {
        let pod = PodInfo::from_json(&json!({
            "metadata": {"name": "web-7d9f", "namespace": "shop", "uid": "other", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-b"}
        }));
        let v = rendered(&backoff(), pod.as_ref());
        assert!(v["kubernetes"].get("labels").is_none());
        assert!(v["kubernetes"].get("node").is_none());
    }

    #[test]
    fn events_k8s_io_fields_win_over_the_deprecated_ones() {
        let ev = json!({
            "metadata": {"name": "n1.1", "resourceVersion": "9"},
            "eventTime": "2026-12-06T10:00:00.123456Z",
            "series": {"count": 3, "lastObservedTime": "2026-12-06T10:01:00.000000Z"},
            "reportingController": "k8s.io/node-controller", "reportingInstance": "cp-1",
            "action": "NodeNotReady", "reason": "NodeNotReady", "type": "Normal",
            "regarding": {"kind": "Node", "name": "node-a", "uid": "n-uid", "apiVersion": "v1"},
            "note": "Node node-a status is now: NodeNotReady"
        });
        let v = rendered(&ev, None);
        assert_eq!(v["level"], "info");
        assert_eq!(v["time"], "2026-12-06T10:01:00.000000Z");
        assert_eq!(v["kubernetes_event"]["count"], 3);
        assert_eq!(v["kubernetes_event"]["first_timestamp"], "2026-12-06T10:00:00.123456Z");
        assert_eq!(v["kubernetes_event"]["action"], "NodeNotReady");
        assert_eq!(
            v["kubernetes"],
            json!({"kind": "Node", "name": "node-a", "uid": "n-uid", "node": "node-a"})
        );
        assert!(v.get("process").is_none());
    }

    #[test]
    fn objects_that_are_not_events_are_skipped_and_odd_fields_left_out() {
        let mut out = Vec::new();
        for bad in [
            json!(null),
            json!(42),
            json!("x"),
            json!({"note": "no metadata"}),
            json!({"metadata": 7}),
        ] {
            assert_eq!(render(&bad, None, &KubernetesConfig::default(), &mut out), Err(Skip::NotAnEvent));
        }
        assert!(out.is_empty());
        let odd = json!({"metadata": {}, "note": 5, "type": ["x"], "series": {"count": "many"}, "regarding": "pod"});
        let v = rendered(&odd, None);
        assert_eq!(v["message"], "");
        assert_eq!(v["kubernetes_event"]["count"], 1);
    }

    #[test]
    fn resource_versions_compare_as_numbers_only() {
        assert!(not_after("99", "100"));
        assert!(not_after("100", "100"));
        assert!(!not_after("101", "100"));
        assert!(!not_after("abc", "100"), "opaque versions are never skipped");
        assert_eq!(later(Some("9".into()), Some("10".into())).as_deref(), Some("10"));
        assert_eq!(later(None, Some("10".into())).as_deref(), Some("10"));
    }

    #[test]
    fn container_is_read_from_the_field_path() {
        assert_eq!(container_of("spec.containers{app}"), Some("app"));
        assert_eq!(container_of("spec.initContainers{init}"), Some("init"));
        assert_eq!(container_of("spec.containers{}"), None);
        assert_eq!(container_of("metadata.name"), None);
    }
}
