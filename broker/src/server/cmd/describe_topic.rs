//! DescribeTopic: a topic with its groups and subscriptions, from this broker's applied state,
//! for an actor with some permission on the topic.

use chorus_machine::Actor;
use chorus_protocol::pb;

use super::{Route, Serve, Served};
use crate::server::access::{self, Needs};
use crate::server::respond::{describe, find_topic};
use crate::server::state::Server;

impl Serve for pb::DescribeTopic {
    const ROUTE: Route = Route::Here;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::TopicInfo> {
        let store = server.broker.read()?;
        access::check(&store, actor, Needs::SeeTopic(&self.name))?;
        describe(&store, &find_topic(&store, &self.name)?)
    }
}
