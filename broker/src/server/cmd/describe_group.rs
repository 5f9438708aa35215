//! DescribeGroup: a work group's configuration and counts, from this broker's applied state.

use chorus_machine::Actor;
use chorus_protocol::pb;

use super::{Route, Serve, Served};
use crate::server::access::{self, Needs};
use crate::server::respond::{find_group, find_topic, group_info};
use crate::server::state::Server;

impl Serve for pb::DescribeGroup {
    const ROUTE: Route = Route::Here;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::GroupInfo> {
        let store = server.broker.read()?;
        access::check(&store, actor, Needs::SeeTopic(&self.topic))?;
        let topic = find_topic(&store, &self.topic)?;
        Ok(group_info(&topic, &find_group(&store, &topic, &self.name)?))
    }
}
