//! PeekGroup: a work group's unfinished messages and where each stands, from this broker's
//! applied state, for an actor who may consume from the group. Consumes nothing.

use chorus_machine::access::{Action, group_resource};
use chorus_machine::{Actor, PeekLimit, PeekState, Peeked};
use chorus_protocol::pb;

use super::{Route, Serve, Served};
use crate::server::access::{self, Needs};
use crate::server::respond::{find_group, find_topic, stored_message, unreadable};
use crate::server::state::Server;

/// Messages one peek answers at most, and when the request gives no limit.
const PEEK_MAX: u32 = 1000;
const PEEK_DEFAULT: u32 = 100;

impl Serve for pb::PeekGroup {
    const ROUTE: Route = Route::Here;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::GroupPeek> {
        let store = server.broker.read()?;
        let resource = group_resource(&self.topic, &self.group);
        access::check(&store, actor, Needs::Allowed(Action::Consume, &resource))?;
        let topic = find_topic(&store, &self.topic)?;
        let group = find_group(&store, &topic, &self.group)?;
        let limit = match self.limit {
            0 => PEEK_DEFAULT,
            limit => limit.min(PEEK_MAX),
        };
        let now_ms = server.broker.now_ms();
        // As much as fits in one answer frame, as a lease does.
        let bytes = server.broker.config.limits.answer_messages_bytes_max();
        let limit = PeekLimit { messages: limit as usize, bytes };
        let peeked = chorus_machine::peek(&store, &topic, &group, self.after_seq, limit, now_ms).map_err(unreadable)?;
        Ok(pb::GroupPeek { messages: peeked.into_iter().map(peeked_to_pb).collect() })
    }
}

fn peeked_to_pb(peeked: Peeked) -> pb::PeekedMessage {
    let mut answer = pb::PeekedMessage {
        message: Some(stored_message(peeked.seq, peeked.message)),
        deliveries: peeked.deliveries,
        ..Default::default()
    };
    let state = match peeked.state {
        PeekState::Ready => pb::PeekedState::Ready,
        PeekState::Delayed { available_ms } => {
            answer.available_ms = available_ms;
            pb::PeekedState::Delayed
        }
        PeekState::Leased { consumer, deadline_ms } => {
            (answer.consumer, answer.deadline_ms) = (consumer, deadline_ms);
            pb::PeekedState::Leased
        }
        PeekState::WaitingForKey => pb::PeekedState::WaitingForKey,
    };
    answer.state = state as i32;
    answer
}
