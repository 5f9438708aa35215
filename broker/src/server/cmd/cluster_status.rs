//! ClusterStatus: this broker's view of the cluster (role, term, leader, indexes, each
//! follower's lag), which any broker gives without a round trip.

use chorus_machine::Actor;
use chorus_protocol::pb;

use super::{Route, Serve, Served};
use crate::server::state::Server;

impl Serve for pb::ClusterStatusRequest {
    const ROUTE: Route = Route::Here;

    async fn serve(self, server: &Server, _: &Actor) -> Served<pb::ClusterStatus> {
        Ok(server.broker.status())
    }
}
