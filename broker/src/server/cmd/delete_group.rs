//! DeleteGroup: deletes a work group and its leases through the log (MANAGE on the group).

use chorus_machine::{Actor, Command};
use chorus_protocol::pb;

use super::{Route, Serve, Served, done, write};
use crate::server::state::Server;

impl Serve for pb::DeleteGroup {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::Empty> {
        write(server, actor, Command::DeleteGroup { topic: self.topic, name: self.name }).await.map(done)
    }
}
