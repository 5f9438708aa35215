//! A broker's client side. Requests flow one way:
//!
//! `connection` (TLS, Hello, pipelining, limits) → `router` (here, or forwarded to the leader) →
//! `dispatch` (the one match over request kinds) → `cmd` (one module per kind: its route, its
//! validation, its command or query, its answer) → the [`Broker`] service.
//!
//! `login` says who a connection acts as, `access` what it may read, `sessions` what each user
//! holds on this broker, `claims` which messages the leases in flight claim, `subscription`
//! delivers ordered broadcasts, `respond` shapes answers and errors.

pub mod access;
pub mod claims;
pub mod cmd;
pub mod connection;
pub mod dispatch;
mod listen;
pub mod login;
pub mod respond;
pub mod router;
pub mod sessions;
mod state;
pub mod subscription;

pub use listen::serve;
pub use state::Server;
