//! DescribeUser: a user's permissions and quotas, never its password hash, from this broker's
//! applied state. Admins see everyone, a user itself; an empty name is the actor.

use chorus_machine::{Actor, query};
use chorus_protocol::pb::{self, ErrorCode};

use super::{Route, Serve, Served};
use crate::server::access::{self, Needs};
use crate::server::respond::{error, unreadable, user_info};
use crate::server::state::Server;

impl Serve for pb::DescribeUser {
    const ROUTE: Route = Route::Here;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::UserInfo> {
        let name = match (self.name.as_str(), actor) {
            ("", Actor::User(own)) => own.as_str(),
            ("", Actor::Broker | Actor::Anonymous) => {
                return Err(error(ErrorCode::InvalidArgument, "this connection is anonymous: name a user"));
            }
            (name, _) => name,
        };
        let store = server.broker.read()?;
        access::check(&store, actor, Needs::AdminOrSelf(name))?;
        let user = query::user(&store, name)
            .map_err(unreadable)?
            .ok_or_else(|| error(ErrorCode::UnknownUser, format!("unknown user {name:?}")))?;
        Ok(user_info(&user))
    }
}
