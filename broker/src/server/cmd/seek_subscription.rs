//! SeekSubscription: moves a durable subscription's cursor through the log (SUBSCRIBE on the
//! topic), and answers it with its lag.

use chorus_machine::{Actor, Command};
use chorus_protocol::pb;

use super::{Route, Serve, Served, write};
use crate::command;
use crate::server::respond::{find_topic, internal};
use crate::server::state::Server;

impl Serve for pb::SeekSubscription {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::SubscriptionInfo> {
        let start = command::start_from_pb(self.start);
        let seek = Command::SeekSubscription { topic: self.topic.clone(), name: self.name.clone(), start };
        let next_seq = write(server, actor, seek).await?.cursor_moved().map_err(internal)?;
        let topic = find_topic(&server.broker.read()?, &self.topic)?;
        let lag = chorus_machine::query::lag(&topic, next_seq);
        Ok(pb::SubscriptionInfo { name: self.name, next_seq, lag })
    }
}
