//! Ordered consumption. A [`Subscriber`] is a `futures::Stream` of a topic's messages in order.
//! It grants the broker credit as the caller takes messages, so a slow caller slows delivery
//! instead of piling up memory. After a lost connection it resubscribes from the next sequence it
//! has not yielded: no gap, and no message yielded twice by the same subscriber. A durable
//! subscription remembers its position in the cluster through commits, explicit or periodic.
//!
//! ```no_run
//! # async fn run() -> Result<(), chorus_consumers::ClientError> {
//! use chorus_consumers::{Client, Subscriber, SubscriberConfig};
//! use futures::StreamExt;
//! let client = Client::connect(["127.0.0.1:7101"]).await?;
//! let mut orders = Subscriber::open(&client, SubscriberConfig::durable("orders", "billing")).await?;
//! while let Some(message) = orders.next().await {
//!     let message = message?;
//!     println!("{}: {:?}", message.seq, message.payload);
//!     orders.commit(message.seq).await?;
//! }
//! # Ok(()) }
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use chorus_protocol::answer_name;
use chorus_protocol::pb::{self, client_frame::Body as Request, server_frame::Body};
use futures::Stream;
use tokio::sync::mpsc;

use crate::client::Client;
use crate::error::{ClientError, Violation};
use crate::message::Delivered;

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
    Seq(u64),
    TimeMs(u64),
}

impl Start {
    fn to_pb(self) -> pb::StartPosition {
        use pb::start_position::Position;
        let position = match self {
            Start::Earliest => Position::Earliest(pb::Empty {}),
            Start::Latest => Position::Latest(pb::Empty {}),
            Start::Seq(seq) => Position::Seq(seq),
            Start::TimeMs(time_ms) => Position::TimeMs(time_ms),
        };
        pb::StartPosition { position: Some(position) }
    }
}

/// Byte credit a subscriber gives by default: 32 MiB ahead of the caller.
pub const CREDIT_BYTES_DEFAULT: u64 = 32 * 1024 * 1024;

/// What to subscribe to and how.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    pub topic: String,
    /// A durable subscription's name; `None` for an ephemeral one.
    pub subscription: Option<String>,
    pub start: Start,
    /// Messages the broker may send ahead of the caller.
    pub credits: u32,
    /// Bytes (payloads, keys and headers) the broker may send ahead of the caller, if bounded:
    /// with large messages this, not `credits`, bounds what a subscriber buffers.
    pub credit_bytes: Option<u64>,
    /// Commit the last yielded sequence this often (durable subscriptions only).
    pub auto_commit: Option<Duration>,
}

impl SubscriberConfig {
    /// An ephemeral subscription from the oldest retained message.
    pub fn ephemeral(topic: &str) -> SubscriberConfig {
        SubscriberConfig {
            topic: topic.into(),
            subscription: None,
            start: Start::Earliest,
            credits: 256,
            credit_bytes: Some(CREDIT_BYTES_DEFAULT),
            auto_commit: None,
        }
    }

    /// A durable subscription that resumes after its last commit.
    pub fn durable(topic: &str, name: &str) -> SubscriberConfig {
        SubscriberConfig { subscription: Some(name.into()), ..SubscriberConfig::ephemeral(topic) }
    }
}

/// A stream of a topic's messages, in order.
#[derive(Debug)]
pub struct Subscriber {
    client: Client,
    config: SubscriberConfig,
    messages: mpsc::Receiver<Result<Delivered, ClientError>>,
    /// The last sequence yielded to the caller.
    last_yielded: Arc<AtomicU64>,
    /// Where the broker started the subscription: its first message's sequence, once there is one.
    start_seq: u64,
    reader: tokio::task::JoinHandle<()>,
    committer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(committer) = &self.committer {
            committer.abort();
        }
    }
}

impl Subscriber {
    /// Subscribes; fails at once if the topic does not exist.
    pub async fn open(client: &Client, config: SubscriberConfig) -> Result<Subscriber, ClientError> {
        let (sink, messages) = mpsc::channel(config.credits.max(1) as usize);
        let mut reader = Reader { client: client.clone(), config: config.clone(), next_seq: None, sink };
        let first = reader.subscribe().await?;
        let start_seq = reader.next_seq.unwrap_or(1);
        let reader = tokio::spawn(reader.run(first));
        let last_yielded = Arc::new(AtomicU64::new(0));
        let committer = match (&config.subscription, config.auto_commit) {
            (Some(name), Some(every)) => {
                let (client, topic, name, last) =
                    (client.clone(), config.topic.clone(), name.clone(), Arc::clone(&last_yielded));
                Some(tokio::spawn(auto_commit(client, topic, name, last, every)))
            }
            _ => None,
        };
        Ok(Subscriber { client: client.clone(), config, messages, last_yielded, start_seq, reader, committer })
    }

    /// Records in the cluster that everything up to `seq` is processed (durable subscriptions).
    pub async fn commit(&self, seq: u64) -> Result<u64, ClientError> {
        let name = self.config.subscription.clone().ok_or(ClientError::NotDurable)?;
        commit(&self.client, &self.config.topic, &name, seq).await
    }

    /// The sequence the subscription started at (`SubscribeOk.next_seq`): its first message's,
    /// once that is published.
    pub fn start_seq(&self) -> u64 {
        self.start_seq
    }

    /// The last sequence this subscriber yielded.
    pub fn position(&self) -> u64 {
        self.last_yielded.load(Ordering::Relaxed)
    }
}

impl Stream for Subscriber {
    type Item = Result<Delivered, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.messages.poll_recv(cx);
        if let Poll::Ready(Some(Ok(message))) = &polled {
            self.last_yielded.store(message.seq, Ordering::Relaxed);
        }
        polled
    }
}

async fn commit(client: &Client, topic: &str, name: &str, seq: u64) -> Result<u64, ClientError> {
    let request = pb::CommitRequest { topic: topic.into(), subscription: name.into(), seq };
    Ok(client.call(request).await?.next_seq)
}

async fn auto_commit(client: Client, topic: String, name: String, last: Arc<AtomicU64>, every: Duration) {
    let mut committed = 0;
    loop {
        tokio::time::sleep(every).await;
        let seq = last.load(Ordering::Relaxed);
        if seq > committed && commit(&client, &topic, &name, seq).await.is_ok() {
            committed = seq;
        }
    }
}

/// Reads deliveries into the caller's channel, resubscribing after failures.
struct Reader {
    client: Client,
    config: SubscriberConfig,
    /// The next sequence to yield, once known.
    next_seq: Option<u64>,
    sink: mpsc::Sender<Result<Delivered, ClientError>>,
}

struct OpenStream {
    connection: crate::connection::Connection,
    subscribe_id: u64,
    deliveries: mpsc::Receiver<Body>,
}

impl Reader {
    async fn subscribe(&mut self) -> Result<OpenStream, ClientError> {
        let connection = self.client.connection().await?;
        let start = match (self.next_seq, &self.config.subscription) {
            // An ephemeral subscription resumes where this reader stopped.
            (Some(next), None) => Start::Seq(next),
            _ => self.config.start,
        };
        let request = pb::SubscribeRequest {
            topic: self.config.topic.clone(),
            subscription: self.config.subscription.clone(),
            start: Some(start.to_pb()),
            credits: self.config.credits,
            credit_bytes: self.config.credit_bytes,
        };
        let (subscribe_id, ok, deliveries) =
            connection.open_stream(request, self.client.config().request_timeout).await?;
        self.next_seq.get_or_insert(ok.next_seq);
        Ok(OpenStream { connection, subscribe_id, deliveries })
    }

    async fn run(mut self, first: OpenStream) {
        let mut stream = Some(first);
        let mut backoff = self.client.config().backoff_min;
        loop {
            let current = match stream.take() {
                Some(current) => current,
                None => match self.subscribe().await {
                    Ok(current) => current,
                    Err(error) if error.is_retryable() => {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.client.config().backoff_max);
                        continue;
                    }
                    Err(error) => {
                        let _ = self.sink.send(Err(error)).await;
                        return;
                    }
                },
            };
            backoff = self.client.config().backoff_min;
            match self.pump(current).await {
                Ok(()) => return,
                Err(error) if error.is_retryable() => {}
                Err(error) => {
                    let _ = self.sink.send(Err(error)).await;
                    return;
                }
            }
        }
    }

    /// Forwards deliveries until the stream ends. `Ok` means the caller went away.
    async fn pump(&mut self, mut stream: OpenStream) -> Result<(), ClientError> {
        while let Some(body) = stream.deliveries.recv().await {
            let delivery = match body {
                Body::Delivery(delivery) => delivery,
                Body::Error(error) => return Err(crate::error::ServerError::from(error).into()),
                other => return Err(Violation::Mismatch { request: "Subscribe", got: answer_name(&other) }.into()),
            };
            let count = delivery.messages.len() as u32;
            let bytes = delivery.messages.iter().map(pb::StoredMessage::credit_bytes).sum();
            for message in delivery.messages {
                let next = self.next_seq.unwrap_or(0);
                // After a resubscribe a durable subscription restarts at its last commit: skip
                // what this subscriber already yielded.
                if message.seq < next {
                    continue;
                }
                self.next_seq = Some(message.seq + 1);
                if self.sink.send(Ok(message.into())).await.is_err() {
                    stream.connection.close_stream(stream.subscribe_id);
                    return Ok(());
                }
            }
            let credit = pb::CreditRequest { subscribe_id: stream.subscribe_id, credits: count, credit_bytes: bytes };
            let credit = Request::Credit(credit);
            stream.connection.send(credit).await?;
        }
        Err(ClientError::Closed)
    }
}
