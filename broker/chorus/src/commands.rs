//! Everyday client commands. Each takes `--brokers` and, where it prints data, `--json`.

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context;
use chorus_consumers::{
    Client, Delivered, Job, Message, Producer, ProducerConfig, Start, Subscriber, SubscriberConfig, WorkerConfig,
    WorkerPool,
};
use chorus_protocol::Exchange;
use chorus_protocol::pb;
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::local::{first_view, status_of};
use crate::target::Target;

pub async fn connect(target: &Target) -> anyhow::Result<Client> {
    let resolved = target.resolve()?;
    let config = resolved.client_config("chorus-cli")?;
    Client::with_config(config).await.with_context(|| format!("connecting to {}", resolved.brokers.join(",")))
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub target: Target,
    pub topic: String,
    /// Messages to publish; without any, each line of standard input is one.
    pub messages: Vec<String>,
    /// A key for every message.
    #[arg(long)]
    pub key: Option<String>,
}

pub async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.target).await?;
    let producer = Producer::new(client, ProducerConfig::default());
    let message = |text: String| {
        let message = Message::new(text);
        match &args.key {
            Some(key) => message.key(key.clone()),
            None => message,
        }
    };
    let mut receipts = Vec::new();
    if args.messages.is_empty() {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            receipts.push(producer.enqueue(&args.topic, message(line)).await?);
            if receipts.len() % 100_000 == 0 {
                eprintln!("queued {} messages", receipts.len());
            }
        }
    } else {
        for text in args.messages.clone() {
            receipts.push(producer.enqueue(&args.topic, message(text)).await?);
        }
    }
    let (mut first, mut last, count) = (u64::MAX, 0, receipts.len());
    for receipt in receipts {
        let receipt = receipt.await.context("producer stopped")??;
        first = first.min(receipt.seq);
        last = last.max(receipt.seq);
    }
    producer.close().await;
    if args.target.json {
        println!("{}", json!({"topic": args.topic, "published": count, "first_seq": first, "last_seq": last}));
    } else if count > 0 {
        println!("published {count} message(s) to {}: sequences {first}..={last}", args.topic);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct SubscribeArgs {
    #[command(flatten)]
    pub target: Target,
    pub topic: String,
    /// A durable subscription's name: it resumes after its last commit.
    #[arg(long)]
    pub subscription: Option<String>,
    /// Where a new subscription starts: earliest, latest, or a sequence.
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
}

fn parse_start(text: &str) -> anyhow::Result<Start> {
    Ok(match text {
        "earliest" => Start::Earliest,
        "latest" => Start::Latest,
        seq => Start::Seq(
            seq.parse().with_context(|| format!("--from takes earliest, latest or a sequence, not {seq:?}"))?,
        ),
    })
}

fn delivered_json(topic: &str, message: &Delivered) -> serde_json::Value {
    json!({
        "topic": topic,
        "seq": message.seq,
        "log_index": message.log_index,
        "batch_pos": message.batch_pos,
        "time_ms": message.time_ms,
        "key": message.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "payload": String::from_utf8_lossy(&message.payload),
    })
}

pub async fn subscribe(args: SubscribeArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.target).await?;
    let mut config = match &args.subscription {
        Some(name) => SubscriberConfig::durable(&args.topic, name),
        None => SubscriberConfig::ephemeral(&args.topic),
    };
    config.start = parse_start(&args.from)?;
    let mut subscriber = Subscriber::open(&client, config).await?;
    let mut seen = 0;
    let mut stdout = tokio::io::stdout();
    while args.count.is_none_or(|count| seen < count) {
        let message = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            message = subscriber.next() => match message {
                Some(message) => message?,
                None => break,
            },
        };
        let line = if args.target.json {
            delivered_json(&args.topic, &message).to_string()
        } else {
            format!("{}\t{}", message.seq, String::from_utf8_lossy(&message.payload))
        };
        stdout.write_all(format!("{line}\n").as_bytes()).await?;
        seen += 1;
        if args.subscription.is_some() {
            subscriber.commit(message.seq).await?;
        }
    }
    stdout.flush().await?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct WorkArgs {
    #[command(flatten)]
    pub target: Target,
    pub topic: String,
    pub group: String,
    /// Commands running at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Lease length; the lease is extended while the command runs.
    #[arg(long, default_value_t = 30_000)]
    pub lease_ms: u64,
    /// Stop after this many messages were handled.
    #[arg(long)]
    pub count: Option<u64>,
    /// The command to run; gets the payload on stdin and CHORUS_SEQ, CHORUS_DELIVERY in its
    /// environment. Exit 0 acks the message; anything else nacks it.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub async fn work(args: WorkArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.target).await?;
    let mut config = WorkerConfig::new(&args.topic, &args.group);
    config.concurrency = args.concurrency;
    config.lease = Duration::from_millis(args.lease_ms);
    let handled = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let (command, json) = (std::sync::Arc::new(args.command.clone()), args.target.json);
    let counter = std::sync::Arc::clone(&handled);
    let pool = WorkerPool::start(client, config, move |job: Job| {
        let (command, counter) = (std::sync::Arc::clone(&command), std::sync::Arc::clone(&counter));
        async move {
            let outcome = run_command(&command, &job).await;
            let ok = outcome.is_ok();
            if json {
                println!("{}", json!({"seq": job.message.seq, "delivery": job.delivery_count, "ok": ok}));
            } else {
                println!("{}\t{}\t{}", job.message.seq, job.delivery_count, if ok { "ack" } else { "nack" });
            }
            counter.add_permits(1);
            outcome
        }
    });
    match args.count {
        Some(count) => {
            let done = handled.acquire_many(count as u32);
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                permits = done => drop(permits),
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    pool.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn run_command(command: &[String], job: &Job) -> Result<(), String> {
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("CHORUS_SEQ", job.message.seq.to_string())
        .env("CHORUS_DELIVERY", job.delivery_count.to_string())
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", command[0]))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&job.message.payload).await;
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    if status.success() { Ok(()) } else { Err(format!("{:?} exited with {status}", command[0])) }
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    Create {
        #[command(flatten)]
        target: Target,
        name: String,
        /// Delete messages once every group acked them and every subscription moved past them.
        #[arg(long)]
        work_queue: bool,
        #[arg(long)]
        max_messages: Option<u64>,
        #[arg(long)]
        max_bytes: Option<u64>,
        #[arg(long)]
        max_age_ms: Option<u64>,
    },
    List {
        #[command(flatten)]
        target: Target,
    },
    Describe {
        #[command(flatten)]
        target: Target,
        name: String,
    },
    Delete {
        #[command(flatten)]
        target: Target,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    Create {
        #[command(flatten)]
        target: Target,
        topic: String,
        name: String,
        #[arg(long)]
        lease_ms: Option<u64>,
        /// Deliveries before a message is dead-lettered (0: unlimited).
        #[arg(long, default_value_t = 0)]
        max_deliveries: u32,
        #[arg(long)]
        dead_letter: Option<String>,
        /// Lease one message per key at a time, in order.
        #[arg(long)]
        per_key: bool,
        /// earliest, latest, or a sequence.
        #[arg(long, default_value = "earliest")]
        from: String,
    },
    List {
        #[command(flatten)]
        target: Target,
        topic: String,
    },
    Describe {
        #[command(flatten)]
        target: Target,
        topic: String,
        name: String,
    },
    Delete {
        #[command(flatten)]
        target: Target,
        topic: String,
        name: String,
    },
}

pub async fn topic(command: TopicCommand) -> anyhow::Result<ExitCode> {
    match command {
        TopicCommand::Create { target, name, work_queue, max_messages, max_bytes, max_age_ms } => {
            let retention = if work_queue { pb::RetentionPolicy::WorkQueue } else { pb::RetentionPolicy::Limits };
            let config = pb::TopicConfig {
                retention: retention as i32,
                messages_max: max_messages,
                bytes_max: max_bytes,
                age_ms_max: max_age_ms,
                dedup_window_ms: None,
            };
            answer(&target, pb::CreateTopic { name, config: Some(config) }).await
        }
        TopicCommand::List { target } => answer(&target, pb::ListTopics::default()).await,
        TopicCommand::Describe { target, name } => answer(&target, pb::DescribeTopic { name }).await,
        TopicCommand::Delete { target, name } => answer(&target, pb::DeleteTopic { name }).await,
    }
}

pub async fn group(command: GroupCommand) -> anyhow::Result<ExitCode> {
    match command {
        GroupCommand::Create { target, topic, name, lease_ms, max_deliveries, dead_letter, per_key, from } => {
            let start = match parse_start(&from)? {
                Start::Earliest => pb::start_position::Position::Earliest(pb::Empty {}),
                Start::Latest => pb::start_position::Position::Latest(pb::Empty {}),
                Start::Seq(seq) => pb::start_position::Position::Seq(seq),
                Start::TimeMs(time_ms) => pb::start_position::Position::TimeMs(time_ms),
            };
            let ordering = if per_key { pb::KeyOrdering::PerKey } else { pb::KeyOrdering::Unordered };
            let config = pb::GroupConfig {
                lease_ms_default: lease_ms,
                deliveries_max: max_deliveries,
                dead_letter_topic: dead_letter,
                start: Some(pb::StartPosition { position: Some(start) }),
                ordering: ordering as i32,
            };
            answer(&target, pb::CreateGroup { topic, name, config: Some(config) }).await
        }
        GroupCommand::List { target, topic } => answer(&target, pb::ListGroups { topic }).await,
        GroupCommand::Describe { target, topic, name } => answer(&target, pb::DescribeGroup { topic, name }).await,
        GroupCommand::Delete { target, topic, name } => answer(&target, pb::DeleteGroup { topic, name }).await,
    }
}

/// Sends an admin request and prints its answer, as JSON with `--json`.
pub async fn answer<R: Exchange<Answer: Shown>>(target: &Target, request: R) -> anyhow::Result<ExitCode> {
    let client = connect(target).await?;
    let answer = client.call(request).await?;
    match target.json {
        true => println!("{}", answer.json()),
        false => answer.print(),
    }
    Ok(ExitCode::SUCCESS)
}

/// An answer the command line shows: as text for people, or as JSON.
pub trait Shown {
    fn json(&self) -> serde_json::Value;
    fn print(&self);
}

impl Shown for pb::Empty {
    fn json(&self) -> serde_json::Value {
        json!({"ok": true})
    }

    fn print(&self) {
        println!("ok");
    }
}

impl Shown for pb::TopicInfo {
    fn json(&self) -> serde_json::Value {
        topic_json(self)
    }

    fn print(&self) {
        print_topic(self);
    }
}

impl Shown for pb::TopicList {
    fn json(&self) -> serde_json::Value {
        json!(self.topics.iter().map(topic_json).collect::<Vec<_>>())
    }

    fn print(&self) {
        println!("{:<24} {:>10} {:>10} {:>8} {:>6}", "topic", "messages", "last_seq", "groups", "subs");
        for t in &self.topics {
            let (groups, subs) = (t.groups.len(), t.subscriptions.len());
            println!("{:<24} {:>10} {:>10} {:>8} {:>6}", t.name, t.messages, t.last_seq, groups, subs);
        }
    }
}

impl Shown for pb::GroupInfo {
    fn json(&self) -> serde_json::Value {
        group_json(self)
    }

    fn print(&self) {
        print_groups(std::slice::from_ref(self));
    }
}

impl Shown for pb::GroupList {
    fn json(&self) -> serde_json::Value {
        json!(self.groups.iter().map(group_json).collect::<Vec<_>>())
    }

    fn print(&self) {
        print_groups(&self.groups);
    }
}

fn topic_json(topic: &pb::TopicInfo) -> serde_json::Value {
    json!({
        "name": topic.name,
        "messages": topic.messages,
        "bytes": topic.bytes,
        "first_seq": topic.first_seq,
        "last_seq": topic.last_seq,
        "groups": topic.groups.iter().map(group_json).collect::<Vec<_>>(),
        "subscriptions": topic.subscriptions.iter().map(|s| json!({"name": s.name, "next_seq": s.next_seq, "lag": s.lag})).collect::<Vec<_>>(),
    })
}

fn group_json(group: &pb::GroupInfo) -> serde_json::Value {
    json!({
        "topic": group.topic,
        "name": group.name,
        "backlog": group.backlog,
        "leased": group.leased,
        "waiting_for_key": group.waiting_for_key,
        "delivered_total": group.delivered_total,
        "acked_total": group.acked_total,
        "nacked_total": group.nacked_total,
        "expired_total": group.expired_total,
        "dead_lettered_total": group.dead_lettered_total,
        "dropped_total": group.dropped_total,
    })
}

fn print_topic(topic: &pb::TopicInfo) {
    println!(
        "topic {}: {} messages ({} bytes), sequences {}..={}",
        topic.name, topic.messages, topic.bytes, topic.first_seq, topic.last_seq
    );
    if !topic.groups.is_empty() {
        print_groups(&topic.groups);
    }
    for sub in &topic.subscriptions {
        println!("  subscription {:<16} next {:>8}  lag {:>8}", sub.name, sub.next_seq, sub.lag);
    }
}

fn print_groups(groups: &[pb::GroupInfo]) {
    println!(
        "  {:<16} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8}",
        "group", "backlog", "leased", "delivered", "acked", "expired", "dead"
    );
    for g in groups {
        println!(
            "  {:<16} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8}",
            g.name, g.backlog, g.leased, g.delivered_total, g.acked_total, g.expired_total, g.dead_lettered_total
        );
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let resolved = args.target.resolve()?;
    let options = resolved.connect_options("chorus-cli")?;
    let view = first_view(&resolved.brokers, &options).await?;
    // Ask every member for its own role and indexes; the leader knows each follower's lag.
    let mut rows = Vec::new();
    let mut lags = std::collections::BTreeMap::new();
    for broker in &view.brokers {
        let own = status_of(&broker.client_addr, &options).await;
        if let Some(own) = &own
            && own.role == "leader"
        {
            lags = own.brokers.iter().map(|b| (b.id, b.lag)).collect();
        }
        rows.push((broker.clone(), own));
    }
    if args.target.json {
        let brokers: Vec<_> = rows
            .iter()
            .map(|(b, own)| {
                json!({
                    "id": b.id, "client_addr": b.client_addr, "voter": b.voter,
                    "role": own.as_ref().map(|s| s.role.clone()), "term": own.as_ref().map(|s| s.term),
                    "leader_id": own.as_ref().and_then(|s| s.leader_id),
                    "commit_index": own.as_ref().map(|s| s.commit_index), "applied_index": own.as_ref().map(|s| s.applied_index),
                    "lag": lags.get(&b.id).copied().flatten(),
                    "repair_floor": own.as_ref().and_then(|s| s.repair_floor),
                })
            })
            .collect();
        println!("{}", json!({"leader_id": view.leader_id, "brokers": brokers}));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<7} {:<18} {:<10} {:>6} {:>7} {:>9} {:>9} {:>6}",
        "broker", "clients", "role", "term", "leader", "commit", "applied", "lag"
    );
    let mut repairing = Vec::new();
    for (broker, own) in rows {
        let lag = lags.get(&broker.id).copied().flatten().map_or("-".to_owned(), |l| l.to_string());
        match own {
            Some(s) => {
                println!(
                    "{:<7} {:<18} {:<10} {:>6} {:>7} {:>9} {:>9} {:>6}",
                    broker.id,
                    broker.client_addr,
                    s.role,
                    s.term,
                    s.leader_id.map_or("-".into(), |l| l.to_string()),
                    s.commit_index,
                    s.applied_index,
                    lag
                );
                repairing.extend(s.repair_floor.map(|floor| (broker.id, floor)));
            }
            None => println!("{:<7} {:<18} {:<10}", broker.id, broker.client_addr, "down"),
        }
    }
    for (id, floor) in repairing {
        println!("broker {id} is repairing a damaged log through index {floor}: it does not vote until then");
    }
    Ok(ExitCode::SUCCESS)
}
