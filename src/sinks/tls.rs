//! TLS for the HTTP sinks (Loki, S3): a custom CA bundle, a client
//! certificate and key (mutual TLS), the name the server's certificate must
//! carry, and files that are re-read when they change, so certificates
//! rotate without a restart. Each certificate's expiry is a metric.
//!
//! The files are checked (size and modification time) at most once per
//! `reload_interval`, when a connection is being set up; a change is
//! loaded for the next handshake, and connections already open keep the
//! material they were made with. A file that changed but does not load
//! (half written by the rotation) leaves the previous material in use and
//! is tried again at the next check.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::{duration, ConfigError, Validate};
use crate::telemetry::gauge_vec;

/// Default pause between checks of the files for a change.
const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The `tls` table of an HTTP sink.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpTlsConfig {
    /// CA certificates (PEM) the server's certificate must chain to. They
    /// replace the bundled web roots (a private PKI). Unset: web roots.
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs `key_file`.
    #[serde(default)]
    pub(crate) cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub(crate) key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the
    /// endpoint's host (an endpoint given by IP address, a proxy).
    #[serde(default)]
    pub(crate) server_name: Option<String>,
    /// How often the files are checked for a change.
    #[serde(default = "default_reload_interval", deserialize_with = "duration")]
    pub(crate) reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    DEFAULT_RELOAD_INTERVAL
}

impl Validate for HttpTlsConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => errors.push(ConfigError::at(path, "key_file", "is needed with cert_file")),
            (None, Some(_)) => errors.push(ConfigError::at(path, "cert_file", "is needed with key_file")),
            _ => {}
        }
        if let Some(name) = &self.server_name {
            if ServerName::try_from(name.as_str()).is_err() {
                errors.push(ConfigError::at(
                    path,
                    "server_name",
                    format!("{name:?} is not a DNS name or IP address"),
                ));
            }
        }
        if self.reload_interval.is_zero() {
            errors.push(ConfigError::at(path, "reload_interval", "must be above zero"));
        }
    }
}

/// Metrics of the TLS files, registered once.
fn expiry_gauge() -> &'static prometheus::IntGaugeVec {
    static G: OnceLock<prometheus::IntGaugeVec> = OnceLock::new();
    G.get_or_init(|| {
        gauge_vec(
            "sluice_tls_certificate_expiry_timestamp_seconds",
            "When a TLS certificate a sink uses expires (Unix seconds): the client certificate, or the CA bundle's first to expire.",
            &["sink", "certificate"],
        )
    })
}

fn reload_errors() -> &'static prometheus::IntCounterVec {
    static C: OnceLock<prometheus::IntCounterVec> = OnceLock::new();
    C.get_or_init(|| {
        crate::telemetry::counter_vec(
            "sluice_tls_reload_errors_total",
            "Changed TLS files that did not load; the previous certificates stay in use.",
            &["sink"],
        )
    })
}

/// Why TLS files could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{key} {path}: {message}")]
pub(crate) struct TlsFileError {
    /// The config key (`tls.ca_file`).
    key: &'static str,
    /// The file.
    path: String,
    /// What is wrong with it.
    message: String,
}

fn file_error(key: &'static str, path: &Path, message: impl std::fmt::Display) -> TlsFileError {
    TlsFileError {
        key,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, e))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The earliest `notAfter` of `certs`, in Unix seconds.
fn earliest_expiry(key: &'static str, path: &Path, certs: &[CertificateDer<'_>]) -> Result<i64, TlsFileError> {
    certs
        .iter()
        .map(|c| {
            x509_parser::parse_x509_certificate(c.as_ref())
                .map(|(_, x)| x.validity().not_after.timestamp())
                .map_err(|e| file_error(key, path, format!("not an X.509 certificate: {e}")))
        })
        .try_fold(i64::MAX, |min, t| t.map(|t| min.min(t)))
}

/// What identifies a file's version: its size and modification time.
type Stamp = Option<(u64, SystemTime)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().and_then(|m| Some((m.len(), m.modified().ok()?)))
}

/// Certificates loaded from the files at one moment.
struct Loaded {
    verifier: Arc<WebPkiServerVerifier>,
    client: Option<Arc<CertifiedKey>>,
    stamps: Vec<Stamp>,
}

/// The files, what was last loaded from them, and when they were checked.
struct Material {
    cfg: HttpTlsConfig,
    sink: Arc<str>,
    provider: Arc<CryptoProvider>,
    state: Mutex<(Instant, Arc<Loaded>)>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material").field("sink", &self.sink).finish()
    }
}

impl HttpTlsConfig {
    fn paths(&self) -> Vec<&Path> {
        [&self.ca_file, &self.cert_file, &self.key_file]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect()
    }
}

impl Material {
    /// Loads every file now, and sets the expiry metrics.
    fn load(&self) -> Result<Loaded, TlsFileError> {
        load(&self.cfg, &self.sink, &self.provider)
    }
}

/// Loads every file of `cfg` now, and sets sink `sink`'s expiry metrics.
fn load(cfg: &HttpTlsConfig, sink: &str, provider: &Arc<CryptoProvider>) -> Result<Loaded, TlsFileError> {
    {
        // Stamps first: a change made while loading is seen at the next check.
        let stamps = cfg.paths().into_iter().map(stamp).collect();
        let gauge = expiry_gauge();
        let roots = match &cfg.ca_file {
            Some(ca) => {
                let certs = certificates("tls.ca_file", ca)?;
                let expiry = earliest_expiry("tls.ca_file", ca, &certs)?;
                let mut roots = rustls::RootCertStore::empty();
                for c in certs {
                    roots.add(c).map_err(|e| file_error("tls.ca_file", ca, e))?;
                }
                gauge.with_label_values(&[sink, "ca"]).set(expiry);
                roots
            }
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| file_error("tls.ca_file", cfg.ca_file.as_deref().unwrap_or(Path::new("")), e))?;
        let client = match (&cfg.cert_file, &cfg.key_file) {
            (Some(cert), Some(key)) => {
                let chain = certificates("tls.cert_file", cert)?;
                let expiry = earliest_expiry("tls.cert_file", cert, &chain[..1])?;
                let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("tls.key_file", key, e))?;
                let signing = provider
                    .key_provider
                    .load_private_key(der)
                    .map_err(|e| file_error("tls.key_file", key, e))?;
                let ck = CertifiedKey::new(chain, signing);
                ck.keys_match()
                    .map_err(|e| file_error("tls.key_file", key, format!("does not match tls.cert_file: {e}")))?;
                gauge.with_label_values(&[sink, "client"]).set(expiry);
                Some(Arc::new(ck))
            }
            _ => None,
        };
        Ok(Loaded { verifier, client, stamps })
    }
}

impl Material {
    /// The current material, reloaded first if the files changed and the
    /// last check is older than `reload_interval`.
    fn current(&self) -> Arc<Loaded> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0.elapsed() < self.cfg.reload_interval {
            return state.1.clone();
        }
        state.0 = Instant::now();
        let now: Vec<Stamp> = self.cfg.paths().into_iter().map(stamp).collect();
        if now != state.1.stamps {
            match self.load() {
                Ok(l) => {
                    tracing::info!(sink = %self.sink, "TLS files changed; new connections use the new certificates");
                    state.1 = Arc::new(l);
                }
                Err(error) => {
                    reload_errors().with_label_values(&[&self.sink]).inc();
                    tracing::warn!(sink = %self.sink, %error, "changed TLS files do not load; keeping the previous certificates");
                }
            }
        }
        state.1.clone()
    }
}

/// Verifies the server's certificate with the current CA bundle, against
/// `server_name` when it is set.
#[derive(Debug)]
struct Verifier {
    material: Arc<Material>,
    server_name: Option<ServerName<'static>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.server_name.as_ref().unwrap_or(server_name);
        self.material
            .current()
            .verifier
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.material.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.material.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.material.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Presents the current client certificate.
#[derive(Debug)]
struct ClientCert {
    material: Arc<Material>,
}

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.material.current().client.clone()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl HttpTlsConfig {
    /// A rustls client config for sink `sink` that re-reads the files when
    /// they change. Fails when the files do not load now.
    pub(crate) fn client_config(&self, sink: &str) -> Result<rustls::ClientConfig, TlsFileError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = load(self, sink, &provider)?;
        let material = Material {
            cfg: self.clone(),
            sink: sink.into(),
            provider: provider.clone(),
            state: Mutex::new((Instant::now(), Arc::new(loaded))),
        };
        let material = Arc::new(material);
        let server_name = self.server_name.as_deref().and_then(|n| ServerName::try_from(n.to_owned()).ok());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| file_error("tls", Path::new(""), e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                material: material.clone(),
                server_name,
            }));
        let config = if self.cert_file.is_some() {
            builder.with_client_cert_resolver(Arc::new(ClientCert { material }))
        } else {
            builder.with_no_client_auth()
        };
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_checked_with_key_paths() {
        let cfg: HttpTlsConfig =
            serde_json::from_value(serde_json::json!({"cert_file": "/c.pem", "server_name": "not a name", "reload_interval": "0s"}))
                .unwrap();
        let mut errors = Vec::new();
        cfg.validate("sinks.loki.tls", &mut errors);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "sinks.loki.tls.key_file",
                "sinks.loki.tls.server_name",
                "sinks.loki.tls.reload_interval"
            ]
        );
    }

    #[test]
    fn a_missing_ca_file_fails_with_its_key_and_path() {
        let cfg: HttpTlsConfig = serde_json::from_value(serde_json::json!({"ca_file": "/nonexistent/ca.pem"})).unwrap();
        let e = cfg.client_config("s").unwrap_err().to_string();
        assert!(e.starts_with("tls.ca_file /nonexistent/ca.pem:"), "{e}");
    }
}
