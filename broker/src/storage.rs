//! The state machine's tables on redb: [`WriteStore`] implements the machine's `Store` over one
//! write transaction, [`ReadStore`] its `StoreRead` over one read transaction. Each machine table
//! is a redb table of byte keys and byte values, named by `Table::name`. Both open a table on its
//! first use: a read view that looks at 5 tables costs 2-3 us instead of 7-8 us with all 19 opened.
//!
//! A `messages` value of [`VALUE_INLINE_BYTES_MIN`] bytes or more lives in a message segment
//! ([`crate::message_segments`]) and redb holds a pointer to it: reads follow it, and a
//! [`WriteStore`] keeps the segments' live bytes, which [`WriteStore::finish`] records with the
//! transaction.
//!
//! Every value is stored with a CRC-32 of its table, key and value after it, and every read
//! checks it: redb keeps page checksums but does not verify them on reads, so a flipped byte in
//! the state file would otherwise be applied on or served. A value that fails is a
//! [`CorruptValue`] error, never its bytes; the key is in the checksum, so a value written under
//! another key fails too.

use std::cell::OnceCell;
use std::ops::Bound;
use std::sync::Arc;

use chorus_machine::store::{KeyValue, Store, StoreError, StoreRead, Table};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::message_segments::{self, Accounting, MessageSegments, Readable, Stored, VALUE_INLINE_BYTES_MIN};

type Bytes<'a> = &'a [u8];

fn definition(table: Table) -> TableDefinition<'static, Bytes<'static>, Bytes<'static>> {
    TableDefinition::new(table.name())
}

fn store_error(error: impl Into<redb::Error>) -> StoreError {
    StoreError::new(error.into())
}

/// Bytes after each value: its checksum.
const CHECKSUM_BYTES: usize = 4;

/// A stored value whose checksum fails: the state file was damaged on disk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the state file is damaged: the value under key {key:02x?} in table {table} fails its checksum")]
pub struct CorruptValue {
    pub table: &'static str,
    pub key: Vec<u8>,
}

impl CorruptValue {
    /// The damage behind a storage error, if that is what it is.
    pub fn find<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e CorruptValue> {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if let Some(corrupt) = error.downcast_ref::<CorruptValue>() {
                return Some(corrupt);
            }
            cause = error.source();
        }
        None
    }
}

fn checksum(table: Table, key: &[u8], value: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[table as u8]);
    hasher.update(&(key.len() as u32).to_le_bytes());
    hasher.update(key);
    hasher.update(value);
    hasher.finalize()
}

/// `value` as stored: the value, then its checksum, in `out`.
fn seal_into(table: Table, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(value.len() + CHECKSUM_BYTES);
    out.extend_from_slice(value);
    out.extend_from_slice(&checksum(table, key, value).to_le_bytes());
}

/// The value a stored one holds, if its checksum holds.
fn unseal<'v>(table: Table, key: &[u8], stored: &'v [u8]) -> Result<&'v [u8], StoreError> {
    unseal_stored(table, key, stored).map_err(|error| {
        tracing::error!(%error, "a damaged value was read and refused");
        StoreError::new(error)
    })
}

/// The value a stored one holds, if its checksum holds: for readers of whole tables, such as the
/// state digest.
pub fn unseal_stored<'v>(table: Table, key: &[u8], stored: &'v [u8]) -> Result<&'v [u8], CorruptValue> {
    let corrupt = || CorruptValue { table: table.name(), key: key.to_vec() };
    let split = stored.len().checked_sub(CHECKSUM_BYTES).ok_or_else(corrupt)?;
    let (value, crc) = stored.split_at(split);
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if checksum(table, key, value) == crc { Ok(value) } else { Err(corrupt()) }
}

/// Creates every machine table, so read transactions can open them on a fresh database.
pub fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    for table in Table::ALL {
        txn.open_table(definition(table)).map_err(store_error)?;
    }
    Ok(())
}

type WriteTable<'txn> = redb::Table<'txn, Bytes<'static>, Bytes<'static>>;
type ReadTable = redb::ReadOnlyTable<Bytes<'static>, Bytes<'static>>;

/// One empty cell per table: a view opens a table when the machine first touches it, so an apply
/// or a query pays for the tables it uses, not for all of them.
fn cells<T>() -> [OnceCell<T>; Table::ALL.len()] {
    std::array::from_fn(|_| OnceCell::new())
}

/// The cell's table, opened by `open` if this is its first use.
fn opened<T>(cell: &OnceCell<T>, open: impl FnOnce() -> Result<T, StoreError>) -> Result<&T, StoreError> {
    if let Some(table) = cell.get() {
        return Ok(table);
    }
    let table = open()?;
    Ok(cell.get_or_init(|| table))
}

/// What reading the state needs: its database and its message segments.
#[derive(Debug, Clone)]
pub struct StateFiles {
    pub db: Arc<Database>,
    pub segments: Arc<MessageSegments>,
}

impl StateFiles {
    /// A view of the state as committed now.
    pub fn read(&self) -> Result<ReadStore, redb::TransactionError> {
        Ok(ReadStore::open(self.db.begin_read()?, self.segments.readable()))
    }
}

/// Told when a read finds a damaged value, so the broker can stop and rebuild its state.
pub type DamageAlarm = Arc<dyn Fn(&CorruptValue) + Send + Sync>;

/// `result`, after sounding `alarm` if it is a damaged value.
fn watched<T>(alarm: Option<&DamageAlarm>, result: Result<T, StoreError>) -> Result<T, StoreError> {
    if let (Some(alarm), Err(error)) = (alarm, &result)
        && let Some(corrupt) = CorruptValue::find(error)
    {
        alarm(corrupt);
    }
    result
}

/// The machine's tables, open for writing within one transaction.
pub struct WriteStore<'txn> {
    txn: &'txn WriteTransaction,
    tables: [OnceCell<WriteTable<'txn>>; Table::ALL.len()],
    segments: &'txn MessageSegments,
    accounting: Accounting,
    /// A value being sealed, reused across puts.
    sealed: Vec<u8>,
    /// A `messages` value being tagged, reused across puts.
    tagged: Vec<u8>,
}

impl<'txn> WriteStore<'txn> {
    pub fn open(txn: &'txn WriteTransaction, segments: &'txn MessageSegments) -> WriteStore<'txn> {
        WriteStore {
            txn,
            tables: cells(),
            segments,
            accounting: Accounting::default(),
            sealed: Vec::new(),
            tagged: Vec::new(),
        }
    }

    /// Records what the transaction did to the message segments beside its tables: call it before
    /// committing.
    pub fn finish(self) -> Result<(), StoreError> {
        let WriteStore { txn, tables, segments, accounting, .. } = self;
        drop(tables);
        accounting.record(segments, txn).map_err(store_error)
    }

    /// Inserts `value` sealed; for `messages`, returns the stored value it replaced.
    fn insert(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut sealed = std::mem::take(&mut self.sealed);
        seal_into(table, key, value, &mut sealed);
        let inserted = self.table_mut(table)?.insert(key, sealed.as_slice()).map_err(store_error);
        let replaced = inserted.map(|old| old.filter(|_| table == Table::Messages).map(|old| old.value().to_vec()));
        self.sealed = sealed;
        replaced
    }

    /// Releases the segment bytes a replaced or removed `messages` value pointed at.
    fn release(&mut self, key: &[u8], stored: &[u8]) -> Result<(), StoreError> {
        let unsealed = unseal(Table::Messages, key, stored)?;
        match Stored::decode(unsealed) {
            Some(Stored::Pointer(pointer)) => self.accounting.released(&pointer),
            Some(Stored::Inline(_)) => {}
            None => {
                return Err(StoreError::new(CorruptValue { table: Table::Messages.name(), key: key.to_vec() }));
            }
        }
        Ok(())
    }

    fn table(&self, table: Table) -> Result<&WriteTable<'txn>, StoreError> {
        opened(&self.tables[table as usize], || self.txn.open_table(definition(table)).map_err(store_error))
    }

    fn table_mut(&mut self, table: Table) -> Result<&mut WriteTable<'txn>, StoreError> {
        self.table(table)?;
        Ok(self.tables[table as usize].get_mut().expect("opened just above"))
    }
}

impl std::fmt::Debug for WriteStore<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteStore")
    }
}

/// The machine's tables, open for reading at one consistent point: the transaction it owns.
pub struct ReadStore {
    txn: ReadTransaction,
    tables: [OnceCell<ReadTable>; Table::ALL.len()],
    alarm: Option<DamageAlarm>,
    /// The message segments, as they were when the view opened.
    readable: Readable,
}

impl ReadStore {
    pub fn open(txn: ReadTransaction, readable: Readable) -> ReadStore {
        ReadStore { txn, tables: cells(), alarm: None, readable }
    }

    /// Sounds `alarm` whenever a read finds a damaged value (it still fails as
    /// [`CorruptValue`]).
    pub fn with_alarm(self, alarm: DamageAlarm) -> ReadStore {
        ReadStore { alarm: Some(alarm), ..self }
    }

    /// The transaction the store reads through, for tables beside the machine's.
    pub fn transaction(&self) -> &ReadTransaction {
        &self.txn
    }

    fn table(&self, table: Table) -> Result<&ReadTable, StoreError> {
        opened(&self.tables[table as usize], || self.txn.open_table(definition(table)).map_err(store_error))
    }
}

impl std::fmt::Debug for ReadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadStore")
    }
}

fn get(
    which: Table,
    table: &impl ReadableTable<Bytes<'static>, Bytes<'static>>,
    key: &[u8],
    readable: &Readable,
) -> Result<Option<Vec<u8>>, StoreError> {
    match table.get(key).map_err(store_error)? {
        Some(stored) => Ok(Some(value_of(which, key, unseal(which, key, stored.value())?, readable)?)),
        None => Ok(None),
    }
}

fn range(
    which: Table,
    table: &impl ReadableTable<Bytes<'static>, Bytes<'static>>,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
    readable: &Readable,
) -> Result<Vec<KeyValue>, StoreError> {
    scan(table, start, end, limit, |key, stored| {
        Ok((key.to_vec(), value_of(which, key, unseal(which, key, stored)?, readable)?))
    })
}

/// The machine's value for an unsealed stored one: itself, or for `messages` what its tag holds
/// or its pointer points at. Damage there is a [`CorruptValue`] like any other.
fn value_of(which: Table, key: &[u8], unsealed: &[u8], readable: &Readable) -> Result<Vec<u8>, StoreError> {
    if which != Table::Messages {
        return Ok(unsealed.to_vec());
    }
    let damaged = || {
        let error = CorruptValue { table: which.name(), key: key.to_vec() };
        tracing::error!(%error, "a damaged message batch was read and refused");
        StoreError::new(error)
    };
    match Stored::decode(unsealed).ok_or_else(damaged)? {
        Stored::Inline(value) => Ok(value.to_vec()),
        Stored::Pointer(pointer) => {
            message_segments::read(readable, &pointer).map_err(StoreError::new)?.ok_or_else(damaged)
        }
    }
}

/// What the state digest takes of a stored value (checked): for `messages`, never where a value
/// lies, which differs from broker to broker.
pub fn digestible(table: Table, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, CorruptValue> {
    let value = unseal_stored(table, key, stored)?;
    if table != Table::Messages {
        return Ok(value.to_vec());
    }
    let stored = Stored::decode(value).ok_or_else(|| CorruptValue { table: table.name(), key: key.to_vec() })?;
    Ok(stored.digestible())
}

/// Like [`range`], without copying the values.
fn keys(
    table: &impl ReadableTable<Bytes<'static>, Bytes<'static>>,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<Vec<u8>>, StoreError> {
    scan(table, start, end, limit, |key, _| Ok(key.to_vec()))
}

/// What `take` makes of each of up to `limit` entries with `start <= key < end`, in key order.
fn scan<T>(
    table: &impl ReadableTable<Bytes<'static>, Bytes<'static>>,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
    take: impl Fn(&[u8], &[u8]) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    if end.is_some_and(|end| end <= start) || limit == 0 {
        return Ok(Vec::new());
    }
    let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
    let mut found = Vec::new();
    for item in table.range::<&[u8]>((Bound::Included(start), upper)).map_err(store_error)? {
        let (key, value) = item.map_err(store_error)?;
        found.push(take(key.value(), value.value())?);
        if found.len() == limit {
            break;
        }
    }
    Ok(found)
}

impl StoreRead for WriteStore<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        get(table, self.table(table)?, key, &self.segments.readable())
    }

    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        range(table, self.table(table)?, start, end, limit, &self.segments.readable())
    }

    fn keys(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        keys(self.table(table)?, start, end, limit)
    }
}

impl Store for WriteStore<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if table != Table::Messages {
            return self.insert(table, key, value).map(drop);
        }
        let stored = if value.len() >= VALUE_INLINE_BYTES_MIN {
            let pointer = self.segments.append(value).map_err(StoreError::new)?;
            self.accounting.added(&pointer);
            Stored::Pointer(pointer)
        } else {
            Stored::Inline(value)
        };
        let mut tagged = std::mem::take(&mut self.tagged);
        tagged.clear();
        stored.encode_into(&mut tagged);
        let replaced = self.insert(table, key, &tagged);
        self.tagged = tagged;
        match replaced? {
            Some(old) => self.release(key, &old),
            None => Ok(()),
        }
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        let removed = self.table_mut(table)?.remove(key).map_err(store_error)?;
        let removed = removed.filter(|_| table == Table::Messages).map(|old| old.value().to_vec());
        match removed {
            Some(old) => self.release(key, &old),
            None => Ok(()),
        }
    }

    fn clear(&mut self, table: Table) -> Result<(), StoreError> {
        if table == Table::Messages {
            self.accounting.cleared();
        }
        self.table_mut(table)?.retain(|_, _| false).map_err(store_error)
    }
}

impl StoreRead for ReadStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        watched(self.alarm.as_ref(), get(table, self.table(table)?, key, &self.readable))
    }

    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        watched(self.alarm.as_ref(), range(table, self.table(table)?, start, end, limit, &self.readable))
    }

    fn keys(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        keys(self.table(table)?, start, end, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::crash_disk::{Disk, SegmentDisks};
    use crate::raft::segment_files::SegmentDir;
    use chorus_machine::MemStore;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, Vec<u8>, Vec<u8>),
        Delete(u8, Vec<u8>),
        Clear(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let table = 0u8..4;
        let key = prop::collection::vec(0u8..4, 0..4);
        let big = VALUE_INLINE_BYTES_MIN..VALUE_INLINE_BYTES_MIN + 8;
        prop_oneof![
            4 => (table.clone(), key.clone(), prop::collection::vec(any::<u8>(), 0..8)).prop_map(|(t, k, v)| Op::Put(t, k, v)),
            2 => (table.clone(), key.clone(), prop::collection::vec(any::<u8>(), big)).prop_map(|(t, k, v)| Op::Put(t, k, v)),
            3 => (table.clone(), key).prop_map(|(t, k)| Op::Delete(t, k)),
            1 => table.prop_map(Op::Clear),
        ]
    }

    /// A state in a temporary directory: its redb file and its message segments.
    struct State {
        dir: tempfile::TempDir,
        db: redb::Database,
        segments: MessageSegments,
    }

    impl State {
        fn new() -> State {
            let dir = tempfile::tempdir().unwrap();
            let (db, segments) = State::open_in(dir.path());
            State { dir, db, segments }
        }

        fn open_in(dir: &std::path::Path) -> (redb::Database, MessageSegments) {
            let db = redb::Database::create(dir.join("s.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            create_tables(&txn).unwrap();
            let files = Box::new(SegmentDir::open(&dir.join("segments")).unwrap());
            let segments = MessageSegments::open(files, &txn).unwrap();
            txn.commit().unwrap();
            (db, segments)
        }

        /// Puts each of `values`, in one transaction.
        fn put(&self, table: Table, values: &[(&[u8], &[u8])]) {
            let txn = self.db.begin_write().unwrap();
            let mut store = WriteStore::open(&txn, &self.segments);
            for (key, value) in values {
                store.put(table, key, value).unwrap();
            }
            store.finish().unwrap();
            txn.commit().unwrap();
        }

        fn read(&self) -> ReadStore {
            ReadStore::open(self.db.begin_read().unwrap(), self.segments.readable())
        }
    }

    /// A state with one value written through the store, and its raw table for damage.
    fn one_value(table: Table, key: &[u8], value: &[u8]) -> State {
        let state = State::new();
        state.put(table, &[(key, value)]);
        state
    }

    /// Rewrites the raw stored bytes under `key` with `damage` applied.
    fn damage(db: &redb::Database, table: Table, key: &[u8], damage: impl FnOnce(&mut Vec<u8>)) {
        let txn = db.begin_write().unwrap();
        {
            let mut raw = txn.open_table(definition(table)).unwrap();
            let mut stored = raw.get(key).unwrap().unwrap().value().to_vec();
            damage(&mut stored);
            raw.insert(key, stored.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    fn refused(result: Result<impl std::fmt::Debug, StoreError>) -> CorruptValue {
        let error = result.expect_err("a damaged value was served");
        CorruptValue::find(&error).cloned().expect("a CorruptValue")
    }

    #[test]
    fn a_damaged_value_is_refused_on_every_read() {
        let table = Table::Messages;
        let state = one_value(table, b"k", b"payload of a message batch");
        damage(&state.db, table, b"k", |stored| stored[3] ^= 0x01);
        let expected = CorruptValue { table: table.name(), key: b"k".to_vec() };
        let read = state.read();
        assert_eq!(refused(read.get(table, b"k")), expected);
        assert_eq!(refused(read.range(table, b"", None, 10)), expected);
        assert_eq!(read.keys(table, b"", None, 10).unwrap(), vec![b"k".to_vec()], "keys do not read values");
        let txn = state.db.begin_write().unwrap();
        assert_eq!(refused(WriteStore::open(&txn, &state.segments).get(table, b"k")), expected, "nor is it applied on");
    }

    /// A state written before message segments (its batches untagged, no accounting) is refused
    /// with a typed error, not read as garbage.
    #[test]
    fn a_state_from_before_message_segments_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("s.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        create_tables(&txn).unwrap();
        let mut old = Vec::new();
        seal_into(Table::Messages, b"k", b"an old batch, untagged", &mut old);
        txn.open_table(definition(Table::Messages)).unwrap().insert(b"k".as_slice(), old.as_slice()).unwrap();
        txn.commit().unwrap();
        let txn = db.begin_write().unwrap();
        let files = Box::new(SegmentDir::open(&dir.path().join("segments")).unwrap());
        let error = MessageSegments::open(files, &txn).expect_err("an old state was opened");
        assert!(matches!(error, message_segments::SegmentsOpenError::OldLayout), "{error}");
    }

    /// A large message batch is written to a segment once: redb holds a pointer, reads follow it,
    /// and a flipped byte in the segment is refused like one in redb.
    #[test]
    fn a_large_value_lives_in_a_segment_and_damage_there_is_refused() {
        let table = Table::Messages;
        let value: Vec<u8> = (0..VALUE_INLINE_BYTES_MIN * 2).map(|i| (i % 251) as u8).collect();
        let state = one_value(table, b"k", &value);
        let stored = {
            let txn = state.db.begin_read().unwrap();
            txn.open_table(definition(table)).unwrap().get(b"k".as_slice()).unwrap().unwrap().value().len()
        };
        assert!(stored < 64, "redb holds {stored} bytes for a value in a segment");
        assert_eq!(state.read().get(table, b"k").unwrap(), Some(value.clone()));
        let segment = std::fs::read_dir(state.dir.path().join("segments")).unwrap().next().unwrap().unwrap().path();
        let mut bytes = std::fs::read(&segment).unwrap();
        assert_eq!(bytes.len(), value.len() + 8, "one record: its head and the value");
        bytes[100] ^= 0x20;
        std::fs::write(&segment, bytes).unwrap();
        assert_eq!(refused(state.read().get(table, b"k")).key, b"k".to_vec());
        assert_eq!(refused(state.read().range(table, b"", None, 1)).key, b"k".to_vec());
    }

    /// A segment is removed once a durable state no longer points into it, never before; what
    /// the state still points at reads back, here and after opening again.
    #[test]
    fn a_segment_goes_once_durably_dead() {
        let table = Table::Messages;
        let state = State::new();
        let big = vec![7u8; 4 << 20];
        let keys: Vec<[u8; 1]> = (0..10u8).map(|i| [i]).collect();
        for key in &keys {
            state.put(table, &[(key.as_slice(), big.as_slice())]);
        }
        let segments = || std::fs::read_dir(state.dir.path().join("segments")).unwrap().count();
        assert_eq!(segments(), 2, "ten values of 4 MiB in segments of 32 MiB");
        let txn = state.db.begin_write().unwrap();
        let mut store = WriteStore::open(&txn, &state.segments);
        for key in &keys[..9] {
            store.delete(table, key).unwrap();
        }
        store.finish().unwrap();
        txn.commit().unwrap();
        state.segments.remove_dead(&state.db.begin_read().unwrap()).unwrap();
        assert_eq!(segments(), 1, "the first segment is dead");
        assert_eq!(state.read().get(table, &keys[9]).unwrap(), Some(big.clone()));
        let State { dir, db, segments: open } = state;
        drop((db, open));
        let (db, segments) = State::open_in(dir.path());
        assert_eq!(
            ReadStore::open(db.begin_read().unwrap(), segments.readable()).get(table, &keys[9]).unwrap(),
            Some(big)
        );
    }

    /// Power lost after values reached a segment and before a durable commit pointed at them:
    /// the state comes back as durably committed, the segment is cut back to where that state
    /// ends, and applying again writes the lost values again.
    #[test]
    fn a_power_cut_between_segment_write_and_durable_commit_loses_nothing_durable() {
        let table = Table::Messages;
        let (state_disk, segment_disks) = (Disk::default(), SegmentDisks::default());
        let open = || {
            let db = redb::Database::builder().create_with_backend(state_disk.open()).unwrap();
            let txn = db.begin_write().unwrap();
            create_tables(&txn).unwrap();
            let segments = MessageSegments::open(segment_disks.open(), &txn).unwrap();
            txn.commit().unwrap();
            (db, segments)
        };
        let value = |n: u8| vec![n; VALUE_INLINE_BYTES_MIN + usize::from(n)];
        let put = |db: &redb::Database, segments: &MessageSegments, n: u8, durable: bool| {
            let mut txn = db.begin_write().unwrap();
            if !durable {
                txn.set_durability(redb::Durability::None).unwrap();
            }
            let mut store = WriteStore::open(&txn, segments);
            store.put(table, &[n], &value(n)).unwrap();
            store.finish().unwrap();
            if durable {
                segments.sync().unwrap();
            }
            txn.commit().unwrap();
        };
        let (db, segments) = open();
        put(&db, &segments, 1, true);
        put(&db, &segments, 2, false);
        put(&db, &segments, 3, false);
        // The power goes before the database closes: closing would make its last commit durable.
        state_disk.crash();
        segment_disks.crash();
        drop((db, segments));
        let (db, segments) = open();
        let read = ReadStore::open(db.begin_read().unwrap(), segments.readable());
        assert_eq!(read.range(table, b"", None, 10).unwrap(), vec![(vec![1], value(1))], "only the durable value");
        drop(read);
        put(&db, &segments, 2, false);
        put(&db, &segments, 3, true);
        let read = ReadStore::open(db.begin_read().unwrap(), segments.readable());
        let found: Vec<Vec<u8>> = read.range(table, b"", None, 10).unwrap().into_iter().map(|(_, v)| v).collect();
        assert_eq!(found, vec![value(1), value(2), value(3)]);
    }

    #[test]
    fn a_value_under_another_key_or_cut_short_is_refused() {
        let table = Table::Messages;
        let state = one_value(table, b"a", b"value");
        let db = &state.db;
        let moved = {
            let txn = db.begin_read().unwrap();
            let raw = txn.open_table(definition(table)).unwrap();
            raw.get(b"a".as_slice()).unwrap().unwrap().value().to_vec()
        };
        let txn = db.begin_write().unwrap();
        txn.open_table(definition(table)).unwrap().insert(b"b".as_slice(), moved.as_slice()).unwrap();
        txn.commit().unwrap();
        let read = state.read();
        assert_eq!(read.get(table, b"a").unwrap(), Some(b"value".to_vec()));
        assert_eq!(refused(read.get(table, b"b")).key, b"b".to_vec());
        drop(read);
        damage(db, table, b"a", |stored| stored.truncate(2));
        assert_eq!(refused(state.read().get(table, b"a")).key, b"a".to_vec());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any one flipped bit in a stored value, or its checksum, is refused.
        #[test]
        fn any_flipped_bit_is_refused(value in prop::collection::vec(any::<u8>(), 0..64), bit in any::<prop::sample::Index>()) {
            let table = Table::Messages;
            let state = one_value(table, b"key", &value);
            damage(&state.db, table, b"key", |stored| {
                let bit = bit.index(stored.len() * 8);
                stored[bit / 8] ^= 1 << (bit % 8);
            });
            prop_assert!(state.read().get(table, b"key").is_err());
        }

        /// The redb store behaves exactly as the reference `MemStore` for every operation and scan.
        #[test]
        fn redb_store_matches_mem_store(ops in prop::collection::vec(op(), 1..40), start in prop::collection::vec(0u8..4, 0..3), end in prop::option::of(prop::collection::vec(0u8..4, 0..3)), limit in 0usize..6) {
            let state = State::new();
            let mut model = MemStore::new();
            let txn = state.db.begin_write().unwrap();
            {
                let mut store = WriteStore::open(&txn, &state.segments);
                for op in &ops {
                    match op {
                        Op::Put(t, k, v) => {
                            store.put(Table::ALL[*t as usize], k, v).unwrap();
                            model.put(Table::ALL[*t as usize], k, v).unwrap();
                        }
                        Op::Delete(t, k) => {
                            store.delete(Table::ALL[*t as usize], k).unwrap();
                            model.delete(Table::ALL[*t as usize], k).unwrap();
                        }
                        Op::Clear(t) => {
                            store.clear(Table::ALL[*t as usize]).unwrap();
                            model.clear(Table::ALL[*t as usize]).unwrap();
                        }
                    }
                }
                store.finish().unwrap();
            }
            txn.commit().unwrap();
            let read = state.read();
            for table in &Table::ALL[..4] {
                prop_assert_eq!(
                    read.range(*table, &start, end.as_deref(), limit).unwrap(),
                    model.range(*table, &start, end.as_deref(), limit).unwrap()
                );
                prop_assert_eq!(
                    read.keys(*table, &start, end.as_deref(), limit).unwrap(),
                    model.keys(*table, &start, end.as_deref(), limit).unwrap()
                );
                prop_assert_eq!(read.get(*table, &start).unwrap(), model.get(*table, &start).unwrap());
            }
        }
    }
}
