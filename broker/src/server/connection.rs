//! One client connection: TLS first when the broker has a certificate, then Hello, which settles
//! who the connection acts as (`login`), then pipelined requests answered by request id, possibly
//! out of order. The reader takes frames, each request runs as its own task through the
//! [`Router`], and the link's writer sends answers. Past the in-flight limit, or the user's
//! in-flight bytes, a request is answered OVERLOADED at once. A frame that cannot be decoded, or a
//! request before Hello, is a protocol violation: the connection gets an error frame and is
//! closed. On shutdown the reader stops; each open subscription is told UNAVAILABLE (subscribe
//! again, to another broker); in-flight requests finish (up to 10 s: a lease long-poll here
//! answers at once with what it has), then the connection closes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chorus_machine::Actor;
use chorus_protocol::pb::{self, ErrorCode, client_frame::Body as Request, server_frame::Body};
use chorus_protocol::{ProtocolError, ServerCodec};
use futures::SinkExt;
use prost::Message;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;

use super::dispatch::dispatch;
use super::login::{Session, login};
use super::respond::error;
use super::router::Router;
use super::sessions::InFlight;
use super::state::MAX_PERMITS;
use super::state::Server;
use super::subscription::{self, Subscription};
use crate::broker::Broker;
use crate::listener::{Arrival, Budgeted, FrameTiming, Link, Outbox};
use crate::metrics::Held;
use crate::security::{Stream, tls};

/// How long a new connection may take to say Hello.
const HELLO_TIMEOUT_MS: u64 = 10_000;
/// How long a closing connection waits for its in-flight requests.
const DRAIN_TIMEOUT_MS: u64 = 10_000;
/// How long a stopping connection waits for room to tell a subscriber.
const STOPPING_SEND_MS: u64 = 100;
/// How often a connection looks at its silence, at least (a quarter of its shorter bound).
const CHECK_MS_MIN: Duration = Duration::from_millis(50);
/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

type ClientLink = Link<Budgeted<Stream>, ServerCodec, pb::ServerFrame>;

/// Tells a client over a connection limit why it is turned away; over TLS, which would take a
/// handshake first, the connection just closes.
pub async fn refuse(stream: TcpStream, server: Arc<Server>, why: crate::listener::Refusal) {
    let broker = &server.broker;
    if broker.config.security.client_tls.is_some() {
        return;
    }
    let mut framed = Framed::new(stream, ServerCodec::new(broker.config.limits.frame_bytes_max));
    let refusal = error(ErrorCode::Overloaded, why.to_string());
    let _ = framed.send(pb::ServerFrame::error(0, refusal)).await;
}

pub async fn run(stream: TcpStream, server: Arc<Server>) {
    let Some((stream, certificate_user)) = secure(stream, &server.broker).await else { return };
    let limits = &server.broker.config.limits;
    let codec = ServerCodec::new(limits.frame_bytes_max);
    let timing = FrameTiming::new(codec.partial(), Duration::from_millis(limits.frame_read_ms_max));
    let stream = Budgeted::new(stream, Arc::clone(&server.read_bytes), codec.partial());
    let mut link = Link::open(stream, codec, limits.in_flight_per_connection_max + 16, limits.outbox_bytes_max);
    let _open = Held::new(&server.broker.metrics.clients.connections);
    if let Some(session) = hello(&server, &mut link, certificate_user.as_deref()).await {
        serve_requests(&server, &session, &mut link, timing).await;
    }
    link.close().await;
}

/// The connection's stream: TLS when the broker has a certificate, with the user a verified
/// client certificate names; else the TCP stream itself. A client that speaks plaintext to a TLS
/// port is told so in its own framing before the connection closes.
async fn secure(stream: TcpStream, broker: &Broker) -> Option<(Stream, Option<String>)> {
    let Some(config) = &broker.config.security.client_tls else {
        return Some((Box::new(stream), None));
    };
    let deadline = Duration::from_millis(HELLO_TIMEOUT_MS);
    let mut first = [0u8; 1];
    if !matches!(tokio::time::timeout(deadline, stream.peek(&mut first)).await, Ok(Ok(1))) {
        return None;
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let mut framed = Framed::new(stream, ServerCodec::new(broker.config.limits.frame_bytes_max));
        let why = "this broker's client port speaks TLS: connect with TLS, trusting the cluster's CA";
        let _ = framed.send(pb::ServerFrame::error(0, error(ErrorCode::InvalidArgument, why))).await;
        return None;
    }
    let accepted = tokio::time::timeout(deadline, TlsAcceptor::from(Arc::clone(config)).accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(failure)) => {
            tracing::debug!(%failure, "a client's TLS handshake failed");
            return None;
        }
        Err(_) => return None,
    };
    let user = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()).and_then(tls::certificate_user);
    Some((Box::new(stream), user))
}

/// Reads the first frame; the session when it was a valid Hello that authenticated, and was
/// answered.
async fn hello(server: &Server, link: &mut ClientLink, certificate_user: Option<&str>) -> Option<Session> {
    let broker = &server.broker;
    let answers = link.outbox().clone();
    let frame = match link.next_within(Duration::from_millis(HELLO_TIMEOUT_MS)).await? {
        Ok(frame) => frame,
        Err(failure) => {
            let _ = answers.send(pb::ServerFrame::error(0, protocol_error(&failure))).await;
            return None;
        }
    };
    let session = match &frame.body {
        Some(Request::Hello(hello)) if hello.protocol_version != chorus_protocol::limits::PROTOCOL_VERSION => {
            Err(error(
                ErrorCode::InvalidArgument,
                format!(
                    "protocol version {} is not supported; this broker speaks {}",
                    hello.protocol_version,
                    chorus_protocol::limits::PROTOCOL_VERSION
                ),
            ))
        }
        Some(Request::Hello(hello)) => login(server, hello, certificate_user).await,
        _ => Err(error(ErrorCode::InvalidArgument, "the first frame must be Hello")),
    };
    let session = match session {
        Ok(session) => session,
        Err(refusal) => {
            let _ = answers.send(pb::ServerFrame::error(frame.request_id, refusal)).await;
            return None;
        }
    };
    let leader = broker.leader();
    let ok = pb::HelloOk {
        protocol_version: chorus_protocol::limits::PROTOCOL_VERSION,
        broker_id: broker.id(),
        leader_id: leader.as_ref().map(|(id, _)| *id),
        leader_addr: leader.map(|(_, node)| node.client_addr).unwrap_or_default(),
        in_flight_max: broker.config.limits.in_flight_per_connection_max as u32,
        frame_bytes_max: broker.config.limits.frame_bytes_max as u32,
        user: session.user().to_owned(),
    };
    let sent = answers.send(pb::ServerFrame { request_id: frame.request_id, body: Some(Body::HelloOk(ok)) }).await;
    sent.is_ok().then_some(session)
}

async fn serve_requests(server: &Arc<Server>, session: &Session, link: &mut ClientLink, mut timing: FrameTiming) {
    let limits = &server.broker.config.limits;
    let in_flight_max = limits.in_flight_per_connection_max;
    let idle_max = Duration::from_millis(limits.client_idle_ms_max);
    let check_every =
        Duration::from_millis(limits.frame_read_ms_max.min(limits.client_idle_ms_max) / 4).max(CHECK_MS_MIN);
    let in_flight = Arc::new(Semaphore::new(in_flight_max));
    let connection_bytes = limits.in_flight_bytes_per_connection_max.max(limits.frame_bytes_max).min(MAX_PERMITS);
    let in_flight_bytes = Arc::new(Semaphore::new(connection_bytes));
    let answers = link.outbox().clone();
    let mut streams = Streams::default();
    let shutdown = server.broker.shutdown_token();
    loop {
        let frame = match link.next_timed(&shutdown, &mut timing, check_every).await {
            Arrival::Frame(Ok(frame)) => frame,
            Arrival::Frame(Err(failure)) => {
                let _ = answers.send(pb::ServerFrame::error(0, protocol_error(&failure))).await;
                break;
            }
            Arrival::Closed => break,
            Arrival::TooSlow => {
                let why = format!("a frame took more than {} ms to arrive whole", limits.frame_read_ms_max);
                let _ = answers.send(pb::ServerFrame::error(0, error(ErrorCode::InvalidArgument, why))).await;
                break;
            }
            Arrival::Silent(silent) => {
                let busy = in_flight.available_permits() < in_flight_max || streams.is_open();
                if busy || silent < idle_max {
                    continue;
                }
                let why = format!("closing a connection silent for {} ms: send a Ping to keep it", silent.as_millis());
                let _ = answers.send(pb::ServerFrame::error(0, error(ErrorCode::Unavailable, why))).await;
                break;
            }
        };
        let request_id = frame.request_id;
        let frame_bytes = frame.encoded_len();
        let admitted = match streams.route(server, &session.actor, &answers, &frame).await {
            Routed::Elsewhere => admit(session, &in_flight, in_flight_max, frame_bytes).map_err(Body::Error),
            Routed::Handled(None) => continue,
            Routed::Handled(Some(answer)) => Err(*answer),
        };
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(answer) => {
                if answers.send(pb::ServerFrame { request_id, body: Some(answer) }).await.is_err() {
                    break;
                }
                continue;
            }
        };
        // Reading stops here until the request's bytes have room, on this connection and on
        // the broker: a client that sends faster than answers go out waits, in its own socket.
        let room = tokio::select! {
            room = hold_room(&in_flight_bytes, &server.in_flight_bytes, frame_bytes) => room,
            _ = shutdown.cancelled() => break,
        };
        let (server, answers, actor) = (Arc::clone(server), answers.clone(), session.actor.clone());
        tokio::spawn(async move {
            let read_at = std::time::Instant::now();
            let publish = match &frame.body {
                Some(Request::Publish(publish)) => Some(publish_size(publish)),
                _ => None,
            };
            let answer = match frame.body {
                Some(request) => dispatch(&Router { server: &server, request_id }, request, &actor).await,
                None => Body::Error(error(ErrorCode::InvalidArgument, "a frame needs a body")),
            };
            if let (Some((messages, bytes)), Body::PublishOk(_)) = (publish, &answer) {
                server.broker.metrics.clients.published(messages, bytes, read_at.elapsed());
            }
            let answer = within_frame(pb::ServerFrame { request_id, body: Some(answer) }, &server.broker);
            let _ = answers.send(answer).await;
            drop((admitted, room));
        });
    }
    streams.stopping(&answers).await;
    // Let what is in flight finish before the connection closes.
    let drained = in_flight.acquire_many(in_flight_max as u32);
    let _ = tokio::time::timeout(Duration::from_millis(DRAIN_TIMEOUT_MS), drained).await;
}

/// A publish's messages and payload bytes.
fn publish_size(publish: &pb::PublishRequest) -> (usize, usize) {
    (publish.messages.len(), publish.messages.iter().map(|m| m.payload.len()).sum())
}

/// `answer`, or a `TOO_LARGE` error in its place when it would not fit in a frame: an answer the
/// codec cannot encode would stop the connection's writer, and the client would wait forever.
fn within_frame(answer: pb::ServerFrame, broker: &Broker) -> pb::ServerFrame {
    let (len, max) = (answer.encoded_len(), broker.config.limits.frame_bytes_max);
    if len <= max {
        return answer;
    }
    let why = format!("the answer would be {len} bytes, over the frame limit of {max}: ask for less at once");
    pb::ServerFrame::error(answer.request_id, error(ErrorCode::TooLarge, why))
}

/// Waits until `bytes` fit under the connection's in-flight bytes and then the broker's, and
/// holds them. Each semaphore is at least a frame, so a request always fits in time.
async fn hold_room(
    connection: &Arc<Semaphore>,
    broker: &Arc<Semaphore>,
    bytes: usize,
) -> (Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>) {
    let bytes = bytes.min(MAX_PERMITS) as u32;
    let mine = Arc::clone(connection).acquire_many_owned(bytes).await.ok();
    let shared = Arc::clone(broker).acquire_many_owned(bytes).await.ok();
    (mine, shared)
}

/// What a request holds while in flight: its place under the connection's limit, and its bytes
/// under the user's quota.
type Admitted = (OwnedSemaphorePermit, Option<InFlight>);

/// Admits a request under the connection's in-flight limit and its user's in-flight bytes, or
/// answers OVERLOADED at once.
fn admit(
    session: &Session,
    in_flight: &Arc<Semaphore>,
    in_flight_max: usize,
    frame_bytes: usize,
) -> Result<Admitted, pb::Error> {
    let overloaded = |why: String| error(ErrorCode::Overloaded, why);
    let permit = Arc::clone(in_flight)
        .try_acquire_owned()
        .map_err(|_| overloaded(format!("more than {in_flight_max} requests in flight")))?;
    let bytes = session.usage.as_ref().map(|usage| usage.reserve(frame_bytes as u64)).transpose();
    Ok((permit, bytes.map_err(|quota| overloaded(quota.to_string()))?))
}

/// The connection's subscriptions, by the request id of their Subscribe.
#[derive(Default)]
struct Streams {
    open: HashMap<u64, Subscription>,
}

impl Streams {
    fn is_open(&mut self) -> bool {
        self.open.retain(|_, s| !s.is_finished());
        !self.open.is_empty()
    }

    /// Ends every open subscription with UNAVAILABLE under its Subscribe's request id, so that
    /// its client subscribes again, elsewhere, instead of waiting on a silent stream.
    async fn stopping(&mut self, answers: &Outbox<pb::ServerFrame>) {
        let why = "the broker is stopping: subscribe again, to another broker";
        for (request_id, stream) in std::mem::take(&mut self.open) {
            drop(stream);
            let told = answers.send(pb::ServerFrame::error(request_id, error(ErrorCode::Unavailable, why)));
            // A client that does not read has a full outbox: it is not waited for.
            let _ = tokio::time::timeout(Duration::from_millis(STOPPING_SEND_MS), told).await;
        }
    }

    /// Handles Subscribe, Credit and Unsubscribe, which act on connection state.
    async fn route(
        &mut self,
        server: &Arc<Server>,
        actor: &Actor,
        answers: &Outbox<pb::ServerFrame>,
        frame: &pb::ClientFrame,
    ) -> Routed {
        let request_id = frame.request_id;
        let refuse = |e: pb::Error| Routed::Handled(Some(Box::new(Body::Error(e))));
        match &frame.body {
            Some(Request::Subscribe(request)) => {
                self.open.retain(|_, s| !s.is_finished());
                let max = server.broker.config.limits.subscriptions_per_connection_max;
                if self.open.len() >= max {
                    return refuse(error(ErrorCode::Overloaded, format!("at most {max} subscriptions per connection")));
                }
                if self.open.contains_key(&request_id) {
                    return refuse(error(ErrorCode::InvalidArgument, "request id already names a subscription"));
                }
                match subscription::open(server, actor, answers, request_id, request.clone()).await {
                    Ok(stream) => {
                        self.open.insert(request_id, stream);
                        Routed::Handled(None)
                    }
                    Err(e) => refuse(e),
                }
            }
            Some(Request::Credit(credit)) => match self.open.get(&credit.subscribe_id) {
                Some(stream) => {
                    stream.grant(credit.credits, credit.credit_bytes);
                    Routed::Handled(None)
                }
                None => refuse(error(ErrorCode::InvalidArgument, format!("no subscription {}", credit.subscribe_id))),
            },
            Some(Request::Unsubscribe(unsubscribe)) => match self.open.remove(&unsubscribe.subscribe_id) {
                Some(_) => Routed::Handled(Some(Box::new(Body::Done(pb::Empty {})))),
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
    Handled(Option<Box<Body>>),
}

fn protocol_error(failure: &ProtocolError) -> pb::Error {
    match failure {
        ProtocolError::FrameTooLarge { .. } => error(ErrorCode::TooLarge, failure.to_string()),
        ProtocolError::Decode(_) => error(ErrorCode::InvalidArgument, failure.to_string()),
        ProtocolError::Io(_) => error(ErrorCode::Internal, failure.to_string()),
    }
}
