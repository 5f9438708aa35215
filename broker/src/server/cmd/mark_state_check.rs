//! MarkStateCheck: marks, through the log, an index at which every broker takes a digest of its
//! applied state (admin). `chorus check` then asks each broker for its digest there.

use chorus_machine::{Actor, Command};
use chorus_protocol::pb;

use super::{Route, Serve, Served, write};
use crate::server::respond::internal;
use crate::server::state::Server;

impl Serve for pb::MarkStateCheckRequest {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::StateMark> {
        let marked = write(server, actor, Command::MarkStateCheck { claim: None }).await?;
        Ok(pb::StateMark { index: marked.state_marked().map_err(internal)? })
    }
}
