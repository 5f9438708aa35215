//! Pre-votes (Raft thesis, section 9.6): the question a broker asks before it stands for
//! election, how a voter judges it ([`VoterView::judge`]), and when a broker last heard from a
//! leader ([`LeaderContact`]). Pure but for the clock; [`crate::election`] runs the campaign.
//!
//! A voter grants only if it has heard from no leader within openraft's leader lease
//! (`election_timeout_max`), does not lead, is not repairing its log, and the candidate's log is
//! at least as up to date as its own. A pre-vote changes nothing on either side.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{BrokerNode, LogId, NodeId};

/// A broker's question before it stands for election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreVote {
    pub candidate: NodeId,
    /// The term the candidate would stand in.
    pub next_term: u64,
    pub last_log_id: Option<LogId>,
}

/// A voter's answer: whether it would vote for the candidate now, and its own term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreVoteAnswer {
    pub granted: bool,
    pub term: u64,
}

/// What a voter knows when it judges a pre-vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterView {
    pub term: u64,
    pub last_log_id: Option<LogId>,
    pub leads: bool,
    /// It has heard from a leader within the leader lease.
    pub hears_a_leader: bool,
    /// Its log is under repair: it votes for nobody ([`crate::raft::repair`]).
    pub repairing: bool,
}

impl VoterView {
    /// Whether this voter would elect `request.candidate` now. The term is not judged: a
    /// candidate behind in terms loses its election harmlessly, and learns the term from it.
    pub fn judge(&self, request: &PreVote) -> PreVoteAnswer {
        let granted = !self.repairing && !self.leads && !self.hears_a_leader && request.last_log_id >= self.last_log_id;
        PreVoteAnswer { granted, term: self.term }
    }
}

/// When this broker last heard from a live leader.
#[derive(Debug)]
pub struct LeaderContact(Mutex<Instant>);

impl Default for LeaderContact {
    /// A broker that just started has heard nothing, but waits a full lease before it grants or
    /// asks for a pre-vote, as if it had.
    fn default() -> LeaderContact {
        LeaderContact(Mutex::new(Instant::now()))
    }
}

impl LeaderContact {
    pub fn heard(&self) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
    }

    pub fn last(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether `granted` holds a majority of every voter set (two during a membership change).
pub fn is_quorum(voter_sets: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    !voter_sets.is_empty()
        && voter_sets.iter().all(|voters| voters.iter().filter(|id| granted.contains(id)).count() * 2 > voters.len())
}

/// How pre-votes reach the other brokers: over the peer protocol, or the simulation's network.
pub trait PreVotes: Send + 'static {
    type Client: PreVoteClient;

    fn client(&self, target: NodeId, node: &BrokerNode) -> Self::Client;
}

/// Asks one broker; `None` when it does not answer within `timeout`.
pub trait PreVoteClient: Send + 'static {
    fn ask(
        &mut self,
        request: PreVote,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Option<PreVoteAnswer>> + Send;
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log_id(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn idle_voter() -> VoterView {
        VoterView { term: 5, last_log_id: log_id(5, 10), leads: false, hears_a_leader: false, repairing: false }
    }

    fn asking(last_log_id: Option<LogId>) -> PreVote {
        PreVote { candidate: 2, next_term: 6, last_log_id }
    }

    #[test]
    fn a_voter_grants_only_without_a_leader_and_to_a_log_as_long() {
        assert!(idle_voter().judge(&asking(log_id(5, 10))).granted);
        assert!(idle_voter().judge(&asking(log_id(6, 1))).granted, "a later term outranks a longer log");
        assert!(!idle_voter().judge(&asking(log_id(5, 9))).granted, "a shorter log");
        assert!(!idle_voter().judge(&asking(log_id(4, 99))).granted, "an older last term");
        assert!(!idle_voter().judge(&asking(None)).granted, "an empty log");
        let hears = VoterView { hears_a_leader: true, ..idle_voter() };
        assert!(!hears.judge(&asking(log_id(9, 99))).granted, "a voter that hears a leader keeps it");
        let leads = VoterView { leads: true, ..idle_voter() };
        assert!(!leads.judge(&asking(log_id(9, 99))).granted);
        let repairing = VoterView { repairing: true, ..idle_voter() };
        assert!(!repairing.judge(&asking(log_id(9, 99))).granted);
        assert_eq!(idle_voter().judge(&asking(None)).term, 5);
    }

    #[test]
    fn a_quorum_is_a_majority_of_every_voter_set() {
        let set = |ids: &[NodeId]| ids.iter().copied().collect::<BTreeSet<_>>();
        assert!(is_quorum(&[set(&[1, 2, 3])], &set(&[1, 3])));
        assert!(!is_quorum(&[set(&[1, 2, 3])], &set(&[1])));
        assert!(!is_quorum(&[set(&[1, 2, 3, 4])], &set(&[1, 2])), "half is no majority");
        assert!(is_quorum(&[set(&[1, 2, 3]), set(&[3, 4, 5])], &set(&[1, 3, 4])));
        assert!(!is_quorum(&[set(&[1, 2, 3]), set(&[3, 4, 5])], &set(&[1, 2, 3])), "both sets in a change");
        assert!(!is_quorum(&[], &set(&[1])));
        assert!(!is_quorum(&[set(&[1, 2, 3])], &set(&[7, 8, 9])), "strangers do not count");
    }

    #[tokio::test(start_paused = true)]
    async fn contact_is_the_time_last_heard() {
        let contact = LeaderContact::default();
        let before = contact.last();
        tokio::time::advance(Duration::from_millis(5)).await;
        contact.heard();
        assert_eq!(contact.last() - before, Duration::from_millis(5));
    }
}
