//! Incoming broker-to-broker traffic. A connection is authenticated before its first frame
//! (`security::peer_link`); one that fails is closed without an answer. Then Raft RPCs are
//! answered in order per connection, after `raft::inbound` checked them, and client requests
//! forwarded by followers are served here, concurrently, through the client dispatch as the
//! client the follower authenticated, and never forwarded again. A malformed frame closes the
//! connection after an error answer; the sender reconnects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chorus_machine::Actor;
use chorus_protocol::pb::{self, peer_frame::Body};
use chorus_protocol::{PeerCodec, PeerExchange};
use openraft::error::{InstallSnapshotError, RaftError};
use tokio::net::{TcpListener, TcpStream};

use crate::broker::Broker;
use crate::command;
use crate::handover;
use crate::listener::{self, Arrival, FrameTiming, Link};
use crate::raft::{inbound, wire};
use crate::security::Stream;
use crate::server::Server;
use crate::server::dispatch::{Here, dispatch};

/// Peer connections open at once.
const PEER_CONNECTIONS_MAX: usize = 256;
/// Answers queued for one peer connection's writer.
const PEER_ANSWERS_QUEUED_MAX: usize = 256;
/// Bytes of answers queued on one peer connection: room for two of the largest peer frames.
const PEER_ANSWERS_BYTES_MAX: usize = 2 * chorus_protocol::limits::FRAME_BYTES_MAX_LIMIT;
/// How long a new peer connection may take to authenticate.
const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// At most one warning about refused peer connections per this many milliseconds: a stranger
/// knocking must not flood the log.
const REFUSAL_LOG_SPACING_MS: u64 = 10_000;

/// Serves peers on `listener` until the broker stops.
pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    let refusals = Arc::new(Refusals::default());
    let shutdown = server.broker.shutdown_token();
    let caps = listener::Caps { total: PEER_CONNECTIONS_MAX, per_address: PEER_CONNECTIONS_MAX };
    listener::accept(
        listener,
        caps,
        shutdown,
        |stream, remote| authenticate(stream, remote, Arc::clone(&server), Arc::clone(&refusals)),
        |_, remote, why| async move { tracing::warn!(%remote, "{why} on the peer port; refusing one") },
    )
    .await;
}

/// Serves a connection once it authenticated; notes a refusal otherwise.
async fn authenticate(stream: TcpStream, remote: SocketAddr, server: Arc<Server>, refusals: Arc<Refusals>) {
    let broker = &server.broker;
    let handshake = broker.config.security.peers.accept(stream, broker.id());
    match tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), handshake).await {
        Ok(Ok((stream, _from))) => connection(stream, server).await,
        Ok(Err(error)) => refusals.note(remote, &error),
        Err(_) => refusals.note(remote, &"no handshake within 5 s"),
    }
}

/// Counts peer connections refused at the handshake, and warns about them now and then.
#[derive(Debug, Default)]
struct Refusals {
    count: AtomicU64,
    last_warned_ms: AtomicU64,
}

impl Refusals {
    fn note(&self, remote: std::net::SocketAddr, why: &dyn std::fmt::Display) {
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let last = self.last_warned_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= REFUSAL_LOG_SPACING_MS
            && self.last_warned_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(%remote, %why, refused_total = count, "refused a peer connection");
        }
    }
}

async fn connection(stream: Stream, server: Arc<Server>) {
    let limits = &server.broker.config.limits;
    let codec = PeerCodec::new(limits.peer_frame_bytes_max);
    let frame_read_max = Duration::from_millis(limits.frame_read_ms_max);
    let mut timing = FrameTiming::new(codec.partial(), frame_read_max);
    let mut link: Link<Stream, PeerCodec, pb::PeerFrame> =
        Link::open(stream, codec, PEER_ANSWERS_QUEUED_MAX, PEER_ANSWERS_BYTES_MAX);
    let answers = link.outbox().clone();
    let shutdown = server.broker.shutdown_token();
    loop {
        let frame = match link.next_timed(&shutdown, &mut timing, frame_read_max / 4).await {
            Arrival::Frame(Ok(frame)) => frame,
            Arrival::Frame(Err(error)) => {
                let _ = answers.send(pb::PeerFrame { request_id: 0, body: Some(refuse(error)) }).await;
                break;
            }
            Arrival::Closed => break,
            Arrival::TooSlow => {
                let why = format!("a frame took more than {} ms to arrive whole", frame_read_max.as_millis());
                let _ = answers.send(pb::PeerFrame { request_id: 0, body: Some(refuse(why)) }).await;
                break;
            }
            // Peers keep their connections busy with heartbeats; a quiet one is no cost.
            Arrival::Silent(_) => continue,
        };
        let request_id = frame.request_id;
        match frame.body {
            Some(Body::Forward(forwarded)) => {
                let (server, answers) = (Arc::clone(&server), answers.clone());
                tokio::spawn(async move {
                    let answer = answer_forwarded(&server, forwarded).await;
                    // Read after answering: the index covers what the request wrote.
                    let applied_index = server.broker.applied_index();
                    let answer =
                        pb::Forwarded::into_answer(pb::ForwardedAnswer { answer: Some(answer), applied_index });
                    let _ = answers.send(pb::PeerFrame { request_id, body: Some(answer) }).await;
                });
            }
            body => {
                let answer = answer_raft(&server.broker, body).await;
                if answers.send(pb::PeerFrame { request_id, body: Some(answer) }).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(answers);
    link.close().await;
}

/// Serves a client request a follower forwarded, here, as the client it authenticated. A client
/// is never a broker, and a broker that authenticates its clients takes no anonymous one from a
/// broker that does not (a cluster whose brokers disagree about `--auth`).
async fn answer_forwarded(server: &Server, forwarded: pb::Forwarded) -> pb::ServerFrame {
    let request = forwarded.request.unwrap_or_default();
    let request_id = request.request_id;
    let refused = |code, why: String| pb::ServerFrame::error(request_id, pb::Error::new(code, why));
    let actor = match command::actor_from_pb(forwarded.actor) {
        Ok(Actor::Broker) => {
            return refused(pb::ErrorCode::InvalidArgument, "a forwarded request is a client's".into());
        }
        Ok(Actor::Anonymous) if server.broker.config.security.authenticate_clients => {
            return refused(
                pb::ErrorCode::Unauthorized,
                "the broker that forwarded this does not authenticate its clients; this one requires a user".into(),
            );
        }
        Ok(actor) => actor,
        Err(error) => return refused(pb::ErrorCode::InvalidArgument, format!("forwarded request: {error}")),
    };
    let Some(body) = request.body else {
        return refused(pb::ErrorCode::InvalidArgument, "a forwarded frame needs a body".into());
    };
    pb::ServerFrame { request_id, body: Some(dispatch(&Here(server), body, &actor).await) }
}

fn refuse(message: impl std::fmt::Display) -> Body {
    Body::Error(pb::PeerError { message: message.to_string(), ..Default::default() })
}

async fn answer_raft(broker: &Arc<Broker>, body: Option<Body>) -> Body {
    match body {
        Some(Body::Hello(_)) => Body::Hello(pb::PeerHello {
            protocol_version: chorus_protocol::limits::PROTOCOL_VERSION,
            from_id: broker.id(),
            initialized: broker.raft.is_initialized().await.unwrap_or(false),
        }),
        Some(Body::AppendEntries(request)) => match wire::append_request_from_pb(request) {
            Ok(request) => append(broker, request).await,
            Err(error) => refuse(error),
        },
        Some(Body::Vote(request)) => match wire::vote_request_from_pb(request) {
            Ok(request) => match broker.vote(request).await {
                Ok(response) => Body::VoteOk(wire::vote_response_to_pb(&response)),
                Err(error) => refuse(error),
            },
            Err(error) => refuse(error),
        },
        Some(Body::PreVote(request)) => match wire::pre_vote_from_pb(request) {
            Ok(request) => {
                let answer = broker.pre_vote(&request);
                Body::PreVoteOk(pb::PreVoteAnswer { granted: answer.granted, term: answer.term })
            }
            Err(error) => refuse(error),
        },
        Some(Body::TimeoutNow(request)) => match handover::timeout_now(broker, request) {
            Ok(()) => Body::TimeoutNowOk(pb::Empty {}),
            Err(error) => refuse(error),
        },
        Some(Body::SnapshotChunk(chunk)) => match wire::snapshot_chunk_from_pb(chunk) {
            Ok(request) => install_chunk(broker, request).await,
            Err(error) => refuse(error),
        },
        Some(other) => refuse(format!("{} is not a request", chorus_protocol::peer_name(&other))),
        None => refuse("empty frame"),
    }
}

async fn append(broker: &Broker, request: openraft::raft::AppendEntriesRequest<crate::raft::TypeConfig>) -> Body {
    if let Err(error) = inbound::check_append(&request) {
        tracing::warn!(%error, "refused an append from a peer");
        return refuse(error);
    }
    match broker.append_entries(request).await {
        Ok(response) => Body::AppendEntriesOk(wire::append_response_to_pb(&response)),
        Err(error) => refuse(error),
    }
}

async fn install_chunk(
    broker: &Broker,
    request: openraft::raft::InstallSnapshotRequest<crate::raft::TypeConfig>,
) -> Body {
    if let Err(error) = inbound::check_snapshot_id(&request.meta.snapshot_id) {
        tracing::warn!(%error, "refused a snapshot chunk from a peer");
        return refuse(error);
    }
    // Checked here, before openraft takes the last chunk: a failed install would stop its core.
    let checked =
        broker.snapshot_receipts.check(&request.meta.snapshot_id, request.offset, &request.data, request.done);
    if let Err(refused) = checked {
        tracing::warn!(%refused, "refused a snapshot chunk");
        return Body::Error(pb::PeerError {
            message: refused.to_string(),
            snapshot_mismatch: refused.start_over(),
            ..Default::default()
        });
    }
    match broker.install_snapshot(request).await {
        Ok(response) => Body::SnapshotChunkOk(pb::SnapshotChunkOk { vote: Some(wire::vote_to_pb(&response.vote)) }),
        Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch))) => {
            Body::Error(pb::PeerError { message: mismatch.to_string(), snapshot_mismatch: true, ..Default::default() })
        }
        Err(error) => refuse(error),
    }
}
