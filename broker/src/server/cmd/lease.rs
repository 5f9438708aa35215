//! Lease: a long-poll for up to `count_max` messages of a work group. It waits, up to `wait_ms`,
//! until the group may have something that the leases in flight have not claimed
//! ([`crate::server::claims`]), then leases through the log, where the machine grants messages
//! with fencing tokens. Waiting is done against this broker's applied state, so idle pollers
//! propose nothing; only those who may consume hold a long-poll open.

use std::time::Duration;

use chorus_machine::access::{Action, group_resource};
use chorus_machine::{Actor, Command, Leased, query};
use chorus_protocol::pb;

use super::{Route, Serve, Served, write};
use crate::config::Limits;
use crate::proposer::ProposeError;
use crate::server::access::{self, Needs};
use crate::server::respond::{find_group, find_topic, internal, refused, stored_message, unreadable};
use crate::server::state::Server;

impl Serve for pb::LeaseRequest {
    const ROUTE: Route = Route::Leader;

    /// The leader holds the long-poll, so a follower waits for the wait as well.
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
        let deadline = tokio::time::Instant::now() + wait(&self, &server.broker.config.limits);
        let leased = long_poll(server, actor, self, deadline).await?;
        Ok(pb::LeaseOk { messages: leased.grants.into_iter().map(leased_message).collect() })
    }
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
) -> Served<Leased> {
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
            let command = Command::Lease {
                topic: request.topic.clone(),
                group: request.group.clone(),
                consumer: request.consumer.clone(),
                count_max: request.count_max,
                lease_ms: request.lease_ms,
            };
            let leased = write(server, actor, command).await?.leased().map_err(internal)?;
            drop(claim);
            if !leased.grants.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(leased);
            }
            continue;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(Leased::default());
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
            _ = stopping.cancelled() => return Ok(Leased::default()),
        }
    }
}

fn leased_message(grant: chorus_machine::Grant) -> pb::LeasedMessage {
    pb::LeasedMessage {
        message: Some(stored_message(grant.seq, grant.message)),
        token: grant.token,
        deadline_ms: grant.deadline_ms,
        delivery_count: grant.delivery_count,
    }
}
