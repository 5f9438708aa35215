//! The Chorus broker: redb storage, openraft replication and the tokio network around the pure
//! state machine in `chorus-machine`.
//!
//! - `storage`: the machine's tables on redb;
//! - `raft`: openraft's type config, log and state-machine stores, peer network and wire forms;
//! - `proposer`: the leader's batched, time-stamped write path;
//! - `node`: a running broker and its leader duties;
//! - `peer`, `server`: the broker-to-broker and client listeners;
//! - `security`: peer authentication, TLS, users' passwords and certificates;
//! - `command`: conversions between the wire and the machine.

pub mod cli;
pub mod clock;
pub mod command;
pub mod config;
pub mod node;
pub mod peer;
pub mod proposer;
pub mod raft;
pub mod security;
pub mod server;
pub mod storage;
