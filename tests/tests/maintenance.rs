//! Planned maintenance from the command line, on real broker processes: handing leadership over
//! (`chorus leader transfer`, and a leader's SIGTERM) without losing an acknowledged write, and
//! adding and removing a broker (`chorus broker add`, `chorus broker remove`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use chorus_tests::cluster::Cluster;
use chorus_tests::workload::{client, create_topic, publish_many};

const TOPIC: &str = "events";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_transfer_hands_leadership_to_the_chosen_voter_without_losing_writes() {
    let mut cluster = Cluster::start(3).await;
    let old = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let to = [1, 2, 3].into_iter().find(|id| *id != old).unwrap();
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, TOPIC).await;
    let publishing = {
        let client = client.clone();
        tokio::spawn(async move { publish_many(&client, TOPIC, 4, 150, Arc::new(AtomicU64::new(0))).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, text) = cluster.cli_exit(&["leader", "transfer", "--to", &to.to_string()], &[1, 2, 3]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with(&format!("broker {to} leads")), "{text}");
    let acked = publishing.await.expect("the publishers");
    assert_eq!(cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(10)).await, to);
    // To itself, or to a broker that is no voter: refused, leadership stays.
    let (code, text) = cluster.cli_exit(&["leader", "transfer", "--to", &to.to_string()], &[1, 2, 3]).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("cannot hand leadership to itself"), "{text}");
    let (code, text) = cluster.cli_exit(&["leader", "transfer", "--to", "9"], &[1, 2, 3]).await;
    assert!(code == Some(1) && text.contains("broker 9 is not a voter"), "{text}");

    let status = cluster.status(to).await.expect("the new leader's status");
    cluster.wait_caught_up(&[1, 2, 3], status.applied_index, Duration::from_secs(20)).await;
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    let stored: Vec<String> =
        cluster.inspect(old, TOPIC).iter().map(|row| row.rsplit('\t').next().unwrap_or_default().to_owned()).collect();
    let unique: BTreeSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "a payload stored twice");
    for payload in &acked {
        assert!(unique.contains(payload), "acknowledged {payload} is missing");
    }
    assert_eq!(acked.len(), 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_stopped_with_sigterm_hands_leadership_over_first() {
    let mut cluster = Cluster::start(3).await;
    let old = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    let stopping = Instant::now();
    cluster.terminate(old);
    let new = cluster.wait_for_leader(&others, Duration::from_secs(20)).await;
    let took = stopping.elapsed();
    let log = cluster.logs_of(old);
    assert!(log.contains("handed leadership over before stopping"), "{log}");
    // The new leader stood when the old one told it to, not after its own campaign timeout.
    assert!(cluster.logs_of(new).contains("the leader handed over: standing for election"), "{}", cluster.logs());
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn brokers_are_added_and_removed_from_the_command_line() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, TOPIC).await;
    publish_many(&client, TOPIC, 2, 20, Arc::new(AtomicU64::new(0))).await;
    let (peer, client_addr) = cluster.prepare_and_spawn(4).await;
    let add = ["broker", "add", "4", "--peer-addr", &peer, "--client-addr", &client_addr];
    let (code, text) = cluster.cli_exit(&add, &[1, 2, 3]).await;
    assert_eq!(code, Some(0), "{text}\n{}", cluster.logs());
    let status = cluster.status(leader).await.expect("the leader's status");
    let four = status.brokers.iter().find(|b| b.id == 4).expect("broker 4 is a member");
    assert!(four.voter, "{status:?}");
    cluster.wait_caught_up(&[1, 2, 3, 4], status.applied_index, Duration::from_secs(20)).await;
    let (code, text) = cluster.cli_exit(&["status"], &[1, 2, 3, 4]).await;
    assert_eq!(code, Some(0), "four brokers, all ready:\n{text}");

    let (code, text) = cluster.cli_exit(&["broker", "remove", "4"], &[1, 2, 3]).await;
    assert_eq!(code, Some(0), "{text}");
    let status = cluster.status(leader).await.expect("the leader's status");
    assert!(status.brokers.iter().all(|b| b.id != 4), "{status:?}");
    // A removed broker stops serving by itself.
    let exited = cluster.wait_exit(4, Duration::from_secs(20)).await;
    assert!(exited.success(), "{exited:?}");
    let (code, text) = cluster.cli_exit(&["broker", "remove", "9"], &[1, 2, 3]).await;
    assert_eq!(code, Some(1), "{text}");
}
