//! What the Raft log stores: the record kinds of its segments, how a stored entry encodes and
//! decodes, and the metadata it keeps in redb (the vote, the purge point, truncations and the
//! repair floor). The log store reads this layout and the write path writes it; neither imports
//! the other for it.

use chorus_protocol::pb;
use prost::Message;
use redb::TableDefinition;

use super::{Entry, wire};

/// The vote, the purge point, the truncations and the repair floor.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// Set while the log repairs damage: the index the state machine must apply again before this
/// broker votes or stands for election.
pub(super) const REPAIR_KEY: &str = "repair_floor";
pub(super) const VOTE_KEY: &str = "vote";
pub(super) const PURGED_KEY: &str = "purged";
/// The truncations segments still predate ([`Truncation`]).
pub(super) const TRUNCATIONS_KEY: &str = "truncations";

/// The first byte of a segment record: what the rest is.
pub(super) const RECORD_ENTRY: u8 = 0;
pub(super) const RECORD_COMMITTED: u8 = 1;
pub(super) const RECORD_COMMITTED_NONE: u8 = 2;

/// Entries from `from` on, in segments before `segment`, are gone: a truncation, or a log cut
/// or forgotten. Records stay where they were written until their segment is removed, so replay
/// applies each truncation before it reads segment `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Truncation {
    pub(super) segment: u64,
    pub(super) from: u64,
}

impl Truncation {
    pub(super) fn encode_all(truncations: &[Truncation]) -> Vec<u8> {
        truncations.iter().flat_map(|t| [t.segment.to_le_bytes(), t.from.to_le_bytes()]).flatten().collect()
    }

    /// `None` if `bytes` is not a whole number of truncations.
    pub(super) fn decode_all(bytes: &[u8]) -> Option<Vec<Truncation>> {
        if !bytes.len().is_multiple_of(16) {
            return None;
        }
        let u64_at = |chunk: &[u8], at: usize| u64::from_le_bytes(chunk[at..at + 8].try_into().expect("8 bytes"));
        Some(bytes.chunks_exact(16).map(|c| Truncation { segment: u64_at(c, 0), from: u64_at(c, 8) }).collect())
    }
}

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
    #[error("a segment record where an entry should be is not one")]
    NotAnEntry,
}

/// `entry` as the log stores it in a segment record, after `prefix`: its encoding, then a CRC-32
/// of that, written once here and checked on every read.
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

/// An entry as a segment record: [`RECORD_ENTRY`], then the entry as stored ([`stored_entry`]).
pub(super) fn entry_record(entry: &pb::RaftEntry) -> Vec<u8> {
    stored_entry(entry, &[RECORD_ENTRY])
}

/// The entry of index `index` in the segment record `record`.
pub(super) fn decode_entry_record(index: u64, record: &[u8]) -> Result<Entry, EntryDecodeError> {
    match record.split_first() {
        Some((&RECORD_ENTRY, stored)) => decode_entry_at(index, stored),
        _ => Err(EntryDecodeError::NotAnEntry),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn truncations_round_trip(pairs in prop::collection::vec((any::<u64>(), any::<u64>()), 0..8), cut in 1usize..16) {
            let truncations: Vec<Truncation> = pairs.iter().map(|&(segment, from)| Truncation { segment, from }).collect();
            let bytes = Truncation::encode_all(&truncations);
            prop_assert_eq!(Truncation::decode_all(&bytes), Some(truncations));
            if !bytes.is_empty() {
                prop_assert_eq!(Truncation::decode_all(&bytes[..bytes.len() - cut]), None, "a cut list decoded");
            }
        }
    }
}
