//! The Chorus client library, async on tokio. Its modules mirror the protocol:
//!
//! - [`Client`]: a cluster connection with leader discovery, retries with jittered backoff and
//!   request timeouts; [`Connection`] is one pipelined connection to one broker, over TLS
//!   ([`Tls`]) and as a user ([`Credentials`]) when the cluster asks for them.
//! - [`Producer`]: batching, pipelined, idempotent publishing.
//! - [`Subscriber`]: ordered delivery as a `futures::Stream`, with credit and commits.
//! - [`WorkerPool`]: leased work with automatic lease extension, ack and nack.
//!
//! Errors are [`ClientError`]; a broker's refusal carries its [`ServerError`] code.

pub mod client;
pub mod connection;
pub mod error;
pub mod message;
pub mod producer;
pub mod subscriber;
pub mod tls;
pub mod worker;

#[cfg(test)]
mod testkit;

pub use client::{Client, ClientConfig};
pub use connection::{ConnectOptions, Connection, Credentials};
pub use error::{ClientError, ServerError, Violation};
pub use message::{Delivered, Message};
pub use producer::{Producer, ProducerConfig, Receipt};
pub use subscriber::{Start, Subscriber, SubscriberConfig};
pub use tls::{Tls, TlsError};
pub use worker::{Job, WorkerConfig, WorkerPool};

/// The README's client example compiles.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExample;
