//! Commit: moves a durable subscription's cursor through the log, so any broker resumes the
//! subscriber after it.

use chorus_machine::{Actor, Command};
use chorus_protocol::pb;

use super::{Route, Serve, Served, write};
use crate::server::respond::internal;
use crate::server::state::Server;

impl Serve for pb::CommitRequest {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::CommitOk> {
        let command = Command::Commit { topic: self.topic, subscription: self.subscription, seq: self.seq };
        let next_seq = write(server, actor, command).await?.committed().map_err(internal)?;
        Ok(pb::CommitOk { next_seq })
    }
}
