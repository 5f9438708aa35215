//! `chorus bench`: reproducible throughput and latency figures. By default it starts a 3-broker
//! cluster of its own on loopback (fsync on every commit, as always) from the running binary, so
//! run it from a release build. It prints the conditions with the figures; `--json` prints one
//! JSON object.
//!
//! - publish: `--messages` messages of `--size` bytes through `--producers` connections, each with
//!   `--window` of them sent and not yet acknowledged, through the client library's batching
//!   `Producer` with its default settings (or, with `--raw`, one message per request); msg/s,
//!   MB/s, and each message's ack latency p50/p99/p99.9 and max;
//! - work queue: as many tasks published (as above) while `--workers` workers lease up to 256 at a
//!   time and ack them; tasks/s from the first publish to the last ack;
//! - fan-out: `--subscribers` subscribers read the published topic; deliveries/s;
//! - broker cost (own cluster only): CPU seconds of the brokers, the largest one's peak RSS in
//!   each workload (the peak is reset before each, through /proc/PID/clear_refs) and its RSS at
//!   the end, and the bytes the busiest one wrote to disk per payload byte while publishing;
//!   `--publish-only` skips the work queue and fan-out, leaving the messages
//!   backlogged, so a large `--messages` measures memory against the backlog;
//! - `--peer nats`: the publish workload against NATS JetStream too (`bench_nats`), with the
//!   ratios;
//! - `--tls`, `--auth`: its own cluster secured as `chorus up` secures one, for the cost of TLS
//!   and of checking every command's permissions.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use chorus_consumers::{Client, Connection, Producer, ProducerConfig, Subscriber, SubscriberConfig};
use chorus_protocol::pb;
use clap::Args;
use futures::StreamExt;
use serde_json::json;

mod lanes;
#[cfg(feature = "nats")]
mod nats;

use crate::local::{LocalCluster, LocalSecurity, Ports, wait_for_leader};
use lanes::{PublishFigures, publish_lanes};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Benchmark a running cluster instead of starting one (comma-separated client addresses).
    #[arg(long, value_delimiter = ',')]
    pub brokers: Option<Vec<String>>,
    /// Messages to publish.
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Messages in flight on each connection: sent and not yet acknowledged.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Connections publishing at once, each with its own `--window` (and, without `--raw`, its
    /// own `Producer`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub producers: u16,
    /// Publish one message per request on one connection, instead of through the client
    /// library's batching `Producer`.
    #[arg(long)]
    pub raw: bool,
    /// Run only the publish workload, leaving the messages backlogged: with a large
    /// `--messages`, it measures broker memory against the backlog.
    #[arg(long)]
    pub publish_only: bool,
    /// Workers in the work-queue run, each keeping its leases and acks pipelined.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Subscribers in the fan-out run.
    #[arg(long, default_value_t = 8)]
    pub subscribers: usize,
    /// Also run the publish workload against this system, in the same run.
    #[arg(long, value_enum)]
    pub peer: Option<Peer>,
    /// Print the figures as one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Its own cluster with TLS on both ports (a local CA, as `chorus up` makes).
    #[arg(long)]
    pub tls: bool,
    /// Its own cluster with users: the benchmark runs as the admin, every command checked.
    #[arg(long)]
    pub auth: bool,
}

/// A system to compare with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// NATS JetStream: a 3-node cluster and an R3 file stream, fsync always and by default.
    Nats,
}

/// CPU seconds, and peak and current RSS of the largest broker, read from /proc.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    cpu_s: f64,
    peak_rss_mib: f64,
    rss_mib: f64,
}

/// Resets each broker's peak RSS to its current RSS (`5` to /proc/PID/clear_refs), so the next
/// reading is the peak of what runs in between.
fn reset_peak_rss(pids: &[u32]) {
    for pid in pids {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
}

fn broker_cost(pids: &[u32]) -> Cost {
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let mut cost = Cost::default();
    for pid in pids {
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the command name, which is in parentheses: utime is 14th, stime 15th.
            let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
            let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
            cost.cpu_s += ticks / ticks_per_s;
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let mib = |field: &str| -> f64 {
                let kib: Option<f64> = status
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
                kib.unwrap_or(0.0) / 1024.0
            };
            cost.peak_rss_mib = cost.peak_rss_mib.max(mib("VmHWM:"));
            cost.rss_mib = cost.rss_mib.max(mib("VmRSS:"));
        }
    }
    cost
}

/// Bytes each broker has caused to be written to its disk (`write_bytes` in /proc/PID/io), in
/// `pids` order; 0 where it cannot be read.
fn disk_written(pids: &[u32]) -> Vec<u64> {
    pids.iter()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/io")).ok().and_then(|io| write_bytes(&io)).unwrap_or(0))
        .collect()
}

/// The `write_bytes` field of a /proc/PID/io text.
fn write_bytes(io: &str) -> Option<u64> {
    io.lines().find_map(|line| line.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok())
}

/// Bytes the busiest broker wrote to disk between `before` and `after`, per payload byte.
fn written_per_payload_byte(before: &[u64], after: &[u64], payload_bytes: u64) -> Option<f64> {
    let busiest = before.iter().zip(after).map(|(b, a)| a.saturating_sub(*b)).max()?;
    (payload_bytes > 0 && busiest > 0).then(|| busiest as f64 / payload_bytes as f64)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let scratch = tempfile::tempdir()?;
    let (mut own, resolved) = match &args.brokers {
        Some(addrs) => {
            let target = crate::context::Overrides { brokers: Some(addrs.clone()), ..Default::default() };
            (None, target.resolve()?)
        }
        None => {
            let security = LocalSecurity { tls: args.tls, auth: args.auth };
            let ports = Ports { client: crate::demo::free_ports(3)?, peer: crate::demo::free_ports(3)?, metrics: None };
            let cluster = LocalCluster::start(scratch.path(), 3, ports, security)?;
            let resolved = cluster.resolved()?;
            (Some(cluster), resolved)
        }
    };
    let addrs = resolved.brokers.clone();
    let leader = wait_for_leader(&addrs, &resolved.connect_options("chorus-bench")?, Duration::from_secs(30)).await?;
    let leader_addr = leader
        .brokers
        .iter()
        .find(|b| b.id == leader.broker_id)
        .map(|b| b.client_addr.clone())
        .context("leader address")?;
    let pids: Vec<u32> = own.as_ref().map_or_else(Vec::new, |c| c.brokers.iter().filter_map(|b| c.pid(b.id)).collect());
    let client = Client::with_config(resolved.client_config("chorus-bench")?).await?;
    let topic = format!("bench-{:06x}", rand::random::<u32>() & 0xff_ffff);
    client.call(pb::CreateTopic { name: topic.clone(), config: None }).await?;
    client.call(pb::CreateGroup { topic: topic.clone(), name: "bench".into(), config: None }).await?;

    let work_topic = format!("{topic}-work");
    client.call(pb::CreateTopic { name: work_topic.clone(), config: None }).await?;
    client.call(pb::CreateGroup { topic: work_topic.clone(), name: "bench".into(), config: None }).await?;

    let before = broker_cost(&pids);
    let written_before = disk_written(&pids);
    reset_peak_rss(&pids);
    let publish = publish(&client, &leader_addr, &topic, &args).await?;
    let mut peaks = vec![("publish", broker_cost(&pids).peak_rss_mib)];
    let payload_bytes = args.messages * args.size as u64;
    let amplification = written_per_payload_byte(&written_before, &disk_written(&pids), payload_bytes);
    let (work, fanout) = if args.publish_only {
        (None, None)
    } else {
        reset_peak_rss(&pids);
        let work = work(&client, &leader_addr, &work_topic, &args).await?;
        peaks.push(("work queue", broker_cost(&pids).peak_rss_mib));
        reset_peak_rss(&pids);
        let fanout = fanout(&client, &topic, &args).await?;
        peaks.push(("fan-out", broker_cost(&pids).peak_rss_mib));
        (Some(work), Some(fanout))
    };
    let after = broker_cost(&pids);
    let peak_rss_mib = peaks.iter().map(|(_, mib)| *mib).fold(0.0, f64::max);
    let cpu_s = after.cpu_s - before.cpu_s;
    for name in [topic, work_topic] {
        let _ = client.call(pb::DeleteTopic { name }).await;
    }
    // The peer runs alone on the machine, as Chorus did.
    if let Some(mut cluster) = own.take() {
        cluster.stop();
    }
    let peers = match args.peer {
        Some(Peer::Nats) => compare_nats(&args).await?,
        None => Vec::new(),
    };
    let ratios = |peer: &PublishFigures| (publish.rate / peer.rate, publish.p99_ms / peer.p99_ms);

    let conditions = json!({
        "brokers": addrs.len(),
        "cluster": if pids.is_empty() { "given" } else { "own, loopback" },
        "fsync": "every commit, on a majority",
        "tls": resolved.ca.is_some(),
        "auth": resolved.user.is_some(),
        "messages": args.messages,
        "payload_bytes": args.size,
        "window": args.window,
        "producers": args.producers,
        "publisher": if args.raw { "one message per request" } else { "batching Producer" },
        "workers": args.workers,
        "subscribers": args.subscribers,
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "binary": if cfg!(debug_assertions) { "debug" } else { "release" },
    });
    let figures = json!({
        "publish": publish.json(),
        "work_queue": { "tasks_per_s": work },
        "fanout": { "deliveries_per_s": fanout },
        "brokers": if pids.is_empty() { serde_json::Value::Null } else { json!({ "cpu_s": cpu_s, "peak_rss_mib": peak_rss_mib, "peak_rss_mib_by_workload": peaks.iter().map(|(name, mib)| (name.to_string(), json!(mib))).collect::<serde_json::Map<_, _>>(), "rss_mib": after.rss_mib, "disk_bytes_per_payload_byte": amplification }) },
        "peers": peers.iter().map(|(system, figures)| {
            let (throughput, p99) = ratios(figures);
            json!({ "system": system, "publish": figures.json(), "chorus_throughput_ratio": throughput, "chorus_p99_ratio": p99 })
        }).collect::<Vec<_>>(),
    });
    if args.json {
        println!("{}", json!({ "conditions": conditions, "figures": figures }));
    } else {
        println!("conditions: {conditions}");
        println!(
            "publish:    {:.0} msg/s, {:.1} MB/s; ack latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            publish.rate,
            publish.megabytes_per_s(args.size),
            publish.p50_ms,
            publish.p99_ms,
            publish.p999_ms,
            publish.max_ms
        );
        if let (Some(work), Some(fanout)) = (work, fanout) {
            println!("work queue: {work:.0} tasks/s (publish, lease, ack)");
            println!("fan-out:    {fanout:.0} deliveries/s to {} subscribers", args.subscribers);
        }
        if !pids.is_empty() {
            let by_workload: Vec<String> = peaks.iter().map(|(name, mib)| format!("{name} {mib:.0}")).collect();
            println!(
                "brokers:    {cpu_s:.1} CPU-seconds in all; RSS peak {peak_rss_mib:.0} MiB ({} MiB), now {:.0} MiB (largest broker)",
                by_workload.join(", "),
                after.rss_mib
            );
            if let Some(amplification) = amplification {
                println!(
                    "disk:       {amplification:.2} bytes written per payload byte by the busiest broker, while publishing (write_bytes in /proc/PID/io)"
                );
            }
        }
        for (system, figures) in &peers {
            let (throughput, p99) = ratios(figures);
            println!(
                "{system}: {:.0} msg/s; ack latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms\n  Chorus/NATS: {throughput:.2}x the throughput, {p99:.2}x the p99",
                figures.rate, figures.p50_ms, figures.p99_ms, figures.p999_ms
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The publish workload against NATS JetStream, fsync always and by default.
#[cfg(feature = "nats")]
async fn compare_nats(args: &BenchArgs) -> anyhow::Result<Vec<(&'static str, PublishFigures)>> {
    use nats::{SyncMode, nats_server};
    let server = nats_server()?;
    let mut peers = Vec::new();
    for mode in [SyncMode::Always, SyncMode::Default] {
        let window = args.window * usize::from(args.producers);
        peers.push((mode.label(), nats::publish(&server, mode, args.messages, args.size, window).await?));
    }
    Ok(peers)
}

#[cfg(not(feature = "nats"))]
async fn compare_nats(_: &BenchArgs) -> anyhow::Result<Vec<(&'static str, PublishFigures)>> {
    bail!("this chorus was built without NATS support; run `cargo run --release --features nats -- bench --peer nats`")
}

/// Publishes `messages` messages of `size` bytes with `window` of them in flight, through the
/// batching `Producer` (or, with `--raw`, one request each on one connection); records each
/// message's ack latency.
async fn publish(client: &Client, addr: &str, topic: &str, args: &BenchArgs) -> anyhow::Result<PublishFigures> {
    let payload = Bytes::from(vec![b'x'; args.size]);
    let topic = topic.to_owned();
    let connections = usize::from(args.producers);
    let lanes = args.window.max(1) * connections;
    if !args.raw {
        let mut producers = Vec::with_capacity(connections);
        for _ in 0..connections {
            // A client of its own: a connection of its own.
            let client = Client::with_config(client.config().clone()).await?;
            producers.push(Producer::new(client, ProducerConfig::default()));
        }
        return publish_lanes(lanes, args.messages, move |lane| {
            let (producer, topic, payload) = (producers[lane % connections].clone(), topic.clone(), payload.clone());
            async move {
                producer.send(&topic, payload).await?;
                Ok(())
            }
        })
        .await;
    }
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        opened.push(Connection::connect_with(addr, &client.config().connect_options()).await?);
    }
    publish_lanes(lanes, args.messages, move |lane| {
        let request = pb::PublishRequest {
            topic: topic.clone(),
            messages: vec![pb::Message { payload: payload.clone(), ..Default::default() }],
            ..Default::default()
        };
        let connection = opened[lane % connections].clone();
        async move {
            connection.call(request, Duration::from_secs(30)).await.context("publish")?;
            Ok(())
        }
    })
    .await
}

/// Publishes `messages` tasks while workers lease (up to 256 at a time) and ack them, each worker
/// acking one batch while it leases the next; tasks/s from the first publish to the last ack.
async fn work(client: &Client, addr: &str, topic: &str, args: &BenchArgs) -> anyhow::Result<f64> {
    let leased_total = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let publisher = {
        let (client, addr, topic) = (client.clone(), addr.to_owned(), topic.to_owned());
        let args = args.clone();
        tokio::spawn(async move { publish(&client, &addr, &topic, &args).await })
    };
    let mut workers = Vec::new();
    for worker in 0..args.workers.max(1) {
        let connection = Connection::connect_with(addr, &client.config().connect_options()).await?;
        let (leased_total, topic, total) = (Arc::clone(&leased_total), topic.to_owned(), args.messages);
        workers.push(tokio::spawn(async move {
            // One ack in flight while the next lease is taken, as a pipelining worker would.
            let mut acking: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
            while leased_total.load(Ordering::Relaxed) < total {
                let lease = pb::LeaseRequest {
                    topic: topic.clone(),
                    group: "bench".into(),
                    consumer: format!("bench-{worker}"),
                    count_max: 256,
                    wait_ms: 200,
                    lease_ms: Some(60_000),
                };
                let leased = connection.call(lease, Duration::from_secs(30)).await?;
                if leased.messages.is_empty() {
                    continue;
                }
                leased_total.fetch_add(leased.messages.len() as u64, Ordering::Relaxed);
                if let Some(previous) = acking.take() {
                    previous.await??;
                }
                let tokens: Vec<u64> = leased.messages.iter().map(|m| m.token).collect();
                let ack = pb::AckRequest { topic: topic.clone(), group: "bench".into(), tokens };
                let connection = connection.clone();
                acking = Some(tokio::spawn(async move {
                    connection.call(ack, Duration::from_secs(30)).await?;
                    Ok(())
                }));
            }
            if let Some(last) = acking {
                last.await??;
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    publisher.await??;
    Ok(args.messages as f64 / started.elapsed().as_secs_f64())
}

/// Every subscriber reads the whole topic; deliveries/s over all of them.
async fn fanout(client: &Client, topic: &str, args: &BenchArgs) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..args.subscribers.max(1) {
        let mut config = SubscriberConfig::ephemeral(topic);
        config.credits = 4096;
        let mut subscriber = Subscriber::open(client, config).await?;
        let total = args.messages;
        readers.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < total {
                match tokio::time::timeout(Duration::from_secs(30), subscriber.next()).await {
                    Ok(Some(Ok(_))) => seen += 1,
                    other => bail!("subscriber stopped after {seen}: {other:?}"),
                }
            }
            Ok(seen)
        }));
    }
    let mut deliveries = 0;
    for reader in readers {
        deliveries += reader.await??;
    }
    Ok(deliveries as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_writes_are_read_from_proc_io_and_divided_by_the_payload() {
        let io =
            "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(write_bytes(io), Some(8192));
        assert_eq!(write_bytes("rchar: 1\n"), None);
        // The busiest broker counts: 3,000 bytes for 1,000 of payload.
        assert_eq!(written_per_payload_byte(&[100, 0, 50], &[1100, 3000, 2050], 1000), Some(3.0));
        assert_eq!(written_per_payload_byte(&[], &[], 1000), None, "no brokers of its own");
        assert_eq!(written_per_payload_byte(&[5], &[5], 1000), None, "nothing readable");
    }
}
