//! The state machine's tables on redb: [`WriteStore`] implements the machine's `Store` over one
//! write transaction, [`ReadStore`] its `StoreRead` over one read transaction. Each machine table
//! is a redb table of byte keys and byte values, named by `Table::name`. Both open a table on its
//! first use: a read view that looks at 5 tables costs 2-3 us instead of 7-8 us with all 19 opened.

use std::cell::OnceCell;
use std::ops::Bound;

use chorus_machine::store::{KeyValue, Store, StoreError, StoreRead, Table};
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

type Bytes<'a> = &'a [u8];

fn definition(table: Table) -> TableDefinition<'static, Bytes<'static>, Bytes<'static>> {
    TableDefinition::new(table.name())
}

fn store_error(error: impl Into<redb::Error>) -> StoreError {
    StoreError::new(error.into())
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

/// The machine's tables, open for writing within one transaction.
pub struct WriteStore<'txn> {
    txn: &'txn WriteTransaction,
    tables: [OnceCell<WriteTable<'txn>>; Table::ALL.len()],
}

impl<'txn> WriteStore<'txn> {
    pub fn open(txn: &'txn WriteTransaction) -> WriteStore<'txn> {
        WriteStore { txn, tables: cells() }
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
}

impl ReadStore {
    pub fn open(txn: ReadTransaction) -> ReadStore {
        ReadStore { txn, tables: cells() }
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

fn get(table: &impl ReadableTable<Bytes<'static>, Bytes<'static>>, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(table.get(key).map_err(store_error)?.map(|value| value.value().to_vec()))
}

fn range(
    table: &impl ReadableTable<Bytes<'static>, Bytes<'static>>,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<KeyValue>, StoreError> {
    scan(table, start, end, limit, |key, value| (key.to_vec(), value.to_vec()))
}

/// Like [`range`], without copying the values.
fn keys(
    table: &impl ReadableTable<Bytes<'static>, Bytes<'static>>,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<Vec<u8>>, StoreError> {
    scan(table, start, end, limit, |key, _| key.to_vec())
}

/// What `take` makes of each of up to `limit` entries with `start <= key < end`, in key order.
fn scan<T>(
    table: &impl ReadableTable<Bytes<'static>, Bytes<'static>>,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
    take: impl Fn(&[u8], &[u8]) -> T,
) -> Result<Vec<T>, StoreError> {
    if end.is_some_and(|end| end <= start) || limit == 0 {
        return Ok(Vec::new());
    }
    let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
    let mut found = Vec::new();
    for item in table.range::<&[u8]>((Bound::Included(start), upper)).map_err(store_error)? {
        let (key, value) = item.map_err(store_error)?;
        found.push(take(key.value(), value.value()));
        if found.len() == limit {
            break;
        }
    }
    Ok(found)
}

impl StoreRead for WriteStore<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        get(self.table(table)?, key)
    }

    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        range(self.table(table)?, start, end, limit)
    }

    fn keys(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        keys(self.table(table)?, start, end, limit)
    }
}

impl Store for WriteStore<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.table_mut(table)?.insert(key, value).map_err(store_error)?;
        Ok(())
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
        get(self.table(table)?, key)
    }

    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        range(self.table(table)?, start, end, limit)
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

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

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
