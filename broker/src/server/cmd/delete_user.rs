//! DeleteUser: deletes a user through the log, for an admin; its leases end at the next pulse.

use chorus_machine::{Actor, Command};
use chorus_protocol::pb;

use super::{Route, Serve, Served, done, write};
use crate::server::state::Server;

impl Serve for pb::DeleteUser {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::Empty> {
        write(server, actor, Command::DeleteUser { name: self.name }).await.map(done)
    }
}
