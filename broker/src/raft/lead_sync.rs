//! A leader's appends run ahead of its own fsync; what the cluster can see does not.
//!
//! openraft 0.9 awaits the flush of every append inside its core, and only then sends the
//! entries to followers: the leader's fsync and the followers' ran one after the other. A
//! leader's append is therefore reported flushed to openraft as soon as it is queued for the
//! writer (`LogStore::lead_ahead_of_sync`), so it goes to followers while the leader's sync runs.
//! openraft's commit index may then count the leader before its disk holds the entry, so nothing
//! observable follows that index until the leader's sync ends:
//!
//! - the state machine applies an entry only once it is synced here ([`LeadSync::synced_through`]),
//!   and a client is answered only after the apply;
//! - the commit index sent to followers stops before the oldest unsynced entry
//!   ([`LeadSync::clamp_commit`]), so no follower applies it either.
//!
//! An entry applied anywhere, or acknowledged, is thus on the leader's disk and (by openraft's
//! count of follower flushes, which are never reported early) on a majority. If the leader
//! crashes first, the entry was never acknowledged and may be lost like any other. A failed sync
//! fails every wait, which stops the Raft core.
//!
//! Followers never report early: an append counts as this broker's own only under a committed
//! vote for it, with every entry's leader id that vote's ([`LeadSync::leads`]).

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::watch;

use super::{LogId, NodeId, Vote};

/// A leader's appends reported flushed before their sync, shared by the log store, the state
/// machine and the replication network.
#[derive(Clone)]
pub struct LeadSync {
    id: NodeId,
    unsynced: Arc<watch::Sender<Unsynced>>,
}

impl std::fmt::Debug for LeadSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeadSync").field("id", &self.id).finish()
    }
}

#[derive(Default)]
struct Unsynced {
    /// Appends reported early and not yet synced, in the writer's order.
    appends: VecDeque<EarlyAppend>,
    next_seq: u64,
    /// A sync failed: what waits for it never gets it.
    failed: bool,
}

struct EarlyAppend {
    seq: u64,
    /// Its first entry's index.
    first: u64,
    /// The entry just before it, which the leader's disk already holds.
    before: Option<LogId>,
}

/// A sync of entries this leader had reported flushed failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the log failed to sync entries this leader had already sent to its followers")]
pub struct LeadSyncFailed;

impl LeadSync {
    /// For the broker `id`.
    pub fn new(id: NodeId) -> LeadSync {
        LeadSync { id, unsynced: Arc::new(watch::Sender::new(Unsynced::default())) }
    }

    /// Whether an append of the entries `entries` (their log ids) under `vote` is this broker's
    /// own, as the leader: only those may be reported before they are synced.
    pub(super) fn leads(&self, vote: Option<&Vote>, mut entries: impl Iterator<Item = LogId>) -> bool {
        let Some(vote) = vote.filter(|vote| vote.committed && vote.leader_id.node_id == self.id) else {
            return false;
        };
        entries.all(|log_id| log_id.leader_id == vote.leader_id)
    }

    /// Records an append from index `first`, after `before`, reported before its sync; returns
    /// the ticket [`LeadSync::synced`] takes once the writer has synced it.
    pub(super) fn early(&self, first: u64, before: Option<LogId>) -> u64 {
        // Without the entry just before it, the commit index falls back to nothing at all.
        let before = before.filter(|before| before.index + 1 == first);
        let mut seq = 0;
        self.unsynced.send_modify(|unsynced| {
            seq = unsynced.next_seq;
            unsynced.next_seq += 1;
            unsynced.appends.push_back(EarlyAppend { seq, first, before });
        });
        seq
    }

    /// The writer synced (or failed to sync) the append of ticket `seq`.
    pub(super) fn synced(&self, seq: u64, result: Result<(), std::io::Error>) {
        self.unsynced.send_modify(|unsynced| match result {
            Ok(()) => unsynced.appends.retain(|append| append.seq != seq),
            Err(_) => unsynced.failed = true,
        });
    }

    /// Waits until every entry through `index` this leader reported early is synced.
    pub async fn synced_through(&self, index: u64) -> Result<(), LeadSyncFailed> {
        let mut watch = self.unsynced.subscribe();
        let settled = watch
            .wait_for(|unsynced| unsynced.failed || unsynced.appends.front().is_none_or(|oldest| oldest.first > index))
            .await
            .map_err(|_| LeadSyncFailed)?;
        if settled.failed { Err(LeadSyncFailed) } else { Ok(()) }
    }

    /// The commit index a follower may be told: `commit`, or the last entry before the oldest
    /// that is not yet on this leader's disk.
    pub fn clamp_commit(&self, commit: Option<LogId>) -> Option<LogId> {
        let unsynced = self.unsynced.borrow();
        match (commit, unsynced.appends.front()) {
            (Some(commit), Some(oldest)) if commit.index >= oldest.first => oldest.before,
            _ => commit,
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LeaderId};

    use super::*;

    fn log_id(term: u64, node: NodeId, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn vote(term: u64, node: NodeId, committed: bool) -> Vote {
        Vote { leader_id: LeaderId::new(term, node), committed }
    }

    #[test]
    fn only_a_committed_vote_for_this_broker_leads() {
        let lead = LeadSync::new(1);
        let own = [log_id(3, 1, 7), log_id(3, 1, 8)];
        assert!(lead.leads(Some(&vote(3, 1, true)), own.into_iter()));
        assert!(!lead.leads(Some(&vote(3, 1, false)), own.into_iter()), "a candidate does not lead");
        assert!(!lead.leads(Some(&vote(3, 2, true)), [log_id(3, 2, 7)].into_iter()), "a follower does not");
        assert!(!lead.leads(Some(&vote(4, 1, true)), own.into_iter()), "entries of another term");
        assert!(!lead.leads(None, own.into_iter()));
    }

    #[test]
    fn the_commit_told_to_followers_stops_before_the_oldest_unsynced_entry() {
        let lead = LeadSync::new(1);
        let commit = Some(log_id(3, 1, 12));
        assert_eq!(lead.clamp_commit(commit), commit);
        let first = lead.early(10, Some(log_id(3, 1, 9)));
        let second = lead.early(12, Some(log_id(3, 1, 11)));
        assert_eq!(lead.clamp_commit(commit), Some(log_id(3, 1, 9)));
        assert_eq!(lead.clamp_commit(Some(log_id(3, 1, 8))), Some(log_id(3, 1, 8)), "behind it: unchanged");
        lead.synced(first, Ok(()));
        assert_eq!(lead.clamp_commit(commit), Some(log_id(3, 1, 11)));
        lead.synced(second, Ok(()));
        assert_eq!(lead.clamp_commit(commit), commit);
    }

    #[test]
    fn without_the_entry_before_the_commit_told_is_none() {
        let lead = LeadSync::new(1);
        lead.early(10, Some(log_id(2, 3, 4)));
        assert_eq!(lead.clamp_commit(Some(log_id(3, 1, 10))), None);
    }

    #[tokio::test]
    async fn an_apply_waits_for_the_sync_of_what_it_applies_only() {
        let lead = LeadSync::new(1);
        let seq = lead.early(5, Some(log_id(3, 1, 4)));
        lead.synced_through(4).await.expect("nothing unsynced through 4");
        let waiting = tokio::spawn({
            let lead = lead.clone();
            async move { lead.synced_through(6).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "index 5 is not synced");
        lead.synced(seq, Ok(()));
        waiting.await.expect("task").expect("synced");
    }

    #[tokio::test]
    async fn a_failed_sync_fails_what_waits_for_it() {
        let lead = LeadSync::new(1);
        let seq = lead.early(5, Some(log_id(3, 1, 4)));
        lead.synced(seq, Err(std::io::Error::other("disk gone")));
        assert!(lead.synced_through(5).await.is_err());
        assert_eq!(lead.clamp_commit(Some(log_id(3, 1, 6))), Some(log_id(3, 1, 4)));
    }
}
