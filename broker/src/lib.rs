//! The Chorus broker: redb storage, openraft replication and the tokio network around the pure
//! state machine in `chorus-machine`.

pub mod command;
pub mod raft;
pub mod storage;
