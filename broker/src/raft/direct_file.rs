//! A log segment's file written with `O_DIRECT`: appended bytes go from the writer's buffer to
//! the device, never into the page cache. On a host that reclaims free memory (a VM with free
//! page reporting, as this project's machine is), every page-cache page a new file takes is
//! zeroed by the host first: writing to fresh pages ran at 320 MB/s a core where direct writes
//! ran at 1.4 GB/s, and the log's share of those copies was half of every broker's CPU at
//! 16 KiB payloads.
//!
//! Direct IO moves whole 4 KiB blocks at aligned offsets from aligned memory, and each write
//! waits for the device. So a write only changes blocks held in memory, and the next
//! [`StorageBackend::sync_data`] writes the changed ones, each run of consecutive blocks in one
//! write, then syncs: a group commit's records, the header and the committed id cost one or two
//! writes and a flush. The file keeps in memory the blocks a later write will only partly cover
//! (block 0, which holds the segment's header slots, and the last block), and reads any other
//! partial block back first. Reads take the blocks held in memory from there and the rest through
//! the page cache (a second handle on the file, so the kernel reads ahead for a replay or a
//! catch-up), without holding the file's lock while the disk answers: a block not held in memory
//! is on disk, and a segment never writes again over bytes it has given a reader. What was
//! written and not synced is lost in a crash, as unsynced writes through the page cache may be.
//! [`DirectFile::len`] is the length written while the file is open; on disk the file may end in
//! zeros up to a whole block, which a segment's replay reads past its durable end as a torn tail,
//! as it reads any unfinished write.
//!
//! Where the file system refuses `O_DIRECT` (tmpfs), [`open`] falls back to buffered IO.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::StorageBackend;

/// The unit of direct IO: offsets, lengths and memory are multiples of it.
const BLOCK_BYTES: u64 = 4096;

/// Opens `path` for direct IO (created and emptied when `create`), or with the page cache when
/// its file system refuses direct IO.
pub(super) fn open(path: &Path, create: bool) -> io::Result<Arc<dyn StorageBackend>> {
    let options = |direct: bool| {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true);
        if create {
            options.create(true).truncate(true);
        }
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        options
    };
    match options(true).open(path) {
        Ok(file) => {
            let reads = std::fs::OpenOptions::new().read(true).open(path)?;
            Ok(Arc::new(DirectFile::new(file, reads)?))
        }
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            let file = options(false).open(path)?;
            Ok(Arc::new(redb::backends::FileBackend::new(file).map_err(io::Error::other)?))
        }
        Err(error) => Err(error),
    }
}

/// A file opened with `O_DIRECT`.
#[derive(Debug)]
pub struct DirectFile {
    /// Opened with `O_DIRECT`: every write goes through it.
    file: File,
    /// The same file through the page cache, for reads: the kernel reads ahead, so a replay or a
    /// follower's catch-up reading records one by one costs no device round trip each (it did,
    /// reading with `O_DIRECT`). A direct write drops the cached pages it covers.
    reads: File,
    state: Mutex<Written>,
}

#[derive(Debug)]
struct Written {
    /// The length written.
    len: u64,
    /// Blocks held in memory, by block number: those written since the last sync, and block 0
    /// and the last block, which later writes cover only in part.
    kept: BTreeMap<u64, Vec<u8>>,
    /// The kept blocks not yet on disk.
    dirty: BTreeSet<u64>,
}

/// A buffer whose bytes start at a block boundary in memory, as direct IO needs.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
}

/// Bytes of a direct write's buffer: a longer run of blocks is written in pieces of this size.
const SCRATCH_BYTES: usize = 1 << 20;

/// Buffers kept for the next direct writes, of any file: a write-out neither allocates nor zeroes
/// its buffer (a fresh page costs this machine's host a zeroing).
static SCRATCH: Mutex<Vec<Aligned>> = Mutex::new(Vec::new());

/// At most this many buffers wait in [`SCRATCH`]; the rest are freed.
const SCRATCH_KEPT_MAX: usize = 4;

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        let raw = vec![0u8; len + BLOCK_BYTES as usize];
        let start = raw.as_ptr().align_offset(BLOCK_BYTES as usize);
        assert!(start < BLOCK_BYTES as usize, "a block-aligned start lies within one block");
        Aligned { raw, start }
    }

    /// A buffer of [`SCRATCH_BYTES`] from the pool, or a new one.
    fn scratch() -> Aligned {
        let pooled = SCRATCH.lock().ok().and_then(|mut pool| pool.pop());
        pooled.unwrap_or_else(|| Aligned::zeroed(SCRATCH_BYTES))
    }

    /// Gives a buffer from [`Aligned::scratch`] back to the pool.
    fn recycle(self) {
        if let Ok(mut pool) = SCRATCH.lock()
            && pool.len() < SCRATCH_KEPT_MAX
        {
            pool.push(self);
        }
    }

    fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.start..self.start + len]
    }
}

impl DirectFile {
    fn new(file: File, reads: File) -> io::Result<DirectFile> {
        let len = file.metadata()?.len();
        let written = Written { len, kept: BTreeMap::new(), dirty: BTreeSet::new() };
        Ok(DirectFile { file, reads, state: Mutex::new(written) })
    }

    /// Fills `out` from the file at `offset`; past the file's end, zeros.
    fn read_disk(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            let read = self.reads.read_at(&mut out[done..], offset + done as u64)?;
            if read == 0 {
                out[done..].fill(0);
                break;
            }
            done += read;
        }
        Ok(())
    }

    /// Writes the dirty blocks, each run of consecutive ones in one direct write, and keeps only
    /// block 0 and the last block.
    fn flush(&self, written: &mut Written) -> io::Result<()> {
        if !written.dirty.is_empty() {
            let dirty: Vec<u64> = written.dirty.iter().copied().collect();
            let mut buf = Aligned::scratch();
            let blocks_per_write = SCRATCH_BYTES / BLOCK_BYTES as usize;
            for run in dirty.chunk_by(|a, b| a + 1 == *b) {
                for piece in run.chunks(blocks_per_write) {
                    let bytes = buf.bytes_mut(piece.len() * BLOCK_BYTES as usize);
                    for (block, chunk) in piece.iter().zip(bytes.chunks_mut(BLOCK_BYTES as usize)) {
                        chunk.copy_from_slice(&written.kept[block]);
                    }
                    // A failed write leaves every block dirty: no later sync passes over it.
                    self.file.write_all_at(bytes, piece[0] * BLOCK_BYTES)?;
                }
            }
            buf.recycle();
            written.dirty.clear();
        }
        let last = written.len.saturating_sub(1) / BLOCK_BYTES;
        written.kept.retain(|block, _| *block == 0 || *block == last);
        Ok(())
    }
}

fn lock(state: &Mutex<Written>) -> io::Result<std::sync::MutexGuard<'_, Written>> {
    state.lock().map_err(|_| io::Error::other("a direct file's writer panicked"))
}

impl StorageBackend for DirectFile {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(lock(&self.state)?.len)
    }

    /// Copies what is held in memory under the lock, then reads the rest from the disk without it.
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let end = offset.checked_add(out.len() as u64).ok_or_else(|| io::Error::other("read past u64"))?;
        let mut gaps = Vec::new();
        {
            let written = lock(&self.state)?;
            if end > written.len {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of a direct file"));
            }
            if out.is_empty() {
                return Ok(());
            }
            // Blocks held in memory may not be on disk yet; the others are.
            let mut covered_to = offset;
            for (block, kept) in written.kept.range(offset / BLOCK_BYTES..=(end - 1) / BLOCK_BYTES) {
                let block_start = block * BLOCK_BYTES;
                let from = offset.max(block_start);
                let to = end.min(block_start + BLOCK_BYTES);
                if from > covered_to {
                    gaps.push(covered_to..from);
                }
                out[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&kept[(from - block_start) as usize..(to - block_start) as usize]);
                covered_to = to;
            }
            if covered_to < end {
                gaps.push(covered_to..end);
            }
        }
        for gap in gaps {
            self.read_disk(gap.start, &mut out[(gap.start - offset) as usize..(gap.end - offset) as usize])?;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut written = lock(&self.state)?;
        self.flush(&mut written)?;
        self.file.set_len(len)?;
        written.len = len;
        let cut = len / BLOCK_BYTES;
        written.kept.retain(|block, _| *block <= cut);
        if let Some(kept) = written.kept.get_mut(&cut) {
            kept[(len % BLOCK_BYTES) as usize..].fill(0);
        }
        Ok(())
    }

    /// Writes what is held dirty, then syncs.
    fn sync_data(&self) -> Result<(), io::Error> {
        let mut written = lock(&self.state)?;
        self.flush(&mut written)?;
        self.file.sync_data()
    }

    /// Takes `data` into the blocks held in memory; they reach the disk at the next sync.
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        if data.is_empty() {
            return Ok(());
        }
        let mut written = lock(&self.state)?;
        let end = offset + data.len() as u64;
        for block in offset / BLOCK_BYTES..=(end - 1) / BLOCK_BYTES {
            let block_start = block * BLOCK_BYTES;
            let from = offset.max(block_start);
            let to = end.min(block_start + BLOCK_BYTES);
            let piece = &data[(from - offset) as usize..(to - offset) as usize];
            let at = (from - block_start) as usize;
            if let Some(kept) = written.kept.get_mut(&block) {
                kept[at..at + piece.len()].copy_from_slice(piece);
            } else if piece.len() == BLOCK_BYTES as usize {
                written.kept.insert(block, piece.to_vec());
            } else {
                let mut bytes = vec![0; BLOCK_BYTES as usize];
                self.read_disk(block_start, &mut bytes)?;
                bytes[at..at + piece.len()].copy_from_slice(piece);
                written.kept.insert(block, bytes);
            }
            written.dirty.insert(block);
        }
        written.len = written.len.max(end);
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn direct(dir: &Path) -> DirectFile {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("segment"))
            .expect("this test needs a file system that takes O_DIRECT");
        DirectFile::new(file, File::open(dir.join("segment")).unwrap()).unwrap()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        SetLen(u64),
        Sync,
        Read(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..20_000, prop::collection::vec(any::<u8>(), 1..9_000)).prop_map(|(at, bytes)| Op::Write(at, bytes)),
            1 => (0u64..24_000).prop_map(Op::SetLen),
            2 => Just(Op::Sync),
            2 => (0u64..24_000, 0u64..12_000).prop_map(|(at, len)| Op::Read(at, len)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever mix of writes, truncations and reads, a direct file reads back what a plain
        /// byte vector holds, while open and after it is opened again (up to its whole-block end).
        #[test]
        fn a_direct_file_reads_back_what_was_written(ops in prop::collection::vec(op(), 1..24)) {
            let dir = tempfile::tempdir().unwrap();
            let file = direct(dir.path());
            let mut model: Vec<u8> = Vec::new();
            for op in &ops {
                match op {
                    Op::Write(at, bytes) => {
                        let end = *at as usize + bytes.len();
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[*at as usize..end].copy_from_slice(bytes);
                        file.write(*at, bytes).unwrap();
                    }
                    Op::SetLen(len) => {
                        model.resize(*len as usize, 0);
                        file.set_len(*len).unwrap();
                    }
                    Op::Sync => file.sync_data().unwrap(),
                    Op::Read(at, len) => {
                        let mut out = vec![0u8; *len as usize];
                        match model.get(*at as usize..(at + len) as usize) {
                            Some(expected) => {
                                file.read(*at, &mut out).unwrap();
                                prop_assert_eq!(&out[..], expected);
                            }
                            None => prop_assert!(file.read(*at, &mut out).is_err(), "a read past the end is refused"),
                        }
                    }
                }
                prop_assert_eq!(file.len().unwrap(), model.len() as u64);
            }
            let mut all = vec![0u8; model.len()];
            file.read(0, &mut all).unwrap();
            prop_assert_eq!(&all, &model);
            file.sync_data().unwrap();
            let mut synced = vec![0u8; model.len()];
            file.read(0, &mut synced).unwrap();
            prop_assert_eq!(&synced, &model);
            drop(file);
            let reopened = open(&dir.path().join("segment"), false).unwrap();
            let len = reopened.len().unwrap() as usize;
            prop_assert!(len >= model.len() && len <= model.len().next_multiple_of(BLOCK_BYTES as usize).max(model.len()));
            let mut again = vec![0u8; len];
            reopened.read(0, &mut again).unwrap();
            prop_assert_eq!(&again[..model.len()], &model[..]);
            prop_assert!(again[model.len()..].iter().all(|b| *b == 0), "past the written end, zeros");
        }
    }

    /// Readers of what was written before them read it right while the writer appends and
    /// syncs: the disk reads they make without the lock never see a block half written out.
    #[test]
    fn reads_run_beside_appends() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(direct(dir.path()));
        let byte_at = |at: u64| (at % 253) as u8;
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reader = {
            let (file, written) = (Arc::clone(&file), Arc::clone(&written));
            std::thread::spawn(move || {
                let mut reads = 0;
                while written.load(std::sync::atomic::Ordering::Acquire) < 8 << 20 {
                    let end = written.load(std::sync::atomic::Ordering::Acquire);
                    let at = end.saturating_sub(70_000);
                    let mut out = vec![0u8; (end - at) as usize];
                    file.read(at, &mut out).unwrap();
                    assert!(out.iter().enumerate().all(|(i, b)| *b == byte_at(at + i as u64)), "read at {at}");
                    reads += 1;
                }
                reads
            })
        };
        let mut end = 0u64;
        while end < 8 << 20 {
            let chunk: Vec<u8> = (end..end + 10_007).map(byte_at).collect();
            file.write(end, &chunk).unwrap();
            end += chunk.len() as u64;
            written.store(end, std::sync::atomic::Ordering::Release);
            if end.is_multiple_of(7) {
                file.sync_data().unwrap();
            }
        }
        assert!(reader.join().unwrap() > 0);
    }

    #[test]
    fn a_read_past_the_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = direct(dir.path());
        file.write(100, b"abc").unwrap();
        let mut out = [0u8; 4];
        assert_eq!(file.read(100, &mut out).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let mut out = [0u8; 3];
        file.read(100, &mut out).unwrap();
        assert_eq!(&out, b"abc");
    }
}
