//! Elections, started only after a pre-vote (Raft thesis, section 9.6).
//!
//! openraft's own election timer is off (`enable_elect: false`). [`campaign`] is the one thing
//! that starts an election: once this broker has heard from no leader for a randomized timeout,
//! it asks the other voters whether they would elect it ([`PreVote`]), and stands only if a
//! majority of every voter set says yes. A voter says yes only if it has heard from no leader
//! for `election_timeout_ms_max` itself, does not lead, is not repairing its log, and the
//! candidate's log is at least as up to date as its own. A pre-vote changes nothing on either
//! side, so a broker that was paused or cut off, and comes back, learns that it would lose and
//! leaves the term, and the leader a majority still follows, alone.
//!
//! "Heard from a leader" is [`crate::raft::pre_vote::LeaderContact`]: the time an append from a
//! current leader last arrived, or a snapshot chunk was accepted (one refused for a higher vote
//! is no contact). The
//! voter's threshold equals openraft's leader lease (`election_timeout_max`), so an election a
//! pre-vote allowed is not refused by the lease.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::Broker;
use crate::raft::pre_vote::{PreVote, PreVoteClient, PreVotes, is_quorum};
use crate::raft::runtime::ChorusRuntime;
use crate::raft::{BrokerNode, NodeId};

/// The candidate's wait before a pre-vote: between one and two leases since it last heard from
/// a leader or last asked, drawn anew each time, so that brokers that lost the same leader do
/// not ask in lockstep. Drawn like openraft's own timeouts, so a simulation seeds it.
fn campaign_timeout(lease: Duration) -> Duration {
    use openraft::AsyncRuntime;
    use rand08::Rng;
    let lease_ms = lease.as_millis() as u64;
    Duration::from_millis(lease_ms + ChorusRuntime::thread_rng().gen_range(0..lease_ms.max(1)))
}

/// Runs for as long as the broker does: pre-votes, and elections a majority would win.
pub async fn campaign<P: PreVotes>(broker: Arc<Broker>, peers: P) {
    let shutdown = broker.shutdown_token();
    let lease = Duration::from_millis(broker.config.raft.election_timeout_ms_max);
    let mut clients = BTreeMap::new();
    let mut last_asked = Instant::now();
    loop {
        let wait = campaign_timeout(lease);
        loop {
            let mut due = broker.leader_contact().last().max(last_asked) + wait;
            // Another voter is being handed leadership: it stands first.
            if let Some(held) = broker.campaigns_held_until() {
                due = due.max(held);
            }
            if Instant::now() >= due {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
            }
        }
        last_asked = Instant::now();
        let Some(view) = broker.voter_view() else { continue };
        let Some(request) = broker.candidacy(&view) else { continue };
        let voter_sets = broker.voter_sets();
        let mut granted = canvass(&broker, &peers, &mut clients, &voter_sets, &request, lease / 2).await;
        if view.judge(&request).granted {
            granted.insert(broker.id());
        }
        if is_quorum(&voter_sets, &granted) {
            tracing::info!(
                id = broker.id(),
                term = request.next_term,
                granted = ?granted,
                "no leader heard from, and a majority would elect this broker: standing for election"
            );
            broker.stand_for_election().await;
        } else {
            tracing::debug!(granted = ?granted, "pre-vote lost: a leader is still followed, or logs are ahead");
        }
    }
}

/// Asks every other voter at once; the voters that said yes.
async fn canvass<P: PreVotes>(
    broker: &Broker,
    peers: &P,
    clients: &mut BTreeMap<NodeId, (BrokerNode, P::Client)>,
    voter_sets: &[BTreeSet<NodeId>],
    request: &PreVote,
    timeout: Duration,
) -> BTreeSet<NodeId> {
    let me = broker.id();
    let voters: BTreeSet<NodeId> = voter_sets.iter().flatten().copied().collect();
    for id in voters.iter().copied().filter(|id| *id != me) {
        let Some(node) = broker.member_node(id) else { continue };
        let stale = clients.get(&id).is_none_or(|(known, _)| *known != node);
        if stale {
            let client = peers.client(id, &node);
            clients.insert(id, (node, client));
        }
    }
    let asks = clients
        .iter_mut()
        .filter(|(id, _)| voters.contains(id))
        .map(|(id, (_, client))| async move { (*id, client.ask(request.clone(), timeout).await) });
    let answers = futures::future::join_all(asks).await;
    answers.into_iter().filter(|(_, answer)| answer.is_some_and(|a| a.granted)).map(|(id, _)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_campaign_timeout_is_between_one_and_two_leases() {
        for _ in 0..200 {
            let timeout = campaign_timeout(Duration::from_millis(800));
            assert!((800..1600).contains(&(timeout.as_millis() as u64)), "{timeout:?}");
        }
    }
}
