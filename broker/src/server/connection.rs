//! One client connection: Hello first, then pipelined requests answered by request id, possibly
//! out of order. A reader task takes frames, each request runs as its own task, and a writer task
//! sends answers. Past the in-flight limit a request is answered Overloaded at once. A frame that
//! cannot be decoded, or a request before Hello, is a protocol violation: the connection gets an
//! error frame and is closed. On shutdown the reader stops, in-flight requests finish, then the
//! connection closes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chorus_protocol::pb::{self, ErrorCode, client_frame::Body as Request, server_frame::Body};
use chorus_protocol::{ProtocolError, ServerCodec};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::Framed;

use super::handler;
use super::respond::error;
use super::subscription::{self, Subscription};
use crate::node::Broker;

/// How long a new connection may take to say Hello.
const HELLO_TIMEOUT_MS: u64 = 10_000;
/// How long a closing connection waits for its in-flight requests.
const DRAIN_TIMEOUT_MS: u64 = 10_000;

/// Tells a client over the connection limit why it is turned away.
pub async fn refuse(stream: TcpStream, broker: Arc<Broker>) {
    let mut framed = Framed::new(stream, ServerCodec::new(broker.config.limits.frame_bytes_max));
    let refusal = error(ErrorCode::Overloaded, "too many connections");
    let _ = framed.send(pb::ServerFrame::error(0, refusal)).await;
}

pub async fn run(stream: TcpStream, broker: Arc<Broker>) {
    let limits = &broker.config.limits;
    let (sink, mut frames) = Framed::new(stream, ServerCodec::new(limits.frame_bytes_max)).split();
    let (answers, mut outbox) = mpsc::channel::<pb::ServerFrame>(limits.in_flight_per_connection_max + 16);
    // `forward` flushes only when no answer is ready: a burst of answers shares one write.
    let queued = futures::stream::poll_fn(move |cx| outbox.poll_recv(cx));
    let writer = tokio::spawn(queued.map(Ok).forward(sink));
    if hello(&broker, &mut frames, &answers).await {
        serve_requests(&broker, &mut frames, &answers).await;
    }
    drop(answers);
    let _ = writer.await;
}

type Frames = futures::stream::SplitStream<Framed<TcpStream, ServerCodec>>;

/// Reads the first frame; true when it was a valid Hello and was answered.
async fn hello(broker: &Broker, frames: &mut Frames, answers: &mpsc::Sender<pb::ServerFrame>) -> bool {
    let first = tokio::time::timeout(Duration::from_millis(HELLO_TIMEOUT_MS), frames.next()).await;
    let frame = match first {
        Ok(Some(Ok(frame))) => frame,
        Ok(Some(Err(failure))) => {
            let _ = answers.send(pb::ServerFrame::error(0, protocol_error(&failure))).await;
            return false;
        }
        Ok(None) | Err(_) => return false,
    };
    let refusal = match &frame.body {
        Some(Request::Hello(hello)) if hello.protocol_version != chorus_protocol::limits::PROTOCOL_VERSION => {
            Some(error(
                ErrorCode::InvalidArgument,
                format!(
                    "protocol version {} is not supported; this broker speaks {}",
                    hello.protocol_version,
                    chorus_protocol::limits::PROTOCOL_VERSION
                ),
            ))
        }
        Some(Request::Hello(hello)) if broker.config.auth_token.as_ref().is_some_and(|t| *t != hello.auth_token) => {
            Some(error(ErrorCode::Unauthorized, "a valid auth token is required"))
        }
        Some(Request::Hello(_)) => None,
        _ => Some(error(ErrorCode::InvalidArgument, "the first frame must be Hello")),
    };
    if let Some(refusal) = refusal {
        let _ = answers.send(pb::ServerFrame::error(frame.request_id, refusal)).await;
        return false;
    }
    let leader = broker.leader();
    let ok = pb::HelloOk {
        protocol_version: chorus_protocol::limits::PROTOCOL_VERSION,
        broker_id: broker.id(),
        leader_id: leader.as_ref().map(|(id, _)| *id),
        leader_addr: leader.map(|(_, node)| node.client_addr).unwrap_or_default(),
        in_flight_max: broker.config.limits.in_flight_per_connection_max as u32,
        frame_bytes_max: broker.config.limits.frame_bytes_max as u32,
    };
    answers.send(pb::ServerFrame { request_id: frame.request_id, body: Some(Body::HelloOk(ok)) }).await.is_ok()
}

async fn serve_requests(broker: &Arc<Broker>, frames: &mut Frames, answers: &mpsc::Sender<pb::ServerFrame>) {
    let in_flight_max = broker.config.limits.in_flight_per_connection_max;
    let in_flight = Arc::new(Semaphore::new(in_flight_max));
    let mut streams = Streams::default();
    let shutdown = broker.shutdown_token();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = frames.next() => next,
        };
        let frame = match next {
            Some(Ok(frame)) => frame,
            Some(Err(failure)) => {
                let _ = answers.send(pb::ServerFrame::error(0, protocol_error(&failure))).await;
                break;
            }
            None => break,
        };
        let request_id = frame.request_id;
        match streams.route(broker, answers, &frame).await {
            Routed::Elsewhere => {}
            Routed::Handled(None) => continue,
            Routed::Handled(Some(answer)) => {
                if answers.send(answer).await.is_err() {
                    break;
                }
                continue;
            }
        }
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            let busy = error(ErrorCode::Overloaded, format!("more than {in_flight_max} requests in flight"));
            if answers.send(pb::ServerFrame::error(request_id, busy)).await.is_err() {
                break;
            }
            continue;
        };
        let broker = Arc::clone(broker);
        let answers = answers.clone();
        tokio::spawn(async move {
            let answer = handler::handle(&broker, frame, false).await;
            let _ = answers.send(answer).await;
            drop(permit);
        });
    }
    // Let what is in flight finish before the connection closes.
    let drained = in_flight.acquire_many(in_flight_max as u32);
    let _ = tokio::time::timeout(Duration::from_millis(DRAIN_TIMEOUT_MS), drained).await;
}

/// The connection's subscriptions, by the request id of their Subscribe.
#[derive(Default)]
struct Streams {
    open: HashMap<u64, Subscription>,
}

impl Streams {
    /// Handles Subscribe, Credit and Unsubscribe, which act on connection state.
    async fn route(
        &mut self,
        broker: &Arc<Broker>,
        answers: &mpsc::Sender<pb::ServerFrame>,
        frame: &pb::ClientFrame,
    ) -> Routed {
        let request_id = frame.request_id;
        let refuse = |e: pb::Error| Routed::Handled(Some(pb::ServerFrame::error(request_id, e)));
        match &frame.body {
            Some(Request::Subscribe(request)) => {
                self.open.retain(|_, s| !s.is_finished());
                let max = broker.config.limits.subscriptions_per_connection_max;
                if self.open.len() >= max {
                    return refuse(error(ErrorCode::Overloaded, format!("at most {max} subscriptions per connection")));
                }
                if self.open.contains_key(&request_id) {
                    return refuse(error(ErrorCode::InvalidArgument, "request id already names a subscription"));
                }
                match subscription::open(broker, answers, request_id, request.clone()).await {
                    Ok(stream) => {
                        self.open.insert(request_id, stream);
                        Routed::Handled(None)
                    }
                    Err(e) => refuse(e),
                }
            }
            Some(Request::Credit(credit)) => match self.open.get(&credit.subscribe_id) {
                Some(stream) => {
                    stream.grant(credit.credits);
                    Routed::Handled(None)
                }
                None => refuse(error(ErrorCode::InvalidArgument, format!("no subscription {}", credit.subscribe_id))),
            },
            Some(Request::Unsubscribe(unsubscribe)) => match self.open.remove(&unsubscribe.subscribe_id) {
                Some(_) => Routed::Handled(Some(pb::ServerFrame { request_id, body: Some(Body::Done(pb::Empty {})) })),
                None => {
                    refuse(error(ErrorCode::InvalidArgument, format!("no subscription {}", unsubscribe.subscribe_id)))
                }
            },
            _ => Routed::Elsewhere,
        }
    }
}

/// What `Streams::route` did with a frame.
enum Routed {
    /// Not a subscription request: the dispatcher answers it.
    Elsewhere,
    /// Done here, with an answer to send now or none (credit needs none).
    Handled(Option<pb::ServerFrame>),
}

fn protocol_error(failure: &ProtocolError) -> pb::Error {
    match failure {
        ProtocolError::FrameTooLarge { .. } => error(ErrorCode::TooLarge, failure.to_string()),
        ProtocolError::Decode(_) => error(ErrorCode::InvalidArgument, failure.to_string()),
        ProtocolError::Io(_) => error(ErrorCode::Internal, failure.to_string()),
    }
}
