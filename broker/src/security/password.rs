//! Users' passwords. A password is hashed once, by the broker that takes the request, into an
//! argon2id PHC string (random salt, argon2's default cost: 19 MiB, 2 passes); only the hash
//! enters the log. Checking a password costs the same tens of milliseconds on purpose, so:
//!
//! - checks run on the blocking pool, a few at a time ([`CHECKS_AT_ONCE`]), never on the runtime;
//! - a successful check is remembered, as a keyed digest of (user, stored hash, password) under
//!   a key that lives only in this process, so a reconnecting client costs a hash lookup. A new
//!   password is a new stored hash, which no remembered digest matches;
//! - an unknown user is checked against a decoy hash, so timing does not tell which users exist.
//!
//! argon2 compares the derived hash in constant time.

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::Semaphore;

/// Password checks running at once on one broker.
pub const CHECKS_AT_ONCE: usize = 2;
/// Successful checks remembered; past it, the memory starts over.
const REMEMBERED_MAX: usize = 4096;
/// Longest password accepted, in bytes.
pub const PASSWORD_BYTES_MAX: usize = 1024;

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("a password must be 1 to {PASSWORD_BYTES_MAX} bytes")]
    Length,
    #[error("hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("hashing stopped before it finished")]
    Stopped,
}

/// Hashes `password` with a fresh random salt.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    if password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
        return Err(PasswordError::Length);
    }
    let hashed = Argon2::default().hash_password(password.as_bytes()).map_err(PasswordError::Hash)?;
    Ok(hashed.to_string())
}

/// Hashes `password` on a blocking thread: argon2 takes tens of milliseconds of CPU, which must
/// not stall the async workers.
pub async fn hash_off_thread(password: String) -> Result<String, PasswordError> {
    tokio::task::spawn_blocking(move || hash(&password)).await.map_err(|_| PasswordError::Stopped)?
}

/// Checks passwords against stored hashes, a few at a time, remembering what passed.
pub struct Checker {
    permits: Semaphore,
    key: [u8; 32],
    passed: Mutex<BTreeSet<[u8; 32]>>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker").finish_non_exhaustive()
    }
}

impl Default for Checker {
    fn default() -> Checker {
        Checker { permits: Semaphore::new(CHECKS_AT_ONCE), key: rand::random(), passed: Mutex::default() }
    }
}

impl Checker {
    /// Whether `password` is `user`'s, whose stored hash is `stored` (`None`: no such user, or
    /// one without a password).
    pub async fn check(&self, user: &str, stored: Option<&str>, password: &str) -> bool {
        if password.len() > PASSWORD_BYTES_MAX {
            return false;
        }
        let digest = stored.map(|stored| self.digest(user, stored, password));
        if digest.is_some_and(|d| self.passed.lock().expect("password memory").contains(&d)) {
            return true;
        }
        let Ok(_permit) = self.permits.acquire().await else { return false };
        let (stored_or_decoy, password_owned) = (stored.unwrap_or_else(|| decoy()).to_owned(), password.to_owned());
        let matches = tokio::task::spawn_blocking(move || {
            Argon2::default().verify_password(password_owned.as_bytes(), stored_or_decoy.as_str()).is_ok()
        })
        .await
        .unwrap_or(false);
        let Some(digest) = digest.filter(|_| matches) else { return false };
        let mut passed = self.passed.lock().expect("password memory");
        if passed.len() >= REMEMBERED_MAX {
            passed.clear();
        }
        passed.insert(digest);
        true
    }

    fn digest(&self, user: &str, stored: &str, password: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        for part in [user, stored, password] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }
}

/// A hash no password is checked to match, made once: what an unknown user is checked against.
fn decoy() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash(&crate::security::secret::generate()).expect("hashing a generated password"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_check_against_their_hash_only() {
        let checker = Checker::default();
        let stored = hash("correct horse").unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert_ne!(hash("correct horse").unwrap(), stored, "salts differ");
        assert!(checker.check("alice", Some(&stored), "correct horse").await);
        assert!(checker.check("alice", Some(&stored), "correct horse").await, "remembered");
        assert!(!checker.check("alice", Some(&stored), "wrong").await);
        assert!(!checker.check("ghost", None, "correct horse").await, "no such user");
        let changed = hash("battery staple").unwrap();
        assert!(!checker.check("alice", Some(&changed), "correct horse").await, "a changed password forgets the old");
        assert!(matches!(hash(""), Err(PasswordError::Length)));
    }
}
