//! The Raft log: entries in append-only segment files (`log.segments/`), the vote, the purge
//! point and the repair floor in redb (`log.redb`). An append is durable once its segment is
//! synced, and stays where it was written: readers read it there through the log's index
//! ([`super::log_write`]). Appended entries are visible to readers in `pending` until written,
//! and the latest written stay in memory (`Recent`): segments are written past the page cache.
//! Tied to a [`LeadSync`] ([`LogStore::lead_ahead_of_sync`]), this broker's appends as leader are
//! reported flushed once queued, so replication runs while the sync does.
//! Vote, truncate and purge return once durable. The committed id does not wait: openraft awaits
//! it on every commit, so it goes to the newest segment as a record that the next sync carries to
//! disk; after a restart openraft re-applies the log up to it before the broker serves. A
//! simulation opens the log with [`Writer::Inline`] instead: each job is written on the caller's
//! thread before it returns.
//!
//! Once tied to the state machine ([`LogStore::purge_behind_state`]), a purge waits until the
//! state is durable at the purge point. openraft 0.9 purges a follower's log as soon as it hands
//! a received snapshot to the state machine; without the wait, a crash before the install
//! finished left the log purged past a state that never got the snapshot, and the broker could
//! not restart.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use chorus_protocol::pb;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use prost::Message;
use redb::{Database, ReadableDatabase, StorageBackend};
use tokio::sync::{oneshot, watch};

use super::lead_sync::LeadSync;
use super::log_layout::{self, META, PURGED_KEY, VOTE_KEY};
use super::log_write::{self, Appender, Flushed, Job, Location, Shared, SyncOp};
use super::repair::LogRepair;
use super::sealed;
use super::segment;
use super::segment_files::{SegmentDir, SegmentFiles};
use super::{Entry, LogId, StorageError, TypeConfig, Vote, storage_error, wire};

/// Reads the log: written entries where they lie, overlaid with pending ones.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

/// How writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// A writer thread: concurrent appends share one fsync (group commit).
    Thread,
    /// Every job commits before the call that queued it returns, on the caller's thread, so a
    /// single-threaded simulation stays deterministic.
    Inline,
}

enum Jobs {
    Thread(mpsc::Sender<Job>),
    Inline(Mutex<Appender>),
}

/// The log store openraft drives.
pub struct LogStore {
    reader: LogReader,
    jobs: Jobs,
    /// The last committed id saved, perhaps not yet on disk.
    committed_id: Option<LogId>,
    /// Its index, for status reports.
    committed: Arc<AtomicU64>,
    /// The last log index the state machine holds durably, when tied to one.
    state_durable: Option<watch::Receiver<Option<u64>>>,
    repair: LogRepair,
    /// The vote as last saved or read.
    vote: Option<Vote>,
    /// Set, a leader's appends are reported flushed before their sync ([`LeadSync`]).
    lead: Option<LeadSync>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

impl Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogReader")
    }
}

fn read_error(error: impl std::error::Error + 'static) -> StorageError {
    storage_error(ErrorSubject::Logs, ErrorVerb::Read, error)
}

fn write_error(error: impl std::error::Error + 'static) -> StorageError {
    storage_error(ErrorSubject::Logs, ErrorVerb::Write, error)
}

/// Why a write did not reach the log.
#[derive(Debug, thiserror::Error)]
enum WriterStopped {
    #[error("the log writer has stopped")]
    Gone,
    #[error("the log write failed: {0}")]
    Failed(#[source] Arc<log_write::WriteFailed>),
}

#[derive(Debug, thiserror::Error)]
#[error("the state machine stopped while a purge waited for it")]
struct StateStopped;

impl LogStore {
    /// Opens or creates the log at `path` (a redb file for its metadata; its segments are in the
    /// directory of the same path with the extension `segments`), with a page cache of
    /// `cache_bytes`, and starts its writer thread.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<LogStore, StorageError> {
        let db = Database::builder().set_cache_size(cache_bytes).create(path).map_err(write_error)?;
        let segments = SegmentDir::open_direct(&path.with_extension("segments")).map_err(write_error)?;
        LogStore::on_database(db, Box::new(segments), Writer::Thread)
    }

    /// Opens or creates the log's metadata on `backend`, its segments in `segments`: for
    /// simulations, whose disks are in memory.
    pub fn open_on(
        backend: impl StorageBackend,
        segments: Box<dyn SegmentFiles>,
        cache_bytes: usize,
        writer: Writer,
    ) -> Result<LogStore, StorageError> {
        let db = Database::builder().set_cache_size(cache_bytes).create_with_backend(backend).map_err(write_error)?;
        LogStore::on_database(db, segments, writer)
    }

    fn on_database(db: Database, segments: Box<dyn SegmentFiles>, writer: Writer) -> Result<LogStore, StorageError> {
        let recovered = log_write::recover(db, segments).map_err(write_error)?;
        let shared = Arc::new(recovered.shared);
        let floor = {
            let txn = shared.db.begin_read().map_err(read_error)?;
            log_write::read_repair_floor(&txn.open_table(META).map_err(read_error)?).map_err(read_error)?
        };
        let jobs = match writer {
            Writer::Inline => Jobs::Inline(Mutex::new(recovered.appender)),
            Writer::Thread => {
                Jobs::Thread(log_write::spawn(recovered.appender, Arc::clone(&shared)).map_err(write_error)?)
            }
        };
        let committed = recovered.committed;
        Ok(LogStore {
            reader: LogReader { shared: Arc::clone(&shared) },
            jobs,
            committed_id: committed,
            committed: Arc::new(AtomicU64::new(committed.map_or(0, |id| id.index))),
            state_durable: None,
            repair: LogRepair::new(shared, floor),
            vote: None,
            lead: None,
        })
    }

    /// Makes `entries` readable at once and queues them for the writer; `flushed` runs after
    /// their fsync.
    fn enqueue(&mut self, entries: impl IntoIterator<Item = Entry>, flushed: Flushed) -> Result<(), StorageError> {
        let mut encoded = Vec::new();
        {
            let mut pending = self.reader.shared.pending.lock().expect("pending lock");
            for entry in entries {
                encoded.push((entry.log_id, log_layout::entry_record(&wire::entry_to_pb(&entry))));
                pending.insert(entry.log_id.index, entry);
            }
        }
        self.submit(Job::Append { entries: encoded, flushed })
    }

    /// Queues `entries`; `report` tells openraft they are flushed: after their sync, or at once
    /// for this broker's own appends as leader once [`LogStore::lead_ahead_of_sync`] is set.
    fn append_reported(&mut self, entries: Vec<Entry>, report: Flushed) -> Result<(), StorageError> {
        let early = self.lead.as_ref().filter(|lead| lead.leads(self.vote.as_ref(), entries.iter().map(|e| e.log_id)));
        let (Some(lead), Some(first)) = (early.cloned(), entries.first().map(|e| e.log_id.index)) else {
            return self.enqueue(entries, report);
        };
        let ticket = lead.early(first, self.reader.last_log_id()?);
        let writer = lead.clone();
        if let Err(error) = self.enqueue(entries, Box::new(move |result| writer.synced(ticket, result))) {
            lead.synced(ticket, Err(std::io::Error::other("the log writer has stopped")));
            return Err(error);
        }
        report(Ok(()));
        Ok(())
    }

    /// Hands `job` to the writer thread, or commits it here.
    fn submit(&self, job: Job) -> Result<(), StorageError> {
        match &self.jobs {
            Jobs::Thread(jobs) => jobs.send(job).map_err(|_| write_error(WriterStopped::Gone)),
            Jobs::Inline(appender) => {
                log_write::run_inline(&mut appender.lock().expect("appender lock"), &self.reader.shared, vec![job]);
                Ok(())
            }
        }
    }

    /// Ties purges to the state machine: `state_durable` follows the last log index it holds
    /// durably ([`super::state_store::StateStore::durable`]), and a purge waits for it to reach
    /// the purge point. Untied, the log purges at once.
    pub fn purge_behind_state(&mut self, state_durable: watch::Receiver<Option<u64>>) {
        self.state_durable = Some(state_durable);
    }

    /// Reports this broker's appends as leader flushed as soon as they are queued, so openraft
    /// sends them to followers while the sync runs. `lead` must also hold back the state
    /// machine's applies and the commit index sent to followers ([`LeadSync`]).
    pub fn lead_ahead_of_sync(&mut self, lead: LeadSync) {
        self.lead = Some(lead);
    }

    /// Waits until the state machine is durable through `index`.
    async fn state_durable_through(&mut self, index: u64) -> Result<(), StorageError> {
        let Some(state_durable) = self.state_durable.as_mut() else {
            return Ok(());
        };
        match state_durable.wait_for(|durable| durable.is_some_and(|durable| durable >= index)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(write_error(StateStopped)),
        }
    }

    /// Drops every entry and the purge point, keeping the vote, for a state machine that was
    /// rebuilt empty when the log no longer reaches back to its start: the leader then sends a
    /// snapshot and the entries after it. The broker must not vote until it is back where it
    /// was, so this records a repair floor at the last index the log held. Call it before raft
    /// starts.
    pub async fn forget_entries(&mut self) -> Result<u64, StorageError> {
        let purged = self.read_log_id(PURGED_KEY)?.map_or(0, |id| id.index);
        let last = self.reader.last_on_disk().map_or(0, |id| id.index);
        let floor = self.repair.floor().unwrap_or(0).max(purged).max(last);
        self.reader.shared.pending.lock().expect("pending lock").clear();
        self.sync(SyncOp::Forget { floor }).await?;
        self.committed_id = None;
        self.committed.store(0, Ordering::Relaxed);
        self.repair.raise(floor);
        tracing::warn!(floor, "the log's entries are forgotten: the state is rebuilt from the leader's snapshot");
        Ok(floor)
    }

    /// Whether the log was ever purged: then it no longer reaches back to its first entry.
    pub fn purged(&self) -> Result<bool, StorageError> {
        Ok(self.read_log_id(PURGED_KEY)?.is_some())
    }

    /// The log's repair, under way if opening it found damage, now or before a restart.
    pub fn repair(&self) -> LogRepair {
        self.repair.clone()
    }

    /// Follows the committed index as openraft saves it.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.committed)
    }

    async fn sync(&self, op: SyncOp) -> Result<(), StorageError> {
        let (done, wait) = oneshot::channel();
        self.submit(Job::Sync { op, done })?;
        wait.await.map_err(|_| write_error(WriterStopped::Gone))?.map_err(|e| write_error(WriterStopped::Failed(e)))
    }

    fn read_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.reader.read_meta(key)
    }

    fn read_log_id(&self, key: &str) -> Result<Option<LogId>, StorageError> {
        self.reader.read_log_id(key)
    }

    /// A reader of this log, for the broker: it sees what openraft has handed over, flushed or not.
    pub fn reader(&self) -> LogReader {
        self.reader.clone()
    }

    /// What the log's writer records of its writes and syncs.
    pub fn disk_metrics(&self) -> crate::metrics::DiskMetrics {
        self.reader.shared.disk.clone()
    }
}

impl LogReader {
    /// The id of the last entry handed to the log, flushed or not; the purged id when every entry
    /// is purged.
    pub fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let pending_last = self.shared.pending.lock().expect("pending lock").values().next_back().map(|e| e.log_id);
        match pending_last.or(self.last_on_disk()) {
            Some(last) => Ok(Some(last)),
            None => self.read_log_id(PURGED_KEY),
        }
    }

    fn read_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self.shared.db.begin_read().map_err(read_error)?;
        let table = txn.open_table(META).map_err(read_error)?;
        match table.get(key).map_err(read_error)? {
            Some(stored) => Ok(Some(sealed::unseal(key, stored.value()).map_err(read_error)?.to_vec())),
            None => Ok(None),
        }
    }

    fn read_log_id(&self, key: &str) -> Result<Option<LogId>, StorageError> {
        match self.read_meta(key)? {
            Some(bytes) => {
                let log_id = pb::LogId::decode(bytes.as_slice()).map_err(read_error)?;
                Ok(Some(wire::log_id_from_pb(log_id).map_err(read_error)?))
            }
            None => Ok(None),
        }
    }

    fn last_on_disk(&self) -> Option<LogId> {
        self.shared.index.read().expect("index lock").last()
    }
}

/// The entry `index` whose record lies at `location` of `file`; damage is an error, logged, never
/// an entry.
fn read_entry(index: u64, location: Location, file: &dyn StorageBackend) -> Result<Entry, StorageError> {
    let record = segment::read_record(file, location.segment, location.at, location.body_len).map_err(read_error)?;
    let entry = match record {
        Some(record) => log_layout::decode_entry_record(index, &record),
        None => Err(log_layout::EntryDecodeError::Checksum),
    };
    entry.map_err(|error| {
        tracing::error!(%error, index, segment = location.segment, at = location.at, "a damaged log entry was read and refused");
        read_error(error)
    })
}

/// `range` as a half-open range of indexes, or `None` when it holds none: `BTreeMap::range`
/// panics on a range whose start lies past its end, such as `1..=0`.
fn index_range(range: &impl RangeBounds<u64>) -> Option<std::ops::Range<u64>> {
    let start = match range.start_bound() {
        Bound::Included(&start) => start,
        Bound::Excluded(&start) => start.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&end) => end.saturating_add(1),
        Bound::Excluded(&end) => end,
        Bound::Unbounded => u64::MAX,
    };
    (start < end).then_some(start..end)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some(range) = index_range(&range) else {
            return Ok(Vec::new());
        };
        // Pending first: an entry leaves `pending` only once the index holds it, so whatever is
        // missing from this copy is in the index when it is read below.
        let pending: BTreeMap<u64, Entry> = {
            let pending = self.shared.pending.lock().expect("pending lock");
            pending.range(range.clone()).map(|(index, entry)| (*index, entry.clone())).collect()
        };
        // Where the others lie, taken under the lock; read after it is released.
        let written: Vec<(u64, Location, Arc<dyn StorageBackend>)> = {
            let index = self.shared.index.read().expect("index lock");
            index
                .clamp(range.start, range.end)
                .filter(|i| !pending.contains_key(i))
                .filter_map(|i| index.get(i).map(|(location, file)| (i, location, file)))
                .collect()
        };
        let mut found = BTreeMap::new();
        let mut unkept = Vec::new();
        {
            let recent = self.shared.recent.lock().expect("recent lock");
            for (index, location, file) in written {
                match recent.get(location.log_id) {
                    Some(entry) => drop(found.insert(index, entry)),
                    None => unkept.push((index, location, file)),
                }
            }
        }
        for (index, location, file) in unkept {
            found.insert(index, read_entry(index, location, file.as_ref())?);
        }
        found.extend(pending);
        Ok(found.into_values().collect())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.reader.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.read_log_id(PURGED_KEY)?;
        let last_log_id = self.reader.last_log_id()?;
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.vote = None;
        self.sync(SyncOp::Vote(wire::vote_to_pb(vote).encode_to_vec())).await?;
        self.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.vote = match self.read_meta(VOTE_KEY)? {
            Some(bytes) => {
                let vote = pb::Vote::decode(bytes.as_slice()).map_err(read_error)?;
                Some(wire::vote_from_pb(Some(vote)).map_err(read_error)?)
            }
            None => None,
        };
        Ok(self.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let bytes = committed.as_ref().map(|id| wire::log_id_to_pb(id).encode_to_vec());
        self.submit(Job::Committed(bytes))?;
        self.committed_id = committed;
        self.committed.store(committed.map_or(0, |id| id.index), Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.committed_id)
    }

    async fn append<I>(&mut self, entries: I, flushed: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_reported(entries.into_iter().collect(), Box::new(move |result| flushed.log_io_completed(result)))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut pending = self.reader.shared.pending.lock().expect("pending lock");
            let _ = pending.split_off(&log_id.index);
        }
        self.sync(SyncOp::Truncate(log_id.index)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.state_durable_through(log_id.index).await?;
        {
            let mut pending = self.reader.shared.pending.lock().expect("pending lock");
            pending.retain(|index, _| (Bound::Excluded(log_id.index), Bound::Unbounded).contains(index));
        }
        self.sync(SyncOp::Purge(log_id, wire::log_id_to_pb(&log_id).encode_to_vec())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::EntryBytes;
    use crate::raft::NodeId;
    use crate::raft::crash_disk::Disks;
    use crate::raft::segment::{RECORD_HEAD_BYTES, SEGMENT_BYTES_MAX};
    use openraft::{CommittedLeaderId, EntryPayload};
    use redb::StorageBackend;

    /// The log's files on crashable disks (the state's disk goes unused).
    #[derive(Default)]
    struct Files(Disks);

    impl Files {
        fn open(&self) -> LogStore {
            LogStore::open_on(self.0.log.open(), self.0.segments.open(), 1 << 20, Writer::Inline).unwrap()
        }
        fn crash(&self) {
            self.0.crash();
        }
    }

    fn entry(term: u64, index: u64, payload_bytes: usize) -> Entry {
        let payload = match payload_bytes {
            0 => EntryPayload::Blank,
            n => EntryPayload::Normal(EntryBytes(bytes::Bytes::from(vec![term as u8; n]))),
        };
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, 1), index), payload }
    }

    /// Appends and returns once the append is flushed (the inline writer flushes before it
    /// returns; the assertion keeps the test honest if that changes).
    fn append_flushed(store: &mut LogStore, entry: Entry) {
        let flushed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = Arc::clone(&flushed);
        store.enqueue([entry], Box::new(move |result| done.store(result.is_ok(), Ordering::SeqCst))).unwrap();
        assert!(flushed.load(Ordering::SeqCst), "the append was not flushed");
    }

    fn append_all(store: &mut LogStore, term: u64, indexes: std::ops::RangeInclusive<u64>, payload_bytes: usize) {
        for index in indexes {
            append_flushed(store, entry(term, index, payload_bytes));
        }
    }

    async fn terms(store: &mut LogStore) -> Vec<(u64, u64)> {
        let entries = store.try_get_log_entries(..).await.unwrap();
        entries.iter().map(|e| (e.log_id.index, e.log_id.leader_id.term)).collect()
    }

    /// Where entry `index` lies: its segment's disk and the record's start and length.
    fn record_of(files: &Files, store: &LogStore, index: u64) -> (crate::raft::crash_disk::Disk, u64, usize) {
        let (location, _) = store.reader.shared.index.read().unwrap().get(index).expect("a written entry");
        let disks = files.0.segments.disks();
        let disk = disks.into_iter().find(|(id, _)| *id == location.segment).expect("its segment").1;
        (disk, location.at, RECORD_HEAD_BYTES + location.body_len)
    }

    /// Rewrites the record of entry `index` at rest, body and all, with `damage` applied.
    /// An entry damaged at rest was written long ago: no copy of it is left in memory, so this
    /// drops the log's copies of its latest entries too.
    fn damage_stored(files: &Files, store: &LogStore, index: u64, damage: impl FnOnce(&mut Vec<u8>)) {
        *store.reader.shared.recent.lock().unwrap() = log_write::Recent::default();
        let (disk, at, len) = record_of(files, store, index);
        let handle = disk.open();
        let mut record = vec![0u8; len];
        handle.read(at, &mut record).unwrap();
        damage(&mut record);
        handle.write(at, &record).unwrap();
        handle.sync_data().unwrap();
    }

    /// A flipped byte in a stored entry is refused on every read: replication and apply read
    /// through `try_get_log_entries`.
    #[tokio::test]
    async fn a_damaged_entry_in_a_segment_is_never_read_as_an_entry() {
        let files = Files::default();
        let mut store = files.open();
        append_all(&mut store, 1, 1..=5, 100);
        damage_stored(&files, &store, 3, |stored| {
            let middle = stored.len() / 2;
            stored[middle] ^= 0x04;
        });
        assert_eq!(terms_of(&mut store, 1..=2).await, vec![(1, 1), (2, 1)], "the intact entries read");
        assert!(store.try_get_log_entries(1..=5).await.is_err(), "a damaged entry was read");
        damage_stored(&files, &store, 5, |stored| stored[..4].copy_from_slice(&[0xff; 4]));
        assert!(store.try_get_log_entries(5..=5).await.is_err(), "an entry of another length was read");
    }

    /// Damage found at open cuts the log before it, never after, and records a repair floor at
    /// the last index the log had reached; the floor outlives a restart until finished.
    #[tokio::test]
    async fn a_damaged_stored_entry_cuts_the_log_at_open_and_sets_a_repair_floor() {
        let files = Files::default();
        let mut store = files.open();
        append_all(&mut store, 1, 1..=5, 100);
        assert_eq!(store.repair().floor(), None);
        damage_stored(&files, &store, 3, |stored| stored[RECORD_HEAD_BYTES + 10] ^= 0x01);
        store.sync(SyncOp::Vote(wire::vote_to_pb(&Vote::new(1, 1)).encode_to_vec())).await.unwrap();
        drop(store);
        let mut store = files.open();
        assert_eq!(terms(&mut store).await, vec![(1, 1), (2, 1)], "the log ends before the damage");
        assert_eq!(store.get_log_state().await.unwrap().last_log_id.map(|id| id.index), Some(2));
        assert_eq!(store.read_committed().await.unwrap(), None, "the committed id is forgotten");
        let repair = store.repair();
        assert_eq!(repair.floor(), Some(5));
        assert!(!repair.repaired_by(Some(4)) && repair.repaired_by(Some(5)));
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(1, 1)), "the vote is kept");
        drop(store);
        let store = files.open();
        assert_eq!(store.repair().floor(), Some(5), "a restart carries on with the repair");
        store.repair().finish().unwrap();
        drop(store);
        files.crash();
        assert_eq!(files.open().repair().floor(), None, "a finished repair is durable");
    }

    /// Regression (found by the simulation's storage faults): a broker whose vote was a granted
    /// one for itself restarted as the leader of that term, and with a log cut by damage it handed
    /// out again indexes of its term that followers held with other entries. The cut demotes the
    /// vote to one not granted, keeping its term and candidate.
    #[tokio::test]
    async fn a_cut_log_demotes_a_granted_vote() {
        let files = Files::default();
        let mut store = files.open();
        append_all(&mut store, 2, 1..=4, 40);
        let leader = Vote::new_committed(2, 1);
        store.save_vote(&leader).await.unwrap();
        damage_stored(&files, &store, 3, |stored| stored[RECORD_HEAD_BYTES + 5] ^= 0x08);
        drop(store);
        let mut store = files.open();
        let vote = store.read_vote().await.unwrap().expect("a vote");
        assert!(!vote.committed, "a broker with a cut log would resume leadership: {vote:?}");
        assert_eq!(vote.leader_id, leader.leader_id, "the term and the candidate stay");
    }

    /// Regression (the soak, seed 1005196): a leader whose newest segment lost an entry record
    /// together with the header that covered it read the loss as a torn tail, resumed its term
    /// and handed out that index again with another entry. A torn tail now demotes the vote, so
    /// a broker stands for election instead of resuming; its term and candidate stay.
    #[tokio::test]
    async fn a_torn_tail_demotes_a_granted_vote() {
        let files = Files::default();
        let mut store = files.open();
        let leader = Vote::new_committed(3, 1);
        store.save_vote(&leader).await.unwrap();
        append_all(&mut store, 3, 1..=3, 20);
        drop(store);
        let mut store = files.open();
        assert!(store.read_vote().await.unwrap().unwrap().committed, "no tail was torn: the vote stays");
        drop(store);
        let (_, newest) = files.0.segments.disks().pop().expect("a segment");
        let handle = newest.open();
        // Past the last record: records start at byte 1024.
        let end = handle.len().unwrap().max(1024);
        handle.write(end, &[0x17; 40]).unwrap();
        handle.sync_data().unwrap();
        let mut store = files.open();
        let vote = store.read_vote().await.unwrap().expect("a vote");
        assert!(!vote.committed, "a broker whose log ends in a torn tail would resume leadership: {vote:?}");
        assert_eq!(vote.leader_id, leader.leader_id);
        assert_eq!(terms(&mut store).await.len(), 3, "the entries stay");
    }

    /// A flipped byte in a synced record's head: the log keeps the records before it, and the
    /// valid records after it raise the repair floor to the last index it had reached.
    #[tokio::test]
    async fn a_damaged_segment_record_keeps_what_precedes_it() {
        let files = Files::default();
        let mut store = files.open();
        for term in 1..=5 {
            append_flushed(&mut store, entry(term, term, 100));
        }
        files.crash();
        drop(store);
        let third = [3u8; 100];
        let damaged = files.0.segments.disks().iter().any(|(_, disk)| {
            let handle = disk.open();
            let mut image = vec![0u8; handle.len().unwrap() as usize];
            handle.read(0, &mut image).unwrap();
            let Some(at) = image.windows(third.len()).position(|w| w == third) else { return false };
            handle.write(at as u64 + 50, &[0x55]).unwrap();
            handle.sync_data().unwrap();
            true
        });
        assert!(damaged, "entry 3's record was not found in a segment");
        let mut store = files.open();
        assert_eq!(terms(&mut store).await, vec![(1, 1), (2, 2)]);
        assert_eq!(store.repair().floor(), Some(5));
    }

    /// A synced write the disk loses (any of the last few) either leaves every flushed entry in
    /// place or is found: the log then records a repair floor at or past the last entry.
    #[tokio::test]
    async fn a_lost_write_never_silently_shortens_the_log() {
        for back in 0..8 {
            for file in 0..2 {
                let files = Files::default();
                let mut store = files.open();
                append_all(&mut store, 1, 1..=1, 50);
                // A second segment: the first holds entry 1.
                store.truncate(LogId::new(CommittedLeaderId::new(1, 1), 2)).await.unwrap();
                drop(store);
                let mut store = files.open();
                for index in 2..=3 {
                    append_flushed(&mut store, entry(1, index, 50));
                    store.save_committed(Some(entry(1, index, 0).log_id)).await.unwrap();
                }
                store.save_vote(&Vote::new(2, 1)).await.unwrap();
                for index in 4..=6 {
                    store.save_committed(Some(entry(1, index - 1, 0).log_id)).await.unwrap();
                    append_flushed(&mut store, entry(1, index, 50));
                }
                files.crash();
                drop(store);
                let disks = files.0.segments.disks();
                let Some((_, disk)) = disks.get(disks.len().saturating_sub(1 + file)) else { continue };
                if !disk.lose_write(back) {
                    continue;
                }
                let mut store = files.open();
                let last = store.get_log_state().await.unwrap().last_log_id.map_or(0, |id| id.index);
                let floor = store.repair().floor();
                assert!(
                    last == 6 || floor.is_some_and(|floor| floor >= 6),
                    "losing write {back} back in the segment {file} before the newest left the log at {last} with floor {floor:?}"
                );
            }
        }
    }

    /// An intact entry stored under another index (a misdirected write) is refused too.
    /// The entries just written are read from memory: the apply and the replication that follow
    /// a write do not read the disk (segments are written past the page cache).
    #[tokio::test]
    async fn the_latest_entries_are_read_from_memory() {
        let files = Files::default();
        let mut store = files.open();
        append_all(&mut store, 1, 1..=3, 100);
        let (disk, at, len) = record_of(&files, &store, 2);
        let handle = disk.open();
        handle.write(at, &vec![0u8; len]).unwrap();
        handle.sync_data().unwrap();
        assert_eq!(terms_of(&mut store, 1..=3).await, vec![(1, 1), (2, 1), (3, 1)], "read from memory");
    }

    #[tokio::test]
    async fn an_entry_under_another_index_is_refused() {
        let files = Files::default();
        let mut store = files.open();
        append_all(&mut store, 1, 1..=3, 10);
        let second = {
            let (disk, at, len) = record_of(&files, &store, 2);
            let mut record = vec![0u8; len];
            disk.open().read(at, &mut record).unwrap();
            record
        };
        damage_stored(&files, &store, 3, |stored| *stored = second);
        assert!(store.try_get_log_entries(3..=3).await.is_err());
    }

    async fn terms_of(store: &mut LogStore, range: std::ops::RangeInclusive<u64>) -> Vec<(u64, u64)> {
        let entries = store.try_get_log_entries(range).await.unwrap();
        entries.iter().map(|e| (e.log_id.index, e.log_id.leader_id.term)).collect()
    }

    /// Appends are durable in their segment once flushed, and the log opens again on them.
    #[tokio::test]
    async fn flushed_appends_survive_a_power_loss() {
        let files = Files::default();
        let mut store = files.open();
        store.save_vote(&Vote::new(1, 1)).await.unwrap();
        append_all(&mut store, 1, 1..=50, 100);
        files.crash();
        let mut store = files.open();
        assert_eq!(terms(&mut store).await, (1..=50).map(|index| (index, 1)).collect::<Vec<_>>());
        assert_eq!(store.get_log_state().await.unwrap().last_log_id.map(|id| id.index), Some(50));
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
        // Opening again started a new segment: a second power loss loses nothing either.
        files.crash();
        assert_eq!(terms(&mut files.open()).await.len(), 50);
    }

    /// The committed id rides the next append's sync, so after a power loss openraft re-applies
    /// what it had applied before serving, instead of serving a state that went back in time
    /// (seen in chaos as a subscriber told its topic did not exist).
    #[tokio::test]
    async fn the_committed_id_survives_a_power_loss_with_the_next_append() {
        let files = Files::default();
        let mut store = files.open();
        append_all(&mut store, 1, 1..=5, 10);
        let committed = LogId::new(CommittedLeaderId::new(1, 1), 5);
        store.save_committed(Some(committed)).await.unwrap();
        append_flushed(&mut store, entry(1, 6, 10));
        files.crash();
        assert_eq!(files.open().read_committed().await.unwrap(), Some(committed));
    }

    /// A truncate checkpoints and starts a new epoch, so the truncated entries still in the
    /// write-ahead file are not replayed over the new ones.
    #[tokio::test]
    async fn a_truncated_suffix_stays_truncated_after_a_power_loss() {
        let files = Files::default();
        let mut store = files.open();
        append_all(&mut store, 1, 1..=10, 10);
        store.truncate(LogId::new(CommittedLeaderId::new(1, 1), 6)).await.unwrap();
        append_all(&mut store, 2, 6..=8, 10);
        files.crash();
        let expected: Vec<_> = (1..=5).map(|i| (i, 1)).chain((6..=8).map(|i| (i, 2))).collect();
        assert_eq!(terms(&mut files.open()).await, expected);
    }

    /// Once a segment holds `SEGMENT_BYTES_MAX`, the next batch goes to a new one; a purge removes
    /// the segments it empties, whole; every entry left survives a power loss.
    #[tokio::test]
    async fn a_full_segment_starts_the_next_and_a_purge_removes_whole_segments() {
        let files = Files::default();
        let mut store = files.open();
        let entry_bytes = 1 << 18;
        let entries = 3 * SEGMENT_BYTES_MAX / entry_bytes as u64;
        for index in 1..=entries {
            append_flushed(&mut store, entry(1, index, entry_bytes));
            let Jobs::Inline(appender) = &store.jobs else { unreachable!("the test opens the log inline") };
            let (_, bytes) = appender.lock().unwrap().current_segment();
            assert!(bytes < SEGMENT_BYTES_MAX + 2 * entry_bytes as u64, "a segment grew to {bytes}");
        }
        let segments = files.0.segments.disks().len();
        assert!(segments >= 3, "{segments} segments for three segments' worth");
        let purged = LogId::new(CommittedLeaderId::new(1, 1), entries / 2);
        store.purge(purged).await.unwrap();
        let left = files.0.segments.disks().len();
        assert!(left < segments && left >= 2, "{segments} segments before the purge, {left} after");
        assert!(store.try_get_log_entries(entries / 2 + 1..=entries).await.is_ok());
        files.crash();
        let mut store = files.open();
        let kept = terms(&mut store).await;
        assert_eq!(kept.first().map(|(index, _)| *index), Some(entries / 2 + 1));
        assert_eq!(kept.len() as u64, entries - entries / 2);
        assert_eq!(store.get_log_state().await.unwrap().last_purged_log_id, Some(purged));
    }

    /// A truncate is durable on its own: the dropped entries stay in their segment, and a power
    /// loss before anything is appended after it must not bring them back.
    #[tokio::test]
    async fn a_truncate_outlives_a_power_loss_with_nothing_after_it() {
        let files = Files::default();
        let mut store = files.open();
        append_all(&mut store, 1, 1..=6, 10);
        store.truncate(LogId::new(CommittedLeaderId::new(1, 1), 4)).await.unwrap();
        files.crash();
        let mut store = files.open();
        assert_eq!(terms(&mut store).await, vec![(1, 1), (2, 1), (3, 1)]);
        // And the next opening, which starts yet another segment, still agrees.
        append_all(&mut store, 2, 4..=4, 10);
        files.crash();
        assert_eq!(terms(&mut files.open()).await, vec![(1, 1), (2, 1), (3, 1), (4, 2)]);
    }

    /// Forgetting the entries is durable, keeps the vote (not granted) and sets the repair floor;
    /// the segments that held them are removed.
    #[tokio::test]
    async fn forgotten_entries_stay_forgotten() {
        let files = Files::default();
        let mut store = files.open();
        store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        append_all(&mut store, 2, 1..=5, 10);
        store.purge(LogId::new(CommittedLeaderId::new(2, 1), 2)).await.unwrap();
        assert_eq!(store.forget_entries().await.unwrap(), 5);
        files.crash();
        let mut store = files.open();
        assert!(terms(&mut store).await.is_empty(), "forgotten entries came back");
        let state = store.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (None, None));
        assert_eq!(store.repair().floor(), Some(5));
        assert!(!store.read_vote().await.unwrap().unwrap().committed);
        assert_eq!(files.0.segments.disks().len(), 1, "segments of forgotten entries were kept");
    }

    /// A log written before segments keeps its entries in a redb table this log does not read:
    /// opening it is a typed error, never an empty log taken for whole.
    #[test]
    fn a_log_from_before_segments_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            let old: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("raft_log");
            txn.open_table(old).unwrap().insert(1, b"an old entry".as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let error = LogStore::open(&path, 1 << 20).expect_err("an old log was opened");
        assert!(error.to_string().contains("before log segments"), "{error}");
    }

    /// An empty or inverted range reads nothing instead of panicking inside `BTreeMap::range`
    /// while it holds the pending lock, which poisoned it and stopped the writer.
    #[tokio::test]
    async fn empty_and_inverted_ranges_read_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(&dir.path().join("log.redb"), 1 << 20).unwrap();
        let entry = Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), 1), payload: EntryPayload::Blank };
        store.enqueue([entry], Box::new(|_| ())).unwrap();
        #[allow(clippy::reversed_empty_ranges)]
        for entries in [
            store.try_get_log_entries(1..=0).await.unwrap(),
            store.try_get_log_entries(1..1).await.unwrap(),
            store.try_get_log_entries(5..2).await.unwrap(),
            store.try_get_log_entries((Bound::Excluded(u64::MAX), Bound::Unbounded)).await.unwrap(),
        ] {
            assert!(entries.is_empty());
        }
        assert_eq!(store.try_get_log_entries(..).await.unwrap().len(), 1);
        assert_eq!(store.try_get_log_entries(1..=1).await.unwrap().len(), 1);
    }

    /// Tied to the state machine, a purge waits until the state is durable at the purge point,
    /// and fails instead of hanging once the state machine is gone.
    #[tokio::test(start_paused = true)]
    async fn a_tied_purge_waits_for_the_state_to_be_durable_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(&dir.path().join("log.redb"), 1 << 20).unwrap();
        let log_id = |index| LogId::new(CommittedLeaderId::new(1, 1), index);
        let (durable, state_durable) = watch::channel(Some(3));
        store.purge_behind_state(state_durable);
        store.purge(log_id(2)).await.expect("a purge the state already covers needs no wait");
        {
            let purge = store.purge(log_id(5));
            tokio::pin!(purge);
            let early = tokio::time::timeout(std::time::Duration::from_secs(60), &mut purge).await;
            assert!(early.is_err(), "purged to 5 while the state was durable only to 3");
            durable.send_replace(Some(5));
            purge.await.unwrap();
        }
        assert_eq!(store.get_log_state().await.unwrap().last_purged_log_id, Some(log_id(5)));
        drop(durable);
        assert!(store.purge(log_id(8)).await.is_err(), "a purge waited on a state machine that is gone");
    }

    /// Readers racing the writer thread never see a gap: an entry is always either pending or
    /// on disk. (Reading disk before pending once lost entries flushed in between.)
    /// A log with a writer thread on crashable disks, ahead of its syncs as broker 1, under a
    /// vote for `leader` in term 3.
    async fn leading(files: &Files, leader: NodeId) -> (LogStore, LeadSync) {
        let mut store =
            LogStore::open_on(files.0.log.open(), files.0.segments.open(), 1 << 20, Writer::Thread).unwrap();
        let lead = LeadSync::new(1);
        store.lead_ahead_of_sync(lead.clone());
        let vote = Vote { leader_id: openraft::LeaderId::new(3, leader), committed: true };
        store.save_vote(&vote).await.unwrap();
        (store, lead)
    }

    fn entry_of(leader: NodeId, index: u64) -> Entry {
        let log_id = LogId::new(CommittedLeaderId::new(3, leader), index);
        Entry { log_id, payload: EntryPayload::Normal(EntryBytes(bytes::Bytes::from_static(b"payload"))) }
    }

    /// What an append reported, and when.
    fn reported() -> (Flushed, std::sync::mpsc::Receiver<bool>) {
        let (tell, told) = std::sync::mpsc::channel();
        (Box::new(move |result: Result<(), std::io::Error>| tell.send(result.is_ok()).unwrap()), told)
    }

    #[tokio::test]
    async fn a_leaders_append_is_reported_at_once_and_applies_wait_for_its_sync() {
        let files = Files::default();
        let (mut store, lead) = leading(&files, 1).await;
        // The broker's disks die under it: the sync of the append cannot succeed.
        files.crash();
        let (report, told) = reported();
        store.append_reported(vec![entry_of(1, 1)], report).unwrap();
        assert_eq!(told.try_recv(), Ok(true), "reported before the writer ran");
        assert!(lead.synced_through(1).await.is_err(), "the apply of an entry whose sync failed must fail");
        assert_eq!(lead.clamp_commit(Some(LogId::new(CommittedLeaderId::new(3, 1), 1))), None);
    }

    #[tokio::test]
    async fn a_followers_append_is_reported_only_by_its_sync() {
        let files = Files::default();
        let (mut store, lead) = leading(&files, 2).await;
        files.crash();
        let (report, told) = reported();
        store.append_reported(vec![entry_of(2, 1)], report).unwrap();
        let outcome = tokio::task::spawn_blocking(move || told.recv_timeout(std::time::Duration::from_secs(10)));
        assert_eq!(outcome.await.unwrap(), Ok(false), "the failed sync is what the follower reports");
        lead.synced_through(1).await.expect("a follower's appends hold nothing back");
    }

    #[tokio::test]
    async fn a_leaders_synced_append_survives_a_power_loss() {
        let files = Files::default();
        let (mut store, lead) = leading(&files, 1).await;
        for index in 1..=3 {
            let (report, _told) = reported();
            store.append_reported(vec![entry_of(1, index)], report).unwrap();
        }
        lead.synced_through(3).await.unwrap();
        let commit = Some(LogId::new(CommittedLeaderId::new(3, 1), 3));
        assert_eq!(lead.clamp_commit(commit), commit, "nothing is left unsynced");
        drop(store);
        files.crash();
        let mut reopened = files.open();
        assert_eq!(terms(&mut reopened).await, vec![(1, 3), (2, 3), (3, 3)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_racing_flushes_see_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(&dir.path().join("log.redb"), 1 << 20).unwrap();
        let reader = store.get_log_reader().await;
        let appended = Arc::new(AtomicU64::new(0));
        let check = {
            let (mut reader, appended) = (reader.clone(), Arc::clone(&appended));
            tokio::spawn(async move {
                while appended.load(Ordering::Acquire) < 2_000 {
                    let upto = appended.load(Ordering::Acquire);
                    let entries = reader.try_get_log_entries(1..=upto).await.unwrap();
                    assert_eq!(entries.len() as u64, upto, "a gap in entries 1..={upto}");
                    tokio::task::yield_now().await;
                }
            })
        };
        for index in 1..=2_000u64 {
            let entry = Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank };
            let (flushed, done) = oneshot::channel();
            store.enqueue([entry], Box::new(move |result| drop(flushed.send(result)))).unwrap();
            appended.store(index, Ordering::Release);
            if index % 100 == 0 {
                let _ = done.await;
            }
        }
        check.await.unwrap();
    }
}
