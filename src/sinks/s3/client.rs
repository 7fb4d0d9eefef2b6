//! S3 requests: SigV4 presigned by `rusty-s3`, sent with `reqwest`, each
//! retried with backoff while the failure is one retrying can fix.
//!
//! Integrity: every `PUT` and `UploadPart` carries `Content-MD5` (a signed
//! header); S3 refuses a body that does not match it (`BadDigest`), and
//! that answer is retried.

use base64::Engine;
use bytes::Bytes;
use md5::{Digest, Md5};
use rusty_s3::actions::CreateMultipartUpload;
use rusty_s3::{Bucket, S3Action};
use std::sync::Arc;
use std::time::Duration;

use super::config::S3Config;
use super::credentials::{self, ChainInput, CredentialCache};
use crate::sinks::delivery::{self, Answer, Endpoint, ErrorKind, Failed};
use crate::sinks::http;
use crate::sinks::SinkCx;

/// How long a presigned URL stays valid: long enough for one attempt of
/// the slowest request, short enough to be useless if it leaked.
const PRESIGN_TTL: Duration = Duration::from_secs(900);

/// Content type of every object.
const CONTENT_TYPE: &str = "application/x-ndjson";

/// A successful answer.
struct Reply {
    etag: Option<String>,
    text: String,
}

/// A request that will not succeed.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// S3 refused it for good (a 4xx): the object is dropped and counted.
    Rejected(String),
    /// The sink cannot work (credentials, bucket): it stops.
    Fatal(String),
}

/// The S3 side of the sink, shared by its upload tasks.
pub(crate) struct S3Client {
    pub(crate) name: Arc<str>,
    http: reqwest::Client,
    bucket: Bucket,
    credentials: Arc<CredentialCache>,
    /// Retries, error counts, request times and `/ready`.
    endpoint: Endpoint,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("S3Client")
            .field("name", &self.name)
            .field("bucket", &self.bucket.name())
            .finish()
    }
}

impl S3Client {
    /// Builds the client from the config and the environment, with the
    /// first credentials of the chain (see [`credentials`]).
    pub(crate) async fn new(cfg: &S3Config, cx: &SinkCx) -> Result<S3Client, String> {
        let endpoint = cfg.effective_endpoint();
        let url = reqwest::Url::parse(&endpoint).map_err(|e| format!("invalid endpoint {endpoint:?}: {e}"))?;
        let style = match cfg.effective_url_style() {
            super::config::UrlStyle::Path => rusty_s3::UrlStyle::Path,
            super::config::UrlStyle::VirtualHost => rusty_s3::UrlStyle::VirtualHost,
        };
        let bucket = Bucket::new(url, style, cfg.bucket.clone(), cfg.region.clone())
            .map_err(|e| format!("invalid bucket {:?} at {endpoint}: {e}", cfg.bucket))?;
        let chain = ChainInput {
            access_key_id_file: cfg.access_key_id_file.as_deref(),
            secret_access_key_file: cfg.secret_access_key_file.as_deref(),
            session_token_file: cfg.session_token_file.as_deref(),
            region: &cfg.region,
            config: &cfg.credentials,
        };
        let credentials = CredentialCache::start(&chain, &credentials::process_env, cx.name.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok(S3Client {
            name: cx.name.clone(),
            http: http::client(cfg.request.timeout, cfg.tls.as_ref(), &cx.name)?,
            bucket,
            credentials,
            endpoint: Endpoint::new(cx.name.clone(), "S3 request", cfg.retry.clone(), cx.health.clone()),
        })
    }

    /// `HEAD` the bucket: a clear start-up error for wrong credentials, an
    /// unknown bucket or an unreachable endpoint.
    pub(crate) async fn healthcheck(&self) -> Result<(), String> {
        let url = self.bucket.head_bucket(Some(&self.credentials.get())).sign(PRESIGN_TTL);
        let where_ = format!("bucket {:?} at {}", self.bucket.name(), self.bucket.base_url());
        let resp = self
            .http
            .head(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("cannot reach S3 for {where_}: {}", http::error_chain(&e)))?;
        match resp.status().as_u16() {
            200..=299 => {
                tracing::info!(sink = %self.name, bucket = %self.bucket.name(), "S3 bucket is reachable");
                Ok(())
            }
            401 | 403 => Err(format!(
                "S3 refused our credentials for {where_} ({}): check the credentials from {}, \
                 the region and the bucket policy",
                resp.status(),
                self.credentials.source_name()
            )),
            404 => Err(format!("{where_} does not exist ({})", resp.status())),
            301 | 307 => Err(format!(
                "{where_} answered {}: the bucket is in another region than {:?}",
                resp.status(),
                self.bucket.region()
            )),
            _ => Err(format!("S3 answered {} to HEAD {where_}", resp.status())),
        }
    }

    /// Uploads a whole object.
    pub(crate) async fn put_object(&self, key: &str, body: Bytes) -> Result<(), Failure> {
        let md5 = content_md5(&body);
        self.send("PutObject", key, || {
            let creds = self.credentials.get();
            let mut a = self.bucket.put_object(Some(&creds), key);
            a.headers_mut().insert("content-md5", md5.as_str());
            a.headers_mut().insert("content-type", CONTENT_TYPE);
            let url = a.sign(PRESIGN_TTL);
            self.http
                .put(url)
                .header("content-md5", md5.as_str())
                .header("content-type", CONTENT_TYPE)
                .body(body.clone())
        })
        .await
        .map(drop)
    }

    /// Starts a multipart upload; returns its id.
    pub(crate) async fn create_multipart(&self, key: &str) -> Result<String, Failure> {
        let answer = self
            .send("CreateMultipartUpload", key, || {
                let creds = self.credentials.get();
                let mut a = self.bucket.create_multipart_upload(Some(&creds), key);
                a.headers_mut().insert("content-type", CONTENT_TYPE);
                let url = a.sign(PRESIGN_TTL);
                self.http.post(url).header("content-type", CONTENT_TYPE)
            })
            .await?;
        CreateMultipartUpload::parse_response(&answer.text)
            .map(|r| r.upload_id().to_owned())
            .map_err(|e| Failure::Rejected(format!("CreateMultipartUpload for {key}: unreadable answer: {e}")))
    }

    /// Uploads part `number` (from 1); returns its ETag.
    pub(crate) async fn upload_part(&self, key: &str, upload_id: &str, number: u16, body: Bytes) -> Result<String, Failure> {
        let md5 = content_md5(&body);
        let answer = self
            .send("UploadPart", key, || {
                let creds = self.credentials.get();
                let mut a = self.bucket.upload_part(Some(&creds), key, number, upload_id);
                a.headers_mut().insert("content-md5", md5.as_str());
                let url = a.sign(PRESIGN_TTL);
                self.http.put(url).header("content-md5", md5.as_str()).body(body.clone())
            })
            .await?;
        answer
            .etag
            .ok_or_else(|| Failure::Rejected(format!("UploadPart {number} of {key}: the answer has no ETag")))
    }

    /// Completes a multipart upload from its parts' ETags, in order.
    pub(crate) async fn complete_multipart(&self, key: &str, upload_id: &str, etags: &[String]) -> Result<(), Failure> {
        let body = {
            let a = self
                .bucket
                .complete_multipart_upload(None, key, upload_id, etags.iter().map(String::as_str));
            a.body()
        };
        let text = self
            .send("CompleteMultipartUpload", key, || {
                let creds = self.credentials.get();
                let a = self
                    .bucket
                    .complete_multipart_upload(Some(&creds), key, upload_id, etags.iter().map(String::as_str));
                let url = a.sign(PRESIGN_TTL);
                self.http.post(url).body(body.clone())
            })
            .await?
            .text;
        // S3 may answer 200 and still fail: the body then holds an Error.
        rusty_s3::actions::CompleteMultipartUploadResponse::parse(&text)
            .map(drop)
            .map_err(|_| Failure::Rejected(format!("CompleteMultipartUpload of {key} failed: {}", http::excerpt(text.trim()))))
    }

    /// Abandons a multipart upload (best effort: S3 would otherwise keep,
    /// and bill, its parts).
    pub(crate) async fn abort_multipart(&self, key: &str, upload_id: &str) {
        let creds = self.credentials.get();
        let url = self.bucket.abort_multipart_upload(Some(&creds), key, upload_id).sign(PRESIGN_TTL);
        if let Err(e) = self.http.delete(url).send().await {
            tracing::warn!(sink = %self.name, key, error = %http::error_chain(&e), "could not abort a multipart upload");
        }
    }

    /// Sends until S3 answers 2xx or something final.
    async fn send<F>(&self, op: &str, key: &str, build: F) -> Result<Reply, Failure>
    where
        F: Fn() -> reqwest::RequestBuilder,
    {
        self.endpoint.send(build, |resp| judge(op, key, resp)).await
    }
}

/// What S3's answer to a request means.
async fn judge(op: &str, key: &str, resp: reqwest::Response) -> Answer<Result<Reply, Failure>> {
    let what = || format!("{op} {key}");
    let status = resp.status();
    if status.is_success() {
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        return match resp.text().await {
            Ok(text) => Answer::Accepted(Ok(Reply { etag, text })),
            Err(e) => Answer::Retry(Failed::transport(&what(), &e)),
        };
    }
    let retry_after = delivery::retry_after(resp.headers());
    let text = resp.text().await.unwrap_or_default();
    let mut kind = ErrorKind::of_status(status);
    // A body that did not match its Content-MD5 was damaged on the way:
    // send it again.
    if text.contains("<Code>BadDigest</Code>") || text.contains("<Code>RequestTimeout</Code>") {
        kind = ErrorKind::Server;
    }
    let detail = format!("{}: {status}: {}", what(), http::excerpt(text.trim()));
    if kind.is_retryable() {
        return Answer::Retry(Failed { kind, detail, retry_after });
    }
    Answer::Refused(
        kind,
        Err(if delivery::is_misconfiguration(status) {
            Failure::Fatal(format!("S3 refused {detail} (check the credentials, bucket and region)"))
        } else {
            Failure::Rejected(detail)
        }),
    )
}

/// Base64 of the body's MD5, for `Content-MD5`.
pub(crate) fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_md5_is_base64_of_the_digest() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e.
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
        assert_eq!(content_md5(b"hello\n"), "sZRqySSS0jR8YjW00mERhA==");
    }
}
