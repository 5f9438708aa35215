//! DeleteSubscription: deletes a durable subscription and its cursor through the log.

use chorus_machine::{Actor, Command};
use chorus_protocol::pb;

use super::{Route, Serve, Served, done, write};
use crate::server::state::Server;

impl Serve for pb::DeleteSubscription {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::Empty> {
        write(server, actor, Command::DeleteSubscription { topic: self.topic, name: self.name }).await.map(done)
    }
}
