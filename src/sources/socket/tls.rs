//! TLS for TCP sockets (rustls, ring), with optional client certificates.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::SocketError;
use crate::config::duration;

/// Default bound on a TLS handshake: a client that connects and says
/// nothing must not hold a connection slot for long.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ClientAuth {
    /// A client certificate, if presented, must verify against
    /// `client_ca_file`; clients without one are accepted.
    Optional,
    /// Every client must present a certificate that verifies (the default
    /// once `client_ca_file` is set).
    #[default]
    Required,
}

/// The `tls` table of a TCP socket source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsConfig {
    /// The server certificate chain (PEM).
    pub(crate) cert_file: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub(crate) key_file: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to. Unset:
    /// clients are not asked for certificates.
    #[serde(default)]
    pub(crate) client_ca_file: Option<PathBuf>,
    /// `required` (default) or `optional`; only with `client_ca_file`.
    #[serde(default)]
    pub(crate) client_auth: ClientAuth,
    /// Longest a handshake may take.
    #[serde(default = "default_handshake_timeout", deserialize_with = "duration")]
    pub(crate) handshake_timeout: Duration,
}

fn default_handshake_timeout() -> Duration {
    DEFAULT_HANDSHAKE_TIMEOUT
}

fn tls_error(file: &Path, message: impl std::fmt::Display) -> SocketError {
    SocketError::Tls {
        file: file.display().to_string(),
        message: message.to_string(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, SocketError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, e))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

impl TlsConfig {
    /// Loads the certificates and key into an acceptor.
    pub(crate) fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, SocketError> {
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(self.server_config()?)))
    }

    /// Loads the certificates and key into a server configuration (the
    /// caller may add ALPN protocols).
    pub(crate) fn server_config(&self) -> Result<rustls::ServerConfig, SocketError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certificates(&self.cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file).map_err(|e| tls_error(&self.key_file, e))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(&self.cert_file, e))?;
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certificates(ca)? {
                    roots.add(cert).map_err(|e| tls_error(ca, e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = match self.client_auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| tls_error(ca, e))?)
            }
        };
        builder.with_single_cert(chain, key).map_err(|e| tls_error(&self.key_file, e))
    }
}
