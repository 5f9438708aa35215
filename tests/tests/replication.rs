//! Replication with real broker processes: elections, failover, restarts, snapshots,
//! membership changes and partitions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chorus_tests::cluster::Cluster;
use chorus_tests::http::{self, sample};
use chorus_tests::workload::{
    client, create_topic, publish_idempotent, publish_many, wiped_follower_behind_a_snapshot,
};

const TOPIC: &str = "events";

/// Payloads of an inspected topic, in log order.
fn payloads(rows: &[String]) -> Vec<String> {
    rows.iter().map(|row| row.rsplit('\t').next().unwrap_or_default().to_owned()).collect()
}

/// Every acknowledged payload appears exactly once.
fn assert_exactly_once(log: &[String], acked: &[String]) {
    let mut seen = BTreeSet::new();
    for payload in log {
        assert!(seen.insert(payload.clone()), "{payload} appears twice");
    }
    for payload in acked {
        assert!(seen.contains(payload), "acknowledged {payload} is missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_brokers_replicate_every_acknowledged_message() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    // Talk to a follower: its writes are forwarded to the leader.
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let client = client(vec![cluster.brokers[&follower].client_addr.clone()]).await;
    create_topic(&client, TOPIC).await;
    let acked = publish_many(&client, TOPIC, 4, 50, Arc::new(AtomicU64::new(0))).await;
    let retry = publish_idempotent(&client, TOPIC, "p0", 0, "p0-0".into()).await.unwrap();
    assert!(retry.duplicate, "a retried (producer, sequence) is not appended again");
    let status = cluster.status(leader).await.unwrap();
    cluster.wait_caught_up(&[1, 2, 3], status.applied_index, Duration::from_secs(20)).await;
    for id in [1, 2, 3] {
        cluster.terminate(id);
    }
    let reference = cluster.inspect(1, TOPIC);
    assert_eq!(reference.len(), 200);
    assert_exactly_once(&payloads(&reference), &acked);
    for id in [2, 3] {
        assert_eq!(cluster.inspect(id, TOPIC), reference, "broker {id} diverges from broker 1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_mid_stream_loses_nothing() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, TOPIC).await;
    let progress = Arc::new(AtomicU64::new(0));
    let publishing = {
        let (client, progress) = (client.clone(), Arc::clone(&progress));
        tokio::spawn(async move { publish_many(&client, TOPIC, 20, 500, progress).await })
    };
    let started = Instant::now();
    while progress.load(Ordering::Relaxed) < 3_000 {
        assert!(started.elapsed() < Duration::from_secs(120), "publishing stalled before the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.kill(leader);
    let killed_at = Instant::now();
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let new_leader = cluster.wait_for_leader(&survivors, Duration::from_secs(30)).await;
    println!("leader failover: broker {leader} killed -9, broker {new_leader} elected after {:?}", killed_at.elapsed());
    let acked = publishing.await.expect("publishers");
    assert_eq!(acked.len(), 10_000, "every publish completes through its retries");
    cluster.spawn(leader);
    let applied = cluster.status(new_leader).await.unwrap().applied_index;
    cluster.wait_caught_up(&[1, 2, 3], applied, Duration::from_secs(60)).await;
    for id in [1, 2, 3] {
        cluster.terminate(id);
    }
    let reference = cluster.inspect(new_leader, TOPIC);
    assert_exactly_once(&payloads(&reference), &acked);
    assert_eq!(reference.len(), 10_000, "nothing unacknowledged was appended either");
    for id in [1, 2, 3] {
        assert_eq!(cluster.inspect(id, TOPIC), reference, "broker {id} diverges");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_cluster_restart_keeps_the_state() {
    use chorus_protocol::pb::{self, client_frame::Body as Request, server_frame::Body};
    let mut cluster = Cluster::start(3).await;
    cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, TOPIC).await;
    let group = Request::CreateGroup(pb::CreateGroup { topic: TOPIC.into(), name: "workers".into(), config: None });
    client.request(group).await.unwrap();
    publish_many(&client, TOPIC, 3, 100, Arc::new(AtomicU64::new(0))).await;
    let lease = Request::Lease(pb::LeaseRequest {
        topic: TOPIC.into(),
        group: "workers".into(),
        consumer: "w1".into(),
        count_max: 10,
        wait_ms: 0,
        lease_ms: Some(600_000),
    });
    let Body::LeaseOk(leased) = client.request(lease).await.unwrap() else { panic!("lease") };
    let tokens: Vec<u64> = leased.messages.iter().take(4).map(|m| m.token).collect();
    client
        .request(Request::Ack(pb::AckRequest { topic: TOPIC.into(), group: "workers".into(), tokens }))
        .await
        .unwrap();
    let describe = Request::DescribeTopic(pb::DescribeTopic { name: TOPIC.into() });
    let Body::Topic(before) = client.request(describe.clone()).await.unwrap() else { panic!("describe") };
    assert_eq!((before.messages, before.groups[0].leased, before.groups[0].acked_total), (300, 6, 4));
    drop(client);
    for id in [1, 2, 3] {
        cluster.terminate(id);
    }
    let logs_before: Vec<Vec<String>> = [1, 2, 3].iter().map(|id| cluster.inspect(*id, TOPIC)).collect();
    for id in [1, 2, 3] {
        cluster.spawn(id);
    }
    cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(30)).await;
    for id in [1, 2, 3] {
        let connection =
            chorus_consumers::Connection::connect(&cluster.brokers[&id].client_addr, "t", Duration::from_secs(2))
                .await
                .unwrap();
        let Body::Topic(after) = connection.request(describe.clone(), Duration::from_secs(5)).await.unwrap() else {
            panic!()
        };
        assert_eq!(after, before, "broker {id} describes the topic differently after the restart");
    }
    for id in [1, 2, 3] {
        cluster.terminate(id);
    }
    for (i, id) in [1, 2, 3].iter().enumerate() {
        assert_eq!(cluster.inspect(*id, TOPIC), logs_before[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_follower_catches_up_through_a_snapshot() {
    let (mut cluster, leader, follower, acked) = wiped_follower_behind_a_snapshot(TOPIC).await;
    cluster.spawn(follower);
    let applied = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_caught_up(&[1, 2, 3], applied, Duration::from_secs(60)).await;
    let log = std::fs::read_to_string(&cluster.brokers[&follower].log_path).unwrap();
    assert!(log.contains("installed snapshot"), "the wiped follower caught up without a snapshot:\n{log}");
    // And the metrics say so: snapshots built on the leader, one installed on the follower.
    let metrics = |id: u64| http::get(&cluster.brokers[&id].metrics_addr, "/metrics").expect("metrics").body;
    assert!(sample(&metrics(follower), "chorus_raft_snapshots_installed_total").is_some_and(|n| n >= 1.0));
    assert!(sample(&metrics(follower), "chorus_raft_snapshot_installed_size_bytes_count").is_some_and(|n| n >= 1.0));
    assert!(sample(&metrics(leader), "chorus_raft_snapshots_built_total").is_some_and(|n| n >= 1.0));
    for id in [1, 2, 3] {
        cluster.terminate(id);
    }
    let reference = cluster.inspect(leader, TOPIC);
    assert_exactly_once(&payloads(&reference), &acked);
    assert_eq!(cluster.inspect(follower, TOPIC), reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_grows_to_five_and_shrinks_back_under_load() {
    use chorus_protocol::pb::{self, change_membership::Change, client_frame::Body as Request};
    let mut cluster = Cluster::start(3).await;
    cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, TOPIC).await;
    let progress = Arc::new(AtomicU64::new(0));
    let publishing = {
        let (client, progress) = (client.clone(), Arc::clone(&progress));
        tokio::spawn(async move { publish_many(&client, TOPIC, 4, 600, progress).await })
    };
    let change = |change| Request::ChangeMembership(pb::ChangeMembership { change: Some(change) });
    for id in [4, 5] {
        let (peer_addr, client_addr) = cluster.prepare_and_spawn(id).await;
        client.request(change(Change::Add(pb::AddBroker { id, client_addr, peer_addr }))).await.expect("add broker");
    }
    let status = cluster.status(4).await.expect("broker 4 answers");
    assert_eq!(status.brokers.iter().filter(|b| b.voter).count(), 5, "{status:?}");
    let leader = cluster.wait_for_leader(&[1, 2, 3, 4, 5], Duration::from_secs(20)).await;
    println!("grown to 5 brokers after {} acknowledged publishes; leader {leader}", progress.load(Ordering::Relaxed));
    for id in [4, 5] {
        client.request(change(Change::Remove(pb::RemoveBroker { id }))).await.expect("remove broker");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(cluster.exited(4) && cluster.exited(5)) {
        assert!(Instant::now() < deadline, "removed brokers kept serving\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked = publishing.await.expect("publishers");
    assert_eq!(acked.len(), 2_400);
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let status = cluster.status(leader).await.unwrap();
    assert_eq!(status.brokers.iter().filter(|b| b.voter).count(), 3, "{status:?}");
    cluster.wait_caught_up(&[1, 2, 3], status.applied_index, Duration::from_secs(30)).await;
    for id in [1, 2, 3] {
        cluster.terminate(id);
    }
    let reference = cluster.inspect(1, TOPIC);
    assert_exactly_once(&payloads(&reference), &acked);
    for id in [2, 3] {
        assert_eq!(cluster.inspect(id, TOPIC), reference);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_brokers_keep_writing_through_two_failures() {
    let mut cluster = Cluster::start(5).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3, 4, 5], Duration::from_secs(20)).await;
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, TOPIC).await;
    let mut acked = publish_many(&client, TOPIC, 4, 100, Arc::new(AtomicU64::new(0))).await;
    let other = [1, 2, 3, 4, 5].into_iter().find(|id| *id != leader).unwrap();
    cluster.kill(leader);
    cluster.kill(other);
    let survivors: Vec<u64> = [1, 2, 3, 4, 5].into_iter().filter(|id| *id != leader && *id != other).collect();
    cluster.wait_for_leader(&survivors, Duration::from_secs(30)).await;
    for n in 0..100u64 {
        publish_idempotent(&client, TOPIC, "after", n, format!("after-{n}")).await.unwrap();
        acked.push(format!("after-{n}"));
    }
    for id in survivors.clone() {
        cluster.terminate(id);
    }
    let reference = cluster.inspect(survivors[0], TOPIC);
    assert_exactly_once(&payloads(&reference), &acked);
    for id in &survivors[1..] {
        assert_eq!(cluster.inspect(*id, TOPIC), reference);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minority_refuses_writes_and_the_logs_converge_after_healing() {
    use chorus_protocol::pb::{self, ErrorCode, client_frame::Body as Request};
    let mut cluster = Cluster::start(3).await;
    let old_leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, TOPIC).await;
    let mut acked = publish_many(&client, TOPIC, 2, 50, Arc::new(AtomicU64::new(0))).await;
    let majority: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old_leader).collect();
    cluster.faults.partition(&[&[old_leader], &majority]);
    let new_leader = cluster.wait_for_leader(&majority, Duration::from_secs(30)).await;
    // The isolated old leader cannot commit: a write there is refused within a bounded time.
    let isolated =
        chorus_consumers::Connection::connect(&cluster.brokers[&old_leader].client_addr, "t", Duration::from_secs(2))
            .await
            .unwrap();
    let doomed = Request::Publish(pb::PublishRequest {
        topic: TOPIC.into(),
        messages: vec![pb::Message { payload: "minority".into(), ..Default::default() }],
        ..Default::default()
    });
    let asked = Instant::now();
    let refused =
        isolated.request(doomed, Duration::from_secs(30)).await.expect_err("a minority must not accept writes");
    println!("minority answered {:?} after {:?}", refused.code(), asked.elapsed());
    assert_eq!(refused.code(), Some(ErrorCode::Unavailable), "{refused}");
    assert!(asked.elapsed() < Duration::from_secs(15));
    // The majority keeps going.
    let majority_client = client_for(&cluster, &majority).await;
    for n in 0..50u64 {
        publish_idempotent(&majority_client, TOPIC, "majority", n, format!("majority-{n}")).await.unwrap();
        acked.push(format!("majority-{n}"));
    }
    cluster.faults.heal();
    let applied = cluster.status(new_leader).await.unwrap().applied_index;
    cluster.wait_caught_up(&[1, 2, 3], applied, Duration::from_secs(60)).await;
    for id in [1, 2, 3] {
        cluster.terminate(id);
    }
    let reference = cluster.inspect(new_leader, TOPIC);
    let log = payloads(&reference);
    assert_exactly_once(&log, &acked);
    assert!(!log.contains(&"minority".to_owned()), "a write refused by the minority appeared");
    for id in [1, 2, 3] {
        assert_eq!(cluster.inspect(id, TOPIC), reference, "broker {id} did not converge");
    }
}

async fn client_for(cluster: &Cluster, ids: &[u64]) -> chorus_consumers::Client {
    client(ids.iter().map(|id| cluster.brokers[id].client_addr.clone()).collect()).await
}
