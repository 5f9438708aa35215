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

/// Answers `request` from `actor`, run by `runner`. Every kind but Publish and Ping runs boxed:
/// a request's task is as large as its largest kind's future, and is copied at each spawn; with
/// every kind inline a task was 9 KiB, and copying it was 6 to 8% of the leader's CPU in a profile
/// under one-message publishes (BENCHMARKS.md, "One-message publishes").
pub async fn dispatch(runner: &impl Runner, request: Request, actor: &Actor) -> Answer {
    match request {
        Request::Ping(r) => answer(runner, r, actor).await,
        Request::ClusterStatus(r) => Box::pin(answer(runner, r, actor)).await,
        Request::Publish(r) => answer(runner, r, actor).await,
        Request::Commit(r) => Box::pin(answer(runner, r, actor)).await,
        Request::Lease(r) => Box::pin(answer(runner, r, actor)).await,
        Request::Ack(r) => Box::pin(answer(runner, r, actor)).await,
        Request::Nack(r) => Box::pin(answer(runner, r, actor)).await,
        Request::Extend(r) => Box::pin(answer(runner, r, actor)).await,
        Request::CreateTopic(r) => Box::pin(answer(runner, r, actor)).await,
        Request::DescribeTopic(r) => Box::pin(answer(runner, r, actor)).await,
        Request::ListTopics(r) => Box::pin(answer(runner, r, actor)).await,
        Request::DeleteTopic(r) => Box::pin(answer(runner, r, actor)).await,
        Request::CreateGroup(r) => Box::pin(answer(runner, r, actor)).await,
        Request::DescribeGroup(r) => Box::pin(answer(runner, r, actor)).await,
        Request::ListGroups(r) => Box::pin(answer(runner, r, actor)).await,
        Request::DeleteGroup(r) => Box::pin(answer(runner, r, actor)).await,
        Request::CreateSubscription(r) => Box::pin(answer(runner, r, actor)).await,
        Request::DeleteSubscription(r) => Box::pin(answer(runner, r, actor)).await,
        Request::ChangeMembership(r) => Box::pin(answer(runner, r, actor)).await,
        Request::CreateUser(r) => Box::pin(answer(runner, r, actor)).await,
        Request::UpdateUser(r) => Box::pin(answer(runner, r, actor)).await,
        Request::DeleteUser(r) => Box::pin(answer(runner, r, actor)).await,
        Request::DescribeUser(r) => Box::pin(answer(runner, r, actor)).await,
        Request::ListUsers(r) => Box::pin(answer(runner, r, actor)).await,
        Request::MarkStateCheck(r) => Box::pin(answer(runner, r, actor)).await,
        Request::StateDigest(r) => Box::pin(answer(runner, r, actor)).await,
        Request::UpdateTopic(r) => Box::pin(answer(runner, r, actor)).await,
        Request::UpdateGroup(r) => Box::pin(answer(runner, r, actor)).await,
        Request::SeekSubscription(r) => Box::pin(answer(runner, r, actor)).await,
        Request::Redrive(r) => Box::pin(answer(runner, r, actor)).await,
        Request::PeekGroup(r) => Box::pin(answer(runner, r, actor)).await,
        Request::TransferLeader(r) => Box::pin(answer(runner, r, actor)).await,
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
