//! A running broker as a service: it proposes commands through the log, reads its applied state,
//! forwards a client's request to the leader, reports its status and changes the membership.
//! Starting one and wiring its listeners is `start`'s work; its background duties are in
//! `duties`. A broker whose Raft core stopped stops serving: it never answers from a core that is
//! gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chorus_machine::{Actor, Command, MembershipChange, Outcome, Submission};
use chorus_protocol::pb;
use openraft::ServerState;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::forward::{ForwardError, Forwarder};
use crate::metrics::{AppendTimes, LeaderChanges, Metrics};
use crate::proposer::{MembershipError, ProposeError, Proposer, raft_error};
use crate::raft::log_store::LogReader;
use crate::raft::pre_vote::{LeaderContact, PreVote, PreVoteAnswer, VoterView};
use crate::raft::repair::LogRepair;
use crate::raft::snapshot_file::Receipts;
use crate::raft::state_check::StateChecks;
use crate::raft::state_store::AppliedStatus;
use crate::raft::state_store::{self, StateDamage};
use crate::raft::{BrokerNode, NodeId, Raft, TypeConfig};
use crate::storage::{CorruptValue, DamageAlarm, ReadStore, StateFiles};

/// The leader as a broker knows it: its id and addresses.
pub type Leader = (NodeId, BrokerNode);

/// How long a stopping broker waits for its client connections to drain: each has 10 s for its
/// requests in flight, and a little more to send their answers.
const DRAIN_MS_MAX: u64 = 12_000;

/// The least time a follower waits to apply what a forwarded request did, even when the forward
/// itself took all its time: an applied index a heartbeat away is worth the wait.
const FORWARD_CATCH_UP_MIN: Duration = Duration::from_millis(500);

/// A broker further than this behind the commit index in applying is not ready.
pub const READY_APPLY_LAG_MAX: u64 = 10_000;
/// The longest a write waits for a handover to end: a handover's catch-up and election are
/// bounded by 5 s each.
pub const HELD_DURING_HANDOVER_MS_MAX: u64 = 10_000;
/// The window of `ClusterStatus::leader_changes_10m`.
pub const LEADER_CHANGES_WINDOW: Duration = Duration::from_secs(600);

/// The broker a leader is handing leadership to, while it does: one handover at a time.
#[derive(Debug)]
pub struct HandingOver {
    active: std::sync::atomic::AtomicBool,
    to: AtomicU64,
    /// True while a handover is under way: proposals wait for it to end.
    under_way: watch::Sender<bool>,
}

impl Default for HandingOver {
    fn default() -> HandingOver {
        HandingOver { active: Default::default(), to: AtomicU64::new(0), under_way: watch::Sender::new(false) }
    }
}

impl HandingOver {
    /// Starts a handover to `to`; false when one is under way.
    pub fn begin(&self, to: NodeId) -> bool {
        if self.active.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return false;
        }
        self.to.store(to, Ordering::SeqCst);
        self.under_way.send_replace(true);
        true
    }

    pub fn end(&self) {
        self.active.store(false, Ordering::SeqCst);
        self.under_way.send_replace(false);
    }

    /// The broker leadership is being handed to, while a handover is under way.
    pub fn target(&self) -> Option<NodeId> {
        self.active.load(Ordering::Acquire).then(|| self.to.load(Ordering::Acquire))
    }

    /// Resolves once no handover is under way.
    pub async fn ended(&self) {
        let mut under_way = self.under_way.subscribe();
        let _ = under_way.wait_for(|active| !active).await;
    }
}

/// Why a broker is not ready to serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("the raft core stopped: {0}")]
    Stopped(String),
    #[error("no leader known")]
    NoLeader,
    #[error("no word that leader {leader} is alive for {silent_ms} ms")]
    LeaderSilent { leader: NodeId, silent_ms: u64 },
    #[error("applied index {applied} is {} entries behind the commit index {committed}", committed - applied)]
    Behind { applied: u64, committed: u64 },
}

/// Why the applied state cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the applied state: {0}")]
pub struct ReadError(#[from] redb::TransactionError);

/// A broker: its raft, its applied state and the leader's write path.
pub struct Broker {
    pub config: BrokerConfig,
    pub raft: Raft,
    state: StateFiles,
    applied: watch::Receiver<AppliedStatus>,
    committed: Arc<AtomicU64>,
    proposer: Proposer,
    forwarder: Forwarder,
    /// Why the Raft core stopped, or the state was found damaged, once it has: the broker stops
    /// serving then.
    core_failure: Arc<OnceLock<String>>,
    /// Sounded by a read that finds a damaged value.
    damage_alarm: DamageAlarm,
    /// The snapshot arriving from the leader, checked chunk by chunk.
    pub(crate) snapshot_receipts: Receipts,
    /// The log's repair: while under way, this broker does not vote.
    pub(crate) repair: LogRepair,
    /// When this broker last heard from a leader: it grants no pre-vote while that is recent.
    leader_contact: LeaderContact,
    /// The log, read for its last id when judging a pre-vote.
    log: LogReader,
    /// Digests of the applied state at state check marks.
    state_checks: StateChecks,
    shutdown: CancellationToken,
    /// The client listener, which returns once its connections drained after shutdown.
    client_listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// What this broker counts and times, for `/metrics`.
    pub metrics: Metrics,
    /// When the leader's log reached which index, for followers' lag in time.
    append_times: AppendTimes,
    /// When this broker saw a new leader.
    leader_changes: LeaderChanges,
    /// Set while this leader hands leadership over (the `handover` module): writes wait.
    handing_over: HandingOver,
    /// Until when this broker's own campaigns wait: another voter is being handed leadership.
    campaign_hold: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// When this broker started, in ms since the Unix epoch.
    started_ms: u64,
}

/// What a read does when it finds a damaged value: once, it marks the state in `data_dir` for a
/// rebuild at the next start and stops the broker, which exits non-zero so that its supervisor
/// starts it again. The read itself still fails, and other brokers serve the client meanwhile.
fn state_damage_alarm(
    data_dir: std::path::PathBuf,
    failure: Arc<OnceLock<String>>,
    shutdown: CancellationToken,
) -> DamageAlarm {
    Arc::new(move |corrupt: &CorruptValue| {
        if failure.set(format!("the state is damaged: {corrupt}")).is_ok() {
            state_store::mark_damaged(&data_dir, &StateDamage::Value(corrupt.clone()));
            shutdown.cancel();
        }
    })
}

/// Why this broker refused a vote request.
#[derive(Debug, thiserror::Error)]
pub enum VoteRefused {
    #[error("broker {id} repairs a damaged log through index {floor}, and votes once it has applied it")]
    Repairing { id: NodeId, floor: u64 },
    #[error("{0}")]
    Raft(Box<openraft::error::RaftError<NodeId>>),
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("id", &self.config.id).finish()
    }
}

/// What the broker keeps of the log store openraft owns.
pub(crate) struct LogHandles {
    /// The index committed, perhaps not yet on disk.
    pub committed: Arc<AtomicU64>,
    pub repair: LogRepair,
    pub reader: LogReader,
}

impl Broker {
    /// A broker over a started raft, its applied state and its log.
    pub(crate) fn new(
        config: BrokerConfig,
        raft: Raft,
        state: StateFiles,
        applied: watch::Receiver<AppliedStatus>,
        log: LogHandles,
        state_checks: StateChecks,
        metrics: Metrics,
    ) -> Broker {
        let LogHandles { committed, repair, reader: log } = log;
        let proposer =
            Proposer::start(raft.clone(), applied.clone(), &config.limits, config.clock, metrics.proposals.clone());
        let forwarder = Forwarder::new(config.network(), config.limits.forward_connections_max);
        let core_failure = Arc::new(OnceLock::new());
        let started_ms = config.clock.now_ms();
        let shutdown = CancellationToken::new();
        let damage_alarm = state_damage_alarm(config.data_dir.clone(), Arc::clone(&core_failure), shutdown.clone());
        Broker {
            config,
            raft,
            state,
            applied,
            committed,
            proposer,
            forwarder,
            core_failure,
            damage_alarm,
            snapshot_receipts: Receipts::default(),
            repair,
            leader_contact: LeaderContact::default(),
            log,
            state_checks,
            shutdown,
            client_listener: std::sync::Mutex::new(None),
            metrics,
            append_times: AppendTimes::default(),
            leader_changes: LeaderChanges::default(),
            handing_over: HandingOver::default(),
            campaign_hold: std::sync::Mutex::new(None),
            started_ms,
        }
    }

    /// Hands over the client listener's task, for [`Broker::stop`] to wait for.
    pub(crate) fn serving_clients(&self, listener: tokio::task::JoinHandle<()>) {
        *self.client_listener.lock().expect("the listener slot") = Some(listener);
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// Milliseconds since the Unix epoch by this broker's clock.
    pub fn now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    /// Cancelled when the broker stops: on request, once it is removed from the cluster, or once
    /// its Raft core stopped.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting work, lets client connections drain (each finishes its requests in
    /// flight, within [`DRAIN_MS_MAX`] all told), and stops raft, which kept committing meanwhile.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        let listener = self.client_listener.lock().expect("the listener slot").take();
        if let Some(listener) = listener
            && tokio::time::timeout(Duration::from_millis(DRAIN_MS_MAX), listener).await.is_err()
        {
            tracing::warn!("client connections did not drain in time; closing them");
        }
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft did not shut down cleanly");
        }
    }

    /// Records why the Raft core stopped, and stops serving.
    pub(crate) fn core_stopped(&self, failure: String) {
        let _ = self.core_failure.set(failure);
        self.shutdown.cancel();
    }

    /// Why the Raft core stopped, if it has.
    pub fn core_failure(&self) -> Option<&str> {
        self.core_failure.get().map(String::as_str)
    }

    /// Follows what this broker has applied.
    pub fn applied(&self) -> watch::Receiver<AppliedStatus> {
        self.applied.clone()
    }

    /// The leader as this broker knows it.
    pub fn leader(&self) -> Option<Leader> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node))
    }

    /// Whether, and to whom, this leader is handing leadership over.
    pub fn handing_over(&self) -> &HandingOver {
        &self.handing_over
    }

    /// Starts an election with this broker as the candidate (no pre-vote here: the caller has
    /// decided), counting it; a failure to start is logged.
    pub async fn stand_for_election(&self) {
        match self.raft.trigger().elect().await {
            Ok(()) => {
                self.metrics.raft.elections_started.inc();
            }
            Err(error) => tracing::warn!(%error, "the election could not start"),
        }
    }

    /// Holds this broker's own campaigns until `until`: the leader is handing leadership to
    /// another voter, which must stand first.
    pub fn hold_campaigns(&self, until: tokio::time::Instant) {
        *self.campaign_hold.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(until);
    }

    /// Until when this broker's own campaigns wait, if they do.
    pub fn campaigns_held_until(&self) -> Option<tokio::time::Instant> {
        *self.campaign_hold.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// When this broker started, in milliseconds since the Unix epoch.
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// When the leader's log reached which index (sampled while this broker leads).
    pub fn append_times(&self) -> &AppendTimes {
        &self.append_times
    }

    /// Milliseconds since this broker last had word that the leader it knows is alive: for the
    /// leader, since a quorum last acknowledged it; for a follower, since the leader's last append
    /// or snapshot chunk reached it. A leader cut off from its followers, or a follower cut off
    /// from the leader, shows here while it still names a leader.
    pub fn leader_silence_ms(&self) -> u64 {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.state == ServerState::Leader {
            return metrics.millis_since_quorum_ack.unwrap_or(u64::MAX);
        }
        self.leader_contact.last().elapsed().as_millis() as u64
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.id())
    }

    /// Answers a candidate's vote request, unless this broker's log is under repair: a damaged
    /// log must not count in an election ([`crate::raft::repair`]).
    pub async fn vote(
        &self,
        request: openraft::raft::VoteRequest<NodeId>,
    ) -> Result<openraft::raft::VoteResponse<NodeId>, VoteRefused> {
        if let Some(floor) = self.repair.floor() {
            return Err(VoteRefused::Repairing { id: self.id(), floor });
        }
        self.raft.vote(request).await.map_err(|error| VoteRefused::Raft(Box::new(error)))
    }

    /// Takes a leader's append. One from a leader at least as recent as the one this broker
    /// knows (the appends openraft does not refuse for a higher vote) is word from a live leader
    /// as it arrives, not once it is synced: a large append takes a while to sync.
    pub async fn append_entries(
        &self,
        request: openraft::raft::AppendEntriesRequest<TypeConfig>,
    ) -> Result<openraft::raft::AppendEntriesResponse<NodeId>, openraft::error::RaftError<NodeId>> {
        let known = self.raft.metrics().borrow().vote;
        if request.vote.is_committed() && request.vote >= known {
            self.leader_contact.heard();
        }
        self.raft.append_entries(request).await
    }

    /// Takes a leader's snapshot chunk; one from the leader this broker follows is word from it.
    pub async fn install_snapshot(
        &self,
        request: openraft::raft::InstallSnapshotRequest<TypeConfig>,
    ) -> Result<
        openraft::raft::InstallSnapshotResponse<NodeId>,
        openraft::error::RaftError<NodeId, openraft::error::InstallSnapshotError>,
    > {
        let leader_vote = request.vote;
        let response = self.raft.install_snapshot(request).await?;
        if response.vote == leader_vote {
            self.leader_contact.heard();
        }
        Ok(response)
    }

    /// When this broker last heard from a leader.
    pub fn leader_contact(&self) -> &LeaderContact {
        &self.leader_contact
    }

    /// What this broker knows to judge a pre-vote; `None` if its log cannot be read.
    pub fn voter_view(&self) -> Option<VoterView> {
        let lease = Duration::from_millis(self.config.raft.election_timeout_ms_max);
        let last_log_id = match self.log.last_log_id() {
            Ok(last) => last,
            Err(error) => {
                tracing::warn!(%error, "the log's last id cannot be read: no pre-vote is granted or asked");
                return None;
            }
        };
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        Some(VoterView {
            term: metrics.current_term,
            last_log_id,
            leads: metrics.state == ServerState::Leader,
            hears_a_leader: self.leader_contact.last().elapsed() < lease,
            repairing: self.repair.floor().is_some(),
        })
    }

    /// Answers a pre-vote ([`crate::raft::pre_vote`]); it changes nothing here.
    pub fn pre_vote(&self, request: &PreVote) -> PreVoteAnswer {
        let Some(view) = self.voter_view() else {
            return PreVoteAnswer { granted: false, term: self.raft.metrics().borrow().current_term };
        };
        let answer = view.judge(request);
        tracing::debug!(candidate = request.candidate, granted = answer.granted, "answered a pre-vote");
        answer
    }

    /// The pre-vote this broker, seeing `view`, would ask for now, if it may stand for election
    /// at all: a voter in an initialized cluster, not leading, not repairing its log.
    pub fn candidacy(&self, view: &VoterView) -> Option<PreVote> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let voter = metrics.membership_config.membership().voter_ids().any(|id| id == self.id());
        (voter && !view.leads && !view.repairing).then(|| PreVote {
            candidate: self.id(),
            next_term: view.term + 1,
            last_log_id: view.last_log_id,
        })
    }

    /// The voter sets of the newest membership: one, or two during a change.
    pub fn voter_sets(&self) -> Vec<std::collections::BTreeSet<NodeId>> {
        self.raft.metrics().borrow().membership_config.membership().get_joint_config().clone()
    }

    /// How to reach member `id`, if it is one.
    pub fn member_node(&self, id: NodeId) -> Option<BrokerNode> {
        self.raft.metrics().borrow().membership_config.membership().get_node(&id).cloned()
    }

    /// The digests this broker took of its state at state check marks.
    pub fn state_checks(&self) -> &StateChecks {
        &self.state_checks
    }

    /// The index this broker must apply before it votes again, while its log is under repair.
    pub fn repair_floor(&self) -> Option<u64> {
        self.repair.floor()
    }

    /// Proposes one command through the log and waits for its outcome. `NotLeader` means the
    /// command was not proposed; once proposed, a lost leadership answers `OutcomeUnknown`.
    pub async fn propose(&self, submission: Submission) -> Result<Outcome, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { leader: self.leader() });
        }
        if let Some(to) = self.handing_over.target() {
            // Held, not refused: once the handover ends, a client told NOT_LEADER goes straight
            // to the new leader, where a refusal now would have it back off and retry blind.
            let waited = Duration::from_millis(HELD_DURING_HANDOVER_MS_MAX);
            if tokio::time::timeout(waited, self.handing_over.ended()).await.is_err() {
                return Err(ProposeError::HandingOver { to });
            }
            if !self.is_leader() {
                return Err(ProposeError::NotLeader { leader: self.leader() });
            }
        }
        self.proposer.propose(submission).await
    }

    /// A consistent read view of the applied state.
    /// A read that meets a damaged value marks the state for a rebuild and stops the broker.
    pub fn read(&self) -> Result<ReadStore, ReadError> {
        Ok(self.state.read()?.with_alarm(Arc::clone(&self.damage_alarm)))
    }

    /// Passes a client's request to the leader, as `actor`, and returns the leader's answer once
    /// this broker has applied as far as the leader had when it answered (for up to `timeout`
    /// all told): the client's next request here sees what this one did. The frame carries the
    /// client's own request id, for the leader's logs.
    pub async fn forward(
        &self,
        leader: &Leader,
        request: pb::ClientFrame,
        actor: &Actor,
        timeout: Duration,
    ) -> Result<pb::ServerFrame, ForwardError> {
        let started = tokio::time::Instant::now();
        let forwarded = pb::Forwarded { request: Some(request), actor: Some(crate::command::actor_to_pb(actor)) };
        let answered = self.forwarder.forward(leader, forwarded, timeout).await?;
        let left = timeout.saturating_sub(started.elapsed()).max(FORWARD_CATCH_UP_MIN);
        let caught_up =
            self.raft.wait(Some(left)).applied_index_at_least(Some(answered.applied_index), "forwarded").await;
        if caught_up.is_err() {
            tracing::debug!(index = answered.applied_index, "answering a forwarded request before applying its index");
        }
        Ok(answered.answer.unwrap_or_default())
    }

    /// The index of the last log entry this broker applied.
    pub fn applied_index(&self) -> u64 {
        self.raft.metrics().borrow().last_applied.map_or(0, |id| id.index)
    }

    /// Entries the leader has proposed and not yet seen applied.
    pub fn entries_in_flight(&self) -> usize {
        self.proposer.entries_in_flight()
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
        let mut status = pb::ClusterStatus {
            broker_id: self.id(),
            role: role.into(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            commit_index: self.committed.load(Ordering::Relaxed).max(applied_index),
            applied_index,
            brokers,
            repair_floor: self.repair.floor(),
            leader_changes_10m: self.leader_changes.within(LEADER_CHANGES_WINDOW),
            uptime_ms: self.now_ms().saturating_sub(self.started_ms),
            not_ready: None,
        };
        status.not_ready = self.readiness_of(&status).err().map(|why| why.to_string());
        status
    }

    /// Whether this broker can serve: its Raft core runs, it knows a leader that is alive (for
    /// the leader: a quorum acknowledged it within the election timeout; for a follower: the
    /// leader's last append came within it), and it has applied within [`READY_APPLY_LAG_MAX`]
    /// entries of the commit index.
    pub fn readiness(&self) -> Result<(), NotReady> {
        self.readiness_of(&self.status())
    }

    fn readiness_of(&self, status: &pb::ClusterStatus) -> Result<(), NotReady> {
        if let Some(failure) = self.core_failure() {
            return Err(NotReady::Stopped(failure.to_owned()));
        }
        let leader = status.leader_id.ok_or(NotReady::NoLeader)?;
        let silent_ms = self.leader_silence_ms();
        if silent_ms > self.config.raft.election_timeout_ms_max {
            return Err(NotReady::LeaderSilent { leader, silent_ms });
        }
        if status.commit_index.saturating_sub(status.applied_index) > READY_APPLY_LAG_MAX {
            return Err(NotReady::Behind { applied: status.applied_index, committed: status.commit_index });
        }
        Ok(())
    }

    /// Notes a new leader: counted for `/metrics` and remembered for `chorus status`.
    pub(crate) fn leader_changed(&self) {
        self.metrics.raft.leader_changes.inc();
        self.leader_changes.record();
    }

    /// Adds a broker (as a learner that catches up, then a voter) or removes one, for `actor`.
    /// The change is first recorded through the log, where the state machine checks that the
    /// actor is an admin, and made only if that record was accepted.
    pub async fn change_membership(&self, change: MembershipChange, actor: &Actor) -> Result<Outcome, ProposeError> {
        let mut next: std::collections::BTreeSet<NodeId> = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics.membership_config.membership().voter_ids().collect()
        };
        match &change {
            MembershipChange::Add { id, .. } => {
                next.insert(*id);
            }
            MembershipChange::Remove { id } if !next.remove(id) => return Err(MembershipError::NotAVoter(*id).into()),
            MembershipChange::Remove { .. } if next.is_empty() => return Err(MembershipError::LastBroker.into()),
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
}
