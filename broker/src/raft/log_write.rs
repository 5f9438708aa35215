//! The log's write path, in two stages that each own one file.
//!
//! 1. **Write-ahead** ([`WalPair`]): appends go to the current write-ahead file, one write and one
//!    `sync_data` per batch, and then their flush callbacks fire: concurrent appends share one
//!    fsync (group commit). No redb work is on this path.
//! 2. **Store**: the same entries then go into redb in transactions without durability, and leave
//!    `pending` (where readers saw them until then). A checkpoint commits redb durably and records
//!    the epoch from which the write-ahead files still matter.
//!
//! There are two write-ahead files. When the current one holds [`WAL_BYTES_MAX`], or a vote,
//! truncate or purge arrives, the write-ahead stage switches to the other file under the next
//! epoch and hands the store stage a checkpoint to that epoch; appends go on into the new file
//! while redb syncs, so a checkpoint does not stall them. Before reusing a file the write-ahead
//! stage waits until a checkpoint covers its records; that wait is the backpressure that bounds
//! `pending`. Vote, truncate and purge are done, and their callers told, once their checkpoint is
//! durable; openraft awaits them, so nothing is appended behind one until then. Under
//! `Writer::Inline` (the log store's) both stages run on the caller's thread, one after the
//! other.
//!
//! The committed id goes to the write-ahead file too, unsynced: the next append's sync carries it,
//! so after a crash openraft re-applies, before it serves, about as much as it had applied.
//! Opening replays every write-ahead file of the recorded epoch or later, in epoch order, into
//! redb, checks every stored entry, and checkpoints. A torn tail is dropped; damage to what was
//! synced cuts the log before it and records a repair floor ([`recover`]), so a broker never
//! votes or leads with a log that silently lost entries it acknowledged.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, mpsc};

use redb::{Database, Durability, ReadableTable, StorageBackend};

use chorus_protocol::pb;
use prost::Message;

use super::log_layout::{
    COMMITTED_KEY, EntryDecodeError, LOG, META, PURGED_KEY, REPAIR_KEY, VOTE_KEY, decode_entry, decode_entry_at,
    stored_entry,
};
use super::wal::{self, Wal};
use super::{Entry, LogId};

/// The epoch from which write-ahead files hold records redb does not yet hold durably.
const WAL_EPOCH_KEY: &str = "wal_epoch";
/// A batch that finds the current write-ahead file this large switches files and checkpoints.
/// It bounds replay at open and the pages redb keeps back between durable commits. A checkpoint
/// writes and syncs those pages off the append path, but its writes still share the disk with
/// the appends' syncs: in `chorus bench --publish-only` (two runs each) the p99.9 ack latency was
/// 11 and 12 ms at 1 MiB, 15 and 20 ms at 2 MiB, 25 and 24 ms at 4 MiB, 27 and 33 ms at 16 MiB,
/// with throughput alike.
pub const WAL_BYTES_MAX: u64 = 1 << 20;
/// The first byte of a write-ahead record: what the rest is.
const RECORD_ENTRY: u8 = 0;
const RECORD_COMMITTED: u8 = 1;
const RECORD_COMMITTED_NONE: u8 = 2;
/// Most jobs one batch carries, in either stage.
const JOBS_PER_BATCH_MAX: usize = 4096;
/// How long the write-ahead stage idles before it records the durable end of its last sync in
/// the current file's header ([`Wal::seal`]). Under load every sync records the end of the one
/// before; this covers the last one, at the cost of one sync per idle spell.
const SEAL_AFTER_IDLE: std::time::Duration = std::time::Duration::from_millis(5);

/// Called once an append is on disk (or failed to get there).
pub(super) type Flushed = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;
/// Told whether a vote, truncate or purge is durable.
pub(super) type Done = tokio::sync::oneshot::Sender<Result<(), Arc<WriteFailed>>>;

/// An entry as a write-ahead record: [`RECORD_ENTRY`], then the entry as redb stores it
/// ([`stored_entry`]: checksummed), so the store stage inserts the record's tail as it is.
pub(super) fn entry_record(entry: &pb::RaftEntry) -> Vec<u8> {
    stored_entry(entry, &[RECORD_ENTRY])
}

/// What the log store asks of the write path, in order.
pub(super) enum Job {
    /// Entries as write-ahead records ([`entry_record`]).
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
}

/// What the store stage does to redb, in order.
enum StoreJob {
    Entries(Vec<(LogId, Vec<u8>)>),
    Committed(Option<Vec<u8>>),
    /// Commit durably, recording `epoch`: every write-ahead record before it is then in redb.
    Checkpoint {
        epoch: u64,
        op: Option<(SyncOp, Done)>,
    },
}

/// What both stages share with the log's readers.
pub(super) struct Shared {
    pub(super) db: Database,
    /// Appended and not yet in redb: readers see them here.
    pub(super) pending: Mutex<BTreeMap<u64, Entry>>,
    /// The epoch the last durable checkpoint recorded, or `None` once the store stage failed.
    durable_epoch: (Mutex<Option<u64>>, Condvar),
}

impl Shared {
    #[cfg(test)]
    pub(super) fn durable_epoch(&self) -> Option<u64> {
        *self.durable_epoch.0.lock().expect("epoch lock")
    }

    fn set_durable_epoch(&self, epoch: Option<u64>) {
        *self.durable_epoch.0.lock().expect("epoch lock") = epoch;
        self.durable_epoch.1.notify_all();
    }

    /// Waits until a durable checkpoint has recorded `epoch` or a later one.
    fn wait_durable_epoch(&self, epoch: u64) -> Result<(), WriteFailed> {
        let guard = self.durable_epoch.0.lock().expect("epoch lock");
        let guard = self
            .durable_epoch
            .1
            .wait_while(guard, |durable| durable.is_some_and(|durable| durable < epoch))
            .expect("epoch lock");
        guard.map(|_| ()).ok_or(WriteFailed::StoreStopped)
    }
}

/// Why a batch did not reach the disk.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteFailed {
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    #[error("write-ahead file: {0}")]
    Wal(#[from] std::io::Error),
    #[error("the write-ahead epoch in the log's metadata is corrupt")]
    CorruptEpoch,
    #[error("the repair floor in the log's metadata is corrupt")]
    CorruptRepairFloor,
    #[error("the vote in the log's metadata is corrupt")]
    CorruptVote,
    #[error("a write-ahead record with a valid checksum is not a log entry")]
    CorruptRecord(#[source] Option<EntryDecodeError>),
    #[error("the log's store stage failed earlier")]
    StoreStopped,
    #[error("the write-ahead files could not switch earlier: {0}")]
    SwitchFailed(#[source] Arc<WriteFailed>),
}

/// The two write-ahead files: records go to `current`; the other waits for a checkpoint to cover
/// its records before it takes over.
pub(super) struct WalPair {
    files: [Wal; 2],
    current: usize,
    /// Set when a switch failed: the store stage is gone, so the pair takes no more appends.
    failed: Option<Arc<WriteFailed>>,
}

impl WalPair {
    #[cfg(test)]
    pub(super) fn current_bytes(&self) -> u64 {
        self.files[self.current].bytes()
    }

    /// Records the current file's durable end, if it lags. A failure is logged; the file then
    /// takes no more records, so the next append reports it.
    fn seal(&mut self) {
        if self.failed.is_some() {
            return;
        }
        if let Err(error) = self.files[self.current].seal() {
            tracing::error!(%error, "the write-ahead file's header could not be written");
        }
    }

    /// Switches to the other file under the next epoch, once a durable checkpoint covers that
    /// file's records, and returns the new epoch.
    fn switch(&mut self, shared: &Shared) -> Result<u64, WriteFailed> {
        self.files[self.current].seal()?;
        let next = 1 - self.current;
        shared.wait_durable_epoch(self.files[next].epoch() + 1)?;
        let epoch = self.files[self.current].epoch() + 1;
        self.files[next].reset(epoch)?;
        self.current = next;
        Ok(epoch)
    }
}

/// Opens the log's redb tables and its write-ahead files, replays into redb every file of the
/// recorded epoch or later, in epoch order, checks every stored entry, and checkpoints.
///
/// Damage is never a shorter log taken for whole: the log keeps what precedes the first damaged
/// entry or record, drops the rest (the valid entries after a hole cannot stay: a log has no
/// holes), forgets the committed id, and records a **repair floor**, the greatest index it had
/// reached, in the same durable transaction. Until its state machine has applied that index
/// again, from a leader, the broker must not vote or stand for election
/// ([`super::repair`]).
pub(super) fn recover(db: Database, files: [Box<dyn StorageBackend>; 2]) -> Result<(Shared, WalPair), WriteFailed> {
    let txn = db.begin_write().map_err(redb::Error::from)?;
    let (mut wals, epoch) = {
        let mut log = txn.open_table(LOG).map_err(redb::Error::from)?;
        let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
        let durable = match meta.get(WAL_EPOCH_KEY).map_err(redb::Error::from)? {
            Some(bytes) => u64::from_le_bytes(bytes.value().try_into().map_err(|_| WriteFailed::CorruptEpoch)?),
            None => 0,
        };
        let [first, second] = files;
        let mut wals = [open_wal(0, first, durable)?, open_wal(1, second, durable)?];
        wals.sort_by_key(|(_, (wal, _))| wal.epoch());
        let mut salvage = Salvage::default();
        for (file, replay) in &wals {
            salvage.replay(&mut log, &mut meta, *file, replay)?;
        }
        salvage.check_stored(&mut log)?;
        salvage.finish(&mut log, &mut meta)?;
        let epoch = durable.max(wals[1].1.0.epoch()) + 1;
        meta.insert(WAL_EPOCH_KEY, epoch.to_le_bytes().as_slice()).map_err(redb::Error::from)?;
        (wals.map(|(_, (wal, _))| wal), epoch)
    };
    txn.commit().map_err(redb::Error::from)?;
    wals[0].reset(epoch)?;
    let shared =
        Shared { db, pending: Mutex::new(BTreeMap::new()), durable_epoch: (Mutex::new(Some(epoch)), Condvar::new()) };
    Ok((shared, WalPair { files: wals, current: 0, failed: None }))
}

/// Marks the stored vote as not granted by a quorum. openraft 0.9 starts a broker whose vote is
/// a granted one for itself as the leader of that term, without an election; a leader whose log
/// lost entries would then hand out again indexes of its term that its followers still hold
/// with other entries, and Raft's log matching (same index and term, same entry) would break.
/// The simulation's storage faults found this. The term and the candidate stay as they were.
pub(super) fn demote_vote(meta: &mut MetaTable<'_>) -> Result<(), WriteFailed> {
    let Some(bytes) = meta.get(VOTE_KEY).map_err(redb::Error::from)?.map(|v| v.value().to_vec()) else {
        return Ok(());
    };
    let mut vote = pb::Vote::decode(bytes.as_slice()).map_err(|_| WriteFailed::CorruptVote)?;
    if vote.committed {
        vote.committed = false;
        meta.insert(VOTE_KEY, vote.encode_to_vec().as_slice()).map_err(redb::Error::from)?;
    }
    Ok(())
}

/// The greatest index the repair floor holds, if a repair is under way.
pub(super) fn read_repair_floor(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<u64>, WriteFailed> {
    match meta.get(REPAIR_KEY).map_err(redb::Error::from)? {
        Some(bytes) => {
            Ok(Some(u64::from_le_bytes(bytes.value().try_into().map_err(|_| WriteFailed::CorruptRepairFloor)?)))
        }
        None => Ok(None),
    }
}

/// Replay's account of what it kept and what it found damaged.
#[derive(Debug, Default)]
struct Salvage {
    /// A write-ahead file is damaged: no later record is replayed.
    wal_damaged: bool,
    /// A damaged file's header is gone with its mark: how far the log reached is unknown.
    horizon_unknown: bool,
    /// The first damaged entry redb holds: nothing from its index on is kept.
    first_lost: Option<u64>,
    /// The greatest index any record, header or stored entry shows the log reached.
    horizon: u64,
}

type LogTable<'t> = redb::Table<'t, u64, &'static [u8]>;
pub(super) type MetaTable<'t> = redb::Table<'t, &'static str, &'static [u8]>;

impl Salvage {
    /// Replays one write-ahead file into the tables, unless damage came before it; its damage,
    /// if any, is logged with the file and position.
    fn replay(
        &mut self,
        log: &mut LogTable<'_>,
        meta: &mut MetaTable<'_>,
        file: usize,
        (_, replay): &(Wal, wal::Replay),
    ) -> Result<(), WriteFailed> {
        self.horizon = self.horizon.max(replay.durable_mark);
        if !self.wal_damaged {
            for record in &replay.bodies {
                match record.split_first() {
                    Some((&RECORD_ENTRY, entry)) => {
                        let index = decode_entry(entry).map_err(|e| WriteFailed::CorruptRecord(Some(e)))?.log_id.index;
                        log.insert(index, entry).map_err(redb::Error::from)?;
                    }
                    Some((&RECORD_COMMITTED, committed)) => {
                        meta.insert(COMMITTED_KEY, committed).map_err(redb::Error::from)?;
                    }
                    Some((&RECORD_COMMITTED_NONE, [])) => {
                        meta.remove(COMMITTED_KEY).map_err(redb::Error::from)?;
                    }
                    _ => return Err(WriteFailed::CorruptRecord(None)),
                }
            }
        } else {
            self.see(&replay.bodies);
        }
        if let Some(damage) = &replay.damage {
            tracing::error!(file = format!("log.wal{file}"), corruption = %damage.corruption, "the write-ahead file is damaged");
            self.see(&damage.after);
            self.wal_damaged = true;
            self.horizon_unknown |= damage.corruption == wal::WalCorruption::Header;
        }
        Ok(())
    }

    /// Raises the horizon to the entries among `records` (lost ones: they only tell how far the
    /// log reached).
    fn see(&mut self, records: &[Vec<u8>]) {
        for record in records {
            if let Some((&RECORD_ENTRY, entry)) = record.split_first()
                && let Ok(entry) = decode_entry(entry)
            {
                self.horizon = self.horizon.max(entry.log_id.index);
            }
        }
    }

    /// Checks every entry redb holds; the first that fails its checksum or sits under another
    /// index is damage.
    fn check_stored(&mut self, log: &mut LogTable<'_>) -> Result<(), WriteFailed> {
        let mut checked = 0u64;
        for item in log.iter().map_err(redb::Error::from)? {
            let (index, stored) = item.map_err(redb::Error::from)?;
            let index = index.value();
            checked += 1;
            self.horizon = self.horizon.max(index);
            if self.first_lost.is_some_and(|lost| lost <= index) {
                continue;
            }
            if let Err(error) = decode_entry_at(index, stored.value()) {
                tracing::error!(index, %error, "a log entry is damaged");
                self.first_lost = Some(index);
            }
        }
        tracing::info!(checked, "checked the log's stored entries");
        Ok(())
    }

    /// Drops what follows the damage, forgets the committed id, and records the repair floor,
    /// keeping a floor recorded before if it is higher. A damaged write-ahead file lost the
    /// entries past those redb holds intact, up to the horizon; if the horizon is unknown, at
    /// least the next one.
    fn finish(mut self, log: &mut LogTable<'_>, meta: &mut MetaTable<'_>) -> Result<(), WriteFailed> {
        if self.wal_damaged {
            let kept_end = match self.first_lost {
                Some(first_lost) => first_lost,
                None => log.last().map_err(redb::Error::from)?.map_or(0, |(index, _)| index.value() + 1),
            };
            if self.horizon_unknown || self.horizon >= kept_end {
                self.first_lost = Some(kept_end);
            }
        }
        let Some(first_lost) = self.first_lost else {
            if self.wal_damaged {
                tracing::warn!("the damaged write-ahead records are all in the log's store already: nothing was lost");
            }
            return Ok(());
        };
        log.retain_in(first_lost.., |_, _| false).map_err(redb::Error::from)?;
        meta.remove(COMMITTED_KEY).map_err(redb::Error::from)?;
        demote_vote(meta)?;
        let horizon = read_repair_floor(meta)?.unwrap_or(0).max(self.horizon).max(first_lost);
        meta.insert(REPAIR_KEY, horizon.to_le_bytes().as_slice()).map_err(redb::Error::from)?;
        tracing::error!(
            first_lost,
            horizon,
            "the log lost entries to damage; it keeps what precedes them, and this broker will not vote or lead until a leader has repaired it through index {horizon}"
        );
        Ok(())
    }
}

/// Opens write-ahead file number `file` and replays it, if its epoch is `durable` or later. A
/// torn tail is dropped, and said so; damage is in the replay.
fn open_wal(
    file: usize,
    backend: Box<dyn StorageBackend>,
    durable: u64,
) -> Result<(usize, (Wal, wal::Replay)), WriteFailed> {
    let (wal, replay) = Wal::open(backend, durable)?;
    if let Some(at) = replay.torn_at {
        tracing::info!(file = format!("log.wal{file}"), at, "the write-ahead file ends in a torn tail, dropped");
    }
    Ok((file, (wal, replay)))
}

/// The write-ahead stage of one batch: writes and syncs its appends, fires their callbacks, and
/// switches files when the batch ends in a vote, truncate or purge or the file is full. Returns
/// what the store stage must do, in order.
fn write_ahead(wal: &mut WalPair, shared: &Shared, jobs: Vec<Job>) -> Vec<StoreJob> {
    let mut store = Vec::with_capacity(jobs.len() + 1);
    let mut flushes = Vec::new();
    let mut sync = None;
    // The latest committed id is all replay needs of them.
    let committed = jobs.iter().rev().find_map(|job| match job {
        Job::Committed(Some(bytes)) => Some([&[RECORD_COMMITTED], bytes.as_slice()].concat()),
        Job::Committed(None) => Some(vec![RECORD_COMMITTED_NONE]),
        _ => None,
    });
    let mut records: Vec<&[u8]> = Vec::new();
    for job in &jobs {
        if let Job::Append { entries, .. } = job {
            records.extend(entries.iter().map(|(_, record)| record.as_slice()));
        }
    }
    let appends = !records.is_empty();
    let mark = jobs
        .iter()
        .filter_map(|job| match job {
            Job::Append { entries, .. } => entries.iter().map(|(log_id, _)| log_id.index).max(),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    records.extend(committed.as_deref());
    let file = &mut wal.files[wal.current];
    let written = match &wal.failed {
        Some(failed) => Err(Arc::new(WriteFailed::SwitchFailed(Arc::clone(failed)))),
        None => file
            .append(records, mark)
            .and_then(|()| if appends { file.sync() } else { Ok(()) })
            .map_err(|e| Arc::new(WriteFailed::Wal(e))),
    };
    for job in jobs {
        match job {
            Job::Append { entries, flushed } => {
                flushes.push(flushed);
                store.push(StoreJob::Entries(entries));
            }
            Job::Committed(bytes) => store.push(StoreJob::Committed(bytes)),
            Job::Sync { op, done } => {
                assert!(sync.is_none(), "a batch carries at most one vote, truncate or purge, at its end");
                sync = Some((op, done));
            }
        }
    }
    for flushed in flushes {
        flushed(written.clone().map_err(std::io::Error::other));
    }
    if let Err(error) = written {
        if let Some((_, done)) = sync {
            let _ = done.send(Err(error));
        }
        return Vec::new();
    }
    if sync.is_some() || wal.files[wal.current].bytes() >= WAL_BYTES_MAX {
        match wal.switch(shared) {
            Ok(epoch) => store.push(StoreJob::Checkpoint { epoch, op: sync }),
            Err(error) => {
                tracing::error!(%error, "the log's write-ahead files could not switch");
                let error = Arc::new(error);
                wal.failed = Some(Arc::clone(&error));
                if let Some((_, done)) = sync {
                    let _ = done.send(Err(error));
                }
            }
        }
    }
    store
}

/// The store stage of one batch: one redb transaction, durable if it checkpoints.
fn store(shared: &Shared, jobs: Vec<StoreJob>) {
    let result = commit_to_redb(&shared.db, &jobs).map_err(|e| Arc::new(WriteFailed::Redb(e)));
    match &result {
        Ok(()) => {
            forget_stored(shared, &jobs);
            let epoch = jobs.iter().rev().find_map(|job| match job {
                StoreJob::Checkpoint { epoch, .. } => Some(*epoch),
                _ => None,
            });
            if epoch.is_some() {
                shared.set_durable_epoch(epoch);
            }
        }
        Err(error) => {
            tracing::error!(%error, "the log's store stage failed");
            shared.set_durable_epoch(None);
        }
    }
    for job in jobs {
        if let StoreJob::Checkpoint { op: Some((_, done)), .. } = job {
            let _ = done.send(result.clone());
        }
    }
}

fn commit_to_redb(db: &Database, jobs: &[StoreJob]) -> Result<(), redb::Error> {
    let checkpoint = jobs.iter().any(|job| matches!(job, StoreJob::Checkpoint { .. }));
    let mut txn = db.begin_write()?;
    txn.set_durability(if checkpoint { Durability::Immediate } else { Durability::None })?;
    {
        let mut log = txn.open_table(LOG)?;
        let mut meta = txn.open_table(META)?;
        for job in jobs {
            match job {
                StoreJob::Entries(entries) => {
                    for (log_id, record) in entries {
                        log.insert(log_id.index, &record[1..])?;
                    }
                }
                StoreJob::Committed(Some(bytes)) => {
                    meta.insert(COMMITTED_KEY, bytes.as_slice())?;
                }
                StoreJob::Committed(None) => {
                    meta.remove(COMMITTED_KEY)?;
                }
                StoreJob::Checkpoint { epoch, op } => {
                    match op {
                        None => {}
                        Some((SyncOp::Vote(bytes), _)) => {
                            meta.insert(VOTE_KEY, bytes.as_slice())?;
                        }
                        Some((SyncOp::Truncate(from), _)) => {
                            log.retain_in(*from.., |_, _| false)?;
                        }
                        Some((SyncOp::Purge(log_id, bytes), _)) => {
                            log.retain_in(..=log_id.index, |_, _| false)?;
                            meta.insert(PURGED_KEY, bytes.as_slice())?;
                        }
                    }
                    meta.insert(WAL_EPOCH_KEY, epoch.to_le_bytes().as_slice())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Entries now in redb leave `pending`, unless a newer append has replaced them there.
fn forget_stored(shared: &Shared, jobs: &[StoreJob]) {
    let mut pending = shared.pending.lock().expect("pending lock");
    for job in jobs {
        if let StoreJob::Entries(entries) = job {
            for (log_id, _) in entries {
                if pending.get(&log_id.index).is_some_and(|e| e.log_id == *log_id) {
                    pending.remove(&log_id.index);
                }
            }
        }
    }
}

/// Runs both stages on the caller's thread, and records the durable end at once: a simulation
/// never idles on a thread, so this stands for the writer's seal after 5 ms idle.
pub(super) fn run_inline(wal: &mut WalPair, shared: &Shared, jobs: Vec<Job>) {
    let stored = write_ahead(wal, shared, jobs);
    wal.seal();
    store(shared, stored);
}

/// Starts a thread for each stage; jobs sent to the returned queue run through both. Both stop
/// once the queue's sender is dropped.
pub(super) fn spawn(wal: WalPair, shared: Arc<Shared>) -> std::io::Result<mpsc::Sender<Job>> {
    let (jobs, queue) = mpsc::channel();
    let (to_store, store_queue) = mpsc::channel();
    let storer = Arc::clone(&shared);
    std::thread::Builder::new().name("chorus-log-store".into()).spawn(move || store_loop(&storer, &store_queue))?;
    std::thread::Builder::new()
        .name("chorus-log-writer".into())
        .spawn(move || write_ahead_loop(wal, &shared, &queue, &to_store))?;
    Ok(jobs)
}

/// The write-ahead thread: batches queued jobs, ending a batch at a vote, truncate or purge.
fn write_ahead_loop(
    mut wal: WalPair,
    shared: &Shared,
    queue: &mpsc::Receiver<Job>,
    to_store: &mpsc::Sender<Vec<StoreJob>>,
) {
    loop {
        let first = match queue.recv_timeout(SEAL_AFTER_IDLE) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                wal.seal();
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
        let stored = write_ahead(&mut wal, shared, jobs);
        if !stored.is_empty() && to_store.send(stored).is_err() {
            return;
        }
    }
}

/// The store thread: one redb transaction for whatever batches are queued.
fn store_loop(shared: &Shared, queue: &mpsc::Receiver<Vec<StoreJob>>) {
    while let Ok(mut jobs) = queue.recv() {
        while jobs.len() < JOBS_PER_BATCH_MAX {
            match queue.try_recv() {
                Ok(more) => jobs.extend(more),
                Err(_) => break,
            }
        }
        store(shared, jobs);
    }
}
