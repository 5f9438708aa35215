//! What the machine stores under each key: plain structs, postcard-encoded. Postcard is
//! deterministic, so equal states have equal bytes and snapshots compare bytewise.

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::access::{Permission, Quotas};
use crate::command::{GroupConfig, Header, TopicConfig};
use crate::store::StoreError;

pub(crate) fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(record).map_err(StoreError::new)
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(StoreError::new)
}

/// Machine-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MetaRecord {
    pub last_log_index: u64,
    pub last_time_ms: u64,
    pub next_topic_id: u64,
    pub next_group_id: u64,
    pub next_sub_id: u64,
    pub topics: u64,
    pub next_user_id: u64,
    pub users: u64,
    /// Users holding the admin permission: the last one cannot be removed.
    pub admins: u64,
}

/// A topic and the bounds of its retained messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub id: u64,
    pub name: String,
    pub config: TopicConfig,
    pub created_ms: u64,
    /// The oldest retained sequence; equals `last_seq + 1` when the topic is empty.
    pub first_seq: u64,
    /// The newest sequence ever assigned; 0 before the first publish.
    pub last_seq: u64,
    /// Bytes retained: payloads, keys and headers.
    pub bytes: u64,
    pub groups: u32,
    pub subscriptions: u32,
    /// When the oldest message ages out, if the topic has an age limit and a message.
    pub age_deadline_ms: Option<u64>,
}

impl TopicRecord {
    /// Messages retained.
    pub fn messages(&self) -> u64 {
        self.last_seq + 1 - self.first_seq
    }
}

/// A message as readers see it; the message table stores it inside its publish's batch
/// (`messages::BatchRecord`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// The Raft index of the entry that published it.
    pub log_index: u64,
    /// Its position among the messages that entry published: with `log_index`, a total order
    /// across all topics.
    pub batch_pos: u32,
    pub time_ms: u64,
    pub not_before_ms: Option<u64>,
    pub key: Option<Bytes>,
    pub headers: Vec<Header>,
    pub payload: Bytes,
}

impl MessageRecord {
    /// The bytes this message counts against a topic's `bytes_max`.
    pub fn size(&self) -> u64 {
        message_size(&self.payload, self.key.as_ref(), &self.headers)
    }
}

/// The bytes a message counts against a topic's `bytes_max`: payload, key and headers.
pub(crate) fn message_size(payload: &Bytes, key: Option<&Bytes>, headers: &[Header]) -> u64 {
    let headers: usize = headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    (payload.len() + key.map_or(0, Bytes::len) + headers) as u64
}

/// What a (producer id, sequence) pair published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DedupRecord {
    pub first_seq: u64,
    pub count: u32,
    pub log_index: u64,
    pub batch_pos: u32,
    pub expire_ms: u64,
}

/// The last batch a topic stored from one producer, for its order (`topic::in_producer_order`).
/// It outlives the dedup records: it expires [`crate::limits::PRODUCER_IDLE_MS_MAX`] after the
/// producer's last batch, or at the end of the dedup window if that is later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProducerHead {
    pub last_sequence: u64,
    pub expire_ms: u64,
}

/// Running totals of a work group. `leased + ready + waiting` are the pending messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCounts {
    pub leased: u64,
    /// Pending and not leased: redeliveries, nacked, or delayed by `not_before`.
    pub ready: u64,
    /// Pending behind another message of the same key.
    pub waiting: u64,
    pub delivered_total: u64,
    pub acked_total: u64,
    pub nacked_total: u64,
    pub expired_total: u64,
    pub dead_lettered_total: u64,
    /// Left the group past `deliveries_max` with no dead-letter topic to go to.
    pub dropped_total: u64,
    /// Trimmed by retention before the group was done with them.
    pub trimmed_total: u64,
}

/// A work group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: u64,
    pub topic_id: u64,
    pub name: String,
    pub config: GroupConfig,
    /// Messages from here on have never been examined by this group.
    pub next_seq: u64,
    /// The next fencing token; tokens only grow.
    pub next_token: u64,
    pub counts: GroupCounts,
}

/// A message a group has examined but not finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingRecord {
    /// Grants so far, including the current lease.
    pub deliveries: u32,
    /// Kept so a per-key group can release the key without reading the message.
    pub key: Option<Bytes>,
    pub state: PendingState,
}

impl PendingRecord {
    /// The lease deadline, if the message is leased under `token`: the one test of whether a
    /// token is still the message's lease.
    pub fn deadline_under(&self, token: u64) -> Option<u64> {
        match self.state {
            PendingState::Leased { token: live, deadline_ms } if live == token => Some(deadline_ms),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PendingState {
    /// Leased under `token`, which its lease command's [`LeaseBatchRecord`] maps back to the seq.
    Leased {
        token: u64,
        deadline_ms: u64,
    },
    Ready {
        available_ms: u64,
    },
    WaitingKey,
}

/// The grants of one lease command: tokens `first_token..first_token + seqs.len()`, in order.
/// A token finds its message here. Whether it is still live is said in one of two places:
/// - **fresh** slots (bit `token - first_token` of `fresh`): a message's first delivery, without a
///   key, not extended since. The batch alone holds such a lease, with `fresh_deadline_ms` as its
///   deadline, and the message has no pending record until the lease ends other than by an ack.
///   This is the common case, and it makes a task's lease and ack cost no pending-record writes.
/// - every other slot: the message's pending record, live while it is leased under the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseBatchRecord {
    pub first_token: u64,
    pub consumer: String,
    /// The user whose lease command it was, when the broker authenticates clients: a revocation
    /// that takes the group away from the user ends the batch's leases.
    pub holder: Option<String>,
    /// The message leased under each token.
    pub seqs: Vec<u64>,
    /// Tokens not yet settled or expired; the batch goes when this reaches 0.
    pub live: u32,
    /// Where the batch sits in the deadlines index: no later than the deadline of any live token.
    pub deadline_ms: u64,
    /// One bit per slot: set while the slot is a live fresh lease.
    pub fresh: Vec<u64>,
    /// The deadline of every fresh lease of the batch: their lease command's.
    pub fresh_deadline_ms: u64,
}

impl LeaseBatchRecord {
    pub fn last_token(&self) -> u64 {
        self.first_token + self.seqs.len() as u64 - 1
    }

    /// The message leased under `token`, if this batch issued it.
    pub fn seq_of(&self, token: u64) -> Option<u64> {
        self.seqs.get(self.slot(token)?).copied()
    }

    /// Each token with its message.
    pub fn slots(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (self.first_token..).zip(self.seqs.iter().copied())
    }

    /// Whether `token` is a live fresh lease of this batch.
    pub fn is_fresh(&self, token: u64) -> bool {
        self.slot(token).is_some_and(|slot| self.fresh.get(slot / 64).is_some_and(|word| word >> (slot % 64) & 1 == 1))
    }

    /// Ends the fresh lease `token`: its state moves to a pending record, or it is done.
    pub fn clear_fresh(&mut self, token: u64) {
        assert!(self.is_fresh(token), "token {token} is not a fresh lease of {self:?}");
        let slot = self.slot(token).expect("a fresh token is the batch's");
        self.fresh[slot / 64] &= !(1 << (slot % 64));
    }

    /// Live fresh leases.
    pub fn fresh_count(&self) -> u32 {
        self.fresh.iter().map(|word| word.count_ones()).sum()
    }

    /// The lowest message under a live fresh lease. Fresh grants take messages in topic order,
    /// so this is the first fresh slot's.
    pub fn first_fresh_seq(&self) -> Option<u64> {
        let (index, word) = self.fresh.iter().enumerate().find(|(_, word)| **word != 0)?;
        self.seqs.get(index * 64 + word.trailing_zeros() as usize).copied()
    }

    fn slot(&self, token: u64) -> Option<usize> {
        let slot = usize::try_from(token.checked_sub(self.first_token)?).ok()?;
        (slot < self.seqs.len()).then_some(slot)
    }
}

/// The bits of a [`LeaseBatchRecord::fresh`] set where `flags` is true.
pub(crate) fn fresh_bits(flags: &[bool]) -> Vec<u64> {
    let mut bits = vec![0u64; flags.len().div_ceil(64)];
    for (slot, _) in flags.iter().enumerate().filter(|(_, fresh)| **fresh) {
        bits[slot / 64] |= 1 << (slot % 64);
    }
    bits
}

/// A durable subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubRecord {
    pub id: u64,
    pub topic_id: u64,
    pub name: String,
    /// The next sequence to deliver; everything before it is committed.
    pub next_seq: u64,
    pub created_ms: u64,
}

/// A user: how it authenticates and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: u64,
    pub name: String,
    /// An argon2 hash in the PHC string format, made by the broker that took the request; `None`
    /// for a user who authenticates by client certificate only.
    pub password_hash: Option<String>,
    pub permissions: Vec<Permission>,
    pub quotas: Quotas,
    pub created_ms: u64,
    /// Topics this user created that still exist: counted against `quotas.topics_max`.
    pub topics_owned: u64,
    /// Work groups this user created that still exist.
    pub groups_owned: u64,
}

/// Reads and decodes the record under `key`.
pub(crate) fn load<T: DeserializeOwned>(
    store: &impl crate::store::StoreRead,
    table: crate::store::Table,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    store.get(table, key)?.map(|bytes| decode(&bytes)).transpose()
}
