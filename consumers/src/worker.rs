//! Leased work. A [`WorkerPool`] runs a handler on a group's messages with a bounded concurrency.
//! One fetcher long-polls leases for as many messages as there are free slots; each message runs
//! in its own task while its lease is extended in the background; `Ok` acks it, `Err` nacks it
//! with an exponential backoff by delivery count. Acks are batched: one ack request is in flight
//! per pool, and the jobs that finish meanwhile are acked together in the next one (a slot is
//! freed only once its ack is answered). Messages past the group's `deliveries_max` go to its
//! dead-letter topic on the broker. Shutdown stops leasing and lets running handlers finish and
//! settle.
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

use chorus_protocol::{Exchange, pb};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::error::{ClientError, ServerError, Violation};
use crate::message::Delivered;

/// Most tokens in one ack request (the broker takes up to 4096).
const ACK_TOKENS_PER_REQUEST_MAX: usize = 1024;

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
    let (acks, queued_acks) = mpsc::channel(config.concurrency.max(1));
    let acker = tokio::spawn(ack_loop(client.clone(), Arc::clone(&config), queued_acks));
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
        let request = pb::LeaseRequest {
            topic: config.topic.clone(),
            group: config.group.clone(),
            consumer: config.consumer.clone(),
            count_max: permits.len() as u32,
            wait_ms: config.poll.as_millis() as u64,
            lease_ms: Some(config.lease.as_millis() as u64),
        };
        let leased = tokio::select! {
            _ = stop.cancelled() => break,
            answer = client.call(request) => answer,
        };
        let mut messages = match leased {
            Ok(ok) => ok.messages,
            Err(error) => {
                tracing::warn!(%error, "lease failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(client.config().backoff_max);
                continue;
            }
        };
        backoff = client.config().backoff_min;
        if messages.len() > permits.len() {
            let excess = messages.split_off(permits.len());
            let violation = Violation::TooManyGrants { asked: permits.len(), granted: permits.len() + excess.len() };
            tracing::warn!(%violation, "giving back the leases no handler can take");
            let tokens = excess.iter().map(|leased| leased.token).collect();
            let (client, config) = (client.clone(), Arc::clone(&config));
            running.spawn(async move {
                if let Err(error) = settle(&client, nack(&config, tokens, Duration::ZERO)).await {
                    tracing::warn!(%error, "could not give back the excess leases; they will expire");
                }
            });
        }
        for (leased, permit) in messages.into_iter().zip(permits.drain(..)) {
            let Some(message) = leased.message else { continue };
            let job = Job { message: message.into(), token: leased.token, delivery_count: leased.delivery_count };
            let (client, config, handler) = (client.clone(), Arc::clone(&config), Arc::clone(&handler));
            let acks = acks.clone();
            running.spawn(async move {
                run_job(&client, &config, &acks, handler.as_ref(), job).await;
                drop(permit);
            });
        }
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
    drop(acks);
    let _ = acker.await;
}

/// A finished job's ack, and where its answer goes.
#[derive(Debug)]
struct QueuedAck {
    token: u64,
    answer: oneshot::Sender<Result<(), Arc<ClientError>>>,
}

/// Sends the queued acks, one request at a time, each carrying every ack queued while the last
/// was in flight. Ends when every sender is gone and the queue is empty.
async fn ack_loop(client: Client, config: Arc<WorkerConfig>, mut queued: mpsc::Receiver<QueuedAck>) {
    while let Some(first) = queued.recv().await {
        let batch = gather_acks(first, &mut queued);
        let tokens: Vec<u64> = batch.iter().map(|ack| ack.token).collect();
        let request =
            pb::AckRequest { topic: config.topic.clone(), group: config.group.clone(), tokens: tokens.clone() };
        let results = per_token_results(client.call(request).await, &tokens);
        for (ack, result) in batch.into_iter().zip(results) {
            let _ = ack.answer.send(result);
        }
    }
}

/// `first` and whatever else is queued now, up to a request's worth.
fn gather_acks(first: QueuedAck, queued: &mut mpsc::Receiver<QueuedAck>) -> Vec<QueuedAck> {
    let mut batch = vec![first];
    while batch.len() < ACK_TOKENS_PER_REQUEST_MAX {
        match queued.try_recv() {
            Ok(ack) => batch.push(ack),
            Err(_) => break,
        }
    }
    batch
}

/// One result per token of a settle request: the broker's verdict on each, or the request's own
/// failure for all of them.
fn per_token_results(answer: Result<pb::SettleOk, ClientError>, tokens: &[u64]) -> Vec<Result<(), Arc<ClientError>>> {
    let answers = match answer {
        Ok(ok) if ok.results.iter().map(|r| r.token).eq(tokens.iter().copied()) => ok.results,
        Ok(_) => {
            let error = Arc::new(ClientError::Violation(Violation::NotOneResultPerToken));
            return vec![Err(error); tokens.len()];
        }
        Err(error) => return vec![Err(Arc::new(error)); tokens.len()],
    };
    answers
        .into_iter()
        .map(|result| match result.error {
            Some(error) => Err(Arc::new(ServerError::from(error).into())),
            None => Ok(()),
        })
        .collect()
}

async fn run_job<H, F, E>(client: &Client, config: &WorkerConfig, acks: &mpsc::Sender<QueuedAck>, handler: &H, job: Job)
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
                let request = pb::ExtendRequest {
                    topic: config.topic.clone(),
                    group: config.group.clone(),
                    tokens: vec![token],
                    lease_ms: config.lease.as_millis() as u64,
                };
                if let Err(error) = settle(client, request).await {
                    tracing::warn!(token, %error, "could not extend a lease");
                }
            }
        }
    };
    let settled = match result {
        Ok(()) => ack(acks, token).await,
        Err(error) => {
            tracing::debug!(token, %error, "handler failed; nacking");
            let shift = delivery_count.saturating_sub(1).min(16);
            let delay = config.nack_delay_min.saturating_mul(1 << shift).min(config.nack_delay_max);
            settle(client, nack(config, vec![token], delay)).await.map_err(Arc::new)
        }
    };
    if let Err(error) = settled {
        tracing::warn!(token, %error, "could not settle a message; it will be delivered again");
    }
}

/// Queues an ack for the next batch and waits for the broker's answer to it.
async fn ack(acks: &mpsc::Sender<QueuedAck>, token: u64) -> Result<(), Arc<ClientError>> {
    let (answer, answered) = oneshot::channel();
    let closed = || Arc::new(ClientError::Closed);
    acks.send(QueuedAck { token, answer }).await.map_err(|_| closed())?;
    answered.await.map_err(|_| closed())?
}

/// A nack of `tokens`, available again after `delay`.
fn nack(config: &WorkerConfig, tokens: Vec<u64>, delay: Duration) -> pb::NackRequest {
    pb::NackRequest {
        topic: config.topic.clone(),
        group: config.group.clone(),
        tokens,
        delay_ms: delay.as_millis() as u64,
    }
}

/// Sends a nack or extend; the first refused token (say a stale lease) is the error.
async fn settle<R>(client: &Client, request: R) -> Result<(), ClientError>
where
    R: Exchange<Answer = pb::SettleOk>,
{
    let ok = client.call(request).await?;
    match ok.results.into_iter().find_map(|result| result.error) {
        Some(error) => Err(crate::error::ServerError::from(error).into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(token: u64) -> (QueuedAck, oneshot::Receiver<Result<(), Arc<ClientError>>>) {
        let (answer, answered) = oneshot::channel();
        (QueuedAck { token, answer }, answered)
    }

    #[tokio::test]
    async fn gathering_takes_what_is_queued_up_to_a_request() {
        let (acks, mut queue) = mpsc::channel(2 * ACK_TOKENS_PER_REQUEST_MAX);
        let mut waiting = Vec::new();
        for token in 1..=ACK_TOKENS_PER_REQUEST_MAX as u64 + 5 {
            let (ack, answered) = queued(token);
            acks.send(ack).await.unwrap();
            waiting.push(answered);
        }
        let first = queue.recv().await.unwrap();
        let batch = gather_acks(first, &mut queue);
        assert_eq!(batch.len(), ACK_TOKENS_PER_REQUEST_MAX);
        assert!(batch.iter().map(|ack| ack.token).eq(1..=ACK_TOKENS_PER_REQUEST_MAX as u64), "in queue order");
        let first = queue.recv().await.unwrap();
        assert_eq!(gather_acks(first, &mut queue).len(), 5, "the rest, without waiting for more");
    }

    #[test]
    fn each_token_gets_its_own_verdict_or_the_requests_failure() {
        let refused =
            pb::Error { code: pb::ErrorCode::StaleLease as i32, message: "stale".into(), ..Default::default() };
        let ok = pb::SettleOk {
            results: vec![
                pb::SettleResult { token: 7, ..Default::default() },
                pb::SettleResult { token: 9, error: Some(refused), ..Default::default() },
            ],
        };
        let results = per_token_results(Ok(ok.clone()), &[7, 9]);
        assert!(results[0].is_ok());
        assert_eq!(results[1].as_ref().unwrap_err().code(), Some(pb::ErrorCode::StaleLease));

        let results = per_token_results(Err(ClientError::Closed), &[1, 2, 3]);
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(|r| matches!(r.as_ref().map_err(|e| &**e), Err(ClientError::Closed))));

        for tokens in [&[7][..], &[9, 7], &[7, 9, 11]] {
            let results = per_token_results(Ok(ok.clone()), tokens);
            let violation = |r: &Result<(), Arc<ClientError>>| {
                matches!(r.as_ref().map_err(|e| &**e), Err(ClientError::Violation(Violation::NotOneResultPerToken)))
            };
            assert!(results.iter().all(violation), "answers for other tokens fail all of {tokens:?}");
        }
    }

    /// A broker that grants three leases to a request for one. The pool used to panic on the
    /// second grant (`permits.pop().expect(..)`); it now runs the one it has room for and gives
    /// the others back at once with a nack.
    #[tokio::test]
    async fn more_grants_than_asked_are_given_back_not_a_panic() {
        use pb::client_frame::Body as Request;
        use pb::server_frame::Body as Answer;
        let (settled, mut settles) = mpsc::unbounded_channel::<(&'static str, Vec<u64>)>();
        let leases = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let addr = crate::testkit::fake_broker(move |request| {
            let settle_ok = |tokens: &[u64]| {
                let results = tokens.iter().map(|&token| pb::SettleResult { token, ..Default::default() }).collect();
                Some(Answer::SettleOk(pb::SettleOk { results }))
            };
            match request {
                Request::Hello(_) => Some(crate::testkit::hello_ok()),
                Request::Ping(_) => Some(Answer::Pong(pb::Pong {})),
                Request::Lease(lease) if leases.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 => {
                    assert_eq!(lease.count_max, 1, "one free slot asks for one message");
                    let grant = |token| pb::LeasedMessage {
                        message: Some(pb::StoredMessage { seq: token, ..Default::default() }),
                        token,
                        deadline_ms: u64::MAX,
                        delivery_count: 1,
                    };
                    Some(Answer::LeaseOk(pb::LeaseOk { messages: vec![grant(1), grant(2), grant(3)] }))
                }
                Request::Lease(_) => Some(Answer::LeaseOk(pb::LeaseOk::default())),
                Request::Ack(ack) => {
                    let _ = settled.send(("ack", ack.tokens.clone()));
                    settle_ok(&ack.tokens)
                }
                Request::Nack(nack) => {
                    let _ = settled.send(("nack", nack.tokens.clone()));
                    settle_ok(&nack.tokens)
                }
                _ => None,
            }
        })
        .await;
        let client = Client::connect([addr]).await.unwrap();
        let config = WorkerConfig { concurrency: 1, poll: Duration::from_millis(20), ..WorkerConfig::new("t", "g") };
        let pool = WorkerPool::start(client, config, |_| async { Ok::<(), std::io::Error>(()) });
        let mut seen = std::collections::BTreeMap::new();
        while seen.len() < 2 {
            let (kind, tokens) = tokio::time::timeout(Duration::from_secs(10), settles.recv())
                .await
                .expect("the pool settles every grant")
                .unwrap();
            seen.insert(kind, tokens);
        }
        assert_eq!(seen["ack"], vec![1], "the one slot ran the first grant");
        assert_eq!(seen["nack"], vec![2, 3], "the grants past the ask went back at once");
        pool.shutdown().await;
    }
}
