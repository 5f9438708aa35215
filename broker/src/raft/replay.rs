//! Replay of a stopped broker's committed log onto its state, as a restart does before it serves:
//! for tools that read a stopped broker's data (`chorus inspect`). After a kill -9 the state on
//! disk is the last durable one (a snapshot's), and the log holds what was committed since.

use openraft::StorageError;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};

use super::NodeId;
use super::log_store::LogStore;
use super::state_store::StateStore;

/// Entries applied per step, so a long replay holds a bounded number in memory.
const REPLAY_ENTRIES_PER_STEP: u64 = 1024;

/// Applies the committed entries the state has not; returns how many it applied.
pub async fn replay_committed(log: &mut LogStore, state: &mut StateStore) -> Result<u64, StorageError<NodeId>> {
    let (applied, _) = state.applied_state().await?;
    let Some(committed) = log.read_committed().await? else { return Ok(0) };
    let mut next = applied.map_or(0, |id| id.index + 1);
    let first = next;
    while next <= committed.index {
        let last = committed.index.min(next + REPLAY_ENTRIES_PER_STEP - 1);
        let entries = log.try_get_log_entries(next..=last).await?;
        let Some(got) = entries.last().map(|entry| entry.log_id.index) else { break };
        state.apply(entries).await?;
        next = got + 1;
    }
    Ok(next - first)
}
