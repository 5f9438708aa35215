//! State checks: the brokers' applied states compared at the same log index. A
//! `MarkStateCheck` command marks an index; every broker, as it applies that entry, commits it
//! on its own and takes a SHA-256 digest of its state exactly there ([`digest_state`], off the
//! apply path), so equal logs must give equal digests: the machine is deterministic. The leader
//! proposes a mark now and then, carrying the digest it took at the previous one
//! ([`DigestClaim`]); each broker compares it with its own and raises a loud alert on a
//! difference. `chorus check` marks an index and asks every broker for its digest there.
//!
//! Only the last [`CHECKS_KEPT`] marks are kept, in memory: a broker that restarted has no
//! digest for the marks before, and compares nothing there.

use std::collections::BTreeMap;

use chorus_machine::{DigestClaim, Table};
use redb::{ReadTransaction, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::storage::digestible;

/// Bytes of a digest.
pub const DIGEST_BYTES: usize = 32;
/// Marks whose digests a broker keeps.
pub const CHECKS_KEPT: usize = 16;
/// Mismatches a broker remembers.
const MISMATCHES_KEPT: usize = 64;

pub type StateDigest = [u8; DIGEST_BYTES];

/// What a broker knows of the marks it applied.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    /// By marked index: `None` while the digest is being taken.
    digests: BTreeMap<u64, Option<StateDigest>>,
    /// Other brokers' digests waiting for this broker's at their index.
    waiting: BTreeMap<u64, Vec<DigestClaim>>,
    /// Marks at which this broker's digest differed from another broker's: (index, other).
    mismatches: Vec<(u64, u64)>,
    /// Other brokers' digests compared with this broker's, equal or not.
    compared: u64,
}

impl Checks {
    /// This broker's digest at `index`: `None` if it took none there, `Some(None)` while it is
    /// being taken.
    pub fn digest_at(&self, index: u64) -> Option<Option<StateDigest>> {
        self.digests.get(&index).copied()
    }

    /// The digest of the latest mark whose digest is done.
    pub fn latest(&self) -> Option<(u64, StateDigest)> {
        self.digests.iter().rev().find_map(|(index, digest)| digest.map(|digest| (*index, digest)))
    }

    /// Marks at which this broker's digest differed from another broker's: (index, other).
    pub fn mismatches(&self) -> &[(u64, u64)] {
        &self.mismatches
    }

    /// How many other brokers' digests were compared with this broker's.
    pub fn compared(&self) -> u64 {
        self.compared
    }

    fn compare(&mut self, digest: &StateDigest, claim: &DigestClaim) {
        self.compared += 1;
        if claim.digest.as_slice() == digest.as_slice() {
            tracing::debug!(index = claim.index, other = claim.broker, "state digests agree");
            return;
        }
        tracing::error!(
            index = claim.index,
            other_broker = claim.broker,
            this = %hex(digest),
            other = %hex(&claim.digest),
            "STATE DIVERGENCE: this broker's applied state at index {} differs from broker {}'s; \
             one of them is damaged or not deterministic. Run `chorus check` to see which brokers agree",
            claim.index,
            claim.broker
        );
        if self.mismatches.len() == MISMATCHES_KEPT {
            self.mismatches.remove(0);
        }
        self.mismatches.push((claim.index, claim.broker));
    }
}

/// A broker's state checks, shared by its state machine (which takes digests) and its server
/// (which reports them).
#[derive(Debug, Clone)]
pub struct StateChecks {
    checks: std::sync::Arc<watch::Sender<Checks>>,
}

impl Default for StateChecks {
    fn default() -> StateChecks {
        StateChecks { checks: std::sync::Arc::new(watch::Sender::new(Checks::default())) }
    }
}

impl StateChecks {
    /// Follows the checks as digests complete.
    pub fn subscribe(&self) -> watch::Receiver<Checks> {
        self.checks.subscribe()
    }

    /// A digest at `index` is being taken.
    pub fn begin(&self, index: u64) {
        self.checks.send_modify(|checks| {
            checks.digests.insert(index, None);
            while checks.digests.len() > CHECKS_KEPT {
                checks.digests.pop_first();
            }
            let digests = &checks.digests;
            checks.waiting.retain(|waiting, _| digests.contains_key(waiting));
        });
    }

    /// The digest at `index` is done (`None`: it failed, and is dropped); claims waiting for it
    /// are compared now.
    pub fn finish(&self, index: u64, digest: Option<StateDigest>) {
        self.checks.send_modify(|checks| match digest {
            Some(digest) => {
                if let Some(slot) = checks.digests.get_mut(&index) {
                    *slot = Some(digest);
                }
                for claim in checks.waiting.remove(&index).unwrap_or_default() {
                    checks.compare(&digest, &claim);
                }
            }
            None => {
                checks.digests.remove(&index);
                checks.waiting.remove(&index);
            }
        });
    }

    /// Another broker's digest: compared with this broker's at its index now, or once it is
    /// done; ignored if this broker took none there.
    pub fn claim(&self, claim: DigestClaim) {
        self.checks.send_modify(|checks| match checks.digests.get(&claim.index).copied() {
            Some(Some(digest)) => checks.compare(&digest, &claim),
            Some(None) => checks.waiting.entry(claim.index).or_default().push(claim),
            None => tracing::debug!(index = claim.index, "no digest of this broker's at a claimed index"),
        });
    }
}

/// SHA-256 over every table of the machine's state in `txn`, in table and key order: each
/// table's number, then each key and value with their lengths. Every value is checked against
/// its checksum on the way: a damaged one fails the digest.
pub fn digest_state(txn: &ReadTransaction) -> Result<StateDigest, DigestError> {
    let mut hasher = Sha256::new();
    for table in Table::ALL {
        hasher.update([table as u8]);
        let definition: TableDefinition<&[u8], &[u8]> = TableDefinition::new(table.name());
        let opened = txn.open_table(definition).map_err(|e| DigestError::Redb(e.into()))?;
        for item in opened.iter().map_err(|e| DigestError::Redb(e.into()))? {
            let (key, stored) = item.map_err(|e| DigestError::Redb(e.into()))?;
            let (key, stored) = (key.value(), stored.value());
            let value = digestible(table, key, stored).map_err(DigestError::Damaged)?;
            hasher.update((key.len() as u64).to_le_bytes());
            hasher.update(key);
            hasher.update((value.len() as u64).to_le_bytes());
            hasher.update(value);
        }
    }
    Ok(hasher.finalize().into())
}

/// Why a digest could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("reading the state: {0}")]
    Redb(redb::Error),
    #[error("{0}")]
    Damaged(crate::storage::CorruptValue),
}

/// `bytes` in lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(index: u64, broker: u64, digest: StateDigest) -> DigestClaim {
        DigestClaim { index, broker, digest: digest.to_vec() }
    }

    #[test]
    fn a_claim_is_compared_now_or_once_the_digest_is_done() {
        let checks = StateChecks::default();
        checks.begin(10);
        checks.claim(claim(10, 2, [1; 32]));
        assert!(checks.subscribe().borrow().mismatches().is_empty(), "compared before the digest was done");
        checks.finish(10, Some([2; 32]));
        assert_eq!(checks.subscribe().borrow().mismatches(), &[(10, 2)]);
        checks.claim(claim(10, 3, [2; 32]));
        assert_eq!(checks.subscribe().borrow().mismatches(), &[(10, 2)], "an equal digest is no mismatch");
        checks.claim(claim(99, 3, [9; 32]));
        assert_eq!(checks.subscribe().borrow().mismatches().len(), 1, "a mark this broker never took");
        assert_eq!(checks.subscribe().borrow().latest(), Some((10, [2; 32])));
    }

    #[test]
    fn only_the_last_marks_are_kept() {
        let checks = StateChecks::default();
        for index in 0..(CHECKS_KEPT as u64 + 5) {
            checks.begin(index);
            checks.finish(index, Some([index as u8; 32]));
        }
        let kept = checks.subscribe().borrow().clone();
        assert_eq!(kept.digest_at(0), None);
        assert_eq!(kept.digest_at(CHECKS_KEPT as u64 + 4), Some(Some([CHECKS_KEPT as u8 + 4; 32])));
    }
}
