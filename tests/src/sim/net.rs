//! The simulated network between in-process brokers. Every RPC crosses two legs, request and
//! reply; each leg is delayed, may be dropped, and fails when either end is down or the link is
//! cut. Cuts are directed, so one-way and bridge partitions are cuts too. All randomness comes
//! from the world's seeded generator, and the calls happen in one thread's task order, so a seed
//! replays the same traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_broker::Broker;
use chorus_broker::broker::VoteRefused;
use chorus_broker::raft::pre_vote::{PreVote, PreVoteAnswer, PreVoteClient, PreVotes};
use chorus_broker::raft::{BrokerNode, NodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// How the links behave when they are not cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weather {
    /// One leg in this many thousand is lost.
    pub drops_per_mille: u32,
    pub delay_ms_min: u64,
    pub delay_ms_max: u64,
}

impl Weather {
    pub const CALM: Weather = Weather { drops_per_mille: 0, delay_ms_min: 1, delay_ms_max: 3 };
}

/// The running brokers and the state of every link between them.
#[derive(Debug)]
pub struct Net(Mutex<NetState>);

#[derive(Debug)]
struct NetState {
    rng: StdRng,
    up: BTreeMap<NodeId, Arc<Broker>>,
    /// Directed links that lose everything: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    weather: Weather,
}

/// Why a leg did not arrive.
enum Lost {
    /// A cut link or a down broker: the connection is refused at once.
    Refused,
    /// Dropped on the way: noticed only after the delay.
    Dropped(Duration),
}

impl Net {
    pub fn new(seed: u64) -> Arc<Net> {
        Arc::new(Net(Mutex::new(NetState {
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00),
            up: BTreeMap::new(),
            cut: BTreeSet::new(),
            weather: Weather::CALM,
        })))
    }

    pub fn attach(&self, broker: Arc<Broker>) {
        self.0.lock().unwrap().up.insert(broker.id(), broker);
    }

    /// Takes a broker off the network; returns it if it was on.
    pub fn detach(&self, id: NodeId) -> Option<Arc<Broker>> {
        self.0.lock().unwrap().up.remove(&id)
    }

    pub fn broker(&self, id: NodeId) -> Option<Arc<Broker>> {
        self.0.lock().unwrap().up.get(&id).cloned()
    }

    pub fn up_ids(&self) -> Vec<NodeId> {
        self.0.lock().unwrap().up.keys().copied().collect()
    }

    /// Cuts both ways between every pair of brokers in different sides.
    pub fn partition(&self, sides: &[Vec<NodeId>]) {
        let mut state = self.0.lock().unwrap();
        for (i, a) in sides.iter().enumerate() {
            for b in sides.iter().skip(i + 1) {
                for x in a {
                    for y in b {
                        state.cut.insert((*x, *y));
                        state.cut.insert((*y, *x));
                    }
                }
            }
        }
    }

    /// Cuts the link from `from` to `to` only.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.0.lock().unwrap().cut.insert((from, to));
    }

    pub fn heal(&self) {
        self.0.lock().unwrap().cut.clear();
    }

    pub fn set_weather(&self, weather: Weather) {
        self.0.lock().unwrap().weather = weather;
    }

    /// Whether one leg from `from` to `to` arrives, and after how long.
    fn leg(&self, from: NodeId, to: NodeId) -> Result<Duration, Lost> {
        let mut state = self.0.lock().unwrap();
        if !state.up.contains_key(&from) || !state.up.contains_key(&to) || state.cut.contains(&(from, to)) {
            return Err(Lost::Refused);
        }
        let weather = state.weather;
        let delay = Duration::from_millis(state.rng.random_range(weather.delay_ms_min..=weather.delay_ms_max));
        if weather.drops_per_mille > 0 && state.rng.random_range(0..1000) < weather.drops_per_mille {
            return Err(Lost::Dropped(delay));
        }
        Ok(delay)
    }
}

/// Makes a [`SimLink`] per replication stream of one broker.
#[derive(Debug, Clone)]
pub struct SimNetwork {
    pub from: NodeId,
    pub net: Arc<Net>,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimLink;

    async fn new_client(&mut self, target: NodeId, node: &BrokerNode) -> SimLink {
        PreVotes::client(self, target, node)
    }
}

impl PreVotes for SimNetwork {
    type Client = SimLink;

    fn client(&self, target: NodeId, _node: &BrokerNode) -> SimLink {
        SimLink { from: self.from, to: target, net: Arc::clone(&self.net) }
    }
}

impl PreVoteClient for SimLink {
    async fn ask(&mut self, request: PreVote, timeout: Duration) -> Option<PreVoteAnswer> {
        let answer = self.rpc(timeout, |peer| async move { Ok::<_, RaftError<NodeId>>(peer.pre_vote(&request)) });
        answer.await.ok()
    }
}

/// One broker's RPCs to one peer, delivered as direct calls on the peer's raft.
#[derive(Debug)]
pub struct SimLink {
    from: NodeId,
    to: NodeId,
    net: Arc<Net>,
}

type Rpc<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, BrokerNode, RaftError<NodeId, E>>>;

impl SimLink {
    async fn rpc<T, E, F, Fut>(&self, ttl: Duration, call: F) -> Rpc<T, E>
    where
        E: std::error::Error,
        F: FnOnce(Arc<Broker>) -> Fut,
        Fut: Future<Output = Result<T, RaftError<NodeId, E>>>,
    {
        self.arrive(self.from, self.to).await?;
        let Some(peer) = self.net.broker(self.to) else {
            return Err(self.unreachable("down"));
        };
        let answer = match tokio::time::timeout(ttl, call(peer)).await {
            Ok(answer) => answer,
            Err(_) => return Err(RPCError::Network(NetworkError::new(&std::io::Error::other("timed out")))),
        };
        self.arrive(self.to, self.from).await?;
        match answer {
            Ok(response) => Ok(response),
            Err(RaftError::APIError(error)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.to, RaftError::APIError(error))))
            }
            Err(RaftError::Fatal(fatal)) => Err(self.unreachable(&fatal.to_string())),
        }
    }

    /// Waits out one leg, or fails the way its loss would look.
    async fn arrive<E: std::error::Error>(&self, from: NodeId, to: NodeId) -> Rpc<(), E> {
        match self.net.leg(from, to) {
            Ok(delay) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
            Err(Lost::Refused) => Err(self.unreachable("link cut or broker down")),
            Err(Lost::Dropped(delay)) => {
                tokio::time::sleep(delay).await;
                Err(RPCError::Network(NetworkError::new(&std::io::Error::other("dropped"))))
            }
        }
    }

    fn unreachable<E: std::error::Error>(&self, why: &str) -> RPCError<NodeId, BrokerNode, RaftError<NodeId, E>> {
        RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!("{} -> {}: {why}", self.from, self.to))))
    }
}

impl RaftNetwork<TypeConfig> for SimLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        self.rpc(option.hard_ttl(), |peer| async move { peer.append_entries(rpc).await }).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.rpc(option.hard_ttl(), |peer| async move { peer.install_snapshot(rpc).await }).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Rpc<VoteResponse<NodeId>> {
        // A broker repairing its log refuses to vote; to the candidate that is no answer.
        let answer = self
            .rpc(option.hard_ttl(), |peer| async move {
                match peer.vote(rpc).await {
                    Ok(response) => Ok(Ok(response)),
                    Err(VoteRefused::Repairing { id, floor }) => Ok(Err(format!("{id} repairs through {floor}"))),
                    Err(VoteRefused::Raft(error)) => Err(*error),
                }
            })
            .await?;
        answer.map_err(|why| self.unreachable(&why))
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}
