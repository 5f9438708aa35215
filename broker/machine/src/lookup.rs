//! Lookups by name and by parent, over any read view of the store: what both the commands (through
//! `Ctx`) and the broker's queries need, below both.

use crate::keys;
use crate::limits::{GROUPS_PER_TOPIC_MAX, SUBSCRIPTIONS_PER_TOPIC_MAX};
use crate::records::{self, GroupRecord, SubRecord, TopicRecord, UserRecord};
use crate::store::{StoreError, StoreRead, Table, prefix_end};

type Read<T> = Result<T, StoreError>;

pub fn topic(store: &impl StoreRead, name: &str) -> Read<Option<TopicRecord>> {
    match records::load::<u64>(store, Table::TopicNames, name.as_bytes())? {
        Some(id) => records::load(store, Table::Topics, &keys::id(id)),
        None => Ok(None),
    }
}

pub fn group_of(store: &impl StoreRead, topic_id: u64, name: &str) -> Read<Option<GroupRecord>> {
    match records::load::<u64>(store, Table::GroupNames, &keys::child_name(topic_id, name))? {
        Some(id) => records::load(store, Table::Groups, &keys::id(id)),
        None => Ok(None),
    }
}

pub fn subscription_of(store: &impl StoreRead, topic_id: u64, name: &str) -> Read<Option<SubRecord>> {
    match records::load::<u64>(store, Table::SubNames, &keys::child_name(topic_id, name))? {
        Some(id) => records::load(store, Table::Subs, &keys::id(id)),
        None => Ok(None),
    }
}

pub fn user(store: &impl StoreRead, name: &str) -> Read<Option<UserRecord>> {
    records::load(store, Table::Users, name.as_bytes())
}

/// Ids of the topic's groups, in name order.
pub fn group_ids(store: &impl StoreRead, topic_id: u64) -> Read<Vec<u64>> {
    child_ids(store, Table::GroupNames, topic_id, GROUPS_PER_TOPIC_MAX)
}

/// Ids of the topic's durable subscriptions, in name order.
pub fn subscription_ids(store: &impl StoreRead, topic_id: u64) -> Read<Vec<u64>> {
    child_ids(store, Table::SubNames, topic_id, SUBSCRIPTIONS_PER_TOPIC_MAX)
}

/// The ids stored under (parent id, name) keys of `table`.
fn child_ids(store: &impl StoreRead, table: Table, parent_id: u64, limit: usize) -> Read<Vec<u64>> {
    let prefix = keys::id(parent_id);
    let end = prefix_end(&prefix);
    store.range(table, &prefix, end.as_deref(), limit)?.into_iter().map(|(_, value)| records::decode(&value)).collect()
}
