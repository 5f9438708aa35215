//! The machine's only door to its state: ordered byte maps, one per [`Table`], read and written
//! synchronously. Keys sort bytewise, so the machine encodes numbers big-endian and scans ranges.
//! The broker implements [`Store`] over a redb write transaction; [`MemStore`] serves tests.

use std::collections::BTreeMap;

/// The tables of the machine's state. Their order is the order of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Table {
    /// Machine-wide counters: id allocation, last applied index and time.
    Meta = 0,
    /// Topic name → topic id.
    TopicNames = 1,
    /// Topic id → topic record.
    Topics = 2,
    /// (topic id, seq of its last message) → one publish's batch of messages. The backlog: the
    /// only table that grows with it.
    Messages = 3,
    /// (topic id, producer id, producer seq) → idempotency record.
    Dedup = 4,
    /// (expiry time, topic id, producer id, producer seq) → (): drops idempotency records.
    DedupExpiry = 5,
    /// (time the oldest message ages out, topic id) → (): drives age retention.
    AgeDeadlines = 6,
    /// (topic id, group name) → group id.
    GroupNames = 7,
    /// Group id → group record.
    Groups = 8,
    /// (group id, seq) → pending record: a message examined but not yet done, unless a fresh
    /// lease in its lease batch holds it (see `LeaseBatchRecord`).
    Pending = 9,
    /// (group id, available time, seq) → (): pending messages not leased, by availability.
    Ready = 10,
    /// (group id, last token of the batch) → one lease command's grants: token → seq.
    Leases = 11,
    /// (deadline, group id, last token of the batch) → (): lease batches by expiry, each at or
    /// before the earliest deadline of its live tokens.
    Deadlines = 12,
    /// (group id, key) → seq: per-key ordering, the one message that holds each key.
    KeyLocks = 13,
    /// (group id, key, seq) → (): messages waiting for their key, in order.
    KeyWaits = 14,
    /// (group id, consumer id) → leases held.
    Consumers = 15,
    /// (topic id, subscription name) → subscription id.
    SubNames = 16,
    /// Subscription id → subscription record.
    Subs = 17,
    /// (chore kind, id) → (): deferred bounded work such as purging a deleted topic.
    Chores = 18,
    /// (group id, last token) → (): the lease batches holding live fresh leases. Fresh grants
    /// take messages in topic order, so the first one's first fresh slot is the group's lowest.
    FreshBatches = 19,
    /// User name → user record.
    Users = 20,
    /// (kind: 1 topic, 2 group; id) → the name of the user who created it, for quotas.
    Owners = 21,
    /// (user, group id, last token of the batch) → (): the lease batches each user holds, so a
    /// revocation finds them.
    HolderLeases = 22,
}

impl Table {
    /// Every table, in snapshot order.
    pub const ALL: [Table; 23] = [
        Table::Meta,
        Table::TopicNames,
        Table::Topics,
        Table::Messages,
        Table::Dedup,
        Table::DedupExpiry,
        Table::AgeDeadlines,
        Table::GroupNames,
        Table::Groups,
        Table::Pending,
        Table::Ready,
        Table::Leases,
        Table::Deadlines,
        Table::KeyLocks,
        Table::KeyWaits,
        Table::Consumers,
        Table::SubNames,
        Table::Subs,
        Table::Chores,
        Table::FreshBatches,
        Table::Users,
        Table::Owners,
        Table::HolderLeases,
    ];

    /// A stable name, used by the broker for its redb table names.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "machine_meta",
            Table::TopicNames => "topic_names",
            Table::Topics => "topics",
            Table::Messages => "messages",
            Table::Dedup => "dedup",
            Table::DedupExpiry => "dedup_expiry",
            Table::AgeDeadlines => "age_deadlines",
            Table::GroupNames => "group_names",
            Table::Groups => "groups",
            Table::Pending => "pending",
            Table::Ready => "ready",
            Table::Leases => "leases",
            Table::Deadlines => "deadlines",
            Table::KeyLocks => "key_locks",
            Table::KeyWaits => "key_waits",
            Table::Consumers => "consumers",
            Table::SubNames => "sub_names",
            Table::Subs => "subs",
            Table::Chores => "chores",
            Table::FreshBatches => "fresh_batches",
            Table::Users => "users",
            Table::Owners => "owners",
            Table::HolderLeases => "holder_leases",
        }
    }

    /// The table whose snapshot id is `id`.
    pub fn from_id(id: u8) -> Option<Table> {
        Table::ALL.get(usize::from(id)).copied()
    }
}

/// A failure of the storage underneath the machine. It is fatal for the apply that met it: the
/// broker aborts the transaction, so no partial entry is ever visible.
#[derive(Debug, thiserror::Error)]
#[error("storage failed: {0}")]
pub struct StoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    /// Wraps any error as a storage failure.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
        StoreError(error.into())
    }
}

/// One key and its value, as returned by a range scan.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Read access to the machine's tables.
pub trait StoreRead {
    /// The value under `key`, if any.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` entries with `start <= key < end` (no upper bound when `end` is `None`),
    /// in ascending key order.
    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StoreError>;

    /// The keys of [`StoreRead::range`]'s entries. A store that can skip reading the values
    /// should: purging a topic reads thousands of message batches' keys at a time.
    fn keys(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self.range(table, start, end, limit)?.into_iter().map(|(key, _)| key).collect())
    }
}

/// Write access to the machine's tables. Only the machine writes through it.
pub trait Store: StoreRead {
    /// Inserts or replaces the value under `key`.
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`; removing an absent key is not an error.
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError>;
    /// Removes every entry of `table`.
    fn clear(&mut self, table: Table) -> Result<(), StoreError>;
}

/// An in-memory store for tests and simulation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemStore {
    tables: BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Number of entries in `table`.
    pub fn len(&self, table: Table) -> usize {
        self.tables.get(&table).map_or(0, BTreeMap::len)
    }
}

impl StoreRead for MemStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tables.get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn range(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Result<Vec<KeyValue>, StoreError> {
        let Some(entries) = self.tables.get(&table) else {
            return Ok(Vec::new());
        };
        let upper = match end {
            Some(end) if end <= start => return Ok(Vec::new()),
            Some(end) => std::ops::Bound::Excluded(end.to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        let found = entries
            .range((std::ops::Bound::Included(start.to_vec()), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(found)
    }
}

impl Store for MemStore {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tables.entry(table).or_default().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        if let Some(entries) = self.tables.get_mut(&table) {
            entries.remove(key);
        }
        Ok(())
    }

    fn clear(&mut self, table: Table) -> Result<(), StoreError> {
        self.tables.remove(&table);
        Ok(())
    }
}

/// The smallest key greater than every key that starts with `prefix`, or `None` when no such key
/// exists (the prefix is all 0xff). Used as the exclusive end of a prefix scan.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_ids_round_trip_in_snapshot_order() {
        for (index, table) in Table::ALL.iter().enumerate() {
            assert_eq!(*table as usize, index);
            assert_eq!(Table::from_id(index as u8), Some(*table));
        }
        assert_eq!(Table::from_id(Table::ALL.len() as u8), None);
    }

    #[test]
    fn prefix_end_bounds_every_extension() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        let end = prefix_end(&[7, 9]).unwrap();
        assert!([7u8, 9, 0xff, 0xff].as_slice() < end.as_slice());
    }

    #[test]
    fn mem_store_ranges_are_ordered_and_bounded() {
        let mut store = MemStore::new();
        for i in [5u8, 1, 3, 9] {
            store.put(Table::Topics, &[i], &[i]).unwrap();
        }
        let found = store.range(Table::Topics, &[2], Some(&[9]), 10).unwrap();
        assert_eq!(found, vec![(vec![3], vec![3]), (vec![5], vec![5])]);
        assert_eq!(store.range(Table::Topics, &[0], None, 1).unwrap().len(), 1);
        assert!(store.range(Table::Topics, &[5], Some(&[5]), 9).unwrap().is_empty());
        store.delete(Table::Topics, &[5]).unwrap();
        assert_eq!(store.len(Table::Topics), 3);
        store.clear(Table::Topics).unwrap();
        assert_eq!(store.len(Table::Topics), 0);
    }
}
