//! The `chorus` command line: parsing, and one module per group of subcommands.
//!
//! - `serve`: run one broker; `inspect`: read a stopped broker's topic;
//! - `up`: a local cluster of broker processes, supervised; `demo`: a scripted tour;
//! - `commands`: everyday client commands (publish, subscribe, work, topic, group, status);
//! - `users`, `cert`: users and permissions; certificates and cluster secrets;
//! - `context`: which cluster a client command talks to, and as whom.

mod bench;
#[cfg(feature = "nats")]
mod bench_nats;
mod cert;
mod commands;
pub mod context;
mod demo;
pub mod local;
mod serve;
mod up;
mod users;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Limits, RaftTiming};
use crate::raft::{BrokerNode, NodeId};

/// The client addresses `chorus up` uses, and so the default target of client commands.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

#[derive(Debug, Parser)]
#[command(name = "chorus", version, about = "A distributed message queue with atomic broadcast")]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Start a local cluster (3 brokers on loopback, data under ./chorus-data) and run until Ctrl-C.
    Up(up::UpArgs),
    /// Throughput and latency figures, on a cluster of its own (or --brokers).
    Bench(bench::BenchArgs),
    /// A scripted tour that checks Chorus's promises on a cluster of its own (or --brokers).
    Demo(demo::DemoArgs),
    /// Run one broker.
    Serve(ServeArgs),
    /// Print a topic's messages from a stopped broker's data directory, one per line:
    /// seq, log index, batch position, payload.
    Inspect(InspectArgs),
    /// Publish messages given as arguments, or one per line of standard input.
    Publish(commands::PublishArgs),
    /// Print a topic's messages in order.
    Subscribe(commands::SubscribeArgs),
    /// Run a command once per message of a work group: payload on stdin, exit 0 acks.
    Work(commands::WorkArgs),
    /// Create, list, describe or delete topics.
    #[command(subcommand)]
    Topic(commands::TopicCommand),
    /// Create, list, describe or delete work groups.
    #[command(subcommand)]
    Group(commands::GroupCommand),
    /// The cluster's brokers, roles, term, leader, indexes and lag.
    Status(commands::StatusArgs),
    /// Create, update, list, describe or delete users and their permissions.
    #[command(subcommand)]
    User(users::UserCommand),
    /// Make a CA, broker and client certificates, or a cluster secret.
    #[command(subcommand)]
    Cert(cert::CertCommand),
}

/// Which cluster a client command talks to, as whom, and how it prints. Flags override the
/// context (`--context`, or the current one `chorus up` wrote).
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Client addresses of some brokers, comma-separated [default: the context's, else 127.0.0.1:7101-7103].
    #[arg(long, env = "CHORUS_BROKERS", value_delimiter = ',', global = true)]
    pub brokers: Option<Vec<String>>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// A context file to take the brokers, TLS and user from [default: the current context].
    #[arg(long, env = "CHORUS_CONTEXT", global = true)]
    pub context: Option<PathBuf>,
    /// The user to act as.
    #[arg(long, env = "CHORUS_USER", global = true)]
    pub user: Option<String>,
    /// The user's password.
    #[arg(long, env = "CHORUS_PASSWORD", hide_env_values = true, global = true)]
    pub password: Option<String>,
    /// Connect over TLS, trusting this CA (PEM).
    #[arg(long, env = "CHORUS_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) naming the user, with --client-key.
    #[arg(long, env = "CHORUS_CLIENT_CERT", global = true)]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "CHORUS_CLIENT_KEY", global = true)]
    pub client_key: Option<PathBuf>,
}

impl Target {
    /// The brokers and the way to connect, from the flags over the context.
    pub fn resolve(&self) -> anyhow::Result<context::Resolved> {
        context::Overrides {
            context: self.context.clone(),
            brokers: self.brokers.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            ca: self.ca.clone(),
            cert: self.client_cert.clone(),
            key: self.client_key.clone(),
        }
        .resolve()
    }
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
    /// This broker's certificate chain (PEM), for both ports. With --tls-key and --tls-ca, peers
    /// authenticate by mutual TLS and clients connect over TLS.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): it signs every broker's certificate, and only brokers'. Several
    /// certificates in the file are all trusted (for a CA rotation).
    #[arg(long, requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// A CA (PEM) whose client certificates authenticate users: a certificate's common name is
    /// its user. It must not be the cluster CA.
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Keep the client port plaintext even with a certificate: for clients on a trusted network,
    /// or behind a proxy that ends TLS. Peers still use TLS.
    #[arg(long, requires = "tls_cert", conflicts_with = "tls_client_ca")]
    pub no_client_tls: bool,
    /// Without TLS: peers authenticate by challenge-response with a shared secret, one per line
    /// (the first proves, all are accepted). `chorus cert secret` makes one.
    #[arg(long, conflicts_with = "tls_cert")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Clients must authenticate as users; the state machine enforces their permissions.
    #[arg(long)]
    pub auth: bool,
    /// The name of the first admin, created when the cluster has no user yet.
    #[arg(long, default_value = "admin")]
    pub admin_user: String,
    /// A file holding the first admin's argon2 password hash (`chorus user hash-password`).
    #[arg(long, env = "CHORUS_ADMIN_PASSWORD_HASH_FILE", requires = "auth")]
    pub admin_password_hash_file: Option<PathBuf>,
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
    let default_filter = match cli.command {
        CliCommand::Serve(_) => "info,openraft=warn",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        CliCommand::Inspect(args) => serve::inspect(&args),
        command => runtime().and_then(|rt| rt.block_on(run(command))),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("chorus: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")
}

async fn run(command: CliCommand) -> anyhow::Result<ExitCode> {
    match command {
        CliCommand::Serve(args) => serve::serve(args).await.map(|()| ExitCode::SUCCESS),
        CliCommand::Up(args) => up::run(args).await.map(|()| ExitCode::SUCCESS),
        CliCommand::Demo(args) => demo::run(args).await,
        CliCommand::Bench(args) => bench::run(args).await,
        CliCommand::Publish(args) => commands::publish(args).await,
        CliCommand::Subscribe(args) => commands::subscribe(args).await,
        CliCommand::Work(args) => commands::work(args).await,
        CliCommand::Topic(command) => commands::topic(command).await,
        CliCommand::Group(command) => commands::group(command).await,
        CliCommand::Status(args) => commands::status(args).await,
        CliCommand::User(command) => users::run(command).await,
        CliCommand::Cert(command) => cert::run(command),
        CliCommand::Inspect(args) => serve::inspect(&args),
    }
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

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
