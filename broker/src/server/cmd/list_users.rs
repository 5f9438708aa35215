//! ListUsers: users in name order after `after`, for an admin, from this broker's applied state.

use chorus_machine::{Actor, query};
use chorus_protocol::pb;

use super::{Route, Serve, Served, page_size};
use crate::server::access::{self, Needs};
use crate::server::respond::{unreadable, user_info};
use crate::server::state::Server;

impl Serve for pb::ListUsers {
    const ROUTE: Route = Route::Here;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::UserList> {
        let store = server.broker.read()?;
        access::check(&store, actor, Needs::Admin)?;
        let users = query::users(&store, &self.after, page_size(self.limit)).map_err(unreadable)?;
        Ok(pb::UserList { users: users.iter().map(user_info).collect() })
    }
}
