//! TransferLeader: the leader hands leadership to another voter, for planned maintenance
//! (admin). See [`crate::handover`]; the answer comes once another broker leads.

use std::time::Duration;

use chorus_machine::Actor;
use chorus_protocol::pb::{self, ErrorCode};

use super::{Route, Serve, Served};
use crate::config::Limits;
use crate::handover::{self, HANDOVER_MS_MAX, HandoverError};
use crate::proposer::ProposeError;
use crate::server::access::{self, Needs};
use crate::server::state::Server;

impl Serve for pb::TransferLeader {
    const ROUTE: Route = Route::Leader;

    /// Catching up and then an election, each bounded by [`HANDOVER_MS_MAX`].
    fn forward_timeout(&self, _: &Limits) -> Duration {
        Duration::from_millis(2 * HANDOVER_MS_MAX + 1_000)
    }

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::LeaderTransferred> {
        access::check(&server.broker.read()?, actor, Needs::Admin)?;
        let done = handover::hand_over(&server.broker, self.to).await.map_err(|error| refusal(server, error))?;
        Ok(pb::LeaderTransferred { leader_id: done.leader, term: done.term, took_ms: done.took.as_millis() as u64 })
    }
}

fn refusal(server: &Server, error: HandoverError) -> pb::Error {
    let code = match &error {
        // Said as any write's NOT_LEADER is, with the leader's address.
        HandoverError::NotLeader { .. } => return ProposeError::NotLeader { leader: server.broker.leader() }.into(),
        HandoverError::NotAVoter(_) | HandoverError::ToItself | HandoverError::NoOtherVoter => {
            ErrorCode::InvalidArgument
        }
        HandoverError::AlreadyHandingOver(_)
        | HandoverError::Behind { .. }
        | HandoverError::Unreachable { .. }
        | HandoverError::NotElected { .. } => ErrorCode::Unavailable,
    };
    pb::Error::new(code, error.to_string())
}
