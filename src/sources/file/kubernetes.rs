//! Kubernetes metadata for container log files: from the path the kubelet
//! writes (`/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log`, or
//! the `/var/log/containers/<pod>_<namespace>_<container>-<id>.log` links to
//! it), and optionally from the API server: the pods of this node, listed
//! and then watched, with their labels, annotations, owner and images.
//!
//! Pods are kept in a cache after they are deleted (for
//! `deleted_pod_retention`) so their last lines still get their metadata.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::{duration, ConfigError, Validate};
use crate::pipeline::ShutdownSignal;

/// Where a pod's service account token is mounted.
pub(crate) const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Where the cluster CA is mounted.
pub(crate) const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// The `kubernetes` table of a file source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct KubernetesConfig {
    /// Add `kubernetes` metadata parsed from each file's path.
    pub(crate) enabled: bool,
    /// Also list and watch this node's pods on the API server.
    pub(crate) api: bool,
    /// API server URL; default `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub(crate) api_url: Option<String>,
    /// Bearer token file (re-read on every request: projected tokens rotate).
    pub(crate) token_file: PathBuf,
    /// CA bundle that signs the API server's certificate.
    pub(crate) ca_file: PathBuf,
    /// This node's name; default `$NODE_NAME` (from the downward API).
    pub(crate) node_name: Option<String>,
    /// Pod label holding the release version.
    pub(crate) release_label: String,
    /// Pod label holding the process type; default: the container name.
    pub(crate) process_type_label: String,
    /// Copy pod labels onto events.
    pub(crate) labels: bool,
    /// Copy pod annotations onto events.
    pub(crate) annotations: bool,
    /// How long a deleted pod's metadata is kept for its last lines.
    #[serde(deserialize_with = "duration")]
    pub(crate) deleted_pod_retention: Duration,
    /// How long the source waits for the first pod list before reading.
    #[serde(deserialize_with = "duration")]
    pub(crate) initial_sync_timeout: Duration,
    /// Add the pod's namespace labels and annotations
    /// (`kubernetes.namespace_labels`, `kubernetes.namespace_annotations`;
    /// annotations only with `annotations = true`), from a GET of
    /// `/api/v1/namespaces/<ns>` refreshed at every relist or watch restart.
    pub(crate) namespace_labels: bool,
    /// Add this node's labels (`kubernetes.node_labels`: zone, region,
    /// instance type, …) from a GET of `/api/v1/nodes/<node>`, refreshed
    /// likewise.
    pub(crate) node_labels: bool,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enabled: false,
            api: false,
            api_url: None,
            token_file: DEFAULT_TOKEN_FILE.into(),
            ca_file: DEFAULT_CA_FILE.into(),
            node_name: None,
            release_label: "app.kubernetes.io/version".into(),
            process_type_label: "app.kubernetes.io/component".into(),
            labels: true,
            annotations: true,
            deleted_pod_retention: Duration::from_secs(600),
            initial_sync_timeout: Duration::from_secs(5),
            namespace_labels: false,
            node_labels: false,
        }
    }
}

impl Validate for KubernetesConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.api && !self.enabled {
            errors.push(ConfigError::at(path, "api", "needs kubernetes.enabled = true"));
        }
        for (key, on) in [("namespace_labels", self.namespace_labels), ("node_labels", self.node_labels)] {
            if on && !self.api {
                errors.push(ConfigError::at(path, key, "needs kubernetes.api = true"));
            }
        }
        if let Some(u) = &self.api_url {
            if !u.starts_with("https://") {
                errors.push(ConfigError::at(path, "api_url", format!("{u:?} must be an https:// URL")));
            }
        }
    }
}

impl KubernetesConfig {
    /// The API URL, from the setting or the in-cluster environment.
    pub(crate) fn resolved_api_url(&self) -> Option<String> {
        if let Some(u) = &self.api_url {
            return Some(u.trim_end_matches('/').to_owned());
        }
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        Some(format!("https://{host}:{port}"))
    }

    /// The node name, from the setting or `NODE_NAME`.
    pub(crate) fn resolved_node_name(&self) -> Option<String> {
        self.node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty())
    }
}

/// What a log file's path says about its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathMeta {
    /// Namespace.
    pub(crate) namespace: String,
    /// Pod name.
    pub(crate) pod: String,
    /// Pod UID (only in the `/var/log/pods` layout).
    pub(crate) pod_uid: Option<String>,
    /// Container name.
    pub(crate) container: String,
    /// Restart count (the `<n>` of `<n>.log`).
    pub(crate) restart: Option<u32>,
    /// Container ID (only in the `/var/log/containers` layout).
    pub(crate) container_id: Option<String>,
}

/// Parses the kubelet's layouts; `None` for any other path.
pub(crate) fn path_meta(path: &Path) -> Option<PathMeta> {
    let comps: Vec<&str> = path.iter().filter_map(|c| c.to_str()).collect();
    let n = comps.len();
    if n >= 3 {
        let (pod_dir, container, file) = (comps[n - 3], comps[n - 2], comps[n - 1]);
        let parts: Vec<&str> = pod_dir.split('_').collect();
        let restart = file.split_once(".log").and_then(|(num, _)| num.parse::<u32>().ok());
        if parts.len() == 3 && parts.iter().all(|p| !p.is_empty()) && !container.is_empty() && restart.is_some() {
            return Some(PathMeta {
                namespace: parts[0].into(),
                pod: parts[1].into(),
                pod_uid: Some(parts[2].into()),
                container: container.into(),
                restart,
                container_id: None,
            });
        }
    }
    let name = comps.last()?.strip_suffix(".log")?;
    let parts: Vec<&str> = name.split('_').collect();
    if parts.len() != 3 {
        return None;
    }
    let (container, id) = parts[2].rsplit_once('-')?;
    if container.is_empty() || id.len() < 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) || parts[0].is_empty() || parts[1].is_empty() {
        return None;
    }
    Some(PathMeta {
        namespace: parts[1].into(),
        pod: parts[0].into(),
        pod_uid: None,
        container: container.into(),
        restart: None,
        container_id: Some(id.into()),
    })
}

/// What the API server says about one pod.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PodInfo {
    /// Namespace.
    pub(crate) namespace: String,
    /// Name.
    pub(crate) name: String,
    /// UID.
    pub(crate) uid: String,
    /// Labels.
    pub(crate) labels: Map<String, Value>,
    /// Annotations.
    pub(crate) annotations: Map<String, Value>,
    /// The controlling owner (kind, name).
    pub(crate) owner: Option<(String, String)>,
    /// Container name → image, including init containers.
    pub(crate) images: Vec<(String, String)>,
    /// Node the pod runs on.
    pub(crate) node: Option<String>,
    /// The pod's IP (`status.podIP`), once it has one.
    pub(crate) ip: Option<String>,
    /// Container name → declared container port.
    pub(crate) ports: Vec<(String, u16)>,
}

impl PodInfo {
    /// Reads the fields sluice uses from a Pod object; `None` without a
    /// name, namespace or UID.
    pub(crate) fn from_json(pod: &Value) -> Option<PodInfo> {
        let meta = pod.get("metadata")?;
        let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let obj = |v: Option<&Value>| v.and_then(Value::as_object).cloned().unwrap_or_default();
        let owner = meta.get("ownerReferences").and_then(Value::as_array).and_then(|refs| {
            let pick = refs
                .iter()
                .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
                .or_else(|| refs.first())?;
            Some((s(pick.get("kind"))?, s(pick.get("name"))?))
        });
        let spec = pod.get("spec");
        let mut images = Vec::new();
        let mut ports = Vec::new();
        for key in ["containers", "initContainers", "ephemeralContainers"] {
            for c in spec.and_then(|sp| sp.get(key)).and_then(Value::as_array).into_iter().flatten() {
                if let (Some(n), Some(i)) = (s(c.get("name")), s(c.get("image"))) {
                    images.push((n, i));
                }
                let name = s(c.get("name")).unwrap_or_default();
                for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(port) = p.get("containerPort").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok()) {
                        ports.push((name.clone(), port));
                    }
                }
            }
        }
        Some(PodInfo {
            namespace: s(meta.get("namespace"))?,
            name: s(meta.get("name"))?,
            uid: s(meta.get("uid"))?,
            labels: obj(meta.get("labels")),
            annotations: obj(meta.get("annotations")),
            owner,
            images,
            node: s(spec.and_then(|sp| sp.get("nodeName"))),
            ip: s(pod.pointer("/status/podIP")).filter(|ip| !ip.is_empty()),
            ports,
        })
    }

    /// The image of a container.
    pub(crate) fn image(&self, container: &str) -> Option<&str> {
        self.images.iter().find(|(n, _)| n == container).map(|(_, i)| i.as_str())
    }
}

/// The tag of an image reference (`repo/app:1.2.3@sha256:…` → `1.2.3`).
pub(crate) fn image_tag(image: &str) -> Option<&str> {
    let no_digest = image.split('@').next()?;
    let last = no_digest.rsplit('/').next()?;
    let (_, tag) = last.rsplit_once(':')?;
    (!tag.is_empty()).then_some(tag)
}

#[derive(Debug)]
struct CachedPod {
    info: Arc<PodInfo>,
    deleted_at: Option<Instant>,
}

/// This node's pods, shared by the watcher and the readers. Readers look up
/// by UID (or namespace and name) and notice changes through
/// [`PodCache::generation`].
#[derive(Debug, Default)]
pub(crate) struct PodCache {
    pods: RwLock<HashMap<String, CachedPod>>,
    generation: AtomicU64,
    synced: AtomicBool,
    /// Labels and annotations of the namespaces of the cached pods, when
    /// `namespace_labels` is on.
    namespaces: RwLock<HashMap<String, Arc<NamespaceInfo>>>,
    /// This node's labels, when `node_labels` is on.
    node_labels: RwLock<Option<Arc<Map<String, Value>>>>,
}

/// What the API server says about one namespace.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct NamespaceInfo {
    /// Labels.
    pub(crate) labels: Map<String, Value>,
    /// Annotations.
    pub(crate) annotations: Map<String, Value>,
}

impl NamespaceInfo {
    /// Reads labels and annotations from a Namespace object; `None` if it
    /// has no `metadata`.
    pub(crate) fn from_json(ns: &Value) -> Option<NamespaceInfo> {
        let meta = ns.get("metadata")?.as_object()?;
        let obj = |k: &str| meta.get(k).and_then(Value::as_object).cloned().unwrap_or_default();
        Some(NamespaceInfo {
            labels: obj("labels"),
            annotations: obj("annotations"),
        })
    }
}

/// Node labels copied to their own short key as well: (key, labels to try
/// in order; the `failure-domain.beta` ones are the pre-1.17 names).
const NODE_LABEL_FIELDS: [(&str, &[&str]); 3] = [
    ("zone", &["topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone"]),
    (
        "region",
        &["topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region"],
    ),
    (
        "instance_type",
        &["node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type"],
    ),
];

/// Adds the namespace's labels and annotations and the node's labels
/// (with `zone`, `region` and `instance_type` taken out of them) that the
/// cache holds to the `kubernetes` object of `meta`, as far as `cfg` asks.
pub(crate) fn add_cluster_metadata(meta: &mut Map<String, Value>, cfg: &KubernetesConfig, cache: &PodCache, namespace: &str) {
    let Some(Value::Object(k)) = meta.get_mut("kubernetes") else {
        return;
    };
    if cfg.namespace_labels {
        if let Some(ns) = cache.namespace(namespace) {
            if !ns.labels.is_empty() {
                k.insert("namespace_labels".into(), Value::Object(ns.labels.clone()));
            }
            if cfg.annotations && !ns.annotations.is_empty() {
                k.insert("namespace_annotations".into(), Value::Object(ns.annotations.clone()));
            }
        }
    }
    if cfg.node_labels {
        if let Some(labels) = cache.node_labels() {
            for (key, names) in NODE_LABEL_FIELDS {
                if let Some(v) = names.iter().find_map(|n| labels.get(*n)) {
                    k.insert(key.into(), v.clone());
                }
            }
            if !labels.is_empty() {
                k.insert("node_labels".into(), Value::Object((*labels).clone()));
            }
        }
    }
}

impl PodCache {
    /// Bumped on every change; a reader whose files were enriched at an
    /// older generation looks again.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// True once the first list arrived.
    pub(crate) fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Number of pods held (deleted ones included until they expire).
    pub(crate) fn len(&self) -> usize {
        self.pods.read().map(|p| p.len()).unwrap_or(0)
    }

    /// The pod a file belongs to.
    pub(crate) fn lookup(&self, m: &PathMeta) -> Option<Arc<PodInfo>> {
        let pods = self.pods.read().ok()?;
        if let Some(uid) = &m.pod_uid {
            if let Some(p) = pods.get(uid) {
                return Some(p.info.clone());
            }
        }
        pods.values()
            .filter(|p| p.info.namespace == m.namespace && p.info.name == m.pod)
            .min_by_key(|p| p.deleted_at.is_some())
            .map(|p| p.info.clone())
    }

    /// Adds or replaces a pod.
    pub(crate) fn upsert(&self, info: PodInfo) {
        if let Ok(mut pods) = self.pods.write() {
            let unchanged = pods.get(&info.uid).is_some_and(|p| *p.info == info && p.deleted_at.is_none());
            if unchanged {
                return;
            }
            pods.insert(
                info.uid.clone(),
                CachedPod {
                    info: Arc::new(info),
                    deleted_at: None,
                },
            );
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Marks a pod deleted; it stays until `retention` passes.
    pub(crate) fn mark_deleted(&self, uid: &str, now: Instant) {
        if let Ok(mut pods) = self.pods.write() {
            if let Some(p) = pods.get_mut(uid) {
                p.deleted_at.get_or_insert(now);
            }
        }
        // Discovery (prometheus_scrape) drops a deleted pod's target.
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Replaces the whole set after a list: pods not listed are marked
    /// deleted.
    pub(crate) fn replace_all(&self, list: Vec<PodInfo>, now: Instant) {
        let listed: std::collections::HashSet<String> = list.iter().map(|p| p.uid.clone()).collect();
        for p in list {
            self.upsert(p);
        }
        if let Ok(mut pods) = self.pods.write() {
            for (uid, p) in pods.iter_mut() {
                if !listed.contains(uid) {
                    p.deleted_at.get_or_insert(now);
                }
            }
        }
        self.synced.store(true, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The cached labels and annotations of namespace `name`.
    pub(crate) fn namespace(&self, name: &str) -> Option<Arc<NamespaceInfo>> {
        self.namespaces.read().ok()?.get(name).cloned()
    }

    /// Stores namespace `name`'s metadata; a change bumps the generation.
    pub(crate) fn set_namespace(&self, name: &str, info: NamespaceInfo) {
        if let Ok(mut nss) = self.namespaces.write() {
            if nss.get(name).is_some_and(|n| **n == info) {
                return;
            }
            nss.insert(name.to_owned(), Arc::new(info));
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The namespaces of the cached pods.
    pub(crate) fn pod_namespaces(&self) -> Vec<String> {
        let Ok(pods) = self.pods.read() else { return Vec::new() };
        let mut v: Vec<String> = pods.values().map(|p| p.info.namespace.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// This node's cached labels.
    pub(crate) fn node_labels(&self) -> Option<Arc<Map<String, Value>>> {
        self.node_labels.read().ok()?.clone()
    }

    /// Stores this node's labels; a change bumps the generation.
    pub(crate) fn set_node_labels(&self, labels: Map<String, Value>) {
        if let Ok(mut n) = self.node_labels.write() {
            if n.as_deref() == Some(&labels) {
                return;
            }
            *n = Some(Arc::new(labels));
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The pods not deleted, for discovery (a deleted pod's metadata stays
    /// for its last log lines, but it is no target any more).
    pub(crate) fn live(&self) -> Vec<Arc<PodInfo>> {
        self.pods
            .read()
            .map(|p| p.values().filter(|p| p.deleted_at.is_none()).map(|p| p.info.clone()).collect())
            .unwrap_or_default()
    }

    /// Forgets pods deleted more than `retention` ago.
    pub(crate) fn expire(&self, now: Instant, retention: Duration) {
        if let Ok(mut pods) = self.pods.write() {
            pods.retain(|_, p| p.deleted_at.is_none_or(|d| now.duration_since(d) < retention));
        }
    }
}

/// A file source's pod cache with the settings that turn a pod into
/// metadata, shared (by source name) with the sources that label a pod's
/// other signals, so one watch and one cache serve logs and metrics alike.
#[derive(Debug)]
pub(crate) struct SharedPods {
    /// The file source's `kubernetes` settings (release and process labels).
    pub(crate) config: KubernetesConfig,
    /// Its pod cache, filled by its one watcher.
    pub(crate) cache: Arc<PodCache>,
}

/// Running file sources' pod caches by source name; an entry lives as long
/// as its watcher runs.
fn shared_registry() -> &'static std::sync::Mutex<HashMap<String, std::sync::Weak<SharedPods>>> {
    static R: std::sync::OnceLock<std::sync::Mutex<HashMap<String, std::sync::Weak<SharedPods>>>> = std::sync::OnceLock::new();
    R.get_or_init(Default::default)
}

/// Offers the pod cache of file source `source` to other sources.
pub(crate) fn share_pods(source: &str, shared: &Arc<SharedPods>) {
    let mut r = shared_registry().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    r.retain(|_, w| w.strong_count() > 0);
    r.insert(source.to_owned(), Arc::downgrade(shared));
}

/// The pod cache of the running file source `source`, if it has one.
pub(crate) fn shared_pods(source: &str) -> Option<Arc<SharedPods>> {
    let r = shared_registry().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    r.get(source).and_then(std::sync::Weak::upgrade)
}

/// Builds the `kubernetes` metadata of a file (and the release and process
/// type it implies) on top of the collector's own metadata `base`.
pub(crate) fn metadata(base: &Map<String, Value>, cfg: &KubernetesConfig, m: &PathMeta, pod: Option<&PodInfo>) -> Map<String, Value> {
    let mut meta = base.clone();
    let mut k = Map::new();
    k.insert("namespace".into(), Value::from(m.namespace.as_str()));
    k.insert("pod".into(), Value::from(m.pod.as_str()));
    let uid = m.pod_uid.as_deref().or(pod.map(|p| p.uid.as_str()));
    if let Some(uid) = uid {
        k.insert("pod_uid".into(), Value::from(uid));
    }
    k.insert("container".into(), Value::from(m.container.as_str()));
    if let Some(r) = m.restart {
        k.insert("restart_count".into(), Value::from(r));
    }
    if let Some(id) = &m.container_id {
        k.insert("container_id".into(), Value::from(id.as_str()));
    }
    let mut release = None;
    let mut process_type = None;
    if let Some(p) = pod {
        if let Some(node) = &p.node {
            k.insert("node".into(), Value::from(node.as_str()));
        }
        let image = p.image(&m.container);
        if let Some(image) = image {
            k.insert("image".into(), Value::from(image));
        }
        if let Some((kind, name)) = &p.owner {
            let mut o = Map::new();
            o.insert("kind".into(), Value::from(kind.as_str()));
            o.insert("name".into(), Value::from(name.as_str()));
            k.insert("owner".into(), Value::Object(o));
        }
        if cfg.labels && !p.labels.is_empty() {
            k.insert("labels".into(), Value::Object(p.labels.clone()));
        }
        if cfg.annotations && !p.annotations.is_empty() {
            k.insert("annotations".into(), Value::Object(p.annotations.clone()));
        }
        release = p
            .labels
            .get(&cfg.release_label)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| image.and_then(image_tag).map(str::to_owned));
        process_type = p.labels.get(&cfg.process_type_label).and_then(Value::as_str).map(str::to_owned);
    }
    meta.insert("kubernetes".into(), Value::Object(k));
    // The pod knows its release and process better than the collector's
    // environment does.
    if let Some(v) = release.filter(|v| !v.is_empty()) {
        let r = meta.entry("release").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(r) = r {
            r.insert("version".into(), Value::from(v));
        }
    }
    let ptype = process_type.unwrap_or_else(|| m.container.clone());
    let p = meta.entry("process").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(p) = p {
        p.insert("type".into(), Value::from(ptype));
    }
    meta
}

/// Why talking to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A file (token, CA) could not be read.
    #[error("cannot read {path}: {error}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The CA bundle is not PEM.
    #[error("invalid CA bundle {path}: {error}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// The parse error.
        error: reqwest::Error,
    },
    /// The request failed.
    #[error("request to {url} failed: {error}")]
    Http {
        /// The URL.
        url: String,
        /// The error.
        error: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The answer was not a pod list.
    #[error("{url} did not return a pod list: {error}")]
    Body {
        /// The URL.
        url: String,
        /// What was wrong.
        error: String,
    },
}

/// A client of the API server: TLS trusting only the cluster CA, and the
/// service-account token re-read on every request (projected tokens rotate).
#[derive(Debug, Clone)]
pub(crate) struct ApiClient {
    client: reqwest::Client,
    base: String,
    token_file: PathBuf,
}

/// Largest watch event or response body kept: a bigger one is an error.
const MAX_BODY_BYTES: usize = 64 << 20;

impl ApiClient {
    /// A client of the API server at `base` (no trailing slash).
    pub(crate) fn new(base: String, ca_file: &Path, token_file: PathBuf) -> Result<ApiClient, ApiError> {
        let ca = std::fs::read(ca_file).map_err(|error| ApiError::File {
            path: ca_file.to_path_buf(),
            error,
        })?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .connect_timeout(Duration::from_secs(10));
        for cert in reqwest::Certificate::from_pem_bundle(&ca).map_err(|error| ApiError::Ca {
            path: ca_file.to_path_buf(),
            error,
        })? {
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(|error| ApiError::Http { url: base.clone(), error })?;
        Ok(ApiClient { client, base, token_file })
    }

    /// The API server's URL, to which request paths are appended.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    async fn token(&self) -> Result<String, ApiError> {
        tokio::fs::read_to_string(&self.token_file)
            .await
            .map(|t| t.trim().to_owned())
            .map_err(|error| ApiError::File {
                path: self.token_file.clone(),
                error,
            })
    }

    /// Sends a request (with `body` as JSON); an answer that is not a
    /// success is [`ApiError::Status`].
    pub(crate) async fn send(&self, method: reqwest::Method, url: &str, body: Option<&Value>) -> Result<reqwest::Response, ApiError> {
        let mut req = self
            .client
            .request(method, url)
            .bearer_auth(self.token().await?)
            .header("Accept", "application/json")
            .timeout(Duration::from_secs(if url.contains("watch=true") { 600 } else { 30 }));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|error| ApiError::Http { url: url.into(), error })?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
            return Err(ApiError::Status {
                url: url.into(),
                status,
                body,
            });
        }
        Ok(resp)
    }

    /// GETs `url`.
    pub(crate) async fn get(&self, url: &str) -> Result<reqwest::Response, ApiError> {
        self.send(reqwest::Method::GET, url, None).await
    }

    /// Sends a request and reads the answer as JSON.
    pub(crate) async fn json(&self, method: reqwest::Method, url: &str, body: Option<&Value>) -> Result<Value, ApiError> {
        let bytes = self
            .send(method, url, body)
            .await?
            .bytes()
            .await
            .map_err(|error| ApiError::Http { url: url.into(), error })?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Body {
            url: url.into(),
            error: e.to_string(),
        })
    }

    /// GETs `url` as JSON.
    pub(crate) async fn get_json(&self, url: &str) -> Result<Value, ApiError> {
        self.json(reqwest::Method::GET, url, None).await
    }

    /// Lists a collection: its items and the list's resource version.
    pub(crate) async fn list(&self, url: &str) -> Result<(Vec<Value>, String), ApiError> {
        let mut v = self.get_json(url).await?;
        let rv = v
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        match v.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => Ok((items, rv)),
            Some(Value::Null) => Ok((Vec::new(), rv)),
            _ => Err(ApiError::Body {
                url: url.into(),
                error: "no items".into(),
            }),
        }
    }

    /// Opens a watch at `url`.
    pub(crate) async fn watch(&self, url: &str) -> Result<WatchLines, ApiError> {
        Ok(WatchLines {
            resp: self.get(url).await?,
            buf: Vec::new(),
            url: url.to_owned(),
        })
    }
}

/// One event of a watch stream.
#[derive(Debug, PartialEq)]
pub(crate) enum WatchEvent {
    /// `ADDED`, `MODIFIED`, `DELETED` or `BOOKMARK`, and the object.
    Object(String, Value),
    /// An `ERROR` event, an unknown type, or a line that is not JSON: the
    /// watch cannot go on and the collection must be listed again (410
    /// Gone is the usual cause).
    Relist(String),
}

/// A watch response read as newline-delimited watch events.
#[derive(Debug)]
pub(crate) struct WatchLines {
    resp: reqwest::Response,
    /// Bytes after the last complete line.
    buf: Vec<u8>,
    url: String,
}

impl WatchLines {
    /// Waits for the next chunk of the stream and appends the complete
    /// events in it to `out`; false when the server ended the stream.
    pub(crate) async fn next_events(&mut self, out: &mut Vec<WatchEvent>) -> Result<bool, ApiError> {
        let chunk = self.resp.chunk().await.map_err(|error| ApiError::Http {
            url: self.url.clone(),
            error,
        })?;
        let Some(chunk) = chunk else { return Ok(false) };
        self.buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &self.buf[start..]) {
            let line = &self.buf[start..start + nl];
            start += nl + 1;
            if let Some(ev) = parse_watch_line(line) {
                out.push(ev);
            }
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_BODY_BYTES {
            return Err(ApiError::Body {
                url: self.url.clone(),
                error: "watch event larger than 64MiB".into(),
            });
        }
        Ok(true)
    }
}

/// One line of a watch stream; `None` for a blank line.
pub(crate) fn parse_watch_line(line: &[u8]) -> Option<WatchEvent> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let Ok(Value::Object(mut ev)) = serde_json::from_slice::<Value>(line) else {
        return Some(WatchEvent::Relist("a line that is not a JSON object".into()));
    };
    let object = ev.remove("object").unwrap_or(Value::Null);
    Some(match ev.get("type").and_then(Value::as_str) {
        Some(t @ ("ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK")) => WatchEvent::Object(t.to_owned(), object),
        Some("ERROR") => WatchEvent::Relist(format!(
            "{} {}",
            object.get("code").and_then(Value::as_u64).unwrap_or(0),
            object.get("message").and_then(Value::as_str).unwrap_or("")
        )),
        other => WatchEvent::Relist(format!("unknown watch event type {}", other.unwrap_or("(none)"))),
    })
}

/// Lists and watches this node's pods into a [`PodCache`].
#[derive(Debug)]
pub(crate) struct PodWatcher {
    api: ApiClient,
    node: String,
    retention: Duration,
    cache: Arc<PodCache>,
    source: Arc<str>,
    namespace_labels: bool,
    node_labels: bool,
}

/// Longest wait between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl PodWatcher {
    /// A watcher for `node` on the API server at `base`.
    pub(crate) fn new(
        cfg: &KubernetesConfig,
        base: String,
        node: String,
        cache: Arc<PodCache>,
        source: Arc<str>,
    ) -> Result<PodWatcher, ApiError> {
        Ok(PodWatcher {
            api: ApiClient::new(base, &cfg.ca_file, cfg.token_file.clone())?,
            node,
            retention: cfg.deleted_pod_retention,
            cache,
            source,
            namespace_labels: cfg.namespace_labels,
            node_labels: cfg.node_labels,
        })
    }

    fn url(&self, watch: Option<&str>) -> String {
        let mut u = format!(
            "{}/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
            self.api.base(),
            urlencode(&self.node)
        );
        if let Some(rv) = watch {
            u.push_str("&watch=true&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion=");
            u.push_str(&urlencode(rv));
        }
        u
    }

    /// Lists the node's pods; returns the list's resource version.
    async fn list(&self) -> Result<String, ApiError> {
        let (items, rv) = self.api.list(&self.url(None)).await?;
        let pods: Vec<PodInfo> = items.iter().filter_map(PodInfo::from_json).collect();
        // Namespace and node metadata first: the first files are read once
        // the cache is synced, and should carry it.
        let mut namespaces: Vec<String> = pods.iter().map(|p| p.namespace.clone()).collect();
        namespaces.sort();
        namespaces.dedup();
        self.refresh_cluster_metadata(&namespaces).await;
        self.cache.replace_all(pods, Instant::now());
        Ok(rv)
    }

    /// GETs the node and `namespaces` into the cache, as far as enabled. A
    /// failure is logged and counted: the pods' own metadata still works.
    async fn refresh_cluster_metadata(&self, namespaces: &[String]) {
        if self.node_labels {
            let url = format!("{}/api/v1/nodes/{}", self.api.base(), urlencode(&self.node));
            match self.api.get_json(&url).await {
                Ok(node) => {
                    let labels = node.pointer("/metadata/labels").and_then(Value::as_object).cloned();
                    self.cache.set_node_labels(labels.unwrap_or_default());
                }
                Err(e) => self.metadata_error(&e, "nodes get"),
            }
        }
        if self.namespace_labels {
            for ns in namespaces {
                let url = format!("{}/api/v1/namespaces/{}", self.api.base(), urlencode(ns));
                match self.api.get_json(&url).await {
                    Ok(v) => {
                        if let Some(info) = NamespaceInfo::from_json(&v) {
                            self.cache.set_namespace(ns, info);
                        }
                    }
                    Err(e) => self.metadata_error(&e, "namespaces get"),
                }
            }
        }
    }

    fn metadata_error(&self, e: &ApiError, grant: &str) {
        super::metrics::FileMetrics::get()
            .kube_api_errors
            .with_label_values(&[&self.source])
            .inc();
        tracing::warn!(source = %self.source, error = %e, needs = grant, "kubernetes API: namespace or node metadata");
    }

    /// Watches from `rv` until the stream ends; returns the last resource
    /// version seen, or `None` when the server says to list again.
    async fn watch(&self, mut rv: String, shutdown: &mut ShutdownSignal) -> Result<Option<String>, ApiError> {
        let mut stream = self.api.watch(&self.url(Some(&rv))).await?;
        let mut events = Vec::new();
        loop {
            let more = tokio::select! {
                m = stream.next_events(&mut events) => m?,
                _ = shutdown.wait() => return Ok(Some(rv)),
            };
            for ev in events.drain(..) {
                let (kind, obj) = match ev {
                    WatchEvent::Object(kind, obj) => (kind, obj),
                    WatchEvent::Relist(why) => {
                        tracing::info!(source = %self.source, reason = %why, "kubernetes watch ended; listing again");
                        return Ok(None);
                    }
                };
                if let Some(v) = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
                    rv = v.to_owned();
                }
                match kind.as_str() {
                    "ADDED" | "MODIFIED" => {
                        if let Some(p) = PodInfo::from_json(&obj) {
                            if self.namespace_labels && self.cache.namespace(&p.namespace).is_none() {
                                self.refresh_cluster_metadata(std::slice::from_ref(&p.namespace)).await;
                            }
                            self.cache.upsert(p);
                        }
                    }
                    "DELETED" => {
                        if let Some(uid) = obj.pointer("/metadata/uid").and_then(Value::as_str) {
                            self.cache.mark_deleted(uid, Instant::now());
                        }
                    }
                    _ => {} // BOOKMARK
                }
            }
            if !more {
                // The server's timeout: refresh what the watch does not
                // cover before watching again.
                self.refresh_cluster_metadata(&self.cache.pod_namespaces()).await;
                return Ok(Some(rv));
            }
        }
    }

    /// Lists, then watches, until shutdown; reconnects with backoff.
    pub(crate) async fn run(self, mut shutdown: ShutdownSignal) {
        let mut backoff = Duration::from_millis(500);
        let m = super::metrics::FileMetrics::get();
        while !shutdown.is_set() {
            self.cache.expire(Instant::now(), self.retention);
            let result = match self.list().await {
                Ok(rv) => {
                    backoff = Duration::from_millis(500);
                    m.kube_pods.with_label_values(&[&self.source]).set(self.cache.len() as i64);
                    let mut rv = Some(rv);
                    let mut res = Ok(());
                    while let Some(v) = rv.take() {
                        if shutdown.is_set() {
                            break;
                        }
                        match self.watch(v, &mut shutdown).await {
                            Ok(next) => rv = next,
                            Err(e) => res = Err(e),
                        }
                        m.kube_pods.with_label_values(&[&self.source]).set(self.cache.len() as i64);
                        m.kube_watch_restarts.with_label_values(&[&self.source]).inc();
                        self.cache.expire(Instant::now(), self.retention);
                    }
                    res
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                m.kube_api_errors.with_label_values(&[&self.source]).inc();
                tracing::warn!(source = %self.source, error = %e, retry_in_ms = backoff.as_millis() as u64, "kubernetes API");
                tokio::select! {
                    _ = tokio::time::sleep(with_jitter(backoff)) => {}
                    _ = shutdown.wait() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// `backoff` plus up to 250 ms, so that agents do not reconnect in step.
pub(crate) fn with_jitter(backoff: Duration) -> Duration {
    backoff + Duration::from_millis(fastrand::u64(..250))
}

/// Percent-encodes `s` for a URL path segment or query value.
pub(crate) fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_layout_is_parsed() {
        let m = path_meta(Path::new("/var/log/pods/shop_web-7d9f_0b6e-11ee/nginx/3.log")).unwrap();
        assert_eq!(m.namespace, "shop");
        assert_eq!(m.pod, "web-7d9f");
        assert_eq!(m.pod_uid.as_deref(), Some("0b6e-11ee"));
        assert_eq!(m.container, "nginx");
        assert_eq!(m.restart, Some(3));
        let rotated = path_meta(Path::new("/var/log/pods/a_b_c/d/0.log.20240101-000000")).unwrap();
        assert_eq!(rotated.container, "d");
    }

    #[test]
    fn containers_layout_is_parsed() {
        let id = "a".repeat(64);
        let m = path_meta(Path::new(&format!("/var/log/containers/web-7d9f_shop_nginx-{id}.log"))).unwrap();
        assert_eq!(
            (m.pod.as_str(), m.namespace.as_str(), m.container.as_str()),
            ("web-7d9f", "shop", "nginx")
        );
        assert!(path_meta(Path::new("/var/log/syslog")).is_none());
        assert!(path_meta(Path::new("/var/log/app/server.log")).is_none());
    }

    #[test]
    fn image_tag_ignores_registry_port_and_digest() {
        assert_eq!(image_tag("registry:5000/team/app:1.4.2@sha256:abcd"), Some("1.4.2"));
        assert_eq!(image_tag("registry:5000/team/app"), None);
        assert_eq!(image_tag("nginx:1.25"), Some("1.25"));
    }

    #[test]
    fn bad_watch_lines_end_the_watch_for_a_relist_and_never_panic() {
        assert_eq!(parse_watch_line(b"  \r"), None);
        for bad in [
            &b"{not json"[..],
            b"[1,2]",
            b"\"ADDED\"",
            b"\xff\xfe",
            b"{\"object\":{}}",
            b"{\"type\":\"WEIRD\"}",
        ] {
            assert!(
                matches!(parse_watch_line(bad), Some(WatchEvent::Relist(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let gone = br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (4000)","reason":"Expired","code":410}}"#;
        assert_eq!(
            parse_watch_line(gone),
            Some(WatchEvent::Relist("410 too old resource version: 1 (4000)".into()))
        );
        let bookmark = br#"{"type":"BOOKMARK","object":{"kind":"Event","metadata":{"resourceVersion":"12"}}}"#;
        assert!(
            matches!(parse_watch_line(bookmark), Some(WatchEvent::Object(t, o)) if t == "BOOKMARK" && o["metadata"]["resourceVersion"] == "12")
        );
    }

    #[test]
    fn namespace_and_node_labels_go_in_only_when_enabled() {
        let cache = PodCache::default();
        let labels = |v: Value| v.as_object().cloned().unwrap();
        cache.set_namespace(
            "shop",
            NamespaceInfo::from_json(&json!({"metadata": {"name": "shop", "labels": {"team": "payments"}, "annotations": {"o": "p"}}}))
                .unwrap(),
        );
        cache.set_node_labels(labels(
            json!({"failure-domain.beta.kubernetes.io/zone": "z-old", "node.kubernetes.io/instance-type": "m5.large"}),
        ));
        let g = cache.generation();
        cache.set_node_labels(labels(
            json!({"failure-domain.beta.kubernetes.io/zone": "z-old", "node.kubernetes.io/instance-type": "m5.large"}),
        ));
        assert_eq!(cache.generation(), g, "unchanged labels do not re-render contexts");
        let base = || {
            let mut m = Map::new();
            m.insert("kubernetes".into(), json!({"namespace": "shop"}));
            m
        };
        let mut off = base();
        add_cluster_metadata(&mut off, &KubernetesConfig::default(), &cache, "shop");
        assert_eq!(Value::Object(off)["kubernetes"], json!({"namespace": "shop"}));
        let cfg = KubernetesConfig {
            namespace_labels: true,
            node_labels: true,
            annotations: false,
            ..KubernetesConfig::default()
        };
        let mut on = base();
        add_cluster_metadata(&mut on, &cfg, &cache, "shop");
        let k = &Value::Object(on)["kubernetes"];
        assert_eq!(k["namespace_labels"]["team"], "payments");
        assert!(k.get("namespace_annotations").is_none(), "annotations off");
        assert_eq!(k["zone"], "z-old", "the pre-1.17 label name");
        assert_eq!(k["instance_type"], "m5.large");
        assert!(k.get("region").is_none());
    }

    #[test]
    fn pod_metadata_sets_release_and_process_type() {
        let pod = PodInfo::from_json(&json!({
            "metadata": {"name":"web-1","namespace":"shop","uid":"u1","labels":{"app":"web"},
                         "ownerReferences":[{"kind":"ReplicaSet","name":"web-7d","controller":true}]},
            "spec": {"nodeName":"n1","containers":[{"name":"app","image":"shop/web:2.3.4"}]}
        }))
        .unwrap();
        let m = PathMeta {
            namespace: "shop".into(),
            pod: "web-1".into(),
            pod_uid: Some("u1".into()),
            container: "app".into(),
            restart: Some(0),
            container_id: None,
        };
        let meta = metadata(&Map::new(), &KubernetesConfig::default(), &m, Some(&pod));
        let v = Value::Object(meta);
        assert_eq!(v["release"]["version"], "2.3.4");
        assert_eq!(v["process"]["type"], "app");
        assert_eq!(v["kubernetes"]["owner"]["kind"], "ReplicaSet");
        assert_eq!(v["kubernetes"]["image"], "shop/web:2.3.4");
        assert_eq!(v["kubernetes"]["labels"]["app"], "web");
    }
}
