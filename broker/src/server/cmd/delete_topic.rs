//! DeleteTopic: deletes a topic with its messages, groups and subscriptions through the log
//! (MANAGE on its name).

use chorus_machine::{Actor, Command};
use chorus_protocol::pb;

use super::{Route, Serve, Served, done, write};
use crate::server::state::Server;

impl Serve for pb::DeleteTopic {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::Empty> {
        write(server, actor, Command::DeleteTopic { name: self.name }).await.map(done)
    }
}
