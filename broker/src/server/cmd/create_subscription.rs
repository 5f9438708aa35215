//! CreateSubscription: creates a durable subscription through the log (SUBSCRIBE on the topic),
//! or finds it there, with its cursor and lag as DescribeTopic gives them. Subscribe with a
//! subscription name runs this too.

use chorus_machine::{Actor, Command};
use chorus_protocol::pb;

use super::{Route, Serve, Served, write};
use crate::command;
use crate::server::respond::{find_topic, internal};
use crate::server::state::Server;

impl Serve for pb::CreateSubscription {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::SubscriptionInfo> {
        let start = command::start_from_pb(self.start);
        let topic_name = self.topic.clone();
        let command = Command::CreateSubscription { topic: self.topic, name: self.name.clone(), start };
        let next_seq = write(server, actor, command).await?.subscription_created().map_err(internal)?;
        // Applied here before the write answered: the topic as it is now, with the new cursor.
        let topic = find_topic(&server.broker.read()?, &topic_name)?;
        let lag = chorus_machine::query::lag(&topic, next_seq);
        Ok(pb::SubscriptionInfo { name: self.name, next_seq, lag })
    }
}
