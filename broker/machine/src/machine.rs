//! [`Machine::apply`]: one entry in, one outcome per command out. Every command validates before
//! it writes, so a rejected command changes nothing; a storage failure aborts the whole entry.

use std::collections::BTreeMap;

use serde::{Serialize, de::DeserializeOwned};

use crate::access::Actor;
use crate::command::{Command, Entry, Submission};
use crate::keys;
use crate::outcome::{MachineError, Outcome, Output};
use crate::records::{self, GroupRecord, MetaRecord, TopicRecord, UserRecord};
use crate::store::{Store, StoreError, StoreRead, Table};
use crate::{authorize, group, pulse, subscription, topic, users};

/// The replicated state machine over a store.
#[derive(Debug)]
pub struct Machine<S> {
    store: S,
}

impl<S> Machine<S> {
    /// A machine over `store`, which may be empty or hold a previous state.
    pub fn new(store: S) -> Machine<S> {
        Machine { store }
    }

    /// The store, for queries.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Gives the store back, for instance to commit a transaction.
    pub fn into_store(self) -> S {
        self.store
    }
}

impl<S: Store> Machine<S> {
    /// Applies the entry at `log_index`. Indexes must increase from one call to the next.
    pub fn apply(&mut self, log_index: u64, entry: &Entry) -> Result<Vec<Outcome>, StoreError> {
        let meta: MetaRecord = records::load(&self.store, Table::Meta, keys::META)?.unwrap_or_default();
        assert!(log_index > meta.last_log_index, "entry {log_index} applied after entry {}", meta.last_log_index);
        // A new leader's clock may lag its predecessor's stamps: time never goes back.
        let now_ms = entry.time_ms.max(meta.last_time_ms);
        let mut ctx = Ctx { store: &mut self.store, meta, now_ms, log_index, batch_pos: 0, users: BTreeMap::new() };
        let mut outcomes = Vec::with_capacity(entry.submissions.len());
        for submission in &entry.submissions {
            outcomes.push(ctx.execute(submission)?);
        }
        ctx.meta.last_log_index = log_index;
        ctx.meta.last_time_ms = now_ms;
        let meta = records::encode(&ctx.meta)?;
        self.store.put(Table::Meta, keys::META, &meta)?;
        Ok(outcomes)
    }
}

/// Why a command stopped: a deterministic rejection, or a storage failure that aborts the entry.
#[derive(Debug)]
pub(crate) enum Fail {
    Store(StoreError),
    Rejected(MachineError),
}

impl From<StoreError> for Fail {
    fn from(error: StoreError) -> Fail {
        Fail::Store(error)
    }
}

impl From<MachineError> for Fail {
    fn from(error: MachineError) -> Fail {
        Fail::Rejected(error)
    }
}

pub(crate) type Res<T> = Result<T, Fail>;

/// Everything one entry's commands share while they apply.
pub(crate) struct Ctx<'s, S> {
    pub(crate) store: &'s mut S,
    pub(crate) meta: MetaRecord,
    /// The entry's time, never less than any earlier entry's.
    pub(crate) now_ms: u64,
    pub(crate) log_index: u64,
    /// The next batch position among messages this entry publishes.
    pub(crate) batch_pos: u32,
    /// Users read or written by this entry so far: an entry's commands mostly share a few actors.
    users: BTreeMap<String, Option<UserRecord>>,
}

impl<S: Store> Ctx<'_, S> {
    fn execute(&mut self, submission: &Submission) -> Result<Outcome, StoreError> {
        let Submission { actor, command } = submission;
        let result = authorize::check(self, actor, command).and_then(|()| self.dispatch(actor, command));
        match result {
            Ok(output) => Ok(Ok(output)),
            Err(Fail::Rejected(error)) => Ok(Err(error)),
            Err(Fail::Store(error)) => Err(error),
        }
    }

    fn dispatch(&mut self, actor: &Actor, command: &Command) -> Res<Output> {
        match command {
            Command::CreateTopic { name, config } => topic::create(self, actor, name, config),
            Command::DeleteTopic { name } => topic::delete(self, name),
            Command::Publish(publish) => topic::publish(self, publish),
            Command::CreateGroup { topic, name, config } => group::create(self, actor, topic, name, config),
            Command::DeleteGroup { topic, name } => group::delete(self, topic, name),
            Command::CreateSubscription { topic, name, start } => subscription::create(self, topic, name, *start),
            Command::DeleteSubscription { topic, name } => subscription::delete(self, topic, name),
            Command::Commit { topic, subscription, seq } => subscription::commit(self, topic, subscription, *seq),
            Command::Lease { topic, group, consumer, count_max, lease_ms } => {
                let holder = match actor {
                    Actor::User(name) => Some(name.as_str()),
                    Actor::Broker | Actor::Anonymous => None,
                };
                group::lease(self, topic, group, consumer, holder, *count_max, *lease_ms)
            }
            Command::Ack { topic, group, tokens } => group::ack(self, topic, group, tokens),
            Command::Nack { topic, group, tokens, delay_ms } => group::nack(self, topic, group, tokens, *delay_ms),
            Command::Extend { topic, group, tokens, lease_ms } => group::extend(self, topic, group, tokens, *lease_ms),
            Command::Pulse => pulse::pulse(self),
            Command::CreateUser(new) => users::create(self, actor, new),
            Command::UpdateUser(update) => users::update(self, actor, update),
            Command::DeleteUser { name } => users::delete(self, actor, name),
            Command::BootstrapAdmin { name, password_hash } => users::bootstrap_admin(self, name, password_hash),
            Command::RecordMembershipChange(change) => users::record_membership_change(self, actor, change),
            Command::MembershipApplied { voters, learners } => users::membership_applied(self, voters, learners),
        }
    }

    /// The user named `name`, read once per entry.
    pub(crate) fn user(&mut self, name: &str) -> Res<Option<UserRecord>> {
        if let Some(cached) = self.users.get(name) {
            return Ok(cached.clone());
        }
        let user: Option<UserRecord> = self.load(Table::Users, name.as_bytes())?;
        self.users.insert(name.to_owned(), user.clone());
        Ok(user)
    }

    pub(crate) fn save_user(&mut self, user: &UserRecord) -> Res<()> {
        self.save(Table::Users, user.name.as_bytes(), user)?;
        self.users.insert(user.name.clone(), Some(user.clone()));
        Ok(())
    }

    pub(crate) fn remove_user(&mut self, name: &str) -> Res<()> {
        self.remove(Table::Users, name.as_bytes())?;
        self.users.insert(name.to_owned(), None);
        Ok(())
    }

    pub(crate) fn load<T: DeserializeOwned>(&self, table: Table, key: &[u8]) -> Res<Option<T>> {
        Ok(records::load(&*self.store, table, key)?)
    }

    pub(crate) fn save<T: Serialize>(&mut self, table: Table, key: &[u8], record: &T) -> Res<()> {
        let bytes = records::encode(record)?;
        Ok(self.store.put(table, key, &bytes)?)
    }

    /// Puts a key whose presence is the information.
    pub(crate) fn mark(&mut self, table: Table, key: &[u8]) -> Res<()> {
        Ok(self.store.put(table, key, &[])?)
    }

    pub(crate) fn remove(&mut self, table: Table, key: &[u8]) -> Res<()> {
        Ok(self.store.delete(table, key)?)
    }

    pub(crate) fn range(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Res<Vec<crate::store::KeyValue>> {
        Ok(self.store.range(table, start, end, limit)?)
    }

    pub(crate) fn keys(&self, table: Table, start: &[u8], end: Option<&[u8]>, limit: usize) -> Res<Vec<Vec<u8>>> {
        Ok(self.store.keys(table, start, end, limit)?)
    }

    pub(crate) fn topic(&self, name: &str) -> Res<TopicRecord> {
        crate::query::topic(&*self.store, name)?
            .ok_or_else(|| Fail::Rejected(MachineError::UnknownTopic(name.to_owned())))
    }

    pub(crate) fn topic_by_id(&self, topic_id: u64) -> Res<Option<TopicRecord>> {
        self.load(Table::Topics, &keys::id(topic_id))
    }

    pub(crate) fn save_topic(&mut self, topic: &TopicRecord) -> Res<()> {
        self.save(Table::Topics, &keys::id(topic.id), topic)
    }

    pub(crate) fn group(&self, topic: &TopicRecord, name: &str) -> Res<GroupRecord> {
        crate::query::group_of(&*self.store, topic.id, name)?
            .ok_or_else(|| Fail::Rejected(MachineError::UnknownGroup(name.to_owned())))
    }

    pub(crate) fn save_group(&mut self, group: &GroupRecord) -> Res<()> {
        self.save(Table::Groups, &keys::id(group.id), group)
    }
}

/// Reads a store for code shared by queries and commands.
pub(crate) fn read_ids(
    store: &impl StoreRead,
    table: Table,
    prefix: &[u8],
    limit: usize,
) -> Result<Vec<u64>, StoreError> {
    let end = crate::store::prefix_end(prefix);
    store
        .range(table, prefix, end.as_deref(), limit)?
        .into_iter()
        .map(|(_, value)| records::decode::<u64>(&value))
        .collect()
}
