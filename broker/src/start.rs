//! Starting a broker: open its stores in the data directory, start openraft, bind the client
//! and peer listeners (and the metrics endpoint, when it has an address), start the duties, and bootstrap a new cluster. The wiring lives here and
//! nowhere else: the service ([`Broker`]), its listeners and its duties do not know each other.

use std::sync::Arc;

use openraft::RaftNetworkFactory;
use tokio::net::TcpListener;

use crate::broker::{Broker, LogHandles};
use crate::config::BrokerConfig;
use crate::metrics::Metrics;
use crate::raft::lead_sync::LeadSync;
use crate::raft::log_store::LogStore;
use crate::raft::pre_vote::PreVotes;
use crate::raft::state_store::StateStore;
use crate::raft::{NodeId, Raft, StorageError, TypeConfig};
use crate::security::peer_link::PeerAuth;
use crate::server::Server;
use crate::{duties, election, monitor, peer, server};

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("raft configuration: {0}")]
    Config(#[from] Box<openraft::ConfigError>),
    #[error("raft: {0}")]
    Raft(#[from] openraft::error::Fatal<NodeId>),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error(
        "the peer address {0} is not a loopback address, and peers are not authenticated: \
         give the broker a certificate (--tls-cert, --tls-key, --tls-ca) or a cluster secret (--cluster-secret-file)"
    )]
    OpenPeerPort(String),
}

impl Broker {
    /// Opens the stores in the data directory, binds both listeners, starts raft and the
    /// broker's duties, and bootstraps the cluster if it is new.
    pub async fn start(config: BrokerConfig) -> Result<Arc<Broker>, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| StartError::DataDir { path: config.data_dir.display().to_string(), source })?;
        let mut log = LogStore::open(&config.data_dir.join("log.redb"), config.limits.log_cache_bytes)?;
        let mut state = StateStore::open(&config.data_dir, config.limits.state_cache_bytes)?;
        let mut network = config.network();
        // A leader's appends go to followers while its own sync runs; applies and the commit
        // index followers hear wait for that sync.
        let lead = LeadSync::new(config.id);
        log.lead_ahead_of_sync(lead.clone());
        state.apply_after_lead_sync(lead.clone());
        network.lead = Some(lead);
        let peers = bind(config.peer_addr.clone()).await?;
        let open_peers = matches!(config.security.peers, PeerAuth::Open);
        if open_peers && !peers.local_addr().is_ok_and(|addr| addr.ip().is_loopback()) {
            return Err(StartError::OpenPeerPort(config.peer_addr.clone()));
        }
        let clients = bind(config.client_addr.clone()).await?;
        let monitoring = match &config.metrics_addr {
            Some(addr) => Some(bind(addr.clone()).await?),
            None => None,
        };
        let broker = Broker::start_in_process(config, log, state, network).await?;
        if let Some(listener) = monitoring {
            tokio::spawn(monitor::serve(listener, Arc::clone(&broker)));
        }
        let server = Server::new(Arc::clone(&broker));
        tokio::spawn(peer::serve(peers, Arc::clone(&server)));
        broker.serving_clients(tokio::spawn(server::serve(clients, server)));
        tokio::spawn(duties::bootstrap(Arc::clone(&broker)));
        Ok(broker)
    }

    /// Starts raft and the broker's duties on the given stores and network, without listeners
    /// and without bootstrapping: the simulation runs brokers this way, reaching them in-process
    /// and initializing the cluster itself.
    pub async fn start_in_process(
        config: BrokerConfig,
        mut log: LogStore,
        state: StateStore,
        network: impl RaftNetworkFactory<TypeConfig> + PreVotes + Clone,
    ) -> Result<Arc<Broker>, StartError> {
        if state.rebuilt() && log.purged()? {
            log.forget_entries().await?;
        }
        log.purge_behind_state(state.durable());
        let committed = log.committed_index();
        let repair = log.repair();
        let state_checks = state.state_checks();
        let applied = state.status();
        let database = state.database();
        let reader = log.reader();
        let metrics = Metrics { disk: log.disk_metrics(), raft: state.event_metrics(), ..Metrics::default() };
        let raft = Raft::new(config.id, Arc::new(config.openraft()?), network.clone(), log, state).await?;
        if let Some(floor) = repair.floor() {
            tracing::warn!(
                floor,
                "the log is under repair: this broker neither votes nor stands for election until it has applied index {floor} from a leader"
            );
        }
        let log = LogHandles { committed, repair, reader };
        let broker = Arc::new(Broker::new(config, raft, database, applied, log, state_checks, metrics));
        duties::start(&broker);
        tokio::spawn(election::campaign(Arc::clone(&broker), network));
        Ok(broker)
    }
}

async fn bind(addr: String) -> Result<TcpListener, StartError> {
    TcpListener::bind(&addr).await.map_err(|source| StartError::Bind { addr, source })
}
