//! Replication: openraft 0.9 (storage v2) with the log and the state machine on redb and RPCs
//! over TCP. The glue stays thin: the state machine is `chorus-machine`, entries are encoded
//! `pb::Entry`s, and every openraft type crosses the wire and the disk as protobuf (`wire`).

// openraft's `StorageError` is large by its design, and every store method must return it.
#![allow(clippy::result_large_err)]

pub mod crash_disk;
mod direct_file;
pub mod inbound;
pub mod lead_sync;
mod log_layout;
pub mod log_store;
mod log_write;
pub mod network;
pub mod pre_vote;
pub mod repair;
pub mod replay;
pub mod runtime;
mod sealed;
pub(crate) mod segment;
pub mod segment_files;
pub mod snapshot_file;
pub mod state_check;
pub mod state_store;
pub mod wire;

use bytes::Bytes;
use chorus_machine::Outcome;

pub type NodeId = u64;

/// How to reach a broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerNode {
    pub peer_addr: String,
    pub client_addr: String,
}

/// An encoded `pb::Entry`: the leader encodes once, the log stores and ships the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryBytes(pub Bytes);

/// The outcomes of one entry's commands, in order; empty for blank and membership entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied(pub Vec<Outcome>);

openraft::declare_raft_types!(
    /// Chorus's openraft types.
    pub TypeConfig:
        D = EntryBytes,
        R = Applied,
        NodeId = NodeId,
        Node = BrokerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = runtime::ChorusRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Membership = openraft::Membership<NodeId, BrokerNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, BrokerNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BrokerNode>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;

/// A storage failure as openraft wants it: what failed (`subject`) while doing what (`verb`).
pub(crate) fn storage_error(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    error: impl std::error::Error + 'static,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&error)).into()
}

#[cfg(test)]
mod suite {
    use super::log_store::LogStore;
    use super::state_store::StateStore;
    use super::{StorageError, TypeConfig};
    use openraft::testing::{StoreBuilder, Suite};

    struct RedbBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateStore, tempfile::TempDir> for RedbBuilder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateStore), StorageError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let log = LogStore::open(&dir.path().join("log.redb"), 1 << 20)?;
            let state = StateStore::open(dir.path(), 1 << 20)?;
            Ok((dir, log, state))
        }
    }

    /// openraft's conformance suite for log and state-machine stores.
    #[test]
    fn redb_stores_pass_the_openraft_suite() -> Result<(), StorageError> {
        Suite::test_all(RedbBuilder)
    }
}
