//! Overload and hostile clients on real brokers (issue 19): what ordinary use with big messages,
//! and what a client that misbehaves, may cost a broker. Each test names the case of the issue.

use std::time::Duration;

use chorus_consumers::{Connection, Message, Producer, ProducerConfig, WorkerConfig, WorkerPool};
use chorus_protocol::pb;
use chorus_tests::cluster::Cluster;
use chorus_tests::workload::{client, create_topic};

const MIB: usize = 1024 * 1024;

/// Case 1: four messages of 3 MB leased four at a time made a lease answer larger than the 8 MiB
/// frame; the client got no answer, the leases expired, and after `deliveries_max` the messages
/// were dead-lettered or dropped, never handed to a worker. Now a lease grants what fits in one
/// frame (at least one message), so a worker pool at its defaults handles them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_messages_are_leased_as_many_as_fit_in_a_frame() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, "big").await;
    let config = pb::GroupConfig { deliveries_max: 2, ..Default::default() };
    client.call(pb::CreateGroup { topic: "big".into(), name: "g".into(), config: Some(config) }).await.unwrap();
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let payloads = (0..4u8).map(|i| Message::new(vec![i; 3 * MIB]));
    producer.send_all("big", payloads).await.expect("publish four messages of 3 MB");
    producer.close().await;

    let addr = &cluster.client_addrs()[0];
    let connection = Connection::connect_with(addr, &cluster.connect_options()).await.unwrap();
    let lease = pb::LeaseRequest {
        topic: "big".into(),
        group: "g".into(),
        consumer: "raw".into(),
        count_max: 4,
        wait_ms: 0,
        lease_ms: Some(60_000),
    };
    let leased = connection.call(lease, Duration::from_secs(20)).await.expect("a lease answer, not silence");
    assert_eq!(leased.messages.len(), 2, "two messages of 3 MB fit in an 8 MiB frame, not four");
    let tokens = leased.messages.iter().map(|m| m.token).collect();
    let nack = pb::NackRequest { topic: "big".into(), group: "g".into(), tokens, delay_ms: 0 };
    connection.call(nack, Duration::from_secs(20)).await.unwrap();

    let handled = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&handled);
    let mut pool = WorkerPool::start(client.clone(), WorkerConfig::new("big", "g"), move |job| {
        assert_eq!(job.message.payload.len(), 3 * MIB);
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async { Ok::<(), std::io::Error>(()) }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while handled.load(std::sync::atomic::Ordering::Relaxed) < 4 {
        assert!(tokio::time::Instant::now() < deadline, "the pool handled only {handled:?} of 4");
        tokio::select! {
            () = pool.finished() => panic!("the pool stopped: {:?}", pool.shutdown().await),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    pool.shutdown().await.unwrap();
    let group = client.call(pb::DescribeGroup { topic: "big".into(), name: "g".into() }).await.unwrap();
    assert_eq!((group.acked_total, group.dead_lettered_total, group.dropped_total), (4, 0, 0), "{group:?}");
}

/// Case 6: a follower forwarded at most 64 requests to the leader at a time, and a lease
/// long-poll held its slot for its whole wait, so 64 workers long-polling through one follower
/// stalled every other write through it (4.7 s). Now a follower holds long-polls itself, against
/// its own applied state, and forwards only the final lease: a publish through it is answered
/// while a hundred long-polls there still wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_through_a_follower_leave_its_writes_alone() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, "polled").await;
    create_topic(&client, "other").await;
    client.call(pb::CreateGroup { topic: "polled".into(), name: "g".into(), config: None }).await.unwrap();
    let addr = &cluster.brokers[&follower].client_addr;
    let polls = Connection::connect_with(addr, &cluster.connect_options()).await.unwrap();
    let waiting: Vec<_> = (0..100)
        .map(|i| {
            let polls = polls.clone();
            let lease = pb::LeaseRequest {
                topic: "polled".into(),
                group: "g".into(),
                consumer: format!("w{i}"),
                count_max: 1,
                wait_ms: 8_000,
                lease_ms: None,
            };
            tokio::spawn(async move { polls.call(lease, Duration::from_secs(30)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = Connection::connect_with(addr, &cluster.connect_options()).await.unwrap();
    let publish = pb::PublishRequest {
        topic: "other".into(),
        messages: vec![pb::Message { payload: "x".into(), ..Default::default() }],
        ..Default::default()
    };
    writes.call(publish, Duration::from_secs(30)).await.expect("the publish through the follower");
    let answered = waiting.iter().filter(|poll| poll.is_finished()).count();
    assert_eq!(answered, 0, "the publish waited for {answered} long-polls to end");
    for poll in waiting {
        let leased = poll.await.unwrap().expect("each long-poll is answered");
        assert!(leased.messages.is_empty());
    }
}
