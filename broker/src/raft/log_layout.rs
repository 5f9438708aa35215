//! What the Raft log keeps in redb: its two tables, the metadata keys, and how a stored entry
//! decodes. The log store reads this layout and the write path writes it; neither imports the
//! other for it.

use chorus_protocol::pb;
use prost::Message;
use redb::TableDefinition;

use super::{Entry, wire};

/// Entries by index, each an encoded `pb::RaftEntry`.
pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// The vote, the committed id, the purge point and the write-ahead epoch.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
pub(super) const VOTE_KEY: &str = "vote";
pub(super) const COMMITTED_KEY: &str = "committed";
pub(super) const PURGED_KEY: &str = "purged";

/// Why stored bytes are not a log entry.
#[derive(Debug, thiserror::Error)]
pub(super) enum EntryDecodeError {
    #[error("a stored log entry does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("a stored log entry is incomplete: {0}")]
    Incomplete(#[from] wire::WireError),
}

/// The entry stored as `bytes`.
pub(super) fn decode_entry(bytes: &[u8]) -> Result<Entry, EntryDecodeError> {
    Ok(wire::entry_from_pb(pb::RaftEntry::decode(bytes)?)?)
}
