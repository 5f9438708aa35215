//! The state machine's tables on redb: [`WriteStore`] implements the machine's `Store` over one
//! write transaction, [`ReadStore`] its `StoreRead` over one read transaction. Each machine table
//! is a redb table of byte keys and byte values, named by `Table::name`.

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

/// The machine's tables, open for writing within one transaction.
pub struct WriteStore<'txn> {
    tables: Vec<redb::Table<'txn, Bytes<'static>, Bytes<'static>>>,
}

impl<'txn> WriteStore<'txn> {
    pub fn open(txn: &'txn WriteTransaction) -> Result<WriteStore<'txn>, StoreError> {
        let tables = Table::ALL
            .iter()
            .map(|&table| txn.open_table(definition(table)).map_err(store_error))
            .collect::<Result<_, _>>()?;
        Ok(WriteStore { tables })
    }
}

impl std::fmt::Debug for WriteStore<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteStore")
    }
}

/// The machine's tables, open for reading at one consistent point.
pub struct ReadStore {
    tables: Vec<redb::ReadOnlyTable<Bytes<'static>, Bytes<'static>>>,
}

impl ReadStore {
    pub fn open(txn: &ReadTransaction) -> Result<ReadStore, StoreError> {
        let tables = Table::ALL
            .iter()
            .map(|&table| txn.open_table(definition(table)).map_err(store_error))
            .collect::<Result<_, _>>()?;
        Ok(ReadStore { tables })
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
    if end.is_some_and(|end| end <= start) || limit == 0 {
        return Ok(Vec::new());
    }
    let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
    let mut found = Vec::new();
    for item in table.range::<&[u8]>((Bound::Included(start), upper)).map_err(store_error)? {
        let (key, value) = item.map_err(store_error)?;
        found.push((key.value().to_vec(), value.value().to_vec()));
        if found.len() == limit {
            break;
        }
    }
    Ok(found)
}

impl StoreRead for WriteStore<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        get(&self.tables[table as usize], key)
    }

    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        range(&self.tables[table as usize], start, end, limit)
    }
}

impl Store for WriteStore<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tables[table as usize].insert(key, value).map_err(store_error)?;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.tables[table as usize].remove(key).map_err(store_error)?;
        Ok(())
    }

    fn clear(&mut self, table: Table) -> Result<(), StoreError> {
        self.tables[table as usize].retain(|_, _| false).map_err(store_error)
    }
}

impl StoreRead for ReadStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        get(&self.tables[table as usize], key)
    }

    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        range(&self.tables[table as usize], start, end, limit)
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
                let mut store = WriteStore::open(&txn).unwrap();
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
            let read = ReadStore::open(&db.begin_read().unwrap()).unwrap();
            for table in &Table::ALL[..4] {
                prop_assert_eq!(
                    read.range(*table, &start, end.as_deref(), limit).unwrap(),
                    model.range(*table, &start, end.as_deref(), limit).unwrap()
                );
                prop_assert_eq!(read.get(*table, &start).unwrap(), model.get(*table, &start).unwrap());
            }
        }
    }
}
