//! Certificates made with rcgen: a CA, broker certificates (server and client use, for both
//! ports) and client certificates (a user's name as the common name). `chorus up` makes a local CA
//! and one broker certificate for loopback; `chorus cert` issues more from a CA on disk; tests
//! make wrong ones on purpose (another CA, expired, another host name).
//!
//! Keys are ECDSA P-256. Files are written with mode 0600 for keys.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

pub use super::tls::TlsFiles;

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks differ a little) for `days` days.
    pub fn days(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity { not_before: now - Duration::hours(1), not_after: now + Duration::days(days) }
    }

    /// A certificate that expired yesterday, for tests.
    pub fn expired() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity { not_before: now - Duration::days(30), not_after: now - Duration::days(1) }
    }
}

/// A certificate and its private key, as PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority that can issue certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed CA valid for ten years.
    pub fn generate(common_name: &str) -> Result<Authority, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let validity = Validity::days(3650);
        (params.not_before, params.not_after) = (validity.not_before, validity.not_after);
        let cert = params.self_signed(&key)?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        Ok(Authority { issuer: Issuer::new(params, key), cert_pem, key_pem })
    }

    /// A CA read back from its certificate and key files.
    pub fn load(cert: &Path, key: &Path) -> Result<Authority, PkiError> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, KeyPair::from_pem(&key_pem)?)?;
        Ok(Authority { issuer, cert_pem, key_pem })
    }

    /// A broker's certificate: valid for `hosts` (names or IP addresses), for serving and for
    /// dialing other brokers.
    pub fn issue_server(&self, common_name: &str, hosts: &[String], validity: Validity) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name = name(common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, validity)
    }

    /// A client certificate for `user`: its common name is the user.
    pub fn issue_client(&self, user: &str, validity: Validity) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, validity)
    }

    fn sign(&self, mut params: CertificateParams, validity: Validity) -> Result<Issued, PkiError> {
        (params.not_before, params.not_after) = (validity.not_before, validity.not_after);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Read { path: path.to_owned(), source })
}

/// Writes `contents` to `path`; private keys (`secret`) readable by the owner only.
pub fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let failed = |source| PkiError::Write { path: path.to_owned(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    use std::io::Write;
    options.open(path).and_then(|mut file| file.write_all(contents.as_bytes())).map_err(failed)
}

/// Writes a broker's certificate, key and the CA certificate into `dir` as `broker.pem`,
/// `broker.key` and `ca.pem`, and says where they are.
pub fn write_broker_files(dir: &Path, ca: &Authority, broker: &Issued) -> Result<TlsFiles, PkiError> {
    let files =
        TlsFiles { cert: dir.join("broker.pem"), key: dir.join("broker.key"), ca: dir.join("ca.pem"), client_ca: None };
    write_file(&files.cert, &broker.cert_pem, false)?;
    write_file(&files.key, &broker.key_pem, true)?;
    write_file(&files.ca, &ca.cert_pem, false)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loaded_authority_issues_what_its_certificate_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::generate("test CA").unwrap();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        write_file(&cert, &ca.cert_pem, false).unwrap();
        write_file(&key, &ca.key_pem, true).unwrap();
        let loaded = Authority::load(&cert, &key).unwrap();
        let issued = loaded.issue_server("b1", &["127.0.0.1".into()], Validity::days(1)).unwrap();
        let files = write_broker_files(dir.path(), &ca, &issued).unwrap();
        assert!(super::super::tls::BrokerTls::load(&files).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "keys are the owner's alone");
        }
    }
}
