//! Everyday client commands, one module each. Each takes the shared [`Target`] flags (brokers,
//! user, TLS, `--json`); what they print goes to stdout, what they say about it to stderr.
//!
//! - `publish`, `subscribe`, `work`: messages in and out;
//! - `admin`: topics and groups (edit, peek, redrive too); `subscriptions`: durable cursors;
//! - `status`: the cluster's brokers; `cluster`: adding and removing brokers, handing leadership over;
//! - `shown`: how messages and answers print, as text or JSON; `shared`: connecting, and parsing.

mod admin;
mod cluster;
mod publish;
mod shared;
mod shown;
mod status;
mod subscribe;
mod subscriptions;
mod work;

pub use admin::{GroupCommand, Shown, TopicCommand, answer, group, topic};
pub use cluster::{BrokerCommand, LeaderCommand, broker, leader};
pub use publish::{PublishArgs, publish};
pub use shared::connect;
pub use status::{StatusArgs, status};
pub use subscribe::{SubscribeArgs, subscribe};
pub use subscriptions::{SubscriptionCommand, subscription};
pub use work::{WorkArgs, work};
