//! `chorus broker` and `chorus leader`: the cluster's membership and leadership, for planned
//! maintenance (admin). `broker add` joins a started broker as a learner, lets it catch up, and
//! makes it a voter; `broker remove` takes one out (it then stops serving); `leader transfer`
//! hands leadership to another voter (`--to`, or the one furthest along) before the leader is
//! restarted. `chorus status` shows the result.

use std::process::ExitCode;
use std::time::Duration;

use chorus_protocol::pb;
use clap::Subcommand;
use serde_json::json;

use super::admin::{Shown, show};
use super::shared::connect_with;
use crate::target::Target;

/// How long `broker add` waits: the new broker catches up before it votes.
const ADD_TIMEOUT: Duration = Duration::from_secs(130);
/// How long `leader transfer` waits: a catch-up and an election, each bounded on the leader.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// Add a started broker: it joins as a learner, catches up, then becomes a voter. Start it
    /// first with `chorus serve`, its own id and addresses, and the cluster's `--member` list.
    Add {
        #[command(flatten)]
        target: Target,
        id: u64,
        /// Where the other brokers reach it.
        #[arg(long)]
        peer_addr: String,
        /// Where clients reach it.
        #[arg(long)]
        client_addr: String,
    },
    /// Remove a broker from the cluster; it stops serving. The last voter cannot be removed.
    Remove {
        #[command(flatten)]
        target: Target,
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum LeaderCommand {
    /// Hand leadership to another voter before restarting the leader: writes pause for about one
    /// election timeout, where a leader that dies costs one to two and a pre-vote.
    Transfer {
        #[command(flatten)]
        target: Target,
        /// The voter to hand over to; by default the one furthest along in the log.
        #[arg(long)]
        to: Option<u64>,
    },
}

pub async fn broker(command: BrokerCommand) -> anyhow::Result<ExitCode> {
    let (target, change) = match command {
        BrokerCommand::Add { target, id, peer_addr, client_addr } => {
            (target, pb::change_membership::Change::Add(pb::AddBroker { id, client_addr, peer_addr }))
        }
        BrokerCommand::Remove { target, id } => {
            (target, pb::change_membership::Change::Remove(pb::RemoveBroker { id }))
        }
    };
    let client = connect_with(&target, |config| config.request_timeout = ADD_TIMEOUT).await?;
    show(&target, client.call(pb::ChangeMembership { change: Some(change) }).await?)
}

pub async fn leader(command: LeaderCommand) -> anyhow::Result<ExitCode> {
    let LeaderCommand::Transfer { target, to } = command;
    let client = connect_with(&target, |config| {
        config.request_timeout = TRANSFER_TIMEOUT;
        // A failed handover is reported, not tried again: the leader already took writes again.
        config.retry_deadline = Duration::ZERO;
    })
    .await?;
    show(&target, client.call(pb::TransferLeader { to }).await?)
}

impl Shown for pb::LeaderTransferred {
    fn json(&self) -> serde_json::Value {
        json!({"leader_id": self.leader_id, "term": self.term, "took_ms": self.took_ms})
    }

    fn print(&self) {
        println!("broker {} leads, term {} ({} ms)", self.leader_id, self.term, self.took_ms);
    }
}
