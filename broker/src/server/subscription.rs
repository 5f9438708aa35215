//! Ordered delivery to one subscriber. The broker pushes `Delivery` frames under the Subscribe's
//! request id, reading this broker's applied log from the subscription's position: a subscriber
//! never sees an uncommitted message, and any broker can serve it. Flow control is by credit, in
//! messages and, if the subscriber asks, in bytes: each delivered message spends one and its
//! bytes (a delivery may overshoot the bytes by its last message, so one always goes), the
//! client grants more, and with no credit nothing is sent, so a slow subscriber costs at most
//! one batch of memory. At the tail, new commits wake the task.
//! Every read checks the subscriber may still subscribe, in the state it reads: a revocation ends
//! the stream with FORBIDDEN at the revocation's log position, on every broker.

use std::sync::Arc;

use chorus_machine::access::Action;
use chorus_machine::{Actor, query};
use chorus_protocol::pb::{self, ErrorCode, server_frame::Body};
use tokio::sync::Semaphore;

use super::access::{self, Needs};
use super::dispatch::Runner;
use super::respond::{self, error, find_topic, unreadable};
use super::router::Router;
use super::state::Server;
use crate::broker::Broker;
use crate::command;
use crate::listener::Outbox;

/// Messages one Delivery frame carries at most.
const DELIVERY_MESSAGES_MAX: usize = 256;

/// A running subscription: its credit and its delivery task.
#[derive(Debug)]
pub struct Subscription {
    credit: Arc<Semaphore>,
    credits_max: u32,
    /// Byte credit, for a subscription opened with some.
    bytes: Option<Arc<ByteCredit>>,
    task: tokio::task::JoinHandle<()>,
}

/// Bytes a subscription may still be sent; deliveries wait while none are left.
#[derive(Debug, Default)]
struct ByteCredit {
    left: std::sync::Mutex<u64>,
    granted: tokio::sync::Notify,
}

impl ByteCredit {
    fn new(bytes: u64) -> ByteCredit {
        ByteCredit { left: std::sync::Mutex::new(bytes.min(CREDIT_BYTES_MAX)), granted: Default::default() }
    }

    fn left(&self) -> u64 {
        *self.left.lock().expect("byte credit lock")
    }

    fn grant(&self, bytes: u64) {
        let mut left = self.left.lock().expect("byte credit lock");
        *left = left.saturating_add(bytes).min(CREDIT_BYTES_MAX);
        self.granted.notify_one();
    }

    fn spend(&self, bytes: u64) {
        let mut left = self.left.lock().expect("byte credit lock");
        *left = left.saturating_sub(bytes);
    }

    /// Waits until some bytes are left.
    async fn some_left(&self) {
        loop {
            let granted = self.granted.notified();
            if self.left() > 0 {
                return;
            }
            granted.await;
        }
    }
}

/// Byte credit a subscription holds at most: grants past it are dropped.
const CREDIT_BYTES_MAX: u64 = 1 << 40;

impl Subscription {
    /// Grants `credits` more messages, never holding more than the broker's cap, and, for a
    /// subscription with byte credit, `credit_bytes` more bytes.
    pub fn grant(&self, credits: u32, credit_bytes: u64) {
        let room = (self.credits_max as usize).saturating_sub(self.credit.available_permits());
        self.credit.add_permits((credits as usize).min(room));
        if let Some(bytes) = &self.bytes {
            bytes.grant(credit_bytes);
        }
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Resolves where the subscription starts (creating a durable one through the log), answers
/// SubscribeOk, and starts delivering.
pub async fn open(
    server: &Arc<Server>,
    actor: &Actor,
    answers: &Outbox<pb::ServerFrame>,
    request_id: u64,
    request: pb::SubscribeRequest,
) -> Result<Subscription, pb::Error> {
    let broker = &server.broker;
    let start = command::start_from_pb(request.start);
    // One read: the topic's identity (to notice a delete and re-create) and, for an ephemeral
    // subscription, where it starts.
    let (topic_id, ephemeral_start) = {
        let store = broker.read()?;
        access::check(&store, actor, Needs::Allowed(Action::Subscribe, &request.topic))?;
        let topic = find_topic(&store, &request.topic)?;
        (topic.id, query::seq_at(&store, &topic, start).map_err(unreadable)?)
    };
    let next_seq = match &request.subscription {
        Some(name) => {
            let create =
                pb::CreateSubscription { topic: request.topic.clone(), name: name.clone(), start: request.start };
            Router { server, request_id }.run(create, actor).await?.next_seq
        }
        None => ephemeral_start,
    };
    let ok = pb::ServerFrame { request_id, body: Some(Body::SubscribeOk(pb::SubscribeOk { next_seq })) };
    answers.send(ok).await.map_err(|_| error(ErrorCode::Internal, "connection closed"))?;
    let credits_max = broker.config.limits.subscription_credits_max;
    let credit = Arc::new(Semaphore::new(request.credits.min(credits_max) as usize));
    let bytes = request.credit_bytes.map(|bytes| Arc::new(ByteCredit::new(bytes)));
    let delivery = Delivery {
        broker: Arc::clone(broker),
        actor: actor.clone(),
        answers: answers.clone(),
        request_id,
        topic: request.topic,
        topic_id,
        next_seq,
        credit: Arc::clone(&credit),
        bytes: bytes.clone(),
    };
    Ok(Subscription { credit, credits_max, bytes, task: tokio::spawn(delivery.run()) })
}

struct Delivery {
    broker: Arc<Broker>,
    actor: Actor,
    answers: Outbox<pb::ServerFrame>,
    request_id: u64,
    topic: String,
    topic_id: u64,
    next_seq: u64,
    credit: Arc<Semaphore>,
    bytes: Option<Arc<ByteCredit>>,
}

impl Delivery {
    async fn run(mut self) {
        if let Err(ended) = self.deliver().await {
            let _ = self.answers.send(pb::ServerFrame::error(self.request_id, ended)).await;
        }
    }

    async fn deliver(&mut self) -> Result<(), pb::Error> {
        let mut applied = self.broker.applied();
        let shutdown = self.broker.shutdown_token();
        loop {
            // Wait for credit, in bytes first if the subscriber gave any, then in messages, and
            // take whatever more is there, up to one frame's worth.
            if let Some(bytes) = &self.bytes {
                tokio::select! {
                    () = bytes.some_left() => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            let Ok(first) = self.credit.acquire().await else { return Ok(()) };
            first.forget();
            let mut granted = 1;
            while granted < DELIVERY_MESSAGES_MAX {
                match self.credit.try_acquire() {
                    Ok(permit) => {
                        permit.forget();
                        granted += 1;
                    }
                    Err(_) => break,
                }
            }
            // Once there is something to send, room in the connection's outbox before reading
            // it: a subscriber that does not read holds at most the outbox's bytes, never one
            // batch per subscription on top, and a quiet subscription holds no room at all.
            let bytes_max = self.broker.config.limits.delivery_bytes_max as usize;
            let (room, batch) = loop {
                if self.has_more()? {
                    let Ok(room) = self.answers.reserve(bytes_max).await else { return Ok(()) };
                    let batch = self.read(granted)?;
                    if !batch.is_empty() {
                        break (room, batch);
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    changed = applied.changed() => if changed.is_err() { return Ok(()) },
                }
            };
            self.credit.add_permits(granted - batch.len());
            if let Some(bytes) = &self.bytes {
                bytes.spend(batch.iter().map(pb::StoredMessage::credit_bytes).sum());
            }
            self.next_seq = batch.last().map_or(self.next_seq, |m| m.seq + 1);
            let frame = pb::ServerFrame {
                request_id: self.request_id,
                body: Some(Body::Delivery(pb::Delivery { messages: batch })),
            };
            if room.send(frame).await.is_err() {
                return Ok(());
            }
        }
    }

    /// Whether a message is there at the position (reading only the topic's record).
    fn has_more(&mut self) -> Result<bool, pb::Error> {
        let store = self.broker.read()?;
        let topic = self.topic_in(&store)?;
        Ok(topic.last_seq >= self.next_seq.max(topic.first_seq))
    }

    /// The subscribed topic, if the actor may still read it and it was not deleted meanwhile.
    fn topic_in(&self, store: &crate::storage::ReadStore) -> Result<chorus_machine::TopicRecord, pb::Error> {
        access::check(store, &self.actor, Needs::Allowed(Action::Subscribe, &self.topic))?;
        query::topic(store, &self.topic)
            .map_err(unreadable)?
            .filter(|t| t.id == self.topic_id)
            .ok_or_else(|| error(ErrorCode::UnknownTopic, format!("topic {:?} was deleted", self.topic)))
    }

    /// Up to `count` messages from the position; skips ahead past messages retention trimmed.
    fn read(&mut self, count: usize) -> Result<Vec<pb::StoredMessage>, pb::Error> {
        let store = self.broker.read()?;
        let topic = self.topic_in(&store)?;
        self.next_seq = self.next_seq.max(topic.first_seq);
        let bytes_left = self.bytes.as_ref().map_or(u64::MAX, |bytes| bytes.left());
        let bytes_max = self.broker.config.limits.delivery_bytes_max.min(bytes_left);
        let messages = query::read(&store, &topic, self.next_seq, count, bytes_max).map_err(unreadable)?;
        Ok(messages.into_iter().map(|(seq, message)| respond::stored_message(seq, message)).collect())
    }
}
