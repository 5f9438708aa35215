//! The one `match` over request kinds: each kind goes to its [`Serve`] implementation through a
//! [`Runner`], which decides where it runs. A client connection runs requests through the
//! [`Router`](super::router::Router); the peer listener runs a request a follower forwarded
//! [`Here`], and never forwards it again.

use std::future::Future;

use chorus_machine::Actor;
use chorus_protocol::pb::{self, ErrorCode, client_frame::Body as Request, server_frame::Body as Answer};

use super::cmd::{Serve, Served};
use super::state::Server;

/// Runs a request somewhere and returns its answer.
pub trait Runner: Sync {
    fn run<C: Serve>(&self, request: C, actor: &Actor) -> impl Future<Output = Served<C::Answer>> + Send;
}

/// Runs every request on this broker.
#[derive(Debug, Clone, Copy)]
pub struct Here<'a>(pub &'a Server);

impl Runner for Here<'_> {
    async fn run<C: Serve>(&self, request: C, actor: &Actor) -> Served<C::Answer> {
        request.serve(self.0, actor).await
    }
}

/// Answers `request` from `actor`, run by `runner`.
pub async fn dispatch(runner: &impl Runner, request: Request, actor: &Actor) -> Answer {
    match request {
        Request::Ping(r) => answer(runner, r, actor).await,
        Request::ClusterStatus(r) => answer(runner, r, actor).await,
        Request::Publish(r) => answer(runner, r, actor).await,
        Request::Commit(r) => answer(runner, r, actor).await,
        Request::Lease(r) => answer(runner, r, actor).await,
        Request::Ack(r) => answer(runner, r, actor).await,
        Request::Nack(r) => answer(runner, r, actor).await,
        Request::Extend(r) => answer(runner, r, actor).await,
        Request::CreateTopic(r) => answer(runner, r, actor).await,
        Request::DescribeTopic(r) => answer(runner, r, actor).await,
        Request::ListTopics(r) => answer(runner, r, actor).await,
        Request::DeleteTopic(r) => answer(runner, r, actor).await,
        Request::CreateGroup(r) => answer(runner, r, actor).await,
        Request::DescribeGroup(r) => answer(runner, r, actor).await,
        Request::ListGroups(r) => answer(runner, r, actor).await,
        Request::DeleteGroup(r) => answer(runner, r, actor).await,
        Request::CreateSubscription(r) => answer(runner, r, actor).await,
        Request::DeleteSubscription(r) => answer(runner, r, actor).await,
        Request::ChangeMembership(r) => answer(runner, r, actor).await,
        Request::CreateUser(r) => answer(runner, r, actor).await,
        Request::UpdateUser(r) => answer(runner, r, actor).await,
        Request::DeleteUser(r) => answer(runner, r, actor).await,
        Request::DescribeUser(r) => answer(runner, r, actor).await,
        Request::ListUsers(r) => answer(runner, r, actor).await,
        Request::MarkStateCheck(r) => answer(runner, r, actor).await,
        Request::StateDigest(r) => answer(runner, r, actor).await,
        Request::UpdateTopic(r) => answer(runner, r, actor).await,
        Request::UpdateGroup(r) => answer(runner, r, actor).await,
        Request::SeekSubscription(r) => answer(runner, r, actor).await,
        Request::Redrive(r) => answer(runner, r, actor).await,
        Request::PeekGroup(r) => answer(runner, r, actor).await,
        Request::Hello(_) => invalid("hello is only the first frame"),
        // A connection serves these itself: they act on its own state.
        Request::Subscribe(_) | Request::Credit(_) | Request::Unsubscribe(_) => {
            invalid("subscriptions are served on client connections only")
        }
    }
}

async fn answer<C: Serve>(runner: &impl Runner, request: C, actor: &Actor) -> Answer {
    match runner.run(request, actor).await {
        Ok(answer) => C::into_answer(answer),
        Err(error) => Answer::Error(error),
    }
}

fn invalid(why: &str) -> Answer {
    Answer::Error(pb::Error::new(ErrorCode::InvalidArgument, why))
}
