//! The shapes of answers: machine records as protobuf, and every refusal and failure as an
//! error code a client can act on.

use chorus_machine::{
    GroupRecord, MachineError, MessageRecord, Published, StoreError, StoreRead, SubRecord, TopicRecord, UserRecord,
    query,
};
use chorus_protocol::pb::{self, ErrorCode};

use crate::broker::ReadError;
use crate::command::{self, ConvertError, group_config_to_pb, topic_config_to_pb};
use crate::forward::ForwardError;
use crate::proposer::{MembershipError, ProposeError};
use crate::security::password::PasswordError;
use crate::storage::CorruptValue;

pub fn error(code: ErrorCode, message: impl Into<String>) -> pb::Error {
    pb::Error::new(code, message)
}

/// A storage failure while answering.
pub fn internal(error: impl std::fmt::Display) -> pb::Error {
    pb::Error::new(ErrorCode::Internal, error.to_string())
}

/// A read of the applied state failed. A damaged value is never served: this broker answers
/// `UNAVAILABLE`, which a client retries at another broker, whose copy is its own.
pub fn unreadable(error: StoreError) -> pb::Error {
    match CorruptValue::find(&error) {
        Some(corrupt) => {
            pb::Error::new(ErrorCode::Unavailable, format!("this broker cannot serve the read, another can: {corrupt}"))
        }
        None => internal(error),
    }
}

/// The topic named `name`, or UnknownTopic.
pub fn find_topic(store: &impl StoreRead, name: &str) -> Result<TopicRecord, pb::Error> {
    query::topic(store, name)
        .map_err(unreadable)?
        .ok_or_else(|| error(ErrorCode::UnknownTopic, format!("unknown topic {name:?}")))
}

/// The work group `name` on `topic`, or UnknownGroup.
pub fn find_group(store: &impl StoreRead, topic: &TopicRecord, name: &str) -> Result<GroupRecord, pb::Error> {
    query::group_of(store, topic.id, name)
        .map_err(unreadable)?
        .ok_or_else(|| error(ErrorCode::UnknownGroup, format!("unknown work group {name:?}")))
}

/// `topic` with its groups and subscriptions.
pub fn describe(store: &impl StoreRead, topic: &TopicRecord) -> Result<pb::TopicInfo, pb::Error> {
    let groups = query::groups(store, topic.id).map_err(unreadable)?;
    let subs = query::subscriptions(store, topic.id).map_err(unreadable)?;
    Ok(topic_info(topic, &groups, &subs))
}

/// The machine's refusal as an answer.
pub fn refused(error: &MachineError) -> pb::Error {
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
        MachineError::OutOfOrder { .. } => ErrorCode::OutOfOrder,
    };
    pb::Error::new(code, error.to_string())
}

/// A request that does not convert to a command.
pub fn invalid(error: ConvertError) -> pb::Error {
    pb::Error::new(ErrorCode::InvalidArgument, error.to_string())
}

/// A password that could not be hashed: too short or too long, or the hashing failed.
pub fn hashing_failed(error: PasswordError) -> pb::Error {
    let code = match error {
        PasswordError::Length => ErrorCode::InvalidArgument,
        PasswordError::Hash(_) | PasswordError::Stopped => ErrorCode::Internal,
    };
    pb::Error::new(code, error.to_string())
}

impl From<ProposeError> for pb::Error {
    fn from(error: ProposeError) -> pb::Error {
        let code = match &error {
            ProposeError::NotLeader { leader: Some((id, node)) } => {
                let mut answer = pb::Error::new(ErrorCode::NotLeader, "this broker is not the leader");
                answer.leader_id = Some(*id);
                answer.leader_addr = node.client_addr.clone();
                return answer;
            }
            ProposeError::NotLeader { leader: None } => {
                return pb::Error::new(ErrorCode::Unavailable, "no leader is known: an election may be under way");
            }
            ProposeError::Overloaded => ErrorCode::Overloaded,
            ProposeError::Membership(MembershipError::NotAVoter(_) | MembershipError::LastBroker) => {
                ErrorCode::InvalidArgument
            }
            ProposeError::NoQuorum { .. }
            | ProposeError::HandingOver { .. }
            | ProposeError::OutcomeUnknown
            | ProposeError::ShuttingDown
            | ProposeError::RaftStopped(_)
            | ProposeError::Membership(MembershipError::Refused(_)) => ErrorCode::Unavailable,
        };
        pb::Error::new(code, error.to_string())
    }
}

impl From<ReadError> for pb::Error {
    fn from(error: ReadError) -> pb::Error {
        internal(error)
    }
}

/// The leader did not answer: it may have served the request.
impl From<ForwardError> for pb::Error {
    fn from(error: ForwardError) -> pb::Error {
        pb::Error::new(ErrorCode::Unavailable, error.to_string())
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
        consumers: Vec::new(),
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

/// A user as clients see it: never its password hash.
pub fn user_info(user: &UserRecord) -> pb::UserInfo {
    pb::UserInfo {
        name: user.name.clone(),
        permissions: user.permissions.iter().map(command::permission_to_pb).collect(),
        quotas: Some(command::quotas_to_pb(&user.quotas)),
        has_password: user.password_hash.is_some(),
        created_ms: user.created_ms,
        topics_owned: user.topics_owned,
        groups_owned: user.groups_owned,
    }
}
