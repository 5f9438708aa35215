//! `chorus demo`: a scripted tour that checks, and prints, what Chorus promises. It starts a
//! cluster of its own in a temporary directory, or uses `--brokers` (for example the cluster
//! `chorus up` started, whose pid files let it kill the leader). Exits non-zero if a check fails.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chorus_consumers::{
    Client, Message, Producer, ProducerConfig, Subscriber, SubscriberConfig, WorkerConfig, WorkerPool,
};
use chorus_protocol::pb::{self, ErrorCode};
use clap::Args;
use futures::StreamExt;

use super::local::{LocalCluster, LocalSecurity, Ports, wait_for_leader, wait_for_leader_where};
use crate::target::Target;

const TASKS: u64 = 200;
const STALLED: u32 = 20;
const AFTER_FAILOVER: u64 = 1_000;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// With --brokers, the running cluster to use (TLS and user from the flags or the context)
    /// instead of a cluster of its own.
    #[command(flatten)]
    pub target: Target,
    /// With --brokers: the `chorus up` data directory, whose pid files let the demo kill the leader.
    #[arg(long, default_value = "chorus-data")]
    pub data_dir: PathBuf,
}

fn step(text: &str) {
    println!("▶ {text}");
}

fn check(text: &str) {
    println!("  ✓ {text}");
}

/// Ports `base..base + count` all free on loopback.
pub(super) fn free_ports(count: u16) -> anyhow::Result<u16> {
    for _ in 0..100 {
        let base = rand::random_range(20_000..60_000);
        if (base..base + count).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()) {
            return Ok(base);
        }
    }
    bail!("no free ports on loopback")
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let scratch = tempfile::tempdir()?;
    let (mut own, resolved) = match &args.target.brokers {
        Some(_) => (None, args.target.resolve()?),
        None => {
            step("starting a cluster of 3 brokers on loopback, with TLS and users");
            let ports = Ports { client: free_ports(3)?, peer: free_ports(3)?, metrics: None };
            let cluster = LocalCluster::start(scratch.path(), 3, ports, LocalSecurity::SECURE)?;
            let resolved = cluster.resolved()?;
            (Some(cluster), resolved)
        }
    };
    let (addrs, options) = (resolved.brokers.clone(), resolved.connect_options("chorus-demo")?);
    let leader = wait_for_leader(&addrs, &options, Duration::from_secs(30)).await?;
    check(&format!("broker {} leads, term {}", leader.broker_id, leader.term));
    let client = Client::with_config(resolved.client_config("chorus-demo")?).await?;
    let topic = format!("demo-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let result = tour(&client, &topic, &addrs, &options, own.as_mut(), &args).await;
    let _ = client.call(pb::DeleteTopic { name: topic }).await;
    if let Some(cluster) = own.as_mut() {
        cluster.stop();
    }
    match result {
        Ok(()) => {
            println!("all checks passed");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            println!("  ✗ {error:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn tour(
    client: &Client,
    topic: &str,
    addrs: &[String],
    options: &chorus_consumers::ConnectOptions,
    own: Option<&mut LocalCluster>,
    args: &DemoArgs,
) -> anyhow::Result<()> {
    client.call(pb::CreateTopic { name: topic.into(), config: None }).await?;
    client.call(pb::CreateGroup { topic: topic.into(), name: "workers".into(), config: None }).await?;

    step(&format!("publishing {TASKS} messages to {topic}"));
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let receipts = producer.send_all(topic, (1..=TASKS).map(|n| Message::new(format!("task-{n}")))).await?;
    let seqs: Vec<u64> = receipts.iter().map(|r| r.seq).collect();
    ensure!(seqs == (1..=TASKS).collect::<Vec<_>>(), "sequences are not 1..={TASKS}: {seqs:?}");
    check(&format!("all {TASKS} acknowledged after an fsync on a majority: sequences 1..={TASKS}"));

    workers(client, topic).await?;
    subscribers(client, topic).await?;
    failover(client, topic, addrs, options, own, args, &producer).await?;
    producer.close().await;
    Ok(())
}

async fn workers(client: &Client, topic: &str) -> anyhow::Result<()> {
    step(&format!("worker A leases {STALLED} messages for 1 s and stalls; worker B processes the topic"));
    let lease = pb::LeaseRequest {
        topic: topic.into(),
        group: "workers".into(),
        consumer: "worker-a".into(),
        count_max: STALLED,
        wait_ms: 0,
        lease_ms: Some(1_000),
    };
    let stalled = client.call(lease).await?;
    let stalled_seqs: BTreeSet<u64> =
        stalled.messages.iter().filter_map(|m| m.message.as_ref().map(|m| m.seq)).collect();
    ensure!(stalled_seqs.len() == STALLED as usize, "worker A got {} messages", stalled_seqs.len());
    let done: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
    let mut config = WorkerConfig::new(topic, "workers");
    config.consumer = "worker-b".into();
    config.lease = Some(Duration::from_secs(5));
    config.poll = Duration::from_millis(500);
    let record = Arc::clone(&done);
    let pool = WorkerPool::start(client.clone(), config, move |job| {
        let record = Arc::clone(&record);
        async move {
            record.lock().expect("record").push((job.message.seq, job.delivery_count));
            Ok::<(), std::convert::Infallible>(())
        }
    });
    let started = Instant::now();
    while done.lock().expect("record").len() < TASKS as usize {
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "worker B processed only {} messages",
            done.lock().expect("record").len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool.shutdown().await.context("worker B")?;
    let done = done.lock().expect("record").clone();
    let processed: BTreeSet<u64> = done.iter().map(|(seq, _)| *seq).collect();
    ensure!(processed.len() == TASKS as usize, "worker B processed {} distinct messages", processed.len());
    let failed_over = done.iter().filter(|(seq, delivery)| stalled_seqs.contains(seq) && *delivery >= 2).count();
    ensure!(failed_over == STALLED as usize, "{failed_over} of worker A's messages were redelivered");
    check(&format!(
        "worker A's {STALLED} leases expired and failed over to worker B (delivery 2); all {TASKS} processed once each"
    ));
    let stale = stalled.messages[0].token;
    let ack = pb::AckRequest { topic: topic.into(), group: "workers".into(), tokens: vec![stale] };
    let settled = client.call(ack).await?;
    let refused = settled.results.first().and_then(|r| r.error.as_ref()).map(pb::Error::code);
    ensure!(refused == Some(ErrorCode::StaleLease), "worker A's late ack was not refused: {refused:?}");
    check(&format!("worker A's late ack with fencing token {stale} is refused: StaleLease"));
    Ok(())
}

async fn subscribers(client: &Client, topic: &str) -> anyhow::Result<()> {
    step("two subscribers read the topic");
    let mut orders = Vec::new();
    for config in [SubscriberConfig::ephemeral(topic), SubscriberConfig::durable(topic, "audit")] {
        let mut subscriber = Subscriber::open(client, config).await?;
        let mut order = Vec::new();
        while order.len() < TASKS as usize {
            let message =
                tokio::time::timeout(Duration::from_secs(10), subscriber.next()).await?.context("stream ended")??;
            order.push((message.seq, message.log_index, message.batch_pos, message.payload));
        }
        orders.push(order);
    }
    ensure!(orders[0] == orders[1], "the subscribers saw different orders");
    let head: Vec<String> =
        orders[0].iter().take(4).map(|(seq, index, pos, _)| format!("{seq}@{index}.{pos}")).collect();
    check(&format!(
        "both saw the same {TASKS} messages in the same order (seq@log_index.batch_pos: {} ...)",
        head.join(" ")
    ));
    Ok(())
}

async fn failover(
    client: &Client,
    topic: &str,
    addrs: &[String],
    options: &chorus_consumers::ConnectOptions,
    own: Option<&mut LocalCluster>,
    args: &DemoArgs,
    producer: &Producer,
) -> anyhow::Result<()> {
    let before = wait_for_leader(addrs, options, Duration::from_secs(10)).await?;
    let leader = before.broker_id;
    step(&format!("publishing {AFTER_FAILOVER} more while broker {leader}, the leader, is killed with SIGKILL"));
    let mut pending = Vec::new();
    let mut killed_at = None;
    for n in 1..=AFTER_FAILOVER {
        pending.push(producer.enqueue(topic, Message::new(format!("after-{n}"))).await?);
        if n == AFTER_FAILOVER / 3 {
            // Let the first third commit, so the kill lands mid-stream.
            for receipt in pending.drain(..) {
                receipt.await??;
            }
            kill(leader, own.as_deref(), args)?;
            killed_at = Some(Instant::now());
        }
    }
    let killed_at = killed_at.context("the leader was killed")?;
    // Either the others elect a leader in a later term, or, under `chorus up`, the killed broker
    // is restarted before they time out and resumes its term: openraft keeps a leader's committed
    // vote across a restart. The killed process cannot answer, so a leader `leader` is restarted.
    let resumed = |status: &pb::ClusterStatus| status.term > before.term || status.broker_id == leader;
    let new_leader = wait_for_leader_where(addrs, options, Duration::from_secs(30), resumed).await?;
    let elapsed = killed_at.elapsed();
    if new_leader.term > before.term {
        check(&format!("broker {} leads in term {} after {elapsed:?}", new_leader.broker_id, new_leader.term));
    } else {
        check(&format!(
            "broker {leader} was restarted and leads term {} again after {elapsed:?}, before the others timed out",
            new_leader.term
        ));
    }
    for receipt in pending {
        receipt.await??;
    }
    check(&format!("all {AFTER_FAILOVER} publishes were acknowledged despite the failover"));
    let mut subscriber = Subscriber::open(
        client,
        SubscriberConfig { start: chorus_consumers::Start::Seq(TASKS + 1), ..SubscriberConfig::ephemeral(topic) },
    )
    .await?;
    let mut seen = BTreeSet::new();
    let mut count = 0;
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(3), subscriber.next()).await {
        let message = message?;
        count += 1;
        seen.insert(String::from_utf8_lossy(&message.payload).into_owned());
    }
    let expected: BTreeSet<String> = (1..=AFTER_FAILOVER).map(|n| format!("after-{n}")).collect();
    ensure!(seen == expected, "{} of {AFTER_FAILOVER} messages arrived", seen.intersection(&expected).count());
    ensure!(count == AFTER_FAILOVER, "{count} deliveries for {AFTER_FAILOVER} messages: duplicates");
    check(&format!("every acknowledged message is in the log exactly once ({count} delivered)"));
    Ok(())
}

/// SIGKILL for broker `id`: through the child we own, or a `chorus up` pid file.
fn kill(id: u64, own: Option<&LocalCluster>, args: &DemoArgs) -> anyhow::Result<()> {
    let pid = match own {
        Some(cluster) => cluster.pid(id).context("the leader is not running")?.to_string(),
        None => {
            let path = args.data_dir.join(id.to_string()).join("broker.pid");
            std::fs::read_to_string(&path).with_context(|| format!("reading {} to kill the leader", path.display()))?
        }
    };
    let pid = pid.trim();
    if own.is_none() {
        let dir = args.data_dir.join(id.to_string());
        ensure!(
            is_broker(pid, id, &dir),
            "process {pid} (from {}/broker.pid) is not broker {id} of that directory; not killing it",
            dir.display()
        );
    }
    let status = std::process::Command::new("kill").args(["-KILL", pid]).status()?;
    ensure!(status.success(), "kill -KILL {pid} failed");
    Ok(())
}

/// Whether process `pid` is `chorus serve --id=ID --data-dir=DIR`, by its command line: a pid
/// file outlives its process, and the pid may since name any other process.
fn is_broker(pid: &str, id: u64, dir: &std::path::Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let has = |arg: String| args.contains(&arg.as_bytes());
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    has("serve".into()) && has(format!("--id={id}")) && has(format!("--data-dir={}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 18): the demo passed any pid from a pid file to `kill -KILL`; a stale
    /// file (overwritten by a second `chorus up`) named processes that were not brokers.
    #[test]
    fn only_a_broker_of_the_directory_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let broker_dir = dir.path().join("1");
        std::fs::create_dir(&broker_dir).unwrap();
        let canonical = broker_dir.canonicalize().unwrap();
        let mut lookalike = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 20; true", "serve", "--id=1"])
            .arg(format!("--data-dir={}", canonical.display()))
            .spawn()
            .unwrap();
        let mut other = std::process::Command::new("sleep").arg("20").spawn().unwrap();
        let (broker_pid, other_pid) = (lookalike.id().to_string(), other.id().to_string());
        // A child shows the test's own command line until it has exec'd its program.
        let exec_done = |pid: &str, program: &str| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| cmdline.starts_with(program.as_bytes()))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !(exec_done(&broker_pid, "/bin/sh") && exec_done(&other_pid, "sleep")) {
            assert!(std::time::Instant::now() < deadline, "the children did not start");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let judged = (is_broker(&broker_pid, 1, &broker_dir), is_broker(&broker_pid, 2, &broker_dir));
        let stranger = is_broker(&other_pid, 1, &broker_dir);
        for child in [&mut lookalike, &mut other] {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(judged, (true, false), "its own id only");
        assert!(!stranger, "a process that is not a broker");
        assert!(!is_broker("999999999", 1, &broker_dir), "a pid that is gone");
    }
}
