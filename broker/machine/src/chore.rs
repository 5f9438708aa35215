//! Chores: deferred, bounded work that pulses do a slice at a time. A chore is a key of the
//! chores table, its kind and the id it is about; a revocation also keeps where it is in its value.

use crate::keys;
use crate::store::StoreError;

/// What a chore does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Chore {
    /// Delete a deleted topic's messages and idempotency records.
    PurgeTopic = 1,
    /// Delete a deleted group's pending records, leases and indexes.
    PurgeGroup = 2,
    /// Trim a topic further than one command may.
    TrimTopic = 3,
    /// End the leases of a user who may no longer hold them.
    RevokeLeases = 4,
}

/// A chores key names a kind no broker knows: the state is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown chore kind {0}")]
pub(crate) struct UnknownChore(pub u8);

impl TryFrom<u8> for Chore {
    type Error = UnknownChore;

    fn try_from(kind: u8) -> Result<Chore, UnknownChore> {
        [Chore::PurgeTopic, Chore::PurgeGroup, Chore::TrimTopic, Chore::RevokeLeases]
            .into_iter()
            .find(|chore| *chore as u8 == kind)
            .ok_or(UnknownChore(kind))
    }
}

impl Chore {
    /// The chores key of this chore for `id`.
    pub(crate) fn key(self, id: u64) -> Vec<u8> {
        keys::chore(self as u8, id)
    }

    /// The chore and id a chores key names.
    pub(crate) fn parse(key: &[u8]) -> Result<(Chore, u64), StoreError> {
        let (kind, id) = keys::ChoreKey::parse(key)?;
        Ok((Chore::try_from(kind).map_err(StoreError::new)?, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chore_keys_round_trip_and_unknown_kinds_are_errors() {
        for chore in [Chore::PurgeTopic, Chore::PurgeGroup, Chore::TrimTopic, Chore::RevokeLeases] {
            assert_eq!(Chore::parse(&chore.key(77)).unwrap(), (chore, 77));
        }
        assert_eq!(Chore::try_from(9), Err(UnknownChore(9)));
        assert!(Chore::parse(&keys::chore(9, 1)).is_err(), "a damaged state is an error, not a panic");
    }
}
