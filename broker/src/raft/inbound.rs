//! What a broker checks in a peer's Raft RPC before openraft sees it. Peers are authenticated, so
//! these guard against a buggy or damaged peer, not a stranger; but one bad entry in every log
//! would stop every broker, so nothing is taken on trust:
//!
//! - every normal entry must decode as the state machine's `Entry`: an entry that would fail at
//!   apply time is refused at append time, before any log holds it;
//! - a snapshot's id names a file in the data directory, so it must be a plain name.

use chorus_protocol::pb;
use openraft::EntryPayload;
use openraft::raft::AppendEntriesRequest;
use prost::Message;

use super::TypeConfig;
use crate::command;

/// Longest snapshot id accepted.
pub const SNAPSHOT_ID_BYTES_MAX: usize = 128;

/// A peer's RPC that must not reach openraft.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("entry {index} does not decode: {source}")]
    Undecodable { index: u64, source: EntryError },
    #[error("snapshot id {0:?} is not a plain name")]
    SnapshotId(String),
}

/// Refuses an append holding an entry the state machine could not apply.
pub fn check_append(request: &AppendEntriesRequest<TypeConfig>) -> Result<(), InboundError> {
    for entry in &request.entries {
        if let EntryPayload::Normal(bytes) = &entry.payload {
            decode_entry(entry.log_id.index, bytes.0.clone())?;
        }
    }
    Ok(())
}

/// Why an entry's bytes are not an entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error(transparent)]
    Decode(prost::DecodeError),
    #[error(transparent)]
    Convert(command::ConvertError),
}

/// Decodes a normal entry's bytes as the state machine applies them.
pub fn decode_entry(index: u64, bytes: bytes::Bytes) -> Result<chorus_machine::Entry, InboundError> {
    let undecodable = |source| InboundError::Undecodable { index, source };
    let decoded = pb::Entry::decode(bytes).map_err(|e| undecodable(EntryError::Decode(e)))?;
    command::entry_from_pb(decoded).map_err(|e| undecodable(EntryError::Convert(e)))
}

/// Refuses a snapshot id that is not 1 to 128 letters, digits and dashes: it becomes a file name.
pub fn check_snapshot_id(id: &str) -> Result<(), InboundError> {
    let plain = !id.is_empty()
        && id.len() <= SNAPSHOT_ID_BYTES_MAX
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if plain { Ok(()) } else { Err(InboundError::SnapshotId(id.to_owned())) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, EntryBytes, LogId};
    use openraft::CommittedLeaderId;

    fn append(payloads: Vec<EntryPayload<TypeConfig>>) -> AppendEntriesRequest<TypeConfig> {
        let entries = payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1), payload })
            .collect();
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            entries,
            leader_commit: None,
        }
    }

    #[test]
    fn undecodable_entries_are_refused_before_the_log() {
        let good = pb::Entry { time_ms: 5, commands: Vec::new() }.encode_to_vec();
        let fine = append(vec![EntryPayload::Blank, EntryPayload::Normal(EntryBytes(good.into()))]);
        assert!(check_append(&fine).is_ok());
        let garbage =
            append(vec![EntryPayload::Blank, EntryPayload::Normal(EntryBytes(vec![0xff, 0xff, 0xff].into()))]);
        assert!(matches!(check_append(&garbage), Err(InboundError::Undecodable { index: 2, .. })));
        // Decodes as protobuf, but a command without its operation is no command.
        let hollow = pb::Entry { time_ms: 5, commands: vec![pb::Command { op: None, actor: None }] }.encode_to_vec();
        let hollow = append(vec![EntryPayload::Normal(EntryBytes(hollow.into()))]);
        assert!(matches!(check_append(&hollow), Err(InboundError::Undecodable { index: 1, .. })));
    }

    #[test]
    fn snapshot_ids_are_plain_names() {
        assert!(check_snapshot_id("3-1-120-1733150000000000000").is_ok());
        for bad in ["", "/etc/passwd", "../../x", "a/b", "a.snap", "é", &"a".repeat(SNAPSHOT_ID_BYTES_MAX + 1)] {
            assert!(check_snapshot_id(bad).is_err(), "{bad:?}");
        }
    }
}
