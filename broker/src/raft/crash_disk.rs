//! A disk in memory with a crash model, for simulations and crash tests: a
//! [`redb::StorageBackend`], so the log, its write-ahead files and the state open on it as they do
//! on files. Writes land in a live image at once, as in a page cache; `sync_data` makes them
//! durable. A crash throws away every write since the last sync, and the
//! handles opened before it fail from then on, so a crashed broker's leftover tasks cannot touch
//! what its restarted self reads.

use std::io;
use std::sync::{Arc, Mutex};

/// One broker file (its log or its state), shared by every incarnation of that broker.
#[derive(Debug, Clone, Default)]
pub struct Disk(Arc<Mutex<Image>>);

#[derive(Debug, Default)]
struct Image {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Changes since the last sync, in order, to replay onto `durable` at the next one.
    unsynced: Vec<Change>,
    /// Bumped by each crash; handles from an older generation are dead.
    generation: u64,
}

#[derive(Debug)]
enum Change {
    Write { offset: usize, bytes: Vec<u8> },
    SetLen(usize),
}

impl Disk {
    /// A handle for a new incarnation of the broker: a redb storage backend.
    pub fn open(&self) -> DiskHandle {
        let generation = self.0.lock().unwrap().generation;
        DiskHandle { disk: self.clone(), generation }
    }

    /// The file is gone, durably, as if deleted: for a damaged file set aside. Every open handle
    /// is dead.
    pub fn wipe(&self) {
        let mut image = self.0.lock().unwrap();
        image.live.clear();
        image.durable.clear();
        image.unsynced.clear();
        image.generation += 1;
    }

    /// Power loss: unsynced writes are gone and every open handle is dead.
    pub fn crash(&self) {
        let mut image = self.0.lock().unwrap();
        image.live = image.durable.clone();
        image.unsynced.clear();
        image.generation += 1;
    }
}

/// The files of one broker, kept across its crashes. A power loss hits them all at once.
#[derive(Debug, Clone, Default)]
pub struct Disks {
    /// The Raft log's redb file.
    pub log: Disk,
    /// The Raft log's two write-ahead files.
    pub wal: [Disk; 2],
    /// The state machine's redb file.
    pub state: Disk,
}

impl Disks {
    /// Handles on the log's write-ahead files, for [`super::log_store::LogStore::open_on`].
    pub fn wal_handles(&self) -> [Box<dyn redb::StorageBackend>; 2] {
        [Box::new(self.wal[0].open()), Box::new(self.wal[1].open())]
    }

    /// Power loss on every file.
    pub fn crash(&self) {
        self.log.crash();
        self.wal.iter().for_each(Disk::crash);
        self.state.crash();
    }
}

/// One incarnation's view of a [`Disk`].
#[derive(Debug)]
pub struct DiskHandle {
    disk: Disk,
    generation: u64,
}

impl DiskHandle {
    fn image(&self) -> io::Result<std::sync::MutexGuard<'_, Image>> {
        let image = self.disk.0.lock().unwrap();
        if image.generation != self.generation {
            return Err(io::Error::other("the broker crashed: this handle is dead"));
        }
        Ok(image)
    }
}

fn apply(image: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write { offset, bytes } => {
            let end = offset + bytes.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[*offset..end].copy_from_slice(bytes);
        }
        Change::SetLen(len) => image.resize(*len, 0),
    }
}

impl redb::StorageBackend for DiskHandle {
    fn len(&self) -> io::Result<u64> {
        Ok(self.image()?.live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let image = self.image()?;
        let start = offset as usize;
        let end = start.checked_add(out.len()).filter(|end| *end <= image.live.len());
        let end = end.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        out.copy_from_slice(&image.live[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut image = self.image()?;
        let change = Change::SetLen(len as usize);
        apply(&mut image.live, &change);
        image.unsynced.push(change);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut image = self.image()?;
        let image = &mut *image;
        for change in image.unsynced.drain(..) {
            apply(&mut image.durable, &change);
        }
        Ok(())
    }

    fn write(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut image = self.image()?;
        let change = Change::Write { offset: offset as usize, bytes: bytes.to_vec() };
        apply(&mut image.live, &change);
        image.unsynced.push(change);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    #[test]
    fn a_crash_keeps_synced_writes_and_drops_the_rest() {
        let disk = Disk::default();
        let handle = disk.open();
        handle.write(0, b"durable").unwrap();
        handle.sync_data().unwrap();
        handle.write(0, b"DUR").unwrap();
        handle.set_len(20).unwrap();
        disk.crash();
        assert!(handle.len().is_err(), "a handle from before the crash is dead");
        let reopened = disk.open();
        assert_eq!(reopened.len().unwrap(), 7);
        let mut out = [0u8; 7];
        reopened.read(0, &mut out).unwrap();
        assert_eq!(&out, b"durable");
    }
}
