//! `deploy/kubernetes/`: every manifest passes the Kubernetes OpenAPI
//! schemas offline (kubernetes-validate, installed by scripts/test), the
//! ConfigMaps carry the example configs byte for byte and those pass
//! `sluice validate` with the environment the pods get, and the pieces
//! refer to each other correctly (selectors, ports, service accounts).

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Kubernetes versions the manifests must be valid for: the oldest still
/// common in managed clusters, and the newest the pinned schemas know.
const KUBERNETES_VERSIONS: &[&str] = &["1.29.0", "1.37.0"];

/// Kinds with no schema in kubernetes-validate (CRDs, kustomize), checked
/// by the cross-reference tests below instead.
const NOT_CORE: &[&str] = &["kustomization.yaml", "podmonitor.yaml"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifests_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn validator() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_TEST_K8S_VALIDATE") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("SLUICE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sluice-test"));
    let p = cache.join("venv-k8s/bin/kubernetes-validate");
    assert!(p.exists(), "{} missing: run scripts/test --install-only", p.display());
    p
}

/// Every document of every manifest, by `Kind/name`.
fn resources() -> BTreeMap<String, Value> {
    use serde::Deserialize;
    let mut out = BTreeMap::new();
    for file in manifest_files().into_iter().filter(|p| !p.ends_with("kustomization.yaml")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if v.is_null() {
                continue;
            }
            let key = format!("{}/{}", v["kind"].as_str().unwrap(), v["metadata"]["name"].as_str().unwrap_or(""));
            assert!(out.insert(key.clone(), v).is_none(), "{key} defined twice");
        }
    }
    out
}

fn get<'a>(all: &'a BTreeMap<String, Value>, key: &str) -> &'a Value {
    all.get(key).unwrap_or_else(|| panic!("no {key} in deploy/kubernetes"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn container(workload: &Value) -> &Value {
    let cs = workload["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!(cs.len(), 1, "one container");
    &cs[0]
}

fn env_value<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)
}

/// True when `selector` (matchLabels) selects pods labelled `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let want = selector.as_object().unwrap();
    !want.is_empty() && want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn every_manifest_passes_the_kubernetes_openapi_schemas() {
    let files: Vec<PathBuf> = manifest_files()
        .into_iter()
        .filter(|p| !NOT_CORE.contains(&p.file_name().unwrap().to_str().unwrap()))
        .collect();
    assert!(files.len() >= 10, "manifests found: {files:?}");
    for version in KUBERNETES_VERSIONS {
        let mut cmd = Command::new(validator());
        cmd.args(["--strict", "--quiet", "-k", version]).args(&files);
        let out = support::run_bounded(cmd, None, Duration::from_secs(120));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "kubernetes-validate (Kubernetes {version}) failed:\n{text}");
        // --quiet prints only warnings and failures: none expected.
        assert!(text.trim().is_empty(), "kubernetes-validate (Kubernetes {version}):\n{text}");
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let text = std::fs::read_to_string(manifests_dir().join("kustomization.yaml")).unwrap();
    let k: Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut listed: Vec<&str> = strs(&k["resources"]);
    listed.sort();
    let mut present: Vec<String> = manifest_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    present.sort();
    assert_eq!(listed, present);
}

/// `sluice validate` on `text` with the environment the container gets:
/// literal values as written, downward-API values as a kubelet would fill
/// them.
fn validate_with_pod_env(text: &str, c: &Value) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("validate").arg("--config").arg(&path);
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") || k.starts_with("KAFKA") || k.starts_with("LOKI") || k.starts_with("S3_") {
            cmd.env_remove(k);
        }
    }
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => v.replace("$(NODE_NAME)", "node-1"),
            (_, Value::String(f)) => match f.as_str() {
                "spec.nodeName" => "node-1".into(),
                "metadata.name" => "sluice-abcde".into(),
                "metadata.namespace" => "sluice".into(),
                other => panic!("unexpected fieldRef {other}"),
            },
            _ => panic!("env {name}: neither value nor fieldRef"),
        };
        cmd.env(name, value);
    }
    support::run_bounded(cmd, None, Duration::from_secs(30))
}

#[test]
fn configmaps_carry_the_example_configs_byte_for_byte_and_they_validate() {
    let all = resources();
    for (map, config, workload) in [
        ("ConfigMap/sluice-agent", "config/daemonset.toml", "DaemonSet/sluice-agent"),
        (
            "ConfigMap/sluice-aggregator",
            "config/aggregator.toml",
            "Deployment/sluice-aggregator",
        ),
    ] {
        let want = std::fs::read_to_string(root().join(config)).unwrap_or_else(|e| panic!("{config}: {e}"));
        let got = get(&all, map)["data"]["sluice.toml"]
            .as_str()
            .unwrap_or_else(|| panic!("{map} has no sluice.toml"));
        assert!(got == want, "{map} differs from {config}: run scripts/sync-k8s-configmaps");

        // The workload mounts that very ConfigMap where its args look.
        let w = get(&all, workload);
        let c = container(w);
        assert_eq!(strs(&c["args"]), ["--config", "/etc/sluice/sluice.toml"], "{workload} args");
        let vols = w["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
        let cfg_vol = vols
            .iter()
            .find(|v| v["configMap"]["name"] == map.split('/').nth(1).unwrap())
            .unwrap();
        assert_eq!(cfg_vol["configMap"]["items"][0]["path"], "sluice.toml");
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == cfg_vol["name"])
            .unwrap();
        assert_eq!(mount["mountPath"], "/etc/sluice");

        let out = validate_with_pod_env(got, c);
        assert!(
            out.status.success(),
            "{config} with {workload}'s environment does not validate:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn agent_daemonset_reads_host_logs_read_only_with_minimal_privileges() {
    let all = resources();
    let ds = get(&all, "DaemonSet/sluice-agent");
    let pod = &ds["spec"]["template"]["spec"];
    let c = container(ds);

    assert_eq!(pod["serviceAccountName"], "sluice-agent");
    // Every taint tolerated: one toleration with no key and `Exists`.
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none() && t.get("effect").is_none()),
        "a toleration for every taint"
    );
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");

    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["privileged"], false);
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(strs(&sc["capabilities"]["add"]), ["DAC_READ_SEARCH"]);

    // Host paths: logs read-only, the data dir writable, docker optional.
    let vols: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let mounts: BTreeMap<&str, &Value> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap(), m))
        .collect();
    let host = |mount_path: &str| {
        let m = mounts.get(mount_path).unwrap_or_else(|| panic!("no mount at {mount_path}"));
        let v = vols[m["name"].as_str().unwrap()];
        (m, &v["hostPath"])
    };
    for p in ["/var/log/pods", "/var/log/containers", "/var/lib/docker/containers"] {
        let (m, hp) = host(p);
        assert_eq!(hp["path"], p, "{p} is the host's");
        assert_eq!(m["readOnly"], true, "{p} is mounted read-only");
    }
    assert_ne!(
        host("/var/lib/docker/containers").1["type"],
        "Directory",
        "docker's dir is optional"
    );
    let data_dir = env_value(c, "SLUICE_DATA_DIR").unwrap()["value"].as_str().unwrap();
    let (m, hp) = host(data_dir);
    assert!(hp["path"].is_string(), "the data dir is a hostPath: checkpoints outlive the pod");
    assert_ne!(m["readOnly"], true, "the data dir is writable");

    for (name, field) in [
        ("NODE_NAME", "spec.nodeName"),
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let e = env_value(c, name).unwrap_or_else(|| panic!("env {name}"));
        assert_eq!(e["valueFrom"]["fieldRef"]["fieldPath"], field, "{name}");
    }
    // The API must be reachable by the kubelet's probes: not loopback.
    let api = env_value(c, "SLUICE_API_ADDRESS").unwrap()["value"].as_str().unwrap();
    assert!(api.starts_with("0.0.0.0:"), "SLUICE_API_ADDRESS={api}");
    let port: u64 = api.rsplit(':').next().unwrap().parse().unwrap();
    let ports = c["ports"].as_array().unwrap();
    let metrics_port = ports.iter().find(|p| p["containerPort"] == port).expect("the API port is declared");
    for (probe, path) in [("livenessProbe", "/health"), ("readinessProbe", "/ready")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], metrics_port["name"], "{probe} port");
    }
    for kind in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(c["resources"][kind][r].is_string(), "resources.{kind}.{r}");
        }
    }
    // Long enough for the drain: SIGTERM, then shutdown_timeout (30 s).
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 30);
}

/// A role's rules as (apiGroup/resource, sorted verbs, resourceNames).
fn rule_set(role: &Value) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    for r in role["rules"].as_array().unwrap() {
        assert!(r.get("nonResourceURLs").is_none(), "{r}");
        let mut verbs: Vec<String> = strs(&r["verbs"]).into_iter().map(str::to_owned).collect();
        verbs.sort();
        assert!(!verbs.iter().any(|v| v == "*"), "no wildcard verbs: {r}");
        let names: Vec<String> = strs(&r["resourceNames"]).into_iter().map(str::to_owned).collect();
        for g in strs(&r["apiGroups"]) {
            for res in strs(&r["resources"]) {
                out.push((format!("{g}/{res}"), verbs.clone(), names.clone()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn rbac_grants_only_what_the_agent_config_uses() {
    let all = resources();
    let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    // Cluster-wide: reads only, each for a feature config/daemonset.toml turns on.
    let config: toml::Value = toml::from_str(&std::fs::read_to_string(root().join("config/daemonset.toml")).unwrap()).unwrap();
    let kube = &config["sources"]["pods"]["kubernetes"];
    assert_eq!(kube["api"].as_bool(), Some(true));
    assert_eq!(kube["namespace_labels"].as_bool(), Some(true), "namespaces get is granted for it");
    assert_eq!(kube["node_labels"].as_bool(), Some(true), "nodes get is granted for it");
    let events = config["sources"]
        .as_table()
        .unwrap()
        .values()
        .filter(|s| s["type"].as_str() == Some("kubernetes_events"))
        .count();
    assert_eq!(events, 1, "events list/watch and the Lease Role are granted for it");
    assert_eq!(
        rule_set(get(&all, "ClusterRole/sluice-agent")),
        vec![
            ("/namespaces".to_owned(), v(&["get"]), vec![]),
            ("/nodes".to_owned(), v(&["get"]), vec![]),
            ("/pods".to_owned(), v(&["get", "list", "watch"]), vec![]),
            ("events.k8s.io/events".to_owned(), v(&["list", "watch"]), vec![]),
        ]
    );
    // The Lease: in sluice's namespace only, and get/update of that one.
    let role = get(&all, "Role/sluice-agent-lease");
    assert_eq!(role["metadata"]["namespace"], "sluice");
    assert_eq!(
        rule_set(role),
        vec![
            ("coordination.k8s.io/leases".to_owned(), v(&["create"]), vec![]),
            (
                "coordination.k8s.io/leases".to_owned(),
                v(&["get", "update"]),
                v(&["sluice-kubernetes-events"])
            ),
        ]
    );

    for (binding, kind, role) in [
        ("ClusterRoleBinding/sluice-agent", "ClusterRole", "sluice-agent"),
        ("RoleBinding/sluice-agent-lease", "Role", "sluice-agent-lease"),
    ] {
        let b = get(&all, binding);
        assert_eq!(b["roleRef"]["kind"], kind);
        assert_eq!(b["roleRef"]["name"], role);
        assert_eq!(b["subjects"].as_array().unwrap().len(), 1, "{binding}");
        assert_eq!(b["subjects"][0]["kind"], "ServiceAccount");
        assert_eq!(b["subjects"][0]["name"], "sluice-agent");
        assert_eq!(b["subjects"][0]["namespace"], "sluice");
    }
    get(&all, "ServiceAccount/sluice-agent");
    // Nothing else is bound to anything.
    let bindings: Vec<&String> = all.keys().filter(|k| k.contains("Binding/") || k.starts_with("Role/")).collect();
    assert_eq!(
        bindings,
        [
            "ClusterRoleBinding/sluice-agent",
            "Role/sluice-agent-lease",
            "RoleBinding/sluice-agent-lease"
        ]
    );
}

#[test]
fn metrics_service_and_podmonitor_select_every_pod_and_its_port() {
    let all = resources();
    let svc = get(&all, "Service/sluice-metrics");
    let pm = get(&all, "PodMonitor/sluice");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    for workload in ["DaemonSet/sluice-agent", "Deployment/sluice-aggregator"] {
        let w = get(&all, workload);
        let labels = &w["spec"]["template"]["metadata"]["labels"];
        assert!(
            selects(&w["spec"]["selector"]["matchLabels"], labels),
            "{workload} selects its own pods"
        );
        assert!(selects(&svc["spec"]["selector"], labels), "the Service selects {workload}");
        assert!(
            selects(&pm["spec"]["selector"]["matchLabels"], labels),
            "the PodMonitor selects {workload}"
        );
        let names: Vec<&Value> = container(w)["ports"].as_array().unwrap().iter().map(|p| &p["name"]).collect();
        assert!(
            names.contains(&&svc["spec"]["ports"][0]["targetPort"]),
            "{workload} has the Service's port"
        );
        assert!(names.contains(&&endpoint["port"]), "{workload} has the PodMonitor's port");
    }
    // All in the one namespace the Namespace manifest creates.
    get(&all, "Namespace/sluice");
    for (key, v) in &all {
        if !key.starts_with("Namespace/") && !key.starts_with("ClusterRole") {
            assert_eq!(v["metadata"]["namespace"], "sluice", "{key}");
        }
    }
}

#[test]
fn aggregator_is_autoscaled_on_the_cpu_it_requests_and_runs_unprivileged() {
    let all = resources();
    let d = get(&all, "Deployment/sluice-aggregator");
    let hpa = get(&all, "HorizontalPodAutoscaler/sluice-aggregator");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "sluice-aggregator");
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() <= hpa["spec"]["maxReplicas"].as_u64().unwrap());
    let c = container(d);
    // Utilization is a share of the request: there must be one.
    assert!(c["resources"]["requests"]["cpu"].is_string());
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["automountServiceAccountToken"], false, "no API access needed");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(strs(&c["securityContext"]["capabilities"]["drop"]), ["ALL"]);
    assert!(c["securityContext"]["capabilities"].get("add").is_none());
    let pdb = get(&all, "PodDisruptionBudget/sluice-aggregator");
    assert!(selects(
        &pdb["spec"]["selector"]["matchLabels"],
        &d["spec"]["template"]["metadata"]["labels"]
    ));
}
