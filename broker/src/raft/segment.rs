//! One segment of the Raft log (`log.segments/<id>.seg`; [`super::log_write`] drives them). A
//! segment is the only place a log entry is written: records reach the disk with one write and
//! one `sync_data` per group commit, and readers read them back where they lie. The log appends
//! to its newest segment and starts the next one at [`SEGMENT_BYTES_MAX`]; a segment is deleted
//! whole once every entry in it is purged or truncated. The bodies are opaque here.
//!
//! Layout: two header slots, one per 512-byte sector (at 0 and 512), then records from byte
//! 1024. A slot holds a magic, the segment's id (its epoch), a sequence number, the **durable
//! end** (every byte of records before it was synced), the **durable mark** (the caller's mark of
//! the records before it: the log's last index) and a CRC-32 of those; the valid slot with the
//! greatest sequence wins, so a slot torn by a crash leaves the other. A record is a u32 body
//! length, a u32 CRC-32 of the epoch, length and body, then the body: a record copied into
//! another segment fails its checksum there.
//!
//! Replay tells a crash from damage ([`SegmentCorruption`]):
//! - every record before the durable end must be whole and valid, and the file must reach it;
//! - after it, replay stops at the first bad record. That is a **torn tail** (a write the crash
//!   cut short), unless a valid record follows the bad one: then it is damage.
//!
//! Only a torn tail is dropped. Damage is reported with what survives ([`Damage`]): the records
//! before it, the valid ones after it and the durable mark, so the log can tell how far it had
//! reached and repair the rest from its peers. The durable end a header records is the one of the
//! sync before the one that writes it, so a sync cut short by power loss never leaves a header
//! claiming records that were not synced; [`Segment::seal`] records the latest one when the writer
//! idles, and before the log moves on to the next segment.
//!
//! The file goes through [`redb::StorageBackend`], so a simulation hands it a disk in memory with
//! a crash model, as it does for the redb files.

use std::io;

use std::sync::Arc;

use redb::StorageBackend;

const MAGIC: &[u8; 8] = b"CHORUSW3";
/// The layout before the durable mark, still read: its slots end in the CRC where the mark is
/// now, and give a mark of 0.
const MAGIC_UNMARKED: &[u8; 8] = b"CHORUSW2";
/// A header slot per sector, so a torn write damages at most one.
const SLOT_STRIDE_BYTES: u64 = 512;
/// Magic, epoch, sequence, durable end, durable mark, CRC.
const SLOT_BYTES: usize = 8 + 8 + 8 + 8 + 8 + 4;
/// Where the records start.
const RECORDS_AT: u64 = 2 * SLOT_STRIDE_BYTES;
/// Length and checksum before each body.
pub(crate) const RECORD_HEAD_BYTES: usize = 8;
/// A segment that holds this many bytes is sealed, and the log appends to a new one. Opening the
/// log reads one segment at a time, so this bounds the memory replay holds at once.
pub(crate) const SEGMENT_BYTES_MAX: u64 = 32 << 20;
/// The largest body replay accepts; a longer length is garbage. Entries are bounded far below it
/// by the peer frame limit.
const RECORD_BODY_BYTES_MAX: usize = 256 << 20;

/// Damage that replay must not drop: records that were synced are missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentCorruption {
    #[error("neither header slot is valid")]
    Header,
    #[error("the header names segment {epoch}, not this one")]
    Foreign { epoch: u64 },
    #[error("the file is {len} bytes, shorter than its durable end at byte {durable_end}")]
    Short { len: u64, durable_end: u64 },
    #[error("the record at byte {at} is damaged, before the durable end at byte {durable_end}")]
    BeforeDurableEnd { at: u64, durable_end: u64 },
    #[error("the record at byte {at} is damaged, and a valid record follows it")]
    FollowedByValid { at: u64 },
}

/// What replay read from a file.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// The record bodies, in append order, up to any damage.
    pub(crate) bodies: Vec<Vec<u8>>,
    /// Where each of `bodies`' records starts in the file.
    pub(crate) starts: Vec<u64>,
    /// Where a torn tail began, if replay dropped one.
    pub(crate) torn_at: Option<u64>,
    /// The mark of the records before the durable end, as the header recorded it.
    pub(crate) durable_mark: u64,
    /// Damage to records that were synced, if any: `bodies` stop before it.
    pub(crate) damage: Option<Damage>,
}

/// Damage replay found, and what it could still read past it.
#[derive(Debug)]
pub(crate) struct Damage {
    pub(crate) corruption: SegmentCorruption,
    /// Valid records after the damaged one, up to the next bad one: lost from the log, but they
    /// tell how far it had reached.
    pub(crate) after: Vec<Vec<u8>>,
}

/// The header a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    epoch: u64,
    seq: u64,
    durable_end: u64,
    durable_mark: u64,
}

impl Header {
    fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut slot = [0u8; SLOT_BYTES];
        slot[..8].copy_from_slice(MAGIC);
        slot[8..16].copy_from_slice(&self.epoch.to_le_bytes());
        slot[16..24].copy_from_slice(&self.seq.to_le_bytes());
        slot[24..32].copy_from_slice(&self.durable_end.to_le_bytes());
        slot[32..40].copy_from_slice(&self.durable_mark.to_le_bytes());
        let crc = crc32fast::hash(&slot[..40]);
        slot[40..].copy_from_slice(&crc.to_le_bytes());
        slot
    }

    /// `None` unless the slot holds a header whose checksum holds.
    fn decode(slot: &[u8; SLOT_BYTES]) -> Option<Header> {
        let u64_at = |at: usize| u64::from_le_bytes(slot[at..at + 8].try_into().expect("8 bytes"));
        let crc_at = |at: usize| u32::from_le_bytes(slot[at..at + 4].try_into().expect("4 bytes"));
        let (mark_at, crc_at_byte) = match &slot[..8] {
            magic if magic == MAGIC => (Some(32), 40),
            magic if magic == MAGIC_UNMARKED => (None, 32),
            _ => return None,
        };
        (crc32fast::hash(&slot[..crc_at_byte]) == crc_at(crc_at_byte)).then(|| Header {
            epoch: u64_at(8),
            seq: u64_at(16),
            durable_end: u64_at(24),
            durable_mark: mark_at.map_or(0, u64_at),
        })
    }
}

/// The write-ahead file of one epoch.
pub(crate) struct Segment {
    file: Arc<dyn StorageBackend>,
    epoch: u64,
    /// The sequence number of the last header written.
    seq: u64,
    /// Where the next record goes: the end of the valid records.
    end: u64,
    /// The greatest mark appended so far.
    mark: u64,
    /// The end as of the last sync that returned, and the mark then.
    synced_end: u64,
    synced_mark: u64,
    /// The durable end the last header written records.
    header_end: u64,
    /// A write or sync failed: what the file holds is unknown, so it takes no more records.
    broken: bool,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment").field("epoch", &self.epoch).field("end", &self.end).finish()
    }
}

impl Segment {
    /// Opens `file`, segment `id`, and reads back the bodies it holds, in append order. A file
    /// that never had a header holds nothing; a header of another segment is damage. Damage to
    /// records that were synced is reported in [`Replay::damage`], never taken for a shorter
    /// file; such a file takes no records.
    pub(crate) fn open(file: Arc<dyn StorageBackend>, id: u64) -> io::Result<(Segment, Replay)> {
        let len = file.len()?;
        let mut segment = Segment {
            file,
            epoch: 0,
            seq: 0,
            end: RECORDS_AT,
            mark: 0,
            synced_end: RECORDS_AT,
            synced_mark: 0,
            header_end: RECORDS_AT,
            broken: false,
        };
        let header = match segment.read_header(len)? {
            Ok(Some(header)) => header,
            Ok(None) => return Ok((segment, Replay::default())),
            Err(corruption) => {
                segment.broken = true;
                let damage = Some(Damage { corruption, after: Vec::new() });
                return Ok((segment, Replay { damage, ..Replay::default() }));
            }
        };
        segment.epoch = header.epoch;
        segment.seq = header.seq;
        if segment.epoch != id {
            segment.broken = true;
            let damage =
                Some(Damage { corruption: SegmentCorruption::Foreign { epoch: header.epoch }, after: Vec::new() });
            return Ok((segment, Replay { damage, ..Replay::default() }));
        }
        let replay = segment.replay(len, header.durable_end)?;
        segment.broken = replay.damage.is_some();
        segment.synced_end = segment.end;
        segment.header_end = header.durable_end;
        segment.mark = header.durable_mark;
        segment.synced_mark = header.durable_mark;
        Ok((segment, Replay { durable_mark: header.durable_mark, ..replay }))
    }

    /// The winning header, `None` for a file that never had one (all zeros, or shorter than a
    /// slot), or damage when a slot was written and none is valid.
    fn read_header(&self, len: u64) -> io::Result<Result<Option<Header>, SegmentCorruption>> {
        let mut slots = Vec::with_capacity(2);
        let mut written = false;
        for at in [0, SLOT_STRIDE_BYTES] {
            if at + SLOT_BYTES as u64 > len {
                continue;
            }
            let mut slot = [0u8; SLOT_BYTES];
            self.file.read(at, &mut slot)?;
            written |= slot.iter().any(|&b| b != 0);
            slots.extend(Header::decode(&slot));
        }
        Ok(match slots.into_iter().max_by_key(|h| (h.epoch, h.seq)) {
            Some(header) => Ok(Some(header)),
            None if written => Err(SegmentCorruption::Header),
            None => Ok(None),
        })
    }

    /// Reads records from the start: all of them up to `durable_end`, then on to the first bad
    /// one.
    fn replay(&mut self, len: u64, durable_end: u64) -> io::Result<Replay> {
        let mut replay = Replay::default();
        let damaged = |replay: &mut Replay, corruption, after| {
            replay.damage = Some(Damage { corruption, after });
        };
        while self.end < durable_end {
            match self.read_record(self.end, durable_end.min(len))? {
                Some(body) => self.take(body, &mut replay),
                None if len < durable_end => {
                    damaged(&mut replay, SegmentCorruption::Short { len, durable_end }, Vec::new());
                    return Ok(replay);
                }
                None => {
                    let after = self.records_after_damaged(self.end, len)?;
                    damaged(&mut replay, SegmentCorruption::BeforeDurableEnd { at: self.end, durable_end }, after);
                    return Ok(replay);
                }
            }
        }
        while let Some(body) = self.read_record(self.end, len)? {
            self.take(body, &mut replay);
        }
        if self.end < len {
            let after = self.records_after_damaged(self.end, len)?;
            if after.is_empty() {
                replay.torn_at = Some(self.end);
            } else {
                damaged(&mut replay, SegmentCorruption::FollowedByValid { at: self.end }, after);
            }
        }
        Ok(replay)
    }

    /// The valid records right after the bad one at `at`, if its length is plausible: none when
    /// it was cut short rather than damaged in place.
    fn records_after_damaged(&self, at: u64, len: u64) -> io::Result<Vec<Vec<u8>>> {
        let Some(body_len) = self.body_len_at(at, len)? else {
            return Ok(Vec::new());
        };
        let mut next = at + (RECORD_HEAD_BYTES + body_len) as u64;
        let mut after = Vec::new();
        while next < len {
            let Some(body) = self.read_record(next, len)? else { break };
            next += (RECORD_HEAD_BYTES + body.len()) as u64;
            after.push(body);
        }
        Ok(after)
    }

    fn take(&mut self, body: Vec<u8>, replay: &mut Replay) {
        replay.starts.push(self.end);
        self.end += (RECORD_HEAD_BYTES + body.len()) as u64;
        replay.bodies.push(body);
    }

    /// The body length the record head at `at` gives, if the head is there and the body fits
    /// before `limit`.
    fn body_len_at(&self, at: u64, limit: u64) -> io::Result<Option<usize>> {
        if at + RECORD_HEAD_BYTES as u64 > limit {
            return Ok(None);
        }
        let mut length = [0u8; 4];
        self.file.read(at, &mut length)?;
        let body_len = u32::from_le_bytes(length) as usize;
        let fits = body_len <= RECORD_BODY_BYTES_MAX && at + (RECORD_HEAD_BYTES + body_len) as u64 <= limit;
        Ok(fits.then_some(body_len))
    }

    /// The body of the record at `at`, if a whole one of this epoch lies before `limit`.
    fn read_record(&self, at: u64, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(body_len) = self.body_len_at(at, limit)? else {
            return Ok(None);
        };
        let mut crc = [0u8; 4];
        self.file.read(at + 4, &mut crc)?;
        let mut body = vec![0u8; body_len];
        self.file.read(at + RECORD_HEAD_BYTES as u64, &mut body)?;
        Ok((checksum(self.epoch, &body) == u32::from_le_bytes(crc)).then_some(body))
    }

    /// Writes `bodies` as records after the last one, in one write, and raises the file's mark
    /// to `mark` (the log's last index, say); returns where each record starts. They are durable
    /// only after [`Segment::sync`].
    pub(crate) fn append<'a, I>(&mut self, bodies: I, mark: u64) -> io::Result<Vec<u64>>
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: Clone,
    {
        let bodies = bodies.into_iter();
        // Sized once: a batch of small entries grown by doubling copied itself about twice over.
        let (count, bytes) =
            bodies.clone().fold((0, 0), |(n, len), body| (n + 1, len + RECORD_HEAD_BYTES + body.len()));
        let mut buf = Vec::with_capacity(bytes);
        let mut starts = Vec::with_capacity(count);
        for body in bodies {
            starts.push(self.end + buf.len() as u64);
            encode_record(self.epoch, body, &mut buf);
        }
        if buf.is_empty() {
            return Ok(starts);
        }
        self.guard(|segment| segment.file.write(segment.end, &buf))?;
        self.end += buf.len() as u64;
        self.mark = self.mark.max(mark);
        Ok(starts)
    }

    /// Makes every record appended so far durable. The header it writes along records the end
    /// of the sync before: a header never claims records its own sync may not have finished.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        let (end, mark) = (self.end, self.mark);
        self.guard(|segment| {
            if segment.header_end != segment.synced_end {
                segment.write_header(segment.synced_end, segment.synced_mark)?;
            }
            segment.file.sync_data()
        })?;
        self.synced_end = end;
        self.synced_mark = mark;
        Ok(())
    }

    /// Whether the header lags behind the last sync ([`Segment::seal`] has work to do).
    pub(crate) fn header_lags(&self) -> bool {
        !self.broken && self.header_end != self.synced_end
    }

    /// Records the end of the last sync in the header, durably, if the header lags behind it:
    /// for when the writer idles, and before the file is started over.
    pub(crate) fn seal(&mut self) -> io::Result<()> {
        if self.header_end == self.synced_end {
            return Ok(());
        }
        self.guard(|segment| {
            segment.write_header(segment.synced_end, segment.synced_mark)?;
            segment.file.sync_data()
        })
    }

    /// Writes the next header slot, recording `durable_end` and `durable_mark`; durable with the
    /// next sync.
    fn write_header(&mut self, durable_end: u64, durable_mark: u64) -> io::Result<()> {
        let header = Header { epoch: self.epoch, seq: self.seq + 1, durable_end, durable_mark };
        self.file.write((header.seq % 2) * SLOT_STRIDE_BYTES, &header.encode())?;
        self.seq = header.seq;
        self.header_end = durable_end;
        Ok(())
    }

    /// Runs `io` unless an earlier failure broke the file, and breaks it if `io` fails.
    fn guard(&mut self, io: impl FnOnce(&mut Segment) -> io::Result<()>) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other("the write-ahead file failed earlier and takes no more records"));
        }
        let result = io(self);
        self.broken = result.is_err();
        result
    }

    /// Starts the file over, empty, under `epoch`, durably. Call it only once the records of the
    /// current epoch are durable elsewhere. Both slots are rewritten, one sync each, so one of
    /// them is valid whenever a crash comes, and no slot of the old epoch outlives the reset.
    pub(crate) fn reset(&mut self, epoch: u64) -> io::Result<()> {
        assert!(epoch > self.epoch || self.end == RECORDS_AT, "the epoch went back from {} to {epoch}", self.epoch);
        // A file damaged at open takes records again once started over.
        self.broken = false;
        self.guard(|segment| {
            segment.epoch = epoch;
            for _ in 0..2 {
                segment.write_header(RECORDS_AT, 0)?;
                segment.file.sync_data()?;
            }
            Ok(())
        })?;
        self.end = RECORDS_AT;
        self.mark = 0;
        self.synced_end = RECORDS_AT;
        self.synced_mark = 0;
        Ok(())
    }

    /// Drops everything from `at` on, durably: for a segment damaged there, once the log has
    /// recorded what it lost, so that the damage is not found again at every opening. The file is
    /// cut before the header records `at` as its durable end, so a crash in between leaves a file
    /// shorter than its durable end, which replay reports as damage at the same place again.
    pub(crate) fn cut(&mut self, at: u64) -> io::Result<()> {
        assert!(
            (RECORDS_AT..=self.end).contains(&at),
            "a cut at {at} outside the records read, {RECORDS_AT}..={}",
            self.end
        );
        self.broken = false;
        self.guard(|segment| {
            segment.file.set_len(at)?;
            segment.file.sync_data()?;
            for _ in 0..2 {
                segment.write_header(at, segment.mark)?;
                segment.file.sync_data()?;
            }
            Ok(())
        })?;
        self.end = at;
        self.synced_end = at;
        self.synced_mark = self.mark;
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

/// Appends `body` to `out` as a record of segment `epoch`: the layout [`read_record`] reads.
pub(crate) fn encode_record(epoch: u64, body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&record_head(epoch, body));
    out.extend_from_slice(body);
}

/// What a record of `body` in segment `epoch` starts with: its length and checksum.
pub(crate) fn record_head(epoch: u64, body: &[u8]) -> [u8; RECORD_HEAD_BYTES] {
    assert!(body.len() <= RECORD_BODY_BYTES_MAX, "a record of {} bytes", body.len());
    let mut head = [0u8; RECORD_HEAD_BYTES];
    head[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    head[4..].copy_from_slice(&checksum(epoch, body).to_le_bytes());
    head
}

/// The body of the record of `body_len` bytes at `at` of segment `epoch`'s `file`, its head and
/// its body each read in one read (the body straight into the buffer returned); `None` if its
/// length or checksum does not hold (damage: the log knew a whole record there).
pub(crate) fn read_record(
    file: &dyn StorageBackend,
    epoch: u64,
    at: u64,
    body_len: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; RECORD_HEAD_BYTES];
    file.read(at, &mut head)?;
    let mut body = vec![0u8; body_len];
    file.read(at + RECORD_HEAD_BYTES as u64, &mut body)?;
    let length = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    Ok((length == body_len && checksum(epoch, &body) == crc).then_some(body))
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

    fn fresh(file: &Disk, epoch: u64) -> Segment {
        let (mut segment, replay) = Segment::open(Arc::new(file.open()), epoch).unwrap();
        assert!(replay.bodies.is_empty());
        segment.reset(epoch).unwrap();
        segment
    }

    fn reopen(file: &Disk, epoch: u64) -> Result<Replay, SegmentCorruption> {
        let (_, mut replay) = Segment::open(Arc::new(file.open()), epoch).unwrap();
        match replay.damage.take() {
            Some(damage) => Err(damage.corruption),
            None => Ok(replay),
        }
    }

    fn bodies(file: &Disk, epoch: u64) -> Vec<Vec<u8>> {
        reopen(file, epoch).unwrap().bodies
    }

    fn flip(file: &Disk, at: u64) {
        let mut byte = [0u8];
        file.open().read(at, &mut byte).unwrap();
        file.open().write(at, &[byte[0] ^ 0x5A]).unwrap();
    }

    #[test]
    fn records_come_back_in_order_in_their_own_segment_only() {
        let file = Disk::default();
        let mut segment = fresh(&file, 3);
        segment.append([b"one".as_slice(), b"".as_slice()], 0).unwrap();
        segment.sync().unwrap();
        segment.append([b"three".as_slice()], 0).unwrap();
        assert_eq!(bodies(&file, 3), vec![b"one".to_vec(), Vec::new(), b"three".to_vec()]);
        assert_eq!(reopen(&file, 4).unwrap_err(), SegmentCorruption::Foreign { epoch: 3 }, "segment 3 read as 4");
        let starts = reopen(&file, 3).unwrap().starts;
        assert_eq!(starts, vec![RECORDS_AT, RECORDS_AT + 11, RECORDS_AT + 19], "where the records start");
    }

    /// The file is overwritten in place: after a reset, the longer records of the old epoch that
    /// lie past the new ones must not be replayed, nor taken for damage.
    #[test]
    fn a_reset_hides_the_old_epochs_records() {
        let file = Disk::default();
        let mut segment = fresh(&file, 1);
        segment.append([[7u8; 100].as_slice(), [8u8; 100].as_slice(), [9u8; 100].as_slice()], 0).unwrap();
        segment.sync().unwrap();
        segment.seal().unwrap();
        segment.reset(2).unwrap();
        assert!(bodies(&file, 2).is_empty());
        segment.append([[1u8; 10].as_slice()], 0).unwrap();
        segment.sync().unwrap();
        segment.seal().unwrap();
        let replay = reopen(&file, 2).unwrap();
        assert_eq!(replay.bodies, vec![vec![1u8; 10]]);
        assert!(replay.torn_at.is_some(), "the old epoch's records read as a torn tail");
        assert!(file.open().len().unwrap() > segment.bytes(), "the old records are still in the file");
    }

    #[test]
    fn a_missing_or_zeroed_file_holds_nothing_and_garbage_is_damage() {
        let file = Disk::default();
        assert!(bodies(&file, 0).is_empty());
        file.open().write(0, &[0; 4096]).unwrap();
        assert!(bodies(&file, 0).is_empty());
        file.open().write(0, &[0xAB; 64]).unwrap();
        assert_eq!(reopen(&file, 0).unwrap_err(), SegmentCorruption::Header);
    }

    /// A torn header slot leaves the other: nothing is lost, the records past the older slot's
    /// durable end are read on by their checksums.
    #[test]
    fn one_damaged_header_slot_falls_back_to_the_other() {
        let file = Disk::default();
        let mut segment = fresh(&file, 1);
        for body in [b"a", b"b", b"c"] {
            segment.append([body.as_slice()], 0).unwrap();
            segment.sync().unwrap();
        }
        segment.seal().unwrap();
        let newest = (segment.seq % 2) * SLOT_STRIDE_BYTES;
        flip(&file, newest + 20);
        assert_eq!(bodies(&file, 1), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        flip(&file, (SLOT_STRIDE_BYTES - newest) + 3);
        assert_eq!(reopen(&file, 1).unwrap_err(), SegmentCorruption::Header);
    }

    /// Power loss throws away unsynced writes: what was synced comes back, and a sync cut short
    /// is never taken for damage.
    #[test]
    fn a_crash_loses_only_what_was_not_synced() {
        let file = Disk::default();
        let mut segment = fresh(&file, 1);
        segment.append([b"synced".as_slice()], 0).unwrap();
        segment.sync().unwrap();
        segment.append([b"also synced".as_slice()], 0).unwrap();
        segment.sync().unwrap();
        segment.append([b"not synced".as_slice()], 0).unwrap();
        file.crash();
        assert_eq!(bodies(&file, 1), vec![b"synced".to_vec(), b"also synced".to_vec()]);
    }

    /// A write the disk acknowledged and then lost (the old bytes come back) is damage once a
    /// header has recorded it as durable.
    #[test]
    fn a_lost_write_before_the_durable_end_is_damage() {
        let file = Disk::default();
        let mut segment = fresh(&file, 1);
        segment.append([[1u8; 32].as_slice()], 0).unwrap();
        segment.sync().unwrap();
        let second = segment.bytes();
        segment.append([[2u8; 32].as_slice()], 0).unwrap();
        segment.sync().unwrap();
        segment.seal().unwrap();
        file.open().write(second, &[0u8; 40]).unwrap();
        assert_eq!(
            reopen(&file, 1).unwrap_err(),
            SegmentCorruption::BeforeDurableEnd { at: second, durable_end: second + 40 }
        );
        file.open().set_len(second).unwrap();
        assert_eq!(reopen(&file, 1).unwrap_err(), SegmentCorruption::Short { len: second, durable_end: second + 40 });
    }

    /// Damage reports what survives: the records before it, the valid ones after it, and the
    /// mark the header recorded, which is how far the log had durably reached.
    #[test]
    fn damage_reports_the_records_around_it_and_the_durable_mark() {
        let file = Disk::default();
        let mut segment = fresh(&file, 1);
        let mut starts = Vec::new();
        for (mark, body) in (10..).zip([b"a", b"b", b"c", b"d"]) {
            starts.push(segment.bytes());
            segment.append([body.as_slice()], mark).unwrap();
            segment.sync().unwrap();
        }
        segment.seal().unwrap();
        flip(&file, starts[1] + RECORD_HEAD_BYTES as u64);
        let (mut damaged, replay) = Segment::open(Arc::new(file.open()), 1).unwrap();
        assert_eq!(replay.bodies, vec![b"a".to_vec()]);
        assert_eq!(replay.durable_mark, 13, "the mark of the last synced record");
        let damage = replay.damage.expect("damage");
        assert_eq!(
            damage.corruption,
            SegmentCorruption::BeforeDurableEnd { at: starts[1], durable_end: segment.bytes() }
        );
        assert_eq!(damage.after, vec![b"c".to_vec(), b"d".to_vec()]);
        assert!(damaged.append([b"e".as_slice()], 14).is_err(), "a damaged file takes no records");
        damaged.reset(2).unwrap();
        damaged.append([b"e".as_slice()], 14).unwrap();
        damaged.sync().unwrap();
        assert_eq!(bodies(&file, 2), vec![b"e".to_vec()], "started over, it takes records again");
    }

    proptest! {
        /// Damage anywhere in the records: before the durable end it is an error; after it, a
        /// cut or a flip in the last record is a torn tail that leaves every record wholly
        /// before it, and a flip in a record that a valid one follows is an error again. A
        /// shorter replay is never the answer to damage that a valid record proves.
        #[test]
        fn damage_is_told_from_a_torn_tail(
            groups in prop::collection::vec(prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..4), 1..6),
            sealed in any::<bool>(),
            damage_at in any::<prop::sample::Index>(),
            cut in any::<bool>(),
        ) {
            let file = Disk::default();
            let mut segment = fresh(&file, 5);
            // Where each record starts and ends, and the end of each sync.
            let mut records = Vec::new();
            let mut synced_ends = vec![RECORDS_AT];
            for group in &groups {
                for body in group {
                    let start = segment.bytes();
                    segment.append([body.as_slice()], 0).unwrap();
                    records.push((start, segment.bytes(), body.clone()));
                }
                segment.sync().unwrap();
                synced_ends.push(segment.bytes());
            }
            if sealed {
                segment.seal().unwrap();
            }
            let durable_end = if sealed { segment.bytes() } else { synced_ends[synced_ends.len() - 2] };
            let at = RECORDS_AT + damage_at.index((segment.bytes() - RECORDS_AT) as usize) as u64;
            if cut {
                file.open().set_len(at).unwrap();
            } else {
                flip(&file, at);
            }
            let intact: Vec<Vec<u8>> = records.iter().filter(|r| r.1 <= at).map(|r| r.2.clone()).collect();
            let (start, end, _) = records.iter().find(|r| r.0 <= at && at < r.1).cloned().expect("a damaged record");
            let replayed = reopen(&file, 5);
            let torn = if cut { (at > start).then_some(start) } else { Some(start) };
            let in_length = !cut && at < start + 4;
            if at < durable_end {
                prop_assert!(replayed.is_err(), "damage at {} before the durable end {}", at, durable_end);
            } else if cut || end == segment.bytes() {
                let replay = replayed.unwrap();
                prop_assert_eq!(replay.bodies, intact);
                prop_assert_eq!(replay.torn_at, torn);
            } else if in_length {
                // A damaged length points anywhere: at a later record by chance (damage), or not.
                match replayed {
                    Ok(replay) => prop_assert_eq!(replay.bodies, intact),
                    Err(corruption) => prop_assert_eq!(corruption, SegmentCorruption::FollowedByValid { at: start }),
                }
            } else {
                prop_assert_eq!(replayed.unwrap_err(), SegmentCorruption::FollowedByValid { at: start });
            }
        }
    }
}
