//! Chorus's replicated state machine.
//!
//! Every broker applies the same committed entries in the same order through [`Machine::apply`]
//! and gets the same state and the same outcomes. The crate is pure: no runtime, clock, socket,
//! disk or randomness (see its dependency list and `clippy.toml`). Time enters only as the
//! leader's stamp in each [`Entry`]. State lives behind the synchronous [`Store`] trait, so the
//! backlog stays on disk; the machine itself holds nothing between entries.

pub mod access;
pub mod audit;
mod authorize;
mod chore;
pub mod command;
mod ctx;
mod group;
mod keys;
mod leases;
pub mod limits;
mod lookup;
mod machine;
mod messages;
pub mod outcome;
mod owners;
mod peek;
mod pulse;
pub mod query;
pub mod redrive;
pub use peek::{PeekLimit, PeekState, Peeked, peek};
pub mod records;
mod retention;
mod revocation;
pub mod snapshot;
pub mod store;
mod subscription;
mod topic;
mod users;
pub mod validate;

#[cfg(test)]
mod testkit;

pub use access::{Action, Actor, Pattern, Permission, Quotas};
pub use command::{
    Command, DigestClaim, Entry, GroupConfig, Header, KeyOrdering, MembershipChange, NewMessage, NewUser,
    ProducerStamp, Publish, RetentionPolicy, StartPosition, Submission, TopicConfig, UserUpdate,
};
pub use machine::Machine;
pub use outcome::{Grant, Leased, MachineError, Outcome, Output, OutputMismatch, Published, PulseReport, Redriven};
pub use records::{GroupCounts, GroupRecord, MessageRecord, SubRecord, TopicRecord, UserRecord};
pub use store::{MemStore, Store, StoreError, StoreRead, Table};
