//! `chorus subscribe`: print a topic's messages in order, one line each (see `shown`), until
//! `--count`, `--until-end`, `--timeout` or Ctrl-C. Given one broker, it reads that broker's copy
//! of the log, follower or not: how an operator compares replicas.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use chorus_consumers::{Subscriber, SubscriberConfig};
use chorus_protocol::pb;
use clap::Args;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::shared::{connect_with, parse_duration, parse_start};
use super::shown::{message_json, message_line};
use crate::target::Target;

#[derive(Debug, Args)]
pub struct SubscribeArgs {
    #[command(flatten)]
    pub target: Target,
    pub topic: String,
    /// A durable subscription's name: it resumes after its last commit, and commits each message
    /// printed.
    #[arg(long)]
    pub subscription: Option<String>,
    /// Where a new subscription starts: earliest, latest, a sequence, or time:MS (the first
    /// message committed at or after MS, in ms since the Unix epoch).
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop at the topic's last message as of now, instead of waiting for new ones.
    #[arg(long)]
    pub until_end: bool,
    /// Stop when no message came for this long (500ms, 10s, 2m). With --count, fewer messages
    /// than asked is an error.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

pub async fn subscribe(args: SubscribeArgs) -> anyhow::Result<ExitCode> {
    let one_broker = args.target.brokers.as_ref().is_some_and(|brokers| brokers.len() == 1);
    let client = connect_with(&args.target, |config| config.follow_leader = !one_broker).await?;
    let end_seq = match args.until_end {
        true => Some(client.call(pb::DescribeTopic { name: args.topic.clone() }).await?.last_seq),
        false => None,
    };
    let mut config = match &args.subscription {
        Some(name) => SubscriberConfig::durable(&args.topic, name),
        None => SubscriberConfig::ephemeral(&args.topic),
    };
    config.start = parse_start(&args.from)?;
    let mut subscriber = Subscriber::open(&client, config).await?;
    let mut seen = 0;
    let mut stdout = tokio::io::stdout();
    let past_end = |next_seq: u64| end_seq.is_some_and(|end| next_seq > end);
    let mut done = past_end(subscriber.start_seq()) || args.count == Some(0);
    while !done {
        let next = async {
            match args.timeout {
                Some(timeout) => tokio::time::timeout(timeout, subscriber.next()).await.ok(),
                None => Some(subscriber.next().await),
            }
        };
        let message = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            message = next => match message {
                Some(Some(message)) => message?,
                Some(None) => break,
                None => match args.count {
                    Some(count) => bail!("{seen} of {count} messages came within {:?}", args.timeout.unwrap_or_default()),
                    None => break,
                },
            },
        };
        let line = match args.target.json {
            true => message_json(&args.topic, &message).to_string(),
            false => message_line(&message),
        };
        stdout.write_all(format!("{line}\n").as_bytes()).await?;
        seen += 1;
        if args.subscription.is_some() {
            subscriber.commit(message.seq).await?;
        }
        done = past_end(message.seq + 1) || args.count.is_some_and(|count| seen >= count);
    }
    stdout.flush().await?;
    Ok(ExitCode::SUCCESS)
}
