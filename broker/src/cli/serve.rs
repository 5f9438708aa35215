//! `chorus serve` and `chorus inspect`.

use std::process::ExitCode;

use anyhow::Context;
use redb::ReadableDatabase;

use super::{InspectArgs, ServeArgs, members};
use crate::clock::Clock;
use crate::config::{BrokerConfig, Limits};
use crate::node::Broker;

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
    Ok(())
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
