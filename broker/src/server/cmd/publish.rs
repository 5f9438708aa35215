//! Publish: appends a batch of messages to a topic through the log, where the machine checks
//! PUBLISH on the topic, deduplicates an idempotent producer's batch, and assigns sequences.

use chorus_machine::{Actor, Command};
use chorus_protocol::pb;

use super::{Route, Serve, Served, write};
use crate::command;
use crate::server::respond::{internal, invalid, publish_ok};
use crate::server::state::Server;

impl Serve for pb::PublishRequest {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::PublishOk> {
        let publish = command::publish_from_pb(self).map_err(invalid)?;
        let published = write(server, actor, Command::Publish(publish)).await?.published().map_err(internal)?;
        Ok(publish_ok(&published))
    }
}
