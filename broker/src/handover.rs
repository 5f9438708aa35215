//! Planned leader transfer: the leader hands leadership to another voter before maintenance, so a
//! restart of the leader costs no wait for a dead leader's silence (`chorus leader transfer`, and
//! a leader's SIGTERM).
//!
//! openraft 0.9 has no transfer of its own, and its followers refuse every vote for
//! `election_timeout_ms_max` after the leader's last append (the leader lease). So the leader,
//! in [`hand_over`]:
//!
//! 1. stops taking writes: a proposal waits for the handover to end, then is refused with the
//!    new leader's address (`NOT_LEADER`), never proposed here, and the client goes there at once
//!    (or, if the handover failed, it is proposed here after all);
//! 2. waits until what it proposed is applied and the target holds its whole log;
//! 3. stops its heartbeats, so every follower's lease on it runs out one lease later;
//! 4. sends `TimeoutNow` to the target, then to the other voters: the target
//!    ([`stand_when_lease_ends`]) stands for election, without a pre-vote, the moment its lease
//!    has run out; the others hold their own campaigns for [`HANDOVER_MS_MAX`] (their randomized
//!    timers could otherwise fire first, as seen once in CI);
//! 5. waits for another broker to lead, then heartbeats again (as a follower it sends none) and
//!    lets the held proposals go, to be refused with the new leader's address. If the target does not win within
//!    [`HANDOVER_MS_MAX`], the old leader takes writes again and says so.
//!
//! A transfer costs one lease of silence and one election round, where a leader killed -9 costs
//! one to two leases, a pre-vote and an election (BENCHMARKS.md, "Leader transfer").

use std::sync::Arc;
use std::time::Duration;

use chorus_protocol::pb;
use openraft::ServerState;

use crate::broker::Broker;
use crate::raft::NodeId;
use crate::raft::network::PeerClient;

/// The longest a handover waits for the target to catch up and then to win.
pub const HANDOVER_MS_MAX: u64 = 5_000;
/// How long after its lease runs out the target stands: openraft stamps the lease when its core
/// takes the append, a little after the broker noted it.
const LEASE_MARGIN_MS: u64 = 30;
/// How long a handover to a target it chose waits for that target to catch up: a live follower
/// does within milliseconds once writes stop; one that does not is down or cut off.
const CHOSEN_CATCH_UP_MS_MAX: u64 = 1_000;
/// How often a handover looks again at what it waits for.
const POLL_MS: u64 = 5;

/// Why leadership was not handed over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoverError {
    #[error("this broker is not the leader")]
    NotLeader { leader: Option<NodeId> },
    #[error("broker {0} is not a voter of this cluster")]
    NotAVoter(NodeId),
    #[error("the leader cannot hand leadership to itself")]
    ToItself,
    #[error("no other voter to hand leadership to")]
    NoOtherVoter,
    #[error("a handover is already under way, to broker {0}")]
    AlreadyHandingOver(NodeId),
    #[error("broker {to} did not catch up in time (it holds index {matched} of {last}): is it down?")]
    Behind { to: NodeId, matched: u64, last: u64 },
    #[error("broker {to} did not take TimeoutNow: {why}")]
    Unreachable { to: NodeId, why: String },
    #[error("broker {to} did not win an election within {HANDOVER_MS_MAX} ms; this broker leads on")]
    NotElected { to: NodeId },
}

/// Leadership handed over: to whom, in which term, and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handover {
    pub leader: NodeId,
    pub term: u64,
    pub took: Duration,
}

/// Hands leadership to `to`, or to the voter furthest along in the log; see the module's
/// documentation. Takes writes again however it ends.
pub async fn hand_over(broker: &Broker, to: Option<NodeId>) -> Result<Handover, HandoverError> {
    let started = tokio::time::Instant::now();
    let target = choose(broker, to)?;
    if !broker.handing_over().begin(target) {
        return Err(HandoverError::AlreadyHandingOver(broker.handing_over().target().unwrap_or(target)));
    }
    tracing::info!(to = target, "handing leadership over: writes stop until the new leader takes them");
    let result = run(broker, target, to.is_none(), started).await;
    broker.raft.runtime_config().heartbeat(true);
    broker.handing_over().end();
    match &result {
        Ok(done) => tracing::info!(
            to = done.leader,
            term = done.term,
            ms = done.took.as_millis() as u64,
            "leadership handed over"
        ),
        Err(error) => tracing::warn!(%error, "leadership not handed over"),
    }
    result
}

/// The target: `to` if it is another voter, else the other voter furthest along in the log.
fn choose(broker: &Broker, to: Option<NodeId>) -> Result<NodeId, HandoverError> {
    if !broker.is_leader() {
        return Err(HandoverError::NotLeader { leader: broker.leader().map(|(id, _)| id) });
    }
    let status = broker.status();
    let voters: Vec<&pb::BrokerInfo> = status.brokers.iter().filter(|b| b.voter).collect();
    match to {
        Some(id) if id == broker.id() => Err(HandoverError::ToItself),
        Some(id) if voters.iter().any(|b| b.id == id) => Ok(id),
        Some(id) => Err(HandoverError::NotAVoter(id)),
        None => voters
            .iter()
            .filter(|b| b.id != broker.id())
            .max_by_key(|b| (b.matched_index.unwrap_or(0), std::cmp::Reverse(b.id)))
            .map(|b| b.id)
            .ok_or(HandoverError::NoOtherVoter),
    }
}

async fn run(
    broker: &Broker,
    target: NodeId,
    chosen: bool,
    started: tokio::time::Instant,
) -> Result<Handover, HandoverError> {
    let catch_up_ms = if chosen { CHOSEN_CATCH_UP_MS_MAX } else { HANDOVER_MS_MAX };
    caught_up(broker, target, started + Duration::from_millis(catch_up_ms)).await?;
    broker.raft.runtime_config().heartbeat(false);
    let term = broker.raft.metrics().borrow().current_term;
    send_timeout_now(broker, target, term).await?;
    // The others hold their own campaigns, so the target stands first; one that does not hear
    // this campaigns as usual, and an election sorts it out.
    for voter in other_voters(broker, target) {
        if let Err(error) = send_timeout_now_to(broker, voter, target, term).await {
            tracing::debug!(voter, %error, "a voter did not hear of the handover");
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(HANDOVER_MS_MAX);
    loop {
        let (leader, term, state) = {
            let metrics = broker.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.current_leader, metrics.current_term, metrics.state)
        };
        if state != ServerState::Leader && leader.is_some_and(|id| id != broker.id()) {
            return Ok(Handover { leader: leader.unwrap_or(target), term, took: started.elapsed() });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HandoverError::NotElected { to: target });
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// Waits until nothing this broker proposed is still in flight and `target` holds its whole log.
async fn caught_up(broker: &Broker, target: NodeId, deadline: tokio::time::Instant) -> Result<(), HandoverError> {
    loop {
        let last = broker.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let matched =
            broker.status().brokers.iter().find(|b| b.id == target).and_then(|b| b.matched_index).unwrap_or(0);
        if broker.entries_in_flight() == 0 && matched >= last {
            return Ok(());
        }
        if !broker.is_leader() {
            return Err(HandoverError::NotLeader { leader: broker.leader().map(|(id, _)| id) });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HandoverError::Behind { to: target, matched, last });
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

async fn send_timeout_now(broker: &Broker, target: NodeId, term: u64) -> Result<(), HandoverError> {
    send_timeout_now_to(broker, target, target, term).await
}

/// Voters other than this broker and `target`.
fn other_voters(broker: &Broker, target: NodeId) -> Vec<NodeId> {
    let status = broker.status();
    status.brokers.iter().filter(|b| b.voter && b.id != target && b.id != broker.id()).map(|b| b.id).collect()
}

/// Tells `voter` that `candidate` is handed leadership in `term`.
async fn send_timeout_now_to(
    broker: &Broker,
    voter: NodeId,
    candidate: NodeId,
    term: u64,
) -> Result<(), HandoverError> {
    let node = broker.member_node(voter).ok_or(HandoverError::NotAVoter(voter))?;
    let mut client = PeerClient::new(&broker.config.network(), voter, node.peer_addr);
    let request = pb::TimeoutNow { from: broker.id(), term, candidate };
    let timeout = Duration::from_millis(broker.config.raft.election_timeout_ms_min);
    match client.call(request, timeout).await {
        Ok(pb::Empty {}) => Ok(()),
        Err(error) => Err(HandoverError::Unreachable { to: voter, why: error.to_string() }),
    }
}

/// Why a broker refuses `TimeoutNow`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutNowRefused {
    #[error("broker {from} is not the leader this broker follows in term {term}")]
    NotMyLeader { from: NodeId, term: u64 },
    #[error("this broker repairs a damaged log and does not stand for election")]
    Repairing,
}

/// Takes the leader's `TimeoutNow`: checks it comes from the leader this broker follows, in the
/// current term; as the candidate, stands for election once its lease on that leader has run
/// out; as another voter, holds its own campaigns for [`HANDOVER_MS_MAX`] so the candidate
/// stands first.
pub fn timeout_now(broker: &Arc<Broker>, request: pb::TimeoutNow) -> Result<(), TimeoutNowRefused> {
    let (leader, term) = {
        let metrics = broker.raft.metrics();
        let metrics = metrics.borrow();
        (metrics.current_leader, metrics.current_term)
    };
    if leader != Some(request.from) || term != request.term || broker.is_leader() {
        return Err(TimeoutNowRefused::NotMyLeader { from: request.from, term: request.term });
    }
    if request.candidate != broker.id() {
        broker.hold_campaigns(tokio::time::Instant::now() + Duration::from_millis(HANDOVER_MS_MAX));
        return Ok(());
    }
    if broker.repair_floor().is_some() {
        return Err(TimeoutNowRefused::Repairing);
    }
    tokio::spawn(stand_when_lease_ends(Arc::clone(broker), request));
    Ok(())
}

/// Waits until this broker's lease on the old leader has run out (no append from it for
/// `election_timeout_ms_max`), then stands for election, unless the leader or the term changed
/// meanwhile or the leader appended again (it gave up the handover).
async fn stand_when_lease_ends(broker: Arc<Broker>, request: pb::TimeoutNow) {
    let lease = Duration::from_millis(broker.config.raft.election_timeout_ms_max + LEASE_MARGIN_MS);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(HANDOVER_MS_MAX);
    loop {
        let silent = broker.leader_contact().last().elapsed();
        let (leader, term) = {
            let metrics = broker.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.current_leader, metrics.current_term)
        };
        if leader != Some(request.from) || term != request.term || tokio::time::Instant::now() >= deadline {
            return;
        }
        if silent >= lease {
            tracing::info!(from = request.from, term, "the leader handed over: standing for election");
            broker.stand_for_election().await;
            return;
        }
        tokio::time::sleep(lease.saturating_sub(silent).min(Duration::from_millis(50))).await;
    }
}
