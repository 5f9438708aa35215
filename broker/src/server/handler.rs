//! One client request in, one answer out: the single dispatch `match` over request kinds, for
//! the actor the connection authenticated. Writes go through the log, where the state machine
//! checks the actor's permissions; on a follower they are forwarded to the leader with the actor
//! (once: a forwarded request is never forwarded again). Reads are served from this broker's
//! applied state, checked by `access`.

use std::sync::Arc;
use std::time::Duration;

use chorus_machine::access::{Action, group_resource};
use chorus_machine::{Actor, Command, Output, Submission, query};
use chorus_protocol::pb::{self, ErrorCode, client_frame::Body as Request, server_frame::Body};

use super::access::{self, Needs};
use super::respond::{self, error, find_group, find_topic, internal, machine_error, propose_error};
use super::users;
use crate::command::{self, ConvertError};
use crate::node::Broker;
use crate::proposer::ProposeError;

pub(super) type Answer = Result<Body, pb::Error>;

/// Where a request came from: its frame (forwarded as is), who sent it, and whether another
/// broker passed it on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Origin<'a> {
    pub frame: &'a pb::ClientFrame,
    pub actor: &'a Actor,
    pub forwarded: bool,
}

/// Answers one request from `actor`. `forwarded` is true when another broker passed it on.
pub async fn handle(broker: &Arc<Broker>, frame: pb::ClientFrame, actor: &Actor, forwarded: bool) -> pb::ServerFrame {
    let request_id = frame.request_id;
    let origin = Origin { frame: &frame, actor, forwarded };
    let body = match answer(broker, origin).await {
        Ok(body) => body,
        Err(error) => Body::Error(error),
    };
    pb::ServerFrame { request_id, body: Some(body) }
}

pub(super) fn invalid(e: ConvertError) -> pb::Error {
    error(ErrorCode::InvalidArgument, e.0)
}

async fn answer(broker: &Arc<Broker>, origin: Origin<'_>) -> Answer {
    let Some(request) = origin.frame.body.clone() else {
        return Err(error(ErrorCode::InvalidArgument, "a frame needs a body"));
    };
    let actor = origin.actor;
    match request {
        Request::Hello(_) => Err(error(ErrorCode::InvalidArgument, "hello is only the first frame")),
        Request::Ping(_) => Ok(Body::Pong(pb::Pong {})),
        Request::ClusterStatus(_) => Ok(Body::ClusterStatus(broker.status())),
        Request::DescribeTopic(r) => describe_topic(broker, actor, &r.name),
        Request::ListTopics(r) => list_topics(broker, actor, &r),
        Request::DescribeGroup(r) => describe_group(broker, actor, &r.topic, &r.name),
        Request::ListGroups(r) => list_groups(broker, actor, &r.topic),
        Request::Subscribe(_) | Request::Credit(_) | Request::Unsubscribe(_) => {
            Err(error(ErrorCode::InvalidArgument, "subscriptions are served on client connections only"))
        }
        Request::ChangeMembership(r) => change_membership(broker, r, origin).await,
        Request::Lease(r) => lease(broker, r, origin).await,
        Request::Publish(r) => {
            let command = Command::Publish(command::publish_from_pb(r).map_err(invalid)?);
            write(broker, command, origin, |output| match output {
                Output::Published(published) => Ok(Body::PublishOk(respond::publish_ok(&published))),
                other => Err(unexpected(&other)),
            })
            .await
        }
        Request::CreateTopic(r) => {
            let name = r.name.clone();
            let command = Command::CreateTopic { name: r.name, config: command::topic_config_from_pb(r.config) };
            write(broker, command, origin, |_| describe_topic(broker, &Actor::Broker, &name)).await
        }
        Request::DeleteTopic(r) => write(broker, Command::DeleteTopic { name: r.name }, origin, done).await,
        Request::CreateGroup(r) => {
            let (topic, name) = (r.topic.clone(), r.name.clone());
            let config = command::group_config_from_pb(r.config);
            let command = Command::CreateGroup { topic: r.topic, name: r.name, config };
            write(broker, command, origin, |_| describe_group(broker, &Actor::Broker, &topic, &name)).await
        }
        Request::DeleteGroup(r) => {
            write(broker, Command::DeleteGroup { topic: r.topic, name: r.name }, origin, done).await
        }
        Request::CreateSubscription(r) => {
            let start = command::start_from_pb(r.start);
            let info = create_subscription(broker, actor, &r.topic, &r.name, start).await?;
            Ok(Body::Subscription(info))
        }
        Request::DeleteSubscription(r) => {
            let command = Command::DeleteSubscription { topic: r.topic, name: r.name };
            write(broker, command, origin, done).await
        }
        Request::Commit(r) => {
            let command = Command::Commit { topic: r.topic, subscription: r.subscription, seq: r.seq };
            write(broker, command, origin, |output| match output {
                Output::Committed { next_seq } => Ok(Body::CommitOk(pb::CommitOk { next_seq })),
                other => Err(unexpected(&other)),
            })
            .await
        }
        Request::Ack(r) => {
            let tokens = r.tokens.clone();
            let command = Command::Ack { topic: r.topic, group: r.group, tokens: r.tokens };
            write(broker, command, origin, |output| settled(&tokens, output)).await
        }
        Request::Nack(r) => {
            let tokens = r.tokens.clone();
            let command = Command::Nack { topic: r.topic, group: r.group, tokens: r.tokens, delay_ms: r.delay_ms };
            write(broker, command, origin, |output| settled(&tokens, output)).await
        }
        Request::Extend(r) => {
            let tokens = r.tokens.clone();
            let command = Command::Extend { topic: r.topic, group: r.group, tokens: r.tokens, lease_ms: r.lease_ms };
            write(broker, command, origin, |output| settled(&tokens, output)).await
        }
        Request::CreateUser(r) => users::create(broker, r, origin).await,
        Request::UpdateUser(r) => users::update(broker, r, origin).await,
        Request::DeleteUser(r) => write(broker, Command::DeleteUser { name: r.name }, origin, done).await,
        Request::DescribeUser(r) => users::describe(broker, actor, &r.name),
        Request::ListUsers(r) => users::list(broker, actor, &r),
    }
}

pub(super) fn done(_: Output) -> Answer {
    Ok(Body::Done(pb::Empty {}))
}

pub(super) fn unexpected(output: &Output) -> pb::Error {
    error(ErrorCode::Internal, format!("unexpected outcome {output:?}"))
}

/// Proposes `command` for the request's actor; forwards the whole request to the leader when
/// this broker is not it.
pub(super) async fn write(
    broker: &Arc<Broker>,
    command: Command,
    origin: Origin<'_>,
    answer: impl FnOnce(Output) -> Answer,
) -> Answer {
    match broker.propose(Submission::new(origin.actor.clone(), command)).await {
        Ok(Ok(output)) => answer(output),
        Ok(Err(rejected)) => Err(machine_error(&rejected)),
        Err(ProposeError::NotLeader { leader: Some(leader) }) if !origin.forwarded => {
            let timeout = Duration::from_millis(broker.config.limits.write_timeout_ms);
            forward(broker, &leader, origin, timeout).await
        }
        Err(failed) => Err(propose_error(&failed)),
    }
}

/// Passes the request, as its actor, to the leader, once.
pub(super) async fn forward(
    broker: &Arc<Broker>,
    leader: &(u64, crate::raft::BrokerNode),
    origin: Origin<'_>,
    timeout: Duration,
) -> Answer {
    let answer =
        broker.forward(leader, origin.frame.clone(), origin.actor, timeout).await.map_err(|e| propose_error(&e))?;
    answer.body.ok_or_else(|| error(ErrorCode::Internal, "the leader sent an empty answer"))
}

fn settled(tokens: &[u64], output: Output) -> Answer {
    let results = match output {
        Output::Settled(results) => tokens
            .iter()
            .zip(results)
            .map(|(&token, result)| pb::SettleResult {
                token,
                error: result.err().map(|e| machine_error(&e)),
                deadline_ms: None,
            })
            .collect(),
        Output::Extended(results) => tokens
            .iter()
            .zip(results)
            .map(|(&token, result)| match result {
                Ok(deadline_ms) => pb::SettleResult { token, error: None, deadline_ms: Some(deadline_ms) },
                Err(e) => pb::SettleResult { token, error: Some(machine_error(&e)), deadline_ms: None },
            })
            .collect(),
        other => return Err(unexpected(&other)),
    };
    Ok(Body::SettleOk(pb::SettleOk { results }))
}

/// Creates (or finds) a durable subscription through the log for `actor`, forwarding to the
/// leader when needed, and returns it with its cursor.
pub async fn create_subscription(
    broker: &Arc<Broker>,
    actor: &Actor,
    topic: &str,
    name: &str,
    start: chorus_machine::StartPosition,
) -> Result<pb::SubscriptionInfo, pb::Error> {
    let command = Command::CreateSubscription { topic: topic.into(), name: name.into(), start };
    let frame = pb::ClientFrame {
        request_id: 0,
        body: Some(Request::CreateSubscription(pb::CreateSubscription {
            topic: topic.into(),
            name: name.into(),
            start: Some(command::start_to_pb(start)),
        })),
    };
    let origin = Origin { frame: &frame, actor, forwarded: false };
    let answer = write(broker, command, origin, |output| match output {
        Output::SubscriptionCreated { next_seq, .. } => {
            Ok(Body::Subscription(pb::SubscriptionInfo { name: name.into(), next_seq, lag: 0 }))
        }
        other => Err(unexpected(&other)),
    })
    .await?;
    match answer {
        Body::Subscription(info) => Ok(info),
        // A forwarded request comes back as the leader's answer, errors included.
        Body::Error(refused) => Err(refused),
        other => Err(error(ErrorCode::Internal, format!("unexpected answer {other:?}"))),
    }
}

/// A long-poll: waits (up to `wait_ms`) until the group may have something that the leases in
/// flight have not claimed ([`super::claims`]), then leases through the log. Waiting is done
/// against local applied state, so idle pollers propose nothing.
async fn lease(broker: &Arc<Broker>, request: pb::LeaseRequest, origin: Origin<'_>) -> Answer {
    chorus_machine::validate::lease(&request.consumer, request.count_max, request.lease_ms)
        .map_err(|e| machine_error(&e))?;
    let wait = Duration::from_millis(request.wait_ms.min(broker.config.limits.lease_wait_ms_max));
    if !broker.is_leader() && !origin.forwarded {
        let Some(leader) = broker.leader() else {
            return Err(propose_error(&ProposeError::NotLeader { leader: None }));
        };
        let timeout = wait + Duration::from_millis(broker.config.limits.write_timeout_ms);
        return forward(broker, &leader, origin, timeout).await;
    }
    // Waiting is for those who may consume: nobody else holds up a long-poll.
    {
        let store = broker.read().map_err(|e| propose_error(&e))?;
        let resource = group_resource(&request.topic, &request.group);
        access::check(&store, origin.actor, Needs::Allowed(Action::Consume, &resource))?;
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut applied = broker.applied();
    let mut releases = broker.lease_claims().releases();
    loop {
        let hint = {
            let store = broker.read().map_err(|e| propose_error(&e))?;
            let topic = find_topic(&store, &request.topic)?;
            let group = find_group(&store, &topic, &request.group)?;
            query::lease_hint(&store, &topic, &group, broker.now_ms()).map_err(internal)?
        };
        let claim = hint.ready_now.then(|| {
            let count = u64::from(request.count_max);
            broker.lease_claims().claim(&request.topic, &request.group, hint.ready_estimate, count)
        });
        if let Some(claim) = claim.flatten() {
            let command = Command::Lease {
                topic: request.topic.clone(),
                group: request.group.clone(),
                consumer: request.consumer.clone(),
                count_max: request.count_max,
                lease_ms: request.lease_ms,
            };
            let leased = match broker.propose(Submission::new(origin.actor.clone(), command)).await {
                Ok(Ok(Output::Leased(leased))) => leased,
                Ok(Ok(other)) => return Err(unexpected(&other)),
                Ok(Err(rejected)) => return Err(machine_error(&rejected)),
                Err(failed) => return Err(propose_error(&failed)),
            };
            drop(claim);
            if !leased.grants.is_empty() || tokio::time::Instant::now() >= deadline {
                let messages = leased
                    .grants
                    .into_iter()
                    .map(|g| pb::LeasedMessage {
                        message: Some(respond::stored_message(g.seq, g.message)),
                        token: g.token,
                        deadline_ms: g.deadline_ms,
                        delivery_count: g.delivery_count,
                    })
                    .collect();
                return Ok(Body::LeaseOk(pb::LeaseOk { messages }));
            }
            continue;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(Body::LeaseOk(pb::LeaseOk::default()));
        }
        let until_ready =
            hint.next_available_ms.map(|at| Duration::from_millis(at.saturating_sub(broker.now_ms()).max(1)));
        let sleep = until_ready.map_or(deadline - now, |d| d.min(deadline - now));
        tokio::select! {
            changed = applied.changed() => if changed.is_err() {
                return Err(propose_error(&ProposeError::Unavailable("the broker is stopping".into())));
            },
            _ = releases.changed() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Adds or removes a broker for an admin: the state machine checks the actor when it records
/// the change, before the change is made.
async fn change_membership(broker: &Arc<Broker>, request: pb::ChangeMembership, origin: Origin<'_>) -> Answer {
    let change = command::membership_change_from_pb(request).map_err(invalid)?;
    match broker.change_membership(change, origin.actor).await {
        Ok(Ok(_)) => Ok(Body::Done(pb::Empty {})),
        Ok(Err(rejected)) => Err(machine_error(&rejected)),
        Err(ProposeError::NotLeader { leader: Some(leader) }) if !origin.forwarded => {
            // Catching a learner up can take a while.
            forward(broker, &leader, origin, Duration::from_secs(120)).await
        }
        Err(failed) => Err(propose_error(&failed)),
    }
}

fn describe_topic(broker: &Broker, actor: &Actor, name: &str) -> Answer {
    let store = broker.read().map_err(|e| propose_error(&e))?;
    access::check(&store, actor, Needs::SeeTopic(name))?;
    let topic = find_topic(&store, name)?;
    Ok(Body::Topic(respond::describe(&store, &topic)?))
}

/// Topics in name order that the actor may see; a page may hold fewer than `limit` when some are
/// not shown, so a client pages on until a page is empty.
fn list_topics(broker: &Broker, actor: &Actor, request: &pb::ListTopics) -> Answer {
    let store = broker.read().map_err(|e| propose_error(&e))?;
    let permissions = access::permissions(&store, actor)?;
    let limit = if request.limit == 0 { chorus_machine::limits::LIST_MAX } else { request.limit as usize };
    let topics = query::topics(&store, &request.after, limit).map_err(internal)?;
    let topics = topics
        .iter()
        .filter(|topic| access::lists_topic(permissions.as_deref(), &topic.name))
        .map(|topic| respond::describe(&store, topic))
        .collect::<Result<_, _>>()?;
    Ok(Body::Topics(pb::TopicList { topics }))
}

fn describe_group(broker: &Broker, actor: &Actor, topic_name: &str, name: &str) -> Answer {
    let store = broker.read().map_err(|e| propose_error(&e))?;
    access::check(&store, actor, Needs::SeeTopic(topic_name))?;
    let topic = find_topic(&store, topic_name)?;
    let group = find_group(&store, &topic, name)?;
    Ok(Body::Group(respond::group_info(&topic, &group)))
}

fn list_groups(broker: &Broker, actor: &Actor, topic_name: &str) -> Answer {
    let store = broker.read().map_err(|e| propose_error(&e))?;
    access::check(&store, actor, Needs::SeeTopic(topic_name))?;
    let topic = find_topic(&store, topic_name)?;
    let groups = query::groups(&store, topic.id).map_err(internal)?;
    Ok(Body::Groups(pb::GroupList { groups: groups.iter().map(|g| respond::group_info(&topic, g)).collect() }))
}
