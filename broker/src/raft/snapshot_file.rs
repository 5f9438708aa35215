//! The snapshot file: the machine's export (`chorus_machine::snapshot`), then a CRC-32 of every
//! byte before it (4 bytes, little-endian). A snapshot is written whole under a temporary name,
//! synced and renamed, so a file that fails its checksum was damaged, never cut short by a crash.
//!
//! The checksum is checked before a snapshot is sent ([`verify`]), as its chunks arrive from the
//! leader ([`Receipts`]), and before it is installed: a damaged snapshot never reaches a
//! follower's state.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::Path;
use std::sync::Mutex;

use chorus_machine::StoreRead;
use chorus_machine::snapshot::{self, SnapshotError};

/// Bytes after the export: its checksum.
const CHECKSUM_BYTES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("snapshot file: {0}")]
    Io(#[from] io::Error),
    #[error("snapshot export: {0}")]
    Export(#[from] SnapshotError),
    #[error("the snapshot file {path} is damaged: it fails its checksum")]
    Damaged { path: String },
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the state `store` reads as a snapshot file to `out`: the export, then its checksum.
pub fn write(store: &impl StoreRead, out: &mut impl Write) -> Result<(), SnapshotFileError> {
    let mut hashing = Hashing { inner: &mut *out, hasher: crc32fast::Hasher::new() };
    snapshot::export(store, &mut hashing)?;
    let crc = hashing.hasher.finalize();
    out.write_all(&crc.to_le_bytes())?;
    Ok(())
}

/// Checks the snapshot file at `path` against its checksum, reading it once.
pub fn verify(path: &Path) -> Result<(), SnapshotFileError> {
    verify_open(&File::open(path)?, path)
}

/// Checks the open snapshot `file` (named `path` in errors) against its checksum, reading it
/// from the start, and leaves it at the start.
pub fn verify_open(file: &File, path: &Path) -> Result<(), SnapshotFileError> {
    let damaged = || SnapshotFileError::Damaged { path: path.display().to_string() };
    let len = file.metadata()?.len();
    let body_len = len.checked_sub(CHECKSUM_BYTES as u64).ok_or_else(damaged)?;
    let mut reader = BufReader::new(file.try_clone()?);
    reader.seek(io::SeekFrom::Start(0))?;
    let mut hashing = Hashing { inner: io::sink(), hasher: crc32fast::Hasher::new() };
    io::copy(&mut (&mut reader).take(body_len), &mut hashing)?;
    let mut crc = [0u8; CHECKSUM_BYTES];
    reader.read_exact(&mut crc)?;
    reader.into_inner().seek(io::SeekFrom::Start(0))?;
    if hashing.hasher.finalize() == u32::from_le_bytes(crc) { Ok(()) } else { Err(damaged()) }
}

/// A snapshot arriving in chunks, checked as it comes: every byte but the last four is hashed,
/// and those four are the checksum.
#[derive(Debug)]
struct Receipt {
    snapshot_id: String,
    next_offset: u64,
    hasher: crc32fast::Hasher,
    /// The last bytes seen, at most [`CHECKSUM_BYTES`]: the checksum, once the last chunk came.
    tail: Vec<u8>,
}

impl Receipt {
    fn take(&mut self, data: &[u8]) {
        self.next_offset += data.len() as u64;
        let mut seen = std::mem::take(&mut self.tail);
        seen.extend_from_slice(data);
        let hashed = seen.len().saturating_sub(CHECKSUM_BYTES);
        self.hasher.update(&seen[..hashed]);
        self.tail = seen.split_off(hashed);
    }

    fn intact(&self) -> bool {
        self.tail.len() == CHECKSUM_BYTES
            && self.hasher.clone().finalize() == u32::from_le_bytes(self.tail[..].try_into().expect("4 bytes"))
    }
}

/// Why a chunk was refused; the sender starts the snapshot over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkRefused {
    #[error("snapshot {snapshot_id}: a chunk at offset {offset} follows nothing received here")]
    OutOfOrder { snapshot_id: String, offset: u64 },
    #[error("snapshot {snapshot_id} arrived damaged: it fails its checksum")]
    Damaged { snapshot_id: String },
}

/// The snapshot this broker is receiving, if any, and the last one that arrived damaged.
#[derive(Debug, Default)]
pub struct Receipts(Mutex<ReceiptState>);

#[derive(Debug, Default)]
struct ReceiptState {
    receiving: Option<Receipt>,
    /// Arrived damaged: its retried chunks are refused as failures, not as a mismatch (after
    /// which openraft would resend the same bytes from its open file forever). After a few, the
    /// leader gives up on this send; the next starts at offset 0 from a snapshot it checks
    /// first, and builds again if damaged.
    damaged: Option<String>,
}

impl ChunkRefused {
    /// Whether the sender should start the same snapshot over (rather than fail it).
    pub fn start_over(&self) -> bool {
        matches!(self, ChunkRefused::OutOfOrder { .. })
    }
}

impl Receipts {
    /// Checks the chunk of `snapshot_id` at `offset`. A chunk at offset 0 starts a snapshot over;
    /// any other must follow the last one taken. The last chunk (`done`) is refused unless the
    /// whole snapshot matches its checksum.
    pub fn check(&self, snapshot_id: &str, offset: u64, data: &[u8], done: bool) -> Result<(), ChunkRefused> {
        let mut state = self.0.lock().expect("receipts lock");
        if offset == 0 {
            state.damaged = None;
        } else if state.damaged.as_deref() == Some(snapshot_id) {
            return Err(ChunkRefused::Damaged { snapshot_id: snapshot_id.to_owned() });
        }
        let receiving = &mut state.receiving;
        if offset == 0 {
            *receiving = Some(Receipt {
                snapshot_id: snapshot_id.to_owned(),
                next_offset: 0,
                hasher: crc32fast::Hasher::new(),
                tail: Vec::new(),
            });
        }
        let receipt = match receiving.as_mut() {
            Some(receipt) if receipt.snapshot_id == snapshot_id && receipt.next_offset == offset => receipt,
            _ => {
                *receiving = None;
                return Err(ChunkRefused::OutOfOrder { snapshot_id: snapshot_id.to_owned(), offset });
            }
        };
        receipt.take(data);
        if !done {
            return Ok(());
        }
        let intact = receipt.intact();
        *receiving = None;
        if intact {
            return Ok(());
        }
        state.damaged = Some(snapshot_id.to_owned());
        Err(ChunkRefused::Damaged { snapshot_id: snapshot_id.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_machine::{MemStore, Store, Table};
    use proptest::prelude::*;

    fn state() -> MemStore {
        let mut store = MemStore::new();
        for i in 0u8..50 {
            store.put(Table::Messages, &[i], &[i; 30]).unwrap();
        }
        store
    }

    fn file_bytes() -> Vec<u8> {
        let mut bytes = Vec::new();
        write(&state(), &mut bytes).unwrap();
        bytes
    }

    fn send_in_chunks(receipts: &Receipts, bytes: &[u8], chunk: usize) -> Result<(), ChunkRefused> {
        let chunks: Vec<&[u8]> = bytes.chunks(chunk.max(1)).collect();
        let mut offset = 0;
        for (i, data) in chunks.iter().enumerate() {
            receipts.check("1-1-9-7", offset, data, i + 1 == chunks.len())?;
            offset += data.len() as u64;
        }
        Ok(())
    }

    #[test]
    fn a_written_file_verifies_and_a_damaged_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, file_bytes()).unwrap();
        verify(&path).unwrap();
        let mut bytes = file_bytes();
        bytes[100] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(verify(&path), Err(SnapshotFileError::Damaged { .. })));
        std::fs::write(&path, [1, 2]).unwrap();
        assert!(matches!(verify(&path), Err(SnapshotFileError::Damaged { .. })));
    }

    #[test]
    fn the_chunks_of_a_damaged_snapshot_fail_until_it_starts_over() {
        let receipts = Receipts::default();
        let mut bytes = file_bytes();
        bytes[7] ^= 0x20;
        let refused = send_in_chunks(&receipts, &bytes, 100).unwrap_err();
        assert!(!refused.start_over(), "a mismatch would make openraft resend the same bytes");
        let last = (bytes.len() - 1) / 100 * 100;
        let retried = receipts.check("1-1-9-7", last as u64, &bytes[last..], true).unwrap_err();
        assert!(!retried.start_over(), "{retried}");
        send_in_chunks(&receipts, &file_bytes(), 100).unwrap();
    }

    #[test]
    fn a_chunk_that_follows_nothing_is_refused() {
        let receipts = Receipts::default();
        assert!(matches!(receipts.check("a", 10, b"x", false), Err(ChunkRefused::OutOfOrder { .. })));
        receipts.check("a", 0, b"0123", false).unwrap();
        assert!(matches!(receipts.check("b", 4, b"x", false), Err(ChunkRefused::OutOfOrder { .. })));
        assert!(matches!(receipts.check("a", 4, b"x", false), Err(ChunkRefused::OutOfOrder { .. })), "dropped");
    }

    proptest! {
        /// In any chunking, an intact snapshot is taken and one with any bit flipped is refused.
        #[test]
        fn chunks_are_checked_whole(chunk in 1usize..700, bit in any::<prop::sample::Index>(), damage in any::<bool>()) {
            let mut bytes = file_bytes();
            if damage {
                let bit = bit.index(bytes.len() * 8);
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
            let receipts = Receipts::default();
            let received = send_in_chunks(&receipts, &bytes, chunk);
            if damage {
                prop_assert_eq!(received, Err(ChunkRefused::Damaged { snapshot_id: "1-1-9-7".into() }));
            } else {
                prop_assert_eq!(received, Ok(()));
            }
            if damage {
                prop_assert!(send_in_chunks(&receipts, &bytes, chunk).is_err_and(|r| !r.start_over()), "the damaged snapshot again");
            }
            prop_assert_eq!(send_in_chunks(&receipts, &file_bytes(), chunk), Ok(()), "an intact snapshot is taken");
        }
    }
}
