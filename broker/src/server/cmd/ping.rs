//! Ping → Pong: a liveness check that needs no state.

use chorus_machine::Actor;
use chorus_protocol::pb;

use super::{Route, Serve, Served};
use crate::server::state::Server;

impl Serve for pb::Ping {
    const ROUTE: Route = Route::Here;

    async fn serve(self, _: &Server, _: &Actor) -> Served<pb::Pong> {
        Ok(pb::Pong {})
    }
}
