//! DescribeGroup: a work group's configuration, counts and lease holders, from this broker's
//! applied state.

use chorus_machine::Actor;
use chorus_protocol::pb;

use super::{Route, Serve, Served};
use crate::server::access::{self, Needs};
use crate::server::respond::{find_group, find_topic, group_info, unreadable};

/// Lease holders a DescribeGroup names at most.
const LEASE_HOLDERS_SHOWN: usize = 100;
use crate::server::state::Server;

impl Serve for pb::DescribeGroup {
    const ROUTE: Route = Route::Here;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::GroupInfo> {
        let store = server.broker.read()?;
        access::check(&store, actor, Needs::SeeTopic(&self.topic))?;
        let topic = find_topic(&store, &self.topic)?;
        let group = find_group(&store, &topic, &self.name)?;
        let holders =
            chorus_machine::query::lease_holders(&store, group.id, LEASE_HOLDERS_SHOWN).map_err(unreadable)?;
        let consumers = holders.into_iter().map(|(consumer, leased)| pb::ConsumerLeases { consumer, leased });
        Ok(pb::GroupInfo { consumers: consumers.collect(), ..group_info(&topic, &group) })
    }
}
