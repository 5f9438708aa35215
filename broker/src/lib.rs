//! The Chorus broker: redb storage, openraft replication and the tokio network around the pure
//! state machine in `chorus-machine`.
//!
//! Imports run one way, from the top of this list down:
//!
//! - `start`: opens the stores, starts raft, and wires the listeners and duties to the broker;
//! - `monitor`: the HTTP endpoint for operators: `/metrics`, `/healthz`, `/readyz`;
//! - `peer`: the broker-to-broker listener (Raft RPCs, and forwarded requests into `server`);
//! - `server`: the client listener, its router, dispatch and one module per request kind;
//! - `duties`: pulses, bootstrap, the first admin, and the watches that stop a broker;
//! - `handover`: a leader hands leadership to another voter, for planned maintenance;
//! - `broker`: the service: propose, read, forward, status, membership;
//! - `proposer`, `forward`: the leader's batched write path, and a follower's way to the leader;
//! - `raft`: openraft's type config, log and state-machine stores, peer network and wire forms;
//! - `storage`, `security`, `listener`, `command`, `config`, `clock`, `metrics`: the machine's
//!   tables on redb, peer authentication, TLS and passwords, what both listeners share,
//!   conversions between the wire and the machine, settings, time, and what the broker counts.

pub mod broker;
pub mod clock;
pub mod command;
pub mod config;
pub mod duties;
pub mod election;
pub mod forward;
pub mod handover;
mod listener;
pub mod message_segments;
pub mod metrics;
pub mod monitor;
pub mod peer;
pub mod proposer;
pub mod raft;
pub mod security;
pub mod server;
pub mod start;
pub mod storage;

pub use broker::Broker;
