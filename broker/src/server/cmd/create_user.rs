//! CreateUser: creates a user through the log, for an admin. The password is hashed here, on the
//! leader, so only its hash enters the log (a follower forwards the request instead of hashing it
//! twice). Without quotas the user gets the defaults; with them, an absent field is unlimited.

use chorus_machine::{Actor, Command, NewUser, Quotas};
use chorus_protocol::pb;

use super::{Route, Serve, Served, done, write};
use crate::command;
use crate::security::password;
use crate::server::respond::{hashing_failed, invalid};
use crate::server::state::Server;

impl Serve for pb::CreateUser {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::Empty> {
        let permissions = command::permissions_from_pb(self.permissions).map_err(invalid)?;
        let password_hash = match self.password {
            Some(password) => Some(password::hash_off_thread(password).await.map_err(hashing_failed)?),
            None => None,
        };
        let quotas = self.quotas.map_or(Quotas::USER_DEFAULT, command::quotas_from_pb);
        let user = NewUser { name: self.name, password_hash, permissions, quotas };
        write(server, actor, Command::CreateUser(user)).await.map(done)
    }
}
