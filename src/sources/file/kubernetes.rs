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
        }
    }
}

impl Validate for KubernetesConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if self.api && !self.enabled {
            errors.push(ConfigError::at(path, "api", "needs kubernetes.enabled = true"));
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

/// Lists and watches this node's pods into a [`PodCache`].
#[derive(Debug)]
pub(crate) struct PodWatcher {
    client: reqwest::Client,
    base: String,
    node: String,
    token_file: PathBuf,
    retention: Duration,
    cache: Arc<PodCache>,
    source: Arc<str>,
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
        let ca = std::fs::read(&cfg.ca_file).map_err(|error| ApiError::File {
            path: cfg.ca_file.clone(),
            error,
        })?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .connect_timeout(Duration::from_secs(10));
        for cert in reqwest::Certificate::from_pem_bundle(&ca).map_err(|error| ApiError::Ca {
            path: cfg.ca_file.clone(),
            error,
        })? {
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(|error| ApiError::Http { url: base.clone(), error })?;
        Ok(PodWatcher {
            client,
            base,
            node,
            token_file: cfg.token_file.clone(),
            retention: cfg.deleted_pod_retention,
            cache,
            source,
        })
    }

    fn url(&self, watch: Option<&str>) -> String {
        let mut u = format!("{}/api/v1/pods?fieldSelector=spec.nodeName%3D{}", self.base, urlencode(&self.node));
        if let Some(rv) = watch {
            u.push_str("&watch=true&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion=");
            u.push_str(&urlencode(rv));
        }
        u
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

    async fn get(&self, url: &str) -> Result<reqwest::Response, ApiError> {
        let resp = self
            .client
            .get(url)
            .bearer_auth(self.token().await?)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|error| ApiError::Http { url: url.into(), error })?;
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

    /// Lists the node's pods; returns the list's resource version.
    async fn list(&self) -> Result<String, ApiError> {
        let url = self.url(None);
        let body = self
            .get(&url)
            .await?
            .bytes()
            .await
            .map_err(|error| ApiError::Http { url: url.clone(), error })?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::Body {
            url: url.clone(),
            error: e.to_string(),
        })?;
        let items = v.get("items").and_then(Value::as_array).ok_or_else(|| ApiError::Body {
            url: url.clone(),
            error: "no items".into(),
        })?;
        let pods = items.iter().filter_map(PodInfo::from_json).collect();
        self.cache.replace_all(pods, Instant::now());
        Ok(v.pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned())
    }

    /// Watches from `rv` until the stream ends; returns the last resource
    /// version seen, or `None` when the server says to list again.
    async fn watch(&self, mut rv: String, shutdown: &mut ShutdownSignal) -> Result<Option<String>, ApiError> {
        let url = self.url(Some(&rv));
        let mut resp = self.get(&url).await?;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = tokio::select! {
                c = resp.chunk() => c.map_err(|error| ApiError::Http { url: url.clone(), error })?,
                _ = shutdown.wait() => return Ok(Some(rv)),
            };
            let Some(chunk) = chunk else { return Ok(Some(rv)) };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = memchr::memchr(b'\n', &buf) {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                    tracing::warn!(source = %self.source, "kubernetes watch sent a line that is not JSON; listing again");
                    return Ok(None);
                };
                let obj = ev.get("object").cloned().unwrap_or(Value::Null);
                if let Some(v) = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
                    rv = v.to_owned();
                }
                match ev.get("type").and_then(Value::as_str) {
                    Some("ADDED" | "MODIFIED") => {
                        if let Some(p) = PodInfo::from_json(&obj) {
                            self.cache.upsert(p);
                        }
                    }
                    Some("DELETED") => {
                        if let Some(uid) = obj.pointer("/metadata/uid").and_then(Value::as_str) {
                            self.cache.mark_deleted(uid, Instant::now());
                        }
                    }
                    Some("BOOKMARK") => {}
                    _ => return Ok(None), // ERROR (410 Gone and friends): list again.
                }
            }
            if buf.len() > 64 << 20 {
                return Err(ApiError::Body {
                    url,
                    error: "watch event larger than 64MiB".into(),
                });
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
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let jitter = Duration::from_millis(nanos as u64 % 250);
                tokio::select! {
                    _ = tokio::time::sleep(backoff + jitter) => {}
                    _ = shutdown.wait() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn urlencode(s: &str) -> String {
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
