//! `chorus serve` and `chorus inspect`.

use std::process::ExitCode;

use anyhow::Context;
use redb::ReadableDatabase;

use super::{InspectArgs, ServeArgs, members};
use crate::clock::Clock;
use crate::config::{BootstrapAdmin, BrokerConfig, Limits, Security};
use crate::node::Broker;
use crate::security::peer_link::PeerAuth;
use crate::security::secret::ClusterSecret;
use crate::security::tls::{BrokerTls, TlsFiles};

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let raft = args.raft_timing();
    let security = security(&args)?;
    let config = BrokerConfig {
        id: args.id,
        data_dir: args.data_dir,
        client_addr: args.client_addr,
        peer_addr: args.peer_addr,
        members: members(&args.members).map_err(anyhow::Error::msg)?,
        security,
        limits: Limits { in_flight_per_connection_max: args.in_flight_max.max(1), ..Limits::default() },
        raft,
        clock: Clock::System,
    };
    let broker = Broker::start(config).await?;
    tracing::info!(id = broker.id(), clients = %broker.config.client_addr, peers = %broker.config.peer_addr, "broker started");
    let stopped = broker.shutdown_token();
    tokio::select! {
        _ = stopped.cancelled() => tracing::info!("broker stopped serving"),
        _ = termination() => tracing::info!("shutting down"),
    }
    broker.stop().await;
    match broker.core_failure() {
        // Exit non-zero, so that `chorus up` or a supervisor restarts the broker.
        Some(failure) => anyhow::bail!("the raft core stopped: {failure}"),
        None => Ok(()),
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

/// Resolves on Ctrl-C or SIGTERM.
pub async fn termination() {
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

pub fn inspect(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let path = args.data_dir.join("state.redb");
    let db = redb::Database::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let txn = db.begin_read()?;
    let store = crate::storage::ReadStore::open(txn);
    let topic =
        chorus_machine::query::topic(&store, &args.topic)?.with_context(|| format!("no topic {:?}", args.topic))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut next = topic.first_seq;
    loop {
        let page = chorus_machine::query::read(&store, &topic, next, 1024, u64::MAX)?;
        let Some((last, _)) = page.last() else { break };
        next = last + 1;
        for (seq, message) in page {
            let payload = String::from_utf8_lossy(&message.payload);
            writeln!(out, "{seq}\t{}\t{}\t{payload}", message.log_index, message.batch_pos)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
