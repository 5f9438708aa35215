//! Incoming broker-to-broker traffic: Raft RPCs answered in order per connection, and client
//! requests forwarded by followers, answered concurrently. A malformed frame closes the
//! connection after an error answer; the sender reconnects.

use std::sync::Arc;

use chorus_protocol::PeerCodec;
use chorus_protocol::pb::{self, peer_frame::Body};
use futures::StreamExt;
use openraft::error::{InstallSnapshotError, RaftError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::Framed;

use crate::node::Broker;
use crate::raft::wire;
use crate::server::handler;

/// Peer connections open at once.
const PEER_CONNECTIONS_MAX: usize = 256;
/// Answers queued for one peer connection's writer.
const PEER_ANSWERS_QUEUED_MAX: usize = 256;

pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    let permits = Arc::new(Semaphore::new(PEER_CONNECTIONS_MAX));
    let shutdown = broker.shutdown_token();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::warn!("too many peer connections; refusing one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            connection(stream, broker).await;
            drop(permit);
        });
    }
}

async fn connection(stream: TcpStream, broker: Arc<Broker>) {
    let framed = Framed::new(stream, PeerCodec::new(broker.config.limits.peer_frame_bytes_max));
    let (sink, mut frames) = framed.split();
    let (answers, mut outbox) = mpsc::channel::<pb::PeerFrame>(PEER_ANSWERS_QUEUED_MAX);
    // `forward` flushes only when no answer is ready: a burst of answers shares one write.
    let queued = futures::stream::poll_fn(move |cx| outbox.poll_recv(cx));
    let writer = tokio::spawn(queued.map(Ok).forward(sink));
    let shutdown = broker.shutdown_token();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = frames.next() => next,
        };
        let frame = match next {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                let body = Body::Error(pb::PeerError { message: error.to_string(), ..Default::default() });
                let _ = answers.send(pb::PeerFrame { request_id: 0, body: Some(body) }).await;
                break;
            }
            None => break,
        };
        let request_id = frame.request_id;
        match frame.body {
            Some(Body::Forward(request)) => {
                let broker = Arc::clone(&broker);
                let answers = answers.clone();
                tokio::spawn(async move {
                    let answer = handler::handle(&broker, request, true).await;
                    let _ = answers.send(pb::PeerFrame { request_id, body: Some(Body::ForwardOk(answer)) }).await;
                });
            }
            body => {
                let answer = answer_raft(&broker, body).await;
                if answers.send(pb::PeerFrame { request_id, body: Some(answer) }).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(answers);
    let _ = writer.await;
}

fn refuse(message: impl std::fmt::Display) -> Body {
    Body::Error(pb::PeerError { message: message.to_string(), ..Default::default() })
}

async fn answer_raft(broker: &Broker, body: Option<Body>) -> Body {
    match body {
        Some(Body::Hello(_)) => Body::Hello(pb::PeerHello {
            protocol_version: chorus_protocol::limits::PROTOCOL_VERSION,
            from_id: broker.id(),
            initialized: broker.raft.is_initialized().await.unwrap_or(false),
        }),
        Some(Body::AppendEntries(request)) => match wire::append_request_from_pb(request) {
            Ok(request) => match broker.raft.append_entries(request).await {
                Ok(response) => Body::AppendEntriesOk(wire::append_response_to_pb(&response)),
                Err(error) => refuse(error),
            },
            Err(error) => refuse(error),
        },
        Some(Body::Vote(request)) => match wire::vote_request_from_pb(request) {
            Ok(request) => match broker.raft.vote(request).await {
                Ok(response) => Body::VoteOk(wire::vote_response_to_pb(&response)),
                Err(error) => refuse(error),
            },
            Err(error) => refuse(error),
        },
        Some(Body::SnapshotChunk(chunk)) => match wire::snapshot_chunk_from_pb(chunk) {
            Ok(request) => match broker.raft.install_snapshot(request).await {
                Ok(response) => {
                    Body::SnapshotChunkOk(pb::SnapshotChunkOk { vote: Some(wire::vote_to_pb(&response.vote)) })
                }
                Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch))) => {
                    Body::Error(pb::PeerError {
                        message: mismatch.to_string(),
                        snapshot_mismatch: true,
                        ..Default::default()
                    })
                }
                Err(error) => refuse(error),
            },
            Err(error) => refuse(error),
        },
        Some(other) => refuse(format!("not a request: {other:?}")),
        None => refuse("empty frame"),
    }
}
