//! What a broker counts and times as it works, for `/metrics` ([`crate::monitor`]). Each bundle
//! is owned by the code that records into it (the log writer, the proposer, the client
//! connections, the Raft duties) and registered into a fresh registry at every scrape, beside the
//! gauges read from the applied state then. A handle is a cheap clone of one shared value.
//!
//! Label sets are bounded by construction: a request kind and an error code come from the
//! protocol's closed lists, a failure reason from [`ProposeError`](crate::proposer::ProposeError)'s
//! variants. Topic and group labels, which users choose, are the monitor's to cap.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Labels with values chosen by users (topic names, say): the monitor's, capped there.
pub type Labels = Vec<(&'static str, String)>;
/// Labels whose values come from closed lists (request kinds, error codes, reasons): no
/// allocation on the path that counts them.
pub type StaticLabels<const N: usize> = [(&'static str, &'static str); N];

/// Seconds from 50 us to about 13 s, doubling: fsyncs, commits, acks.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

/// Counts from 1 to 4,096, doubling: entries per group commit.
fn count_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// Bytes from 1 KiB to 16 GiB, by fours: snapshot sizes.
fn bytes_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1024.0, 4.0, 13))
}

/// The log's disk: what its writer syncs, and how long a sync takes.
#[derive(Debug, Clone)]
pub struct DiskMetrics {
    pub fsync_seconds: Histogram,
    /// Entries made durable by one sync.
    pub group_commit_entries: Histogram,
    pub bytes_written: Counter,
}

impl Default for DiskMetrics {
    fn default() -> Self {
        DiskMetrics {
            fsync_seconds: seconds_histogram(),
            group_commit_entries: count_histogram(),
            bytes_written: Counter::default(),
        }
    }
}

impl DiskMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "log_fsync",
            "Time the log's writer spends in one sync",
            Unit::Seconds,
            self.fsync_seconds.clone(),
        );
        registry.register(
            "log_group_commit_entries",
            "Log entries made durable by one sync",
            self.group_commit_entries.clone(),
        );
        registry.register_with_unit(
            "log_written",
            "Bytes of entries the log's writer wrote",
            Unit::Bytes,
            self.bytes_written.clone(),
        );
    }
}

/// The leader's proposals: each command a client or a duty asked the log to carry.
#[derive(Debug, Clone)]
pub struct ProposalMetrics {
    pub submitted: Counter,
    pub committed: Counter,
    /// By reason: a [`ProposeError`](crate::proposer::ProposeError) variant's name.
    pub failed: Family<StaticLabels<1>, Counter>,
    /// From the proposal's arrival to its outcome (committed and applied).
    pub commit_seconds: Histogram,
    pub in_flight: Gauge,
}

impl Default for ProposalMetrics {
    fn default() -> Self {
        ProposalMetrics {
            submitted: Counter::default(),
            committed: Counter::default(),
            failed: Family::default(),
            commit_seconds: seconds_histogram(),
            in_flight: Gauge::default(),
        }
    }
}

impl ProposalMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register("proposals_submitted", "Commands proposed to the log", self.submitted.clone());
        registry.register("proposals_committed", "Proposed commands committed and applied", self.committed.clone());
        registry.register("proposals_failed", "Proposed commands without an outcome, by reason", self.failed.clone());
        registry.register_with_unit(
            "proposal_commit",
            "Time from a command's proposal to its outcome",
            Unit::Seconds,
            self.commit_seconds.clone(),
        );
        registry.register(
            "proposals_in_flight",
            "Commands proposed and awaiting their outcome",
            self.in_flight.clone(),
        );
    }
}

/// The client port: connections, requests and what producers publish.
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    pub connections: Gauge,
    /// By request kind and answer: `ok` or an error code's name.
    pub requests: Family<StaticLabels<2>, Counter>,
    pub publish_messages: Counter,
    pub publish_bytes: Counter,
    /// From a publish request read to its answer, as this broker sees it.
    pub ack_seconds: Histogram,
}

impl Default for ClientMetrics {
    fn default() -> Self {
        ClientMetrics {
            connections: Gauge::default(),
            requests: Family::default(),
            publish_messages: Counter::default(),
            publish_bytes: Counter::default(),
            ack_seconds: seconds_histogram(),
        }
    }
}

impl ClientMetrics {
    /// Counts one answered request of `kind`: `ok`, or its error code's name.
    pub fn answered(&self, kind: &'static str, code: &'static str) {
        self.requests.get_or_create(&[("kind", kind), ("code", code)]).inc();
    }

    /// Counts a publish of `messages` carrying `payload_bytes`, acknowledged `took` after it was read.
    pub fn published(&self, messages: usize, payload_bytes: usize, took: std::time::Duration) {
        self.publish_messages.inc_by(messages as u64);
        self.publish_bytes.inc_by(payload_bytes as u64);
        self.ack_seconds.observe(took.as_secs_f64());
    }

    fn register(&self, registry: &mut Registry) {
        registry.register("client_connections", "Client connections open", self.connections.clone());
        registry.register("client_requests", "Client requests answered, by kind and code", self.requests.clone());
        registry.register(
            "publish_messages",
            "Messages in publish requests this broker answered",
            self.publish_messages.clone(),
        );
        registry.register_with_unit(
            "publish_payload",
            "Payload bytes in publish requests this broker answered",
            Unit::Bytes,
            self.publish_bytes.clone(),
        );
        registry.register_with_unit(
            "publish_ack",
            "Time from a publish request read to its answer",
            Unit::Seconds,
            self.ack_seconds.clone(),
        );
    }
}

/// Raft's events: leadership and snapshots.
#[derive(Debug, Clone)]
pub struct RaftEventMetrics {
    pub leader_changes: Counter,
    pub elections_started: Counter,
    pub snapshots_built: Counter,
    pub snapshot_build_seconds: Histogram,
    pub snapshot_bytes: Histogram,
    pub snapshots_installed: Counter,
    pub snapshot_install_seconds: Histogram,
    pub snapshot_installed_bytes: Histogram,
}

impl Default for RaftEventMetrics {
    fn default() -> Self {
        RaftEventMetrics {
            leader_changes: Counter::default(),
            elections_started: Counter::default(),
            snapshots_built: Counter::default(),
            snapshot_build_seconds: seconds_histogram(),
            snapshot_bytes: bytes_histogram(),
            snapshots_installed: Counter::default(),
            snapshot_install_seconds: seconds_histogram(),
            snapshot_installed_bytes: bytes_histogram(),
        }
    }
}

impl RaftEventMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "raft_leader_changes",
            "Times this broker saw the leader change, to another broker or to none",
            self.leader_changes.clone(),
        );
        registry.register(
            "raft_elections_started",
            "Elections this broker started as a candidate",
            self.elections_started.clone(),
        );
        registry.register("raft_snapshots_built", "Snapshots this broker built", self.snapshots_built.clone());
        registry.register_with_unit(
            "raft_snapshot_build",
            "Time to build a snapshot",
            Unit::Seconds,
            self.snapshot_build_seconds.clone(),
        );
        registry.register_with_unit(
            "raft_snapshot_size",
            "Size of the snapshots built",
            Unit::Bytes,
            self.snapshot_bytes.clone(),
        );
        registry.register(
            "raft_snapshots_installed",
            "Snapshots this broker installed from a leader",
            self.snapshots_installed.clone(),
        );
        registry.register_with_unit(
            "raft_snapshot_install",
            "Time to install a snapshot",
            Unit::Seconds,
            self.snapshot_install_seconds.clone(),
        );
        registry.register_with_unit(
            "raft_snapshot_installed_size",
            "Size of the snapshots installed",
            Unit::Bytes,
            self.snapshot_installed_bytes.clone(),
        );
    }
}

/// Samples kept at most by [`AppendTimes`].
const APPEND_SAMPLES_MAX: usize = 16_384;
/// The least time between two samples [`AppendTimes`] keeps.
const APPEND_SAMPLE_SPACING: std::time::Duration = std::time::Duration::from_millis(10);

/// When the leader's log reached which index, sampled: a follower's lag in time is the age of the
/// oldest entry it has not acknowledged. Samples are at least [`APPEND_SAMPLE_SPACING`] apart and
/// at most [`APPEND_SAMPLES_MAX`] (about 160 s of steady appends): a lag older than that shows as
/// the age of the oldest sample, a lower bound.
#[derive(Debug, Default)]
pub struct AppendTimes {
    samples: std::sync::Mutex<std::collections::VecDeque<(u64, std::time::Instant)>>,
}

impl AppendTimes {
    /// Notes that the log reached `last_index` now, and forgets what every follower acknowledged
    /// (through `acknowledged`).
    pub fn record(&self, last_index: u64, acknowledged: u64) {
        let now = std::time::Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while samples.front().is_some_and(|(index, _)| *index <= acknowledged) {
            samples.pop_front();
        }
        let newest = samples.back().copied();
        let grew = newest.is_none_or(|(index, _)| last_index > index);
        let spaced = newest.is_none_or(|(_, at)| now.duration_since(at) >= APPEND_SAMPLE_SPACING);
        if grew && spaced && last_index > acknowledged {
            if samples.len() == APPEND_SAMPLES_MAX {
                samples.pop_front();
            }
            samples.push_back((last_index, now));
        }
    }

    /// Forgets every sample: this broker no longer leads.
    pub fn clear(&self) {
        self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }

    /// Milliseconds since the log first reached an index past `matched`: 0 when nothing sampled
    /// lies past it.
    pub fn lag_ms(&self, matched: u64) -> u64 {
        let samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        samples.iter().find(|(index, _)| *index > matched).map_or(0, |(_, at)| at.elapsed().as_millis() as u64)
    }
}

/// Leader changes remembered at most by [`LeaderChanges`].
const LEADER_CHANGES_KEPT_MAX: usize = 1024;

/// When this broker saw the leader change, for `chorus status`'s count over the last minutes.
/// A change is a new leader (another broker, or the same one in a new term), not a moment
/// without one.
#[derive(Debug, Default)]
pub struct LeaderChanges {
    seen: std::sync::Mutex<std::collections::VecDeque<std::time::Instant>>,
}

impl LeaderChanges {
    pub fn record(&self) {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.len() == LEADER_CHANGES_KEPT_MAX {
            seen.pop_front();
        }
        seen.push_back(std::time::Instant::now());
    }

    /// Changes seen within the last `window`.
    pub fn within(&self, window: std::time::Duration) -> u64 {
        let seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.iter().rev().take_while(|at| at.elapsed() <= window).count() as u64
    }
}

/// Holds one unit of a gauge, and gives it back when dropped: an open connection, say.
#[derive(Debug)]
pub struct Held(Gauge);

impl Held {
    pub fn new(gauge: &Gauge) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Every bundle a broker records into.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub disk: DiskMetrics,
    pub proposals: ProposalMetrics,
    pub clients: ClientMetrics,
    pub raft: RaftEventMetrics,
}

impl Metrics {
    /// Registers every bundle's metrics.
    pub fn register(&self, registry: &mut Registry) {
        self.disk.register(registry);
        self.proposals.register(registry);
        self.clients.register(registry);
        self.raft.register(registry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(metrics: &Metrics) -> String {
        let mut registry = Registry::with_prefix("chorus");
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text
    }

    #[test]
    fn a_followers_lag_in_time_is_the_age_of_the_oldest_entry_it_lacks() {
        let times = AppendTimes::default();
        times.record(10, 0);
        std::thread::sleep(std::time::Duration::from_millis(30));
        times.record(20, 0);
        assert!(times.lag_ms(0) >= 30, "index 10 was reached 30 ms ago: {}", times.lag_ms(0));
        assert!(times.lag_ms(10) < 30, "index 20 was reached just now: {}", times.lag_ms(10));
        assert_eq!(times.lag_ms(20), 0, "nothing lacking");
        times.record(20, 10);
        assert!(times.lag_ms(0) < 30, "the sample through 10 is forgotten once every follower has it");
        times.clear();
        assert_eq!(times.lag_ms(0), 0);
    }

    #[test]
    fn leader_changes_are_counted_within_a_window() {
        let changes = LeaderChanges::default();
        assert_eq!(changes.within(std::time::Duration::from_secs(600)), 0);
        changes.record();
        std::thread::sleep(std::time::Duration::from_millis(30));
        changes.record();
        assert_eq!(changes.within(std::time::Duration::from_secs(600)), 2);
        assert_eq!(changes.within(std::time::Duration::from_millis(20)), 1);
    }

    #[test]
    fn recorded_values_show_under_their_names() {
        let metrics = Metrics::default();
        metrics.disk.fsync_seconds.observe(0.000_3);
        metrics.disk.bytes_written.inc_by(4096);
        metrics.proposals.failed.get_or_create(&[("reason", "no_quorum")]).inc();
        metrics.clients.requests.get_or_create(&[("kind", "publish"), ("code", "ok")]).inc_by(3);
        metrics.raft.leader_changes.inc();
        let text = rendered(&metrics);
        for line in [
            "chorus_log_fsync_seconds_count 1",
            "chorus_log_written_bytes_total 4096",
            "chorus_proposals_failed_total{reason=\"no_quorum\"} 1",
            "chorus_client_requests_total{kind=\"publish\",code=\"ok\"} 3",
            "chorus_raft_leader_changes_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        // The 0.3 ms sync falls in the 0.4 ms bucket and every one above it, none below.
        assert!(text.contains("chorus_log_fsync_seconds_bucket{le=\"0.0004\"} 1"), "{text}");
        assert!(text.contains("chorus_log_fsync_seconds_bucket{le=\"0.0002\"} 0"), "{text}");
    }
}
