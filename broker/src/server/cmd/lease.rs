//! Lease: a long-poll for up to `count_max` messages of a work group. It waits, up to `wait_ms`,
//! until the group may have something that the leases in flight have not claimed
//! ([`crate::server::claims`]), then leases through the log, where the machine grants messages
//! with fencing tokens. Waiting is done against this broker's applied state, on whichever broker
//! took the request, so idle pollers propose nothing and hold nothing of the leader's: a follower
//! forwards only the final lease, without a wait (long-polls never hold the forwarding slots that
//! writes need). Only those who may consume hold a long-poll open. A lease grants at most what
//! fits in one answer frame, and always at least one message, whatever `count_max` asked.

use std::time::Duration;

use chorus_machine::access::{Action, group_resource};
use chorus_machine::{Actor, Command, query};
use chorus_protocol::pb;

use super::{Route, Serve, Served, write};
use crate::config::Limits;
use crate::proposer::ProposeError;
use crate::server::access::{self, Needs};
use crate::server::respond::{find_group, find_topic, internal, refused, stored_message, unreadable};
use crate::server::router;
use crate::server::state::Server;

impl Serve for pb::LeaseRequest {
    const ROUTE: Route = Route::Here;

    /// Only a lease without a wait is forwarded (see [`lease_now`]), but the leader may hold
    /// whatever wait a request asks for.
    fn forward_timeout(&self, limits: &Limits) -> Duration {
        wait(self, limits) + Duration::from_millis(limits.write_timeout_ms)
    }

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::LeaseOk> {
        chorus_machine::validate::lease(&self.consumer, self.count_max, self.lease_ms).map_err(|e| refused(&e))?;
        {
            let store = server.broker.read()?;
            let resource = group_resource(&self.topic, &self.group);
            access::check(&store, actor, Needs::Allowed(Action::Consume, &resource))?;
        }
        // A follower that has not applied the group yet (created through another broker a moment
        // ago) leaves the whole request to the leader rather than refuse it.
        if !server.broker.is_leader() && !knows_group(server, &self)? {
            return router::to_leader(server, self, actor, 0).await;
        }
        let deadline = tokio::time::Instant::now() + wait(&self, &server.broker.config.limits);
        long_poll(server, actor, self, deadline).await
    }
}

/// Whether this broker's applied state holds the request's topic and group.
fn knows_group(server: &Server, request: &pb::LeaseRequest) -> Served<bool> {
    let store = server.broker.read()?;
    let found = find_topic(&store, &request.topic).and_then(|topic| find_group(&store, &topic, &request.group));
    Ok(found.is_ok())
}

/// How long the request may wait for messages.
fn wait(request: &pb::LeaseRequest, limits: &Limits) -> Duration {
    Duration::from_millis(request.wait_ms.min(limits.lease_wait_ms_max))
}

/// Leases once something may be there and unclaimed, until the deadline; an empty lease when
/// nothing came.
async fn long_poll(
    server: &Server,
    actor: &Actor,
    request: pb::LeaseRequest,
    deadline: tokio::time::Instant,
) -> Served<pb::LeaseOk> {
    let broker = &server.broker;
    let mut applied = broker.applied();
    let mut releases = server.claims.releases();
    let stopping = broker.shutdown_token();
    loop {
        let hint = {
            let store = broker.read()?;
            let topic = find_topic(&store, &request.topic)?;
            let group = find_group(&store, &topic, &request.group)?;
            query::lease_hint(&store, &topic, &group, broker.now_ms()).map_err(unreadable)?
        };
        let claim = hint.ready_now.then(|| {
            let count = u64::from(request.count_max);
            server.claims.claim(&request.topic, &request.group, hint.ready_estimate, count)
        });
        if let Some(claim) = claim.flatten() {
            let leased = lease_now(server, actor, &request).await?;
            drop(claim);
            if !leased.messages.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(leased);
            }
            continue;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(pb::LeaseOk::default());
        }
        let until_ready =
            hint.next_available_ms.map(|at| Duration::from_millis(at.saturating_sub(broker.now_ms()).max(1)));
        let sleep = until_ready.map_or(deadline - now, |d| d.min(deadline - now));
        tokio::select! {
            changed = applied.changed() => if changed.is_err() {
                return Err(ProposeError::ShuttingDown.into());
            },
            _ = releases.changed() => {}
            _ = tokio::time::sleep(sleep) => {}
            // A stopping broker finishes its requests: this one with what it has, now.
            _ = stopping.cancelled() => return Ok(pb::LeaseOk::default()),
        }
    }
}

/// Leases what is there now: through the log on the leader; a follower forwards the request,
/// without its wait, and the leader leases through the log.
async fn lease_now(server: &Server, actor: &Actor, request: &pb::LeaseRequest) -> Served<pb::LeaseOk> {
    let broker = &server.broker;
    if !broker.is_leader() {
        return router::to_leader(server, pb::LeaseRequest { wait_ms: 0, ..request.clone() }, actor, 0).await;
    }
    let command = Command::Lease {
        topic: request.topic.clone(),
        group: request.group.clone(),
        consumer: request.consumer.clone(),
        count_max: request.count_max,
        lease_ms: request.lease_ms,
        bytes_max: Some(broker.config.limits.answer_messages_bytes_max()),
    };
    let leased = write(server, actor, command).await?.leased().map_err(internal)?;
    Ok(pb::LeaseOk { messages: leased.grants.into_iter().map(leased_message).collect() })
}

fn leased_message(grant: chorus_machine::Grant) -> pb::LeasedMessage {
    pb::LeasedMessage {
        message: Some(stored_message(grant.seq, grant.message)),
        token: grant.token,
        deadline_ms: grant.deadline_ms,
        delivery_count: grant.delivery_count,
    }
}
