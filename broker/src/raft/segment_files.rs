//! Where a log keeps its segments: files listed, created, opened and removed by id. A broker
//! keeps them in a directory ([`SegmentDir`], `log.segments/<id>.seg`); a simulation keeps them in
//! memory with a crash model ([`super::crash_disk::SegmentDisks`]). A created segment exists
//! durably before `create` returns; a removal may be lost to a crash, which only brings back
//! entries the log's metadata already counts as purged or truncated.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::StorageBackend;

/// The segment files of one log.
pub trait SegmentFiles: Send + Sync + 'static {
    /// The ids of the segments there are, ascending.
    fn list(&self) -> io::Result<Vec<u64>>;
    /// Creates segment `id`, empty, durably (a leftover of that id is started over).
    fn create(&self, id: u64) -> io::Result<Arc<dyn StorageBackend>>;
    /// Opens segment `id`, which exists.
    fn open(&self, id: u64) -> io::Result<Arc<dyn StorageBackend>>;
    /// Removes segment `id`.
    fn remove(&self, id: u64) -> io::Result<()>;
}

/// Segments as files in one directory. Any other file there is left alone.
#[derive(Debug)]
pub struct SegmentDir {
    dir: PathBuf,
    /// Files written with `O_DIRECT`, past the page cache ([`super::direct_file`]).
    direct: bool,
}

/// What a segment's file name ends with.
const EXTENSION: &str = "seg";

impl SegmentDir {
    /// The directory `dir`, created (durably) if it is missing; its files go through the page
    /// cache.
    pub fn open(dir: &Path) -> io::Result<SegmentDir> {
        SegmentDir::open_as(dir, false)
    }

    /// The directory `dir`, whose files are written with `O_DIRECT` where the file system
    /// takes it: for the log, whose segments are written once and read back while they are new.
    pub fn open_direct(dir: &Path) -> io::Result<SegmentDir> {
        SegmentDir::open_as(dir, true)
    }

    fn open_as(dir: &Path, direct: bool) -> io::Result<SegmentDir> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(SegmentDir { dir: dir.to_path_buf(), direct })
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.{EXTENSION}"))
    }
}

/// The id a segment's file name gives, if it is one: twenty digits and the extension.
fn segment_id(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(EXTENSION)?.strip_suffix('.')?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// Makes a directory's entries (files created or removed in it) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn backend(file: std::fs::File) -> io::Result<Arc<dyn StorageBackend>> {
    Ok(Arc::new(redb::backends::FileBackend::new(file).map_err(io::Error::other)?))
}

impl SegmentFiles for SegmentDir {
    fn list(&self) -> io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        for item in std::fs::read_dir(&self.dir)? {
            if let Some(id) = item?.file_name().to_str().and_then(segment_id) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn create(&self, id: u64) -> io::Result<Arc<dyn StorageBackend>> {
        let file = if self.direct {
            super::direct_file::open(&self.path(id), true)?
        } else {
            backend(
                std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(self.path(id))?,
            )?
        };
        sync_dir(&self.dir)?;
        Ok(file)
    }

    fn open(&self, id: u64) -> io::Result<Arc<dyn StorageBackend>> {
        if self.direct {
            return super::direct_file::open(&self.path(id), false);
        }
        backend(std::fs::OpenOptions::new().read(true).write(true).open(self.path(id))?)
    }

    fn remove(&self, id: u64) -> io::Result<()> {
        std::fs::remove_file(self.path(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_segment_names_are_segments() {
        assert_eq!(segment_id("00000000000000000007.seg"), Some(7));
        for name in ["7.seg", "0000000000000000000x.seg", "00000000000000000007.seg.tmp", "00000000000000000007"] {
            assert_eq!(segment_id(name), None, "{name}");
        }
        assert_eq!(segment_id("99999999999999999999.seg"), None, "past u64::MAX");
    }

    #[test]
    fn segments_are_listed_in_order_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let segments = SegmentDir::open(&dir.path().join("log.segments")).unwrap();
        for id in [12, 3, 7] {
            segments.create(id).unwrap().write(0, b"x").unwrap();
        }
        std::fs::write(dir.path().join("log.segments/notes.txt"), "left alone").unwrap();
        assert_eq!(segments.list().unwrap(), vec![3, 7, 12]);
        segments.remove(7).unwrap();
        assert_eq!(segments.list().unwrap(), vec![3, 12]);
        assert_eq!(segments.open(12).unwrap().len().unwrap(), 1);
    }
}
