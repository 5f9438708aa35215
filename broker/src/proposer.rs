//! The leader's write path: commands from every connection queue here, are packed into log
//! entries (group commit across clients), stamped with the leader's clock, and proposed in order.
//! Each command's outcome goes back to its caller once the entry is applied.
//!
//! Time: each entry carries `max(last stamp, wall clock, last applied time)`, so stamps never go
//! back within a leader, and the machine clamps across leaders.

use std::sync::Arc;
use std::time::Duration;

use chorus_machine::{Command, Entry, Outcome, Submission};
use openraft::error::{ChangeMembershipError, ClientWriteError, Fatal, RaftError};
use prost::Message;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::command::entry_to_pb;
use crate::config::Limits;
use crate::raft::state_store::AppliedStatus;
use crate::raft::{BrokerNode, EntryBytes, NodeId, Raft};

/// Why a proposal has no outcome. Variants say whether the command may have been applied:
/// `NotLeader`, `ShuttingDown` and `Overloaded` were never proposed; after `NoQuorum`,
/// `OutcomeUnknown` and `RaftStopped` it may have been, or may still be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader")]
    NotLeader { leader: Option<(NodeId, BrokerNode)> },
    #[error("no quorum answered within {waited_ms} ms; the outcome is unknown")]
    NoQuorum { waited_ms: u64 },
    #[error("leadership changed, or the broker stopped, while proposing; the outcome is unknown")]
    OutcomeUnknown,
    #[error("the broker is shutting down; the command was not proposed")]
    ShuttingDown,
    #[error("too many writes queued; the command was not proposed")]
    Overloaded,
    #[error("the raft core stopped")]
    RaftStopped(#[source] Option<Fatal<NodeId>>),
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

/// Why a membership change was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("broker {0} is not a voter")]
    NotAVoter(NodeId),
    #[error("cannot remove the last broker")]
    LastBroker,
    #[error("membership change refused: {0}")]
    Refused(#[source] ChangeMembershipError<NodeId>),
}

struct Proposal {
    submission: Submission,
    reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

/// Queues commands for the proposer task.
#[derive(Clone, Debug)]
pub struct Proposer {
    queue: mpsc::Sender<Proposal>,
    write_timeout: Duration,
}

impl std::fmt::Debug for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposal").field("submission", &self.submission).finish()
    }
}

impl Proposer {
    /// Starts the proposer task for `raft`.
    pub fn start(raft: Raft, applied: watch::Receiver<AppliedStatus>, limits: &Limits, clock: Clock) -> Proposer {
        let (queue, proposals) = mpsc::channel(limits.proposals_queued_max);
        let write_timeout = Duration::from_millis(limits.write_timeout_ms);
        let task = ProposerTask {
            raft,
            applied,
            proposals,
            in_flight: Arc::new(Semaphore::new(limits.entries_in_flight_max)),
            commands_per_entry_max: limits.commands_per_entry_max,
            entry_bytes_target: limits.entry_bytes_target,
            write_timeout,
            clock,
            last_stamp_ms: 0,
        };
        tokio::spawn(task.run());
        Proposer { queue, write_timeout }
    }

    /// Proposes one command and waits for its outcome.
    pub async fn propose(&self, submission: Submission) -> Result<Outcome, ProposeError> {
        let (reply, outcome) = oneshot::channel();
        self.queue.try_send(Proposal { submission, reply }).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => ProposeError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => ProposeError::ShuttingDown,
        })?;
        // The proposer answers within its own write timeout; this outer bound only guards
        // against a proposer that stopped.
        let waited = self.write_timeout * 2;
        match tokio::time::timeout(waited, outcome).await {
            Ok(Ok(result)) => result,
            // A reply dropped unanswered: the proposer stopped, perhaps after proposing.
            Ok(Err(_)) => Err(ProposeError::OutcomeUnknown),
            Err(_) => Err(ProposeError::NoQuorum { waited_ms: waited.as_millis() as u64 }),
        }
    }
}

struct ProposerTask {
    raft: Raft,
    applied: watch::Receiver<AppliedStatus>,
    proposals: mpsc::Receiver<Proposal>,
    in_flight: Arc<Semaphore>,
    commands_per_entry_max: usize,
    entry_bytes_target: usize,
    write_timeout: Duration,
    clock: Clock,
    last_stamp_ms: u64,
}

impl ProposerTask {
    async fn run(mut self) {
        while let Some(first) = self.proposals.recv().await {
            let batch = self.gather(first);
            let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
                return;
            };
            let (bytes, replies) = self.encode(batch);
            // `client_write_ff` queues the entry in order; the answer is awaited off this task so
            // the next entry can be proposed at once (pipelining).
            let answer = self.raft.client_write_ff(EntryBytes(bytes.into())).await;
            let timeout = self.write_timeout;
            tokio::spawn(async move {
                let result = match answer {
                    Ok(receiver) => match tokio::time::timeout(timeout, receiver).await {
                        Ok(Ok(Ok(response))) => Ok(response.data.0),
                        Ok(Ok(Err(error))) => Err(write_error(error)),
                        Ok(Err(_)) => Err(ProposeError::RaftStopped(None)),
                        Err(_) => Err(ProposeError::NoQuorum { waited_ms: timeout.as_millis() as u64 }),
                    },
                    Err(fatal) => Err(ProposeError::RaftStopped(Some(fatal))),
                };
                drop(permit);
                answer_all(replies, result);
            });
        }
    }

    /// The first proposal and whatever else is queued, up to an entry's limits.
    fn gather(&mut self, first: Proposal) -> Vec<Proposal> {
        let mut bytes = first.command_size();
        let mut batch = vec![first];
        while batch.len() < self.commands_per_entry_max && bytes < self.entry_bytes_target {
            match self.proposals.try_recv() {
                Ok(next) => {
                    bytes += next.command_size();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        batch
    }

    fn encode(&mut self, batch: Vec<Proposal>) -> (Vec<u8>, Vec<oneshot::Sender<Result<Outcome, ProposeError>>>) {
        self.last_stamp_ms = self.last_stamp_ms.max(self.clock.now_ms()).max(self.applied.borrow().time_ms);
        let (submissions, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.submission, p.reply)).unzip();
        let entry = Entry { time_ms: self.last_stamp_ms, submissions };
        (entry_to_pb(entry).encode_to_vec(), replies)
    }
}

impl Proposal {
    /// A rough size, enough to bound an entry.
    fn command_size(&self) -> usize {
        match &self.submission.command {
            Command::Publish(publish) => publish.messages.iter().map(|m| m.payload.len() + 64).sum(),
            _ => 64,
        }
    }
}

fn answer_all(
    replies: Vec<oneshot::Sender<Result<Outcome, ProposeError>>>,
    result: Result<Vec<Outcome>, ProposeError>,
) {
    match result {
        Ok(outcomes) => {
            assert_eq!(outcomes.len(), replies.len(), "one outcome per proposed command");
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// An entry's refusal. openraft answers ForwardToLeader both when this broker was not the leader
/// and when it appended the entry but a new leader's log replaced it here. In the second case a
/// later leader may still hold and commit the entry (a follower that had it can win the next
/// election), so ForwardToLeader cannot promise the command was not applied: it is unknown.
fn write_error(error: ClientWriteError<NodeId, BrokerNode>) -> ProposeError {
    match error {
        ClientWriteError::ForwardToLeader(_) => ProposeError::OutcomeUnknown,
        ClientWriteError::ChangeMembershipError(error) => MembershipError::Refused(error).into(),
    }
}

/// Maps a membership-change or other raft API error.
pub fn raft_error(error: RaftError<NodeId, ClientWriteError<NodeId, BrokerNode>>) -> ProposeError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            ProposeError::NotLeader { leader: forward.leader_id.zip(forward.leader_node) }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(error)) => MembershipError::Refused(error).into(),
        RaftError::Fatal(fatal) => ProposeError::RaftStopped(Some(fatal)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::error::ForwardToLeader;

    /// openraft answers ForwardToLeader also for an entry it had appended and then lost to a
    /// new leader's log; that entry may still commit elsewhere, so it is not a definite refusal.
    #[test]
    fn a_refusal_after_proposing_is_unknown_not_not_leader() {
        let error = ClientWriteError::ForwardToLeader(ForwardToLeader { leader_id: Some(2), leader_node: None });
        assert_eq!(write_error(error), ProposeError::OutcomeUnknown);
    }
}
