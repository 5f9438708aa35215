//! One of the log's two write-ahead files (`log.wal0`, `log.wal1`; the log's write path drives
//! them). Records reach the disk here: one write and one `sync_data` per group commit, where a
//! durable redb commit costs about eight page writes before its sync. A file is started over
//! under a new epoch ([`Wal::reset`]) once a checkpoint holds its records. The bodies are opaque
//! here.
//!
//! Layout: a header (magic, then the epoch as a little-endian u64), then records: a u32 body
//! length, a u32 CRC-32 of the epoch, length and body, then the body. Replay stops at the first
//! record whose checksum fails, so a torn tail, zeros, or the leftovers of an earlier epoch (the
//! file is overwritten in place, never shrunk) are never read as entries.
//!
//! The file goes through [`redb::StorageBackend`], so a simulation hands it a disk in memory with
//! a crash model, as it does for the redb files.

use std::io;

use redb::StorageBackend;

const MAGIC: &[u8; 8] = b"CHORUSWL";
/// Magic and epoch.
const HEADER_BYTES: u64 = 16;
/// Length and checksum before each body.
const RECORD_HEAD_BYTES: usize = 8;
/// The largest body replay accepts; a longer length is garbage. Entries are bounded far below it
/// by the peer frame limit.
const RECORD_BODY_BYTES_MAX: usize = 256 << 20;

/// The write-ahead file of one epoch.
pub(crate) struct Wal {
    file: Box<dyn StorageBackend>,
    epoch: u64,
    /// Where the next record goes: the end of the valid records.
    end: u64,
    /// A write or sync failed: what the file holds is unknown, so it takes no more records.
    broken: bool,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("epoch", &self.epoch).field("end", &self.end).finish()
    }
}

impl Wal {
    /// Opens `file` under the epoch its header gives (0 without one), and reads back the bodies
    /// it holds, in append order, if that epoch is `epoch_min` or later.
    pub(crate) fn open(file: Box<dyn StorageBackend>, epoch_min: u64) -> io::Result<(Wal, Vec<Vec<u8>>)> {
        let len = file.len()?;
        let mut wal = Wal { file, epoch: 0, end: HEADER_BYTES, broken: false };
        if len < HEADER_BYTES {
            return Ok((wal, Vec::new()));
        }
        wal.epoch = wal.read_header()?.unwrap_or(0);
        if wal.epoch < epoch_min {
            return Ok((wal, Vec::new()));
        }
        let mut bodies = Vec::new();
        while let Some(body) = wal.read_record(len)? {
            wal.end += (RECORD_HEAD_BYTES + body.len()) as u64;
            bodies.push(body);
        }
        Ok((wal, bodies))
    }

    fn read_header(&self) -> io::Result<Option<u64>> {
        let mut header = [0u8; HEADER_BYTES as usize];
        self.file.read(0, &mut header)?;
        if &header[..8] != MAGIC {
            return Ok(None);
        }
        Ok(Some(u64::from_le_bytes(header[8..].try_into().expect("8 bytes"))))
    }

    /// The record at `self.end`, if a whole one of this epoch is there.
    fn read_record(&self, len: u64) -> io::Result<Option<Vec<u8>>> {
        let body_at = self.end + RECORD_HEAD_BYTES as u64;
        if body_at > len {
            return Ok(None);
        }
        let mut head = [0u8; RECORD_HEAD_BYTES];
        self.file.read(self.end, &mut head)?;
        let body_len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if body_len > RECORD_BODY_BYTES_MAX || body_at + body_len as u64 > len {
            return Ok(None);
        }
        let mut body = vec![0u8; body_len];
        self.file.read(body_at, &mut body)?;
        Ok((checksum(self.epoch, &body) == crc).then_some(body))
    }

    /// Writes `bodies` as records after the last one, in one write. They are durable only after
    /// [`Wal::sync`].
    pub(crate) fn append<'a>(&mut self, bodies: impl IntoIterator<Item = &'a [u8]>) -> io::Result<()> {
        let mut buf = Vec::new();
        for body in bodies {
            assert!(body.len() <= RECORD_BODY_BYTES_MAX, "a log entry of {} bytes", body.len());
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&checksum(self.epoch, body).to_le_bytes());
            buf.extend_from_slice(body);
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.guard(|wal| wal.file.write(wal.end, &buf))?;
        self.end += buf.len() as u64;
        Ok(())
    }

    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.guard(|wal| wal.file.sync_data())
    }

    /// Runs `io` unless an earlier failure broke the file, and breaks it if `io` fails.
    fn guard(&mut self, io: impl FnOnce(&Wal) -> io::Result<()>) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other("the write-ahead file failed earlier and takes no more records"));
        }
        let result = io(self);
        self.broken = result.is_err();
        result
    }

    /// Starts the file over, empty, under `epoch`. Call it only once the records of the current
    /// epoch are durable elsewhere. The new header needs no sync of its own: until the sync of
    /// the next append makes it durable along with that append, a crash leaves the old epoch's
    /// header, whose records the caller's checkpoint already holds, and nothing new was
    /// acknowledged.
    pub(crate) fn reset(&mut self, epoch: u64) -> io::Result<()> {
        assert!(epoch > self.epoch || self.end == HEADER_BYTES, "the epoch went back from {} to {epoch}", self.epoch);
        let mut header = [0u8; HEADER_BYTES as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&epoch.to_le_bytes());
        self.guard(|wal| wal.file.write(0, &header))?;
        self.epoch = epoch;
        self.end = HEADER_BYTES;
        Ok(())
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Bytes of records and header in this epoch.
    pub(crate) fn bytes(&self) -> u64 {
        self.end
    }
}

/// CRC-32 of the epoch, the length and the body: a record of another epoch fails it.
fn checksum(epoch: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&epoch.to_le_bytes());
    hasher.update(&(body.len() as u32).to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::crash_disk::Disk;
    use proptest::prelude::*;
    use redb::StorageBackend;

    fn fresh(file: &Disk, epoch: u64) -> Wal {
        let (mut wal, bodies) = Wal::open(Box::new(file.open()), epoch).unwrap();
        assert!(bodies.is_empty());
        wal.reset(epoch).unwrap();
        wal
    }

    fn reopen(file: &Disk, epoch: u64) -> Vec<Vec<u8>> {
        Wal::open(Box::new(file.open()), epoch).unwrap().1
    }

    #[test]
    fn records_come_back_in_order_for_their_epoch_only() {
        let file = Disk::default();
        let mut wal = fresh(&file, 3);
        wal.append([b"one".as_slice(), b"".as_slice()]).unwrap();
        wal.append([b"three".as_slice()]).unwrap();
        assert_eq!(reopen(&file, 3), vec![b"one".to_vec(), Vec::new(), b"three".to_vec()]);
        assert!(reopen(&file, 4).is_empty(), "a file of epoch 3 replayed when epoch 4 was durable");
        assert_eq!(reopen(&file, 2).len(), 3, "a file of epoch 3 is replayed while epoch 2 is the durable one");
        assert_eq!(Wal::open(Box::new(file.open()), 9).unwrap().0.epoch(), 3, "the header's epoch");
    }

    /// The file is overwritten in place: after a reset, the longer records of the old epoch that
    /// lie past the new ones must not be replayed.
    #[test]
    fn a_reset_hides_the_old_epochs_records() {
        let file = Disk::default();
        let mut wal = fresh(&file, 1);
        wal.append([[7u8; 100].as_slice(), [8u8; 100].as_slice(), [9u8; 100].as_slice()]).unwrap();
        wal.reset(2).unwrap();
        assert!(reopen(&file, 2).is_empty());
        wal.append([[1u8; 10].as_slice()]).unwrap();
        assert_eq!(reopen(&file, 2), vec![vec![1u8; 10]]);
        assert!(file.open().len().unwrap() > wal.bytes(), "the old records are still in the file");
    }

    #[test]
    fn a_missing_or_foreign_file_holds_nothing() {
        let file = Disk::default();
        assert!(reopen(&file, 0).is_empty());
        file.open().write(0, &[0xAB; 64]).unwrap();
        assert!(reopen(&file, 0).is_empty());
    }

    proptest! {
        /// Cut anywhere, or with a byte flipped anywhere, the file replays a prefix of what was
        /// appended: every record wholly before the damage, and nothing after it.
        #[test]
        fn damage_leaves_a_prefix(
            bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..12),
            damage_at in any::<prop::sample::Index>(),
            flip in any::<bool>(),
        ) {
            let file = Disk::default();
            let mut wal = fresh(&file, 5);
            let mut ends = Vec::new();
            for body in &bodies {
                wal.append([body.as_slice()]).unwrap();
                ends.push(wal.bytes());
            }
            let at = HEADER_BYTES + damage_at.index((wal.bytes() - HEADER_BYTES) as usize) as u64;
            if flip {
                let mut byte = [0u8];
                file.open().read(at, &mut byte).unwrap();
                file.open().write(at, &[byte[0] ^ 0x5A]).unwrap();
            } else {
                file.open().set_len(at).unwrap();
            }
            let intact = ends.iter().filter(|&&end| end <= at).count();
            prop_assert_eq!(reopen(&file, 5), bodies[..intact].to_vec());
        }
    }
}
