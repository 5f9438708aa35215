//! Redrive: moves dead letters back to their origin topics through the log (admin).

use chorus_machine::{Actor, Command};
use chorus_protocol::pb;

use super::{Route, Serve, Served, write};
use crate::server::respond::internal;
use crate::server::state::Server;

impl Serve for pb::RedriveRequest {
    const ROUTE: Route = Route::Leader;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::RedriveOk> {
        let redrive = Command::Redrive { topic: self.topic, count_max: self.count_max };
        let redriven = write(server, actor, redrive).await?.redriven().map_err(internal)?;
        let moved = redriven.moved.into_iter().map(|(topic, messages)| pb::RedrivenTopic { topic, messages });
        let (stopped_seq, stopped_why) = redriven.stopped.map_or((None, String::new()), |(seq, why)| (Some(seq), why));
        Ok(pb::RedriveOk { moved: moved.collect(), stopped_seq, stopped_why })
    }
}
