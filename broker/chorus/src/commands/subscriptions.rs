//! `chorus subscription`: durable subscriptions' cursors, by hand: create one without consuming,
//! reset it (back or forth, to a sequence or a time), or delete it.

use std::process::ExitCode;

use chorus_protocol::pb;
use clap::Subcommand;

use super::admin::answer;
use super::shared::start_to_pb;
use crate::target::Target;

#[derive(Debug, Subcommand)]
pub enum SubscriptionCommand {
    /// Create a durable subscription without consuming (a no-op if it exists).
    Create {
        #[command(flatten)]
        target: Target,
        topic: String,
        name: String,
        /// Where it starts: earliest, latest, a sequence, or time:MS.
        #[arg(long, default_value = "earliest")]
        from: String,
    },
    /// Move a subscription's cursor, back or forth: its next Subscribe starts there.
    Reset {
        #[command(flatten)]
        target: Target,
        topic: String,
        name: String,
        /// Where to: earliest, latest, a sequence, or time:MS (the first message committed at or
        /// after MS, in ms since the Unix epoch).
        #[arg(long)]
        from: String,
    },
    /// Delete a subscription and its cursor.
    Delete {
        #[command(flatten)]
        target: Target,
        topic: String,
        name: String,
    },
}

pub async fn subscription(command: SubscriptionCommand) -> anyhow::Result<ExitCode> {
    match command {
        SubscriptionCommand::Create { target, topic, name, from } => {
            answer(&target, pb::CreateSubscription { topic, name, start: Some(start_to_pb(&from)?) }).await
        }
        SubscriptionCommand::Reset { target, topic, name, from } => {
            answer(&target, pb::SeekSubscription { topic, name, start: Some(start_to_pb(&from)?) }).await
        }
        SubscriptionCommand::Delete { target, topic, name } => {
            answer(&target, pb::DeleteSubscription { topic, name }).await
        }
    }
}
