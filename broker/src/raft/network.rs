//! Outgoing broker-to-broker RPCs for openraft: one persistent TCP connection per replication
//! stream, authenticated before its first frame (`security::peer_link`), framed with the peer
//! codec (bounded frames), reconnected lazily after any failure. Each RPC has openraft's
//! deadline, an append's stretched for its bytes ([`super::runtime::allow_until`]), and an append
//! carries at most `append_bytes_max` of entries (one entry always goes); an unreachable peer is
//! retried after a randomized exponential backoff. Snapshots travel as openraft's bounded chunks.

use std::time::Duration;

use chorus_protocol::pb::{self, peer_frame::Body};
use chorus_protocol::{PeerAnswerError, PeerCodec, PeerExchange, ProtocolError};
use futures::{SinkExt, StreamExt};
use openraft::SnapshotSegmentId;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, SnapshotMismatch, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::lead_sync::LeadSync;
use super::pre_vote::{PreVote, PreVoteAnswer, PreVoteClient, PreVotes};
use super::{BrokerNode, NodeId, TypeConfig, wire};
use crate::security::Stream;
use crate::security::peer_link::{HandshakeError, PeerAuth};

/// First retry delay after a peer was unreachable.
const BACKOFF_MS_MIN: u64 = 50;
/// Longest retry delay.
const BACKOFF_MS_MAX: u64 = 2_000;

/// Makes a [`PeerClient`] per replication stream.
#[derive(Debug, Clone)]
pub struct Network {
    /// This broker's id, announced in the preamble and PeerHello that open every connection.
    pub from_id: NodeId,
    pub frame_bytes_max: usize,
    /// Bytes of entries in one AppendEntries at most (at least one entry goes).
    pub append_bytes_max: usize,
    /// How this broker proves itself to its peers.
    pub auth: PeerAuth,
    /// Set when the log reports a leader's appends before their sync: the commit index sent
    /// to followers then stops before what is not yet on this broker's disk ([`LeadSync`]).
    pub lead: Option<LeadSync>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BrokerNode) -> PeerClient {
        PeerClient::new(self, target, node.peer_addr.clone())
    }
}

impl PreVotes for Network {
    type Client = PeerClient;

    fn client(&self, target: NodeId, node: &BrokerNode) -> PeerClient {
        PeerClient::new(self, target, node.peer_addr.clone())
    }
}

impl PreVoteClient for PeerClient {
    async fn ask(&mut self, request: PreVote, timeout: Duration) -> Option<PreVoteAnswer> {
        match self.call(wire::pre_vote_to_pb(&request), timeout).await {
            Ok(answer) => Some(PreVoteAnswer { granted: answer.granted, term: answer.term }),
            Err(error) => {
                tracing::debug!(target_id = self.target, %error, "no pre-vote answer");
                None
            }
        }
    }
}

impl PeerClient {
    /// A client for the peer `target` at `addr`; it connects on first use.
    pub fn new(network: &Network, target: NodeId, addr: String) -> PeerClient {
        PeerClient {
            from_id: network.from_id,
            target,
            addr,
            conn: None,
            next_request_id: 1,
            frame_bytes_max: network.frame_bytes_max,
            append_bytes_max: network.append_bytes_max.min(network.frame_bytes_max),
            failures: FailureLog::default(),
            auth: network.auth.clone(),
            lead: network.lead.clone(),
        }
    }
}

/// A connection to one peer, opened on first use and after any failure.
pub struct PeerClient {
    from_id: NodeId,
    target: NodeId,
    addr: String,
    conn: Option<Framed<Stream, PeerCodec>>,
    next_request_id: u64,
    frame_bytes_max: usize,
    append_bytes_max: usize,
    auth: PeerAuth,
    failures: FailureLog,
    lead: Option<LeadSync>,
}

/// How long a peer must fail before it is logged: brokers starting together miss each other
/// for a moment, which is no news.
const PEER_FAILING_MS_LOGGED: u64 = 2_000;
/// How often a peer that does not answer is logged, at most.
const PEER_FAILURE_LOG_MS: u64 = 10_000;

/// A peer's failed calls: logged once it has failed for [`PEER_FAILING_MS_LOGGED`], then once
/// per [`PEER_FAILURE_LOG_MS`] with how many failed, and once more when it answers again. A
/// paused follower fails ten heartbeats a second, and openraft's own line for each
/// (`openraft::replication`, filtered out by `chorus serve`) flooded the log.
#[derive(Debug, Default)]
struct FailureLog {
    failing_since: Option<std::time::Instant>,
    failed: u64,
    unlogged: u64,
    last_logged: Option<std::time::Instant>,
}

impl FailureLog {
    fn failed(&mut self, target: NodeId, error: &CallError) {
        let since = *self.failing_since.get_or_insert_with(std::time::Instant::now);
        self.failed += 1;
        self.unlogged += 1;
        let long_enough = since.elapsed() >= Duration::from_millis(PEER_FAILING_MS_LOGGED);
        let due = self.last_logged.is_none_or(|at| at.elapsed() >= Duration::from_millis(PEER_FAILURE_LOG_MS));
        if long_enough && due {
            tracing::warn!(target_id = target, %error, failures = self.unlogged, "a peer does not answer");
            self.last_logged = Some(std::time::Instant::now());
            self.unlogged = 0;
        }
    }

    fn answered(&mut self, target: NodeId) {
        if self.last_logged.is_some() {
            let failed_ms = self.failing_since.map_or(0, |since| since.elapsed().as_millis() as u64);
            tracing::info!(target_id = target, failures = self.failed, failed_ms, "a peer answers again");
        }
        *self = FailureLog::default();
    }
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient").field("target", &self.target).field("addr", &self.addr).finish()
    }
}

/// Why an RPC got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("{addr} did not authenticate: {source}")]
    Handshake { addr: String, source: HandshakeError },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("peer closed the connection")]
    Closed,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("peer answered request {expected} with request {got}")]
    Mismatched { expected: u64, got: u64 },
    #[error(transparent)]
    Answer(#[from] PeerAnswerError),
}

type Rpc<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, BrokerNode, RaftError<NodeId, E>>>;

impl PeerClient {
    /// Sends `request` and waits for its answer, within `timeout`. A refusal keeps the
    /// connection; any other failure drops it.
    pub async fn call<R: PeerExchange>(&mut self, request: R, timeout: Duration) -> Result<R::Answer, CallError> {
        let result = tokio::time::timeout(timeout, self.exchange(request.into_request())).await;
        let answer = match result {
            Ok(answer) => answer,
            Err(_) => Err(CallError::Timeout(timeout)),
        };
        let answer = answer.and_then(|body| Ok(R::from_answer(body)?));
        match &answer {
            Err(CallError::Answer(PeerAnswerError::Refused(_))) => {}
            Err(error) => {
                self.conn = None;
                self.failures.failed(self.target, error);
            }
            Ok(_) => self.failures.answered(self.target),
        }
        answer
    }

    async fn exchange(&mut self, body: Body) -> Result<Body, CallError> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(&self.addr)
                .await
                .map_err(|source| CallError::Connect { addr: self.addr.clone(), source })?;
            stream.set_nodelay(true).map_err(|source| CallError::Connect { addr: self.addr.clone(), source })?;
            let stream = self
                .auth
                .dial(stream, self.from_id, self.target, &self.addr)
                .await
                .map_err(|source| CallError::Handshake { addr: self.addr.clone(), source })?;
            self.conn = Some(Framed::new(stream, PeerCodec::new(self.frame_bytes_max)));
            // Every peer connection opens with a hello naming the sender.
            let hello = Body::Hello(pb::PeerHello {
                protocol_version: chorus_protocol::limits::PROTOCOL_VERSION,
                from_id: self.from_id,
                initialized: false,
            });
            if let Body::Hello(_) = body {
                return self.round_trip(hello).await;
            }
            self.round_trip(hello).await?;
        }
        self.round_trip(body).await
    }

    async fn round_trip(&mut self, body: Body) -> Result<Body, CallError> {
        let conn = self.conn.as_mut().ok_or(CallError::Closed)?;
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        conn.send(pb::PeerFrame { request_id, body: Some(body) }).await?;
        let frame = conn.next().await.ok_or(CallError::Closed)??;
        if frame.request_id != request_id {
            return Err(CallError::Mismatched { expected: request_id, got: frame.request_id });
        }
        frame.body.ok_or(CallError::Closed)
    }

    fn failed<E: std::error::Error>(&self, error: CallError) -> RPCError<NodeId, BrokerNode, RaftError<NodeId, E>> {
        match error {
            // A peer that does not authenticate is as good as unreachable: retrying at once
            // would hammer it (a misconfigured broker, or a proxy in front of a dead one).
            CallError::Connect { .. } | CallError::Handshake { .. } => RPCError::Unreachable(Unreachable::new(&error)),
            other => RPCError::Network(NetworkError::new(&other)),
        }
    }

    fn malformed<E: std::error::Error>(
        &self,
        error: wire::WireError,
    ) -> RPCError<NodeId, BrokerNode, RaftError<NodeId, E>> {
        RPCError::Network(NetworkError::new(&error))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        if let Some(lead) = &self.lead {
            rpc.leader_commit = lead.clamp_commit(rpc.leader_commit);
        }
        let (request, partial) = fit_append(&rpc, self.append_bytes_max);
        // openraft allows an append its heartbeat interval; a large one gets time for its bytes.
        let allowed = option.hard_ttl() + time_for_bytes(prost::Message::encoded_len(&request));
        super::runtime::allow_until(allowed);
        let answer = self.call(request, allowed).await.map_err(|e| self.failed(e))?;
        let response = wire::append_response_from_pb(answer).map_err(|e| self.malformed(e))?;
        Ok(match (response, partial) {
            // Only a prefix went out: say how far, and openraft sends the rest next.
            (AppendEntriesResponse::Success, Some(last_sent)) => AppendEntriesResponse::PartialSuccess(Some(last_sent)),
            (response, _) => response,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let snapshot_id = rpc.meta.snapshot_id.clone();
        let offset = rpc.offset;
        match self.call(wire::snapshot_chunk_to_pb(&rpc), option.hard_ttl()).await {
            Ok(ok) => Ok(InstallSnapshotResponse { vote: wire::vote_from_pb(ok.vote).map_err(|e| self.malformed(e))? }),
            Err(CallError::Answer(PeerAnswerError::Refused(error))) if error.snapshot_mismatch => {
                let mismatch = SnapshotMismatch {
                    expect: SnapshotSegmentId { id: snapshot_id.clone(), offset: 0 },
                    got: SnapshotSegmentId { id: snapshot_id, offset },
                };
                let source = RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch));
                Err(RPCError::RemoteError(RemoteError::new(self.target, source)))
            }
            Err(error) => Err(self.failed(error)),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Rpc<VoteResponse<NodeId>> {
        let answer = self.call(wire::vote_request_to_pb(&rpc), option.hard_ttl()).await.map_err(|e| self.failed(e))?;
        wire::vote_response_from_pb(answer).map_err(|e| self.malformed(e))
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(jittered_backoff())
    }
}

/// The request as protobuf, holding the longest prefix of its entries that fits in one frame
/// (at least one entry). When entries were left out, also the log id of the last one sent.
pub fn fit_append(
    rpc: &AppendEntriesRequest<TypeConfig>,
    frame_bytes_max: usize,
) -> (pb::AppendEntriesRequest, Option<super::LogId>) {
    use prost::Message;
    let mut request = wire::append_request_to_pb(&AppendEntriesRequest {
        vote: rpc.vote,
        prev_log_id: rpc.prev_log_id,
        entries: Vec::new(),
        leader_commit: rpc.leader_commit,
    });
    // Room for the frame envelope around the request.
    let budget = frame_bytes_max.saturating_sub(64);
    let mut size = request.encoded_len();
    for entry in &rpc.entries {
        let encoded = wire::entry_to_pb(entry);
        let len = encoded.encoded_len() + prost::length_delimiter_len(encoded.encoded_len()) + 1;
        if size + len > budget && !request.entries.is_empty() {
            let last_sent = request.entries.len() - 1;
            return (request, Some(rpc.entries[last_sent].log_id));
        }
        size += len;
        request.entries.push(encoded);
    }
    (request, None)
}

/// The slowest a follower is expected to take in and sync an append: 16 MiB/s, so 8 MiB is
/// allowed half a second beyond the heartbeat interval.
const APPEND_BYTES_PER_MS_MIN: usize = 16 * 1024;

/// The time an append of `bytes` may take beyond a heartbeat's.
fn time_for_bytes(bytes: usize) -> Duration {
    Duration::from_millis((bytes / APPEND_BYTES_PER_MS_MIN) as u64)
}

/// Delays of 50 ms doubling to 2 s, each scaled by a random factor in [0.5, 1.5) so peers that
/// lost the same broker do not retry in lockstep.
pub fn jittered_backoff() -> impl Iterator<Item = Duration> + Send + 'static {
    let mut base_ms = BACKOFF_MS_MIN;
    std::iter::from_fn(move || {
        let delay_ms = base_ms / 2 + rand::random_range(0..base_ms.max(1));
        base_ms = (base_ms * 2).min(BACKOFF_MS_MAX);
        Some(Duration::from_millis(delay_ms))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let delays: Vec<u64> = jittered_backoff().take(12).map(|d| d.as_millis() as u64).collect();
        assert!((25..75).contains(&delays[0]), "{delays:?}");
        assert!((50..150).contains(&delays[1]), "{delays:?}");
        assert!(delays.iter().all(|&d| d < BACKOFF_MS_MAX * 3 / 2), "{delays:?}");
        assert!(delays[11] >= BACKOFF_MS_MAX / 2, "{delays:?}");
    }

    #[test]
    fn oversized_appends_send_a_prefix() {
        use openraft::{CommittedLeaderId, EntryPayload};
        let entry = |index| super::super::Entry {
            log_id: super::super::LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(super::super::EntryBytes(vec![7u8; 1000].into())),
        };
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: (1..=10).map(entry).collect(),
            leader_commit: None,
        };
        let (whole, partial) = fit_append(&rpc, 1 << 20);
        assert_eq!((whole.entries.len(), partial), (10, None));
        let (prefix, partial) = fit_append(&rpc, 3_500);
        assert_eq!(prefix.entries.len(), 3);
        assert_eq!(partial.map(|id| id.index), Some(3));
        let (one, partial) = fit_append(&rpc, 10);
        assert_eq!((one.entries.len(), partial.map(|id| id.index)), (1, Some(1)), "at least one entry goes");
    }

    #[tokio::test]
    async fn an_absent_peer_is_unreachable_and_a_silent_one_times_out() {
        let mut client = Network {
            from_id: 1,
            frame_bytes_max: 1 << 20,
            append_bytes_max: 1 << 20,
            auth: PeerAuth::Open,
            lead: None,
        }
        .new_client(2, &BrokerNode { peer_addr: "127.0.0.1:1".into(), client_addr: String::new() })
        .await;
        let ping = || pb::PeerHello { protocol_version: 1, from_id: 1, initialized: false };
        assert!(matches!(client.call(ping(), Duration::from_secs(1)).await, Err(CallError::Connect { .. })));
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        client.addr = silent.local_addr().unwrap().to_string();
        assert!(matches!(client.call(ping(), Duration::from_millis(100)).await, Err(CallError::Timeout(_))));
        assert!(client.conn.is_none(), "a failed call drops its connection");
    }
}
