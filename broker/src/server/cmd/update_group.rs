//! UpdateGroup: replaces a group's lease time, max deliveries and dead-letter topic through the
//! log (MANAGE on the group), and answers the group as DescribeGroup would.

use chorus_machine::{Actor, Command};
use chorus_protocol::pb;

use super::{Route, Serve, Served, write};
use crate::command;
use crate::server::respond::{find_group, find_topic, group_info};
use crate::server::state::Server;

impl Serve for pb::UpdateGroup {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::GroupInfo> {
        let config = command::group_config_from_pb(self.config);
        let update = Command::UpdateGroup { topic: self.topic.clone(), name: self.name.clone(), config };
        write(server, actor, update).await?;
        let store = server.broker.read()?;
        let topic = find_topic(&store, &self.topic)?;
        Ok(group_info(&topic, &find_group(&store, &topic, &self.name)?))
    }
}
