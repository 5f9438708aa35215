//! A running broker: opens its stores, starts openraft, listens for peers and clients, and runs
//! the leader's duties (proposing, pulses, the first admin). Membership is bootstrapped once, by
//! the lowest-id initial member, and only when no peer already belongs to an initialized cluster.
//! A broker whose Raft core stops stops serving: it never answers from a core that is gone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chorus_machine::{Actor, Command, MembershipChange, Outcome, Submission, query};
use chorus_protocol::pb::{self, peer_frame::Body as PeerBody};
use openraft::{RaftNetworkFactory, ServerState};
use redb::{Database, ReadableDatabase};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::proposer::{ProposeError, Proposer, raft_error};
use crate::raft::log_store::LogStore;
use crate::raft::network::{Network, PeerClient};
use crate::raft::state_store::{AppliedStatus, StateStore};
use crate::raft::{BrokerNode, NodeId, Raft, StorageError, TypeConfig};
use crate::security::password;
use crate::security::peer_link::PeerAuth;
use crate::server::claims::LeaseClaims;
use crate::server::sessions::Sessions;
use crate::storage::ReadStore;
use crate::{peer, server};

/// The shortest gap between two pulses, so a backlog of deadlines cannot flood the log.
const PULSE_SPACING_MS: u64 = 20;
/// How long a bootstrap probe waits for a peer's hello.
const PROBE_TIMEOUT_MS: u64 = 300;
/// How long a broker that is no longer a member keeps serving before it stops.
const REMOVAL_GRACE_MS: u64 = 3_000;

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

/// A broker and its running tasks.
pub struct Broker {
    pub config: BrokerConfig,
    pub raft: Raft,
    state: Arc<Database>,
    applied: watch::Receiver<AppliedStatus>,
    committed: Arc<AtomicU64>,
    proposer: Proposer,
    forwarder: Forwarder,
    lease_claims: LeaseClaims,
    passwords: password::Checker,
    sessions: Sessions,
    /// Why the Raft core stopped, once it has: the broker stops serving then.
    core_failure: std::sync::OnceLock<String>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("id", &self.config.id).finish()
    }
}

impl Broker {
    /// Opens the stores in the data directory, binds both listeners, starts raft, and
    /// bootstraps the cluster if it is new.
    pub async fn start(config: BrokerConfig) -> Result<Arc<Broker>, StartError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| StartError::DataDir { path: config.data_dir.display().to_string(), source })?;
        let log = LogStore::open(&config.data_dir.join("log.redb"), config.limits.log_cache_bytes)?;
        let state = StateStore::open(&config.data_dir, config.limits.state_cache_bytes)?;
        let network = config.network();
        let bind = |addr: String| async move {
            TcpListener::bind(&addr).await.map_err(|source| StartError::Bind { addr, source })
        };
        let peers = bind(config.peer_addr.clone()).await?;
        let open_peers = matches!(config.security.peers, PeerAuth::Open);
        if open_peers && !peers.local_addr().is_ok_and(|addr| addr.ip().is_loopback()) {
            return Err(StartError::OpenPeerPort(config.peer_addr.clone()));
        }
        let clients = bind(config.client_addr.clone()).await?;
        let broker = Broker::start_in_process(config, log, state, network).await?;
        tokio::spawn(peer::serve(peers, Arc::clone(&broker)));
        tokio::spawn(server::serve(clients, Arc::clone(&broker)));
        tokio::spawn(Arc::clone(&broker).bootstrap());
        Ok(broker)
    }

    /// Starts raft and the leader's duties on the given stores and network, without listeners
    /// and without bootstrapping: the simulation runs brokers this way, reaching them in-process
    /// and initializing the cluster itself.
    pub async fn start_in_process(
        config: BrokerConfig,
        mut log: LogStore,
        state: StateStore,
        network: impl RaftNetworkFactory<TypeConfig>,
    ) -> Result<Arc<Broker>, StartError> {
        log.purge_behind_state(state.durable());
        let committed = log.committed_index();
        let applied = state.status();
        let database = state.database();
        let raft = Raft::new(config.id, Arc::new(config.openraft()?), network, log, state).await?;
        let proposer = Proposer::start(raft.clone(), applied.clone(), &config.limits, config.clock);
        let forwarder = Forwarder::new(config.network(), config.limits.forward_connections_max);
        let broker = Arc::new(Broker {
            config,
            raft,
            state: database,
            applied,
            committed,
            proposer,
            forwarder,
            lease_claims: LeaseClaims::default(),
            passwords: password::Checker::default(),
            sessions: Sessions::default(),
            core_failure: std::sync::OnceLock::new(),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(Arc::clone(&broker).pulse_loop());
        tokio::spawn(Arc::clone(&broker).watch_membership());
        tokio::spawn(Arc::clone(&broker).watch_core());
        if broker.config.security.bootstrap_admin.is_some() {
            tokio::spawn(Arc::clone(&broker).bootstrap_admin());
        }
        Ok(broker)
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// Milliseconds since the Unix epoch by this broker's clock.
    pub fn now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    /// Cancelled when the broker stops: on request, or once it is removed from the cluster.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting work, lets listeners drain, and stops raft.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft did not shut down cleanly");
        }
    }

    pub fn applied(&self) -> watch::Receiver<AppliedStatus> {
        self.applied.clone()
    }

    /// The leader as this broker knows it.
    pub fn leader(&self) -> Option<(NodeId, BrokerNode)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node))
    }

    /// Messages claimed by the leases this broker has in flight, per group.
    pub fn lease_claims(&self) -> &LeaseClaims {
        &self.lease_claims
    }

    /// Checks users' passwords.
    pub fn passwords(&self) -> &password::Checker {
        &self.passwords
    }

    /// What each user holds open on this broker, against its quotas.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Why the Raft core stopped, if it has.
    pub fn core_failure(&self) -> Option<&str> {
        self.core_failure.get().map(String::as_str)
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.id())
    }

    /// Proposes one command through the log and waits for its outcome. `NotLeader` means the
    /// command was not proposed; once proposed, a lost leadership answers `Unavailable` because
    /// the outcome is unknown.
    pub async fn propose(&self, submission: Submission) -> Result<Outcome, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { leader: self.leader() });
        }
        self.proposer.propose(submission).await
    }

    /// A consistent read view of the applied state.
    pub fn read(&self) -> Result<ReadStore, ProposeError> {
        let internal = |e: &dyn std::fmt::Display| ProposeError::Internal(e.to_string());
        let txn = self.state.begin_read().map_err(|e| internal(&e))?;
        Ok(ReadStore::open(txn))
    }

    /// Passes a client request to the leader, as `actor`, and returns its answer.
    pub async fn forward(
        &self,
        leader: &(NodeId, BrokerNode),
        frame: pb::ClientFrame,
        actor: &Actor,
        timeout: Duration,
    ) -> Result<pb::ServerFrame, ProposeError> {
        let forwarded = pb::Forwarded { request: Some(frame), actor: Some(crate::command::actor_to_pb(actor)) };
        self.forwarder.forward(leader, forwarded, timeout).await
    }

    /// Role, term, leader, indexes and each follower's lag.
    pub fn status(&self) -> pb::ClusterStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let last_index = metrics.last_log_index.unwrap_or(0);
        let applied_index = metrics.last_applied.map_or(0, |id| id.index);
        let brokers = membership
            .nodes()
            .map(|(id, node)| {
                let matched = metrics.replication.as_ref().map(|r| r.get(id).copied().flatten().map_or(0, |m| m.index));
                pb::BrokerInfo {
                    id: *id,
                    client_addr: node.client_addr.clone(),
                    peer_addr: node.peer_addr.clone(),
                    voter: voters.contains(id),
                    matched_index: matched,
                    lag: matched.map(|m| last_index.saturating_sub(m)),
                }
            })
            .collect();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        pb::ClusterStatus {
            broker_id: self.id(),
            role: role.into(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            commit_index: self.committed.load(Ordering::Relaxed).max(applied_index),
            applied_index,
            brokers,
        }
    }

    /// Adds a broker (as a learner that catches up, then a voter) or removes one, for `actor`.
    /// The change is first recorded through the log, where the state machine checks that the
    /// actor is an admin, and made only if that record was accepted.
    pub async fn change_membership(&self, change: MembershipChange, actor: &Actor) -> Result<Outcome, ProposeError> {
        let voters: std::collections::BTreeSet<NodeId> = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics.membership_config.membership().voter_ids().collect()
        };
        let mut next = voters;
        match &change {
            MembershipChange::Add { id, .. } => {
                next.insert(*id);
            }
            MembershipChange::Remove { id } if !next.remove(id) => {
                return Err(ProposeError::Invalid(format!("broker {id} is not a voter")));
            }
            MembershipChange::Remove { .. } if next.is_empty() => {
                return Err(ProposeError::Invalid("cannot remove the last broker".into()));
            }
            MembershipChange::Remove { .. } => {}
        }
        let recorded =
            self.propose(Submission::new(actor.clone(), Command::RecordMembershipChange(change.clone()))).await?;
        if recorded.is_err() {
            return Ok(recorded);
        }
        if let MembershipChange::Add { id, peer_addr, client_addr } = change {
            let node = BrokerNode { peer_addr, client_addr };
            self.raft.add_learner(id, node, true).await.map_err(raft_error)?;
        }
        self.raft.change_membership(next, false).await.map_err(raft_error)?;
        Ok(recorded)
    }

    /// Proposes a pulse whenever the machine's next deadline has passed, while leader.
    async fn pulse_loop(self: Arc<Broker>) {
        let mut applied = self.applied.clone();
        let mut metrics = self.raft.metrics();
        loop {
            let deadline = applied.borrow_and_update().next_deadline_ms;
            let leader = self.is_leader();
            let now_ms = self.now_ms();
            if leader && deadline.is_some_and(|d| d <= now_ms) {
                if let Err(error) = self.propose(Submission::broker(Command::Pulse)).await {
                    tracing::debug!(%error, "pulse not applied");
                }
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(PULSE_SPACING_MS)) => {}
                }
                continue;
            }
            let wait_ms = match deadline {
                Some(d) if leader => d.saturating_sub(now_ms).clamp(1, 1_000),
                _ => 1_000,
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                // A closed channel means raft stopped: so does this loop (and it must not spin).
                changed = applied.changed() => if changed.is_err() { return },
                changed = metrics.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            }
        }
    }

    /// Initializes the cluster once: only the lowest-id initial member, only while its own log is
    /// empty, and only when no other member answers that it is already initialized.
    async fn bootstrap(self: Arc<Broker>) {
        let lowest = self.config.members.keys().next().copied();
        if lowest != Some(self.id()) {
            return;
        }
        loop {
            match self.raft.is_initialized().await {
                Ok(false) => {}
                _ => return,
            }
            if !self.peers_initialized().await {
                match self.raft.initialize(self.config.members.clone()).await {
                    Ok(()) => {
                        tracing::info!(members = ?self.config.members.keys().collect::<Vec<_>>(), "bootstrapped the cluster")
                    }
                    Err(error) => tracing::info!(%error, "not bootstrapping"),
                }
                return;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn peers_initialized(&self) -> bool {
        let hello = PeerBody::Hello(pb::PeerHello {
            protocol_version: chorus_protocol::limits::PROTOCOL_VERSION,
            from_id: self.id(),
            initialized: false,
        });
        let network = self.config.network();
        for (id, node) in self.config.members.iter().filter(|(id, _)| **id != self.id()) {
            let mut client = PeerClient::new(&network, *id, node.peer_addr.clone());
            let answer = client.call(hello.clone(), Duration::from_millis(PROBE_TIMEOUT_MS)).await;
            if let Ok(PeerBody::Hello(answer)) = answer
                && answer.initialized
            {
                return true;
            }
        }
        false
    }

    /// Proposes the configured first admin while leader, until the cluster has a user.
    async fn bootstrap_admin(self: Arc<Broker>) {
        let Some(admin) = self.config.security.bootstrap_admin.clone() else { return };
        let mut applied = self.applied.clone();
        let mut metrics = self.raft.metrics();
        loop {
            let has_users = self.read().ok().map(|store| query::has_users(&store));
            match has_users {
                Some(Ok(true)) => return,
                _ if self.is_leader() => {
                    let command = Command::BootstrapAdmin {
                        name: admin.name.clone(),
                        password_hash: admin.password_hash.clone(),
                    };
                    match self.propose(Submission::broker(command)).await {
                        Ok(Ok(_)) => tracing::info!(user = %admin.name, "the cluster has its first admin"),
                        Ok(Err(refused)) => tracing::error!(%refused, "the first admin was refused"),
                        Err(error) => tracing::debug!(%error, "first admin not proposed yet"),
                    }
                }
                _ => {}
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                changed = applied.changed() => if changed.is_err() { return },
                changed = metrics.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Stops the broker when its Raft core stops (a storage failure, an entry that does not
    /// apply): a broker without a core must not answer as if it had one.
    async fn watch_core(self: Arc<Broker>) {
        let mut metrics = self.raft.metrics();
        loop {
            // A core stopped by `stop` is no failure.
            if self.shutdown.is_cancelled() {
                return;
            }
            let failure = match &metrics.borrow_and_update().running_state {
                Ok(()) => None,
                Err(fatal) => Some(fatal.to_string()),
            };
            if let Some(failure) = failure {
                tracing::error!(id = self.id(), %failure, "the raft core stopped; this broker stops serving");
                let _ = self.core_failure.set(failure);
                self.shutdown.cancel();
                return;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() {
                    // The core is gone without a word: still no core to serve from.
                    if !self.shutdown.is_cancelled() {
                        let _ = self.core_failure.set("the raft core ended".into());
                        self.shutdown.cancel();
                    }
                    return;
                },
            }
        }
    }

    /// Stops the broker once the newest membership leaves it out for longer than a grace period.
    async fn watch_membership(self: Arc<Broker>) {
        let mut metrics = self.raft.metrics();
        let mut removed_since: Option<tokio::time::Instant> = None;
        loop {
            let removed = {
                let metrics = metrics.borrow_and_update();
                let membership = metrics.membership_config.membership();
                let newest_voters = membership.get_joint_config().last();
                metrics.membership_config.log_id().is_some()
                    && !newest_voters.is_some_and(|voters| voters.contains(&self.id()))
                    && !membership.learner_ids().any(|id| id == self.id())
            };
            match (removed, removed_since) {
                (false, _) => removed_since = None,
                (true, None) => removed_since = Some(tokio::time::Instant::now()),
                (true, Some(since)) if since.elapsed() >= Duration::from_millis(REMOVAL_GRACE_MS) => {
                    tracing::warn!(id = self.id(), "removed from the cluster; stopping");
                    self.shutdown.cancel();
                    return;
                }
                (true, Some(_)) => {}
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

/// Pooled peer connections used to forward client requests to the leader.
struct Forwarder {
    network: Network,
    idle: Mutex<BTreeMap<NodeId, Vec<PeerClient>>>,
    permits: Semaphore,
}

impl Forwarder {
    fn new(network: Network, connections_max: usize) -> Forwarder {
        Forwarder { network, idle: Mutex::new(BTreeMap::new()), permits: Semaphore::new(connections_max) }
    }

    async fn forward(
        &self,
        leader: &(NodeId, BrokerNode),
        forwarded: pb::Forwarded,
        timeout: Duration,
    ) -> Result<pb::ServerFrame, ProposeError> {
        let _permit = self.permits.acquire().await.map_err(|_| ProposeError::Unavailable("shutting down".into()))?;
        let (id, node) = leader;
        let pooled = self.idle.lock().await.get_mut(id).and_then(Vec::pop);
        let mut client = pooled.unwrap_or_else(|| PeerClient::new(&self.network, *id, node.peer_addr.clone()));
        match client.call(PeerBody::Forward(forwarded), timeout).await {
            Ok(PeerBody::ForwardOk(answer)) => {
                self.idle.lock().await.entry(*id).or_default().push(client);
                Ok(answer)
            }
            Ok(other) => Err(ProposeError::Unavailable(format!("leader {id} could not take the request: {other:?}"))),
            Err(error) => Err(ProposeError::Unavailable(format!("leader {id} unreachable: {error}"))),
        }
    }
}
