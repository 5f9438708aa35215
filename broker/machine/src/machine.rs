//! [`Machine::apply`]: one entry in, one outcome per command out. Every command validates before
//! it writes, so a rejected command changes nothing; a storage failure aborts the whole entry.

use crate::access::Actor;
use crate::command::{Command, Entry, Submission};
use crate::ctx::{Ctx, Fail, Res};
use crate::keys;
use crate::outcome::{Outcome, Output};
use crate::records::{self, MetaRecord};
use crate::store::{Store, StoreError, Table};
use crate::{authorize, group, pulse, redrive, subscription, topic, users};

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
        let mut ctx = Ctx::new(&mut self.store, meta, now_ms, log_index);
        let mut outcomes = Vec::with_capacity(entry.submissions.len());
        for submission in &entry.submissions {
            if !ctx.continues_run(&submission.command) {
                ctx.end_run()?;
            }
            outcomes.push(execute(&mut ctx, submission)?);
        }
        ctx.end_run()?;
        ctx.meta.last_log_index = log_index;
        ctx.meta.last_time_ms = now_ms;
        let meta = records::encode(&ctx.meta)?;
        self.store.put(Table::Meta, keys::META, &meta)?;
        Ok(outcomes)
    }
}

/// Runs one submission within its entry: the actor's check, then the command. A rejection is the
/// command's outcome; a storage failure aborts the entry.
fn execute<S: Store>(ctx: &mut Ctx<'_, S>, submission: &Submission) -> Result<Outcome, StoreError> {
    let Submission { actor, command } = submission;
    match authorize::check(ctx, actor, command).and_then(|()| dispatch(ctx, actor, command)) {
        Ok(output) => Ok(Ok(output)),
        Err(Fail::Rejected(error)) => Ok(Err(error)),
        Err(Fail::Store(error)) => Err(error),
    }
}

/// The one match over commands.
fn dispatch<S: Store>(ctx: &mut Ctx<'_, S>, actor: &Actor, command: &Command) -> Res<Output> {
    match command {
        Command::CreateTopic { name, config } => topic::create(ctx, actor, name, config),
        Command::DeleteTopic { name } => topic::delete(ctx, name),
        Command::UpdateTopic { name, config } => topic::update(ctx, name, config),
        Command::Publish(publish) => topic::publish(ctx, publish),
        Command::CreateGroup { topic, name, config } => group::create(ctx, actor, topic, name, config),
        Command::DeleteGroup { topic, name } => group::delete(ctx, topic, name),
        Command::UpdateGroup { topic, name, config } => group::update(ctx, topic, name, config),
        Command::CreateSubscription { topic, name, start } => subscription::create(ctx, topic, name, *start),
        Command::DeleteSubscription { topic, name } => subscription::delete(ctx, topic, name),
        Command::Commit { topic, subscription, seq } => subscription::commit(ctx, topic, subscription, *seq),
        Command::SeekSubscription { topic, name, start } => subscription::seek(ctx, topic, name, *start),
        Command::Redrive { topic, count_max } => redrive::redrive(ctx, topic, *count_max),
        Command::Lease { topic, group, consumer, count_max, lease_ms, bytes_max } => {
            let holder = match actor {
                Actor::User(name) => Some(name.as_str()),
                Actor::Broker | Actor::Anonymous => None,
            };
            let wanted = group::Wanted { count_max: *count_max, lease_ms: *lease_ms, bytes_max: *bytes_max };
            group::lease(ctx, topic, group, consumer, holder, wanted)
        }
        Command::Ack { topic, group, tokens } => group::ack(ctx, topic, group, tokens),
        Command::Nack { topic, group, tokens, delay_ms } => group::nack(ctx, topic, group, tokens, *delay_ms),
        Command::Extend { topic, group, tokens, lease_ms } => group::extend(ctx, topic, group, tokens, *lease_ms),
        Command::Pulse => pulse::pulse(ctx),
        Command::CreateUser(new) => users::create(ctx, actor, new),
        Command::UpdateUser(update) => users::update(ctx, actor, update),
        Command::DeleteUser { name } => users::delete(ctx, actor, name),
        Command::BootstrapAdmin { name, password_hash } => users::bootstrap_admin(ctx, name, password_hash),
        Command::RecordMembershipChange(change) => users::record_membership_change(ctx, actor, change),
        Command::MembershipApplied { voters, learners } => users::membership_applied(ctx, voters, learners),
        Command::MarkStateCheck { .. } => Ok(Output::StateMarked { log_index: ctx.log_index }),
    }
}
