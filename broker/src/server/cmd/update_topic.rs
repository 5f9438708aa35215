//! UpdateTopic: replaces a topic's limits through the log (MANAGE on the topic), and answers the
//! topic as DescribeTopic would.

use chorus_machine::{Actor, Command};
use chorus_protocol::pb;

use super::{Route, Serve, Served, write};
use crate::command;
use crate::server::respond::{describe, find_topic};
use crate::server::state::Server;

impl Serve for pb::UpdateTopic {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::TopicInfo> {
        let config = command::topic_config_from_pb(self.config);
        write(server, actor, Command::UpdateTopic { name: self.name.clone(), config }).await?;
        let store = server.broker.read()?;
        describe(&store, &find_topic(&store, &self.name)?)
    }
}
