//! A broker's configuration: identity, addresses, members, and every runtime limit and timing in
//! one place. Limits on replicated state are `chorus_machine::limits`; wire limits are
//! `chorus_protocol::limits`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::clock::Clock;
use crate::raft::{BrokerNode, NodeId};
use crate::security::peer_link::PeerAuth;

/// Runtime limits: what one broker holds in memory or lets clients do at once.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Client connections open at once; more are refused.
    pub connections_max: usize,
    /// Client connections open at once from one IP address; more from it are refused.
    pub connections_per_address_max: usize,
    /// How long a client connection that said Hello may stay silent, with no request in flight
    /// and no subscription open, before it is closed.
    pub client_idle_ms_max: u64,
    /// How long a frame, once its first byte came, may take to arrive whole, on either port.
    pub frame_read_ms_max: u64,
    /// Requests one connection may have in flight; more are answered Overloaded.
    pub in_flight_per_connection_max: usize,
    /// Bytes of requests one connection may have in flight (read and not yet answered); past
    /// it the broker stops reading the connection until answers go out. At least one frame.
    pub in_flight_bytes_per_connection_max: usize,
    /// Bytes of client requests in flight on the whole broker; past it, every connection's next
    /// request waits for room before it is served: back-pressure, not growth.
    pub in_flight_bytes_max: usize,
    /// Bytes client connections may have read and not yet decoded, broker-wide (frames arriving,
    /// mostly); past it, reads wait (`listener::Budgeted`).
    pub read_bytes_max: usize,
    /// Largest client frame.
    pub frame_bytes_max: usize,
    /// Largest peer frame: one AppendEntries is split to fit.
    pub peer_frame_bytes_max: usize,
    /// Commands the proposer packs into one log entry.
    pub commands_per_entry_max: usize,
    /// The proposer stops adding commands to an entry past this size.
    pub entry_bytes_target: usize,
    /// Commands waiting for the proposer; past it, writes are answered Overloaded.
    pub proposals_queued_max: usize,
    /// Log entries proposed and not yet answered. Kept small on purpose: while entries are in
    /// flight, new commands queue and the next entry takes them all, so batching grows with
    /// load (group commit). With 256 in flight every command became its own entry and a 3-broker
    /// cluster published 2.7k msg/s; with 4, 20.9k (`chorus bench`, 100-byte messages, window 256).
    pub entries_in_flight_max: usize,
    /// How long a write may wait for a quorum before it is answered Unavailable.
    pub write_timeout_ms: u64,
    /// Connections a follower keeps to the leader for forwarding writes.
    pub forward_connections_max: usize,
    /// Longest long-poll of a lease request.
    pub lease_wait_ms_max: u64,
    /// Messages buffered per subscription; credit bounds what is in flight beyond that.
    pub subscription_credits_max: u32,
    /// Bytes one delivery frame carries at most.
    pub delivery_bytes_max: u64,
    /// Bytes queued for one client connection at most (answers and deliveries, encoded): a client
    /// that does not read holds this much of the broker, and one frame being written.
    pub outbox_bytes_max: usize,
    /// Subscriptions one connection may hold open.
    pub subscriptions_per_connection_max: usize,
    /// redb's page cache for the Raft log (redb's own default is 1 GiB).
    pub log_cache_bytes: usize,
    /// redb's page cache for the state machine.
    pub state_cache_bytes: usize,
}

impl Limits {
    /// What the messages of one answer (a lease, a peek) may add up to: a frame, less room for
    /// the answer's own fields around them.
    pub fn answer_messages_bytes_max(&self) -> u64 {
        const ANSWER_FIELDS_BYTES: usize = 256 * 1024;
        self.frame_bytes_max.saturating_sub(ANSWER_FIELDS_BYTES) as u64
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections_max: 1024,
            connections_per_address_max: 256,
            client_idle_ms_max: 5 * 60 * 1000,
            frame_read_ms_max: 30_000,
            in_flight_per_connection_max: 1024,
            in_flight_bytes_per_connection_max: 32 * 1024 * 1024,
            in_flight_bytes_max: 256 * 1024 * 1024,
            read_bytes_max: 128 * 1024 * 1024,
            frame_bytes_max: chorus_protocol::limits::FRAME_BYTES_MAX_DEFAULT,
            peer_frame_bytes_max: chorus_protocol::limits::FRAME_BYTES_MAX_LIMIT,
            commands_per_entry_max: 1024,
            entry_bytes_target: 1024 * 1024,
            proposals_queued_max: 16 * 1024,
            entries_in_flight_max: 4,
            write_timeout_ms: 5_000,
            forward_connections_max: 64,
            lease_wait_ms_max: 60_000,
            subscription_credits_max: 10_000,
            delivery_bytes_max: 1024 * 1024,
            outbox_bytes_max: 16 * 1024 * 1024,
            subscriptions_per_connection_max: 64,
            log_cache_bytes: 16 * 1024 * 1024,
            state_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Raft timing and log compaction.
#[derive(Debug, Clone)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, so slow followers catch up without one.
    pub entries_kept_after_snapshot: u64,
    pub snapshot_chunk_bytes: u64,
    /// Entries in one AppendEntries at most.
    pub entries_per_append_max: u64,
    /// Bytes of entries in one AppendEntries at most (one entry always goes, whatever its size):
    /// a follower writes and syncs each append before it answers, so its size bounds how long
    /// the leader waits for word from that follower.
    pub append_bytes_max: usize,
    /// How often the leader marks a state check, so the brokers compare digests of their state
    /// (`raft::state_check`); 0 never.
    pub state_check_interval_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> RaftTiming {
        RaftTiming {
            heartbeat_ms: 100,
            election_timeout_ms_min: 400,
            election_timeout_ms_max: 800,
            snapshot_after_entries: 20_000,
            entries_kept_after_snapshot: 2_000,
            snapshot_chunk_bytes: 1024 * 1024,
            entries_per_append_max: 256,
            append_bytes_max: 8 * 1024 * 1024,
            state_check_interval_ms: 600_000,
        }
    }
}

/// Everything a broker needs to start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// Where the broker listens for clients (others reach it where the membership says).
    pub client_addr: String,
    /// Where the broker listens for other brokers.
    pub peer_addr: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served over HTTP; `None`, nowhere.
    pub metrics_addr: Option<String>,
    /// The initial members, bootstrapped once when the cluster is new.
    pub members: BTreeMap<NodeId, BrokerNode>,
    pub security: Security,
    pub limits: Limits,
    pub raft: RaftTiming,
    /// Where leader time stamps come from.
    pub clock: Clock,
}

/// How a broker authenticates its peers and its clients.
#[derive(Debug, Clone)]
pub struct Security {
    /// Peers authenticate before their first frame: mutual TLS, a cluster secret, or (loopback
    /// only) not at all.
    pub peers: PeerAuth,
    /// TLS on the client port, when set.
    pub client_tls: Option<Arc<rustls::ServerConfig>>,
    /// Clients must authenticate as users, whose permissions the state machine enforces. Off, every
    /// client is anonymous and may do anything a client can.
    pub authenticate_clients: bool,
    /// The first admin, created by the leader when the cluster has no user yet.
    pub bootstrap_admin: Option<BootstrapAdmin>,
}

impl Default for Security {
    /// No authentication at all: loopback development and in-process tests.
    fn default() -> Security {
        Security { peers: PeerAuth::Open, client_tls: None, authenticate_clients: false, bootstrap_admin: None }
    }
}

/// The first admin's name and argon2 password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapAdmin {
    pub name: String,
    pub password_hash: String,
}

impl BrokerConfig {
    /// How this broker dials its peers.
    pub fn network(&self) -> crate::raft::network::Network {
        crate::raft::network::Network {
            from_id: self.id,
            frame_bytes_max: self.limits.peer_frame_bytes_max,
            append_bytes_max: self.raft.append_bytes_max,
            auth: self.security.peers.clone(),
            lead: None,
        }
    }

    pub(crate) fn openraft(&self) -> Result<openraft::Config, Box<openraft::ConfigError>> {
        let config = openraft::Config {
            cluster_name: "chorus".into(),
            heartbeat_interval: self.raft.heartbeat_ms,
            election_timeout_min: self.raft.election_timeout_ms_min,
            election_timeout_max: self.raft.election_timeout_ms_max,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.raft.snapshot_after_entries),
            max_in_snapshot_log_to_keep: self.raft.entries_kept_after_snapshot,
            snapshot_max_chunk_size: self.raft.snapshot_chunk_bytes,
            max_payload_entries: self.raft.entries_per_append_max,
            // Elections start only after a pre-vote (`crate::election`).
            enable_elect: false,
            ..openraft::Config::default()
        };
        config.validate().map_err(Box::new)
    }
}

const _: () =
    assert!(chorus_protocol::limits::FRAME_BYTES_MAX_DEFAULT <= chorus_protocol::limits::FRAME_BYTES_MAX_LIMIT);

// The client library follows the protocol's limits, the state machine applies its own: they agree.
const _: () = assert!(chorus_machine::limits::PRODUCER_IDLE_MS_MAX == chorus_protocol::limits::PRODUCER_IDLE_MS_MAX);
const _: () = assert!(chorus_machine::limits::PRODUCER_ID_BYTES_MAX == chorus_protocol::limits::PRODUCER_ID_BYTES_MAX);
