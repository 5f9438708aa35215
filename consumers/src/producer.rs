//! Publishing. A [`Producer`] batches messages in the background, per topic, by count, bytes and
//! linger time; keeps a window of batches in flight; and retries each batch under the same
//! (producer id, sequence), so a retry after a failover is deduplicated by the broker instead of
//! published twice. A send resolves once its batch is durable on a majority.
//!
//! With a window above 1, batches may commit in a different order than they were sent, most of
//! all across a failover; use a window of 1 where one producer's order matters.
//!
//! ```no_run
//! # async fn run() -> Result<(), chorus_consumers::ClientError> {
//! use chorus_consumers::{Client, Message, Producer, ProducerConfig};
//! let client = Client::connect(["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]).await?;
//! let producer = Producer::new(client, ProducerConfig::default());
//! let receipt = producer.send("orders", Message::new("order 1").key("customer-7")).await?;
//! println!("stored as sequence {}", receipt.seq);
//! producer.close().await;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chorus_protocol::pb::{self, client_frame::Body as Request, server_frame::Body};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::client::Client;
use crate::error::ClientError;
use crate::message::Message;

/// How a producer batches.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Identifies this producer for deduplication; random by default. Reuse an id only for the
    /// same logical producer.
    pub producer_id: String,
    /// How long a batch waits for more messages.
    pub linger: Duration,
    pub batch_messages_max: usize,
    pub batch_bytes_max: usize,
    /// Batches in flight at once.
    pub window: usize,
    /// Messages waiting to be batched; `send` waits when it is full.
    pub queue_max: usize,
}

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig {
            producer_id: format!("producer-{:016x}", rand::random::<u64>()),
            linger: Duration::from_millis(2),
            batch_messages_max: 1024,
            batch_bytes_max: 1024 * 1024,
            window: 64,
            queue_max: 64 * 1024,
        }
    }
}

/// Where a message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub log_index: u64,
    pub batch_pos: u32,
    /// The batch was a retry the broker had already stored.
    pub duplicate: bool,
}

struct Queued {
    topic: String,
    message: Message,
    done: oneshot::Sender<Result<Receipt, ClientError>>,
}

/// A batching, idempotent publisher. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Producer {
    queue: mpsc::Sender<Queued>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued").field("topic", &self.topic).finish()
    }
}

impl Producer {
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let (queue, queued) = mpsc::channel(config.queue_max.max(1));
        let task = tokio::spawn(batch_loop(client, config, queued));
        Producer { queue, task: Arc::new(task) }
    }

    /// Publishes one message and waits until it is durable.
    pub async fn send(&self, topic: &str, message: impl Into<Message>) -> Result<Receipt, ClientError> {
        self.enqueue(topic, message.into()).await?.await.map_err(|_| ClientError::Closed)?
    }

    /// Queues one message and returns at once; the receiver resolves when it is durable. Lets a
    /// caller keep many messages in flight.
    pub async fn enqueue(
        &self,
        topic: &str,
        message: Message,
    ) -> Result<oneshot::Receiver<Result<Receipt, ClientError>>, ClientError> {
        let (done, receipt) = oneshot::channel();
        let queued = Queued { topic: topic.to_owned(), message, done };
        self.queue.send(queued).await.map_err(|_| ClientError::Closed)?;
        Ok(receipt)
    }

    /// Publishes many messages and waits until all are durable.
    pub async fn send_all(
        &self,
        topic: &str,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<Vec<Receipt>, ClientError> {
        let mut pending = Vec::new();
        for message in messages {
            pending.push(self.enqueue(topic, message).await?);
        }
        let mut receipts = Vec::with_capacity(pending.len());
        for receipt in pending {
            receipts.push(receipt.await.map_err(|_| ClientError::Closed)??);
        }
        Ok(receipts)
    }

    /// Sends what is queued and waits for it; later sends fail.
    pub async fn close(self) {
        drop(self.queue);
        if let Ok(task) = Arc::try_unwrap(self.task) {
            let _ = task.await;
        }
    }
}

async fn batch_loop(client: Client, config: ProducerConfig, mut queued: mpsc::Receiver<Queued>) {
    let window = Arc::new(Semaphore::new(config.window.max(1)));
    let mut next_seq: u64 = 0;
    let mut flights = tokio::task::JoinSet::new();
    while let Some(first) = queued.recv().await {
        // Gather per topic until a limit is reached or the linger time passes.
        let mut batches: BTreeMap<String, (Vec<Queued>, usize)> = BTreeMap::new();
        let linger = tokio::time::sleep(config.linger);
        tokio::pin!(linger);
        let mut next = Some(first);
        loop {
            if let Some(item) = next.take() {
                let (batch, bytes) = batches.entry(item.topic.clone()).or_default();
                *bytes += item.message.size();
                batch.push(item);
                if batch.len() >= config.batch_messages_max || *bytes >= config.batch_bytes_max {
                    break;
                }
            }
            tokio::select! {
                _ = &mut linger => break,
                item = queued.recv() => match item {
                    Some(item) => next = Some(item),
                    None => break,
                },
            }
        }
        for (topic, (batch, _)) in batches {
            let Ok(permit) = Arc::clone(&window).acquire_owned().await else { return };
            next_seq += 1;
            let (client, producer_id, seq) = (client.clone(), config.producer_id.clone(), next_seq);
            flights.spawn(async move {
                publish_batch(&client, &topic, &producer_id, seq, batch).await;
                drop(permit);
            });
        }
        while flights.try_join_next().is_some() {}
    }
    while flights.join_next().await.is_some() {}
}

async fn publish_batch(client: &Client, topic: &str, producer_id: &str, producer_seq: u64, batch: Vec<Queued>) {
    let (messages, waiters): (Vec<pb::Message>, Vec<_>) = batch.into_iter().map(|q| (q.message.into(), q.done)).unzip();
    let request = Request::Publish(pb::PublishRequest {
        topic: topic.to_owned(),
        messages,
        producer_id: Some(producer_id.to_owned()),
        producer_seq: Some(producer_seq),
    });
    match client.request(request).await {
        Ok(Body::PublishOk(ok)) => {
            for (i, waiter) in waiters.into_iter().enumerate() {
                let receipt = Receipt {
                    seq: ok.first_seq + i as u64,
                    log_index: ok.log_index,
                    batch_pos: ok.batch_pos + i as u32,
                    duplicate: ok.duplicate,
                };
                let _ = waiter.send(Ok(receipt));
            }
        }
        Ok(other) => {
            for waiter in waiters {
                let _ = waiter.send(Err(ClientError::Unexpected(format!("{other:?}"))));
            }
        }
        Err(error) => {
            let message = error.to_string();
            let code = error.code();
            for waiter in waiters {
                let failure = match code {
                    Some(code) => ClientError::Server(crate::error::ServerError {
                        code,
                        message: message.clone(),
                        leader_id: None,
                        leader_addr: None,
                    }),
                    None => ClientError::Exhausted(message.clone()),
                };
                let _ = waiter.send(Err(failure));
            }
        }
    }
}
