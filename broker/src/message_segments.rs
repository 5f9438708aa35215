//! Where the state machine's message batches keep their bytes. A value of the `messages` table of
//! [`VALUE_INLINE_BYTES_MIN`] bytes or more is appended to a segment file (`state.segments/`),
//! written once, and redb holds a [`Pointer`] to it instead of the value: no payload is copied into
//! a B-tree page. A segment record carries a CRC-32 of its segment, length and bytes, the pointer
//! a CRC-32 of the bytes; both are checked on every read ([`read`]).
//!
//! Appends are not synced, like the state's redb commits: the log holds every committed entry.
//! Before any durable commit of the state, [`MessageSegments::sync`] makes every segment written
//! since the last one durable, so a durable pointer never points at bytes a power loss could take.
//! The append position and each segment's live bytes go into the same redb transaction as the
//! pointers ([`Accounting::record`]). Opening cuts the newest segment back to the recorded position
//! (what lies past it belongs to applies a crash undid; applying them again writes them again) and
//! removes the segments the state does not point into. A segment whose live bytes reach zero is
//! removed after a durable commit that says so ([`MessageSegments::remove_dead`]).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, RwLock};

use redb::{ReadableTable, ReadableTableMetadata, StorageBackend, TableDefinition, TableHandle, WriteTransaction};

use crate::raft::segment::{self, SEGMENT_BYTES_MAX};
use crate::raft::segment_files::SegmentFiles;

/// Values at least this long go to a segment; shorter ones stay in redb, where a pointer and a
/// segment record would cost more than the value. One publish's batch is one value, so a batch of
/// small messages goes to a segment too.
pub const VALUE_INLINE_BYTES_MIN: usize = 2048;

/// Segment id -> the bytes of values that still point into it.
const LIVE: TableDefinition<u64, u64> = TableDefinition::new("message_segments_live");
/// `APPEND_KEY` -> the segment appends go to and the end of what the state points at in it.
const APPEND: TableDefinition<&str, (u64, u64)> = TableDefinition::new("message_segments_append");
const APPEND_KEY: &str = "append";

/// Where a value lies: its segment, where its record starts, its length and its CRC-32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    pub segment: u64,
    pub at: u64,
    pub len: u32,
    pub crc: u32,
}

/// Bytes of an encoded pointer.
pub const POINTER_BYTES: usize = 24;

impl Pointer {
    pub fn encode(&self) -> [u8; POINTER_BYTES] {
        let mut bytes = [0u8; POINTER_BYTES];
        bytes[..8].copy_from_slice(&self.segment.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.at.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.len.to_le_bytes());
        bytes[20..].copy_from_slice(&self.crc.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<Pointer> {
        let bytes: &[u8; POINTER_BYTES] = bytes.try_into().ok()?;
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        Some(Pointer {
            segment: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
            at: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
            len: u32_at(16),
            crc: u32_at(20),
        })
    }
}

/// A `messages` value as redb stores it (before its checksum): a tag, then the value itself or a
/// pointer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored<'v> {
    Inline(&'v [u8]),
    Pointer(Pointer),
}

const TAG_INLINE: u8 = 0;
const TAG_POINTER: u8 = 1;

impl<'v> Stored<'v> {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Stored::Inline(value) => {
                out.push(TAG_INLINE);
                out.extend_from_slice(value);
            }
            Stored::Pointer(pointer) => {
                out.push(TAG_POINTER);
                out.extend_from_slice(&pointer.encode());
            }
        }
    }

    /// `None` if `stored` is neither.
    pub fn decode(stored: &'v [u8]) -> Option<Stored<'v>> {
        match stored.split_first()? {
            (&TAG_INLINE, value) => Some(Stored::Inline(value)),
            (&TAG_POINTER, pointer) => Pointer::decode(pointer).map(Stored::Pointer),
            _ => None,
        }
    }

    /// What a state digest takes of it: the value, or the length and checksum of a value in a
    /// segment, never where it lies, which differs from broker to broker.
    pub fn digestible(&self) -> Vec<u8> {
        match self {
            Stored::Inline(value) => [&[TAG_INLINE], *value].concat(),
            Stored::Pointer(pointer) => {
                [&[TAG_POINTER][..], &pointer.len.to_le_bytes(), &pointer.crc.to_le_bytes()].concat()
            }
        }
    }
}

/// The segments' files that readers may read, by id.
pub type Readable = Arc<BTreeMap<u64, Arc<dyn StorageBackend>>>;

/// The value `pointer` points at, read from `readable`; `None` if it is damaged (a checksum or
/// the length fails, or its segment is gone).
pub fn read(readable: &Readable, pointer: &Pointer) -> io::Result<Option<Vec<u8>>> {
    let Some(file) = readable.get(&pointer.segment) else {
        return Ok(None);
    };
    let value = segment::read_record(file.as_ref(), pointer.segment, pointer.at, pointer.len as usize)?;
    Ok(value.filter(|value| crc32fast::hash(value) == pointer.crc))
}

/// The newest segment, which takes appends.
struct Appending {
    id: u64,
    file: Arc<dyn StorageBackend>,
    end: u64,
    /// Segments written since the last sync.
    unsynced: Vec<(u64, Arc<dyn StorageBackend>)>,
}

/// A state's message segments.
pub struct MessageSegments {
    files: Box<dyn SegmentFiles>,
    appending: Mutex<Appending>,
    readable: RwLock<Readable>,
    /// Removed segments whose handles readers may still use: a read transaction begun before the
    /// removal may point into them. Dropped at the next removal.
    retired: Mutex<Vec<u64>>,
}

impl std::fmt::Debug for MessageSegments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageSegments")
    }
}

/// Why the message segments could not open.
#[derive(Debug, thiserror::Error)]
pub enum SegmentsOpenError {
    #[error("message segment: {0}")]
    Io(#[from] io::Error),
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("the state points into message segment {0}, which is missing")]
    Missing(u64),
    #[error(
        "state.redb holds message batches but no message segment accounting: it was written by a Chorus from before message segments, which this one does not read; start this broker on an empty data directory (and replace it in the cluster)"
    )]
    OldLayout,
}

impl MessageSegments {
    /// Opens `files` for the state `txn` holds (and creates the accounting tables there): cuts
    /// the newest segment back to the recorded position, and removes every segment the state
    /// does not point into. Commit `txn` after.
    pub fn open(files: Box<dyn SegmentFiles>, txn: &WriteTransaction) -> Result<MessageSegments, SegmentsOpenError> {
        if written_before_segments(txn)? {
            return Err(SegmentsOpenError::OldLayout);
        }
        let live = read_live(&txn.open_table(LIVE).map_err(redb::Error::from)?)?;
        let (id, end) = read_append(&txn.open_table(APPEND).map_err(redb::Error::from)?)?.unwrap_or((1, 0));
        let ids = files.list()?;
        let mut readable = BTreeMap::new();
        for &other in &ids {
            if other == id || live.get(&other).is_some_and(|bytes| *bytes > 0) {
                readable.insert(other, files.open(other)?);
            } else {
                files.remove(other)?;
            }
        }
        if let Some(missing) = live.iter().find(|(segment, bytes)| **bytes > 0 && !readable.contains_key(segment)) {
            return Err(SegmentsOpenError::Missing(*missing.0));
        }
        let file = match readable.get(&id) {
            Some(file) => Arc::clone(file),
            None if end == 0 => files.create(id)?,
            None => return Err(SegmentsOpenError::Missing(id)),
        };
        file.set_len(end)?;
        readable.insert(id, Arc::clone(&file));
        let appending = Appending { id, file, end, unsynced: Vec::new() };
        Ok(MessageSegments {
            files,
            appending: Mutex::new(appending),
            readable: RwLock::new(Arc::new(readable)),
            retired: Mutex::new(Vec::new()),
        })
    }

    /// The segments readers may read now.
    pub fn readable(&self) -> Readable {
        Arc::clone(&self.readable.read().expect("readable lock"))
    }

    /// Appends `value` to the newest segment, starting the next one when it is full.
    pub fn append(&self, value: &[u8]) -> io::Result<Pointer> {
        let mut appending = self.appending.lock().expect("appending lock");
        if appending.end >= SEGMENT_BYTES_MAX {
            self.roll(&mut appending)?;
        }
        let Appending { id, file, end, unsynced } = &mut *appending;
        // The head and the value go to the file apart: the value is not copied into a record.
        let head = segment::record_head(*id, value);
        file.write(*end, &head)?;
        file.write(*end + head.len() as u64, value)?;
        let pointer = Pointer { segment: *id, at: *end, len: value.len() as u32, crc: crc32fast::hash(value) };
        *end += (head.len() + value.len()) as u64;
        if unsynced.last().is_none_or(|(last, _)| last != id) {
            unsynced.push((*id, Arc::clone(file)));
        }
        Ok(pointer)
    }

    fn roll(&self, appending: &mut Appending) -> io::Result<()> {
        let id = appending.id + 1;
        let file = self.files.create(id)?;
        let mut readable = self.readable.write().expect("readable lock");
        let mut files = BTreeMap::clone(&readable);
        files.insert(id, Arc::clone(&file));
        *readable = Arc::new(files);
        appending.id = id;
        appending.file = file;
        appending.end = 0;
        Ok(())
    }

    /// The segment appends go to, and the end of what is appended: recorded with the pointers.
    fn position(&self) -> (u64, u64) {
        let appending = self.appending.lock().expect("appending lock");
        (appending.id, appending.end)
    }

    /// Makes every segment written since the last sync durable. Call it before a durable commit
    /// of the state, while that commit's transaction shuts out applies.
    pub fn sync(&self) -> io::Result<()> {
        let unsynced = std::mem::take(&mut self.appending.lock().expect("appending lock").unsynced);
        for (_, file) in unsynced {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Removes the segments before the newest that the state `txn` reads holds no live bytes in:
    /// call it once that state is durable. Handles of segments removed the time before are
    /// dropped now.
    pub fn remove_dead(&self, txn: &redb::ReadTransaction) -> Result<(), SegmentsOpenError> {
        let live = read_live(&txn.open_table(LIVE).map_err(redb::Error::from)?)?;
        let Some((newest, _)) = read_append(&txn.open_table(APPEND).map_err(redb::Error::from)?)? else {
            return Ok(());
        };
        let mut retired = self.retired.lock().expect("retired lock");
        let mut readable = self.readable.write().expect("readable lock");
        let mut files = BTreeMap::clone(&readable);
        for id in retired.drain(..) {
            files.remove(&id);
        }
        let dead: Vec<u64> =
            files.keys().copied().filter(|id| *id < newest && live.get(id).is_none_or(|bytes| *bytes == 0)).collect();
        for id in dead {
            match self.files.remove(id) {
                Ok(()) => retired.push(id),
                Err(error) if error.kind() == io::ErrorKind::NotFound => retired.push(id),
                Err(error) => {
                    tracing::warn!(segment = id, %error, "a message segment no value needs could not be removed")
                }
            }
        }
        *readable = Arc::new(files);
        Ok(())
    }
}

/// The recorded append position: the newest segment and the end of what the state points at.
fn read_append(table: &impl ReadableTable<&'static str, (u64, u64)>) -> Result<Option<(u64, u64)>, redb::Error> {
    Ok(table.get(APPEND_KEY)?.map(|position| position.value()))
}

/// Whether the state in `txn` holds message batches without the segments' accounting beside them:
/// it was written before message segments, and its batches are not tagged.
fn written_before_segments(txn: &WriteTransaction) -> Result<bool, redb::Error> {
    let names: Vec<String> = txn.list_tables()?.map(|table| table.name().to_owned()).collect();
    if names.iter().any(|name| name == APPEND.name()) {
        return Ok(false);
    }
    let messages = chorus_machine::store::Table::Messages.name();
    if !names.iter().any(|name| name == messages) {
        return Ok(false);
    }
    let table: TableDefinition<&[u8], &[u8]> = TableDefinition::new(messages);
    Ok(!txn.open_table(table)?.is_empty()?)
}

fn read_live(table: &impl ReadableTable<u64, u64>) -> Result<BTreeMap<u64, u64>, redb::Error> {
    let mut live = BTreeMap::new();
    for item in table.iter()? {
        let (id, bytes) = item?;
        live.insert(id.value(), bytes.value());
    }
    Ok(live)
}

/// What one transaction did to the segments' live bytes, to record with its pointers.
#[derive(Debug, Default)]
pub struct Accounting {
    /// Live bytes added (or, negative, released) per segment.
    deltas: BTreeMap<u64, i64>,
    /// Every pointer was dropped first (a snapshot's install clears the table).
    cleared: bool,
}

impl Accounting {
    pub fn added(&mut self, pointer: &Pointer) {
        *self.deltas.entry(pointer.segment).or_default() += i64::from(pointer.len);
    }

    pub fn released(&mut self, pointer: &Pointer) {
        *self.deltas.entry(pointer.segment).or_default() -= i64::from(pointer.len);
    }

    pub fn cleared(&mut self) {
        self.deltas.clear();
        self.cleared = true;
    }

    /// Writes the live bytes and the append position into `txn`, beside the pointers.
    pub fn record(self, segments: &MessageSegments, txn: &WriteTransaction) -> Result<(), redb::Error> {
        let mut live = txn.open_table(LIVE)?;
        if self.cleared {
            live.retain(|_, _| false)?;
        }
        for (segment, delta) in self.deltas {
            let before = live.get(segment)?.map_or(0, |bytes| bytes.value());
            let after = before.checked_add_signed(delta).unwrap_or_else(|| {
                tracing::error!(segment, before, delta, "a message segment's live bytes went below zero");
                0
            });
            if after == 0 {
                live.remove(segment)?;
            } else {
                live.insert(segment, after)?;
            }
        }
        txn.open_table(APPEND)?.insert(APPEND_KEY, segments.position())?;
        Ok(())
    }
}
