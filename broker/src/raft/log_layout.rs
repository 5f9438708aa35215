//! What the Raft log keeps in redb: its two tables, the metadata keys, and how a stored entry
//! decodes. The log store reads this layout and the write path writes it; neither imports the
//! other for it.

use chorus_protocol::pb;
use prost::Message;
use redb::TableDefinition;

use super::{Entry, wire};

/// Entries by index, each an encoded `pb::RaftEntry` followed by its CRC-32 ([`stored_entry`]).
pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// The vote, the committed id, the purge point, the write-ahead epoch and the repair floor.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// Set while the log repairs damage: the index the state machine must apply again before this
/// broker votes or stands for election.
pub(super) const REPAIR_KEY: &str = "repair_floor";
pub(super) const VOTE_KEY: &str = "vote";
pub(super) const COMMITTED_KEY: &str = "committed";
pub(super) const PURGED_KEY: &str = "purged";

/// Bytes after each stored entry: its checksum.
const CHECKSUM_BYTES: usize = 4;

/// Why stored bytes are not a log entry.
#[derive(Debug, thiserror::Error)]
pub(super) enum EntryDecodeError {
    #[error("a stored log entry is damaged: it fails its checksum")]
    Checksum,
    #[error("a stored log entry does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("a stored log entry is incomplete: {0}")]
    Incomplete(#[from] wire::WireError),
    #[error("the log entry stored at index {at} is entry {found}")]
    Misplaced { at: u64, found: u64 },
}

/// `entry` as the log stores it, in the write-ahead file and in redb: its encoding, then a
/// CRC-32 of that, written once here and checked on every read.
pub(super) fn stored_entry(entry: &pb::RaftEntry, prefix: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(prefix.len() + entry.encoded_len() + CHECKSUM_BYTES);
    stored.extend_from_slice(prefix);
    entry.encode(&mut stored).expect("a Vec grows to fit");
    let crc = crc32fast::hash(&stored[prefix.len()..]);
    stored.extend_from_slice(&crc.to_le_bytes());
    stored
}

/// The entry stored as `stored`, if its checksum holds.
pub(super) fn decode_entry(stored: &[u8]) -> Result<Entry, EntryDecodeError> {
    let split = stored.len().checked_sub(CHECKSUM_BYTES).ok_or(EntryDecodeError::Checksum)?;
    let (encoded, crc) = stored.split_at(split);
    if crc32fast::hash(encoded) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(EntryDecodeError::Checksum);
    }
    Ok(wire::entry_from_pb(pb::RaftEntry::decode(encoded)?)?)
}

/// The entry stored under `index`: its checksum holds and it is the entry of that index.
pub(super) fn decode_entry_at(index: u64, stored: &[u8]) -> Result<Entry, EntryDecodeError> {
    let entry = decode_entry(stored)?;
    if entry.log_id.index != index {
        return Err(EntryDecodeError::Misplaced { at: index, found: entry.log_id.index });
    }
    Ok(entry)
}
