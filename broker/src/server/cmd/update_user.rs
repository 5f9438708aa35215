//! UpdateUser: changes a user's password, permissions or quotas through the log, each only when
//! given (an admin, or the user itself for its password). A new password is hashed here, on the
//! leader.

use chorus_machine::{Actor, Command, UserUpdate};
use chorus_protocol::pb;

use super::{Route, Serve, Served, done, write};
use crate::command;
use crate::security::password;
use crate::server::respond::{hashing_failed, invalid};
use crate::server::state::Server;

impl Serve for pb::UpdateUser {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::Empty> {
        let permissions = match self.permissions {
            Some(list) => Some(command::permissions_from_pb(list.permissions).map_err(invalid)?),
            None => None,
        };
        let password_hash = match self.password {
            Some(password) => Some(password::hash_off_thread(password).await.map_err(hashing_failed)?),
            None => None,
        };
        let quotas = self.quotas.map(command::quotas_from_pb);
        let update = UserUpdate { name: self.name, password_hash, permissions, quotas };
        write(server, actor, Command::UpdateUser(update)).await.map(done)
    }
}
