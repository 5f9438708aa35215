//! TLS for clients: trust the cluster's CA, and optionally present a client certificate whose
//! common name is the user to act as. The broker's certificate is checked against the host of the
//! address dialed, as any TLS client does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Why TLS could not be set up or did not connect.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Pem { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot check a certificate for {0:?}")]
    ServerName(String),
    #[error("TLS handshake with {addr}: {source}")]
    Handshake { addr: String, source: std::io::Error },
}

/// A client's TLS configuration.
#[derive(Clone)]
pub struct Tls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("client_certificate", &self.config.client_auth_cert_resolver.has_certs()).finish()
    }
}

impl Tls {
    /// Trusts the CA certificates in the PEM file `ca`; presents the certificate chain and key in
    /// `client` (`(cert, key)`) when given.
    pub fn from_files(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Tls, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in certificates(ca)? {
            roots.add(cert)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => {
                let key =
                    PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem { path: key.into(), source })?;
                builder.with_client_auth_cert(certificates(cert)?, key)?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Tls { config: Arc::new(config) })
    }

    /// The TLS session over `stream`, connected to `addr` (`host:port`).
    pub(crate) async fn connect(&self, stream: TcpStream, addr: &str) -> Result<TlsStream<TcpStream>, TlsError> {
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host).trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))?;
        TlsConnector::from(Arc::clone(&self.config))
            .connect(name, stream)
            .await
            .map_err(|source| TlsError::Handshake { addr: addr.to_owned(), source })
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem { path: path.to_owned(), source };
    let certs = CertificateDer::pem_file_iter(path).map_err(pem)?.collect::<Result<Vec<_>, _>>().map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}
