//! The log's write path: one writer that owns the newest segment, and the replay that rebuilds
//! the log's index when it opens.
//!
//! Appends go to the newest [`Segment`]: whatever jobs are queued share one write and one
//! `sync_data`, and then their flush callbacks fire (group commit). The segment is where an entry
//! stays; nothing copies it into a B-tree. Once written, an entry leaves `pending` (where readers
//! found it until then) for the [`Index`], which says where each live entry lies. A segment that
//! holds [`SEGMENT_BYTES_MAX`] is sealed and the next one started.
//!
//! A vote, truncate, purge or forget is one durable redb commit of the log's metadata, after the
//! newest segment's sync; its caller is told once it is done, and openraft awaits it, so nothing
//! is appended behind one until then. A truncate (and a forget, and a cut at open) records a
//! [`Truncation`] and moves appends to a new segment, since the records it drops stay in theirs;
//! a purge records the purge point. Segments that then hold no live entry are removed.
//!
//! The committed id goes to the newest segment too, unsynced: the next sync carries it, and every
//! new segment starts with it, so the newest segment always holds the latest one. After a crash
//! openraft re-applies, before it serves, about as much as it had applied.
//!
//! Opening ([`recover`]) reads every segment in order, applying truncations and the purge point as
//! it goes, and checks every entry. A torn tail is dropped; damage to what was synced cuts the log
//! before it and records a repair floor, so a broker never votes or leads with a log that silently
//! lost entries it acknowledged ([`super::repair`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock, mpsc};

use chorus_protocol::pb;
use prost::Message;
use redb::{Database, Durability, ReadableTable, StorageBackend, TableHandle};

use crate::metrics::DiskMetrics;

use super::log_layout::{
    EntryDecodeError, META, PURGED_KEY, RECORD_COMMITTED, RECORD_COMMITTED_NONE, RECORD_ENTRY, REPAIR_KEY,
    TRUNCATIONS_KEY, Truncation, VOTE_KEY, decode_entry,
};
use super::sealed;
use super::segment::{self, SEGMENT_BYTES_MAX, Segment};
use super::segment_files::SegmentFiles;
use super::{Entry, LogId, wire};

/// Most jobs one batch carries.
const JOBS_PER_BATCH_MAX: usize = 4096;
/// How long the writer idles before it records the durable end of its last sync in the newest
/// segment's header ([`Segment::seal`]). Under load every sync records the end of the one
/// before; this covers the last one, at the cost of one sync per idle spell.
const SEAL_AFTER_IDLE: std::time::Duration = std::time::Duration::from_millis(5);

/// Called once an append is on disk (or failed to get there).
pub(super) type Flushed = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;
/// Told whether a vote, truncate, purge or forget is durable.
pub(super) type Done = tokio::sync::oneshot::Sender<Result<(), Arc<WriteFailed>>>;

/// What the log store asks of the writer, in order.
pub(super) enum Job {
    /// Entries as segment records ([`super::log_layout::entry_record`]).
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        flushed: Flushed,
    },
    Sync {
        op: SyncOp,
        done: Done,
    },
    /// The committed id (`None` clears it), written without waiting for durability.
    Committed(Option<Vec<u8>>),
}

pub(super) enum SyncOp {
    Vote(Vec<u8>),
    /// Delete entries from this index on.
    Truncate(u64),
    /// Delete entries up to and including this log id.
    Purge(LogId, Vec<u8>),
    /// Delete every entry and the purge point, keep the vote as not granted, and record a repair
    /// floor here ([`super::log_store::LogStore::forget_entries`]).
    Forget {
        floor: u64,
    },
}

/// Where a live entry's record lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    pub(super) log_id: LogId,
    pub(super) segment: u64,
    pub(super) at: u64,
    pub(super) body_len: usize,
}

/// The live entries on disk, by index (a log has no holes), and the segments' files.
#[derive(Default)]
pub(super) struct Index {
    /// The index of `locations[0]`.
    first: u64,
    locations: VecDeque<Location>,
    files: BTreeMap<u64, Arc<dyn StorageBackend>>,
}

impl Index {
    /// The index after the last live entry.
    fn next(&self) -> u64 {
        self.first + self.locations.len() as u64
    }

    pub(super) fn last(&self) -> Option<LogId> {
        self.locations.back().map(|location| location.log_id)
    }

    /// Live indexes within `start..end`.
    pub(super) fn clamp(&self, start: u64, end: u64) -> std::ops::Range<u64> {
        start.max(self.first)..end.min(self.next())
    }

    /// Where entry `index` lies, and its segment's file.
    pub(super) fn get(&self, index: u64) -> Option<(Location, Arc<dyn StorageBackend>)> {
        let location = *self.locations.get(usize::try_from(index.checked_sub(self.first)?).ok()?)?;
        Some((location, Arc::clone(self.files.get(&location.segment)?)))
    }

    /// Adds entry `location.log_id`: the next index, or any while the index is empty.
    fn push(&mut self, location: Location) -> Result<(), WriteFailed> {
        let index = location.log_id.index;
        if self.locations.is_empty() {
            self.first = index;
        } else if index != self.next() {
            return Err(WriteFailed::Gap { expected: self.next(), found: index });
        }
        self.locations.push_back(location);
        Ok(())
    }

    fn truncate(&mut self, from: u64) {
        self.locations.truncate(from.saturating_sub(self.first) as usize);
    }

    fn purge(&mut self, upto: u64) {
        while self.first <= upto && self.locations.pop_front().is_some() {
            self.first += 1;
        }
        self.first = self.first.max(upto.saturating_add(1));
    }

    /// The segments that hold a live entry.
    fn referenced(&self) -> BTreeSet<u64> {
        let mut segments = BTreeSet::new();
        let mut last = None;
        for location in &self.locations {
            if last != Some(location.segment) {
                segments.insert(location.segment);
                last = Some(location.segment);
            }
        }
        segments
    }
}

/// What the writer shares with the log's readers.
pub(super) struct Shared {
    /// The log's metadata.
    pub(super) db: Database,
    /// Appended and not yet written: readers find them here.
    pub(super) pending: Mutex<BTreeMap<u64, Entry>>,
    /// Where the written entries lie.
    pub(super) index: RwLock<Index>,
    /// The entries written last, still in memory.
    pub(super) recent: Mutex<Recent>,
    /// What the writer records of its writes and syncs.
    pub(super) disk: DiskMetrics,
}

/// Bytes of records [`Recent`] keeps at most.
const RECENT_BYTES_MAX: usize = 16 << 20;

/// The entries written last, kept in memory (at most [`RECENT_BYTES_MAX`] of their records) for
/// the apply and the replication that follow a write: segments are written past the page cache
/// ([`super::direct_file`]), so reading one back is a disk read. Readers take an entry from here
/// only when its log id is the one the index holds at its index, so an entry a truncate or purge
/// dropped is never served; it waits here to be pushed out.
#[derive(Default)]
pub(super) struct Recent {
    /// By index, ascending.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Recent {
    /// Keeps `entry`, whose record is `bytes` long, in place of any at its index or after.
    fn keep(&mut self, entry: Entry, bytes: usize) {
        while self.entries.back().is_some_and(|(kept, _)| kept.log_id.index >= entry.log_id.index) {
            let (_, dropped) = self.entries.pop_back().expect("a last entry");
            self.bytes -= dropped;
        }
        self.entries.push_back((entry, bytes));
        self.bytes += bytes;
        while self.bytes > RECENT_BYTES_MAX
            && let Some((_, dropped)) = self.entries.pop_front()
        {
            self.bytes -= dropped;
        }
    }

    /// The kept entry with id `log_id`.
    pub(super) fn get(&self, log_id: LogId) -> Option<Entry> {
        let at = self.entries.binary_search_by_key(&log_id.index, |(entry, _)| entry.log_id.index).ok()?;
        let (entry, _) = &self.entries[at];
        (entry.log_id == log_id).then(|| entry.clone())
    }
}

/// Why a write did not reach the disk, or the log could not open.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteFailed {
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("segment: {0}")]
    Segment(#[from] std::io::Error),
    #[error("the truncations in the log's metadata are corrupt")]
    CorruptTruncations,
    #[error("the purge point in the log's metadata is corrupt")]
    CorruptPurged,
    #[error("the repair floor in the log's metadata is corrupt")]
    CorruptRepairFloor,
    #[error("the vote in the log's metadata is corrupt")]
    CorruptVote,
    #[error("the log's metadata: {0}")]
    CorruptMeta(#[from] sealed::MetaDamaged),
    #[error("a segment record with a valid checksum is of no known kind")]
    CorruptRecord,
    #[error("entry {found} was appended where entry {expected} belongs")]
    Gap { expected: u64, found: u64 },
    #[error("the log's writer failed earlier: {0}")]
    Stopped(#[source] Arc<WriteFailed>),
    #[error(
        "log.redb holds its entries in a table ({OLD_LOG_TABLE}): it was written by a Chorus from before log segments, which this one does not read; start this broker on an empty data directory (and replace it in the cluster)"
    )]
    OldLayout,
}

/// Where entries lived before the log moved to segments (issue 20).
const OLD_LOG_TABLE: &str = "raft_log";

/// The writer's side: the newest segment, and where new ones come from.
pub(super) struct Appender {
    files: Box<dyn SegmentFiles>,
    current: Segment,
    /// The latest committed id (or its clearing) as a record, written at the start of every new
    /// segment.
    committed: Option<Vec<u8>>,
    /// Set when a write or a sync op failed: what the log holds is unknown, so it takes no more.
    failed: Option<Arc<WriteFailed>>,
}

impl Appender {
    #[cfg(test)]
    pub(super) fn current_segment(&self) -> (u64, u64) {
        (self.current.epoch(), self.current.bytes())
    }

    /// Records the newest segment's durable end, if it lags. A failure is logged; the segment
    /// then takes no more records, so the next append reports it.
    fn seal(&mut self) {
        if self.failed.is_none()
            && let Err(error) = self.current.seal()
        {
            tracing::error!(%error, "the log segment's header could not be written");
        }
    }

    /// Writes the batch's entries and the latest committed id, syncs if there are entries, and
    /// indexes the entries.
    fn append(&mut self, shared: &Shared, entries: &[&(LogId, Vec<u8>)], committed: bool) -> Result<(), WriteFailed> {
        if let Some(failed) = &self.failed {
            return Err(WriteFailed::Stopped(Arc::clone(failed)));
        }
        let mark = entries.iter().map(|(log_id, _)| log_id.index).max().unwrap_or(0);
        let bodies = entries.iter().map(|(_, record)| record.as_slice());
        let starts = self.current.append(bodies.chain(self.committed.as_deref().filter(|_| committed)), mark)?;
        if entries.is_empty() {
            return Ok(());
        }
        let sync_started = std::time::Instant::now();
        self.current.sync()?;
        shared.disk.fsync_seconds.observe(sync_started.elapsed().as_secs_f64());
        shared.disk.group_commit_entries.observe(entries.len() as f64);
        shared.disk.bytes_written.inc_by(entries.iter().map(|(_, record)| record.len() as u64).sum());
        let segment = self.current.epoch();
        {
            let mut index = shared.index.write().expect("index lock");
            for (&(log_id, ref record), &at) in entries.iter().copied().zip(&starts) {
                index.push(Location { log_id, segment, at, body_len: record.len() })?;
            }
        }
        let written: Vec<(Entry, usize)> = {
            let mut pending = shared.pending.lock().expect("pending lock");
            let mut written = Vec::with_capacity(entries.len());
            for (log_id, record) in entries {
                if pending.get(&log_id.index).is_some_and(|e| e.log_id == *log_id)
                    && let Some(entry) = pending.remove(&log_id.index)
                {
                    written.push((entry, record.len()));
                }
            }
            written
        };
        let mut recent = shared.recent.lock().expect("recent lock");
        for (entry, bytes) in written {
            recent.keep(entry, bytes);
        }
        Ok(())
    }

    /// Seals the newest segment and starts the next, which begins with the committed id.
    fn roll(&mut self, shared: &Shared) -> Result<(), WriteFailed> {
        self.current.seal()?;
        let id = self.current.epoch() + 1;
        self.current = start_segment(self.files.as_ref(), shared, id, self.committed.as_deref())?;
        Ok(())
    }

    /// Makes `op` durable in the log's metadata, then applies it to the index and the segments.
    fn sync_op(&mut self, shared: &Shared, op: SyncOp) -> Result<(), WriteFailed> {
        if let Some(failed) = &self.failed {
            return Err(WriteFailed::Stopped(Arc::clone(failed)));
        }
        self.current.sync()?;
        let next = self.current.epoch() + 1;
        let oldest = shared.index.read().expect("index lock").files.keys().next().copied();
        let mut txn = shared.db.begin_write().map_err(redb::Error::from)?;
        txn.set_durability(Durability::Immediate).map_err(redb::Error::from)?;
        {
            let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
            let mut truncations = read_truncations(&meta)?;
            truncations.retain(|t| oldest.is_some_and(|oldest| t.segment > oldest));
            match &op {
                SyncOp::Vote(bytes) => {
                    meta.insert(VOTE_KEY, sealed::seal(VOTE_KEY, bytes).as_slice()).map_err(redb::Error::from)?;
                }
                SyncOp::Truncate(from) => truncations.push(Truncation { segment: next, from: *from }),
                SyncOp::Purge(_, bytes) => {
                    meta.insert(PURGED_KEY, sealed::seal(PURGED_KEY, bytes).as_slice()).map_err(redb::Error::from)?;
                }
                SyncOp::Forget { floor } => {
                    truncations.push(Truncation { segment: next, from: 0 });
                    meta.remove(PURGED_KEY).map_err(redb::Error::from)?;
                    meta.insert(REPAIR_KEY, sealed::seal(REPAIR_KEY, &floor.to_le_bytes()).as_slice())
                        .map_err(redb::Error::from)?;
                    demote_vote(&mut meta)?;
                }
            }
            let truncations = sealed::seal(TRUNCATIONS_KEY, &Truncation::encode_all(&truncations));
            meta.insert(TRUNCATIONS_KEY, truncations.as_slice()).map_err(redb::Error::from)?;
        }
        txn.commit().map_err(redb::Error::from)?;
        match op {
            SyncOp::Vote(_) => return Ok(()),
            SyncOp::Truncate(from) => {
                shared.index.write().expect("index lock").truncate(from);
                self.roll(shared)?;
            }
            SyncOp::Purge(log_id, _) => shared.index.write().expect("index lock").purge(log_id.index),
            SyncOp::Forget { .. } => {
                shared.index.write().expect("index lock").truncate(0);
                self.committed = None;
                self.roll(shared)?;
            }
        }
        remove_unreferenced(self.files.as_ref(), shared, self.current.epoch());
        Ok(())
    }
}

/// Creates segment `id`, durably, under its header, starting with `committed` (unsynced), and
/// makes it readable.
fn start_segment(
    files: &dyn SegmentFiles,
    shared: &Shared,
    id: u64,
    committed: Option<&[u8]>,
) -> Result<Segment, WriteFailed> {
    let file = files.create(id)?;
    let (mut segment, _) = Segment::open(Arc::clone(&file), id)?;
    segment.reset(id)?;
    segment.append(committed, 0)?;
    shared.index.write().expect("index lock").files.insert(id, file);
    Ok(segment)
}

/// Removes every segment but `current` that holds no live entry. A segment that cannot be removed
/// is logged and kept, so the truncations that cover it are kept too.
fn remove_unreferenced(files: &dyn SegmentFiles, shared: &Shared, current: u64) {
    let mut index = shared.index.write().expect("index lock");
    let referenced = index.referenced();
    let unreferenced: Vec<u64> =
        index.files.keys().copied().filter(|id| *id != current && !referenced.contains(id)).collect();
    for id in unreferenced {
        match files.remove(id) {
            Ok(()) => {
                index.files.remove(&id);
            }
            Err(error) => tracing::warn!(segment = id, %error, "a log segment with no live entry could not be removed"),
        }
    }
}

/// A committed id (`None`: cleared) as a segment record.
fn committed_record(committed: Option<Vec<u8>>) -> Vec<u8> {
    match committed {
        Some(bytes) => [&[RECORD_COMMITTED], bytes.as_slice()].concat(),
        None => vec![RECORD_COMMITTED_NONE],
    }
}

pub(super) type MetaTable<'t> = redb::Table<'t, &'static str, &'static [u8]>;

fn read_truncations(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Vec<Truncation>, WriteFailed> {
    match meta.get(TRUNCATIONS_KEY).map_err(redb::Error::from)? {
        Some(bytes) => Truncation::decode_all(sealed::unseal(TRUNCATIONS_KEY, bytes.value())?)
            .ok_or(WriteFailed::CorruptTruncations),
        None => Ok(Vec::new()),
    }
}

/// Marks the stored vote as not granted by a quorum. openraft 0.9 starts a broker whose vote is
/// a granted one for itself as the leader of that term, without an election; a leader whose log
/// lost entries would then hand out again indexes of its term that its followers still hold
/// with other entries, and Raft's log matching (same index and term, same entry) would break.
/// The simulation's storage faults found this. The term and the candidate stay as they were.
pub(super) fn demote_vote(meta: &mut MetaTable<'_>) -> Result<(), WriteFailed> {
    let Some(stored) = meta.get(VOTE_KEY).map_err(redb::Error::from)?.map(|v| v.value().to_vec()) else {
        return Ok(());
    };
    let bytes = sealed::unseal(VOTE_KEY, &stored)?;
    let mut vote = pb::Vote::decode(bytes).map_err(|_| WriteFailed::CorruptVote)?;
    if vote.committed {
        vote.committed = false;
        meta.insert(VOTE_KEY, sealed::seal(VOTE_KEY, &vote.encode_to_vec()).as_slice()).map_err(redb::Error::from)?;
    }
    Ok(())
}

/// The greatest index the repair floor holds, if a repair is under way.
pub(super) fn read_repair_floor(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<u64>, WriteFailed> {
    match meta.get(REPAIR_KEY).map_err(redb::Error::from)? {
        Some(bytes) => {
            let floor = sealed::unseal(REPAIR_KEY, bytes.value())?;
            Ok(Some(u64::from_le_bytes(floor.try_into().map_err(|_| WriteFailed::CorruptRepairFloor)?)))
        }
        None => Ok(None),
    }
}

fn read_purged(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Option<u64>, WriteFailed> {
    match meta.get(PURGED_KEY).map_err(redb::Error::from)? {
        Some(bytes) => {
            let log_id = pb::LogId::decode(sealed::unseal(PURGED_KEY, bytes.value())?)
                .map_err(|_| WriteFailed::CorruptPurged)?;
            Ok(Some(wire::log_id_from_pb(log_id).map_err(|_| WriteFailed::CorruptPurged)?.index))
        }
        None => Ok(None),
    }
}

/// What opening the log found.
pub(super) struct Recovered {
    pub(super) shared: Shared,
    pub(super) appender: Appender,
    /// The latest committed id the segments hold.
    pub(super) committed: Option<LogId>,
}

/// Opens the log: reads every segment in order into the index, applying truncations and the purge
/// point, checks every entry, and starts a new segment for appends.
///
/// Damage is never a shorter log taken for whole: the log keeps what precedes the first damaged
/// entry or record, drops the rest (the valid entries after a hole cannot stay: a log has no
/// holes), forgets the committed id, and records a **repair floor**, the greatest index it had
/// reached, in the same durable transaction. Until its state machine has applied that index
/// again, from a leader, the broker must not vote or stand for election ([`super::repair`]).
pub(super) fn recover(db: Database, files: Box<dyn SegmentFiles>) -> Result<Recovered, WriteFailed> {
    let txn = db.begin_write().map_err(redb::Error::from)?;
    if txn.list_tables().map_err(redb::Error::from)?.any(|table| table.name() == OLD_LOG_TABLE) {
        return Err(WriteFailed::OldLayout);
    }
    let ids = files.list()?;
    let next = ids.last().map_or(1, |id| id + 1);
    let (replayer, committed, cut_segment) = {
        let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
        let mut truncations = read_truncations(&meta)?;
        let mut replayer = Replayer::new(read_purged(&meta)?, truncations.clone());
        let mut cut_segment = None;
        for &id in &ids {
            let file = files.open(id)?;
            let (segment, replay) = Segment::open(Arc::clone(&file), id)?;
            let before = replayer.cut;
            replayer.segment(id, &replay, segment.bytes())?;
            if before.is_none() && replayer.cut.is_some() {
                cut_segment = Some(segment);
            }
            replayer.index.files.insert(id, file);
        }
        replayer.truncate_before(u64::MAX);
        if let Some((first_lost, horizon)) = replayer.salvage.lost(&replayer.index) {
            replayer.index.truncate(first_lost);
            replayer.committed = None;
            truncations.push(Truncation { segment: next, from: first_lost });
            demote_vote(&mut meta)?;
            let floor = read_repair_floor(&meta)?.unwrap_or(0).max(horizon).max(first_lost);
            meta.insert(REPAIR_KEY, sealed::seal(REPAIR_KEY, &floor.to_le_bytes()).as_slice())
                .map_err(redb::Error::from)?;
            tracing::error!(
                first_lost,
                floor,
                "the log lost entries to damage; it keeps what precedes them, and this broker will not vote or lead until a leader has repaired it through index {floor}"
            );
        }
        if replayer.torn {
            // What a torn tail dropped was never acknowledged, unless the disk lost a header that
            // covered it (a lost write the durable end cannot show). A broker that led must not
            // then resume its term and hand out again an index it had: it stands for election.
            demote_vote(&mut meta)?;
        }
        truncations.retain(|t| ids.first().is_some_and(|oldest| t.segment > *oldest));
        let truncations = sealed::seal(TRUNCATIONS_KEY, &Truncation::encode_all(&truncations));
        meta.insert(TRUNCATIONS_KEY, truncations.as_slice()).map_err(redb::Error::from)?;
        let committed = replayer.committed.clone();
        (replayer, committed, cut_segment)
    };
    txn.commit().map_err(redb::Error::from)?;
    if let (Some(cut), Some(segment)) = (replayer.cut, cut_segment) {
        cut_damage(files.as_ref(), &replayer, cut, segment)?;
    }
    tracing::info!(
        segments = ids.len(),
        entries = replayer.index.locations.len(),
        checked = replayer.checked,
        "opened the log's segments"
    );
    let shared = Shared {
        db,
        pending: Mutex::new(BTreeMap::new()),
        index: RwLock::new(replayer.index),
        recent: Mutex::new(Recent::default()),
        disk: DiskMetrics::default(),
    };
    let committed_record = committed.clone().map(|bytes| committed_record(Some(bytes)));
    let mut current = start_segment(files.as_ref(), &shared, next, committed_record.as_deref())?;
    current.sync()?;
    remove_unreferenced(files.as_ref(), &shared, next);
    let committed = match committed {
        Some(bytes) => Some(decode_log_id(&bytes).ok_or(WriteFailed::CorruptRecord)?),
        None => None,
    };
    let appender = Appender { files, current, committed: committed_record, failed: None };
    Ok(Recovered { shared, appender, committed })
}

/// Removes the damage a replay found, now that the log's metadata has recorded what it lost:
/// the damaged segment is cut before its first bad record, or removed when its header is gone
/// (the segments after it hold no live entry, and go with the other unreferenced ones).
fn cut_damage(
    files: &dyn SegmentFiles,
    replayer: &Replayer,
    cut: Cut,
    mut segment: Segment,
) -> Result<(), WriteFailed> {
    match cut.at {
        Some(at) => segment.cut(at)?,
        None if !replayer.index.referenced().contains(&cut.segment) => files.remove(cut.segment)?,
        None => unreachable!("a segment whose header is damaged holds no live entry"),
    }
    tracing::warn!(segment = cut.segment, at = ?cut.at, "the damaged log segment is cut before its damage");
    Ok(())
}

fn decode_log_id(bytes: &[u8]) -> Option<LogId> {
    wire::log_id_from_pb(pb::LogId::decode(bytes).ok()?).ok()
}

/// Replay's state while it reads the segments in order.
struct Replayer {
    index: Index,
    /// The latest committed id seen, encoded.
    committed: Option<Vec<u8>>,
    purged: Option<u64>,
    /// Truncations not yet applied, by segment.
    truncations: VecDeque<Truncation>,
    salvage: Salvage,
    /// Where the first damage lies.
    cut: Option<Cut>,
    /// A segment ended in a torn tail, which replay dropped.
    torn: bool,
    /// Entries whose checksums were checked.
    checked: u64,
}

/// Where a segment's kept records end: at byte `at`, or nowhere (`None`: its header is damaged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cut {
    segment: u64,
    at: Option<u64>,
}

impl Replayer {
    fn new(purged: Option<u64>, mut truncations: Vec<Truncation>) -> Replayer {
        truncations.sort_by_key(|t| t.segment);
        let mut index = Index::default();
        if let Some(purged) = purged {
            index.purge(purged);
        }
        Replayer {
            index,
            committed: None,
            purged,
            truncations: truncations.into(),
            salvage: Salvage::default(),
            cut: None,
            torn: false,
            checked: 0,
        }
    }

    /// Applies the truncations recorded before segment `id` was started.
    fn truncate_before(&mut self, id: u64) {
        while let Some(truncation) = self.truncations.front().filter(|t| t.segment <= id).copied() {
            self.truncations.pop_front();
            self.index.truncate(truncation.from);
            let committed = self.committed.as_deref().and_then(decode_log_id);
            if committed.is_some_and(|committed| committed.index >= truncation.from) {
                self.committed = None;
            }
        }
    }

    /// Takes segment `id`'s records into the index, unless damage came before them; damage, if
    /// any, is logged with the segment and position.
    /// `valid_end` is where the valid records read end.
    fn segment(&mut self, id: u64, replay: &segment::Replay, valid_end: u64) -> Result<(), WriteFailed> {
        self.truncate_before(id);
        self.salvage.horizon = self.salvage.horizon.max(replay.durable_mark);
        if let Some(at) = replay.torn_at {
            tracing::info!(segment = id, at, "the log segment ends in a torn tail, dropped");
            self.torn = true;
        }
        for (body, &at) in replay.bodies.iter().zip(&replay.starts) {
            self.record(id, at, body)?;
        }
        if let Some(damage) = &replay.damage {
            tracing::error!(segment = id, corruption = %damage.corruption, "the log segment is damaged");
            self.salvage.damaged = true;
            let headless = matches!(
                damage.corruption,
                segment::SegmentCorruption::Header | segment::SegmentCorruption::Foreign { .. }
            );
            self.salvage.horizon_unknown |= headless;
            if self.cut.is_none() {
                self.cut = Some(Cut { segment: id, at: (!headless).then_some(valid_end) });
            }
            for body in &damage.after {
                self.salvage.see(body);
            }
        }
        Ok(())
    }

    fn record(&mut self, id: u64, at: u64, body: &[u8]) -> Result<(), WriteFailed> {
        if self.salvage.stopped() {
            self.salvage.see(body);
            return Ok(());
        }
        match body.split_first() {
            Some((&RECORD_ENTRY, stored)) => {
                self.checked += 1;
                match decode_entry(stored) {
                    Ok(entry) => self.entry(Location { log_id: entry.log_id, segment: id, at, body_len: body.len() }),
                    Err(error) => self.salvage.lose(self.index.next(), error),
                }
                if self.salvage.first_lost.is_some() && self.cut.is_none() {
                    self.cut = Some(Cut { segment: id, at: Some(at) });
                }
            }
            Some((&RECORD_COMMITTED, committed)) => self.committed = Some(committed.to_vec()),
            Some((&RECORD_COMMITTED_NONE, [])) => self.committed = None,
            _ => return Err(WriteFailed::CorruptRecord),
        }
        Ok(())
    }

    fn entry(&mut self, location: Location) {
        let index = location.log_id.index;
        self.salvage.horizon = self.salvage.horizon.max(index);
        if self.purged.is_some_and(|purged| index <= purged) {
            return;
        }
        if let Err(WriteFailed::Gap { expected, found }) = self.index.push(location) {
            tracing::error!(expected, found, "the log's segments skip entries");
            self.salvage.first_lost = Some(expected);
        }
    }
}

/// Replay's account of what it found damaged.
#[derive(Debug, Default)]
struct Salvage {
    /// A segment is damaged: no later record is kept.
    damaged: bool,
    /// A damaged segment's header is gone with its mark: how far the log reached is unknown.
    horizon_unknown: bool,
    /// The first entry lost to damage that a segment did not report: a checksum or a gap.
    first_lost: Option<u64>,
    /// The greatest index any record or header shows the log reached.
    horizon: u64,
}

impl Salvage {
    /// Whether records are no longer kept.
    fn stopped(&self) -> bool {
        self.damaged || self.first_lost.is_some()
    }

    fn lose(&mut self, index: u64, error: EntryDecodeError) {
        tracing::error!(index, %error, "a log entry is damaged");
        self.first_lost = Some(index);
    }

    /// Raises the horizon to an entry past the damage: lost, it only tells how far the log reached.
    fn see(&mut self, record: &[u8]) {
        if let Some((&RECORD_ENTRY, stored)) = record.split_first()
            && let Ok(entry) = decode_entry(stored)
        {
            self.horizon = self.horizon.max(entry.log_id.index);
        }
    }

    /// The first lost index and the horizon, if anything was lost: what a damaged segment lost
    /// starts after the entries kept, if the horizon or an unknown one says there were any.
    fn lost(&self, index: &Index) -> Option<(u64, u64)> {
        let mut first_lost = self.first_lost;
        if self.damaged {
            let kept_end = first_lost.unwrap_or(index.next());
            if self.horizon_unknown || self.horizon >= kept_end {
                first_lost = Some(kept_end);
            } else {
                tracing::warn!("the damaged segment records were all of purged entries: nothing was lost");
            }
        }
        first_lost.map(|first_lost| (first_lost, self.horizon))
    }
}

/// Runs one batch of jobs: writes and syncs its appends, fires their callbacks, runs its vote,
/// truncate, purge or forget, and starts the next segment when the newest is full.
fn write_batch(appender: &mut Appender, shared: &Shared, jobs: Vec<Job>) {
    let mut appends = Vec::new();
    let mut flushes = Vec::new();
    let mut committed = false;
    let mut sync = None;
    for job in jobs {
        match job {
            Job::Append { entries, flushed } => {
                appends.extend(entries);
                flushes.push(flushed);
            }
            Job::Committed(bytes) => {
                appender.committed = Some(committed_record(bytes));
                committed = true;
            }
            Job::Sync { op, done } => {
                assert!(sync.is_none(), "a batch carries at most one vote, truncate, purge or forget, at its end");
                sync = Some((op, done));
            }
        }
    }
    let entries: Vec<&(LogId, Vec<u8>)> = appends.iter().collect();
    let written = appender.append(shared, &entries, committed).map_err(|error| fail(appender, error));
    for flushed in flushes {
        flushed(written.clone().map_err(std::io::Error::other));
    }
    if let Some((op, done)) = sync {
        let result = written.and_then(|()| appender.sync_op(shared, op).map_err(|error| fail(appender, error)));
        let _ = done.send(result);
    }
    if appender.failed.is_none()
        && appender.current.bytes() >= SEGMENT_BYTES_MAX
        && let Err(error) = appender.roll(shared)
    {
        fail(appender, error);
    }
}

/// Records that the writer failed, logs it once, and returns the error to report.
fn fail(appender: &mut Appender, error: WriteFailed) -> Arc<WriteFailed> {
    if let WriteFailed::Stopped(earlier) = &error {
        return Arc::clone(earlier);
    }
    tracing::error!(%error, "the log's writer failed; it takes no more writes");
    let error = Arc::new(error);
    appender.failed = Some(Arc::clone(&error));
    error
}

/// Runs `jobs` on the caller's thread, and records the durable end at once: a simulation never
/// idles on a thread, so this stands for the writer's seal after 5 ms idle.
pub(super) fn run_inline(appender: &mut Appender, shared: &Shared, jobs: Vec<Job>) {
    write_batch(appender, shared, jobs);
    appender.seal();
}

/// Starts the writer thread; jobs sent to the returned queue run through it. It stops once the
/// queue's sender is dropped.
pub(super) fn spawn(appender: Appender, shared: Arc<Shared>) -> std::io::Result<mpsc::Sender<Job>> {
    let (jobs, queue) = mpsc::channel();
    std::thread::Builder::new()
        .name("chorus-log-writer".into())
        .spawn(move || writer_loop(appender, &shared, &queue))?;
    Ok(jobs)
}

/// The writer thread: batches queued jobs, ending a batch at a vote, truncate, purge or forget.
fn writer_loop(mut appender: Appender, shared: &Shared, queue: &mpsc::Receiver<Job>) {
    loop {
        // Idle with the header up to date, the writer sleeps until there is work.
        let next = if appender.failed.is_none() && appender.current.header_lags() {
            queue.recv_timeout(SEAL_AFTER_IDLE)
        } else {
            queue.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        };
        let first = match next {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                appender.seal();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut jobs = vec![first];
        while jobs.len() < JOBS_PER_BATCH_MAX && !matches!(jobs.last(), Some(Job::Sync { .. })) {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        write_batch(&mut appender, shared, jobs);
    }
}

#[cfg(test)]
mod recent_tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(term: u64, index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, 1), index), payload: EntryPayload::Blank }
    }

    #[test]
    fn a_kept_entry_is_served_only_under_its_own_log_id() {
        let mut recent = Recent::default();
        for index in 1..=5 {
            recent.keep(entry(1, index), 100);
        }
        assert_eq!(recent.get(entry(1, 3).log_id), Some(entry(1, 3)));
        assert_eq!(recent.get(entry(2, 3).log_id), None, "another term's entry at that index");
        // A new leader's entry at index 3 replaces 3 and everything after it.
        recent.keep(entry(2, 3), 100);
        assert_eq!(recent.get(entry(1, 3).log_id), None);
        assert_eq!(recent.get(entry(1, 4).log_id), None, "a truncated entry is not kept");
        assert_eq!(recent.get(entry(2, 3).log_id), Some(entry(2, 3)));
        assert_eq!(recent.bytes, 300);
    }

    #[test]
    fn what_is_kept_is_bounded_in_bytes() {
        let mut recent = Recent::default();
        let bytes = RECENT_BYTES_MAX / 4;
        for index in 1..=10 {
            recent.keep(entry(1, index), bytes);
        }
        assert!(recent.bytes <= RECENT_BYTES_MAX);
        assert_eq!(recent.get(entry(1, 10).log_id), Some(entry(1, 10)));
        assert_eq!(recent.get(entry(1, 6).log_id), None, "the oldest went first");
    }
}
