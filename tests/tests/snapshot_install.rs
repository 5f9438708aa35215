//! A follower that loses power while it installs a snapshot must restart. openraft 0.9 purges
//! the follower's log up to the snapshot as soon as it hands the snapshot to the state machine,
//! without waiting for the install. If that purge reached the disk first, a crash left a log
//! purged past a state machine that never got the snapshot, and the broker could not start
//! again ("Failed to get log entries"). The log store now holds a purge until the state machine
//! is durable at the purge point.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chorus_broker::Broker;
use chorus_broker::raft::crash_disk::Disks;
use chorus_broker::raft::state_store::StateStore;
use chorus_broker::raft::{BrokerNode, Entry, LogId, Membership, NodeId, Vote};
use chorus_tests::sim::net::Net;
use chorus_tests::sim::{broker_config, open_stores, start_broker};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};

const CACHE_BYTES: usize = 1 << 20;
/// The last log index the snapshot covers.
const SNAPSHOT_INDEX: u64 = 63;

fn members() -> BTreeMap<NodeId, BrokerNode> {
    (1..=3)
        .map(|id| (id, BrokerNode { peer_addr: format!("n{id}:peer"), client_addr: format!("n{id}:client") }))
        .collect()
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

/// A snapshot at `SNAPSHOT_INDEX`, built by another broker's state machine.
async fn leader_snapshot(dir: &std::path::Path) -> openraft::storage::Snapshot<chorus_broker::raft::TypeConfig> {
    let mut state = StateStore::open(dir, CACHE_BYTES).expect("open the leader's state");
    let voters = BTreeSet::from_iter(members().into_keys());
    let membership = Membership::new(vec![voters], members());
    let mut entries = vec![Entry { log_id: log_id(0), payload: EntryPayload::Membership(membership) }];
    entries.extend((1..=SNAPSHOT_INDEX).map(|index| Entry { log_id: log_id(index), payload: EntryPayload::Blank }));
    state.apply(entries).await.expect("apply");
    state.get_snapshot_builder().await.build_snapshot().await.expect("build a snapshot")
}

/// Broker 3 on its own disks, with no peers reachable: only the test talks to it.
async fn start_follower(disks: &Disks, dir: &std::path::Path) -> Arc<Broker> {
    start_broker(broker_config(3, &members(), dir), disks, &Net::new(0)).await
}

/// What the disks hold after a crash: the state machine's applied id and the log's purge point.
async fn durable_points(disks: &Disks, dir: &std::path::Path) -> (Option<LogId>, Option<LogId>) {
    let (mut log, mut state) = open_stores(disks, dir);
    let (applied, _) = state.applied_state().await.expect("applied state");
    let purged = log.get_log_state().await.expect("log state").last_purged_log_id;
    (applied, purged)
}

#[tokio::test]
async fn a_follower_crashed_while_installing_a_snapshot_restarts() {
    let leader_dir = tempfile::tempdir().expect("a temp dir");
    let follower_dir = tempfile::tempdir().expect("a temp dir");
    let snapshot = leader_snapshot(leader_dir.path()).await;
    let disks = Disks::default();

    let follower = start_follower(&disks, follower_dir.path()).await;
    let raft = follower.raft.clone();
    let install =
        tokio::spawn(async move { raft.install_full_snapshot(Vote::new_committed(1_000, 1), snapshot).await });
    // Power fails the moment the purge has been made durable, before anything else can run.
    let mut metrics = follower.raft.metrics();
    // (The metrics guard is dropped at once: raft blocks on it otherwise.)
    let purged =
        within(metrics.wait_for(|m| m.purged.is_some_and(|p| p.index >= SNAPSHOT_INDEX)), "the purge").await.is_ok();
    assert!(purged, "the follower stopped before it purged its log to the snapshot");
    disks.crash();
    within(follower.stop(), "the crashed follower stops").await;
    let _ = within(install, "the interrupted install returns").await;

    let (applied, purged) = durable_points(&disks, follower_dir.path()).await;
    assert!(purged.is_some(), "the purge was durable when the power failed");
    assert!(applied >= purged, "the log is purged to {purged:?} but the state machine is durable only at {applied:?}");

    // And the broker starts again from those disks, with the snapshot's state.
    let restarted = start_follower(&disks, follower_dir.path()).await;
    assert_eq!(restarted.applied().borrow().log_index, SNAPSHOT_INDEX);
    within(restarted.stop(), "the restarted follower stops").await;
}

/// `future`'s output, or a panic naming `what` if it takes longer than a test should.
async fn within<T>(future: impl std::future::Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(30), future).await.unwrap_or_else(|_| panic!("{what}: timed out"))
}
