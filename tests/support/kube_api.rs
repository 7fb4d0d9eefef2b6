//! A Kubernetes API server stand-in on loopback HTTPS (hyper on
//! tokio-rustls, with a CA and a `localhost` certificate generated here).
//! It serves real object JSON for list and watch, per collection path
//! (`/api/v1/pods`, `/apis/events.k8s.io/v1/events`, …), checks the
//! service-account token, and records every request.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Frame;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_rustls::rustls;

/// The bearer token the stand-in accepts.
pub const TOKEN: &str = "test-token-7f3a9c";

/// What the stand-in serves and what it was asked.
#[derive(Default)]
pub struct ApiState {
    /// (path and query, authorization header) of every request.
    pub requests: Mutex<Vec<(String, String)>>,
    /// The items of each collection, by path without the query.
    pub lists: Mutex<HashMap<String, Vec<Value>>>,
    /// Open watches: the collection path and the stream's sender.
    pub watchers: Mutex<Vec<(String, mpsc::UnboundedSender<Bytes>)>>,
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
    if uri.contains("watch=true") {
        let (tx, rx) = mpsc::unbounded_channel();
        state.watchers.lock().unwrap().push((path, tx));
        return Ok(hyper::Response::builder()
            .header("content-type", "application/json")
            .body(WatchBody(rx).boxed())
            .unwrap());
    }
    let items = state.lists.lock().unwrap().get(&path).cloned().unwrap_or_default();
    let list = json!({
        "kind": "List", "apiVersion": "v1",
        "metadata": {"resourceVersion": "100"},
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
