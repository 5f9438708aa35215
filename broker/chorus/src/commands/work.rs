//! `chorus work`: run a command once per message of a work group. The payload is the command's
//! stdin, its stdout and stderr are the user's; what `work` says about each message (ack, nack,
//! dead-lettered) goes to stderr, so the command's output stays clean. A command that cannot
//! start, and a group that does not exist, end `work` with an error; `--count N` handles exactly
//! N messages, and on exit nothing stays leased to it.

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chorus_consumers::{Job, WorkerConfig, WorkerPool};
use chorus_protocol::pb;
use clap::Args;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::shared::connect;
use crate::target::Target;

#[derive(Debug, Args)]
pub struct WorkArgs {
    #[command(flatten)]
    pub target: Target,
    pub topic: String,
    pub group: String,
    /// Commands running at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Lease length; the lease is extended while the command runs [default: the group's lease time].
    #[arg(long)]
    pub lease_ms: Option<u64>,
    /// Handle exactly this many messages, then exit.
    #[arg(long)]
    pub count: Option<u64>,
    /// The command to run; gets the payload on stdin and CHORUS_SEQ, CHORUS_DELIVERY in its
    /// environment. Exit 0 acks the message; anything else nacks it.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// How one run of the command went.
#[derive(Debug)]
enum Outcome {
    Succeeded,
    Failed(std::process::ExitStatus),
    /// The command could not be started at all: no retry will help.
    CannotStart(std::io::Error),
}

/// What `work` says about a message, given the group's configuration.
struct Reporter {
    json: bool,
    deliveries_max: u32,
    dead_letter_topic: Option<String>,
}

impl Reporter {
    fn report(&self, job: &Job, outcome: &Outcome) {
        let (seq, delivery) = (job.message.seq, job.delivery_count);
        let last_delivery = self.deliveries_max > 0 && delivery >= self.deliveries_max;
        let (verdict, detail) = match outcome {
            Outcome::Succeeded => ("ack", String::new()),
            Outcome::Failed(status) => ("nack", format!("the command {status}")),
            Outcome::CannotStart(error) => ("nack", format!("the command cannot start: {error}")),
        };
        let after = match (verdict, last_delivery, &self.dead_letter_topic) {
            ("nack", true, Some(topic)) => format!("dead-lettered to {topic} after {delivery} deliveries"),
            ("nack", true, None) => format!("dropped after {delivery} deliveries (the group has no dead-letter topic)"),
            _ => String::new(),
        };
        if self.json {
            let line = json!({"seq": seq, "delivery": delivery, "result": verdict, "detail": detail, "after": after});
            eprintln!("{line}");
        } else {
            let said: Vec<&str> = [verdict, &detail, &after].into_iter().filter(|s| !s.is_empty()).collect();
            eprintln!("work: seq {seq} delivery {delivery}: {}", said.join("; "));
        }
    }
}

pub async fn work(args: WorkArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.target).await?;
    let group = client.call(pb::DescribeGroup { topic: args.topic.clone(), name: args.group.clone() }).await?;
    let group_config = group.config.unwrap_or_default();
    let reporter = Arc::new(Reporter {
        json: args.target.json,
        deliveries_max: group_config.deliveries_max,
        dead_letter_topic: group_config.dead_letter_topic.clone(),
    });
    let mut config = WorkerConfig::new(&args.topic, &args.group);
    config.concurrency = args.concurrency;
    config.lease = args.lease_ms.map(Duration::from_millis);
    config.jobs_max = args.count;
    let (broken, mut cannot_start) = mpsc::channel::<String>(1);
    let command = Arc::new(args.command.clone());
    let mut pool = WorkerPool::start(client, config, move |job: Job| {
        let (command, reporter, broken) = (Arc::clone(&command), Arc::clone(&reporter), broken.clone());
        async move {
            let outcome = run_command(&command, &job).await;
            reporter.report(&job, &outcome);
            match outcome {
                Outcome::Succeeded => Ok(()),
                Outcome::Failed(status) => Err(format!("exited with {status}")),
                Outcome::CannotStart(error) => {
                    let _ = broken.try_send(format!("cannot run {:?}: {error}", command[0]));
                    Err(error.to_string())
                }
            }
        }
    });
    let broken = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        () = pool.finished() => None,
        why = cannot_start.recv() => why,
    };
    pool.shutdown().await.context("the work group")?;
    match broken {
        Some(why) => anyhow::bail!(why),
        None => Ok(ExitCode::SUCCESS),
    }
}

async fn run_command(command: &[String], job: &Job) -> Outcome {
    let spawned = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("CHORUS_SEQ", job.message.seq.to_string())
        .env("CHORUS_DELIVERY", job.delivery_count.to_string())
        .stdin(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => return Outcome::CannotStart(error),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input may close stdin early; that is its business.
        let _ = stdin.write_all(&job.message.payload).await;
    }
    match child.wait().await {
        Ok(status) if status.success() => Outcome::Succeeded,
        Ok(status) => Outcome::Failed(status),
        Err(error) => Outcome::CannotStart(error),
    }
}
