//! Builds answers: machine records and errors as protobuf.

use chorus_machine::{GroupRecord, MachineError, MessageRecord, Published, StoreRead, SubRecord, TopicRecord, query};
use chorus_protocol::pb::{self, ErrorCode};

use crate::command::{group_config_to_pb, topic_config_to_pb};
use crate::proposer::ProposeError;

pub fn error(code: ErrorCode, message: impl Into<String>) -> pb::Error {
    pb::Error::new(code, message)
}

/// A storage failure while answering.
pub fn internal(error: impl std::fmt::Display) -> pb::Error {
    pb::Error::new(ErrorCode::Internal, error.to_string())
}

/// The topic named `name`, or UnknownTopic.
pub fn find_topic(store: &impl StoreRead, name: &str) -> Result<TopicRecord, pb::Error> {
    query::topic(store, name)
        .map_err(internal)?
        .ok_or_else(|| error(ErrorCode::UnknownTopic, format!("unknown topic {name:?}")))
}

/// The work group `name` on `topic`, or UnknownGroup.
pub fn find_group(store: &impl StoreRead, topic: &TopicRecord, name: &str) -> Result<GroupRecord, pb::Error> {
    query::group_of(store, topic.id, name)
        .map_err(internal)?
        .ok_or_else(|| error(ErrorCode::UnknownGroup, format!("unknown work group {name:?}")))
}

/// `topic` with its groups and subscriptions.
pub fn describe(store: &impl StoreRead, topic: &TopicRecord) -> Result<pb::TopicInfo, pb::Error> {
    let groups = query::groups(store, topic.id).map_err(internal)?;
    let subs = query::subscriptions(store, topic.id).map_err(internal)?;
    Ok(topic_info(topic, &groups, &subs))
}

pub fn machine_error(error: &MachineError) -> pb::Error {
    let code = match error {
        MachineError::UnknownTopic(_) => ErrorCode::UnknownTopic,
        MachineError::UnknownGroup(_) => ErrorCode::UnknownGroup,
        MachineError::UnknownSubscription(_) => ErrorCode::UnknownSubscription,
        MachineError::StaleLease(_) => ErrorCode::StaleLease,
        MachineError::Conflict(_) | MachineError::InvalidArgument(_) => ErrorCode::InvalidArgument,
        MachineError::TooLarge(_) => ErrorCode::TooLarge,
        MachineError::LimitReached(_) => ErrorCode::LimitReached,
        MachineError::Forbidden(_) => ErrorCode::Forbidden,
        MachineError::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
        MachineError::UnknownUser(_) => ErrorCode::UnknownUser,
    };
    pb::Error::new(code, error.to_string())
}

pub fn propose_error(error: &ProposeError) -> pb::Error {
    match error {
        ProposeError::NotLeader { leader } => {
            let mut answer = pb::Error::new(ErrorCode::NotLeader, "this broker is not the leader");
            if let Some((id, node)) = leader {
                answer.leader_id = Some(*id);
                answer.leader_addr = node.client_addr.clone();
            } else {
                answer.code = ErrorCode::Unavailable as i32;
                answer.message = "no leader is known: an election may be under way".into();
            }
            answer
        }
        ProposeError::Unavailable(message) => pb::Error::new(ErrorCode::Unavailable, message.clone()),
        ProposeError::Overloaded(message) => pb::Error::new(ErrorCode::Overloaded, message.clone()),
        ProposeError::Invalid(message) => pb::Error::new(ErrorCode::InvalidArgument, message.clone()),
        ProposeError::Internal(message) => pb::Error::new(ErrorCode::Internal, message.clone()),
    }
}

pub fn publish_ok(published: &Published) -> pb::PublishOk {
    pb::PublishOk {
        first_seq: published.first_seq,
        count: published.count,
        log_index: published.log_index,
        batch_pos: published.batch_pos,
        duplicate: published.duplicate,
    }
}

pub fn stored_message(seq: u64, message: MessageRecord) -> pb::StoredMessage {
    pb::StoredMessage {
        seq,
        log_index: message.log_index,
        batch_pos: message.batch_pos,
        time_ms: message.time_ms,
        key: message.key,
        headers: message.headers.into_iter().map(|h| pb::Header { name: h.name, value: h.value }).collect(),
        payload: message.payload,
    }
}

pub fn group_info(topic: &TopicRecord, group: &GroupRecord) -> pb::GroupInfo {
    let c = &group.counts;
    pb::GroupInfo {
        topic: topic.name.clone(),
        name: group.name.clone(),
        config: Some(group_config_to_pb(&group.config)),
        next_seq: group.next_seq,
        backlog: query::group_backlog(topic, group),
        leased: c.leased,
        waiting_for_key: c.waiting,
        delivered_total: c.delivered_total,
        acked_total: c.acked_total,
        nacked_total: c.nacked_total,
        expired_total: c.expired_total,
        dead_lettered_total: c.dead_lettered_total,
        dropped_total: c.dropped_total,
    }
}

pub fn topic_info(topic: &TopicRecord, groups: &[GroupRecord], subs: &[SubRecord]) -> pb::TopicInfo {
    pb::TopicInfo {
        name: topic.name.clone(),
        config: Some(topic_config_to_pb(&topic.config)),
        created_ms: topic.created_ms,
        first_seq: topic.first_seq,
        last_seq: topic.last_seq,
        messages: topic.messages(),
        bytes: topic.bytes,
        groups: groups.iter().map(|g| group_info(topic, g)).collect(),
        subscriptions: subs
            .iter()
            .map(|s| pb::SubscriptionInfo {
                name: s.name.clone(),
                next_seq: s.next_seq,
                lag: query::subscription_lag(topic, s),
            })
            .collect(),
    }
}
