//! A Kubernetes API server stand-in on loopback HTTPS (hyper on
//! tokio-rustls, with a CA and a `localhost` certificate generated here).
//! It serves real object JSON for list and watch, per collection path
//! (`/api/v1/pods`, `/apis/events.k8s.io/v1/events`, …), checks the
//! service-account token, and records every request.
//!
//! Collections changed through [`ApiState::record`] behave like a real
//! API server's: each change gets the next resource version, a watch from
//! version N first replays the changes after N, and one from a version
//! older than [`ApiState::compact`] kept gets a 410 Gone `ERROR` event.
//! Leases (`/apis/coordination.k8s.io/v1/namespaces/<ns>/leases`) are
//! served for get, create and update, with optimistic concurrency: an
//! update whose `metadata.resourceVersion` is not the stored one gets 409
//! Conflict, a create of an existing Lease 409 AlreadyExists.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Frame;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_rustls::rustls;

/// The bearer token the stand-in accepts.
pub const TOKEN: &str = "test-token-7f3a9c";

/// One recorded change: (resource version, watch event type, object).
pub type Change = (u64, String, Value);

/// What the stand-in serves and what it was asked.
#[derive(Default)]
pub struct ApiState {
    /// (path and query, authorization header) of every request.
    pub requests: Mutex<Vec<(String, String)>>,
    /// The items of each collection, by path without the query.
    pub lists: Mutex<HashMap<String, Vec<Value>>>,
    /// Open watches: the collection path and the stream's sender.
    pub watchers: Mutex<Vec<(String, mpsc::UnboundedSender<Bytes>)>>,
    /// Resource versions handed out by [`ApiState::record`] and Lease
    /// writes: the next is 1001 more than this.
    pub version: AtomicU64,
    /// Changes recorded per collection path: (version, type, object).
    pub history: Mutex<HashMap<String, Vec<Change>>>,
    /// Per collection path, the oldest version a watch may start from.
    pub compacted: Mutex<HashMap<String, u64>>,
    /// Single objects (Leases) by their path.
    pub objects: Mutex<HashMap<String, Value>>,
    /// Lease writes: (method, path, status answered, holderIdentity sent).
    pub lease_writes: Mutex<Vec<(String, String, u16, String)>>,
    /// Set: the next Lease update loses a race to `rival` (the stand-in
    /// writes the Lease as held by `rival` first), so it gets 409 Conflict.
    pub race_next_update: std::sync::atomic::AtomicBool,
}

impl ApiState {
    /// Adds `item` to the collection at `path`.
    pub fn push(&self, path: &str, item: Value) {
        self.lists.lock().unwrap().entry(path.to_owned()).or_default().push(item);
    }

    /// Sends a watch event (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`) to
    /// every open watch of the collection at `path`.
    pub fn send_event(&self, path: &str, kind: &str, object: &Value) {
        let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": object})));
        self.watchers
            .lock()
            .unwrap()
            .retain(|(p, w)| p != path || w.send(line.clone()).is_ok());
    }

    /// How many watches of the collection at `path` are open.
    pub fn watching(&self, path: &str) -> usize {
        self.watchers
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, w)| p == path && !w.is_closed())
            .count()
    }
}

impl ApiState {
    /// The next resource version.
    pub fn next_version(&self) -> u64 {
        1001 + self.version.fetch_add(1, Ordering::SeqCst)
    }

    /// The latest resource version handed out (100 before any).
    pub fn current_version(&self) -> u64 {
        match self.version.load(Ordering::SeqCst) {
            0 => 100,
            n => 1000 + n,
        }
    }

    /// Changes the collection at `path` as a real server would: `object`
    /// gets the next resource version, is added (`ADDED`), replaces the
    /// item of its name (`MODIFIED`) or is removed (`DELETED`), and the
    /// change goes to every open watch and into the history later watches
    /// replay. Returns the version.
    pub fn record(&self, path: &str, kind: &str, mut object: Value) -> u64 {
        let watchers = self.watchers.lock().unwrap();
        let rv = self.next_version();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        {
            let mut lists = self.lists.lock().unwrap();
            let items = lists.entry(path.to_owned()).or_default();
            let name = object["metadata"]["name"].clone();
            items.retain(|i| i["metadata"]["name"] != name);
            if kind != "DELETED" {
                items.push(object.clone());
            }
        }
        self.history
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default()
            .push((rv, kind.to_owned(), object.clone()));
        drop(watchers);
        self.send_event(path, kind, &object);
        rv
    }

    /// Forgets the history of `path`: a watch from before now gets 410 Gone.
    pub fn compact(&self, path: &str) {
        let _w = self.watchers.lock().unwrap();
        self.history.lock().unwrap().remove(path);
        self.compacted.lock().unwrap().insert(path.to_owned(), self.current_version());
    }

    /// Serves `object` at `path` for GET (a Namespace, a Node, a Lease).
    pub fn put_object(&self, path: &str, object: Value) {
        self.objects.lock().unwrap().insert(path.to_owned(), object);
    }

    /// The object at `path` (a Lease once created).
    pub fn object(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }
}

fn status(code: u16, reason: &str, message: &str) -> hyper::Response<BoxBody<Bytes, Infallible>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    });
    json_response(code, body.to_string())
}

/// Get, create and update of Leases, with resourceVersion checks.
async fn handle_lease(
    method: hyper::Method,
    path: String,
    body: Bytes,
    state: Arc<ApiState>,
) -> hyper::Response<BoxBody<Bytes, Infallible>> {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let record = |status: u16, body: &Option<Value>| {
        let holder = body
            .as_ref()
            .and_then(|b| b.pointer("/spec/holderIdentity"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        state
            .lease_writes
            .lock()
            .unwrap()
            .push((method.to_string(), path.clone(), status, holder));
    };
    let mut objects = state.objects.lock().unwrap();
    match method {
        hyper::Method::GET => match objects.get(&path) {
            Some(l) => json_response(200, l.to_string()),
            None => status(404, "NotFound", "leases.coordination.k8s.io not found"),
        },
        hyper::Method::POST => {
            let Some(mut lease) = parsed.clone() else {
                record(400, &parsed);
                return status(400, "BadRequest", "not JSON");
            };
            let name = lease["metadata"]["name"].as_str().unwrap_or("").to_owned();
            let item = format!("{path}/{name}");
            if objects.contains_key(&item) {
                record(409, &parsed);
                return status(
                    409,
                    "AlreadyExists",
                    &format!("leases.coordination.k8s.io \"{name}\" already exists"),
                );
            }
            let rv = state.next_version();
            lease["metadata"]["resourceVersion"] = json!(rv.to_string());
            lease["metadata"]["uid"] = json!(format!("lease-uid-{rv}"));
            lease["metadata"]["creationTimestamp"] = json!("2026-12-06T10:00:00Z");
            objects.insert(item, lease.clone());
            record(201, &parsed);
            json_response(201, lease.to_string())
        }
        hyper::Method::PUT => {
            let Some(mut lease) = parsed.clone() else {
                record(400, &parsed);
                return status(400, "BadRequest", "not JSON");
            };
            if state.race_next_update.swap(false, Ordering::SeqCst) {
                if let Some(stored) = objects.get_mut(&path) {
                    stored["spec"]["holderIdentity"] = json!("rival");
                    stored["metadata"]["resourceVersion"] = json!(state.next_version().to_string());
                }
            }
            let Some(stored) = objects.get(&path) else {
                record(404, &parsed);
                return status(404, "NotFound", "leases.coordination.k8s.io not found");
            };
            if lease["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
                record(409, &parsed);
                let name = stored["metadata"]["name"].as_str().unwrap_or("");
                return status(
                    409,
                    "Conflict",
                    &format!("Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
                );
            }
            let rv = state.next_version();
            lease["metadata"]["resourceVersion"] = json!(rv.to_string());
            objects.insert(path.clone(), lease.clone());
            record(200, &parsed);
            json_response(200, lease.to_string())
        }
        _ => status(405, "MethodNotAllowed", "method not allowed"),
    }
}

/// The `resourceVersion` query parameter.
fn query_version(uri: &str) -> Option<u64> {
    uri.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("resourceVersion="))
        .and_then(|v| v.parse().ok())
}

/// A watch response body: events as the test sends them.
struct WatchBody(mpsc::UnboundedReceiver<Bytes>);

impl hyper::body::Body for WatchBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn json_response(status: u16, body: String) -> hyper::Response<BoxBody<Bytes, Infallible>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap()
}

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    state: Arc<ApiState>,
) -> Result<hyper::Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let uri = req.uri().to_string();
    let path = req.uri().path().to_owned();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    state.requests.lock().unwrap().push((uri.clone(), auth.clone()));
    if auth != format!("Bearer {TOKEN}") {
        return Ok(json_response(401, r#"{"kind":"Status","code":401}"#.to_owned()));
    }
    if path.starts_with("/apis/coordination.k8s.io/v1/namespaces/") && path.contains("/leases") {
        let method = req.method().clone();
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Ok(handle_lease(method, path, body, state).await);
    }
    if uri.contains("watch=true") {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watchers = state.watchers.lock().unwrap();
        // A real server replays the changes after the version asked for,
        // or says 410 Gone when it no longer has them.
        if let Some(from) = query_version(&uri) {
            let oldest = state.compacted.lock().unwrap().get(&path).copied();
            if oldest.is_some_and(|o| from < o) {
                let gone = json!({"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {from} ({})", oldest.unwrap_or(0)),
                    "reason": "Expired", "code": 410}});
                let _ = tx.send(Bytes::from(format!("{gone}\n")));
                drop(tx);
                return Ok(hyper::Response::builder()
                    .header("content-type", "application/json")
                    .body(WatchBody(rx).boxed())
                    .unwrap());
            }
            for (rv, kind, object) in state.history.lock().unwrap().get(&path).into_iter().flatten() {
                if *rv > from {
                    let _ = tx.send(Bytes::from(format!("{}\n", json!({"type": kind, "object": object}))));
                }
            }
        }
        watchers.push((path, tx));
        drop(watchers);
        return Ok(hyper::Response::builder()
            .header("content-type", "application/json")
            .body(WatchBody(rx).boxed())
            .unwrap());
    }
    if let Some(obj) = state.object(&path) {
        return Ok(json_response(200, obj.to_string()));
    }
    let items = state.lists.lock().unwrap().get(&path).cloned().unwrap_or_default();
    let list = json!({
        "kind": "List", "apiVersion": "v1",
        "metadata": {"resourceVersion": state.current_version().to_string()},
        "items": items,
    });
    Ok(json_response(200, list.to_string()))
}

/// Generates a CA and a server certificate for localhost; writes the CA to
/// `ca_path`; serves `state` on a loopback port it returns.
pub fn start_api(rt: &tokio::runtime::Runtime, state: Arc<ApiState>, ca_path: &Path) -> u16 {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "sluice test cluster CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(ca_path, ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut srv_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    srv_params.distinguished_name.push(DnType::CommonName, "kubernetes");
    let srv_key = KeyPair::generate().unwrap();
    let srv_cert = srv_params.signed_by(&srv_key, &issuer).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![srv_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(srv_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req| handle(req, state.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}
