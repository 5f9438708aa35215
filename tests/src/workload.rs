//! Workloads against a cluster: idempotent publishers whose every acknowledged message is
//! recorded, so tests can check that nothing acknowledged was lost or duplicated.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chorus_consumers::{Client, ClientConfig, ClientError, Connection};
use chorus_protocol::pb::{self, ErrorCode, client_frame::Body as Request, server_frame::Body};
use tokio::sync::Mutex;

use crate::cluster::{Cluster, ClusterOptions};

/// How long one request of a test may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to `request`, which must succeed.
pub async fn ok(connection: &Connection, request: Request) -> Body {
    connection.request(request, REQUEST_TIMEOUT).await.unwrap_or_else(|e| panic!("request failed: {e}"))
}

/// The error code `request` is refused with; it must be refused.
pub async fn refused(connection: &Connection, request: Request) -> ErrorCode {
    match connection.request(request, REQUEST_TIMEOUT).await {
        Err(ClientError::Server(error)) => error.code,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

/// A client with generous retries, for workloads that ride through failovers.
pub async fn client(addrs: Vec<String>) -> Client {
    let mut config = ClientConfig::new(addrs);
    config.request_timeout = Duration::from_secs(6);
    config.retry_deadline = Duration::from_secs(60);
    Client::with_config(config).await.expect("connect to the cluster")
}

pub async fn create_topic(client: &Client, name: &str) {
    client.call(pb::CreateTopic { name: name.into(), config: None }).await.expect("create topic");
}

/// Publishes one message as (producer, sequence): retries are deduplicated by the broker.
pub async fn publish_idempotent(
    client: &Client,
    topic: &str,
    producer: &str,
    sequence: u64,
    payload: String,
) -> Result<pb::PublishOk, ClientError> {
    let request = pb::PublishRequest {
        topic: topic.into(),
        messages: vec![pb::Message { payload: Bytes::from(payload), ..Default::default() }],
        producer_id: Some(producer.into()),
        producer_seq: Some(sequence),
    };
    client.call(request).await
}

/// Runs `producers` concurrent idempotent publishers, each publishing `per_producer` messages
/// named `p{producer}-{n}`, and returns every acknowledged payload. `progress` counts acks.
pub async fn publish_many(
    client: &Client,
    topic: &str,
    producers: usize,
    per_producer: u64,
    progress: Arc<std::sync::atomic::AtomicU64>,
) -> Vec<String> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for producer in 0..producers {
        let client = client.clone();
        let topic = topic.to_owned();
        let acked = Arc::clone(&acked);
        let progress = Arc::clone(&progress);
        tasks.push(tokio::spawn(async move {
            let name = format!("p{producer}");
            for n in 0..per_producer {
                let payload = format!("{name}-{n}");
                match publish_idempotent(&client, &topic, &name, n, payload.clone()).await {
                    Ok(_) => {
                        acked.lock().await.push(payload);
                        progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(error) => panic!("publish {payload} failed for good: {error}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("publisher task");
    }
    Arc::try_unwrap(acked).expect("publishers done").into_inner()
}

/// A follower that must catch up through a snapshot: a 3-broker cluster that snapshots every 50
/// entries takes 600 messages on `topic`; one follower is stopped and its data wiped; 200 more
/// follow, so the leader snapshots and purges again while it is gone. Returns the cluster, the
/// leader, the stopped follower and every acknowledged payload.
pub async fn wiped_follower_behind_a_snapshot(topic: &str) -> (Cluster, u64, u64, Vec<String>) {
    let options =
        ClusterOptions { snapshot_after_entries: 50, entries_kept_after_snapshot: 5, ..ClusterOptions::default() };
    let mut cluster = Cluster::start_with(3, options).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, topic).await;
    let mut acked = publish_many(&client, topic, 2, 300, Arc::new(std::sync::atomic::AtomicU64::new(0))).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).expect("a follower");
    cluster.terminate(follower);
    cluster.wipe(follower);
    for n in 0..200u64 {
        publish_idempotent(&client, topic, "late", n, format!("late-{n}")).await.expect("publish while one is down");
        acked.push(format!("late-{n}"));
    }
    (cluster, leader, follower, acked)
}
