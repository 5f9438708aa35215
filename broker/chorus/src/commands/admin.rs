//! `chorus topic` and `chorus group`: create, list, describe and delete, printing each answer as
//! text for people (configuration included) or as JSON.

use std::process::ExitCode;

use chorus_protocol::Exchange;
use chorus_protocol::pb;
use clap::{Args, Subcommand};
use serde_json::json;

use super::shared::{connect, start_to_pb};
use super::shown::{escaped, stored_line};
use crate::target::Target;

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic; creating it again with the same configuration is a no-op.
    Create {
        #[command(flatten)]
        target: Target,
        name: String,
        /// Delete messages once every group acked them and every subscription moved past them.
        #[arg(long)]
        work_queue: bool,
        #[command(flatten)]
        limits: TopicLimits,
    },
    /// List the topics with their message counts.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// A topic's configuration, messages, work groups and subscriptions.
    Describe {
        #[command(flatten)]
        target: Target,
        name: String,
    },
    /// Change a topic's limits in place (its retention policy stays); tighter limits trim at once.
    /// A limit not given stays as it is; 0 removes it.
    Edit {
        #[command(flatten)]
        target: Target,
        name: String,
        #[command(flatten)]
        limits: TopicLimits,
    },
    /// Move messages from the head of a dead-letter topic back to the topics they came from, with
    /// their key and headers, and delete them from it, atomically. Needs admin.
    Redrive {
        #[command(flatten)]
        target: Target,
        /// The dead-letter topic.
        name: String,
        /// Messages to move at most (1 to 1024).
        #[arg(long, default_value_t = 100)]
        count: u32,
    },
    /// Delete a topic, its messages, groups and subscriptions. Refused while a work group uses the
    /// topic as its dead-letter topic (its exhausted messages would then be dropped), unless --force.
    Delete {
        #[command(flatten)]
        target: Target,
        name: String,
        /// Delete it even if work groups use it as their dead-letter topic.
        #[arg(long)]
        force: bool,
    },
}

/// A topic's retention limits, as `topic create` and `topic edit` take them.
#[derive(Debug, Args)]
pub struct TopicLimits {
    /// Keep at most this many messages; the oldest go first (edit: 0 removes the limit).
    #[arg(long)]
    max_messages: Option<u64>,
    /// Keep at most this many payload, key and header bytes; the oldest messages go first (edit:
    /// 0 removes the limit).
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Delete messages older than this many ms after they were committed (edit: 0 removes the
    /// limit).
    #[arg(long)]
    max_age_ms: Option<u64>,
}

impl TopicLimits {
    /// `config` with these limits over it: a limit not given stays, 0 removes one.
    fn over(&self, mut config: pb::TopicConfig) -> pb::TopicConfig {
        let set = |limit: Option<u64>, old: Option<u64>| match limit {
            Some(0) => None,
            Some(limit) => Some(limit),
            None => old,
        };
        config.messages_max = set(self.max_messages, config.messages_max);
        config.bytes_max = set(self.max_bytes, config.bytes_max);
        config.age_ms_max = set(self.max_age_ms, config.age_ms_max);
        config
    }
}

/// A group's settings, as `group create` and `group edit` take them.
#[derive(Debug, Args)]
pub struct GroupSettings {
    /// How long a lease lasts unless a worker asks for another length [create's default: 30000].
    #[arg(long)]
    lease_ms: Option<u64>,
    /// Deliveries before a message is dead-lettered (0: unlimited) [create's default: 0].
    #[arg(long)]
    max_deliveries: Option<u32>,
    /// Where a message goes after --max-deliveries (a topic that exists; without one, such
    /// messages are dropped and counted).
    #[arg(long)]
    dead_letter: Option<String>,
}

impl GroupSettings {
    /// `config` with these settings over it: what is not given stays.
    fn over(self, mut config: pb::GroupConfig) -> pb::GroupConfig {
        config.lease_ms_default = self.lease_ms.or(config.lease_ms_default);
        config.deliveries_max = self.max_deliveries.unwrap_or(config.deliveries_max);
        config.dead_letter_topic = self.dead_letter.or(config.dead_letter_topic);
        config
    }
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a work group: its workers share the topic's messages, each leased to one at a time.
    Create {
        #[command(flatten)]
        target: Target,
        topic: String,
        name: String,
        #[command(flatten)]
        settings: GroupSettings,
        /// Lease one message per key at a time, in order.
        #[arg(long)]
        per_key: bool,
        /// Where the group starts: earliest, latest, a sequence, or time:MS.
        #[arg(long, default_value = "earliest")]
        from: String,
    },
    /// List a topic's work groups.
    List {
        #[command(flatten)]
        target: Target,
        topic: String,
    },
    /// A group's configuration and counts.
    Describe {
        #[command(flatten)]
        target: Target,
        topic: String,
        name: String,
    },
    /// Change a group's lease time, max deliveries or dead-letter topic in place; what is not
    /// given stays as it is. Leases already granted keep their deadlines.
    Edit {
        #[command(flatten)]
        target: Target,
        topic: String,
        name: String,
        #[command(flatten)]
        settings: GroupSettings,
        /// Drop messages past --max-deliveries instead of dead-lettering them.
        #[arg(long, conflicts_with = "dead_letter")]
        no_dead_letter: bool,
    },
    /// Browse a group's unfinished messages without consuming them: ready, delayed, leased (to
    /// whom, until when) or waiting behind their key.
    Peek {
        #[command(flatten)]
        target: Target,
        topic: String,
        name: String,
        /// Start after this sequence.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Messages to show at most (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Delete a work group; its leases end.
    Delete {
        #[command(flatten)]
        target: Target,
        topic: String,
        name: String,
    },
}

pub async fn topic(command: TopicCommand) -> anyhow::Result<ExitCode> {
    match command {
        TopicCommand::Create { target, name, work_queue, limits } => {
            let retention = if work_queue { pb::RetentionPolicy::WorkQueue } else { pb::RetentionPolicy::Limits };
            let config = limits.over(pb::TopicConfig { retention: retention as i32, ..pb::TopicConfig::default() });
            answer(&target, pb::CreateTopic { name, config: Some(config) }).await
        }
        TopicCommand::Edit { target, name, limits } => {
            let client = connect(&target).await?;
            let described = client.call(pb::DescribeTopic { name: name.clone() }).await?;
            let config = limits.over(described.config.unwrap_or_default());
            show(&target, client.call(pb::UpdateTopic { name, config: Some(config) }).await?)
        }
        TopicCommand::Redrive { target, name, count } => {
            answer(&target, pb::RedriveRequest { topic: name, count_max: count }).await
        }
        TopicCommand::List { target } => answer(&target, pb::ListTopics::default()).await,
        TopicCommand::Describe { target, name } => answer(&target, pb::DescribeTopic { name }).await,
        TopicCommand::Delete { target, name, force } => {
            let users = dead_letter_users(&target, &name).await?;
            if !users.is_empty() && !force {
                anyhow::bail!(
                    "topic {name:?} is the dead-letter topic of {}: their exhausted messages would be dropped \
                     (hint: delete or re-create those groups first, or pass --force)",
                    users.join(", ")
                );
            }
            answer(&target, pb::DeleteTopic { name }).await
        }
    }
}

pub async fn group(command: GroupCommand) -> anyhow::Result<ExitCode> {
    match command {
        GroupCommand::Create { target, topic, name, settings, per_key, from } => {
            let ordering = if per_key { pb::KeyOrdering::PerKey } else { pb::KeyOrdering::Unordered };
            let base = pb::GroupConfig {
                start: Some(start_to_pb(&from)?),
                ordering: ordering as i32,
                ..pb::GroupConfig::default()
            };
            answer(&target, pb::CreateGroup { topic, name, config: Some(settings.over(base)) }).await
        }
        GroupCommand::Edit { target, topic, name, settings, no_dead_letter } => {
            let client = connect(&target).await?;
            let described = client.call(pb::DescribeGroup { topic: topic.clone(), name: name.clone() }).await?;
            let mut config = settings.over(described.config.unwrap_or_default());
            if no_dead_letter {
                config.dead_letter_topic = None;
            }
            show(&target, client.call(pb::UpdateGroup { topic, name, config: Some(config) }).await?)
        }
        GroupCommand::Peek { target, topic, name, after, limit } => {
            answer(&target, pb::PeekGroup { topic, group: name, after_seq: after, limit }).await
        }
        GroupCommand::List { target, topic } => answer(&target, pb::ListGroups { topic }).await,
        GroupCommand::Describe { target, topic, name } => answer(&target, pb::DescribeGroup { topic, name }).await,
        GroupCommand::Delete { target, topic, name } => answer(&target, pb::DeleteGroup { topic, name }).await,
    }
}

/// The groups (`topic/group`) whose dead-letter topic is `name`, from every topic, page by page.
async fn dead_letter_users(target: &Target, name: &str) -> anyhow::Result<Vec<String>> {
    const PAGE: u32 = 1000;
    let client = connect(target).await?;
    let mut users = Vec::new();
    let mut after = String::new();
    loop {
        let page = client.call(pb::ListTopics { after: after.clone(), limit: PAGE }).await?;
        for topic in &page.topics {
            let uses = |group: &&pb::GroupInfo| {
                group.config.as_ref().and_then(|config| config.dead_letter_topic.as_deref()) == Some(name)
            };
            users.extend(topic.groups.iter().filter(uses).map(|group| format!("{}/{}", topic.name, group.name)));
        }
        match page.topics.last() {
            Some(last) if page.topics.len() == PAGE as usize => after = last.name.clone(),
            _ => return Ok(users),
        }
    }
}

/// Sends an admin request and prints its answer, as JSON with `--json`.
pub async fn answer<R: Exchange<Answer: Shown>>(target: &Target, request: R) -> anyhow::Result<ExitCode> {
    let client = connect(target).await?;
    show(target, client.call(request).await?)
}

/// Prints an answer, as JSON with `--json`.
pub fn show(target: &Target, answer: impl Shown) -> anyhow::Result<ExitCode> {
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

fn topic_config_json(config: &pb::TopicConfig) -> serde_json::Value {
    json!({
        "retention": retention_name(config.retention()),
        "max_messages": config.messages_max,
        "max_bytes": config.bytes_max,
        "max_age_ms": config.age_ms_max,
        "dedup_window_ms": config.dedup_window_ms,
    })
}

fn group_config_json(config: &pb::GroupConfig) -> serde_json::Value {
    json!({
        "lease_ms": config.lease_ms_default,
        "max_deliveries": config.deliveries_max,
        "dead_letter": config.dead_letter_topic,
        "per_key": config.ordering() == pb::KeyOrdering::PerKey,
    })
}

fn retention_name(retention: pb::RetentionPolicy) -> &'static str {
    match retention {
        pb::RetentionPolicy::Limits => "limits",
        pb::RetentionPolicy::WorkQueue => "work-queue",
    }
}

fn topic_json(topic: &pb::TopicInfo) -> serde_json::Value {
    json!({
        "name": topic.name,
        "config": topic.config.as_ref().map(topic_config_json),
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
        "config": group.config.as_ref().map(group_config_json),
        "next_seq": group.next_seq,
        "backlog": group.backlog,
        "leased": group.leased,
        "waiting_for_key": group.waiting_for_key,
        "delivered_total": group.delivered_total,
        "acked_total": group.acked_total,
        "nacked_total": group.nacked_total,
        "expired_total": group.expired_total,
        "dead_lettered_total": group.dead_lettered_total,
        "dropped_total": group.dropped_total,
        "consumers": group.consumers.iter().map(|c| json!({"consumer": c.consumer, "leased": c.leased})).collect::<Vec<_>>(),
    })
}

/// A topic's configuration in words: `limits (max 5 messages)`, `work-queue (no limits)`.
fn topic_config_text(config: &pb::TopicConfig) -> String {
    let limits: Vec<String> = [
        config.messages_max.map(|n| format!("max {n} messages")),
        config.bytes_max.map(|n| format!("max {n} bytes")),
        config.age_ms_max.map(|n| format!("max age {n} ms")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let limits = if limits.is_empty() { "no limits".to_owned() } else { limits.join(", ") };
    format!("{} ({limits})", retention_name(config.retention()))
}

/// A group's configuration in words.
fn group_config_text(config: &pb::GroupConfig) -> String {
    let mut parts = vec![format!("lease {} ms", config.lease_ms_default.unwrap_or_default())];
    parts.push(match config.deliveries_max {
        0 => "unlimited deliveries".to_owned(),
        n => format!("max {n} deliveries"),
    });
    match (&config.dead_letter_topic, config.deliveries_max) {
        (Some(topic), _) => parts.push(format!("dead letters to {topic}")),
        (None, 1..) => parts.push("no dead-letter topic: exhausted messages are dropped".to_owned()),
        (None, 0) => {}
    }
    if config.ordering() == pb::KeyOrdering::PerKey {
        parts.push("one message per key at a time".to_owned());
    }
    parts.join(", ")
}

fn print_topic(topic: &pb::TopicInfo) {
    println!(
        "topic {}: {} messages ({} bytes), sequences {}..={}",
        topic.name, topic.messages, topic.bytes, topic.first_seq, topic.last_seq
    );
    if let Some(config) = &topic.config {
        println!("  retention: {}", topic_config_text(config));
    }
    if !topic.groups.is_empty() {
        print_groups(&topic.groups);
    }
    for sub in &topic.subscriptions {
        println!("  subscription {:<16} next {:>8}  lag {:>8}", sub.name, sub.next_seq, sub.lag);
    }
}

fn print_groups(groups: &[pb::GroupInfo]) {
    println!(
        "  {:<16} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "group", "backlog", "leased", "delivered", "acked", "expired", "dead", "dropped"
    );
    for g in groups {
        println!(
            "  {:<16} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8}",
            g.name,
            g.backlog,
            g.leased,
            g.delivered_total,
            g.acked_total,
            g.expired_total,
            g.dead_lettered_total,
            g.dropped_total
        );
    }
    for g in groups {
        if let Some(config) = &g.config {
            println!("  {}: {}", g.name, group_config_text(config));
        }
        if !g.consumers.is_empty() {
            let holders: Vec<String> = g.consumers.iter().map(|c| format!("{} ({})", c.consumer, c.leased)).collect();
            println!("  {} leases held by: {}", g.name, holders.join(", "));
        }
    }
}

impl Shown for pb::SubscriptionInfo {
    fn json(&self) -> serde_json::Value {
        json!({"name": self.name, "next_seq": self.next_seq, "lag": self.lag})
    }

    fn print(&self) {
        println!("subscription {}: next {}, lag {}", self.name, self.next_seq, self.lag);
    }
}

impl Shown for pb::RedriveOk {
    fn json(&self) -> serde_json::Value {
        let moved: Vec<_> = self.moved.iter().map(|m| json!({"topic": m.topic, "messages": m.messages})).collect();
        json!({"moved": moved, "stopped_seq": self.stopped_seq, "stopped_why": self.stopped_why})
    }

    fn print(&self) {
        if self.moved.is_empty() {
            println!("moved nothing");
        }
        for moved in &self.moved {
            println!("moved {} message(s) back to {}", moved.messages, moved.topic);
        }
        if let Some(seq) = self.stopped_seq {
            println!("stopped at seq {seq}, which stays: {}", self.stopped_why);
        }
    }
}

fn peeked_state(state: pb::PeekedState) -> &'static str {
    match state {
        pb::PeekedState::Ready => "ready",
        pb::PeekedState::Delayed => "delayed",
        pb::PeekedState::Leased => "leased",
        pb::PeekedState::WaitingForKey => "waiting-for-key",
        pb::PeekedState::Unspecified => "unknown",
    }
}

impl Shown for pb::GroupPeek {
    fn json(&self) -> serde_json::Value {
        let messages: Vec<_> = self
            .messages
            .iter()
            .map(|peeked| {
                let mut message = peeked.message.clone().map(super::shown::stored_json).unwrap_or_default();
                let fields = message.as_object_mut().expect("an object");
                fields.insert("state".into(), json!(peeked_state(peeked.state())));
                fields.insert("deliveries".into(), json!(peeked.deliveries));
                if peeked.state() == pb::PeekedState::Leased {
                    fields.insert("consumer".into(), json!(peeked.consumer));
                    fields.insert("deadline_ms".into(), json!(peeked.deadline_ms));
                }
                if peeked.state() == pb::PeekedState::Delayed {
                    fields.insert("available_ms".into(), json!(peeked.available_ms));
                }
                message
            })
            .collect();
        json!(messages)
    }

    fn print(&self) {
        println!("{:>8} {:<16} {:>10}  {:<32} payload", "seq", "state", "deliveries", "held by / until");
        for peeked in &self.messages {
            let Some(message) = &peeked.message else { continue };
            let detail = match peeked.state() {
                pb::PeekedState::Leased => {
                    format!("{} until {}", escaped(peeked.consumer.as_bytes()), peeked.deadline_ms)
                }
                pb::PeekedState::Delayed => format!("until {}", peeked.available_ms),
                _ => String::new(),
            };
            let state = peeked_state(peeked.state());
            println!(
                "{:>8} {:<16} {:>10}  {:<32} {}",
                message.seq,
                state,
                peeked.deliveries,
                detail,
                stored_line(message)
            );
        }
    }
}
