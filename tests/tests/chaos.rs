//! Real-process chaos with a recorded history. Producers publish unique payloads, workers lease
//! and ack (sometimes stalling, so leases expire), and subscribers read, while a seeded nemesis
//! kills (-9), pauses (SIGSTOP), partitions, restarts and wipes brokers. Then the faults heal,
//! the group drains, the subscribers catch up, and `chorus_tests::history::check` judges the
//! history: nothing lost, nothing unexpected, one order, no stale ack accepted.
//!
//! It runs 3 brokers, then 5. Faults: kill -9 of the leader or a follower, SIGSTOP of the leader,
//! the leader partitioned away, a one-way cut, a random minority partitioned away, a bridge (5
//! brokers: two halves that only the leader connects), and a wiped follower.
//!
//! `CHORUS_CHAOS_SECONDS` sets how long faults run per cluster (default 60); `CHORUS_CHAOS_SEED` picks the
//! schedule, which is printed so a failing run can be repeated.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_consumers::{Client, ClientConfig, ClientError, Subscriber, SubscriberConfig};
use chorus_protocol::pb::{self, ErrorCode, client_frame::Body as Request, server_frame::Body};
use chorus_tests::cluster::Cluster;
use chorus_tests::history::{Expectations, History, Op, Outcome, check, record};
use futures::StreamExt;
use rand::{RngExt, SeedableRng};

const TOPIC: &str = "chaos";
const GROUP: &str = "workers";
const LEASE_MS: u64 = 2_000;

async fn patient_client(cluster: &Cluster) -> Client {
    client_with_retries(cluster, Duration::from_secs(15)).await
}

/// A client that retries for `retry_deadline`. Workers use none: a retried ack whose first
/// attempt was applied answers StaleLease, which would hide that the ack happened.
async fn client_with_retries(cluster: &Cluster, retry_deadline: Duration) -> Client {
    let mut config = ClientConfig::new(cluster.client_addrs());
    config.request_timeout = Duration::from_secs(5);
    config.retry_deadline = retry_deadline;
    Client::with_config(config).await.expect("connect")
}

/// Refusals that prove the operation did not happen; anything else is unknown.
fn outcome_of(error: &ClientError) -> Outcome {
    match error.code() {
        Some(ErrorCode::UnknownTopic | ErrorCode::InvalidArgument | ErrorCode::TooLarge | ErrorCode::Unauthorized) => {
            Outcome::Fail
        }
        _ => Outcome::Info,
    }
}

/// Publishes one message at a time as an idempotent producer. A producer's batches are stored in
/// its sequence order, so after a publish that did not succeed (its outcome may be unknown) the
/// next one starts a new run, under a new producer id, at sequence 1, as the client library does.
async fn producer(client: Client, process: u32, history: History, stop: Arc<AtomicBool>) {
    let (mut n, mut run, mut sequence) = (0u64, 0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        sequence += 1;
        let payload = chorus_tests::history::payload(process, n);
        let request = Request::Publish(pb::PublishRequest {
            topic: TOPIC.into(),
            messages: vec![pb::Message { payload: Bytes::from(payload.clone()), ..Default::default() }],
            producer_id: Some(format!("producer-{process}-{run}")),
            producer_seq: Some(sequence),
        });
        let outcome = match client.request(request).await {
            Ok(Body::PublishOk(ok)) => {
                record(&history, process, Op::Publish { payload, seq: Some(ok.first_seq) }, Outcome::Ok);
                continue;
            }
            Ok(_) => Outcome::Info,
            Err(error) => outcome_of(&error),
        };
        record(&history, process, Op::Publish { payload, seq: None }, outcome);
        (run, sequence) = (run + 1, 0);
    }
}

/// Leases and acks until told to stop; `stall_one_in` leases are left to expire.
async fn worker(client: Client, process: u32, history: History, stop: Arc<AtomicBool>, stall_one_in: u32, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let lease = Request::Lease(pb::LeaseRequest {
            topic: TOPIC.into(),
            group: GROUP.into(),
            consumer: format!("worker-{process}"),
            count_max: 16,
            wait_ms: 500,
            lease_ms: Some(LEASE_MS),
        });
        let Ok(Body::LeaseOk(leased)) = client.request(lease).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        for granted in leased.messages {
            let message = granted.message.expect("a grant carries its message");
            let grant = Op::grant(message.seq, &message.payload, granted.token, granted.deadline_ms, LEASE_MS);
            record(&history, process, grant, Outcome::Ok);
            if stall_one_in > 0 && rng.random_range(0..stall_one_in) == 0 {
                continue;
            }
            let ack =
                Request::Ack(pb::AckRequest { topic: TOPIC.into(), group: GROUP.into(), tokens: vec![granted.token] });
            let settle = Op::Settle { seq: message.seq, token: granted.token, ack: true };
            let outcome = match client.request(ack).await {
                Ok(Body::SettleOk(ok)) => match ok.results.first().and_then(|r| r.error.as_ref()) {
                    None => Outcome::Ok,
                    Some(_) => Outcome::Fail,
                },
                _ => Outcome::Info,
            };
            record(&history, process, settle, outcome);
        }
    }
}

/// Reads the topic into the history until `stop`, then until it has seen `last_seq`.
async fn subscriber(client: Client, id: u32, history: History, last_seq: Arc<Mutex<Option<u64>>>) {
    let mut stream =
        Subscriber::open(&client, SubscriberConfig::durable(TOPIC, &format!("sub-{id}"))).await.expect("subscribe");
    let mut seen = 0;
    loop {
        if last_seq.lock().unwrap().is_some_and(|last| seen >= last) {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
            Ok(Some(Ok(message))) => {
                seen = message.seq;
                let payload = String::from_utf8_lossy(&message.payload).into_owned();
                record(&history, 100 + id, Op::Deliver { subscriber: id, seq: message.seq, payload }, Outcome::Ok);
                if message.seq % 50 == 0 {
                    let _ = stream.commit(message.seq).await;
                }
            }
            Ok(Some(Err(error))) => panic!("subscriber {id} failed: {error}"),
            Ok(None) => panic!("subscriber {id} ended"),
            Err(_) => {}
        }
    }
}

/// One fault from the schedule; returns what it did.
async fn inject(cluster: &mut Cluster, rng: &mut rand::rngs::StdRng) -> String {
    let ids = ids(cluster);
    let leader = cluster.wait_for_leader(&ids, Duration::from_secs(30)).await;
    let followers: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
    let follower = followers[rng.random_range(0..followers.len())];
    let pause = Duration::from_millis(rng.random_range(500..2_500));
    match rng.random_range(0..8) {
        0 => {
            cluster.kill(leader);
            tokio::time::sleep(pause).await;
            cluster.spawn(leader);
            format!("kill -9 leader {leader}, restart after {pause:?}")
        }
        1 => {
            cluster.kill(follower);
            tokio::time::sleep(pause).await;
            cluster.spawn(follower);
            format!("kill -9 follower {follower}, restart after {pause:?}")
        }
        2 => {
            cluster.signal(leader, "STOP");
            tokio::time::sleep(pause).await;
            cluster.signal(leader, "CONT");
            format!("SIGSTOP leader {leader} for {pause:?}")
        }
        3 => {
            cluster.faults.partition(&[&[leader], &followers]);
            tokio::time::sleep(pause * 2).await;
            cluster.faults.heal();
            format!("partition leader {leader} from the majority for {:?}", pause * 2)
        }
        4 => {
            cluster.faults.block(leader, follower);
            tokio::time::sleep(pause * 2).await;
            cluster.faults.heal();
            format!("one-way partition {leader} -> {follower} for {:?}", pause * 2)
        }
        5 => {
            // A random minority, the leader possibly among it, against the rest.
            let mut shuffled = ids.clone();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.random_range(0..=i));
            }
            let (minority, majority) = shuffled.split_at((ids.len() - 1) / 2);
            cluster.faults.partition(&[minority, majority]);
            tokio::time::sleep(pause * 2).await;
            cluster.faults.heal();
            format!("partition {minority:?} from {majority:?} for {:?}", pause * 2)
        }
        6 if ids.len() >= 5 => {
            // Two halves that only the leader still connects.
            let (left, right) = followers.split_at(followers.len() / 2);
            cluster.faults.partition(&[left, right]);
            tokio::time::sleep(pause * 2).await;
            cluster.faults.heal();
            format!("bridge: leader {leader} alone connects {left:?} and {right:?} for {:?}", pause * 2)
        }
        _ => {
            // Losing a broker's data is only survivable while the others hold everything: wipe
            // only a caught-up cluster, and let the wiped broker catch up before going on. The
            // workload keeps running, so "caught up" is every broker through the leader's applied
            // index, not every broker at one index (which a busy cluster seldom shows).
            let applied = cluster.status(leader).await.map_or(0, |s| s.applied_index);
            cluster.wait_applied_through(&ids, applied, Duration::from_secs(60)).await;
            cluster.kill(follower);
            cluster.wipe(follower);
            cluster.spawn(follower);
            let applied = cluster.status(leader).await.map_or(applied, |s| s.applied_index);
            cluster.wait_applied_through(&ids, applied, Duration::from_secs(60)).await;
            format!("wipe follower {follower}, caught up again")
        }
    }
}

fn ids(cluster: &Cluster) -> Vec<u64> {
    cluster.brokers.keys().copied().collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// 3 brokers, then 5, each under `CHORUS_CHAOS_SECONDS` of faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_keeps_every_promise() {
    let seconds = env_u64("CHORUS_CHAOS_SECONDS", 60);
    let seed = env_u64("CHORUS_CHAOS_SEED", 7);
    let mut table = Vec::new();
    for brokers in [3, 5] {
        table.push(run(brokers, seconds, seed).await);
    }
    println!("chaos summary, seed {seed}:");
    for row in table {
        println!("  {row}");
    }
}

/// One chaos run; returns its summary row.
async fn run(brokers: u64, seconds: u64, seed: u64) -> String {
    println!("chaos: {brokers} brokers, {seconds} s of faults, seed {seed} (CHORUS_CHAOS_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(brokers).await;
    let ids = ids(&cluster);
    cluster.wait_for_leader(&ids, Duration::from_secs(20)).await;
    let admin = patient_client(&cluster).await;
    admin.request(Request::CreateTopic(pb::CreateTopic { name: TOPIC.into(), config: None })).await.unwrap();
    admin
        .request(Request::CreateGroup(pb::CreateGroup { topic: TOPIC.into(), name: GROUP.into(), config: None }))
        .await
        .unwrap();

    let history: History = Arc::default();
    let stop_producing = Arc::new(AtomicBool::new(false));
    let stop_working = Arc::new(AtomicBool::new(false));
    let last_seq: Arc<Mutex<Option<u64>>> = Arc::default();
    let mut producers = Vec::new();
    for process in 0..3 {
        let client = patient_client(&cluster).await;
        producers.push(tokio::spawn(producer(client, process, Arc::clone(&history), Arc::clone(&stop_producing))));
    }
    let mut workers = Vec::new();
    for process in 10..12 {
        let client = client_with_retries(&cluster, Duration::ZERO).await;
        let task =
            worker(client, process, Arc::clone(&history), Arc::clone(&stop_working), 10, seed + u64::from(process));
        workers.push(tokio::spawn(task));
    }
    let mut subscribers = Vec::new();
    for id in 0..2 {
        let client = patient_client(&cluster).await;
        subscribers.push(tokio::spawn(subscriber(client, id, Arc::clone(&history), Arc::clone(&last_seq))));
    }

    let started = Instant::now();
    let mut faults = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1_000))).await;
        let fault = inject(&mut cluster, &mut rng).await;
        println!("  fault {:>2} at {:>5.1} s: {fault}", faults.len() + 1, started.elapsed().as_secs_f64());
        faults.push(fault);
    }

    // Heal: everything runs, no partition. Then the writes stop and everything must drain.
    cluster.faults.heal();
    for id in ids.iter().copied() {
        if cluster.exited(id) {
            cluster.spawn(id);
        }
        cluster.signal(id, "CONT");
    }
    let healed = Instant::now();
    let leader = cluster.wait_for_leader(&ids, Duration::from_secs(30)).await;
    stop_producing.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.await.unwrap();
    }
    // Reads are served from the asked broker's applied state, so ask the leader, and see the
    // group empty twice in a row.
    let mut empty_readings = 0;
    let drained = loop {
        let leader = cluster.wait_for_leader(&ids, Duration::from_secs(30)).await;
        let addr = cluster.brokers[&leader].client_addr.clone();
        let describe = Request::DescribeGroup(pb::DescribeGroup { topic: TOPIC.into(), name: GROUP.into() });
        let empty = match chorus_consumers::Connection::connect(&addr, "chaos", Duration::from_secs(2)).await {
            Ok(connection) => matches!(
                connection.request(describe, Duration::from_secs(5)).await,
                Ok(Body::Group(group)) if group.backlog == 0 && group.leased == 0
            ),
            Err(_) => false,
        };
        empty_readings = if empty { empty_readings + 1 } else { 0 };
        if empty_readings == 2 {
            break true;
        }
        if healed.elapsed() > Duration::from_secs(90) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop_working.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let Ok(Body::Topic(topic)) = admin.request(Request::DescribeTopic(pb::DescribeTopic { name: TOPIC.into() })).await
    else {
        panic!("describe topic")
    };
    *last_seq.lock().unwrap() = Some(topic.last_seq);
    for subscriber in subscribers {
        tokio::time::timeout(Duration::from_secs(90), subscriber).await.expect("subscribers catch up").unwrap();
    }
    let drain_time = healed.elapsed();

    let history = history.lock().unwrap().clone();
    let expect = Expectations { caught_up_subscribers: BTreeSet::from([0, 1]), group_drained: drained };
    let verdict = check(&history, &expect);
    println!(
        "chaos summary: {} faults, {} operations, leader {leader}, drained in {drain_time:?}",
        faults.len(),
        history.len()
    );
    println!("  {}", verdict.summary());
    assert!(drained, "the group did not drain within 90 s of healing\n{}", cluster.logs());
    assert!(verdict.is_valid(), "history violations: {:#?}\n{}", verdict.examples, cluster.logs());
    assert!(
        verdict.publishes_ok > 0 && faults.len() >= seconds as usize / 4,
        "the run did too little to prove anything"
    );
    format!(
        "{brokers} brokers | {:>3} faults | drained in {:>5.1} s | {}",
        faults.len(),
        drain_time.as_secs_f64(),
        verdict.summary()
    )
}
