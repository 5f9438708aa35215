//! One module per request kind, as [`Serve`] implementations. Each says where its request is
//! served ([`Route`]), how long a follower waits for the leader's answer, and how the request is
//! served here: its validation, its command or query, and the shape of its answer.
//!
//! A write is proposed through the log as the request's actor, and the state machine checks the
//! actor's permissions. A read is served from this broker's applied state, checked by
//! [`super::access`].

mod change_membership;
mod cluster_status;
mod commit;
mod create_group;
mod create_subscription;
mod create_topic;
mod create_user;
mod delete_group;
mod delete_subscription;
mod delete_topic;
mod delete_user;
mod describe_group;
mod describe_topic;
mod describe_user;
mod lease;
mod list_groups;
mod list_topics;
mod list_users;
mod mark_state_check;
mod peek_group;
mod ping;
mod publish;
mod redrive;
mod seek_subscription;
mod settle;
mod state_digest;
mod transfer_leader;
mod update_group;
mod update_topic;
mod update_user;

use std::future::Future;
use std::time::Duration;

use chorus_machine::{Actor, Command, Output, Submission};
use chorus_protocol::{Exchange, pb};

use super::respond::refused;
use super::state::Server;
use crate::config::Limits;

/// Where a request is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// On the broker that took it: reads of the applied state, and what needs no state.
    Here,
    /// On the leader: writes. A follower forwards them.
    Leader,
}

/// What a request is answered with, or why not.
pub type Served<T> = Result<T, pb::Error>;

/// A request kind the broker serves.
pub trait Serve: Exchange<Answer: Send> + Send + 'static {
    const ROUTE: Route;

    /// How long a follower waits for the leader's answer to this request.
    fn forward_timeout(&self, limits: &Limits) -> Duration {
        Duration::from_millis(limits.write_timeout_ms)
    }

    /// Serves the request here, for `actor`.
    fn serve(self, server: &Server, actor: &Actor) -> impl Future<Output = Served<Self::Answer>> + Send;
}

/// Proposes `command` as `actor`: the machine's output, or its refusal, or why the proposal has
/// no outcome.
async fn write(server: &Server, actor: &Actor, command: Command) -> Served<Output> {
    match server.broker.propose(Submission::new(actor.clone(), command)).await? {
        Ok(output) => Ok(output),
        Err(refusal) => Err(refused(&refusal)),
    }
}

/// The answer of a write whose output says nothing more than that it was done.
fn done(_: Output) -> pb::Empty {
    pb::Empty {}
}

/// A listing's page size: `limit`, or the most a page holds when it is 0.
fn page_size(limit: u32) -> usize {
    match limit {
        0 => chorus_machine::limits::LIST_MAX,
        limit => limit as usize,
    }
}
