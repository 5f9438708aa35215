//! Conversions between the wire (`pb`) and the state machine's types, done at the broker's
//! boundary. The log stores `pb::Entry`; the machine applies `chorus_machine::Entry`. Client
//! input that does not convert is rejected as an invalid argument before anything is proposed.

use chorus_machine::access::{Action, Actor, Pattern, Permission, Quotas};
use chorus_machine::command::{
    Command, DigestClaim, Entry, GroupConfig, Header, KeyOrdering, MembershipChange, NewMessage, NewUser,
    ProducerStamp, Publish, RetentionPolicy, StartPosition, Submission, TopicConfig, UserUpdate,
};
use chorus_machine::limits::{DEDUP_WINDOW_MS_DEFAULT, LEASE_MS_DEFAULT};
use chorus_protocol::pb;

/// A request or log entry that does not carry what it must.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error(transparent)]
    Permission(#[from] chorus_machine::access::PermissionError),
    #[error("producer_id and producer_seq go together")]
    HalfProducer,
}

type Converted<T> = Result<T, ConvertError>;

fn missing(what: &'static str) -> ConvertError {
    ConvertError::Missing(what)
}

/// Takes the entry: the proposer encodes each entry once and keeps nothing of it, so no payload
/// is copied on the write path.
pub fn entry_to_pb(entry: Entry) -> pb::Entry {
    pb::Entry { time_ms: entry.time_ms, commands: entry.submissions.into_iter().map(submission_to_pb).collect() }
}

pub fn entry_from_pb(entry: pb::Entry) -> Converted<Entry> {
    let submissions = entry.commands.into_iter().map(submission_from_pb).collect::<Converted<_>>()?;
    Ok(Entry { time_ms: entry.time_ms, submissions })
}

pub fn submission_to_pb(submission: Submission) -> pb::Command {
    pb::Command { actor: Some(actor_to_pb(&submission.actor)), ..command_to_pb(submission.command) }
}

/// A command without an actor was written before users existed: it was anonymous.
pub fn submission_from_pb(command: pb::Command) -> Converted<Submission> {
    let actor = actor_from_pb(command.actor.clone())?;
    Ok(Submission { actor, command: command_from_pb(command)? })
}

pub fn actor_to_pb(actor: &Actor) -> pb::Actor {
    use pb::actor::Kind;
    let kind = match actor {
        Actor::Broker => Kind::Broker(pb::Empty {}),
        Actor::Anonymous => Kind::Anonymous(pb::Empty {}),
        Actor::User(name) => Kind::User(name.clone()),
    };
    pb::Actor { kind: Some(kind) }
}

pub fn actor_from_pb(actor: Option<pb::Actor>) -> Converted<Actor> {
    use pb::actor::Kind;
    Ok(match actor {
        None => Actor::Anonymous,
        Some(pb::Actor { kind: None }) => return Err(missing("actor kind")),
        Some(pb::Actor { kind: Some(Kind::Broker(_)) }) => Actor::Broker,
        Some(pb::Actor { kind: Some(Kind::Anonymous(_)) }) => Actor::Anonymous,
        Some(pb::Actor { kind: Some(Kind::User(name)) }) => Actor::User(name),
    })
}

pub fn permission_to_pb(permission: &Permission) -> pb::Permission {
    let action = match permission.action {
        Action::Publish => pb::Action::Publish,
        Action::Subscribe => pb::Action::Subscribe,
        Action::Consume => pb::Action::Consume,
        Action::Manage => pb::Action::Manage,
        Action::Admin => pb::Action::Admin,
    };
    pb::Permission { action: action as i32, pattern: permission.pattern.as_str().to_owned() }
}

pub fn permission_from_pb(permission: pb::Permission) -> Converted<Permission> {
    let action = match permission.action() {
        pb::Action::Publish => Action::Publish,
        pb::Action::Subscribe => Action::Subscribe,
        pb::Action::Consume => Action::Consume,
        pb::Action::Manage => Action::Manage,
        pb::Action::Admin => Action::Admin,
        pb::Action::Unspecified => return Err(missing("permission action")),
    };
    let pattern = Pattern::parse(&permission.pattern)?;
    Ok(Permission::new(action, pattern))
}

pub fn permissions_from_pb(permissions: Vec<pb::Permission>) -> Converted<Vec<Permission>> {
    permissions.into_iter().map(permission_from_pb).collect()
}

pub fn quotas_to_pb(quotas: &Quotas) -> pb::Quotas {
    pb::Quotas {
        topics_max: quotas.topics_max,
        groups_max: quotas.groups_max,
        connections_max: quotas.connections_max,
        in_flight_bytes_max: quotas.in_flight_bytes_max,
    }
}

/// An absent field is unlimited.
pub fn quotas_from_pb(quotas: pb::Quotas) -> Quotas {
    Quotas {
        topics_max: quotas.topics_max,
        groups_max: quotas.groups_max,
        connections_max: quotas.connections_max,
        in_flight_bytes_max: quotas.in_flight_bytes_max,
    }
}

pub fn membership_change_from_pb(change: pb::ChangeMembership) -> Converted<MembershipChange> {
    use pb::change_membership::Change;
    Ok(match change.change.ok_or_else(|| missing("membership change"))? {
        Change::Add(add) => {
            MembershipChange::Add { id: add.id, peer_addr: add.peer_addr, client_addr: add.client_addr }
        }
        Change::Remove(remove) => MembershipChange::Remove { id: remove.id },
    })
}

pub fn membership_change_to_pb(change: &MembershipChange) -> pb::ChangeMembership {
    use pb::change_membership::Change;
    let change = match change {
        MembershipChange::Add { id, peer_addr, client_addr } => {
            Change::Add(pb::AddBroker { id: *id, peer_addr: peer_addr.clone(), client_addr: client_addr.clone() })
        }
        MembershipChange::Remove { id } => Change::Remove(pb::RemoveBroker { id: *id }),
    };
    pb::ChangeMembership { change: Some(change) }
}

pub fn command_to_pb(command: Command) -> pb::Command {
    use pb::command::Op;
    let op = match command {
        Command::CreateTopic { name, config } => {
            Op::CreateTopic(pb::CreateTopic { name, config: Some(topic_config_to_pb(&config)) })
        }
        Command::DeleteTopic { name } => Op::DeleteTopic(pb::DeleteTopic { name }),
        Command::UpdateTopic { name, config } => {
            Op::UpdateTopic(pb::UpdateTopic { name, config: Some(topic_config_to_pb(&config)) })
        }
        Command::Publish(publish) => Op::Publish(publish_to_pb(publish)),
        Command::CreateGroup { topic, name, config } => {
            Op::CreateGroup(pb::CreateGroup { topic, name, config: Some(group_config_to_pb(&config)) })
        }
        Command::DeleteGroup { topic, name } => Op::DeleteGroup(pb::DeleteGroup { topic, name }),
        Command::UpdateGroup { topic, name, config } => {
            Op::UpdateGroup(pb::UpdateGroup { topic, name, config: Some(group_config_to_pb(&config)) })
        }
        Command::SeekSubscription { topic, name, start } => {
            Op::SeekSubscription(pb::SeekSubscription { topic, name, start: Some(start_to_pb(start)) })
        }
        Command::Redrive { topic, count_max } => Op::Redrive(pb::RedriveRequest { topic, count_max }),
        Command::CreateSubscription { topic, name, start } => {
            Op::CreateSubscription(pb::CreateSubscription { topic, name, start: Some(start_to_pb(start)) })
        }
        Command::DeleteSubscription { topic, name } => Op::DeleteSubscription(pb::DeleteSubscription { topic, name }),
        Command::Commit { topic, subscription, seq } => Op::Commit(pb::CommitRequest { topic, subscription, seq }),
        Command::Lease { topic, group, consumer, count_max, lease_ms, bytes_max } => {
            Op::Lease(pb::LeaseCommand { topic, group, consumer, count_max, lease_ms, bytes_max })
        }
        Command::Ack { topic, group, tokens } => Op::Ack(pb::AckRequest { topic, group, tokens }),
        Command::Nack { topic, group, tokens, delay_ms } => {
            Op::Nack(pb::NackRequest { topic, group, tokens, delay_ms })
        }
        Command::Extend { topic, group, tokens, lease_ms } => {
            Op::Extend(pb::ExtendRequest { topic, group, tokens, lease_ms })
        }
        Command::Pulse => Op::Pulse(pb::Empty {}),
        Command::CreateUser(new) => Op::CreateUser(pb::UserCommand {
            name: new.name,
            password_hash: new.password_hash,
            permissions: new.permissions.iter().map(permission_to_pb).collect(),
            quotas: Some(quotas_to_pb(&new.quotas)),
        }),
        Command::UpdateUser(update) => Op::UpdateUser(pb::UserUpdateCommand {
            name: update.name,
            password_hash: update.password_hash,
            permissions: update
                .permissions
                .map(|p| pb::PermissionList { permissions: p.iter().map(permission_to_pb).collect() }),
            quotas: update.quotas.as_ref().map(quotas_to_pb),
        }),
        Command::DeleteUser { name } => Op::DeleteUser(pb::DeleteUser { name }),
        Command::BootstrapAdmin { name, password_hash } => {
            Op::BootstrapAdmin(pb::BootstrapAdmin { name, password_hash })
        }
        Command::RecordMembershipChange(change) => Op::RecordMembershipChange(membership_change_to_pb(&change)),
        Command::MembershipApplied { voters, learners } => {
            Op::MembershipApplied(pb::MembershipApplied { voters, learners })
        }
        Command::MarkStateCheck { claim } => Op::MarkStateCheck(pb::MarkStateCheck {
            claim: claim.map(|c| pb::DigestClaim { index: c.index, broker: c.broker, digest: c.digest.into() }),
        }),
    };
    pb::Command { op: Some(op), actor: None }
}

pub fn command_from_pb(command: pb::Command) -> Converted<Command> {
    use pb::command::Op;
    Ok(match command.op.ok_or_else(|| missing("command"))? {
        Op::CreateTopic(c) => Command::CreateTopic { name: c.name, config: topic_config_from_pb(c.config) },
        Op::DeleteTopic(c) => Command::DeleteTopic { name: c.name },
        Op::UpdateTopic(c) => Command::UpdateTopic { name: c.name, config: topic_config_from_pb(c.config) },
        Op::UpdateGroup(c) => {
            Command::UpdateGroup { topic: c.topic, name: c.name, config: group_config_from_pb(c.config) }
        }
        Op::SeekSubscription(c) => {
            Command::SeekSubscription { topic: c.topic, name: c.name, start: start_from_pb(c.start) }
        }
        Op::Redrive(c) => Command::Redrive { topic: c.topic, count_max: c.count_max },
        Op::Publish(p) => Command::Publish(publish_from_pb(p)?),
        Op::CreateGroup(c) => {
            Command::CreateGroup { topic: c.topic, name: c.name, config: group_config_from_pb(c.config) }
        }
        Op::DeleteGroup(c) => Command::DeleteGroup { topic: c.topic, name: c.name },
        Op::CreateSubscription(c) => {
            Command::CreateSubscription { topic: c.topic, name: c.name, start: start_from_pb(c.start) }
        }
        Op::DeleteSubscription(c) => Command::DeleteSubscription { topic: c.topic, name: c.name },
        Op::Commit(c) => Command::Commit { topic: c.topic, subscription: c.subscription, seq: c.seq },
        Op::Lease(c) => Command::Lease {
            topic: c.topic,
            group: c.group,
            consumer: c.consumer,
            count_max: c.count_max,
            lease_ms: c.lease_ms,
            bytes_max: c.bytes_max,
        },
        Op::Ack(c) => Command::Ack { topic: c.topic, group: c.group, tokens: c.tokens },
        Op::Nack(c) => Command::Nack { topic: c.topic, group: c.group, tokens: c.tokens, delay_ms: c.delay_ms },
        Op::Extend(c) => Command::Extend { topic: c.topic, group: c.group, tokens: c.tokens, lease_ms: c.lease_ms },
        Op::Pulse(_) => Command::Pulse,
        Op::CreateUser(new) => Command::CreateUser(NewUser {
            name: new.name,
            password_hash: new.password_hash,
            permissions: permissions_from_pb(new.permissions)?,
            quotas: quotas_from_pb(new.quotas.unwrap_or_default()),
        }),
        Op::UpdateUser(update) => Command::UpdateUser(UserUpdate {
            name: update.name,
            password_hash: update.password_hash,
            permissions: update.permissions.map(|list| permissions_from_pb(list.permissions)).transpose()?,
            quotas: update.quotas.map(quotas_from_pb),
        }),
        Op::DeleteUser(delete) => Command::DeleteUser { name: delete.name },
        Op::BootstrapAdmin(admin) => Command::BootstrapAdmin { name: admin.name, password_hash: admin.password_hash },
        Op::RecordMembershipChange(change) => Command::RecordMembershipChange(membership_change_from_pb(change)?),
        Op::MembershipApplied(applied) => {
            Command::MembershipApplied { voters: applied.voters, learners: applied.learners }
        }
        Op::MarkStateCheck(mark) => Command::MarkStateCheck {
            claim: mark.claim.map(|c| DigestClaim { index: c.index, broker: c.broker, digest: c.digest.to_vec() }),
        },
    })
}

pub fn publish_to_pb(publish: Publish) -> pb::PublishRequest {
    let (producer_id, producer_seq) = match publish.producer {
        Some(stamp) => (Some(stamp.id), Some(stamp.sequence)),
        None => (None, None),
    };
    pb::PublishRequest {
        topic: publish.topic,
        messages: publish.messages.into_iter().map(message_to_pb).collect(),
        producer_id,
        producer_seq,
    }
}

pub fn publish_from_pb(publish: pb::PublishRequest) -> Converted<Publish> {
    let producer = match (publish.producer_id, publish.producer_seq) {
        (Some(id), Some(sequence)) => Some(ProducerStamp { id, sequence }),
        (None, None) => None,
        _ => {
            return Err(ConvertError::HalfProducer);
        }
    };
    Ok(Publish {
        topic: publish.topic,
        producer,
        messages: publish.messages.into_iter().map(message_from_pb).collect(),
    })
}

fn message_to_pb(message: NewMessage) -> pb::Message {
    pb::Message {
        key: message.key,
        headers: message.headers.into_iter().map(|h| pb::Header { name: h.name, value: h.value }).collect(),
        payload: message.payload,
        not_before_ms: message.not_before_ms,
    }
}

fn message_from_pb(message: pb::Message) -> NewMessage {
    NewMessage {
        key: message.key,
        headers: message.headers.into_iter().map(|h| Header { name: h.name, value: h.value }).collect(),
        payload: message.payload,
        not_before_ms: message.not_before_ms,
    }
}

pub fn topic_config_to_pb(config: &TopicConfig) -> pb::TopicConfig {
    let retention = match config.retention {
        RetentionPolicy::Limits => pb::RetentionPolicy::Limits,
        RetentionPolicy::WorkQueue => pb::RetentionPolicy::WorkQueue,
    };
    pb::TopicConfig {
        retention: retention as i32,
        messages_max: config.messages_max,
        bytes_max: config.bytes_max,
        age_ms_max: config.age_ms_max,
        dedup_window_ms: Some(config.dedup_window_ms),
    }
}

/// Absent fields take the defaults; an unknown retention value reads as limits.
pub fn topic_config_from_pb(config: Option<pb::TopicConfig>) -> TopicConfig {
    let config = config.unwrap_or_default();
    let retention = match config.retention() {
        pb::RetentionPolicy::WorkQueue => RetentionPolicy::WorkQueue,
        pb::RetentionPolicy::Limits => RetentionPolicy::Limits,
    };
    TopicConfig {
        retention,
        messages_max: config.messages_max,
        bytes_max: config.bytes_max,
        age_ms_max: config.age_ms_max,
        dedup_window_ms: config.dedup_window_ms.unwrap_or(DEDUP_WINDOW_MS_DEFAULT),
    }
}

pub fn group_config_to_pb(config: &GroupConfig) -> pb::GroupConfig {
    let ordering = match config.ordering {
        KeyOrdering::Unordered => pb::KeyOrdering::Unordered,
        KeyOrdering::PerKey => pb::KeyOrdering::PerKey,
    };
    pb::GroupConfig {
        lease_ms_default: Some(config.lease_ms_default),
        deliveries_max: config.deliveries_max,
        dead_letter_topic: config.dead_letter_topic.clone(),
        start: Some(start_to_pb(config.start)),
        ordering: ordering as i32,
    }
}

/// Absent fields take the defaults; an unknown ordering value reads as unordered.
pub fn group_config_from_pb(config: Option<pb::GroupConfig>) -> GroupConfig {
    let config = config.unwrap_or_default();
    let ordering = match config.ordering() {
        pb::KeyOrdering::PerKey => KeyOrdering::PerKey,
        pb::KeyOrdering::Unordered => KeyOrdering::Unordered,
    };
    GroupConfig {
        lease_ms_default: config.lease_ms_default.unwrap_or(LEASE_MS_DEFAULT),
        deliveries_max: config.deliveries_max,
        dead_letter_topic: config.dead_letter_topic,
        start: start_from_pb(config.start),
        ordering,
    }
}

pub fn start_to_pb(start: StartPosition) -> pb::StartPosition {
    use pb::start_position::Position;
    let position = match start {
        StartPosition::Earliest => Position::Earliest(pb::Empty {}),
        StartPosition::Latest => Position::Latest(pb::Empty {}),
        StartPosition::Seq(seq) => Position::Seq(seq),
        StartPosition::TimeMs(time_ms) => Position::TimeMs(time_ms),
    };
    pb::StartPosition { position: Some(position) }
}

/// An absent start position means earliest.
pub fn start_from_pb(start: Option<pb::StartPosition>) -> StartPosition {
    use pb::start_position::Position;
    match start.and_then(|s| s.position) {
        None | Some(Position::Earliest(_)) => StartPosition::Earliest,
        Some(Position::Latest(_)) => StartPosition::Latest,
        Some(Position::Seq(seq)) => StartPosition::Seq(seq),
        Some(Position::TimeMs(time_ms)) => StartPosition::TimeMs(time_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use prost::Message;

    fn start() -> impl Strategy<Value = StartPosition> {
        prop_oneof![
            Just(StartPosition::Earliest),
            Just(StartPosition::Latest),
            any::<u64>().prop_map(StartPosition::Seq),
            any::<u64>().prop_map(StartPosition::TimeMs),
        ]
    }

    fn message() -> impl Strategy<Value = NewMessage> {
        (
            prop::option::of(prop::collection::vec(any::<u8>(), 0..4)),
            prop::collection::vec(("[a-z]{1,3}", prop::collection::vec(any::<u8>(), 0..3)), 0..3),
            prop::collection::vec(any::<u8>(), 0..16),
            prop::option::of(any::<u64>()),
        )
            .prop_map(|(key, headers, payload, not_before_ms)| NewMessage {
                key: key.map(Bytes::from),
                headers: headers.into_iter().map(|(name, value)| Header { name, value: Bytes::from(value) }).collect(),
                payload: Bytes::from(payload),
                not_before_ms,
            })
    }

    fn command() -> impl Strategy<Value = Command> {
        let name = "[a-z]{1,4}";
        let tokens = prop::collection::vec(any::<u64>(), 0..4);
        let topic_config = (
            any::<bool>(),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>()),
            any::<u64>(),
        )
            .prop_map(|(wq, messages_max, bytes_max, age_ms_max, dedup_window_ms)| TopicConfig {
                retention: if wq { RetentionPolicy::WorkQueue } else { RetentionPolicy::Limits },
                messages_max,
                bytes_max,
                age_ms_max,
                dedup_window_ms,
            })
            .boxed();
        let group_config = (any::<u64>(), any::<u32>(), prop::option::of(name), start(), any::<bool>())
            .prop_map(|(lease_ms_default, deliveries_max, dead_letter_topic, start, per_key)| GroupConfig {
                lease_ms_default,
                deliveries_max,
                dead_letter_topic,
                start,
                ordering: if per_key { KeyOrdering::PerKey } else { KeyOrdering::Unordered },
            })
            .boxed();
        let producer = prop::option::of((name, any::<u64>()).prop_map(|(id, sequence)| ProducerStamp { id, sequence }));
        prop_oneof![
            (name, topic_config.clone()).prop_map(|(name, config)| Command::CreateTopic { name, config }),
            name.prop_map(|name| Command::DeleteTopic { name }),
            (name, topic_config).prop_map(|(name, config)| Command::UpdateTopic { name, config }),
            (name, name, group_config.clone()).prop_map(|(topic, name, config)| Command::UpdateGroup {
                topic,
                name,
                config
            }),
            (name, name, start()).prop_map(|(topic, name, start)| Command::SeekSubscription { topic, name, start }),
            (name, any::<u32>()).prop_map(|(topic, count_max)| Command::Redrive { topic, count_max }),
            (name, producer, prop::collection::vec(message(), 0..3))
                .prop_map(|(topic, producer, messages)| Command::Publish(Publish { topic, producer, messages })),
            (name, name, group_config).prop_map(|(topic, name, config)| Command::CreateGroup { topic, name, config }),
            (name, name).prop_map(|(topic, name)| Command::DeleteGroup { topic, name }),
            (name, name, start()).prop_map(|(topic, name, start)| Command::CreateSubscription { topic, name, start }),
            (name, name).prop_map(|(topic, name)| Command::DeleteSubscription { topic, name }),
            (name, name, any::<u64>()).prop_map(|(topic, subscription, seq)| Command::Commit {
                topic,
                subscription,
                seq
            }),
            (name, name, name, any::<u32>(), prop::option::of(any::<u64>()), prop::option::of(any::<u64>())).prop_map(
                |(topic, group, consumer, count_max, lease_ms, bytes_max)| {
                    Command::Lease { topic, group, consumer, count_max, lease_ms, bytes_max }
                }
            ),
            (name, name, tokens.clone()).prop_map(|(topic, group, tokens)| Command::Ack { topic, group, tokens }),
            (name, name, tokens.clone(), any::<u64>()).prop_map(|(topic, group, tokens, delay_ms)| Command::Nack {
                topic,
                group,
                tokens,
                delay_ms
            }),
            (name, name, tokens, any::<u64>())
                .prop_map(|(topic, group, tokens, lease_ms)| { Command::Extend { topic, group, tokens, lease_ms } }),
            Just(Command::Pulse),
            (name, prop::option::of("[a-z$]{1,8}"), permissions(), quotas()).prop_map(
                |(name, password_hash, permissions, quotas)| {
                    Command::CreateUser(NewUser { name, password_hash, permissions, quotas })
                }
            ),
            (name, prop::option::of("[a-z$]{1,8}"), prop::option::of(permissions()), prop::option::of(quotas()))
                .prop_map(|(name, password_hash, permissions, quotas)| {
                    Command::UpdateUser(UserUpdate { name, password_hash, permissions, quotas })
                }),
            name.prop_map(|name| Command::DeleteUser { name }),
            (name, "[a-z$]{1,8}").prop_map(|(name, password_hash)| Command::BootstrapAdmin { name, password_hash }),
            (any::<u64>(), name, name).prop_map(|(id, peer_addr, client_addr)| {
                Command::RecordMembershipChange(MembershipChange::Add { id, peer_addr, client_addr })
            }),
            any::<u64>().prop_map(|id| Command::RecordMembershipChange(MembershipChange::Remove { id })),
            (prop::collection::vec(any::<u64>(), 0..4), prop::collection::vec(any::<u64>(), 0..3))
                .prop_map(|(voters, learners)| Command::MembershipApplied { voters, learners }),
            prop::option::of((any::<u64>(), any::<u64>(), prop::collection::vec(any::<u8>(), 0..33))).prop_map(
                |claim| Command::MarkStateCheck {
                    claim: claim.map(|(index, broker, digest)| DigestClaim { index, broker, digest })
                }
            ),
        ]
    }

    fn permissions() -> impl Strategy<Value = Vec<Permission>> {
        let action = prop::sample::select(Action::ALL.to_vec());
        let pattern = "[a-z]{1,3}(/[a-z]{1,2})?\\*?".prop_map(|p| Pattern::parse(&p).unwrap());
        prop::collection::vec((action, pattern).prop_map(|(a, p)| Permission::new(a, p)), 0..4)
    }

    fn quotas() -> impl Strategy<Value = Quotas> {
        let limit = || prop::option::of(any::<u64>());
        (limit(), limit(), prop::option::of(any::<u32>()), limit()).prop_map(
            |(topics_max, groups_max, connections_max, in_flight_bytes_max)| Quotas {
                topics_max,
                groups_max,
                connections_max,
                in_flight_bytes_max,
            },
        )
    }

    fn actor() -> impl Strategy<Value = Actor> {
        prop_oneof![Just(Actor::Broker), Just(Actor::Anonymous), "[a-z]{1,4}".prop_map(Actor::User)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// What the leader encodes is what every broker applies.
        #[test]
        fn entries_survive_the_log_encoding(time_ms in any::<u64>(), commands in prop::collection::vec((actor(), command()), 0..6)) {
            let submissions = commands.into_iter().map(|(actor, command)| Submission { actor, command }).collect();
            let entry = Entry { time_ms, submissions };
            let bytes = entry_to_pb(entry.clone()).encode_to_vec();
            let back = entry_from_pb(pb::Entry::decode(bytes.as_slice()).unwrap()).unwrap();
            prop_assert_eq!(back, entry);
        }
    }

    #[test]
    fn malformed_commands_are_errors() {
        assert!(command_from_pb(pb::Command { op: None, actor: None }).is_err());
        let kindless =
            pb::Command { op: Some(pb::command::Op::Pulse(pb::Empty {})), actor: Some(pb::Actor { kind: None }) };
        assert!(submission_from_pb(kindless).is_err());
        let unchecked = pb::Permission { action: pb::Action::Publish as i32, pattern: "a b".into() };
        assert!(permission_from_pb(unchecked).is_err(), "patterns are checked where they enter");
        let half_producer = pb::PublishRequest { producer_id: Some("p".into()), ..Default::default() };
        assert!(publish_from_pb(half_producer).is_err());
    }

    #[test]
    fn absent_configs_take_defaults() {
        assert_eq!(topic_config_from_pb(None), TopicConfig::default());
        assert_eq!(group_config_from_pb(None), GroupConfig::default());
    }
}
