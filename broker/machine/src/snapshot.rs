//! Snapshots: the whole state as one byte stream, table by table in key order, so equal states
//! give equal snapshots. Layout: the magic `CHORUS-SM-4`, then records of
//! `[table id u8][key len u32 BE][key][value len u32 BE][value]`, then the end marker `0xff`.
//! A snapshot arrives from the network when installed, so reading one never panics.

use std::io::{Read, Write};

use crate::store::{Store, StoreError, StoreRead, Table};

const MAGIC: &[u8] = b"CHORUS-SM-4";
const END: u8 = 0xff;
/// Entries read from a table per scan while exporting.
const EXPORT_PAGE: usize = 1024;
/// Largest key or value a snapshot may hold; far above what the machine writes.
const FIELD_BYTES_MAX: u32 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("snapshot io: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
}

/// Writes the whole state to `out`. Returns the bytes written.
pub fn export(store: &impl StoreRead, out: &mut impl Write) -> Result<u64, SnapshotError> {
    out.write_all(MAGIC)?;
    let mut written = MAGIC.len() as u64;
    for table in Table::ALL {
        let mut start: Vec<u8> = Vec::new();
        loop {
            let page = store.range(table, &start, None, EXPORT_PAGE)?;
            for (key, value) in &page {
                out.write_all(&[table as u8])?;
                for field in [key, value] {
                    out.write_all(&(field.len() as u32).to_be_bytes())?;
                    out.write_all(field)?;
                }
                written += 9 + (key.len() + value.len()) as u64;
            }
            match page.last() {
                Some((last, _)) if page.len() == EXPORT_PAGE => {
                    start = last.clone();
                    start.push(0);
                }
                _ => break,
            }
        }
    }
    out.write_all(&[END])?;
    Ok(written + 1)
}

/// Replaces the whole state with the snapshot read from `input`.
pub fn import(store: &mut impl Store, input: &mut impl Read) -> Result<(), SnapshotError> {
    let mut magic = [0u8; MAGIC.len()];
    input.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(SnapshotError::Corrupt("bad magic".into()));
    }
    for table in Table::ALL {
        store.clear(table)?;
    }
    loop {
        let mut table_id = [0u8; 1];
        input.read_exact(&mut table_id)?;
        if table_id[0] == END {
            return Ok(());
        }
        let table = Table::from_id(table_id[0])
            .ok_or_else(|| SnapshotError::Corrupt(format!("unknown table {}", table_id[0])))?;
        let key = read_field(input)?;
        let value = read_field(input)?;
        store.put(table, &key, &value)?;
    }
}

fn read_field(input: &mut impl Read) -> Result<Vec<u8>, SnapshotError> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > FIELD_BYTES_MAX {
        return Err(SnapshotError::Corrupt(format!("field of {len} bytes")));
    }
    // Read through `take` so a lying length cannot make us allocate before the bytes arrive.
    let mut field = Vec::new();
    input.take(u64::from(len)).read_to_end(&mut field)?;
    if field.len() != len as usize {
        return Err(SnapshotError::Corrupt("truncated field".into()));
    }
    Ok(field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn export_import_round_trips_and_pages() {
        let mut store = MemStore::new();
        for i in 0..(EXPORT_PAGE as u32 * 2 + 7) {
            store.put(Table::Messages, &i.to_be_bytes(), &[1, 2, 3]).unwrap();
        }
        store.put(Table::Meta, b"meta", b"x").unwrap();
        let mut bytes = Vec::new();
        let written = export(&store, &mut bytes).unwrap();
        assert_eq!(written, bytes.len() as u64);
        let mut restored = MemStore::new();
        restored.put(Table::Topics, b"stale", b"gone").unwrap();
        import(&mut restored, &mut bytes.as_slice()).unwrap();
        assert_eq!(restored, store);
    }

    #[test]
    fn corrupt_snapshots_are_errors() {
        let mut store = MemStore::new();
        assert!(matches!(import(&mut store, &mut &b"nope"[..]), Err(SnapshotError::Io(_))));
        assert!(matches!(import(&mut store, &mut &b"CHORUS-SM-X"[..]), Err(SnapshotError::Corrupt(_))));
        let mut bad_table = MAGIC.to_vec();
        bad_table.push(200);
        assert!(matches!(import(&mut store, &mut bad_table.as_slice()), Err(SnapshotError::Corrupt(_))));
        let mut huge = MAGIC.to_vec();
        huge.push(0);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(import(&mut store, &mut huge.as_slice()), Err(SnapshotError::Corrupt(_))));
        let mut truncated = MAGIC.to_vec();
        truncated.push(0);
        truncated.extend_from_slice(&100u32.to_be_bytes());
        truncated.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(import(&mut store, &mut truncated.as_slice()), Err(SnapshotError::Corrupt(_))));
    }
}
