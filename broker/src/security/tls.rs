//! TLS for both ports, read from PEM files once at start-up, with rustls's ring provider.
//!
//! - Peer port: a broker presents its certificate and requires the other side's, both chained to
//!   the cluster CA. A dialing broker checks the peer's certificate against the host of the
//!   address it dials, as any TLS client does.
//! - Client port: the broker presents the same certificate. With a client CA, a client may also
//!   present a certificate; its subject's common name is the user it acts as. The client CA must
//!   differ from the cluster CA, or a client certificate would open the peer port.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Pem { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the client CA ({0}) is the cluster CA: a client certificate would be a broker's")]
    SharedCa(PathBuf),
}

/// Where a broker's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This broker's certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The cluster CA: signs every broker's certificate, and only those.
    pub ca: PathBuf,
    /// Signs client certificates, when clients may authenticate by certificate.
    pub client_ca: Option<PathBuf>,
}

/// The rustls configurations a broker uses.
#[derive(Debug, Clone)]
pub struct BrokerTls {
    /// Accepts peers that present a cluster certificate.
    pub peer_server: Arc<rustls::ServerConfig>,
    /// Dials peers, presenting this broker's certificate.
    pub peer_client: Arc<rustls::ClientConfig>,
    /// Accepts clients, with or without a client certificate.
    pub client_server: Arc<rustls::ServerConfig>,
}

/// The one crypto provider of every configuration: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file, in order.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem { path: path.to_owned(), source };
    let certs = CertificateDer::pem_file_iter(path).map_err(pem)?.collect::<Result<Vec<_>, _>>().map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem { path: path.to_owned(), source })
}

/// A trust store of every certificate in a PEM file: several during a CA rotation.
pub fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

impl BrokerTls {
    pub fn load(files: &TlsFiles) -> Result<BrokerTls, TlsError> {
        let chain = certificates(&files.cert)?;
        let key = private_key(&files.key)?;
        let cluster = roots(&files.ca)?;
        let provider = provider();

        let peers = WebPkiClientVerifier::builder_with_provider(Arc::clone(&cluster), Arc::clone(&provider)).build()?;
        let peer_server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(peers)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let peer_client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(cluster)
            .with_client_auth_cert(chain.clone(), key.clone_key())?;

        let clients =
            rustls::ServerConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions()?;
        let client_server = match &files.client_ca {
            Some(client_ca) => {
                if certificates(client_ca)? == certificates(&files.ca)? {
                    return Err(TlsError::SharedCa(client_ca.clone()));
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots(client_ca)?, provider)
                    .allow_unauthenticated()
                    .build()?;
                clients.with_client_cert_verifier(verifier).with_single_cert(chain, key)?
            }
            None => clients.with_no_client_auth().with_single_cert(chain, key)?,
        };
        Ok(BrokerTls {
            peer_server: Arc::new(peer_server),
            peer_client: Arc::new(peer_client),
            client_server: Arc::new(client_server),
        })
    }
}

/// The user a verified client certificate names: its subject's common name.
pub fn certificate_user(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(name)
}

/// The name to check a dialed peer's certificate against: the host of `addr` (`host:port`).
pub fn server_name(addr: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::pki;

    #[test]
    fn a_client_certificate_names_its_user() {
        let ca = pki::Authority::generate("test CA").unwrap();
        let issued = ca.issue_client("alice", pki::Validity::days(1)).unwrap();
        let der = certificates_from(&issued.cert_pem);
        assert_eq!(certificate_user(&der[0]).as_deref(), Some("alice"));
    }

    #[test]
    fn server_names_come_from_addresses() {
        assert!(matches!(server_name("127.0.0.1:9101").unwrap(), rustls::pki_types::ServerName::IpAddress(_)));
        assert!(matches!(server_name("[::1]:9101").unwrap(), rustls::pki_types::ServerName::IpAddress(_)));
        assert!(matches!(server_name("broker-1.example:9101").unwrap(), rustls::pki_types::ServerName::DnsName(_)));
        assert!(server_name("bad host:1").is_err());
    }

    #[test]
    fn the_client_ca_must_not_be_the_cluster_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = pki::Authority::generate("test CA").unwrap();
        let broker = ca.issue_server("broker", &["127.0.0.1".into()], pki::Validity::days(1)).unwrap();
        let files = pki::write_broker_files(dir.path(), &ca, &broker).unwrap();
        assert!(BrokerTls::load(&files).is_ok());
        let shared = TlsFiles { client_ca: Some(files.ca.clone()), ..files };
        assert!(matches!(BrokerTls::load(&shared), Err(TlsError::SharedCa(_))));
    }

    fn certificates_from(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap()
    }
}
