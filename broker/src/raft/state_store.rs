//! The state-machine store on redb (`state.redb`): each batch of committed entries goes through
//! `chorus_machine::Machine` in one write transaction, which also records the last applied log id
//! and the membership. Applies commit without fsync: the log holds every committed entry, so a
//! crash only means re-applying them. Before a snapshot is built (after which the log may be
//! purged), an fsync'd commit makes the applied state durable; an installed snapshot is durable
//! too. [`StateStore::durable`] follows the last log index the state holds durably, and the log
//! store purges no further than that.
//!
//! Snapshots are files: built from one consistent read transaction, shipped by openraft in
//! bounded chunks, and installed by replacing every table in one transaction. Each ends in a
//! checksum (`snapshot_file`), checked before it is sent and before it is installed; a damaged
//! current snapshot is built again from the state rather than sent.
//!
//! A damaged state is never served or applied on, and never opened twice: a damaged value found
//! by an apply or a read, or a panic inside redb during an apply, leaves a mark
//! ([`mark_damaged`]) and stops the broker. An open that finds the mark, or a state redb reports
//! corrupted or panics on, sets the file aside (`state.redb.damaged`) and starts an empty state
//! ([`StateStore::rebuilt`]): openraft applies the log into it again, and if the log was purged,
//! the broker forgets its log entries and takes a snapshot from the leader
//! ([`super::log_store::LogStore::forget_entries`]).

use std::collections::VecDeque;
use std::io::{BufReader, BufWriter, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chorus_machine::{Command, DigestClaim, Entry as MachineEntry, Machine, Submission, query};
use chorus_protocol::pb;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use prost::Message;
use redb::{Database, Durability, ReadTransaction, ReadableDatabase, TableDefinition, WriteTransaction};
use tokio::io::AsyncSeekExt;
use tokio::sync::watch;

use super::lead_sync::LeadSync;
use super::segment_files::{SegmentDir, SegmentFiles};
use super::state_check::{self, StateChecks};
use super::{
    Applied, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig, inbound, snapshot_file,
    storage_error, wire,
};
use crate::message_segments::{MessageSegments, Readable, SegmentsOpenError};
use crate::metrics::RaftEventMetrics;
use crate::storage::{CorruptValue, ReadStore, StateFiles, WriteStore, create_tables};

const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const APPLIED_KEY: &str = "applied";
const MEMBERSHIP_KEY: &str = "membership";
const SNAPSHOT_KEY: &str = "snapshot";
/// How often reading the current snapshot follows a newer one that replaced it.
const SNAPSHOT_OPEN_ATTEMPTS: usize = 3;
/// Where the state's message segments are.
const SEGMENTS_DIR: &str = "state.segments";
/// Where a damaged state's message segments are set aside, with it.
const DAMAGED_SEGMENTS: &str = "state.segments.damaged";

/// Moves `path` (a file or a directory) to `aside`, replacing what was there; a missing `path`
/// is nothing to move.
fn set_aside(path: &Path, aside: &Path) -> std::io::Result<()> {
    if aside.is_dir() {
        std::fs::remove_dir_all(aside)?;
    }
    match std::fs::rename(path, aside) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

/// The file whose presence says the state in its directory is damaged.
const DAMAGE_MARK: &str = "state.damaged";
/// Where a damaged state file is set aside, for a post-mortem; the next one replaces it.
const DAMAGED_STATE: &str = "state.redb.damaged";

/// Why a state could not be used as it is.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateDamage {
    #[error("an earlier run found it damaged: {0}")]
    Marked(String),
    #[error("redb reports it corrupted: {0}")]
    Corrupted(String),
    #[error("redb panicked on it: {0}")]
    Panicked(String),
    #[error("{0}")]
    Value(#[from] CorruptValue),
    #[error("it points into message segment {0}, which is missing")]
    MissingSegment(u64),
}

/// Why a state did not open.
#[derive(Debug, thiserror::Error)]
pub enum StateOpenError {
    #[error("the state is damaged: {0}")]
    Damaged(StateDamage),
    #[error("{0}")]
    Failed(StorageError),
}

/// Records, durably, that the state in `dir` is damaged: the next open sets it aside and
/// rebuilds it. Failing that is logged; the damage is still refused wherever it is read.
pub fn mark_damaged(dir: &Path, damage: &StateDamage) {
    let path = dir.join(DAMAGE_MARK);
    let written = std::fs::File::create(&path).and_then(|mut file| {
        writeln!(file, "{damage}")?;
        file.sync_all()
    });
    match written {
        Ok(()) => {
            tracing::error!(%damage, "the state is damaged; this broker stops, and rebuilds its state when it starts again")
        }
        Err(error) => tracing::error!(%damage, %error, "the state is damaged, and that cannot be recorded"),
    }
}

/// Why the state in `dir` was marked damaged, if it was.
fn damage_mark(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(DAMAGE_MARK)).ok()
}

fn clear_damage_mark(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(DAMAGE_MARK)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// `open`'s result, with a panic inside redb taken for damage.
fn without_panics<T>(open: impl FnOnce() -> Result<T, StateOpenError>) -> Result<T, StateOpenError> {
    catch_unwind(AssertUnwindSafe(open))
        .unwrap_or_else(|panic| Err(StateOpenError::Damaged(StateDamage::Panicked(panic_message(panic.as_ref())))))
}

/// A redb failure while opening: damage if redb says the file is corrupted.
fn opening(error: impl Into<redb::Error>) -> StateOpenError {
    match error.into() {
        redb::Error::Corrupted(message) => StateOpenError::Damaged(StateDamage::Corrupted(message)),
        other => StateOpenError::Failed(write_error(other)),
    }
}

/// What the last apply left behind, for the broker: subscribers wait on the index, the leader
/// proposes a pulse at the deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedStatus {
    pub log_index: u64,
    pub time_ms: u64,
    pub next_deadline_ms: Option<u64>,
}

/// The state machine openraft drives.
pub struct StateStore {
    db: Arc<Database>,
    segments: Arc<MessageSegments>,
    /// Where the damage mark goes: the directory of the state and its snapshots.
    dir: PathBuf,
    snapshot_dir: PathBuf,
    receiving: Option<PathBuf>,
    status: watch::Sender<AppliedStatus>,
    durable: Arc<watch::Sender<Option<u64>>>,
    /// This state replaced a damaged one and starts empty.
    rebuilt: bool,
    /// Digests of the state at marked indexes.
    checks: StateChecks,
    digests: Digests,
    /// Set, an entry is applied only once the leader's log has synced it ([`LeadSync`]).
    lead: Option<LeadSync>,
    /// Snapshots built and installed.
    events: RaftEventMetrics,
}

/// redb makes its last commit durable when the database closes, applies that were committed
/// without durability included: the bytes they point at in the message segments must be durable
/// first. The state store is the one writer, so once it is gone nothing appends.
impl Drop for StateStore {
    fn drop(&mut self) {
        if let Err(error) = self.segments.sync() {
            tracing::error!(%error, "the message segments could not be synced as the state closes");
        }
    }
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").field("snapshot_dir", &self.snapshot_dir).finish()
    }
}

/// Builds snapshots off the apply path.
#[derive(Debug, Clone)]
pub struct SnapshotBuilder {
    db: Arc<Database>,
    segments: Arc<MessageSegments>,
    snapshot_dir: PathBuf,
    durable: Arc<watch::Sender<Option<u64>>>,
    events: RaftEventMetrics,
}

fn sm_error(verb: ErrorVerb, error: impl std::error::Error + 'static) -> StorageError {
    storage_error(ErrorSubject::StateMachine, verb, error)
}

fn read_error(error: impl std::error::Error + 'static) -> StorageError {
    sm_error(ErrorVerb::Read, error)
}

fn write_error(error: impl std::error::Error + 'static) -> StorageError {
    sm_error(ErrorVerb::Write, error)
}

impl StateStore {
    /// Opens or creates the state in `dir` (`state.redb` and `snapshots/`), with a page cache of
    /// `cache_bytes`. A damaged state is set aside as `state.redb.damaged` and replaced by an
    /// empty one ([`StateStore::rebuilt`]).
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<StateStore, StorageError> {
        let snapshot_dir = dir.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir).map_err(write_error)?;
        let path = dir.join("state.redb");
        let segments_dir = dir.join(SEGMENTS_DIR);
        let create = || {
            let db = Database::builder().set_cache_size(cache_bytes).create(&path).map_err(opening)?;
            let segments = SegmentDir::open(&segments_dir).map_err(|e| StateOpenError::Failed(write_error(e)))?;
            Ok((db, Box::new(segments) as Box<dyn SegmentFiles>))
        };
        let damage = match StateStore::open_checked(create, &snapshot_dir) {
            Ok(store) => return Ok(store),
            Err(StateOpenError::Failed(error)) => return Err(error),
            Err(StateOpenError::Damaged(damage)) => damage,
        };
        tracing::error!(%damage, "the state file is damaged: it is set aside as {DAMAGED_STATE} and rebuilt");
        set_aside(&path, &dir.join(DAMAGED_STATE)).map_err(write_error)?;
        set_aside(&segments_dir, &dir.join(DAMAGED_SEGMENTS)).map_err(write_error)?;
        StateStore::rebuild(create, &snapshot_dir)
    }

    /// Opens or creates the state on `backend`, with snapshot files in `snapshot_dir`: for
    /// simulations, whose disks are in memory. A damaged state is an error: the caller gives
    /// [`StateStore::rebuild_on`] an empty disk.
    pub fn open_on(
        backend: impl redb::StorageBackend,
        segments: Box<dyn SegmentFiles>,
        snapshot_dir: PathBuf,
        cache_bytes: usize,
    ) -> Result<StateStore, StateOpenError> {
        std::fs::create_dir_all(&snapshot_dir).map_err(|e| StateOpenError::Failed(write_error(e)))?;
        let create = || {
            let db = Database::builder().set_cache_size(cache_bytes).create_with_backend(backend).map_err(opening)?;
            Ok((db, segments))
        };
        let mut store = StateStore::open_checked(create, &snapshot_dir)?;
        store.digests = Digests::Inline;
        Ok(store)
    }

    /// Starts an empty state on `backend` and `segments` (both empty) in place of a damaged one.
    pub fn rebuild_on(
        backend: impl redb::StorageBackend,
        segments: Box<dyn SegmentFiles>,
        snapshot_dir: PathBuf,
        cache_bytes: usize,
    ) -> Result<StateStore, StorageError> {
        let create = || {
            let db = Database::builder().set_cache_size(cache_bytes).create_with_backend(backend).map_err(opening)?;
            Ok((db, segments))
        };
        let mut store = StateStore::rebuild(create, &snapshot_dir)?;
        store.digests = Digests::Inline;
        Ok(store)
    }

    /// Whether this state replaced a damaged one, empty.
    pub fn rebuilt(&self) -> bool {
        self.rebuilt
    }

    /// The digests this state machine takes at state check marks.
    pub fn state_checks(&self) -> StateChecks {
        self.checks.clone()
    }

    /// Opens the state `create` opens, unless it was marked damaged; redb's corruption errors
    /// and panics, and damaged values read while opening, are damage too.
    fn open_checked(
        create: impl FnOnce() -> Result<(Database, Box<dyn SegmentFiles>), StateOpenError>,
        snapshot_dir: &Path,
    ) -> Result<StateStore, StateOpenError> {
        let dir = snapshot_dir.parent().unwrap_or(snapshot_dir);
        if let Some(why) = damage_mark(dir) {
            return Err(StateOpenError::Damaged(StateDamage::Marked(why.trim().to_owned())));
        }
        without_panics(|| {
            let (db, segments) = create()?;
            StateStore::on_database(db, segments, snapshot_dir)
        })
    }

    /// An empty state from `create` (which must open an empty file); the damage mark goes once it
    /// exists.
    fn rebuild(
        create: impl FnOnce() -> Result<(Database, Box<dyn SegmentFiles>), StateOpenError>,
        snapshot_dir: &Path,
    ) -> Result<StateStore, StorageError> {
        let failed = |error| match error {
            StateOpenError::Failed(error) => error,
            StateOpenError::Damaged(damage) => write_error(damage),
        };
        let mut store = without_panics(|| {
            let (db, segments) = create()?;
            StateStore::on_database(db, segments, snapshot_dir)
        })
        .map_err(failed)?;
        clear_damage_mark(&store.dir).map_err(write_error)?;
        store.rebuilt = true;
        Ok(store)
    }

    fn on_database(
        db: Database,
        segments: Box<dyn SegmentFiles>,
        snapshot_dir: &Path,
    ) -> Result<StateStore, StateOpenError> {
        let txn = db.begin_write().map_err(opening)?;
        create_tables(&txn).map_err(|e| StateOpenError::Failed(write_error(e)))?;
        txn.open_table(SM_META).map_err(opening)?;
        let segments = MessageSegments::open(segments, &txn).map_err(|error| match error {
            SegmentsOpenError::Missing(segment) => StateOpenError::Damaged(StateDamage::MissingSegment(segment)),
            error => StateOpenError::Failed(write_error(error)),
        })?;
        txn.commit().map_err(opening)?;
        let db = Arc::new(db);
        let read = db.begin_read().map_err(opening)?;
        // What an open finds is durable: redb recovers to its last durable commit.
        let applied = read_log_id(&read, APPLIED_KEY).map_err(StateOpenError::Failed)?;
        let durable = Arc::new(watch::Sender::new(applied.map(|id| id.index)));
        let status = read_status(read, segments.readable()).map_err(|error| match error {
            ApplyError::Damaged(corrupt) => StateOpenError::Damaged(corrupt.into()),
            ApplyError::Failed(error) => StateOpenError::Failed(error),
        })?;
        let dir = snapshot_dir.parent().unwrap_or(snapshot_dir).to_path_buf();
        Ok(StateStore {
            db,
            segments: Arc::new(segments),
            dir,
            snapshot_dir: snapshot_dir.to_path_buf(),
            receiving: None,
            status: watch::Sender::new(status),
            durable,
            rebuilt: false,
            checks: StateChecks::default(),
            digests: Digests::Thread,
            lead: None,
            events: RaftEventMetrics::default(),
        })
    }

    /// Follows the applied index, time and next deadline.
    pub fn status(&self) -> watch::Receiver<AppliedStatus> {
        self.status.subscribe()
    }

    /// Applies an entry only once `lead` says the leader's log has synced it: a leader's appends
    /// run ahead of its sync ([`super::log_store::LogStore::lead_ahead_of_sync`]).
    pub fn apply_after_lead_sync(&mut self, lead: LeadSync) {
        self.lead = Some(lead);
    }

    /// Follows the last log index whose effects a crash cannot undo: it moves when a snapshot is
    /// built or installed, not on each apply. Closed once the state machine is dropped.
    pub fn durable(&self) -> watch::Receiver<Option<u64>> {
        self.durable.subscribe()
    }

    fn snapshot_builder(&self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: Arc::clone(&self.db),
            segments: Arc::clone(&self.segments),
            snapshot_dir: self.snapshot_dir.clone(),
            durable: Arc::clone(&self.durable),
            events: self.events.clone(),
        }
    }

    /// Where snapshot builds and installs are counted and timed.
    pub fn event_metrics(&self) -> RaftEventMetrics {
        self.events.clone()
    }

    /// The database and its message segments, for read-only queries by the broker.
    pub fn database(&self) -> StateFiles {
        StateFiles { db: Arc::clone(&self.db), segments: Arc::clone(&self.segments) }
    }

    /// Applies `entries`; a damaged value it meets, or a panic inside it (redb panics on some
    /// damaged pages), marks the state damaged before the error stops the Raft core.
    fn apply_blocking(&mut self, entries: Vec<Entry>) -> Result<Vec<Applied>, StorageError> {
        let damage = match catch_unwind(AssertUnwindSafe(|| self.apply_marked(entries))) {
            Ok(Ok(applied)) => return Ok(applied),
            Ok(Err(ApplyError::Failed(error))) => return Err(error),
            Ok(Err(ApplyError::Damaged(corrupt))) => StateDamage::Value(corrupt),
            Err(panic) => StateDamage::Panicked(panic_message(panic.as_ref())),
        };
        mark_damaged(&self.dir, &damage);
        Err(write_error(damage))
    }

    /// Applies `entries` in transactions that each end at a state check's mark, so that the
    /// digest of the mark is taken of the state exactly there ([`super::state_check`]).
    fn apply_marked(&mut self, entries: Vec<Entry>) -> Result<Vec<Applied>, ApplyError> {
        let mut queue: VecDeque<Entry> = entries.into();
        let mut results = Vec::with_capacity(queue.len());
        while !queue.is_empty() {
            let checked = self.apply_entries(&mut queue, &mut results)?;
            if let Some(index) = checked.mark {
                self.take_digest(index)?;
            }
            for claim in checked.claims {
                self.checks.claim(claim);
            }
        }
        Ok(results)
    }

    /// Takes the digest of the state as committed now, at the mark `index`: on a thread of its
    /// own, or here for a simulation.
    fn take_digest(&self, index: u64) -> Result<(), ApplyError> {
        let read = self.db.begin_read().map_err(read_error)?;
        self.checks.begin(index);
        let (checks, dir) = (self.checks.clone(), self.dir.clone());
        let take = move || {
            let digest = match state_check::digest_state(&read) {
                Ok(digest) => Some(digest),
                Err(state_check::DigestError::Damaged(corrupt)) => {
                    mark_damaged(&dir, &StateDamage::Value(corrupt));
                    None
                }
                Err(error) => {
                    tracing::error!(%error, index, "the state digest failed");
                    None
                }
            };
            checks.finish(index, digest);
        };
        match self.digests {
            Digests::Thread => {
                std::thread::Builder::new().name("chorus-state-digest".into()).spawn(take).map_err(read_error)?;
            }
            Digests::Inline => take(),
        }
        Ok(())
    }

    /// Applies entries from the front of `queue` in one transaction, up to and including the
    /// first that marks a state check.
    fn apply_entries(
        &mut self,
        queue: &mut VecDeque<Entry>,
        results: &mut Vec<Applied>,
    ) -> Result<Checked, ApplyError> {
        let mut txn = self.db.begin_write().map_err(write_error)?;
        txn.set_durability(Durability::None).map_err(write_error)?;
        let mut checked = Checked::default();
        let mut last_applied = None;
        let mut membership = None;
        let status = {
            let mut machine = Machine::new(WriteStore::open(&txn, &self.segments));
            while checked.mark.is_none() {
                let Some(entry) = queue.pop_front() else { break };
                last_applied = Some(entry.log_id);
                results.push(match entry.payload {
                    EntryPayload::Blank => Applied::default(),
                    EntryPayload::Normal(bytes) => {
                        let decoded = inbound::decode_entry(entry.log_id.index, bytes.0).map_err(|error| {
                            tracing::error!(%error, "a committed entry does not decode; this broker stops applying");
                            storage_error(ErrorSubject::Apply(entry.log_id), ErrorVerb::Read, error)
                        })?;
                        checked.note(entry.log_id.index, &decoded);
                        Applied(machine.apply(entry.log_id.index, &decoded).map_err(ApplyError::store)?)
                    }
                    EntryPayload::Membership(m) => {
                        // The audit trail records every membership change the log applies; the
                        // first membership, at index 0, is the one the cluster was created with.
                        if entry.log_id.index > 0 {
                            let applied = Command::MembershipApplied {
                                voters: m.voter_ids().collect(),
                                learners: m.learner_ids().collect(),
                            };
                            let record = MachineEntry { time_ms: 0, submissions: vec![Submission::broker(applied)] };
                            machine.apply(entry.log_id.index, &record).map_err(ApplyError::store)?;
                        }
                        membership = Some(StoredMembership::new(Some(entry.log_id), m));
                        Applied::default()
                    }
                });
            }
            let status = machine_status(machine.store())?;
            machine.into_store().finish().map_err(ApplyError::store)?;
            status
        };
        let mut meta = txn.open_table(SM_META).map_err(write_error)?;
        if let Some(applied) = &last_applied {
            meta.insert(APPLIED_KEY, wire::log_id_to_pb(applied).encode_to_vec().as_slice()).map_err(write_error)?;
        }
        if let Some(membership) = &membership {
            let bytes = wire::stored_membership_to_pb(membership).encode_to_vec();
            meta.insert(MEMBERSHIP_KEY, bytes.as_slice()).map_err(write_error)?;
        }
        drop(meta);
        txn.commit().map_err(write_error)?;
        let log_index = last_applied.map_or(0, |id| id.index);
        self.status.send_replace(AppliedStatus { log_index, ..status });
        Ok(checked)
    }
}

/// What a transaction of applies found of state checks: the mark it ends at, and the digests
/// other brokers claimed.
#[derive(Debug, Default)]
struct Checked {
    mark: Option<u64>,
    claims: Vec<DigestClaim>,
}

impl Checked {
    fn note(&mut self, index: u64, entry: &MachineEntry) {
        for submission in &entry.submissions {
            if let Command::MarkStateCheck { claim } = &submission.command {
                self.mark = Some(index);
                self.claims.extend(claim.iter().cloned());
            }
        }
    }
}

/// Where state digests are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Digests {
    /// On a thread of their own, off the apply path.
    Thread,
    /// On the applying thread, so a single-threaded simulation stays deterministic.
    Inline,
}

/// Why an apply failed: a damaged value, or anything else.
#[derive(Debug)]
enum ApplyError {
    Damaged(CorruptValue),
    Failed(StorageError),
}

impl ApplyError {
    fn store(error: chorus_machine::StoreError) -> ApplyError {
        match CorruptValue::find(&error) {
            Some(corrupt) => ApplyError::Damaged(corrupt.clone()),
            None => ApplyError::Failed(write_error(error)),
        }
    }
}

impl From<StorageError> for ApplyError {
    fn from(error: StorageError) -> ApplyError {
        ApplyError::Failed(error)
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

fn machine_status(store: &impl chorus_machine::StoreRead) -> Result<AppliedStatus, ApplyError> {
    let (log_index, time_ms) = query::last_applied(store).map_err(ApplyError::store)?;
    let next_deadline_ms = query::next_deadline(store).map_err(ApplyError::store)?;
    Ok(AppliedStatus { log_index, time_ms, next_deadline_ms })
}

fn read_status(txn: ReadTransaction, readable: Readable) -> Result<AppliedStatus, ApplyError> {
    let store = ReadStore::open(txn, readable);
    let mut status = machine_status(&store)?;
    if let Some(applied) = read_log_id(store.transaction(), APPLIED_KEY)? {
        status.log_index = applied.index;
    }
    Ok(status)
}

fn read_meta<M: Message + Default>(txn: &ReadTransaction, key: &str) -> Result<Option<M>, StorageError> {
    let table = txn.open_table(SM_META).map_err(read_error)?;
    let Some(bytes) = table.get(key).map_err(read_error)? else {
        return Ok(None);
    };
    Ok(Some(M::decode(bytes.value()).map_err(read_error)?))
}

fn read_log_id(txn: &ReadTransaction, key: &str) -> Result<Option<LogId>, StorageError> {
    match read_meta::<pb::LogId>(txn, key)? {
        Some(log_id) => Ok(Some(wire::log_id_from_pb(log_id).map_err(read_error)?)),
        None => Ok(None),
    }
}

fn read_membership(txn: &ReadTransaction) -> Result<StoredMembership, StorageError> {
    match read_meta::<pb::StoredMembership>(txn, MEMBERSHIP_KEY)? {
        Some(stored) => wire::stored_membership_from_pb(Some(stored)).map_err(read_error),
        None => Ok(StoredMembership::default()),
    }
}

/// The file of snapshot `snapshot_id` in `dir`. Ids arrive from peers, so only a plain name
/// becomes a path: never one that leaves `dir`.
fn snapshot_path(dir: &Path, snapshot_id: &str) -> Result<PathBuf, StorageError> {
    inbound::check_snapshot_id(snapshot_id).map_err(read_error)?;
    Ok(dir.join(format!("{snapshot_id}.snap")))
}

/// Records `meta` as the current snapshot (in `txn`) and deletes every other snapshot file.
fn set_current_snapshot(txn: &WriteTransaction, dir: &Path, meta: &SnapshotMeta) -> Result<(), StorageError> {
    let mut table = txn.open_table(SM_META).map_err(write_error)?;
    table.insert(SNAPSHOT_KEY, wire::snapshot_meta_to_pb(meta).encode_to_vec().as_slice()).map_err(write_error)?;
    let keep = snapshot_path(dir, &meta.snapshot_id)?;
    for file in std::fs::read_dir(dir).map_err(write_error)?.flatten() {
        let path = file.path();
        if path != keep && path.extension().is_some_and(|e| e == "snap") {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

/// Records that the state is durable through `index`; it never moves back.
fn advance_durable(durable: &watch::Sender<Option<u64>>, index: Option<u64>) {
    durable.send_if_modified(|current| {
        let advanced = index > *current;
        if advanced {
            *current = index;
        }
        advanced
    });
}

fn unique_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

impl SnapshotBuilder {
    fn build_blocking(&self) -> Result<SnapshotMeta, StorageError> {
        // Make every applied entry durable: once this snapshot exists the log may be purged. The
        // read is taken while the (empty) write transaction shuts out applies, so the snapshot
        // holds exactly the state the commit makes durable, never an apply that came after it.
        let mut txn = self.db.begin_write().map_err(write_error)?;
        txn.set_durability(Durability::Immediate).map_err(write_error)?;
        // The bytes the state points at first: no apply appends while this transaction is open.
        self.segments.sync().map_err(write_error)?;
        let read = self.db.begin_read().map_err(read_error)?;
        txn.commit().map_err(write_error)?;
        self.segments.remove_dead(&read).map_err(write_error)?;
        let last_log_id = read_log_id(&read, APPLIED_KEY)?;
        advance_durable(&self.durable, last_log_id.map(|id| id.index));
        let last_membership = read_membership(&read)?;
        let snapshot_id = match &last_log_id {
            Some(id) => format!("{}-{}-{}-{}", id.leader_id.term, id.leader_id.node_id, id.index, unique_suffix()),
            None => format!("0-0-0-{}", unique_suffix()),
        };
        let path = snapshot_path(&self.snapshot_dir, &snapshot_id)?;
        let partial = path.with_extension("partial");
        {
            let file = std::fs::File::create(&partial).map_err(write_error)?;
            let mut out = BufWriter::new(file);
            snapshot_file::write(&ReadStore::open(read, self.segments.readable()), &mut out).map_err(write_error)?;
            out.flush().map_err(write_error)?;
            out.get_ref().sync_all().map_err(write_error)?;
        }
        std::fs::rename(&partial, &path).map_err(write_error)?;
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        let txn = self.db.begin_write().map_err(write_error)?;
        set_current_snapshot(&txn, &self.snapshot_dir, &meta)?;
        txn.commit().map_err(write_error)?;
        Ok(meta)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let started = std::time::Instant::now();
        let builder = self.clone();
        let meta = tokio::task::spawn_blocking(move || builder.build_blocking()).await.map_err(write_error)??;
        let file =
            tokio::fs::File::open(snapshot_path(&self.snapshot_dir, &meta.snapshot_id)?).await.map_err(read_error)?;
        let bytes = file.metadata().await.map_or(0, |m| m.len());
        let took = started.elapsed();
        self.events.snapshots_built.inc();
        self.events.snapshot_build_seconds.observe(took.as_secs_f64());
        self.events.snapshot_bytes.observe(bytes as f64);
        tracing::info!(snapshot = %meta.snapshot_id, bytes, ms = took.as_millis() as u64, "built a snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

impl RaftStateMachine<TypeConfig> for StateStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let txn = self.db.begin_read().map_err(read_error)?;
        Ok((read_log_id(&txn, APPLIED_KEY)?, read_membership(&txn)?))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(lead), Some(last)) = (&self.lead, entries.last()) {
            lead.synced_through(last.log_id.index).await.map_err(write_error)?;
        }
        self.apply_blocking(entries)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.snapshot_builder()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.snapshot_dir.join(format!("receiving-{}.partial", unique_suffix()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(write_error)?;
        if let Some(stale) = self.receiving.replace(path) {
            let _ = std::fs::remove_file(stale);
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        // Copy from whatever handle we are given (it need not be the one we handed out), so the
        // installed snapshot becomes the current one under its own name.
        let started = std::time::Instant::now();
        let path = snapshot_path(&self.snapshot_dir, &meta.snapshot_id)?;
        let partial = path.with_extension("partial");
        {
            let mut source = *snapshot;
            source.seek(std::io::SeekFrom::Start(0)).await.map_err(read_error)?;
            let mut target = tokio::fs::File::create(&partial).await.map_err(write_error)?;
            tokio::io::copy(&mut source, &mut target).await.map_err(write_error)?;
            target.sync_all().await.map_err(write_error)?;
        }
        std::fs::rename(&partial, &path).map_err(write_error)?;
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        if let Some(received) = self.receiving.take() {
            let _ = std::fs::remove_file(received);
        }
        let db = Arc::clone(&self.db);
        let segments = Arc::clone(&self.segments);
        let dir = self.snapshot_dir.clone();
        let installing = meta.clone();
        let status = tokio::task::spawn_blocking(move || install_blocking(&db, &segments, &dir, &path, &installing))
            .await
            .map_err(write_error)??;
        let took = started.elapsed();
        self.events.snapshots_installed.inc();
        self.events.snapshot_install_seconds.observe(took.as_secs_f64());
        self.events.snapshot_installed_bytes.observe(bytes as f64);
        tracing::info!(snapshot = %meta.snapshot_id, bytes, ms = took.as_millis() as u64, "installed snapshot from the leader");
        advance_durable(&self.durable, meta.last_log_id.map(|id| id.index));
        self.status.send_replace(status);
        Ok(())
    }

    /// The current snapshot, checked against its checksum. A newer snapshot may replace the
    /// file between reading its name and opening it: then the newer one is read. A damaged or
    /// missing file is built again from the state, never sent (openraft stops its core when a
    /// snapshot it needs is missing).
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        for _ in 0..SNAPSHOT_OPEN_ATTEMPTS {
            let txn = self.db.begin_read().map_err(read_error)?;
            let Some(meta) = read_meta::<pb::SnapshotMeta>(&txn, SNAPSHOT_KEY)? else {
                return Ok(None);
            };
            drop(txn);
            let meta = wire::snapshot_meta_from_pb(Some(meta)).map_err(read_error)?;
            let path = snapshot_path(&self.snapshot_dir, &meta.snapshot_id)?;
            let file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(read_error(error)),
            };
            let checked = tokio::task::spawn_blocking(move || snapshot_file::verify_open(&file, &path).map(|()| file));
            match checked.await.map_err(read_error)? {
                Ok(file) => return Ok(Some(Snapshot { meta, snapshot: Box::new(tokio::fs::File::from_std(file)) })),
                Err(snapshot_file::SnapshotFileError::Damaged { path }) => {
                    tracing::error!(path, "the current snapshot is damaged: building it again from the state");
                    let _ = std::fs::remove_file(&path);
                    break;
                }
                Err(error) => return Err(read_error(error)),
            }
        }
        self.snapshot_builder().build_snapshot().await.map(Some)
    }
}

/// Replaces the whole state with the snapshot at `path`, durably.
fn install_blocking(
    db: &Database,
    segments: &MessageSegments,
    dir: &Path,
    path: &Path,
    meta: &SnapshotMeta,
) -> Result<AppliedStatus, StorageError> {
    if let Err(error) = snapshot_file::verify(path) {
        tracing::error!(%error, "refused to install a damaged snapshot");
        let _ = std::fs::remove_file(path);
        return Err(read_error(error));
    }
    let mut txn = db.begin_write().map_err(write_error)?;
    txn.set_durability(Durability::Immediate).map_err(write_error)?;
    {
        let mut store = WriteStore::open(&txn, segments);
        let mut input = BufReader::new(std::fs::File::open(path).map_err(read_error)?);
        chorus_machine::snapshot::import(&mut store, &mut input).map_err(write_error)?;
        store.finish().map_err(write_error)?;
        let mut table = txn.open_table(SM_META).map_err(write_error)?;
        match &meta.last_log_id {
            Some(applied) => table.insert(APPLIED_KEY, wire::log_id_to_pb(applied).encode_to_vec().as_slice()),
            None => table.remove(APPLIED_KEY),
        }
        .map_err(write_error)?;
        let membership = wire::stored_membership_to_pb(&meta.last_membership).encode_to_vec();
        table.insert(MEMBERSHIP_KEY, membership.as_slice()).map_err(write_error)?;
    }
    set_current_snapshot(&txn, dir, meta)?;
    segments.sync().map_err(write_error)?;
    txn.commit().map_err(write_error)?;
    let read = db.begin_read().map_err(read_error)?;
    segments.remove_dead(&read).map_err(write_error)?;
    read_status(read, segments.readable()).map_err(|error| match error {
        ApplyError::Damaged(corrupt) => read_error(corrupt),
        ApplyError::Failed(error) => error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn blanks(indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        let log_id = |index| LogId::new(CommittedLeaderId::new(1, 1), index);
        indexes.map(|index| Entry { log_id: log_id(index), payload: EntryPayload::Blank }).collect()
    }

    /// The durable index moves when a snapshot is built or installed, never on a plain apply
    /// (which commits without fsync), and a reopened store starts from what it finds.
    #[tokio::test]
    async fn the_durable_index_follows_snapshots_not_applies() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StateStore::open(dir.path(), 1 << 20).unwrap();
        let durable = state.durable();
        assert_eq!(*durable.borrow(), None);
        state.apply(blanks(0..=9)).await.unwrap();
        assert_eq!(*durable.borrow(), None, "an apply is not durable");
        let snapshot = state.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(9));
        assert_eq!(*durable.borrow(), Some(9), "a built snapshot is durable");

        let other = tempfile::tempdir().unwrap();
        let mut follower = StateStore::open(other.path(), 1 << 20).unwrap();
        let follower_durable = follower.durable();
        follower.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
        assert_eq!(*follower_durable.borrow(), Some(9), "an installed snapshot is durable");
        drop(follower);
        assert!(follower_durable.has_changed().is_err(), "the watch closes with the state machine");

        state.apply(blanks(10..=12)).await.unwrap();
        drop(state);
        let reopened = StateStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(*reopened.durable().borrow(), Some(12), "a reopened store is durable at what it finds");
    }

    /// A closed state in a new directory that applied blanks `0..=last` and made a snapshot.
    async fn applied_and_snapshotted(last: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StateStore::open(dir.path(), 1 << 20).unwrap();
        state.apply(blanks(0..=last)).await.unwrap();
        state.get_snapshot_builder().await.build_snapshot().await.unwrap();
        dir
    }

    /// A state marked damaged (by a read or an apply that met a damaged value) is set aside at the
    /// next open and replaced by an empty one, once; the log then applies into it again.
    #[tokio::test]
    async fn a_state_marked_damaged_is_set_aside_and_rebuilt_empty() {
        let dir = applied_and_snapshotted(9).await;
        let corrupt = CorruptValue { table: "messages", key: vec![1, 2] };
        mark_damaged(dir.path(), &StateDamage::Value(corrupt));
        let mut rebuilt = StateStore::open(dir.path(), 1 << 20).unwrap();
        assert!(rebuilt.rebuilt());
        assert_eq!(rebuilt.applied_state().await.unwrap().0, None, "the rebuilt state starts empty");
        assert!(dir.path().join(DAMAGED_STATE).exists(), "the damaged file is kept aside");
        assert!(damage_mark(dir.path()).is_none(), "the mark is gone once the new state exists");
        drop(rebuilt);
        assert!(!StateStore::open(dir.path(), 1 << 20).unwrap().rebuilt(), "rebuilt once, not at every open");
    }

    /// A state file redb cannot make sense of (it panics or reports corruption) is damage: set
    /// aside and rebuilt, never a broker that fails to start over and over.
    #[tokio::test]
    async fn a_state_file_redb_cannot_read_is_rebuilt() {
        let dir = applied_and_snapshotted(99).await;
        let path = dir.path().join("state.redb");
        let mut bytes = std::fs::read(&path).unwrap();
        for byte in bytes.iter_mut().skip(64).step_by(7) {
            *byte ^= 0xA5;
        }
        std::fs::write(&path, bytes).unwrap();
        let mut rebuilt = StateStore::open(dir.path(), 1 << 20).unwrap();
        assert!(rebuilt.rebuilt());
        assert_eq!(rebuilt.applied_state().await.unwrap().0, None);
    }
}
