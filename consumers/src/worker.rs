//! Leased work. A [`WorkerPool`] runs a handler on a group's messages with a bounded concurrency.
//! One fetcher long-polls leases for as many messages as there are free slots; each message runs
//! in its own task while its lease is extended in the background; `Ok` acks it, `Err` nacks it
//! with an exponential backoff by delivery count. Messages past the group's `deliveries_max` go
//! to its dead-letter topic on the broker. Shutdown stops leasing and lets running handlers
//! finish and settle.
//!
//! ```no_run
//! # async fn run() -> Result<(), chorus_consumers::ClientError> {
//! use chorus_consumers::{Client, WorkerConfig, WorkerPool};
//! let client = Client::connect(["127.0.0.1:7101"]).await?;
//! let pool = WorkerPool::start(client, WorkerConfig::new("orders", "fulfilment"), |job| async move {
//!     println!("processing {}", job.message.seq);
//!     Ok::<(), std::io::Error>(())
//! });
//! pool.shutdown().await;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chorus_protocol::pb::{self, client_frame::Body as Request, server_frame::Body};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::error::ClientError;
use crate::message::Delivered;

/// What a worker pool consumes and how.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub topic: String,
    pub group: String,
    /// Names this pool to the broker (lease limits are per consumer).
    pub consumer: String,
    /// Handlers running at once.
    pub concurrency: usize,
    pub lease: Duration,
    /// How long one lease request waits for work.
    pub poll: Duration,
    /// The first nack delay; doubled per delivery up to `nack_delay_max`.
    pub nack_delay_min: Duration,
    pub nack_delay_max: Duration,
}

impl WorkerConfig {
    pub fn new(topic: &str, group: &str) -> WorkerConfig {
        WorkerConfig {
            topic: topic.into(),
            group: group.into(),
            consumer: format!("worker-{:08x}", rand::random::<u32>()),
            concurrency: 8,
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(5),
            nack_delay_min: Duration::from_millis(100),
            nack_delay_max: Duration::from_secs(60),
        }
    }
}

/// One leased message handed to the handler.
#[derive(Debug, Clone)]
pub struct Job {
    pub message: Delivered,
    /// The fencing token of this lease.
    pub token: u64,
    /// 1 on the first delivery.
    pub delivery_count: u32,
}

/// Runs a handler over a work group's messages.
#[derive(Debug)]
pub struct WorkerPool {
    stop: CancellationToken,
    fetcher: tokio::task::JoinHandle<()>,
}

impl WorkerPool {
    pub fn start<H, F, E>(client: Client, config: WorkerConfig, handler: H) -> WorkerPool
    where
        H: Fn(Job) -> F + Send + Sync + 'static,
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let stop = CancellationToken::new();
        let fetcher = tokio::spawn(fetch_loop(client, config, Arc::new(handler), stop.clone()));
        WorkerPool { stop, fetcher }
    }

    /// Stops leasing, waits for running handlers to finish and settle.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.fetcher.await;
    }
}

async fn fetch_loop<H, F, E>(client: Client, config: WorkerConfig, handler: Arc<H>, stop: CancellationToken)
where
    H: Fn(Job) -> F + Send + Sync + 'static,
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let config = Arc::new(config);
    let mut running = tokio::task::JoinSet::new();
    let mut backoff = client.config().backoff_min;
    loop {
        // Take every free slot: one lease request asks for that many messages.
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => permit.expect("slots stay open"),
        };
        let mut permits = vec![first];
        while let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
            permits.push(permit);
        }
        let request = Request::Lease(pb::LeaseRequest {
            topic: config.topic.clone(),
            group: config.group.clone(),
            consumer: config.consumer.clone(),
            count_max: permits.len() as u32,
            wait_ms: config.poll.as_millis() as u64,
            lease_ms: Some(config.lease.as_millis() as u64),
        });
        let leased = tokio::select! {
            _ = stop.cancelled() => break,
            answer = client.request(request) => answer,
        };
        let messages = match leased {
            Ok(Body::LeaseOk(ok)) => ok.messages,
            Ok(other) => {
                tracing::warn!(?other, "unexpected lease answer");
                Vec::new()
            }
            Err(error) => {
                tracing::warn!(%error, "lease failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(client.config().backoff_max);
                continue;
            }
        };
        backoff = client.config().backoff_min;
        for leased in messages {
            let Some(message) = leased.message else { continue };
            let permit = permits.pop().expect("never more grants than asked for");
            let job = Job { message: message.into(), token: leased.token, delivery_count: leased.delivery_count };
            let (client, config, handler) = (client.clone(), Arc::clone(&config), Arc::clone(&handler));
            running.spawn(async move {
                run_job(&client, &config, handler.as_ref(), job).await;
                drop(permit);
            });
        }
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

async fn run_job<H, F, E>(client: &Client, config: &WorkerConfig, handler: &H, job: Job)
where
    H: Fn(Job) -> F,
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let token = job.token;
    let delivery_count = job.delivery_count;
    let work = handler(job);
    tokio::pin!(work);
    // Extend at a third of the lease so one slow round trip does not lose it.
    let mut extend = tokio::time::interval(config.lease / 3);
    extend.tick().await;
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = extend.tick() => {
                let request = Request::Extend(pb::ExtendRequest {
                    topic: config.topic.clone(),
                    group: config.group.clone(),
                    tokens: vec![token],
                    lease_ms: config.lease.as_millis() as u64,
                });
                if let Err(error) = settle(client, request).await {
                    tracing::warn!(token, %error, "could not extend a lease");
                }
            }
        }
    };
    let request = match result {
        Ok(()) => Request::Ack(pb::AckRequest {
            topic: config.topic.clone(),
            group: config.group.clone(),
            tokens: vec![token],
        }),
        Err(error) => {
            tracing::debug!(token, %error, "handler failed; nacking");
            let shift = delivery_count.saturating_sub(1).min(16);
            let delay = config.nack_delay_min.saturating_mul(1 << shift).min(config.nack_delay_max);
            Request::Nack(pb::NackRequest {
                topic: config.topic.clone(),
                group: config.group.clone(),
                tokens: vec![token],
                delay_ms: delay.as_millis() as u64,
            })
        }
    };
    if let Err(error) = settle(client, request).await {
        tracing::warn!(token, %error, "could not settle a message; it will be delivered again");
    }
}

/// Sends an ack, nack or extend for one token; a refused token (say a stale lease) is an error.
async fn settle(client: &Client, request: Request) -> Result<(), ClientError> {
    match client.request(request).await? {
        Body::SettleOk(ok) => match ok.results.into_iter().next().and_then(|r| r.error) {
            Some(error) => Err(crate::error::ServerError::from(error).into()),
            None => Ok(()),
        },
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}
