//! Leased work. A [`WorkerPool`] runs a handler on a group's messages with a bounded concurrency.
//! One fetcher long-polls leases for as many messages as there are free slots; each message runs
//! in its own task while its lease is extended in the background; `Ok` acks it, `Err` nacks it
//! with an exponential backoff by delivery count. Acks are batched: one ack request is in flight
//! per pool, and the jobs that finish meanwhile are acked together in the next one (a slot is
//! freed only once its ack is answered). Messages past the group's `deliveries_max` go to its
//! dead-letter topic on the broker. Shutdown stops leasing and lets running handlers finish and
//! settle.
//!
//! The lease length is the group's unless the config sets one. A pool stops by itself after
//! `jobs_max` jobs, or on an error no retry can cure (an unknown group, a forbidden topic):
//! [`WorkerPool::finished`] waits for that, and [`WorkerPool::shutdown`] returns the error.
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
    /// How long a lease lasts before it is extended; `None` takes the group's lease time.
    pub lease: Option<Duration>,
    /// Take at most this many jobs, then stop leasing; `None` runs until shutdown.
    pub jobs_max: Option<u64>,
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
            lease: None,
            jobs_max: None,
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
    /// The fetch loop, until it ended; then `outcome` holds how.
    fetcher: Option<tokio::task::JoinHandle<Result<(), ClientError>>>,
    outcome: Option<Result<(), ClientError>>,
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
        WorkerPool { stop, fetcher: Some(fetcher), outcome: None }
    }

    /// Waits until the pool stops by itself: its `jobs_max` jobs ran and settled, or an error no
    /// retry cures stopped it. Cancel-safe; pending forever for a pool that keeps working.
    pub async fn finished(&mut self) {
        if let Some(fetcher) = &mut self.fetcher {
            let outcome = fetcher.await.unwrap_or(Err(ClientError::Closed));
            self.fetcher = None;
            self.outcome = Some(outcome);
        }
    }

    /// Stops leasing, waits for running handlers to finish and settle, and says why the pool
    /// stopped by itself, if it did on an error.
    pub async fn shutdown(mut self) -> Result<(), ClientError> {
        self.stop.cancel();
        self.finished().await;
        self.outcome.unwrap_or(Ok(()))
    }
}

/// The lease length: the config's, else the group's (which also checks the group exists).
async fn lease_length(client: &Client, config: &WorkerConfig) -> Result<Duration, ClientError> {
    if let Some(lease) = config.lease {
        return Ok(lease);
    }
    let group = pb::DescribeGroup { topic: config.topic.clone(), name: config.group.clone() };
    let lease_ms = client.call(group).await?.config.and_then(|config| config.lease_ms_default);
    Ok(lease_ms.map_or(Duration::from_secs(30), Duration::from_millis))
}

async fn fetch_loop<H, F, E>(
    client: Client,
    mut config: WorkerConfig,
    handler: Arc<H>,
    stop: CancellationToken,
) -> Result<(), ClientError>
where
    H: Fn(Job) -> F + Send + Sync + 'static,
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let lease = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        lease = lease_length(&client, &config) => lease?,
    };
    config.lease = Some(lease);
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let config = Arc::new(config);
    let mut jobs_left = config.jobs_max.unwrap_or(u64::MAX);
    let mut outcome = Ok(());
    let (acks, queued_acks) = mpsc::channel(config.concurrency.max(1));
    let acker = tokio::spawn(ack_loop(client.clone(), Arc::clone(&config), queued_acks));
    let mut running = tokio::task::JoinSet::new();
    let mut backoff = client.config().backoff_min;
    while jobs_left > 0 {
        // Take every free slot, up to the jobs left: one lease request asks for that many.
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => permit.expect("slots stay open"),
        };
        let mut permits = vec![first];
        while (permits.len() as u64) < jobs_left
            && let Ok(permit) = Arc::clone(&slots).try_acquire_owned()
        {
            permits.push(permit);
        }
        let request = pb::LeaseRequest {
            topic: config.topic.clone(),
            group: config.group.clone(),
            consumer: config.consumer.clone(),
            count_max: permits.len() as u32,
            wait_ms: config.poll.as_millis() as u64,
            lease_ms: Some(lease.as_millis() as u64),
        };
        let leased = tokio::select! {
            _ = stop.cancelled() => break,
            answer = client.call(request) => answer,
        };
        let mut messages = match leased {
            Ok(ok) => ok.messages,
            Err(error) if !error.is_retryable() => {
                outcome = Err(error);
                break;
            }
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
            jobs_left -= 1;
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
    outcome
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
    let lease = config.lease.unwrap_or(Duration::from_secs(30));
    let mut extend = tokio::time::interval(lease / 3);
    extend.tick().await;
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = extend.tick() => {
                let request = pb::ExtendRequest {
                    topic: config.topic.clone(),
                    group: config.group.clone(),
                    tokens: vec![token],
                    lease_ms: lease.as_millis() as u64,
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

    /// A broker whose every Lease is refused with `refusal`; counts the lease requests.
    async fn refusing_broker(refusal: pb::ErrorCode) -> (String, Arc<std::sync::atomic::AtomicU64>) {
        use pb::client_frame::Body as Request;
        use pb::server_frame::Body as Answer;
        let leases = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Arc::clone(&leases);
        let addr = crate::testkit::fake_broker(move |request| match request {
            Request::Hello(_) => Some(crate::testkit::hello_ok()),
            Request::Ping(_) => Some(Answer::Pong(pb::Pong {})),
            Request::Lease(_) => {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(Answer::Error(pb::Error::new(refusal, "unknown work group \"g\"")))
            }
            _ => None,
        })
        .await;
        (addr, leases)
    }

    /// An unknown group used to make the pool log a warning and lease again forever; it now stops
    /// at the first refusal and says why.
    #[tokio::test]
    async fn a_refusal_no_retry_cures_stops_the_pool() {
        let (addr, leases) = refusing_broker(pb::ErrorCode::UnknownGroup).await;
        let client = Client::connect([addr]).await.unwrap();
        let config = WorkerConfig { lease: Some(Duration::from_secs(5)), ..WorkerConfig::new("t", "g") };
        let mut pool = WorkerPool::start(client, config, |_| async { Ok::<(), std::io::Error>(()) });
        tokio::time::timeout(Duration::from_secs(10), pool.finished()).await.expect("the pool stops by itself");
        let error = pool.shutdown().await.unwrap_err();
        assert_eq!(error.code(), Some(pb::ErrorCode::UnknownGroup));
        assert_eq!(leases.load(std::sync::atomic::Ordering::Relaxed), 1, "no second try");
    }

    /// A pool of four slots limited to one job asks for one lease and runs one job, then stops.
    #[tokio::test]
    async fn a_pool_takes_no_more_jobs_than_its_limit() {
        use pb::client_frame::Body as Request;
        use pb::server_frame::Body as Answer;
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&asked);
        let addr = crate::testkit::fake_broker(move |request| match request {
            Request::Hello(_) => Some(crate::testkit::hello_ok()),
            Request::Ping(_) => Some(Answer::Pong(pb::Pong {})),
            Request::Lease(lease) => {
                seen.lock().unwrap().push(lease.count_max);
                let grant = |token| pb::LeasedMessage {
                    message: Some(pb::StoredMessage { seq: token, ..Default::default() }),
                    token,
                    deadline_ms: u64::MAX,
                    delivery_count: 1,
                };
                Some(Answer::LeaseOk(pb::LeaseOk { messages: (1..=lease.count_max as u64).map(grant).collect() }))
            }
            Request::Ack(ack) => {
                let results = ack.tokens.iter().map(|&token| pb::SettleResult { token, ..Default::default() });
                Some(Answer::SettleOk(pb::SettleOk { results: results.collect() }))
            }
            _ => None,
        })
        .await;
        let client = Client::connect([addr]).await.unwrap();
        let config = WorkerConfig {
            concurrency: 4,
            jobs_max: Some(1),
            lease: Some(Duration::from_secs(5)),
            ..WorkerConfig::new("t", "g")
        };
        let ran = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = Arc::clone(&ran);
        let mut pool = WorkerPool::start(client, config, move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { Ok::<(), std::io::Error>(()) }
        });
        tokio::time::timeout(Duration::from_secs(10), pool.finished()).await.expect("the pool stops after one job");
        pool.shutdown().await.unwrap();
        assert_eq!(ran.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(*asked.lock().unwrap(), vec![1]);
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
        let config = WorkerConfig {
            concurrency: 1,
            poll: Duration::from_millis(20),
            lease: Some(Duration::from_secs(30)),
            ..WorkerConfig::new("t", "g")
        };
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
        pool.shutdown().await.unwrap();
    }
}
