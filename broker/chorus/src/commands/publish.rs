//! `chorus publish`: messages from arguments, a file, or standard input (streamed: a line is
//! published as soon as it is read, and acknowledged in the order sent). With `--json`, one line
//! per message says where it was stored; without, one summary line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use chorus_consumers::{ClientError, Message, Producer, ProducerConfig, Receipt};
use clap::Args;
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot};

use super::shared::{connect, parse_duration};
use crate::target::Target;

/// Receipts queued between the reader and the printer: reading stdin waits when they are full.
const RECEIPTS_QUEUED_MAX: usize = 4096;

#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub target: Target,
    pub topic: String,
    /// Messages to publish; without any (and without --file), each line of standard input is one.
    #[arg(conflicts_with = "file")]
    pub messages: Vec<String>,
    /// Publish the whole content of this file as one message (binary is fine); `-` reads
    /// standard input to its end.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// A key for every message: a work group with --per-key hands out one message per key at a time.
    #[arg(long)]
    pub key: Option<String>,
    /// A header for every message, as NAME=VALUE; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Give up when a message is not acknowledged within this long (500ms, 10s, 2m) [default:
    /// the client's retry deadline, 30s]. A message given up on may still be stored.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

type Pending = oneshot::Receiver<Result<Receipt, ClientError>>;

pub async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.target).await?;
    let producer = Producer::new(client, ProducerConfig::default());
    let (pending, receipts) = mpsc::channel(RECEIPTS_QUEUED_MAX);
    let printer = tokio::spawn(print_receipts(args.topic.clone(), args.target.json, args.timeout, receipts));
    let read = read_messages(&args, &producer, pending).await;
    // The printer's error comes first: it is why reading stopped.
    let summary = printer.await.context("the receipt printer")??;
    read?;
    producer.close().await;
    if !args.target.json && summary.count > 0 {
        let (first, last, count) = (summary.first_seq, summary.last_seq, summary.count);
        println!("published {count} message(s) to {}: sequences {first}..={last}", args.topic);
    }
    Ok(ExitCode::SUCCESS)
}

/// Queues every message in input order, handing each receipt to the printer.
async fn read_messages(args: &PublishArgs, producer: &Producer, pending: mpsc::Sender<Pending>) -> anyhow::Result<()> {
    let message = |payload: Vec<u8>| {
        let mut message = Message::new(payload);
        if let Some(key) = &args.key {
            message = message.key(key.clone());
        }
        for (name, value) in &args.headers {
            message = message.header(name.clone(), value.clone());
        }
        message
    };
    let queue = async |payload: Vec<u8>| -> anyhow::Result<bool> {
        let receipt = producer.enqueue(&args.topic, message(payload)).await?;
        // A closed channel means the printer stopped on an error it reports.
        Ok(pending.send(receipt).await.is_ok())
    };
    if let Some(path) = &args.file {
        let payload = match path.to_str() {
            Some("-") => {
                let mut payload = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut payload).await?;
                payload
            }
            _ => tokio::fs::read(path).await.with_context(|| format!("reading {}", path.display()))?,
        };
        queue(payload).await?;
    } else if args.messages.is_empty() {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut line = Vec::new();
        while stdin.read_until(b'\n', &mut line).await? > 0 {
            let end = line.len() - line.ends_with(b"\n") as usize;
            let end = end - line[..end].ends_with(b"\r") as usize;
            line.truncate(end);
            if !queue(std::mem::take(&mut line)).await? {
                break;
            }
        }
    } else {
        for text in &args.messages {
            if !queue(text.clone().into_bytes()).await? {
                break;
            }
        }
    }
    Ok(())
}

#[derive(Debug)]
struct Summary {
    count: u64,
    first_seq: u64,
    last_seq: u64,
}

/// Awaits the receipts in the order sent, printing each with `--json`; stops at the first
/// message that fails or is not acknowledged within `timeout`.
async fn print_receipts(
    topic: String,
    json: bool,
    timeout: Option<Duration>,
    mut receipts: mpsc::Receiver<Pending>,
) -> anyhow::Result<Summary> {
    let mut summary = Summary { count: 0, first_seq: 0, last_seq: 0 };
    while let Some(pending) = receipts.recv().await {
        let receipt = match timeout {
            Some(timeout) => match tokio::time::timeout(timeout, pending).await {
                Ok(receipt) => receipt,
                Err(_) => bail!(unacknowledged(&summary, ClientError::Timeout(timeout))),
            },
            None => pending.await,
        };
        let receipt = match receipt.map_err(|_| ClientError::Closed).and_then(|r| r) {
            Ok(receipt) => receipt,
            Err(error) => bail!(unacknowledged(&summary, error)),
        };
        if summary.count == 0 {
            summary.first_seq = receipt.seq;
        }
        summary.count += 1;
        summary.last_seq = receipt.seq;
        if json {
            println!(
                "{}",
                json!({
                    "topic": topic, "input_index": summary.count - 1, "seq": receipt.seq,
                    "log_index": receipt.log_index, "batch_pos": receipt.batch_pos, "duplicate": receipt.duplicate,
                })
            );
        }
    }
    Ok(summary)
}

/// Why publishing stopped, and how far it got.
fn unacknowledged(summary: &Summary, error: ClientError) -> anyhow::Error {
    let context = match summary.count {
        0 => "nothing was published".to_owned(),
        count => format!(
            "message {} was not acknowledged (the {count} before it were, as sequences {}..={})",
            count + 1,
            summary.first_seq,
            summary.last_seq
        ),
    };
    anyhow::Error::new(error).context(context)
}
