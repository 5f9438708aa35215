//! Storage faults for the simulation: damage to the files of a minority of brokers, while they
//! are down, and what the brokers made of it. The faults: bits flipped and ranges zeroed anywhere
//! in the log's segments and the state; synced writes lost or misdirected; power loss that tears
//! the unsynced writes. The log's redb file, which now holds only its metadata (the vote, the
//! repair floor), takes no damage: a flipped bit there can make redb open its previous commit
//! instead of the damaged latest one, and lose a vote or a repair floor without a word (the soak
//! found it; docs/design.md, "Known issues").

use std::collections::BTreeMap;

use chorus_broker::raft::crash_disk::{Disk, Disks};
use rand::RngExt;
use rand::rngs::StdRng;

/// What storage faults did over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageReport {
    /// Faults injected, by kind.
    pub injected: BTreeMap<&'static str, u64>,
    /// Damage a broker found: a log cut at open (a repair floor), a state set aside, or a broker
    /// that stopped itself on a damaged value.
    pub detected: u64,
    /// Repairs finished: a repair floor reached and cleared, a rebuilt state applied again.
    pub repairs: u64,
    /// Starts a broker refused: damage beyond repair, say.
    pub refused_starts: u64,
    /// Why, the first few times.
    pub refusals: Vec<String>,
}

impl StorageReport {
    /// Notes that broker `id` refused to start, and why.
    pub fn refused(&mut self, id: u64, why: String) {
        self.refused_starts += 1;
        if self.refusals.len() < 5 {
            self.refusals.push(format!("broker {id}: {why}"));
        }
    }
}

impl StorageReport {
    pub fn injected_total(&self) -> u64 {
        self.injected.values().sum()
    }

    pub fn summary(&self) -> String {
        format!(
            "disk faults {} injected, {} detected, {} repaired, {} refused starts",
            self.injected_total(),
            self.detected,
            self.repairs,
            self.refused_starts
        )
    }
}

/// Damages one file of `disks` at rest, at random; returns what it did, or `None` if the file
/// it picked offered nothing to damage.
pub fn damage_at_rest(rng: &mut StdRng, disks: &Disks, report: &mut StorageReport) -> Option<String> {
    let files = disks.files();
    // The log's segments 7 in 10 (one of the last two: older ones hold purged entries, or none);
    // the state 3 in 10 (its redb file or one of its message segments).
    let log_segments: Vec<usize> = (0..files.len()).filter(|&i| files[i].0.starts_with("log.segments/")).collect();
    let state: Vec<usize> = (0..files.len()).filter(|&i| files[i].0.starts_with("state.")).collect();
    let (name, disk) = &files[match rng.random_range(0..10) {
        0..=6 if !log_segments.is_empty() => {
            log_segments[log_segments.len() - 1 - rng.random_range(0..log_segments.len().min(2))]
        }
        0..=6 => return None,
        _ => state[rng.random_range(0..state.len())],
    }];
    let (name, disk) = (name.as_str(), disk);
    if disk.is_empty() {
        return None;
    }
    let kind = rng.random_range(0..4);
    let done = match kind {
        0 => flip(rng, name, disk),
        1 => {
            let at = rng.random_range(0..disk.len());
            let len = rng.random_range(1..=512);
            disk.zero(at, len);
            Some(("zeroed range", format!("zeroed {len} bytes at {at} of {name}")))
        }
        2 => {
            let back = rng.random_range(0..8);
            disk.lose_write(back).then(|| ("lost write", format!("lost the synced write {back} back in {name}")))
        }
        _ => {
            let (back, shift) = (rng.random_range(0..8), rng.random_range(1..4096));
            disk.misdirect_write(back, shift).then(|| {
                ("misdirected write", format!("moved the synced write {back} back by {shift} bytes in {name}"))
            })
        }
    };
    let (kind, what) = done?;
    *report.injected.entry(kind).or_default() += 1;
    Some(what)
}

/// A flipped bit anywhere in a segment or the state.
fn flip(rng: &mut StdRng, name: &str, disk: &Disk) -> Option<(&'static str, String)> {
    let at = rng.random_range(0..disk.len());
    let bit = rng.random_range(0..8);
    disk.flip(at, bit);
    Some(("bit flip", format!("flipped bit {bit} of byte {at} of {name}")))
}

/// Power loss on `disks` that tears one file's unsynced writes (never a synced one).
pub fn crash_torn(rng: &mut StdRng, disks: &Disks, report: &mut StorageReport) {
    let files = disks.files();
    let torn = rng.random_range(0..files.len());
    disks.segments.kill_handles();
    disks.state_segments.kill_handles();
    for (i, (_, disk)) in files.iter().enumerate() {
        if i == torn {
            disk.crash_torn(rng.random_range(0..4), rng.random_range(0..4096));
        } else {
            disk.crash();
        }
    }
    *report.injected.entry("torn write").or_default() += 1;
}
