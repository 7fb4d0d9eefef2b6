//! `/metrics`, `/health` and `/ready` over HTTP/1.1 (hyper).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::metrics;

/// What `/ready` reports: sources started and no sink unhealthy.
#[derive(Debug, Default)]
pub struct Health {
    started: AtomicBool,
    unhealthy_sinks: AtomicUsize,
}

impl Health {
    /// Marks the pipeline started (every source running).
    pub(crate) fn set_started(&self, started: bool) {
        self.started.store(started, Ordering::Release);
        self.publish();
    }

    /// A sink turned unhealthy (`true`) or healthy again (`false`).
    pub(crate) fn sink_unhealthy(&self, unhealthy: bool) {
        if unhealthy {
            self.unhealthy_sinks.fetch_add(1, Ordering::AcqRel);
        } else {
            self.unhealthy_sinks.fetch_sub(1, Ordering::AcqRel);
        }
        self.publish();
    }

    /// Whether `/ready` answers 200.
    pub(crate) fn is_ready(&self) -> bool {
        self.started.load(Ordering::Acquire) && self.unhealthy_sinks.load(Ordering::Acquire) == 0
    }

    fn publish(&self) {
        metrics().ready.set(self.is_ready() as i64);
    }
}

/// A running API server.
#[derive(Debug)]
pub(crate) struct ApiHandle {
    /// The address it listens on (the real port when 0 was asked for).
    pub(crate) local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `POST /-/reload`, handed to the running topology, which answers on
/// `reply` once the new config is applied or refused.
#[derive(Debug)]
pub(crate) struct ReloadRequest {
    /// Where the outcome goes.
    pub(crate) reply: oneshot::Sender<ReloadReply>,
}

/// How a reload ended, for the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReloadReply {
    /// The new config runs (or changed nothing).
    pub(crate) applied: bool,
    /// What happened, one line per change or per error.
    pub(crate) message: String,
}

/// Binds `addr` and serves the endpoints until the handle is dropped.
/// `POST /-/reload` is served when `reload` is given (a config file to
/// re-read); without it the endpoint answers 409.
pub(crate) async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    reload: Option<mpsc::Sender<ReloadRequest>>,
) -> std::io::Result<ApiHandle> {
    serve_http(addr, move |req| {
        let health = health.clone();
        let reload = reload.clone();
        async move { route(req, &health, reload.as_ref()).await }
    })
    .await
}

/// Binds `addr` and answers every request with `handle` until the handle
/// is dropped: the one HTTP server loop (the API, the exporter sink).
pub(crate) async fn serve_http<H, F>(addr: SocketAddr, handle: H) -> std::io::Result<ApiHandle>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, address = %local_addr, "HTTP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handle(req);
                    async move { Ok::<_, std::convert::Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(ApiHandle { local_addr, task })
}

async fn route(req: Request<Incoming>, health: &Health, reload: Option<&mpsc::Sender<ReloadRequest>>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() == "/-/reload" {
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /-/reload\n");
        }
        let Some(reload) = reload else {
            return text(StatusCode::CONFLICT, "no config file to reload: sluice runs the embedded default\n");
        };
        let (reply, answer) = oneshot::channel();
        if reload.send(ReloadRequest { reply }).await.is_err() {
            return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
        }
        return match answer.await {
            Ok(r) => {
                let mut resp = Response::new(Full::new(Bytes::from(r.message + "\n")));
                if !r.applied {
                    *resp.status_mut() = StatusCode::BAD_REQUEST;
                }
                resp
            }
            Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    if let Some(output) = req.uri().path().strip_prefix("/tap/").filter(|o| !o.is_empty()) {
        let limit = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("limit=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(10);
        let mut r = Response::new(Full::new(Bytes::from(super::tap::collect(output, limit).await)));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/x-ndjson"),
        );
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(metrics().encode())));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" if health.is_ready() => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /health, /ready or /tap/<output>\n"),
    }
}
