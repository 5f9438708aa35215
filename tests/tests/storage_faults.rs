//! Storage faults on real broker processes: a damaged disk on a minority of brokers loses nothing
//! acknowledged. Each test is one case issue 17 found, provoked on the files themselves.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use chorus_consumers::Connection;
use chorus_protocol::pb::{self, server_frame::Body};
use chorus_tests::cluster::{Cluster, ClusterOptions};
use chorus_tests::workload::{
    client, create_topic, publish_idempotent, publish_many, wiped_follower_behind_a_snapshot,
};

const TOPIC: &str = "ledger";
const T: Duration = Duration::from_secs(10);

/// The segment layout (`broker/src/raft/segment.rs`): header slots at 0 and 512; records from
/// byte 1024.
const SEGMENT_RECORDS_AT: usize = 1024;

/// The log segments of `data_dir`, oldest first.
fn segments(data_dir: &Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(data_dir.join("log.segments"))
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    paths
}

/// The newest segment of `data_dir` that holds records: the one the last appends went to.
fn live_segment(data_dir: &Path) -> std::path::PathBuf {
    let holds_records = |path: &std::path::PathBuf| std::fs::metadata(path).unwrap().len() > SEGMENT_RECORDS_AT as u64;
    segments(data_dir).into_iter().rev().find(holds_records).expect("a segment with records")
}

/// Flips one bit of the byte at `at` in `path`.
fn flip_bit(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    assert!(bytes.len() > at, "{} has {} bytes, none at {at}", path.display(), bytes.len());
    bytes[at] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// Flips one bit inside every copy of `needle` in `path` (redb may hold old copies of a page
/// too; the live one is among them). Returns how many it found.
fn flip_every(path: &Path, needle: &[u8]) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let found: Vec<usize> =
        bytes.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(at, _)| at).collect();
    for &at in &found {
        bytes[at + needle.len() / 2] ^= 0x01;
    }
    std::fs::write(path, bytes).unwrap();
    found.len()
}

/// Payloads of an inspected topic, in log order.
fn payloads(rows: &[String]) -> BTreeSet<String> {
    rows.iter().map(|row| row.rsplit('\t').next().unwrap_or_default().to_owned()).collect()
}

/// Case 1. Broker 3 is down while brokers 1 and 2 acknowledge 3,000 messages; both are killed,
/// and a bit flips in the first record of broker 2's live log segment. Broker 2 used to
/// replay up to the bad record, win an election with broker 3, and lose every one of those
/// messages. It must now say which file is damaged where, keep what precedes the damage, and
/// neither vote nor stand for election: brokers 2 and 3 elect no leader. Once broker 1 is back,
/// it leads, repairs broker 2, and all three hold all 3,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_write_ahead_record_on_one_broker_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start(3).await;
    cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    cluster.kill(3);
    cluster.wait_for_leader(&[1, 2], Duration::from_secs(20)).await;
    let survivors = vec![cluster.brokers[&1].client_addr.clone(), cluster.brokers[&2].client_addr.clone()];
    let client = client(survivors).await;
    create_topic(&client, TOPIC).await;
    let acked = publish_many(&client, TOPIC, 10, 300, Arc::new(AtomicU64::new(0))).await;
    assert_eq!(acked.len(), 3_000);
    drop(client);
    // Idle, the writer records its durable end in the header within 5 ms.
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.kill(1);
    cluster.kill(2);

    let damaged = live_segment(cluster.data_dir(2));
    flip_bit(&damaged, SEGMENT_RECORDS_AT + 12);
    cluster.spawn(2);
    cluster.spawn(3);
    let floor = wait_for_repair_floor(&cluster, 2).await;
    let logs = cluster.logs_of(2);
    assert!(logs.contains("is damaged") && logs.contains("before the durable end"), "{logs}");
    assert_no_leader_among(&cluster, &[2, 3], Duration::from_secs(5)).await;

    cluster.spawn(1);
    let leader = cluster.wait_for_leader(&[1, 3], Duration::from_secs(30)).await;
    assert_eq!(leader, 1, "broker 3 lacks the 3,000 messages and cannot lead");
    let applied = cluster.status(leader).await.unwrap().applied_index;
    assert!(applied >= floor, "the floor {floor} lies past what the leader applied ({applied})");
    cluster.wait_applied_through(&[1, 2, 3], applied, Duration::from_secs(30)).await;
    wait_repaired(&cluster, 2).await;
    for id in [1, 2, 3] {
        cluster.terminate(id);
    }
    for id in [1, 2, 3] {
        let held = payloads(&cluster.inspect(id, TOPIC));
        let lost: Vec<&String> = acked.iter().filter(|payload| !held.contains(*payload)).collect();
        assert!(lost.is_empty(), "broker {id} lost {} acknowledged messages, e.g. {:?}", lost.len(), lost.first());
    }
}

/// Waits until broker `id` reports a repair floor, and returns it.
async fn wait_for_repair_floor(cluster: &Cluster, id: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(floor) = cluster.status(id).await.and_then(|status| status.repair_floor) {
            return floor;
        }
        assert!(Instant::now() < deadline, "broker {id} reports no repair\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until broker `id` no longer reports a repair floor: it votes again.
async fn wait_repaired(cluster: &Cluster, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.status(id).await.is_none_or(|status| status.repair_floor.is_some()) {
        assert!(Instant::now() < deadline, "broker {id} did not finish its repair\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cluster.logs_of(id).contains("the log is repaired"), "{}", cluster.logs_of(id));
}

/// Checks, for `period`, that none of `ids` leads: a damaged broker and one that is behind must
/// not elect a leader that lacks acknowledged entries.
async fn assert_no_leader_among(cluster: &Cluster, ids: &[u64], period: Duration) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        for &id in ids {
            let role = cluster.status(id).await.map(|status| status.role);
            assert_ne!(role.as_deref(), Some("leader"), "broker {id} leads\n{}", cluster.logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Case 2. A flipped byte in a follower's `state.redb` used to be served to subscribers with no
/// error anywhere. The follower must refuse the damaged batch and serve only intact messages
/// (the other brokers serve all of them), then stop, exiting non-zero, and rebuild its state
/// when started again: after that it serves all of them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_value_in_a_followers_state_is_never_served() {
    damaged_state_on_a_follower(|dir| vec![dir.join("state.redb")], payload).await;
}

/// Case 2 again where large message batches live: in the state's message segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_message_segment_in_a_followers_state_is_never_served() {
    let segments =
        |dir: &Path| std::fs::read_dir(dir.join("state.segments")).unwrap().map(|e| e.unwrap().path()).collect();
    damaged_state_on_a_follower(segments, large_payload).await;
}

/// Case 2, with the payload `payload(7)` flipped in every copy `files` of the follower's data
/// directory hold.
async fn damaged_state_on_a_follower(files: impl Fn(&Path) -> Vec<std::path::PathBuf>, payload: fn(u64) -> String) {
    let (mut cluster, _, follower, applied) = canaries_everywhere(ClusterOptions::default(), 20, payload).await;
    cluster.terminate(follower);
    let damaged = payload(7);
    let copies: usize = files(cluster.data_dir(follower)).iter().map(|path| flip_every(path, damaged.as_bytes())).sum();
    assert!(copies > 0, "the payload is not in the state's files");
    cluster.spawn(follower);
    cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(30)).await;

    let connection = Connection::connect(&cluster.brokers[&follower].client_addr, "fault-test", T).await.unwrap();
    let subscribe =
        pb::SubscribeRequest { topic: TOPIC.into(), subscription: None, start: None, credits: 100, credit_bytes: None };
    let served = match connection.open_stream(subscribe, T).await {
        Ok((_, _, mut deliveries)) => {
            let mut served = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_secs(3), deliveries.recv()).await {
                    Ok(Some(Body::Delivery(delivery))) => served.extend(delivery.messages),
                    Ok(Some(Body::Error(error))) => {
                        assert_eq!(error.code(), pb::ErrorCode::Unavailable, "{error:?}");
                        break;
                    }
                    // Idle: nothing more to deliver.
                    Err(_) | Ok(None) => break,
                    Ok(Some(other)) => panic!("a subscription sent {other:?}"),
                }
            }
            served
        }
        Err(error) => panic!("subscribing on the damaged follower failed outright: {error}"),
    };
    for message in &served {
        assert_eq!(message.payload, payload(message.seq - 1).as_bytes(), "a damaged payload was served");
    }
    assert!(served.len() < 20, "every message was served, the damaged one included");
    assert!(cluster.logs_of(follower).contains("fails its checksum"), "{}", cluster.logs());
    let exit = cluster.wait_exit(follower, Duration::from_secs(30)).await;
    assert!(!exit.success(), "a broker that found its state damaged exited with {exit}");

    // Another broker's copy is its own: it serves all 20, intact.
    let other = [1, 2, 3].into_iter().find(|id| *id != follower).unwrap();
    let connection = Connection::connect(&cluster.brokers[&other].client_addr, "fault-test", T).await.unwrap();
    let subscribe =
        pb::SubscribeRequest { topic: TOPIC.into(), subscription: None, start: None, credits: 100, credit_bytes: None };
    let (_, _, mut deliveries) = connection.open_stream(subscribe, T).await.unwrap();
    let mut intact = Vec::new();
    while intact.len() < 20 {
        match tokio::time::timeout(T, deliveries.recv()).await {
            Ok(Some(Body::Delivery(delivery))) => intact.extend(delivery.messages),
            outcome => panic!("broker {other} did not serve the topic: {outcome:?}"),
        }
    }
    for message in &intact {
        assert_eq!(message.payload, payload(message.seq - 1).as_bytes());
    }

    // Started again, the follower rebuilds its state from its log and serves all 20, intact.
    cluster.spawn(follower);
    cluster.wait_caught_up(&[follower], applied, Duration::from_secs(30)).await;
    assert!(cluster.logs_of(follower).contains("it is set aside"), "{}", cluster.logs_of(follower));
    assert_eq!(subscribe_all(&cluster, follower, 20).await, (0..20).map(payload).collect::<Vec<_>>());
}

/// The `n`th canary payload.
fn payload(n: u64) -> String {
    format!("canary-{n:03}-{}", "x".repeat(40))
}

/// The `n`th canary payload, large enough that its batch lives in a message segment.
fn large_payload(n: u64) -> String {
    format!("canary-{n:03}-{}", "x".repeat(4096))
}

/// A 3-broker cluster whose topic holds `count` canaries on every broker: the cluster, its
/// leader, a follower, and the index all have applied.
async fn canaries_everywhere(
    options: ClusterOptions,
    count: u64,
    payload: fn(u64) -> String,
) -> (Cluster, u64, u64, u64) {
    let cluster = Cluster::start_with(3, options).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, TOPIC).await;
    for n in 0..count {
        publish_idempotent(&client, TOPIC, "canary", n, payload(n)).await.unwrap();
    }
    let applied = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_caught_up(&[1, 2, 3], applied, Duration::from_secs(20)).await;
    (cluster, leader, follower, applied)
}

/// Every payload of the topic as broker `id` serves it, once it has served `count`.
async fn subscribe_all(cluster: &Cluster, id: u64, count: usize) -> Vec<String> {
    let connection = Connection::connect(&cluster.brokers[&id].client_addr, "fault-test", T).await.unwrap();
    let subscribe = pb::SubscribeRequest {
        topic: TOPIC.into(),
        subscription: None,
        start: None,
        credits: 1_000,
        credit_bytes: None,
    };
    let (_, _, mut deliveries) = connection.open_stream(subscribe, T).await.unwrap();
    let mut served = Vec::new();
    while served.len() < count {
        match tokio::time::timeout(T, deliveries.recv()).await {
            Ok(Some(Body::Delivery(delivery))) => served.extend(delivery.messages),
            outcome => panic!("broker {id} did not serve the topic: {outcome:?}"),
        }
    }
    served.into_iter().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()).collect()
}

/// Case 5. Heavy damage to a follower's `state.redb` used to make redb panic at start-up, and the
/// broker crash-looped. It must set the file aside and rebuild its state: here the log was
/// purged behind a snapshot, so it forgets its log, takes the leader's snapshot and the entries
/// after it, and serves every message intact, without voting until it is back where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_heavily_damaged_state_is_rebuilt_from_the_leader() {
    let options = ClusterOptions { snapshot_after_entries: 50, entries_kept_after_snapshot: 10, ..Default::default() };
    let (mut cluster, leader, follower, _) = canaries_everywhere(options, 300, payload).await;
    let client = client(cluster.client_addrs()).await;
    cluster.terminate(follower);
    let path = cluster.data_dir(follower).join("state.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    for byte in bytes.iter_mut().skip(64).step_by(7) {
        *byte ^= 0xA5;
    }
    std::fs::write(&path, bytes).unwrap();

    cluster.spawn(follower);
    for n in 300..320 {
        publish_idempotent(&client, TOPIC, "canary", n, payload(n)).await.unwrap();
    }
    let applied = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_caught_up(&[1, 2, 3], applied, Duration::from_secs(30)).await;
    assert!(!cluster.exited(follower), "the follower stopped\n{}", cluster.logs());
    wait_repaired(&cluster, follower).await;
    let log = cluster.logs_of(follower);
    assert!(log.contains("the state file is damaged"), "{log}");
    assert!(log.contains("the log's entries are forgotten") && log.contains("installed snapshot"), "{log}");
    assert_eq!(subscribe_all(&cluster, follower, 320).await, (0..320).map(payload).collect::<Vec<_>>());
}

/// Case 4. A flipped byte in the leader's snapshot used to spread: a wiped follower installed it
/// and served a wrong message. The leader must see the damage before sending, build the snapshot
/// again from its state, and the follower must end with exactly the leader's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_snapshot_is_built_again_not_sent() {
    let (mut cluster, leader, follower, acked) = wiped_follower_behind_a_snapshot(TOPIC).await;
    // Let the last snapshot build finish, then damage it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let snapshots = cluster.data_dir(leader).join("snapshots");
    let mut damaged = 0;
    for file in std::fs::read_dir(&snapshots).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|e| e == "snap") {
            let len = std::fs::metadata(&path).unwrap().len() as usize;
            flip_bit(&path, len / 2);
            damaged += 1;
        }
    }
    assert_eq!(damaged, 1, "the leader keeps one snapshot");

    cluster.spawn(follower);
    let applied = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_caught_up(&[1, 2, 3], applied, Duration::from_secs(60)).await;
    let logs = cluster.logs_of(leader);
    assert!(logs.contains("the current snapshot is damaged"), "the leader did not notice:\n{logs}");
    let follower_log = cluster.logs_of(follower);
    assert!(follower_log.contains("installed snapshot"), "no snapshot was installed:\n{follower_log}");
    for id in [1, 2, 3] {
        cluster.terminate(id);
    }
    let reference = cluster.inspect(leader, TOPIC);
    assert_eq!(cluster.inspect(follower, TOPIC), reference, "the follower differs from the leader");
    let held = payloads(&reference);
    assert!(acked.iter().all(|payload| held.contains(payload)), "an acknowledged message is missing");
}

/// Case 3. A flipped byte in the leader's log (then `log.redb`, now a segment) used to spread: a follower that caught up
/// from it served the damaged message. The broker must find the damaged entry when it opens its
/// log and cut the log before it. Its state machine, intact, had applied the entry before the
/// damage, so nothing is lost: the broker counts the cut entries as purged, is repaired at once,
/// and serves a follower that is behind from a snapshot of its state, never from the damaged
/// entry. Every broker then holds every payload intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_log_entry_on_the_leader_is_never_replicated() {
    let mut cluster = Cluster::start(3).await;
    let first = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let behind = [1, 2, 3].into_iter().find(|id| *id != first).unwrap();
    cluster.kill(behind);
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, TOPIC).await;
    for n in 0..200 {
        publish_idempotent(&client, TOPIC, "canary", n, payload(n)).await.unwrap();
    }
    drop(client);
    let holders: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != behind).collect();
    // A restart opens the log again on its segments.
    for &id in &holders {
        cluster.terminate(id);
        cluster.spawn(id);
    }
    cluster.wait_for_leader(&holders, Duration::from_secs(30)).await;
    for &id in &holders {
        cluster.terminate(id);
    }
    let (damaged, intact) = (holders[0], holders[1]);
    let copies: usize =
        segments(cluster.data_dir(damaged)).iter().map(|path| flip_every(path, payload(120).as_bytes())).sum();
    assert!(copies > 0, "the payload is not in the log's segments");

    // With the broker that is behind, the damaged one has the longer log and leads.
    cluster.spawn(damaged);
    cluster.spawn(behind);
    let leader = cluster.wait_for_leader(&[damaged, behind], Duration::from_secs(30)).await;
    let log = cluster.logs_of(damaged);
    assert!(log.contains("the log segment is damaged"), "{log}");
    let applied = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_caught_up(&[damaged, behind], applied, Duration::from_secs(30)).await;
    wait_repaired(&cluster, damaged).await;
    cluster.spawn(intact);
    cluster.wait_caught_up(&[1, 2, 3], applied, Duration::from_secs(30)).await;
    for id in [1, 2, 3] {
        cluster.terminate(id);
    }
    let reference = cluster.inspect(intact, TOPIC);
    assert_eq!(reference.len(), 200);
    for id in [behind, damaged] {
        assert_eq!(cluster.inspect(id, TOPIC), reference, "broker {id} differs from the intact one");
    }
    let held = payloads(&reference);
    assert!((0..200).all(|n| held.contains(&payload(n))), "a payload is missing or damaged");
}

/// A small tmpfs mounted over a broker's data directory, with what the directory held copied
/// in; unmounted when dropped. Needs root, as CI on this machine has: the test says so if not.
struct SmallDisk {
    mount_point: std::path::PathBuf,
}

impl SmallDisk {
    fn mount_over(data_dir: &Path, bytes: u64) -> SmallDisk {
        let saved = tempfile::tempdir().unwrap();
        copy_dir(data_dir, saved.path());
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(data_dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root: this test provokes a full disk on one");
        copy_dir(saved.path(), data_dir);
        SmallDisk { mount_point: data_dir.to_path_buf() }
    }

    /// Fills the disk up with a file, which [`SmallDisk::free`] removes.
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.mount_point.join("filler")).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while filler.write_all(&chunk).is_ok() {}
        let _ = filler.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.mount_point.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.mount_point).status();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Case 6. When a broker's Raft core stopped (here on a full disk), the process used to stay up
/// as a zombie: serving stale reads, naming itself leader, never restarted, never recovering
/// once space returned. It must stop at once and exit non-zero, saying why, while the other two
/// go on taking writes; started again once space is back (as `chorus up` or a supervisor
/// does), it catches up and holds every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_whose_disk_fills_up_exits_and_recovers_when_space_returns() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let victim = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    cluster.terminate(victim);
    let disk = SmallDisk::mount_over(cluster.data_dir(victim), 48 << 20);
    cluster.spawn(victim);
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, TOPIC).await;
    let applied = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_caught_up(&[victim], applied, Duration::from_secs(30)).await;

    disk.fill();
    let filler = |n: u64| format!("{n:05}-{}", "y".repeat(4_000));
    let mut published = 0;
    while !cluster.exited(victim) {
        assert!(published < 20_000, "the broker on a full disk kept running\n{}", cluster.logs_of(victim));
        publish_idempotent(&client, TOPIC, "filler", published, filler(published)).await.unwrap();
        published += 1;
    }
    let log = cluster.logs_of(victim);
    assert!(log.contains("No space left on device"), "{log}");
    assert!(log.contains("this broker stops serving"), "{log}");
    // The other two go on.
    for n in published..published + 50 {
        publish_idempotent(&client, TOPIC, "filler", n, filler(n)).await.unwrap();
    }
    published += 50;

    disk.free();
    cluster.spawn(victim);
    let applied = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_caught_up(&[victim], applied, Duration::from_secs(60)).await;
    cluster.terminate(victim);
    let held = payloads(&cluster.inspect(victim, TOPIC));
    assert_eq!(held.len() as u64, published);
    assert!((0..published).all(|n| held.contains(&filler(n))), "a message is missing after recovery");
}

/// `chorus check` marks an index through the log and compares every broker's digest of its
/// state there: on a healthy cluster all agree and it exits 0; with a broker down it says which
/// one has no digest and exits non-zero. The leader's periodic checks compare the brokers'
/// digests all along, and find nothing to report.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chorus_check_compares_the_brokers_states() {
    let options =
        ClusterOptions { extra_args: vec!["--state-check-interval-ms=300".into()], ..ClusterOptions::default() };
    let mut cluster = Cluster::start_with(3, options).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, TOPIC).await;
    publish_many(&client, TOPIC, 5, 40, Arc::new(AtomicU64::new(0))).await;

    let output = cluster.cli(&["check", "--json"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["agree"], true, "{report}");
    let brokers = report["brokers"].as_array().unwrap();
    assert_eq!(brokers.len(), 3);
    let digests: BTreeSet<&str> = brokers.iter().map(|b| b["digest"].as_str().unwrap()).collect();
    assert_eq!(digests.len(), 1, "one digest for all three: {report}");

    // The leader's periodic checks had every broker compare digests, and none differed.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let output = cluster.cli(&["check", "--json"]).await;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for broker in report["brokers"].as_array().unwrap() {
        assert!(broker["compared"].as_u64().unwrap() > 0, "no periodic comparison: {report}");
        assert_eq!(broker["earlier_mismatches"].as_array().unwrap().len(), 0, "{report}");
    }
    for id in [1, 2, 3] {
        let log = cluster.logs_of(id);
        assert!(!log.contains("STATE DIVERGENCE"), "{log}");
    }

    let down = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    cluster.kill(down);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != down).collect();
    cluster.wait_for_leader(&survivors, Duration::from_secs(20)).await;
    let output = cluster.cli(&["check"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "a check with a broker down passed:\n{stdout}");
    assert!(stdout.contains("agrees") && stdout.contains("NO DIGEST"), "{stdout}");
}
