//! ListGroups: every work group of a topic, from this broker's applied state.

use chorus_machine::{Actor, query};
use chorus_protocol::pb;

use super::{Route, Serve, Served};
use crate::server::access::{self, Needs};
use crate::server::respond::{find_topic, group_info, unreadable};
use crate::server::state::Server;

impl Serve for pb::ListGroups {
    const ROUTE: Route = Route::Here;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::GroupList> {
        let store = server.broker.read()?;
        access::check(&store, actor, Needs::SeeTopic(&self.topic))?;
        let topic = find_topic(&store, &self.topic)?;
        let groups = query::groups(&store, topic.id).map_err(unreadable)?;
        Ok(pb::GroupList { groups: groups.iter().map(|group| group_info(&topic, group)).collect() })
    }
}
