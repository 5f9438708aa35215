//! `chorus serve`: one broker, from its flags, until SIGTERM or Ctrl-C. On SIGTERM a leader hands
//! leadership to another voter before it stops; Ctrl-C stops at once.

use anyhow::Context;

use chorus_broker::Broker;
use chorus_broker::clock::Clock;
use chorus_broker::config::{BootstrapAdmin, BrokerConfig, Limits, Security};
use chorus_broker::security::peer_link::PeerAuth;
use chorus_broker::security::secret::ClusterSecret;
use chorus_broker::security::tls::{BrokerTls, TlsFiles};
use std::collections::BTreeMap;
use std::path::PathBuf;

use chorus_broker::config::RaftTiming;
use chorus_broker::raft::{BrokerNode, NodeId};
use clap::Args;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event; coloured only on a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// This broker's id, unique in the cluster.
    #[arg(long)]
    pub id: NodeId,
    /// Where this broker keeps its log, state and snapshots.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// A TOML file of these flags (`client-addr = "..."`, `member = ["...", ...]`); a flag given
    /// here overrides the file's key.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The address clients reach this broker at, as its `--member` entry gives it; it listens
    /// there too unless --client-bind says otherwise.
    #[arg(long)]
    pub client_addr: String,
    /// The address other brokers reach this broker at, as its `--member` entry gives it; it
    /// listens there too unless --peer-bind says otherwise.
    #[arg(long)]
    pub peer_addr: String,
    /// Where to listen for clients when that is not --client-addr (`0.0.0.0:7101` behind NAT or
    /// in a container, say).
    #[arg(long)]
    pub client_bind: Option<String>,
    /// Where to listen for other brokers when that is not --peer-addr.
    #[arg(long)]
    pub peer_bind: Option<String>,
    /// Address for the HTTP endpoint operators scrape: `/metrics` (Prometheus), `/healthz` and
    /// `/readyz`. Unauthenticated and read-only: bind it where only monitoring reaches it.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// How the broker writes its log lines to stderr: `text`, or `json` (one object per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
    /// Bytes of requests one client connection may have in flight; past it the broker reads
    /// no more from that connection until answers go out.
    #[arg(long, default_value_t = Limits::default().in_flight_bytes_per_connection_max)]
    pub in_flight_bytes_per_connection_max: usize,
    /// Bytes of client requests in flight on the whole broker; past it, requests wait to be read.
    #[arg(long, default_value_t = Limits::default().in_flight_bytes_max)]
    pub in_flight_bytes_max: usize,
    /// Bytes client connections may have read and not yet decoded, broker-wide (frames still
    /// arriving); past it, reads wait.
    #[arg(long, default_value_t = Limits::default().read_bytes_max)]
    pub read_bytes_max: usize,
    /// Client connections open at once from one IP address.
    #[arg(long, default_value_t = Limits::default().connections_per_address_max)]
    pub connections_per_address_max: usize,
    /// Close a client connection silent this long, with nothing in flight and no subscription
    /// open (clients keep one with Ping).
    #[arg(long, default_value_t = Limits::default().client_idle_ms_max)]
    pub client_idle_ms: u64,
    /// Close a connection (either port) whose frame, once begun, takes longer than this to arrive.
    #[arg(long, default_value_t = Limits::default().frame_read_ms_max)]
    pub frame_read_ms: u64,
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
    /// How often the leader has the brokers compare digests of their state; 0 never.
    #[arg(long, default_value_t = RaftTiming::default().state_check_interval_ms)]
    pub state_check_interval_ms: u64,
    /// Threads that run the broker's tasks (its log writer has one more). Default: one per
    /// core. Brokers that share a host do better sharing its cores: `chorus up` gives each
    /// its share.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,
}

impl ServeArgs {
    fn raft_timing(&self) -> RaftTiming {
        RaftTiming {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_ms_min: self.election_timeout_ms,
            election_timeout_ms_max: self.election_timeout_ms * 2,
            snapshot_after_entries: self.snapshot_after_entries,
            entries_kept_after_snapshot: self.entries_kept_after_snapshot,
            state_check_interval_ms: self.state_check_interval_ms,
            ..RaftTiming::default()
        }
    }
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

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let raft = args.raft_timing();
    let security = security(&args)?;
    warn_if_advertised_differently(&args);
    let config = BrokerConfig {
        id: args.id,
        data_dir: args.data_dir,
        client_addr: args.client_bind.unwrap_or(args.client_addr),
        peer_addr: args.peer_bind.unwrap_or(args.peer_addr),
        metrics_addr: args.metrics_addr,
        members: members(&args.members).map_err(anyhow::Error::msg)?,
        security,
        limits: Limits {
            in_flight_per_connection_max: args.in_flight_max.max(1),
            in_flight_bytes_per_connection_max: args.in_flight_bytes_per_connection_max,
            in_flight_bytes_max: args.in_flight_bytes_max,
            read_bytes_max: args.read_bytes_max,
            connections_per_address_max: args.connections_per_address_max.max(1),
            client_idle_ms_max: args.client_idle_ms.max(1),
            frame_read_ms_max: args.frame_read_ms.max(1),
            ..Limits::default()
        },
        raft,
        clock: Clock::System,
    };
    let broker = Broker::start(config).await?;
    tracing::info!(
        id = broker.id(),
        clients = %broker.config.client_addr,
        peers = %broker.config.peer_addr,
        metrics = broker.config.metrics_addr.as_deref().unwrap_or("off"),
        "broker started"
    );
    let stopped = broker.shutdown_token();
    tokio::select! {
        _ = stopped.cancelled() => tracing::info!("broker stopped serving"),
        signal = stop_signal() => {
            tracing::info!(?signal, "shutting down");
            if signal == StopSignal::Terminate {
                drain(&broker).await;
            }
        }
    }
    broker.stop().await;
    match broker.core_failure() {
        // Exit non-zero, so that `chorus up` or a supervisor restarts the broker.
        Some(failure) => anyhow::bail!("the raft core stopped: {failure}"),
        None => Ok(()),
    }
}

/// Others reach a broker where the membership says, which for an initial member is its
/// `--member` entry: one that differs from its own `--client-addr` or `--peer-addr` is most likely
/// a mistake, and worth a warning (the membership wins).
fn warn_if_advertised_differently(args: &ServeArgs) {
    let Some((_, listed)) = args.members.iter().find(|(id, _)| *id == args.id) else { return };
    if listed.client_addr != args.client_addr || listed.peer_addr != args.peer_addr {
        tracing::warn!(
            member = %format!("{},{}", listed.peer_addr, listed.client_addr),
            flags = %format!("{},{}", args.peer_addr, args.client_addr),
            "this broker's --member entry names other addresses than --peer-addr and --client-addr: others reach it where --member says"
        );
    }
}

/// The broker's security from its flags, with loud warnings for what is left open.
fn security(args: &ServeArgs) -> anyhow::Result<Security> {
    let tls = match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            let files = TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
                client_ca: args.tls_client_ca.clone(),
            };
            Some(BrokerTls::load(&files).context("loading the TLS certificates")?)
        }
        _ => None,
    };
    let peers = match (&tls, &args.cluster_secret_file) {
        (Some(tls), _) => PeerAuth::tls(tls),
        (None, Some(file)) => PeerAuth::Secret(ClusterSecret::load(file)?),
        (None, None) => PeerAuth::Open,
    };
    let bootstrap_admin = match &args.admin_password_hash_file {
        Some(file) => {
            let hash = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            Some(BootstrapAdmin { name: args.admin_user.clone(), password_hash: hash.trim().to_owned() })
        }
        None => None,
    };
    if matches!(peers, PeerAuth::Open) {
        tracing::warn!(
            "INSECURE: the peer port authenticates nobody. Anyone who can reach it can rewrite this \
             cluster's log. It may listen on loopback only. Give the brokers certificates \
             (--tls-cert, --tls-key, --tls-ca) or a cluster secret (--cluster-secret-file)."
        );
    }
    if !args.auth {
        tracing::warn!(
            "INSECURE: clients are not authenticated (no --auth): every client may do anything, \
             membership changes included."
        );
    } else if tls.is_none() || args.no_client_tls {
        tracing::warn!("clients send their passwords in clear: give the broker a certificate (--tls-cert) for TLS");
    }
    if args.auth && bootstrap_admin.is_none() {
        tracing::warn!("--auth without --admin-password-hash-file: only users that already exist can connect");
    }
    Ok(Security {
        peers,
        client_tls: tls.filter(|_| !args.no_client_tls).map(|tls| tls.client_server),
        authenticate_clients: args.auth,
        bootstrap_admin,
    })
}

/// How long a stopping leader tries to hand leadership over before it stops anyway.
const DRAIN_HANDOVER_MS_MAX: u64 = 12_000;

/// A leader asked to stop (SIGTERM) hands leadership to another voter first, so the cluster
/// waits for no dead leader's silence ([`chorus_broker::handover`]); a follower just stops.
async fn drain(broker: &Broker) {
    let voters = broker.voter_sets().first().map_or(0, |voters| voters.len());
    if !broker.is_leader() || voters < 2 {
        return;
    }
    let handover = chorus_broker::handover::hand_over(broker, None);
    match tokio::time::timeout(std::time::Duration::from_millis(DRAIN_HANDOVER_MS_MAX), handover).await {
        Ok(Ok(done)) => tracing::info!(to = done.leader, "handed leadership over before stopping"),
        Ok(Err(error)) => tracing::warn!(%error, "stopping without handing leadership over"),
        Err(_) => tracing::warn!("stopping without handing leadership over: it took too long"),
    }
}

/// Which signal asked the broker to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// Ctrl-C (SIGINT): stop now; `chorus up` stops its brokers this way, all at once.
    Interrupt,
    /// SIGTERM, what a supervisor sends for a planned stop: a leader hands over first.
    Terminate,
}

/// Resolves on Ctrl-C or SIGTERM, saying which.
pub async fn stop_signal() -> StopSignal {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = interrupt.await;
                return StopSignal::Interrupt;
            }
        };
        tokio::select! {
            _ = interrupt => StopSignal::Interrupt,
            _ = term.recv() => StopSignal::Terminate,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
        StopSignal::Interrupt
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn termination() {
    stop_signal().await;
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
