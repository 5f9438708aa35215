//! The cluster secret: how brokers without TLS prove to each other that they belong to the same
//! cluster, without ever sending the secret. Each side proves it by an HMAC-SHA256 over both
//! sides' fresh nonces and the connection's preamble, so a recorded exchange cannot be replayed
//! and neither side can be impersonated by relaying the other.
//!
//! A secret file holds one secret per line (blank lines and `#` comments aside), each at least
//! [`SECRET_BYTES_MIN`] bytes. The first line is the one a broker proves with when it dials; any
//! line is accepted from a dialer. To rotate: add the new secret as a second line everywhere,
//! then move it first everywhere, then remove the old one.

use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Shortest secret accepted: 128 bits of hex.
pub const SECRET_BYTES_MIN: usize = 32;
/// Bytes of each side's nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of a proof (an HMAC-SHA256).
pub const PROOF_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why a secret file is not usable.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the cluster secret {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the cluster secret file {0} holds no secret")]
    Empty(PathBuf),
    #[error("a cluster secret in {path} is {len} bytes; at least {SECRET_BYTES_MIN} are needed")]
    Short { path: PathBuf, len: usize },
}

/// Which side of the handshake a proof comes from: the two proofs of one exchange differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Dialer,
    Listener,
}

/// The secrets a broker holds: the first proves, any verifies.
#[derive(Clone)]
pub struct ClusterSecret {
    secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSecret").field("secrets", &self.secrets.len()).finish()
    }
}

impl ClusterSecret {
    pub fn load(path: &Path) -> Result<ClusterSecret, SecretError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SecretError::Read { path: path.to_owned(), source })?;
        ClusterSecret::parse(&text, path)
    }

    /// Parses a secret file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ClusterSecret, SecretError> {
        let secrets: Vec<Vec<u8>> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| line.as_bytes().to_vec())
            .collect();
        if let Some(short) = secrets.iter().find(|s| s.len() < SECRET_BYTES_MIN) {
            return Err(SecretError::Short { path: path.to_owned(), len: short.len() });
        }
        if secrets.is_empty() {
            return Err(SecretError::Empty(path.to_owned()));
        }
        Ok(ClusterSecret { secrets })
    }

    /// This side's proof over the exchange, made with the first secret.
    pub fn prove(&self, side: Side, transcript: &[u8]) -> [u8; PROOF_BYTES] {
        proof(&self.secrets[0], side, transcript)
    }

    /// The secret, of those held, that made `claimed` for `side` over the exchange; checked in
    /// constant time. The listener answers with a proof by the same secret.
    pub fn verify(&self, side: Side, transcript: &[u8], claimed: &[u8]) -> Option<ClusterSecret> {
        let matched = self.secrets.iter().find(|secret| mac(secret, side, transcript).verify_slice(claimed).is_ok())?;
        Some(ClusterSecret { secrets: vec![matched.clone()] })
    }
}

fn mac(secret: &[u8], side: Side, transcript: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(match side {
        Side::Dialer => b"chorus peer v1 dialer",
        Side::Listener => b"chorus peer v1 listener",
    });
    mac.update(transcript);
    mac
}

fn proof(secret: &[u8], side: Side, transcript: &[u8]) -> [u8; PROOF_BYTES] {
    mac(secret, side, transcript).finalize().into_bytes().into()
}

/// A new secret for a new cluster: 32 random bytes as hex.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> ClusterSecret {
        ClusterSecret::parse(text, Path::new("test")).unwrap()
    }

    #[test]
    fn files_need_long_enough_secrets() {
        let path = Path::new("f");
        assert!(matches!(ClusterSecret::parse("# nothing\n\n", path), Err(SecretError::Empty(_))));
        assert!(matches!(ClusterSecret::parse("short\n", path), Err(SecretError::Short { len: 5, .. })));
        assert_eq!(generate().len(), 64);
        assert_ne!(generate(), generate());
    }

    #[test]
    fn proofs_bind_the_secret_the_side_and_the_exchange() {
        let ours = secret(&generate());
        let transcript = b"preamble and nonces";
        let proof = ours.prove(Side::Dialer, transcript);
        assert!(ours.verify(Side::Dialer, transcript, &proof).is_some());
        assert!(ours.verify(Side::Listener, transcript, &proof).is_none(), "a dialer's proof is no listener's");
        assert!(ours.verify(Side::Dialer, b"another exchange", &proof).is_none(), "no replay");
        assert!(secret(&generate()).verify(Side::Dialer, transcript, &proof).is_none(), "another cluster");
        assert!(ours.verify(Side::Dialer, transcript, &proof[..31]).is_none());
    }

    #[test]
    fn during_a_rotation_either_secret_is_accepted() {
        let (old, new) = (generate(), generate());
        let rotating = secret(&format!("{new}\n{old}\n"));
        let old_broker = secret(&old);
        let transcript = b"x";
        let from_old = old_broker.prove(Side::Dialer, transcript);
        let matched = rotating.verify(Side::Dialer, transcript, &from_old).expect("the old secret still counts");
        // The answer is proved with the secret the dialer used, which the dialer can check.
        let answer = matched.prove(Side::Listener, transcript);
        assert!(old_broker.verify(Side::Listener, transcript, &answer).is_some());
        let from_new = rotating.prove(Side::Dialer, transcript);
        assert!(old_broker.verify(Side::Dialer, transcript, &from_new).is_none(), "old brokers need the new line");
    }
}
