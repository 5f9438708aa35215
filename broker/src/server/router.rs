//! Where a client's request runs, decided once, before it is served: a read runs here; a write
//! runs here on the leader, and a follower forwards it to the leader, once, as the decoded request
//! and the client's actor. The leader serves a forwarded request where it is (see
//! [`Here`](super::dispatch::Here)), so a request never travels twice; if leadership moved in
//! between, the client hears NOT_LEADER with the new leader's address.

use chorus_machine::Actor;
use chorus_protocol::AnswerError;
use chorus_protocol::pb::{self, ErrorCode};
use futures::future::BoxFuture;

use super::cmd::{Route, Serve, Served};
use super::dispatch::Runner;
use super::state::Server;
use crate::proposer::ProposeError;

/// Runs a client's requests where they belong.
#[derive(Debug, Clone, Copy)]
pub struct Router<'a> {
    pub server: &'a Server,
    /// The client's id for the request, carried to the leader for its logs.
    pub request_id: u64,
}

impl Runner for Router<'_> {
    async fn run<C: Serve>(&self, request: C, actor: &Actor) -> Served<C::Answer> {
        let served = if C::ROUTE == Route::Here || self.server.broker.is_leader() {
            request.serve(self.server, actor).await
        } else {
            to_leader(self.server, request, actor, self.request_id).await
        };
        let code = served.as_ref().map_or_else(|error| error.code().as_str_name(), |_| "OK");
        self.server.broker.metrics.clients.answered(C::NAME, code);
        served
    }
}

/// Forwards `request` to the leader, as `actor`, and returns its answer: for requests a
/// follower cannot serve, and for a part of one (a long-poll's final lease). Boxed: forwarding
/// is a future of about 3 KiB, which every request's task would otherwise carry, and copy at
/// each spawn, whether it forwards or not.
pub fn to_leader<'a, C: Serve + 'a>(
    server: &'a Server,
    request: C,
    actor: &'a Actor,
    request_id: u64,
) -> BoxFuture<'a, Served<C::Answer>> {
    Box::pin(forward(server, request, actor, request_id))
}

async fn forward<C: Serve>(server: &Server, request: C, actor: &Actor, request_id: u64) -> Served<C::Answer> {
    let broker = &server.broker;
    let Some(leader) = broker.leader() else {
        return Err(ProposeError::NotLeader { leader: None }.into());
    };
    let timeout = request.forward_timeout(&broker.config.limits);
    let frame = pb::ClientFrame { request_id, body: Some(request.into_request()) };
    let answer = broker.forward(&leader, frame, actor, timeout).await?;
    let body = answer.body.ok_or_else(|| pb::Error::new(ErrorCode::Internal, "the leader sent an empty answer"))?;
    C::from_answer(body).map_err(|error| match error {
        AnswerError::Refused(refusal) => refusal,
        mismatch @ AnswerError::Mismatch { .. } => pb::Error::new(ErrorCode::Internal, mismatch.to_string()),
    })
}
