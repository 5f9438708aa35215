//! Repair of a log that lost entries to damage, by the rule of Protocol-Aware Recovery (Alagappan
//! et al., FAST 2018): a broker whose log is damaged may not help elect a leader until a leader
//! has given it back everything it had.
//!
//! Opening the log ([`super::log_write::recover`]) cuts it before the first damaged entry and
//! records a **repair floor**: the greatest index it had reached. Until the state machine has
//! applied that index again, the broker neither votes nor stands for election; it follows a
//! leader as usual, which sends it the entries (or a snapshot) it lost. Then the floor is cleared,
//! durably, and the broker votes again.
//!
//! Why this is safe: an acknowledged entry is on a majority. A leader elected without the damaged
//! brokers' votes was elected by a majority of whole logs, which meets that majority in a broker
//! that still has the entry, so the leader has it (Raft's election restriction). A damaged broker
//! that voted could instead make up that majority with its shortened log and elect a leader
//! without the entry. Applying up to the floor means the entries up to it are committed and
//! match the leader's, so everything the broker held before the damage, and that may count in a
//! majority, is back. If a majority is damaged, no leader can be elected: the cluster refuses
//! writes rather than lose them.

use std::sync::{Arc, Mutex};

use redb::Durability;

use super::log_layout::{META, REPAIR_KEY};
use super::log_write::Shared;

/// A log's repair: its floor while under way, and the means to finish it.
#[derive(Clone)]
pub struct LogRepair {
    shared: Arc<Shared>,
    floor: Arc<Mutex<Option<u64>>>,
}

impl std::fmt::Debug for LogRepair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogRepair").field("floor", &self.floor()).finish()
    }
}

/// Why a finished repair could not be recorded.
#[derive(Debug, thiserror::Error)]
#[error("cannot record that the log's repair finished: {0}")]
pub struct RepairError(#[from] redb::Error);

impl LogRepair {
    pub(super) fn new(shared: Arc<Shared>, floor: Option<u64>) -> LogRepair {
        LogRepair { shared, floor: Arc::new(Mutex::new(floor)) }
    }

    /// The index the state machine must apply before this broker votes, while a repair is under
    /// way.
    pub fn floor(&self) -> Option<u64> {
        *self.floor.lock().expect("repair lock")
    }

    /// Raises the floor to `floor`: the caller has recorded it durably.
    pub(super) fn raise(&self, floor: u64) {
        let mut current = self.floor.lock().expect("repair lock");
        *current = Some(current.unwrap_or(0).max(floor));
    }

    /// Whether a state machine that applied `applied` has repaired the log.
    pub fn repaired_by(&self, applied: Option<u64>) -> bool {
        match self.floor() {
            Some(floor) => applied.is_some_and(|applied| applied >= floor),
            None => true,
        }
    }

    /// Clears the floor, durably, before the broker may vote again. One small redb transaction,
    /// once per repair.
    pub fn finish(&self) -> Result<(), RepairError> {
        let mut txn = self.shared.db.begin_write().map_err(redb::Error::from)?;
        txn.set_durability(Durability::Immediate).map_err(redb::Error::from)?;
        txn.open_table(META).map_err(redb::Error::from)?.remove(REPAIR_KEY).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        *self.floor.lock().expect("repair lock") = None;
        Ok(())
    }
}
