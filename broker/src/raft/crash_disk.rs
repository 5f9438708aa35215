//! A disk in memory with a crash model, for simulations and crash tests: a
//! [`redb::StorageBackend`], so the log, its segments and the state open on it as they do
//! on files. Writes land in a live image at once, as in a page cache; `sync_data` makes them
//! durable. A crash throws away every write since the last sync, and the
//! handles opened before it fail from then on, so a crashed broker's leftover tasks cannot touch
//! what its restarted self reads.
//!
//! For storage-fault simulations a disk also takes damage: bits flipped and ranges zeroed at
//! rest, a synced write lost (the disk acknowledged it and it is gone) or misdirected (it landed
//! elsewhere), and power loss that tears the unsynced writes instead of dropping them.

use std::io;
use std::sync::{Arc, Mutex};

use super::segment_files::SegmentFiles;

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
    /// The latest synced writes, oldest first, with the bytes they replaced: what a lost or
    /// misdirected write undoes.
    synced: std::collections::VecDeque<SyncedWrite>,
}

/// A write a sync made durable, and what it overwrote.
#[derive(Debug)]
struct SyncedWrite {
    offset: usize,
    replaced: Vec<u8>,
    bytes: Vec<u8>,
}

/// Synced writes a disk remembers for faults.
const SYNCED_WRITES_KEPT: usize = 64;

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

    /// Power loss that tears: of the unsynced changes, the first `whole` reach the disk, and of
    /// the next write only its first `bytes` bytes. Every open handle is dead.
    pub fn crash_torn(&self, whole: usize, bytes: usize) {
        let mut image = self.0.lock().unwrap();
        let image = &mut *image;
        let changes: Vec<Change> = image.unsynced.drain(..).collect();
        for change in changes.iter().take(whole) {
            apply(&mut image.durable, change);
        }
        if let Some(Change::Write { offset, bytes: written }) = changes.get(whole) {
            let cut = Change::Write { offset: *offset, bytes: written[..bytes.min(written.len())].to_vec() };
            apply(&mut image.durable, &cut);
        }
        image.live = image.durable.clone();
        image.generation += 1;
    }

    /// The file's length on disk.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().durable.len()
    }

    /// Whether the file is empty on disk.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the file's bytes on disk, to pick where to damage it.
    pub fn durable_bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().durable.clone()
    }

    /// Flips bit `bit` (0..8) of the byte at `at`, at rest. Past the end, nothing.
    pub fn flip(&self, at: usize, bit: u8) {
        self.damage(|file| {
            if let Some(byte) = file.get_mut(at) {
                *byte ^= 1 << (bit % 8);
            }
        });
    }

    /// Zeroes `len` bytes from `at`, at rest (clipped to the file).
    pub fn zero(&self, at: usize, len: usize) {
        self.damage(|file| {
            let end = at.saturating_add(len).min(file.len());
            if at < end {
                file[at..end].fill(0);
            }
        });
    }

    /// Undoes the `back`th latest synced write still in memory (0: the latest): the disk had
    /// acknowledged it. Returns whether there was one.
    pub fn lose_write(&self, back: usize) -> bool {
        let mut image = self.0.lock().unwrap();
        let Some(index) = image.synced.len().checked_sub(back + 1) else { return false };
        let Some(lost) = image.synced.remove(index) else { return false };
        let undo = |file: &mut Vec<u8>| overwrite(file, lost.offset, &lost.replaced);
        undo(&mut image.durable);
        undo(&mut image.live);
        true
    }

    /// Moves the `back`th latest synced write to `shift` bytes further on: it landed in the wrong
    /// place, and the right place kept its old bytes. Returns whether there was one.
    pub fn misdirect_write(&self, back: usize, shift: usize) -> bool {
        let mut image = self.0.lock().unwrap();
        let Some(index) = image.synced.len().checked_sub(back + 1) else { return false };
        let Some(moved) = image.synced.remove(index) else { return false };
        let misplace = |file: &mut Vec<u8>| {
            overwrite(file, moved.offset, &moved.replaced);
            overwrite(file, moved.offset + shift, &moved.bytes);
        };
        misplace(&mut image.durable);
        misplace(&mut image.live);
        true
    }

    /// Applies `damage` to the file on disk and to what is read now.
    fn damage(&self, damage: impl Fn(&mut Vec<u8>)) {
        let mut image = self.0.lock().unwrap();
        damage(&mut image.durable);
        damage(&mut image.live);
    }
}

/// Writes `bytes` at `offset` of `file`, within its length.
fn overwrite(file: &mut [u8], offset: usize, bytes: &[u8]) {
    let end = offset.saturating_add(bytes.len()).min(file.len());
    if offset < end {
        file[offset..end].copy_from_slice(&bytes[..end - offset]);
    }
}

/// The files of one broker, kept across its crashes. A power loss hits them all at once.
#[derive(Debug, Clone, Default)]
pub struct Disks {
    /// The Raft log's metadata (a redb file).
    pub log: Disk,
    /// The Raft log's segments.
    pub segments: SegmentDisks,
    /// The state machine's redb file.
    pub state: Disk,
    /// The state machine's message segments.
    pub state_segments: SegmentDisks,
}

impl Disks {
    /// Power loss on every file.
    pub fn crash(&self) {
        self.log.crash();
        self.segments.crash();
        self.state.crash();
        self.state_segments.crash();
    }

    /// The files by name, for faults: `log.redb`, `log.segments/<id>`, `state.redb`,
    /// `state.segments/<id>`.
    pub fn files(&self) -> Vec<(String, Disk)> {
        let mut files = vec![("log.redb".to_owned(), self.log.clone())];
        files.extend(self.segments.disks().into_iter().map(|(id, disk)| (format!("log.segments/{id}"), disk)));
        files.push(("state.redb".to_owned(), self.state.clone()));
        files.extend(self.state_segments.disks().into_iter().map(|(id, disk)| (format!("state.segments/{id}"), disk)));
        files
    }
}

/// A log's segments on [`Disk`]s, kept across the broker's crashes. Creating and removing a
/// segment is durable at once. A crash crashes every segment and kills the handles taken before
/// it ([`SegmentDisks::open`]), so a crashed incarnation cannot create or remove segments either.
#[derive(Debug, Clone, Default)]
pub struct SegmentDisks(Arc<Mutex<SegmentMap>>);

#[derive(Debug, Default)]
struct SegmentMap {
    disks: std::collections::BTreeMap<u64, Disk>,
    generation: u64,
}

impl SegmentDisks {
    /// The segments for a new incarnation of the broker.
    pub fn open(&self) -> Box<dyn SegmentFiles> {
        let generation = self.0.lock().unwrap().generation;
        Box::new(SegmentHandle { segments: self.clone(), generation })
    }

    pub fn crash(&self) {
        self.kill_handles();
        self.0.lock().unwrap().disks.values().for_each(Disk::crash);
    }

    /// Every segment is gone, durably, as if the directory were set aside; every handle is dead.
    pub fn wipe(&self) {
        let mut map = self.0.lock().unwrap();
        map.generation += 1;
        map.disks.values().for_each(Disk::wipe);
        map.disks.clear();
    }

    /// Ends the incarnation that holds handles now, leaving each disk's own crash to the caller.
    pub fn kill_handles(&self) {
        self.0.lock().unwrap().generation += 1;
    }

    /// Every segment's disk, by id.
    pub fn disks(&self) -> Vec<(u64, Disk)> {
        self.0.lock().unwrap().disks.iter().map(|(id, disk)| (*id, disk.clone())).collect()
    }
}

/// One incarnation's view of a [`SegmentDisks`].
#[derive(Debug)]
struct SegmentHandle {
    segments: SegmentDisks,
    generation: u64,
}

impl SegmentHandle {
    fn map(&self) -> io::Result<std::sync::MutexGuard<'_, SegmentMap>> {
        let map = self.segments.0.lock().unwrap();
        if map.generation != self.generation {
            return Err(io::Error::other("the broker crashed: this handle is dead"));
        }
        Ok(map)
    }
}

impl SegmentFiles for SegmentHandle {
    fn list(&self) -> io::Result<Vec<u64>> {
        Ok(self.map()?.disks.keys().copied().collect())
    }

    fn create(&self, id: u64) -> io::Result<Arc<dyn redb::StorageBackend>> {
        let disk = Disk::default();
        self.map()?.disks.insert(id, disk.clone());
        Ok(Arc::new(disk.open()))
    }

    fn open(&self, id: u64) -> io::Result<Arc<dyn redb::StorageBackend>> {
        let map = self.map()?;
        let disk =
            map.disks.get(&id).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no segment {id}")))?;
        Ok(Arc::new(disk.open()))
    }

    fn remove(&self, id: u64) -> io::Result<()> {
        self.map()?.disks.remove(&id);
        Ok(())
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
            if let Change::Write { offset, bytes } = &change {
                let replaced =
                    (*offset..offset + bytes.len()).map(|i| image.durable.get(i).copied().unwrap_or(0)).collect();
                image.synced.push_back(SyncedWrite { offset: *offset, replaced, bytes: bytes.clone() });
                if image.synced.len() > SYNCED_WRITES_KEPT {
                    image.synced.pop_front();
                }
            }
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
