//! What an entry asks the machine to do. An [`Entry`] is one Raft log entry: the leader's time
//! stamp and a batch of commands, each with the actor that submitted it, applied in order.
//! Commands from many clients share an entry, which is how many publishes share one fsync.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::access::{Actor, Permission, Quotas};

/// One replicated log entry's payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// The leader's clock when it proposed the entry: the machine's only source of time.
    pub time_ms: u64,
    /// Applied in order; each yields one outcome.
    pub submissions: Vec<Submission>,
}

/// A command and who submitted it; the machine checks the one against the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub actor: Actor,
    pub command: Command,
}

impl Submission {
    pub fn new(actor: Actor, command: Command) -> Submission {
        Submission { actor, command }
    }

    /// A command of the broker's own, such as a pulse.
    pub fn broker(command: Command) -> Submission {
        Submission::new(Actor::Broker, command)
    }
}

/// One request to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Creates a topic; idempotent when the config is the same.
    CreateTopic { name: String, config: TopicConfig },
    /// Deletes a topic with its groups and subscriptions. Its messages are purged by pulses.
    DeleteTopic { name: String },
    /// Replaces a topic's limits (its retention policy stays); new limits trim at once.
    UpdateTopic { name: String, config: TopicConfig },
    /// Appends a batch of messages to a topic.
    Publish(Publish),
    /// Creates a work group on a topic; idempotent when the config is the same.
    CreateGroup { topic: String, name: String, config: GroupConfig },
    /// Deletes a work group and its leases.
    DeleteGroup { topic: String, name: String },
    /// Replaces a group's lease time, max deliveries and dead-letter topic (its start and
    /// ordering stay); leases already granted keep their deadlines.
    UpdateGroup { topic: String, name: String, config: GroupConfig },
    /// Creates a durable subscription; idempotent, an existing one keeps its cursor.
    CreateSubscription { topic: String, name: String, start: StartPosition },
    /// Deletes a durable subscription.
    DeleteSubscription { topic: String, name: String },
    /// Moves a subscription's cursor past `seq`. Lower than the cursor is ignored.
    Commit { topic: String, subscription: String, seq: u64 },
    /// Moves a subscription's cursor to `start`, back or forth, within the retained messages
    /// (and at most just past the last).
    SeekSubscription { topic: String, name: String, start: StartPosition },
    /// Moves up to `count_max` messages from the head of a dead-letter topic back to the topics
    /// they came from (their `chorus-origin-topic` header), with their key and their own headers,
    /// and deletes them from the dead-letter topic: all in this one command.
    Redrive { topic: String, count_max: u32 },
    /// Leases up to `count_max` available messages of a group to `consumer`.
    Lease {
        topic: String,
        group: String,
        consumer: String,
        count_max: u32,
        /// The group's default when `None`.
        lease_ms: Option<u64>,
        /// The granted messages' [`leased_bytes`](crate::group::leased_bytes) at most, but always
        /// one message: so the answer fits in a frame. `None`: no bound.
        bytes_max: Option<u64>,
    },
    /// Settles leased messages as done.
    Ack { topic: String, group: String, tokens: Vec<u64> },
    /// Gives leased messages back, available again after `delay_ms`.
    Nack { topic: String, group: String, tokens: Vec<u64>, delay_ms: u64 },
    /// Moves leases' deadlines to `lease_ms` after the entry's time.
    Extend { topic: String, group: String, tokens: Vec<u64>, lease_ms: u64 },
    /// Advances time: expires leases, ages out messages and does deferred chores.
    Pulse,
    /// Creates a user. Needs admin.
    CreateUser(NewUser),
    /// Changes what is given of a user; what is `None` stays. Needs admin, except a user changing
    /// only its own password.
    UpdateUser(UserUpdate),
    /// Deletes a user; the leases it holds end. Needs admin. The last admin cannot be deleted.
    DeleteUser { name: String },
    /// Creates the first admin when the cluster has no user at all; otherwise changes nothing.
    /// Only a broker proposes it, from its configuration.
    BootstrapAdmin { name: String, password_hash: String },
    /// Records, in the audit topic, a membership change about to be made. Needs admin: the
    /// broker makes the change only once this succeeded, so the check happens in log order.
    RecordMembershipChange(MembershipChange),
    /// Records a membership entry the log applied. Only a broker submits it.
    MembershipApplied { voters: Vec<u64>, learners: Vec<u64> },
    /// Marks the log position at which every broker takes a digest of its applied state, and may
    /// carry the digest a broker took at an earlier mark, for the others to compare with theirs.
    /// Changes nothing in the state. Needs admin.
    MarkStateCheck { claim: Option<DigestClaim> },
}

/// The digest one broker took of its state at a marked log index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestClaim {
    pub index: u64,
    pub broker: u64,
    pub digest: Vec<u8>,
}

/// A user as created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub name: String,
    /// An argon2 PHC string hashed by the broker that took the request; `None` for a user who
    /// authenticates by client certificate only.
    pub password_hash: Option<String>,
    pub permissions: Vec<Permission>,
    pub quotas: Quotas,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserUpdate {
    pub name: String,
    pub password_hash: Option<String>,
    pub permissions: Option<Vec<Permission>>,
    pub quotas: Option<Quotas>,
}

/// A change to the cluster's brokers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    Add { id: u64, peer_addr: String, client_addr: String },
    Remove { id: u64 },
}

/// A batch of messages for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    /// Makes the publish idempotent within the topic's dedup window.
    pub producer: Option<ProducerStamp>,
    pub messages: Vec<NewMessage>,
}

/// An idempotent producer's identity and its sequence number for one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerStamp {
    pub id: String,
    pub sequence: u64,
}

/// A message as a producer sends it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewMessage {
    pub key: Option<Bytes>,
    pub headers: Vec<Header>,
    pub payload: Bytes,
    /// Work groups do not lease the message before this time. Subscribers see it at once.
    pub not_before_ms: Option<u64>,
}

/// A message header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: Bytes,
}

/// How a topic lets go of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RetentionPolicy {
    /// Messages live until a limit trims them, whoever has consumed them.
    #[default]
    Limits,
    /// Limits apply, and a message is also deleted once every work group has acked it and every
    /// durable subscription has moved past it.
    WorkQueue,
}

/// A topic's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub retention: RetentionPolicy,
    pub messages_max: Option<u64>,
    pub bytes_max: Option<u64>,
    pub age_ms_max: Option<u64>,
    /// How long a (producer id, sequence) pair is remembered.
    pub dedup_window_ms: u64,
}

impl TopicConfig {
    /// What differs from `asked`, field by field: `max_messages 5 here, 10 asked; ...`.
    pub fn differences(&self, asked: &TopicConfig) -> String {
        differing(&[
            ("retention", format!("{:?}", self.retention), format!("{:?}", asked.retention)),
            ("max_messages", shown(self.messages_max), shown(asked.messages_max)),
            ("max_bytes", shown(self.bytes_max), shown(asked.bytes_max)),
            ("max_age_ms", shown(self.age_ms_max), shown(asked.age_ms_max)),
            ("dedup_window_ms", self.dedup_window_ms.to_string(), asked.dedup_window_ms.to_string()),
        ])
    }
}

impl GroupConfig {
    /// What differs from `asked`, field by field.
    pub fn differences(&self, asked: &GroupConfig) -> String {
        differing(&[
            ("lease_ms", self.lease_ms_default.to_string(), asked.lease_ms_default.to_string()),
            ("max_deliveries", self.deliveries_max.to_string(), asked.deliveries_max.to_string()),
            ("dead_letter", shown(self.dead_letter_topic.as_ref()), shown(asked.dead_letter_topic.as_ref())),
            ("start", format!("{:?}", self.start), format!("{:?}", asked.start)),
            ("ordering", format!("{:?}", self.ordering), format!("{:?}", asked.ordering)),
        ])
    }
}

fn shown<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "none".to_owned(), |value| value.to_string())
}

/// `name HERE here, ASKED asked` for each field whose two values differ, joined by `; `.
fn differing(fields: &[(&str, String, String)]) -> String {
    let differ = fields.iter().filter(|(_, here, asked)| here != asked);
    differ.map(|(name, here, asked)| format!("{name} {here} here, {asked} asked")).collect::<Vec<_>>().join("; ")
}

impl Default for TopicConfig {
    fn default() -> TopicConfig {
        TopicConfig {
            retention: RetentionPolicy::Limits,
            messages_max: None,
            bytes_max: None,
            age_ms_max: None,
            dedup_window_ms: crate::limits::DEDUP_WINDOW_MS_DEFAULT,
        }
    }
}

/// Where a new group or subscription starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum StartPosition {
    /// The oldest retained message.
    #[default]
    Earliest,
    /// Only messages published after creation.
    Latest,
    /// This topic sequence.
    Seq(u64),
    /// The first message stamped at or after this time.
    TimeMs(u64),
}

/// Whether a work group keeps per-key order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum KeyOrdering {
    /// Any available message may be leased.
    #[default]
    Unordered,
    /// At most one message per key is out at a time, in topic order; other keys are not blocked.
    PerKey,
}

/// A work group's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    pub lease_ms_default: u64,
    /// Deliveries after which a message leaves the group; 0 means no limit.
    pub deliveries_max: u32,
    pub dead_letter_topic: Option<String>,
    pub start: StartPosition,
    pub ordering: KeyOrdering,
}

impl Default for GroupConfig {
    fn default() -> GroupConfig {
        GroupConfig {
            lease_ms_default: crate::limits::LEASE_MS_DEFAULT,
            deliveries_max: 0,
            dead_letter_topic: None,
            start: StartPosition::Earliest,
            ordering: KeyOrdering::Unordered,
        }
    }
}
