//! Read-only views of the machine's state, for the broker's reads (describe, list, deliver) and
//! for tests. Queries never write, so any broker can answer them from its applied state.

use crate::command::StartPosition;
use crate::keys;
use crate::limits::LIST_MAX;
use crate::records::{self, GroupRecord, MessageRecord, MetaRecord, SubRecord, TopicRecord, UserRecord};
use crate::store::{StoreError, StoreRead, Table, prefix_end};
use crate::{lookup, messages};

type Read<T> = Result<T, StoreError>;

pub use crate::lookup::{group_of, subscription_of, topic, user};

/// Topics in name order, starting after `after`, at most `LIST_MAX`.
pub fn topics(store: &impl StoreRead, after: &str, limit: usize) -> Read<Vec<TopicRecord>> {
    let mut start = after.as_bytes().to_vec();
    if !after.is_empty() {
        start.push(0);
    }
    let mut found = Vec::new();
    for (_, id) in store.range(Table::TopicNames, &start, None, limit.min(LIST_MAX))? {
        let id: u64 = records::decode(&id)?;
        found.extend(records::load::<TopicRecord>(store, Table::Topics, &keys::id(id))?);
    }
    Ok(found)
}

/// The topic's groups in name order.
pub fn groups(store: &impl StoreRead, topic_id: u64) -> Read<Vec<GroupRecord>> {
    let ids = lookup::group_ids(store, topic_id)?;
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        found.extend(records::load::<GroupRecord>(store, Table::Groups, &keys::id(id))?);
    }
    Ok(found)
}

/// The topic's durable subscriptions in name order.
pub fn subscriptions(store: &impl StoreRead, topic_id: u64) -> Read<Vec<SubRecord>> {
    let ids = lookup::subscription_ids(store, topic_id)?;
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        found.extend(records::load::<SubRecord>(store, Table::Subs, &keys::id(id))?);
    }
    Ok(found)
}

/// Messages of `topic` (as read from `store`) from `from_seq` on, in order, stopping at
/// `count_max` messages or once `bytes_max` is reached (at least one message is returned when
/// any is there).
pub fn read(
    store: &impl StoreRead,
    topic: &TopicRecord,
    from_seq: u64,
    count_max: usize,
    bytes_max: u64,
) -> Read<Vec<(u64, MessageRecord)>> {
    // A trimmed message may linger in its batch: start at the oldest retained one.
    let from_seq = from_seq.max(topic.first_seq);
    let mut found = Vec::new();
    let mut bytes = 0u64;
    for (seq, message) in messages::scan(store, topic.id, from_seq, count_max, count_max)? {
        bytes += message.size();
        if bytes > bytes_max && !found.is_empty() {
            break;
        }
        found.push((seq, message));
    }
    Ok(found)
}

/// The consumers holding leases in the group, in name order, with how many each holds: at most
/// `limit` of them.
pub fn lease_holders(store: &impl StoreRead, group_id: u64, limit: usize) -> Read<Vec<(String, u32)>> {
    let prefix = keys::id(group_id);
    let end = prefix_end(&prefix);
    let mut holders = Vec::new();
    for (key, value) in store.range(Table::Consumers, &prefix, end.as_deref(), limit)? {
        let name = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        let held: u32 = records::decode(&value)?;
        if held > 0 {
            holders.push((name, held));
        }
    }
    Ok(holders)
}

/// Fresh messages plus ready and waiting ones: what the group has yet to deliver.
pub fn group_backlog(topic: &TopicRecord, group: &GroupRecord) -> u64 {
    let fresh = (topic.last_seq + 1).saturating_sub(group.next_seq.max(topic.first_seq));
    fresh + group.counts.ready + group.counts.waiting
}

/// The sequence of the oldest message the group has not finished, if any: the least of its first
/// pending record (ready, waiting, or leased again), its oldest live lease, and the first message
/// it has never examined. A message's first lease has no pending record, and fresh leases are
/// granted in sequence order with growing tokens, so the live lease of least token is the oldest
/// of those.
pub fn oldest_unfinished(store: &impl StoreRead, topic: &TopicRecord, group: &GroupRecord) -> Read<Option<u64>> {
    let prefix = keys::id(group.id);
    let end = prefix_end(&prefix);
    let pending = match store.range(Table::Pending, &prefix, end.as_deref(), 1)?.first() {
        Some((key, _)) => Some(keys::parse_pair(key)?.1),
        None => None,
    };
    let leased = crate::leases::live(store, group.id, 1)?.first().map(|(_, seq)| *seq);
    let fresh = group.next_seq.max(topic.first_seq);
    let fresh = (fresh <= topic.last_seq).then_some(fresh);
    Ok(pending.into_iter().chain(leased).chain(fresh).min())
}

/// When the group's oldest unfinished message was published, if it has one still retained.
pub fn oldest_unfinished_time_ms(
    store: &impl StoreRead,
    topic: &TopicRecord,
    group: &GroupRecord,
) -> Read<Option<u64>> {
    let Some(seq) = oldest_unfinished(store, topic, group)? else { return Ok(None) };
    Ok(messages::get(store, topic, seq)?.map(|message| message.time_ms))
}

/// Messages the subscription has yet to commit.
pub fn subscription_lag(topic: &TopicRecord, sub: &SubRecord) -> u64 {
    lag(topic, sub.next_seq)
}

/// A cursor's lag: the retained messages at or after `next_seq`, those it has yet to read.
pub fn lag(topic: &TopicRecord, next_seq: u64) -> u64 {
    (topic.last_seq + 1).saturating_sub(next_seq.max(topic.first_seq))
}

/// The sequence a group or subscription created now at `start` reads first.
pub fn seq_at(store: &impl StoreRead, topic: &TopicRecord, start: StartPosition) -> Read<u64> {
    Ok(match start {
        StartPosition::Earliest => topic.first_seq,
        StartPosition::Latest => topic.last_seq + 1,
        StartPosition::Seq(seq) => seq.max(1),
        StartPosition::TimeMs(time_ms) => first_at_or_after(store, topic, time_ms)?,
    })
}

/// Binary search over retained messages, whose stamps never decrease with sequence.
fn first_at_or_after(store: &impl StoreRead, topic: &TopicRecord, time_ms: u64) -> Read<u64> {
    let (mut low, mut high) = (topic.first_seq, topic.last_seq + 1);
    while low < high {
        let mid = low + (high - low) / 2;
        let message = messages::get(store, topic, mid)?
            .ok_or_else(|| StoreError::new(format!("topic {} lost message {mid}", topic.id)))?;
        if message.time_ms < time_ms {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    Ok(low)
}

/// The live leases of a group as (token, seq), in token order.
pub fn leases(store: &impl StoreRead, group_id: u64, limit: usize) -> Read<Vec<(u64, u64)>> {
    crate::leases::live(store, group_id, limit)
}

/// Users in name order, starting after `after`, at most `LIST_MAX`.
pub fn users(store: &impl StoreRead, after: &str, limit: usize) -> Read<Vec<UserRecord>> {
    let mut start = after.as_bytes().to_vec();
    if !after.is_empty() {
        start.push(0);
    }
    let page = store.range(Table::Users, &start, None, limit.min(LIST_MAX))?;
    page.iter().map(|(_, value)| records::decode(value)).collect()
}

/// Whether any user exists: a cluster with none has yet to get its first admin.
pub fn has_users(store: &impl StoreRead) -> Read<bool> {
    Ok(!store.keys(Table::Users, &[], None, 1)?.is_empty())
}

/// The index and time of the last applied entry.
pub fn last_applied(store: &impl StoreRead) -> Read<(u64, u64)> {
    let meta: MetaRecord = records::load(store, Table::Meta, keys::META)?.unwrap_or_default();
    Ok((meta.last_log_index, meta.last_time_ms))
}

/// When the leader should next propose a pulse: the earliest lease deadline or age-out, or now if
/// deferred chores are waiting. `None` when nothing is due, ever, without new entries.
pub fn next_deadline(store: &impl StoreRead) -> Read<Option<u64>> {
    let first_u64 = |table| -> Read<Option<u64>> {
        match store.range(table, &[], None, 1)?.first() {
            Some((key, _)) => Ok(Some(keys::parse_time(key)?)),
            None => Ok(None),
        }
    };
    let chores_due = match store.range(Table::Chores, &[], None, 1)?.is_empty() {
        true => None,
        false => Some(last_applied(store)?.1),
    };
    let due = [first_u64(Table::Deadlines)?, first_u64(Table::AgeDeadlines)?, chores_due];
    Ok(due.into_iter().flatten().min())
}

/// Whether a lease on `group` could grant a message at `now_ms`, about how many, and when its
/// next delayed message becomes available. Lets a long-poll wait without proposing empty leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseHint {
    pub ready_now: bool,
    /// Messages never offered, plus one if a redelivery is due: an estimate, since keys and
    /// delays may hold some back, and more redeliveries may be due.
    pub ready_estimate: u64,
    pub next_available_ms: Option<u64>,
}

pub fn lease_hint(store: &impl StoreRead, topic: &TopicRecord, group: &GroupRecord, now_ms: u64) -> Read<LeaseHint> {
    let first_fresh = group.next_seq.max(topic.first_seq);
    let fresh = topic.last_seq >= first_fresh;
    let fresh_count = if fresh { topic.last_seq - first_fresh + 1 } else { 0 };
    let prefix = keys::id(group.id);
    let end = prefix_end(&prefix);
    let next_ready = match store.range(Table::Ready, &prefix, end.as_deref(), 1)?.first() {
        Some((key, _)) => Some(keys::parse_ready(key)?.1),
        None => None,
    };
    let redelivery_due = next_ready.is_some_and(|at| at <= now_ms);
    Ok(LeaseHint {
        ready_now: fresh || redelivery_due,
        ready_estimate: fresh_count + u64::from(redelivery_due),
        next_available_ms: next_ready.filter(|&at| at > now_ms),
    })
}
