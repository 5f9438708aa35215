//! A follower's way to the leader for client requests: pooled, authenticated peer connections,
//! at most `forward_connections_max` in use at once. A connection that answered goes back to the
//! pool; one that failed is dropped.

use std::collections::BTreeMap;
use std::time::Duration;

use chorus_protocol::pb;
use tokio::sync::{Mutex, Semaphore};

use crate::raft::NodeId;
use crate::raft::network::{CallError, Network, PeerClient};

/// Why a forwarded request has no answer from the leader. The leader may have served it.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the broker is shutting down")]
    ShuttingDown,
    #[error("leader {leader} did not answer: {source}")]
    Leader { leader: NodeId, source: CallError },
}

/// Pooled peer connections used to forward client requests to the leader.
pub struct Forwarder {
    network: Network,
    idle: Mutex<BTreeMap<NodeId, Vec<PeerClient>>>,
    permits: Semaphore,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").field("permits", &self.permits.available_permits()).finish()
    }
}

impl Forwarder {
    pub fn new(network: Network, connections_max: usize) -> Forwarder {
        Forwarder { network, idle: Mutex::new(BTreeMap::new()), permits: Semaphore::new(connections_max) }
    }

    /// Sends `forwarded` to the leader and waits up to `timeout` for its answer.
    pub async fn forward(
        &self,
        (leader, node): &(NodeId, crate::raft::BrokerNode),
        forwarded: pb::Forwarded,
        timeout: Duration,
    ) -> Result<pb::ForwardedAnswer, ForwardError> {
        let _permit = self.permits.acquire().await.map_err(|_| ForwardError::ShuttingDown)?;
        let pooled = self.idle.lock().await.get_mut(leader).and_then(Vec::pop);
        let mut client = pooled.unwrap_or_else(|| PeerClient::new(&self.network, *leader, node.peer_addr.clone()));
        let answer =
            client.call(forwarded, timeout).await.map_err(|source| ForwardError::Leader { leader: *leader, source })?;
        self.idle.lock().await.entry(*leader).or_default().push(client);
        Ok(answer)
    }
}
