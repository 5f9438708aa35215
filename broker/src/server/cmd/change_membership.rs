//! ChangeMembership: adds or removes a broker, for an admin. The state machine checks the actor
//! when it records the change, before the change is made; adding one waits while it catches up.

use std::time::Duration;

use chorus_machine::Actor;
use chorus_protocol::pb;

use super::{Route, Serve, Served};
use crate::command;
use crate::config::Limits;
use crate::server::respond::{invalid, refused};
use crate::server::state::Server;

/// How long a follower waits for the leader to add or remove a broker: catching a new one up
/// can take a while.
const CHANGE_TIMEOUT_MS: u64 = 120_000;

impl Serve for pb::ChangeMembership {
    const ROUTE: Route = Route::Leader;

    fn forward_timeout(&self, _: &Limits) -> Duration {
        Duration::from_millis(CHANGE_TIMEOUT_MS)
    }

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::Empty> {
        let change = command::membership_change_from_pb(self).map_err(invalid)?;
        match server.broker.change_membership(change, actor).await? {
            Ok(_) => Ok(pb::Empty {}),
            Err(refusal) => Err(refused(&refusal)),
        }
    }
}
