//! The state machine's tables on redb: [`WriteStore`] implements the machine's `Store` over one
//! write transaction, [`ReadStore`] its `StoreRead` over one read transaction. Each machine table
//! is a redb table of byte keys and byte values, named by `Table::name`. Both open a table on its
//! first use: a read view that looks at 5 tables costs 2-3 us instead of 7-8 us with all 19 opened.
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
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

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
    /// A value being sealed, reused across puts.
    sealed: Vec<u8>,
}

impl<'txn> WriteStore<'txn> {
    pub fn open(txn: &'txn WriteTransaction) -> WriteStore<'txn> {
        WriteStore { txn, tables: cells(), sealed: Vec::new() }
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
}

impl ReadStore {
    pub fn open(txn: ReadTransaction) -> ReadStore {
        ReadStore { txn, tables: cells(), alarm: None }
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
) -> Result<Option<Vec<u8>>, StoreError> {
    match table.get(key).map_err(store_error)? {
        Some(stored) => Ok(Some(unseal(which, key, stored.value())?.to_vec())),
        None => Ok(None),
    }
}

fn range(
    which: Table,
    table: &impl ReadableTable<Bytes<'static>, Bytes<'static>>,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<KeyValue>, StoreError> {
    scan(table, start, end, limit, |key, stored| Ok((key.to_vec(), unseal(which, key, stored)?.to_vec())))
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
        get(table, self.table(table)?, key)
    }

    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        range(table, self.table(table)?, start, end, limit)
    }

    fn keys(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        keys(self.table(table)?, start, end, limit)
    }
}

impl Store for WriteStore<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut sealed = std::mem::take(&mut self.sealed);
        seal_into(table, key, value, &mut sealed);
        let inserted = self.table_mut(table)?.insert(key, sealed.as_slice()).map(drop).map_err(store_error);
        self.sealed = sealed;
        inserted
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.table_mut(table)?.remove(key).map_err(store_error)?;
        Ok(())
    }

    fn clear(&mut self, table: Table) -> Result<(), StoreError> {
        self.table_mut(table)?.retain(|_, _| false).map_err(store_error)
    }
}

impl StoreRead for ReadStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        watched(self.alarm.as_ref(), get(table, self.table(table)?, key))
    }

    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        watched(self.alarm.as_ref(), range(table, self.table(table)?, start, end, limit))
    }

    fn keys(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        keys(self.table(table)?, start, end, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_machine::MemStore;
    use proptest::prelude::*;
    use redb::ReadableDatabase;

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, Vec<u8>, Vec<u8>),
        Delete(u8, Vec<u8>),
        Clear(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let table = 0u8..4;
        let key = prop::collection::vec(0u8..4, 0..4);
        prop_oneof![
            6 => (table.clone(), key.clone(), prop::collection::vec(any::<u8>(), 0..8)).prop_map(|(t, k, v)| Op::Put(t, k, v)),
            3 => (table.clone(), key).prop_map(|(t, k)| Op::Delete(t, k)),
            1 => table.prop_map(Op::Clear),
        ]
    }

    /// A redb file with one value written through the store, and its raw table for damage.
    fn one_value(table: Table, key: &[u8], value: &[u8]) -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("s.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        create_tables(&txn).unwrap();
        WriteStore::open(&txn).put(table, key, value).unwrap();
        txn.commit().unwrap();
        (dir, db)
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
        let (_dir, db) = one_value(table, b"k", b"payload of a message batch");
        damage(&db, table, b"k", |stored| stored[3] ^= 0x01);
        let expected = CorruptValue { table: table.name(), key: b"k".to_vec() };
        let read = ReadStore::open(db.begin_read().unwrap());
        assert_eq!(refused(read.get(table, b"k")), expected);
        assert_eq!(refused(read.range(table, b"", None, 10)), expected);
        assert_eq!(read.keys(table, b"", None, 10).unwrap(), vec![b"k".to_vec()], "keys do not read values");
        let txn = db.begin_write().unwrap();
        assert_eq!(refused(WriteStore::open(&txn).get(table, b"k")), expected, "nor is it applied on");
    }

    #[test]
    fn a_value_under_another_key_or_cut_short_is_refused() {
        let table = Table::Messages;
        let (_dir, db) = one_value(table, b"a", b"value");
        let moved = {
            let txn = db.begin_read().unwrap();
            let raw = txn.open_table(definition(table)).unwrap();
            raw.get(b"a".as_slice()).unwrap().unwrap().value().to_vec()
        };
        let txn = db.begin_write().unwrap();
        txn.open_table(definition(table)).unwrap().insert(b"b".as_slice(), moved.as_slice()).unwrap();
        txn.commit().unwrap();
        let read = ReadStore::open(db.begin_read().unwrap());
        assert_eq!(read.get(table, b"a").unwrap(), Some(b"value".to_vec()));
        assert_eq!(refused(read.get(table, b"b")).key, b"b".to_vec());
        drop(read);
        damage(&db, table, b"a", |stored| stored.truncate(2));
        assert_eq!(refused(ReadStore::open(db.begin_read().unwrap()).get(table, b"a")).key, b"a".to_vec());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any one flipped bit in a stored value, or its checksum, is refused.
        #[test]
        fn any_flipped_bit_is_refused(value in prop::collection::vec(any::<u8>(), 0..64), bit in any::<prop::sample::Index>()) {
            let table = Table::Messages;
            let (_dir, db) = one_value(table, b"key", &value);
            damage(&db, table, b"key", |stored| {
                let bit = bit.index(stored.len() * 8);
                stored[bit / 8] ^= 1 << (bit % 8);
            });
            let read = ReadStore::open(db.begin_read().unwrap());
            prop_assert!(read.get(table, b"key").is_err());
        }

        /// The redb store behaves exactly as the reference `MemStore` for every operation and scan.
        #[test]
        fn redb_store_matches_mem_store(ops in prop::collection::vec(op(), 1..40), start in prop::collection::vec(0u8..4, 0..3), end in prop::option::of(prop::collection::vec(0u8..4, 0..3)), limit in 0usize..6) {
            let dir = tempfile::tempdir().unwrap();
            let db = redb::Database::create(dir.path().join("s.redb")).unwrap();
            let mut model = MemStore::new();
            let txn = db.begin_write().unwrap();
            create_tables(&txn).unwrap();
            {
                let mut store = WriteStore::open(&txn);
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
            }
            txn.commit().unwrap();
            let read = ReadStore::open(db.begin_read().unwrap());
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
