//! What one entry's commands share while they apply (`Ctx`), and how a command stops (`Fail`):
//! below every operation, above the store.

use std::collections::BTreeMap;

use serde::{Serialize, de::DeserializeOwned};

use crate::command::Command;
use crate::keys;
use crate::lookup;
use crate::messages::{self, BatchRecord};
use crate::outcome::MachineError;
use crate::records::{self, GroupRecord, MetaRecord, TopicRecord, UserRecord};
use crate::store::{Store, StoreError, Table};

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

/// Publishes to one topic that follow each other within an entry. Their messages are one batch
/// record, stored with the topic when the run ends ([`Ctx::end_run`]): a run of one-message
/// publishes costs one insert of each, not one per publish. Until then the run's topic is newer
/// than the store's, and only a publish to it runs.
#[derive(Debug)]
pub(crate) struct PublishRun {
    pub(crate) topic: TopicRecord,
    pub(crate) batch: BatchRecord,
}

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
    /// The publishes not stored yet.
    pub(crate) run: Option<PublishRun>,
}

impl<'s, S: Store> Ctx<'s, S> {
    /// The context of the entry at `log_index`, whose time is `now_ms`.
    pub(crate) fn new(store: &'s mut S, meta: MetaRecord, now_ms: u64, log_index: u64) -> Ctx<'s, S> {
        Ctx { store, meta, now_ms, log_index, batch_pos: 0, users: BTreeMap::new(), run: None }
    }

    /// The user named `name`, read once per entry.
    pub(crate) fn user(&mut self, name: &str) -> Res<Option<&UserRecord>> {
        if !self.users.contains_key(name) {
            let user: Option<UserRecord> = records::load(&*self.store, Table::Users, name.as_bytes())?;
            self.users.insert(name.to_owned(), user);
        }
        Ok(self.users.get(name).and_then(Option::as_ref))
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
        lookup::topic(&*self.store, name)?.ok_or_else(|| Fail::Rejected(MachineError::UnknownTopic(name.to_owned())))
    }

    /// The topic a publish to `name` appends to: the open run's, if it is that topic's.
    pub(crate) fn publishing_topic(&self, name: &str) -> Res<TopicRecord> {
        match &self.run {
            Some(run) if run.topic.name == name => Ok(run.topic.clone()),
            _ => self.topic(name),
        }
    }

    /// Whether `command` may run while the open run stays open: a publish to its topic.
    pub(crate) fn continues_run(&self, command: &Command) -> bool {
        match (&self.run, command) {
            (Some(run), Command::Publish(publish)) => publish.topic == run.topic.name,
            (Some(_), _) => false,
            (None, _) => true,
        }
    }

    /// Stores the open run's batch and topic, and returns the topic.
    pub(crate) fn end_run(&mut self) -> Result<Option<TopicRecord>, StoreError> {
        let Some(run) = self.run.take() else { return Ok(None) };
        assert_eq!(run.batch.last_seq(), run.topic.last_seq, "a run's batch ends where its topic does");
        messages::put(&mut *self.store, run.topic.id, &run.batch)?;
        self.store.put(Table::Topics, &keys::id(run.topic.id), &records::encode(&run.topic)?)?;
        Ok(Some(run.topic))
    }

    pub(crate) fn topic_by_id(&self, topic_id: u64) -> Res<Option<TopicRecord>> {
        self.load(Table::Topics, &keys::id(topic_id))
    }

    pub(crate) fn save_topic(&mut self, topic: &TopicRecord) -> Res<()> {
        self.save(Table::Topics, &keys::id(topic.id), topic)
    }

    pub(crate) fn group(&self, topic: &TopicRecord, name: &str) -> Res<GroupRecord> {
        lookup::group_of(&*self.store, topic.id, name)?
            .ok_or_else(|| Fail::Rejected(MachineError::UnknownGroup(name.to_owned())))
    }

    pub(crate) fn save_group(&mut self, group: &GroupRecord) -> Res<()> {
        self.save(Table::Groups, &keys::id(group.id), group)
    }
}
