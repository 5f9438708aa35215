//! A client of a Chorus cluster: given seed addresses it finds the leader, keeps one pipelined
//! connection to it, and retries what may succeed elsewhere or later (lost connections, elections,
//! overload) with randomized exponential backoff, until the call's deadline.
//!
//! Each request is encoded once; a retry sends the same bytes again under a new request id.
//!
//! ```no_run
//! # async fn run() -> Result<(), chorus_consumers::ClientError> {
//! use chorus_consumers::Client;
//! use chorus_protocol::pb;
//! let client = Client::connect(["127.0.0.1:7101", "127.0.0.1:7102"]).await?;
//! let status: pb::ClusterStatus = client.call(pb::ClusterStatusRequest {}).await?;
//! println!("leader {:?} in term {}", status.leader_id, status.term);
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chorus_protocol::pb::{self, ErrorCode, client_frame::Body as Request, server_frame::Body};
use chorus_protocol::{Exchange, encode_request};
use tokio::sync::Mutex;

use crate::connection::{ConnectOptions, Connection, Credentials};
use crate::error::ClientError;
use crate::tls::Tls;

/// How a client connects and retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub seeds: Vec<String>,
    pub client_name: String,
    /// The user to act as, for brokers that authenticate clients.
    pub credentials: Option<Credentials>,
    /// TLS, for brokers whose client port has it.
    pub tls: Option<Tls>,
    pub connect_timeout: Duration,
    /// How long one attempt of a request may take.
    pub request_timeout: Duration,
    /// How long a request keeps retrying before it fails.
    pub retry_deadline: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Move to the leader a broker names in its Hello (true by default): writes would be
    /// forwarded anyway, so this saves a hop. False keeps every request on the broker connected
    /// to, follower or not: subscriptions then read that broker's copy of the log.
    pub follow_leader: bool,
}

impl ClientConfig {
    pub fn new(seeds: impl IntoIterator<Item = impl Into<String>>) -> ClientConfig {
        ClientConfig {
            seeds: seeds.into_iter().map(Into::into).collect(),
            client_name: "chorus-client".into(),
            credentials: None,
            tls: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            retry_deadline: Duration::from_secs(30),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            follow_leader: true,
        }
    }
}

impl ClientConfig {
    /// How each connection of this client opens.
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            client_name: self.client_name.clone(),
            credentials: self.credentials.clone(),
            tls: self.tls.clone(),
            timeout: self.connect_timeout,
        }
    }
}

/// A connection to the cluster that survives broker failures.
#[derive(Debug, Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    connection: Option<Connection>,
    /// Where to connect next: a leader hint, or the next seed.
    next_addr: Option<String>,
    next_seed: usize,
}

impl Client {
    /// Connects to the cluster through any of `seeds`.
    pub async fn connect(seeds: impl IntoIterator<Item = impl Into<String>>) -> Result<Client, ClientError> {
        Client::with_config(ClientConfig::new(seeds)).await
    }

    pub async fn with_config(config: ClientConfig) -> Result<Client, ClientError> {
        if config.seeds.is_empty() {
            return Err(ClientError::Exhausted("no seed addresses".into()));
        }
        let client = Client { config: Arc::new(config), state: Arc::new(Mutex::new(State::default())) };
        client.reach_a_seed().await?;
        client.call(pb::Ping {}).await?;
        Ok(client)
    }

    /// Tries each seed a few times within a second: when none even accepts a connection
    /// (nothing listens there), that is said at once rather than retried until the deadline. A
    /// seed that answers in any other way leaves the rest to the retrying call.
    async fn reach_a_seed(&self) -> Result<(), ClientError> {
        let mut refused = None;
        for round in 0..SEED_ROUNDS {
            if round > 0 {
                tokio::time::sleep(SEED_ROUND_PAUSE).await;
            }
            for _ in 0..self.config.seeds.len() {
                match self.connection().await {
                    Err(error @ ClientError::Connect { .. }) => refused = Some(error),
                    _ => return Ok(()),
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Sends `request`, retrying retryable failures until the retry deadline, and returns the
    /// answer of the kind the request expects; an answer of another kind is a
    /// [`Violation`](crate::Violation).
    pub async fn call<R: Exchange>(&self, request: R) -> Result<R::Answer, ClientError> {
        let body = self.request_encoded(&encode_request(&request.into_request())).await?;
        Ok(R::from_answer(body)?)
    }

    /// Sends any request, with retries, and returns its answer whatever its kind: for tools
    /// that send what they are given. [`Client::call`] checks the answer's kind.
    pub async fn request(&self, request: Request) -> Result<Body, ClientError> {
        self.request_encoded(&encode_request(&request)).await
    }

    async fn request_encoded(&self, request: &Bytes) -> Result<Body, ClientError> {
        let deadline = tokio::time::Instant::now() + self.config.retry_deadline;
        let mut backoff = self.config.backoff_min;
        // A broker's own refusal says more than a later timeout elsewhere: it is what the call
        // fails with if retrying ends in something vaguer.
        let mut refusal: Option<ClientError> = None;
        loop {
            let attempt = match self.connection().await {
                Ok(connection) => {
                    let result = connection.request_encoded(request, self.config.request_timeout).await;
                    if let Err(error) = &result {
                        self.after_failure(&connection, error).await;
                    }
                    result
                }
                Err(error) => Err(error),
            };
            match attempt {
                Err(error) if error.is_retryable() && tokio::time::Instant::now() + backoff < deadline => {
                    if let ClientError::Server(server) = &error {
                        if refusal.is_none() && server.code == ErrorCode::Unavailable {
                            tracing::warn!(%error, "retrying until {:?} have passed", self.config.retry_deadline);
                        }
                        refusal = Some(ClientError::Server(server.clone()));
                    } else {
                        tracing::debug!(%error, "retrying");
                    }
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
                Err(error) if error.is_retryable() && !matches!(error, ClientError::Server(_)) && refusal.is_some() => {
                    return Err(refusal.expect("checked"));
                }
                other => return other,
            }
        }
    }

    /// The current connection, opening one if needed (preferring the leader).
    pub async fn connection(&self) -> Result<Connection, ClientError> {
        let mut state = self.state.lock().await;
        if let Some(connection) = &state.connection
            && !connection.is_closed()
        {
            return Ok(connection.clone());
        }
        let addr = match state.next_addr.take() {
            Some(addr) => addr,
            None => {
                let seed = self.config.seeds[state.next_seed % self.config.seeds.len()].clone();
                state.next_seed += 1;
                seed
            }
        };
        let connection = self.open(&addr).await?;
        let leader_addr = connection.hello().leader_addr.clone();
        if self.config.follow_leader && !leader_addr.is_empty() && leader_addr != addr {
            // Writes would be forwarded anyway, but talking to the leader saves a hop.
            if let Ok(leader) = self.open(&leader_addr).await {
                state.connection = Some(leader.clone());
                return Ok(leader);
            }
        }
        state.connection = Some(connection.clone());
        Ok(connection)
    }

    async fn open(&self, addr: &str) -> Result<Connection, ClientError> {
        Connection::connect_with(addr, &self.config.connect_options()).await
    }

    async fn after_failure(&self, connection: &Connection, error: &ClientError) {
        let mut state = self.state.lock().await;
        let current = state.connection.as_ref().is_some_and(|c| c.addr() == connection.addr());
        match error {
            ClientError::Server(server) if server.code == ErrorCode::NotLeader => {
                state.next_addr = server.leader_addr.clone().filter(|_| self.config.follow_leader);
                if current {
                    state.connection = None;
                }
            }
            ClientError::Server(server) if server.code == ErrorCode::Overloaded => {}
            error if error.is_retryable() && current => state.connection = None,
            _ => {}
        }
    }
}

/// Rounds over the seeds before a client says none can be reached, and the pause between them:
/// a broker just started may take a moment to listen.
const SEED_ROUNDS: usize = 3;
const SEED_ROUND_PAUSE: Duration = Duration::from_millis(250);

/// A delay in [d/2, 3d/2), so clients that failed together do not retry together.
fn jitter(delay: Duration) -> Duration {
    let ms = delay.as_millis().max(1) as u64;
    Duration::from_millis(ms / 2 + rand::random_range(0..ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Violation;
    use crate::testkit::{fake_broker, hello_ok};

    /// A broker that answers a publish with a Pong: the call fails with a typed violation, at
    /// once (a broker bug is not retried), and never panics.
    #[tokio::test]
    async fn an_answer_of_another_kind_is_a_violation() {
        let addr = fake_broker(|request| match request {
            Request::Hello(_) => Some(hello_ok()),
            _ => Some(Body::Pong(pb::Pong {})),
        })
        .await;
        let client = Client::connect([addr]).await.unwrap();
        let refused = client.call(pb::PublishRequest::default()).await.unwrap_err();
        assert!(
            matches!(refused, ClientError::Violation(Violation::Mismatch { request: "Publish", got: "Pong" })),
            "{refused:?}"
        );
        assert!(!refused.is_retryable());
        let status = client.request(Request::Ping(pb::Ping {})).await.unwrap();
        assert_eq!(status, Body::Pong(pb::Pong {}), "raw requests take any answer");
    }
}
