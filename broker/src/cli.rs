//! The `chorus` command line: parsing and running each subcommand.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use redb::ReadableDatabase;

use crate::config::{BrokerConfig, Limits, RaftTiming};
use crate::node::Broker;
use crate::raft::{BrokerNode, NodeId};

#[derive(Debug, Parser)]
#[command(name = "chorus", version, about = "A distributed message queue with atomic broadcast")]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run one broker.
    Serve(ServeArgs),
    /// Print a topic's messages from a stopped broker's data directory, one per line:
    /// seq, log index, batch position, payload.
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// This broker's id, unique in the cluster.
    #[arg(long)]
    pub id: NodeId,
    /// Where this broker keeps its log, state and snapshots.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address for clients.
    #[arg(long)]
    pub client_addr: String,
    /// Address for other brokers.
    #[arg(long)]
    pub peer_addr: String,
    /// An initial member as ID=PEER_ADDR,CLIENT_ADDR; repeat for each. The cluster is bootstrapped
    /// from these once; restarts and brokers added later ignore them.
    #[arg(long = "member", value_parser = parse_member, required = true)]
    pub members: Vec<(NodeId, BrokerNode)>,
    /// Require clients to present this token in Hello.
    #[arg(long, env = "CHORUS_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Requests one client connection may have in flight.
    #[arg(long, default_value_t = Limits::default().in_flight_per_connection_max)]
    pub in_flight_max: usize,
    /// Raft heartbeat interval.
    #[arg(long, default_value_t = RaftTiming::default().heartbeat_ms)]
    pub heartbeat_ms: u64,
    /// Shortest election timeout; the longest is twice this.
    #[arg(long, default_value_t = RaftTiming::default().election_timeout_ms_min)]
    pub election_timeout_ms: u64,
    /// Build a snapshot (and purge the log behind it) after this many entries.
    #[arg(long, default_value_t = RaftTiming::default().snapshot_after_entries)]
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot.
    #[arg(long, default_value_t = RaftTiming::default().entries_kept_after_snapshot)]
    pub entries_kept_after_snapshot: u64,
}

impl ServeArgs {
    fn raft_timing(&self) -> RaftTiming {
        RaftTiming {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_ms_min: self.election_timeout_ms,
            election_timeout_ms_max: self.election_timeout_ms * 2,
            snapshot_after_entries: self.snapshot_after_entries,
            entries_kept_after_snapshot: self.entries_kept_after_snapshot,
            ..RaftTiming::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub topic: String,
}

/// Parses `ID=PEER_ADDR,CLIENT_ADDR`.
pub fn parse_member(text: &str) -> Result<(NodeId, BrokerNode), String> {
    let (id, addrs) = text.split_once('=').ok_or("expected ID=PEER_ADDR,CLIENT_ADDR")?;
    let id: NodeId = id.trim().parse().map_err(|e| format!("bad broker id {id:?}: {e}"))?;
    let (peer, client) = addrs.split_once(',').ok_or("expected ID=PEER_ADDR,CLIENT_ADDR")?;
    if peer.is_empty() || client.is_empty() {
        return Err("both addresses are needed".into());
    }
    Ok((id, BrokerNode { peer_addr: peer.trim().into(), client_addr: client.trim().into() }))
}

pub fn members(list: &[(NodeId, BrokerNode)]) -> Result<BTreeMap<NodeId, BrokerNode>, String> {
    let mut members = BTreeMap::new();
    for (id, node) in list {
        if members.insert(*id, node.clone()).is_some() {
            return Err(format!("broker {id} is listed twice"));
        }
    }
    Ok(members)
}

/// Runs the `chorus` command line; the binary's `main` is this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        CliCommand::Serve(args) => runtime().and_then(|rt| rt.block_on(serve(args))),
        CliCommand::Inspect(args) => inspect(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chorus: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let raft = args.raft_timing();
    let config = BrokerConfig {
        id: args.id,
        data_dir: args.data_dir,
        client_addr: args.client_addr,
        peer_addr: args.peer_addr,
        members: members(&args.members).map_err(anyhow::Error::msg)?,
        auth_token: args.auth_token,
        limits: Limits { in_flight_per_connection_max: args.in_flight_max.max(1), ..Limits::default() },
        raft,
    };
    let broker = Broker::start(config).await?;
    tracing::info!(id = broker.id(), clients = %broker.config.client_addr, peers = %broker.config.peer_addr, "broker started");
    let stopped = broker.shutdown_token();
    tokio::select! {
        _ = stopped.cancelled() => tracing::info!("broker stopped serving"),
        _ = termination() => tracing::info!("shutting down"),
    }
    broker.stop().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn termination() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return interrupt.await.unwrap_or(()),
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let path = args.data_dir.join("state.redb");
    let db = redb::Database::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let txn = db.begin_read()?;
    let store = crate::storage::ReadStore::open(&txn)?;
    let topic =
        chorus_machine::query::topic(&store, &args.topic)?.with_context(|| format!("no topic {:?}", args.topic))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut next = topic.first_seq;
    loop {
        let page = chorus_machine::query::read(&store, topic.id, next, 1024, u64::MAX)?;
        let Some((last, _)) = page.last() else { break };
        next = last + 1;
        for (seq, message) in page {
            writeln!(
                out,
                "{seq}\t{}\t{}\t{}",
                message.log_index,
                message.batch_pos,
                String::from_utf8_lossy(&message.payload)
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse() {
        let (id, node) = parse_member("2=127.0.0.1:9002,127.0.0.1:7002").unwrap();
        assert_eq!((id, node.peer_addr.as_str(), node.client_addr.as_str()), (2, "127.0.0.1:9002", "127.0.0.1:7002"));
        assert!(parse_member("x=a,b").is_err());
        assert!(parse_member("1=a").is_err());
        assert!(parse_member("1=,b").is_err());
        let one = parse_member("1=a,b").unwrap();
        assert!(members(&[one.clone(), one]).is_err());
    }
}
