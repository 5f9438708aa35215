//! The client contract on real brokers (issue 18): what the protocol and the client library
//! promise holds across leader changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chorus_consumers::{Message, Producer, ProducerConfig};
use chorus_tests::cluster::Cluster;
use chorus_tests::workload::{client, create_topic};

const TOPIC: &str = "orders";
/// Messages one call publishes, as `chorus publish a b c d e` does.
const MESSAGES_PER_CALL: usize = 5;

/// Regression (issue 18): one `chorus publish a b c d e` call's messages were stored out of order
/// around leader changes (in every 5-broker chaos run): its producer sent the first message
/// alone and the rest as a second batch, both in flight, and when the first needed a retry the
/// second landed before it. Here many such calls, each its own producer as the command line's
/// are, run while leaders are killed; each call's stored messages must be in the order it sent
/// them, and every acknowledged message present.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_producers_messages_are_stored_in_send_order_across_leader_changes() {
    let ids = [1, 2, 3, 4, 5];
    let mut cluster = Cluster::start(5).await;
    cluster.wait_for_leader(&ids, Duration::from_secs(20)).await;
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, TOPIC).await;
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|caller| {
            let (client, stop) = (client.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for call in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let producer = Producer::new(client.clone(), ProducerConfig::default());
                    let messages = (0..MESSAGES_PER_CALL).map(|i| Message::new(format!("{caller}-{call:05}-{i}")));
                    if let Ok(receipts) = producer.send_all(TOPIC, messages).await {
                        acknowledged.extend((0..receipts.len()).map(|i| format!("{caller}-{call:05}-{i}")));
                    }
                    producer.close().await;
                }
                acknowledged
            })
        })
        .collect();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let up: Vec<u64> = cluster.running();
        let leader = cluster.wait_for_leader(&up, Duration::from_secs(20)).await;
        cluster.kill(leader);
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.spawn(leader);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for caller in callers {
        acknowledged.extend(tokio::time::timeout(Duration::from_secs(120), caller).await.unwrap().unwrap());
    }
    let leader = cluster.wait_for_leader(&ids, Duration::from_secs(30)).await;
    let applied = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_applied_through(&ids, applied, Duration::from_secs(30)).await;
    cluster.terminate(leader);
    let stored: Vec<String> =
        cluster.inspect(leader, TOPIC).iter().map(|row| row.rsplit('\t').next().unwrap().to_owned()).collect();
    println!("{} calls' messages acknowledged, {} stored", acknowledged.len(), stored.len());
    // Each call's messages, in the order stored, must be in the order sent.
    let mut last_of_call: BTreeMap<String, u64> = BTreeMap::new();
    let mut reordered = Vec::new();
    for payload in &stored {
        let (call, i) = payload.rsplit_once('-').unwrap();
        let i: u64 = i.parse().unwrap();
        if last_of_call.insert(call.to_owned(), i).is_some_and(|before| before >= i) {
            reordered.push(payload.clone());
        }
    }
    assert!(reordered.is_empty(), "stored out of send order: {:?}", &reordered[..reordered.len().min(5)]);
    let stored: BTreeSet<&String> = stored.iter().collect();
    let missing: Vec<&String> = acknowledged.iter().filter(|p| !stored.contains(p)).collect();
    assert!(missing.is_empty(), "acknowledged and not stored: {:?}", &missing[..missing.len().min(5)]);
}
