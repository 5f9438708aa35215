//! The Chorus client library: producers, worker pools and subscribers over the framed protocol
//! in `chorus-protocol`. Its modules mirror the protocol's requests.
//!
//! - [`Connection`]: one pipelined connection to one broker;
//! - [`Client`]: the cluster, with leader discovery and retries.

pub mod client;
pub mod connection;
pub mod error;

pub use client::{Client, ClientConfig};
pub use connection::Connection;
pub use error::{ClientError, ServerError};
