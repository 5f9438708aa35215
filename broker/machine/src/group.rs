//! Work groups: competing consumers over a topic. A message a group has examined but not finished
//! is exactly one of leased, ready (available again, maybe later) or waiting for its key. Its
//! pending record says which, except under a fresh lease (a first delivery without a key, not
//! extended), which its lease batch alone holds. Leases carry fencing tokens that only grow; only a
//! live token settles: one its batch or its message's pending record still holds, before its
//! deadline. `leases` maps tokens to messages.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::access::Actor;
use crate::chore::Chore;
use crate::command::{GroupConfig, Header, KeyOrdering, NewMessage};
use crate::ctx::{Ctx, Fail, Res};
use crate::keys;
use crate::leases::{self, Indexed, Touched};
use crate::limits::{GROUPS_PER_TOPIC_MAX, LEASE_SCAN_MAX, LEASES_PER_CONSUMER_MAX, NACK_DELAY_MS_MAX};
use crate::outcome::{Grant, Leased, MachineError, Output};
use crate::owners::{self, Owned};
use crate::records::{
    GroupCounts, GroupRecord, LeaseBatchRecord, MessageRecord, PendingRecord, PendingState, TopicRecord, fresh_bits,
};
use crate::store::{Store, StoreError, Table, prefix_end};
use crate::{messages, redrive};
use crate::{query, retention, topic, validate};

/// Messages read from a topic per storage scan while leasing.
const LEASE_PAGE_MAX: usize = 64;

/// Creates the group; a user who creates one owns it, within its quota.
pub(crate) fn create<S: Store>(
    ctx: &mut Ctx<'_, S>,
    actor: &Actor,
    topic_name: &str,
    name: &str,
    config: &GroupConfig,
) -> Res<Output> {
    validate::name("group", name)?;
    validate::group_config(config)?;
    let mut topic = ctx.topic(topic_name)?;
    if let Some(dead_letter) = &config.dead_letter_topic {
        if dead_letter == topic_name {
            return Err(MachineError::InvalidArgument("a group cannot dead-letter into its own topic".into()).into());
        }
        ctx.topic(dead_letter)?;
    }
    if let Some(existing) = query::group_of(&*ctx.store, topic.id, name)? {
        if existing.config != *config {
            let differences = existing.config.differences(config);
            let why = format!(
                "group {name:?} on topic {topic_name:?} already exists with another configuration: {differences}"
            );
            return Err(MachineError::Conflict(why).into());
        }
        return Ok(Output::GroupCreated { group_id: existing.id, created: false, next_seq: existing.next_seq });
    }
    if topic.groups as usize >= GROUPS_PER_TOPIC_MAX {
        return Err(MachineError::LimitReached(format!("at most {GROUPS_PER_TOPIC_MAX} groups per topic")).into());
    }
    owners::check_quota(ctx, actor, Owned::Group)?;
    let next_seq = query::seq_at(&*ctx.store, &topic, config.start)?;
    ctx.meta.next_group_id += 1;
    let group = GroupRecord {
        id: ctx.meta.next_group_id,
        topic_id: topic.id,
        name: name.to_owned(),
        config: config.clone(),
        next_seq,
        next_token: 1,
        counts: GroupCounts::default(),
    };
    ctx.save(Table::GroupNames, &keys::child_name(topic.id, name), &group.id)?;
    ctx.save_group(&group)?;
    owners::take(ctx, actor, Owned::Group, group.id)?;
    topic.groups += 1;
    ctx.save_topic(&topic)?;
    Ok(Output::GroupCreated { group_id: group.id, created: true, next_seq })
}

/// Replaces the group's lease time, max deliveries and dead-letter topic. Its start and ordering
/// cannot change: they shaped what it has delivered.
pub(crate) fn update<S: Store>(
    ctx: &mut Ctx<'_, S>,
    topic_name: &str,
    name: &str,
    config: &GroupConfig,
) -> Res<Output> {
    validate::group_config(config)?;
    let topic = ctx.topic(topic_name)?;
    let mut group = ctx.group(&topic, name)?;
    if config.ordering != group.config.ordering {
        let why = format!("group {name:?}'s key ordering cannot change; create another group for it");
        return Err(MachineError::InvalidArgument(why).into());
    }
    if let Some(dead_letter) = &config.dead_letter_topic {
        if dead_letter == topic_name {
            return Err(MachineError::InvalidArgument("a group cannot dead-letter into its own topic".into()).into());
        }
        ctx.topic(dead_letter)?;
    }
    group.config = GroupConfig { start: group.config.start, ..config.clone() };
    ctx.save_group(&group)?;
    Ok(Output::GroupUpdated)
}

/// Deletes the group now; its pending records and leases are purged by pulses.
pub(crate) fn delete<S: Store>(ctx: &mut Ctx<'_, S>, topic_name: &str, name: &str) -> Res<Output> {
    let mut topic = ctx.topic(topic_name)?;
    let group = ctx.group(&topic, name)?;
    owners::disown(ctx, Owned::Group, group.id)?;
    ctx.remove(Table::GroupNames, &keys::child_name(topic.id, name))?;
    ctx.remove(Table::Groups, &keys::id(group.id))?;
    ctx.mark(Table::Chores, &Chore::PurgeGroup.key(group.id))?;
    topic.groups -= 1;
    ctx.save_topic(&topic)?;
    retention::after_consume(ctx, topic)?;
    Ok(Output::GroupDeleted)
}

/// What a lease command asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted {
    pub count_max: u32,
    pub lease_ms: Option<u64>,
    pub bytes_max: Option<u64>,
}

/// What a granted message counts against a lease's `bytes_max`: its stored size and a bound on
/// what its `LeasedMessage` adds around it when encoded (fields, lengths, tags).
pub fn leased_bytes(message: &MessageRecord) -> u64 {
    const FIXED_BYTES: u64 = 96;
    const PER_HEADER_BYTES: u64 = 8;
    message.size() + FIXED_BYTES + PER_HEADER_BYTES * message.headers.len() as u64
}

/// Leases for `consumer`; `holder` is the user submitting it, when clients authenticate.
pub(crate) fn lease<S: Store>(
    ctx: &mut Ctx<'_, S>,
    topic_name: &str,
    group_name: &str,
    consumer: &str,
    holder: Option<&str>,
    wanted: Wanted,
) -> Res<Output> {
    let Wanted { count_max, lease_ms, bytes_max } = wanted;
    validate::lease(consumer, count_max, lease_ms)?;
    let topic = ctx.topic(topic_name)?;
    let mut group = ctx.group(&topic, group_name)?;
    let lease_ms = lease_ms.unwrap_or(group.config.lease_ms_default);
    validate::lease_ms(lease_ms)?;
    let consumer_key = keys::child_name(group.id, consumer);
    let held: u32 = ctx.load(Table::Consumers, &consumer_key)?.unwrap_or(0);
    if held >= LEASES_PER_CONSUMER_MAX {
        return Err(MachineError::LimitReached(format!(
            "consumer {consumer:?} holds {held} leases, at most {LEASES_PER_CONSUMER_MAX}"
        ))
        .into());
    }
    let mut lessor = Lessor {
        want: count_max.min(LEASES_PER_CONSUMER_MAX - held) as usize,
        bytes_left: bytes_max.unwrap_or(u64::MAX),
        lease_ms,
        grants: Vec::new(),
        fresh: Vec::new(),
        examined: 0,
    };
    lessor.lease_ready(ctx, &topic, &mut group)?;
    lessor.lease_fresh(ctx, &topic, &mut group)?;
    if let Some(first) = lessor.grants.first() {
        assert!(lessor.grants.iter().all(|grant| grant.deadline_ms == first.deadline_ms), "one deadline per lease");
        let batch = LeaseBatchRecord {
            first_token: first.token,
            consumer: consumer.to_owned(),
            holder: holder.map(str::to_owned),
            seqs: lessor.grants.iter().map(|grant| grant.seq).collect(),
            live: lessor.grants.len() as u32,
            deadline_ms: first.deadline_ms,
            fresh: fresh_bits(&lessor.fresh),
            fresh_deadline_ms: first.deadline_ms,
        };
        leases::open(ctx, group.id, &batch)?;
        ctx.save(Table::Consumers, &consumer_key, &(held + batch.live))?;
    }
    ctx.save_group(&group)?;
    let next_available_ms = next_ready(ctx, group.id)?;
    Ok(Output::Leased(Leased { grants: lessor.grants, next_available_ms }))
}

/// Whether a message about to be leased has a pending record stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    Yes,
    No,
}

/// One lease command in progress.
struct Lessor {
    want: usize,
    /// What the grants may still add up to in [`leased_bytes`]; the first grant ignores it.
    bytes_left: u64,
    lease_ms: u64,
    grants: Vec<Grant>,
    /// Per grant: whether it is a fresh lease, held by the batch alone.
    fresh: Vec<bool>,
    /// Messages looked at, granted or not: bounds the command's work.
    examined: usize,
}

impl Lessor {
    fn wants_more(&self) -> bool {
        let room = self.grants.is_empty() || self.bytes_left > 0;
        self.grants.len() < self.want && self.examined < LEASE_SCAN_MAX && room
    }

    /// Whether `message` fits in what is left of the byte budget: the first grant always does.
    fn fits(&self, message: &MessageRecord) -> bool {
        self.grants.is_empty() || leased_bytes(message) <= self.bytes_left
    }

    /// Grants pending messages whose time has come: redeliveries first, by availability.
    fn lease_ready<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, topic: &TopicRecord, group: &mut GroupRecord) -> Res<()> {
        let start = keys::ready(group.id, 0, 0);
        let end = keys::ready(group.id, ctx.now_ms.saturating_add(1), 0);
        while self.wants_more() {
            let due = ctx.range(Table::Ready, &start, Some(&end), self.want - self.grants.len())?;
            if due.is_empty() {
                break;
            }
            for (key, _) in due {
                let (_, _, seq) = keys::parse_ready(&key)?;
                let message = messages::get(&*ctx.store, topic, seq)?;
                if message.as_ref().is_some_and(|message| !self.fits(message)) {
                    self.bytes_left = 0;
                    return Ok(());
                }
                self.examined += 1;
                ctx.remove(Table::Ready, &key)?;
                group.counts.ready -= 1;
                let pending = load_pending(ctx, group.id, seq)?;
                assert!(matches!(pending.state, PendingState::Ready { .. }), "ready index points at {pending:?}");
                let Some(message) = message else {
                    group.counts.trimmed_total += 1;
                    finish(ctx, group, seq, &pending)?;
                    continue;
                };
                match message.not_before_ms.filter(|&at| at > ctx.now_ms) {
                    Some(at) => make_ready(ctx, group, seq, pending, at)?,
                    None => self.grant(ctx, group, seq, message, pending, Recorded::Yes)?,
                }
            }
        }
        Ok(())
    }

    /// Examines never-seen messages in topic order, granting those that are free to go.
    fn lease_fresh<S: Store>(&mut self, ctx: &mut Ctx<'_, S>, topic: &TopicRecord, group: &mut GroupRecord) -> Res<()> {
        if group.next_seq < topic.first_seq {
            group.counts.trimmed_total += topic.first_seq - group.next_seq;
            group.next_seq = topic.first_seq;
        }
        while self.wants_more() && group.next_seq <= topic.last_seq {
            let count_max = LEASE_SCAN_MAX - self.examined;
            let page = messages::scan(&*ctx.store, topic.id, group.next_seq, count_max, LEASE_PAGE_MAX)?;
            if page.is_empty() {
                return Err(StoreError::new(format!("topic {} lost message {}", topic.id, group.next_seq)).into());
            }
            for (seq, message) in page {
                if !self.wants_more() {
                    break;
                }
                if !self.fits(&message) {
                    self.bytes_left = 0;
                    break;
                }
                assert_eq!(seq, group.next_seq, "topic {} has a gap before {seq}", topic.id);
                group.next_seq = seq + 1;
                self.examined += 1;
                self.examine(ctx, group, seq, message)?;
            }
        }
        Ok(())
    }

    fn examine<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        group: &mut GroupRecord,
        seq: u64,
        message: MessageRecord,
    ) -> Res<()> {
        let key = match group.config.ordering {
            KeyOrdering::PerKey => message.key.clone(),
            KeyOrdering::Unordered => None,
        };
        let pending = PendingRecord { deliveries: 0, key, state: PendingState::WaitingKey };
        if let Some(key) = &pending.key {
            let lock = keys::key_lock(group.id, key);
            if ctx.load::<u64>(Table::KeyLocks, &lock)?.is_some() {
                ctx.mark(Table::KeyWaits, &keys::key_wait(group.id, key, seq))?;
                ctx.save(Table::Pending, &keys::pair(group.id, seq), &pending)?;
                group.counts.waiting += 1;
                return Ok(());
            }
            ctx.save(Table::KeyLocks, &lock, &seq)?;
        }
        match message.not_before_ms.filter(|&at| at > ctx.now_ms) {
            Some(at) => make_ready(ctx, group, seq, pending, at),
            None => self.grant(ctx, group, seq, message, pending, Recorded::No),
        }
    }

    /// Leases `seq` under the group's next token. A first delivery without a key and without a
    /// pending record yet is a fresh lease: its batch holds it, and it writes no pending record.
    fn grant<S: Store>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        group: &mut GroupRecord,
        seq: u64,
        message: MessageRecord,
        mut pending: PendingRecord,
        recorded: Recorded,
    ) -> Res<()> {
        let token = group.next_token;
        group.next_token += 1;
        let deadline_ms = ctx.now_ms.saturating_add(self.lease_ms);
        let fresh = recorded == Recorded::No && pending.deliveries == 0 && pending.key.is_none();
        pending.deliveries += 1;
        pending.state = PendingState::Leased { token, deadline_ms };
        if !fresh {
            ctx.save(Table::Pending, &keys::pair(group.id, seq), &pending)?;
        }
        group.counts.leased += 1;
        group.counts.delivered_total += 1;
        self.bytes_left = self.bytes_left.saturating_sub(leased_bytes(&message));
        self.grants.push(Grant { seq, token, deadline_ms, delivery_count: pending.deliveries, message });
        self.fresh.push(fresh);
        Ok(())
    }
}

pub(crate) fn ack<S: Store>(ctx: &mut Ctx<'_, S>, topic_name: &str, group_name: &str, tokens: &[u64]) -> Res<Output> {
    settle_all(ctx, topic_name, group_name, tokens, |ctx, group, lease| {
        if !lease.fresh {
            finish(ctx, group, lease.seq, &lease.pending)?;
        }
        group.counts.acked_total += 1;
        Ok(())
    })
}

pub(crate) fn nack<S: Store>(
    ctx: &mut Ctx<'_, S>,
    topic_name: &str,
    group_name: &str,
    tokens: &[u64],
    delay_ms: u64,
) -> Res<Output> {
    if delay_ms > NACK_DELAY_MS_MAX {
        return Err(MachineError::InvalidArgument(format!("nack delay is at most {NACK_DELAY_MS_MAX} ms")).into());
    }
    let available_ms = ctx.now_ms.saturating_add(delay_ms);
    settle_all(ctx, topic_name, group_name, tokens, |ctx, group, lease| {
        group.counts.nacked_total += 1;
        requeue(ctx, group, lease.seq, lease.pending, available_ms, "nacked")
    })
}

/// Ends each token's live lease and hands it to `then` (an ack's or a nack's part), then writes
/// what they touched once: batches, consumers' counts, the group, and the topic's retention.
fn settle_all<S: Store>(
    ctx: &mut Ctx<'_, S>,
    topic_name: &str,
    group_name: &str,
    tokens: &[u64],
    mut then: impl FnMut(&mut Ctx<'_, S>, &mut GroupRecord, LiveLease) -> Res<()>,
) -> Res<Output> {
    validate::tokens(tokens)?;
    let topic = ctx.topic(topic_name)?;
    let mut group = ctx.group(&topic, group_name)?;
    let (mut touched, mut holds) = (Touched::new(group.id), Holds::default());
    let results = per_token(tokens, |token| {
        let lease = settle(ctx, &mut group, &mut touched, &mut holds, token)?;
        then(ctx, &mut group, lease)
    })?;
    touched.store(ctx)?;
    holds.release(ctx, group.id)?;
    ctx.save_group(&group)?;
    retention::after_consume(ctx, topic)?;
    Ok(Output::Settled(results))
}

pub(crate) fn extend<S: Store>(
    ctx: &mut Ctx<'_, S>,
    topic_name: &str,
    group_name: &str,
    tokens: &[u64],
    lease_ms: u64,
) -> Res<Output> {
    validate::tokens(tokens)?;
    validate::lease_ms(lease_ms)?;
    let topic = ctx.topic(topic_name)?;
    let group = ctx.group(&topic, group_name)?;
    let deadline_ms = ctx.now_ms.saturating_add(lease_ms);
    let mut touched = Touched::new(group.id);
    let results = per_token(tokens, |token| {
        let (mut lease, batch) = live_lease(ctx, &group, &mut touched, token)?;
        let PendingState::Leased { deadline_ms: old_ms, .. } = &mut lease.pending.state else {
            unreachable!("live_lease returns leased records");
        };
        *old_ms = deadline_ms;
        // An extended fresh lease gets its own deadline, so it moves to a pending record.
        if lease.fresh {
            batch.clear_fresh(token);
        }
        // The batch's deadlines entry may stay earlier than its live deadlines, never later.
        batch.deadline_ms = batch.deadline_ms.min(deadline_ms);
        ctx.save(Table::Pending, &keys::pair(group.id, lease.seq), &lease.pending)?;
        Ok(deadline_ms)
    })?;
    touched.store(ctx)?;
    Ok(Output::Extended(results))
}

/// What a pulse did to one lease batch.
#[derive(Debug)]
pub(crate) struct BatchExpiry {
    /// Tokens looked at, live or not: bounds the pulse's work.
    pub examined: usize,
    pub expired: u64,
}

/// Why a pulse ends leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Their deadline passed.
    Expired,
    /// Their holder may no longer consume from the group: every live lease of the batch ends.
    Revoked,
}

impl Ending {
    fn due(self, deadline_ms: u64, now_ms: u64) -> bool {
        self == Ending::Revoked || deadline_ms <= now_ms
    }

    /// The `chorus-dead-reason` of a message dead-lettered by it.
    fn reason(self) -> &'static str {
        match self {
            Ending::Expired => "expired",
            Ending::Revoked => "revoked",
        }
    }
}

/// Expires the live leases of the batch ending at `last_token` whose deadline has passed, then
/// files the batch under its earliest live deadline, or drops it. Called by pulses.
pub(crate) fn expire_batch<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group: &mut GroupRecord,
    last_token: u64,
) -> Res<BatchExpiry> {
    let batch: LeaseBatchRecord = ctx
        .load(Table::Leases, &keys::pair(group.id, last_token))?
        .ok_or_else(|| StoreError::new(format!("group {} lost lease batch {last_token}", group.id)))?;
    end_batch(ctx, group, batch, Ending::Expired)
}

/// Ends every live lease of the batch ending at `last_token`, for a revocation. Their messages
/// are ready again at once (or dead-lettered past `deliveries_max`), and count as expired.
pub(crate) fn revoke_batch<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group: &mut GroupRecord,
    last_token: u64,
) -> Res<BatchExpiry> {
    match ctx.load::<LeaseBatchRecord>(Table::Leases, &keys::pair(group.id, last_token))? {
        Some(batch) => end_batch(ctx, group, batch, Ending::Revoked),
        None => Ok(BatchExpiry { examined: 0, expired: 0 }),
    }
}

fn end_batch<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group: &mut GroupRecord,
    mut batch: LeaseBatchRecord,
    ending: Ending,
) -> Res<BatchExpiry> {
    let last_token = batch.last_token();
    let indexed = Indexed::of(&batch);
    let (now_ms, mut holds) = (ctx.now_ms, Holds::default());
    let mut expiry = BatchExpiry { examined: batch.seqs.len(), expired: 0 };
    let (mut live_left, mut earliest_ms) = (0u32, None::<u64>);
    for (token, seq) in batch.slots().collect::<Vec<_>>() {
        let fresh = batch.is_fresh(token);
        let Some(pending) = slot_record(ctx, group.id, &batch, token, seq)? else {
            continue;
        };
        match pending.deadline_under(token) {
            None => {}
            Some(deadline_ms) if !ending.due(deadline_ms, now_ms) => {
                live_left += 1;
                earliest_ms = Some(earliest_ms.map_or(deadline_ms, |at: u64| at.min(deadline_ms)));
            }
            Some(_) => {
                if fresh {
                    batch.clear_fresh(token);
                }
                end_lease(group, &mut batch, &mut holds);
                group.counts.expired_total += 1;
                expiry.expired += 1;
                requeue(ctx, group, seq, pending, now_ms, ending.reason())?;
            }
        }
    }
    assert_eq!(batch.live, live_left, "lease batch {last_token} of group {} miscounts", group.id);
    if let Some(earliest_ms) = earliest_ms {
        batch.deadline_ms = earliest_ms;
    }
    leases::store(ctx, group.id, &batch, indexed)?;
    holds.release(ctx, group.id)?;
    Ok(expiry)
}

/// Runs `settle` for each token; a rejected token does not stop the others.
fn per_token<T>(tokens: &[u64], mut settle: impl FnMut(u64) -> Res<T>) -> Res<Vec<Result<T, MachineError>>> {
    let mut results = Vec::with_capacity(tokens.len());
    for &token in tokens {
        match settle(token) {
            Ok(value) => results.push(Ok(value)),
            Err(Fail::Rejected(error)) => results.push(Err(error)),
            Err(Fail::Store(error)) => return Err(Fail::Store(error)),
        }
    }
    Ok(results)
}

/// A lease found live by [`live_lease`].
#[derive(Debug)]
struct LiveLease {
    seq: u64,
    /// The message's pending record; for a fresh lease, the one it would have.
    pending: PendingRecord,
    /// Held by its batch alone: there is no pending record.
    fresh: bool,
}

/// The pending record that says whether `token` of `batch`, which leased `seq`, is live: the
/// one a fresh lease stands for, or else the message's stored one.
fn slot_record<S: Store>(
    ctx: &Ctx<'_, S>,
    group_id: u64,
    batch: &LeaseBatchRecord,
    token: u64,
    seq: u64,
) -> Res<Option<PendingRecord>> {
    if batch.is_fresh(token) {
        let state = PendingState::Leased { token, deadline_ms: batch.fresh_deadline_ms };
        return Ok(Some(PendingRecord { deliveries: 1, key: None, state }));
    }
    ctx.load(Table::Pending, &keys::pair(group_id, seq))
}

/// The message leased under `token` and its batch, if that lease is live at this entry's time.
fn live_lease<'t, S: Store>(
    ctx: &Ctx<'_, S>,
    group: &GroupRecord,
    touched: &'t mut Touched,
    token: u64,
) -> Res<(LiveLease, &'t mut LeaseBatchRecord)> {
    let stale = || Fail::Rejected(MachineError::StaleLease(token));
    let batch = touched.find(ctx, token)?.ok_or_else(stale)?;
    let seq = batch.seq_of(token).ok_or_else(stale)?;
    let fresh = batch.is_fresh(token);
    match slot_record(ctx, group.id, batch, token, seq)? {
        Some(pending) if pending.deadline_under(token).is_some_and(|deadline_ms| deadline_ms > ctx.now_ms) => {
            Ok((LiveLease { seq, pending, fresh }, batch))
        }
        _ => Err(stale()),
    }
}

/// Ends the live lease `token` for an ack or nack; the caller moves its message on.
fn settle<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group: &mut GroupRecord,
    touched: &mut Touched,
    holds: &mut Holds,
    token: u64,
) -> Res<LiveLease> {
    let (lease, batch) = live_lease(ctx, group, touched, token)?;
    if lease.fresh {
        batch.clear_fresh(token);
    }
    end_lease(group, batch, holds);
    Ok(lease)
}

fn load_pending<S: Store>(ctx: &Ctx<'_, S>, group_id: u64, seq: u64) -> Res<PendingRecord> {
    ctx.load(Table::Pending, &keys::pair(group_id, seq))?
        .ok_or_else(|| StoreError::new(format!("group {group_id} lost pending message {seq}")).into())
}

/// Counts a live lease of `batch` as ended; its consumer's count goes to `holds`. The caller moves
/// the message's pending record on.
fn end_lease(group: &mut GroupRecord, batch: &mut LeaseBatchRecord, holds: &mut Holds) {
    assert!(batch.live > 0, "ending a lease of a batch with none live: {batch:?}");
    batch.live -= 1;
    *holds.0.entry(batch.consumer.clone()).or_default() += 1;
    group.counts.leased -= 1;
}

/// Leases ended per consumer during one command, written to the consumers table once at its end
/// rather than once per lease.
#[derive(Debug, Default)]
struct Holds(BTreeMap<String, u32>);

impl Holds {
    fn release<S: Store>(self, ctx: &mut Ctx<'_, S>, group_id: u64) -> Res<()> {
        for (consumer, ended) in self.0 {
            let consumer_key = keys::child_name(group_id, &consumer);
            let held: u32 = ctx.load(Table::Consumers, &consumer_key)?.unwrap_or(0);
            assert!(held >= ended, "consumer {consumer:?} ends {ended} leases but holds {held}");
            if held == ended {
                ctx.remove(Table::Consumers, &consumer_key)?;
            } else {
                ctx.save(Table::Consumers, &consumer_key, &(held - ended))?;
            }
        }
        Ok(())
    }
}

/// Makes a message available again at `available_ms`, or dead-letters it past max deliveries.
fn requeue<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group: &mut GroupRecord,
    seq: u64,
    pending: PendingRecord,
    available_ms: u64,
    reason: &str,
) -> Res<()> {
    let deliveries_max = group.config.deliveries_max;
    if deliveries_max > 0 && pending.deliveries >= deliveries_max {
        return dead_letter(ctx, group, seq, &pending, reason);
    }
    make_ready(ctx, group, seq, pending, available_ms)
}

fn make_ready<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group: &mut GroupRecord,
    seq: u64,
    mut pending: PendingRecord,
    available_ms: u64,
) -> Res<()> {
    pending.state = PendingState::Ready { available_ms };
    ctx.save(Table::Pending, &keys::pair(group.id, seq), &pending)?;
    ctx.mark(Table::Ready, &keys::ready(group.id, available_ms, seq))?;
    group.counts.ready += 1;
    Ok(())
}

/// The message leaves the group: forwarded to the dead-letter topic when it has one, else dropped.
fn dead_letter<S: Store>(
    ctx: &mut Ctx<'_, S>,
    group: &mut GroupRecord,
    seq: u64,
    pending: &PendingRecord,
    reason: &str,
) -> Res<()> {
    finish(ctx, group, seq, pending)?;
    let origin = ctx.topic_by_id(group.topic_id)?;
    let message = match &origin {
        Some(origin) => messages::get(&*ctx.store, origin, seq)?,
        None => None,
    };
    let Some(message) = message else {
        group.counts.trimmed_total += 1;
        return Ok(());
    };
    let origin = origin.map(|t| t.name).unwrap_or_default();
    let target = match &group.config.dead_letter_topic {
        Some(name) => query::topic(&*ctx.store, name)?,
        None => None,
    };
    let Some(mut target) = target else {
        group.counts.dropped_total += 1;
        return Ok(());
    };
    let mut headers = message.headers;
    let values = [origin, seq.to_string(), group.name.clone(), reason.to_owned(), pending.deliveries.to_string()];
    for (name, value) in redrive::HEADERS.into_iter().zip(values) {
        headers.push(Header { name: name.to_owned(), value: Bytes::from(value) });
    }
    let forwarded = NewMessage { key: message.key, headers, payload: message.payload, not_before_ms: None };
    topic::append(ctx, &mut target, &[forwarded])?;
    retention::trim(ctx, &mut target, None)?;
    ctx.save_topic(&target)?;
    group.counts.dead_lettered_total += 1;
    Ok(())
}

/// The group is done with the message: its pending record goes, and its key passes on.
fn finish<S: Store>(ctx: &mut Ctx<'_, S>, group: &mut GroupRecord, seq: u64, pending: &PendingRecord) -> Res<()> {
    ctx.remove(Table::Pending, &keys::pair(group.id, seq))?;
    let Some(key) = &pending.key else {
        return Ok(());
    };
    let lock = keys::key_lock(group.id, key);
    let holder: Option<u64> = ctx.load(Table::KeyLocks, &lock)?;
    assert_eq!(holder, Some(seq), "message {seq} finished without holding its key");
    let prefix = keys::key_wait_prefix(group.id, key);
    let end = prefix_end(&prefix);
    let Some((wait_key, _)) = ctx.range(Table::KeyWaits, &prefix, end.as_deref(), 1)?.pop() else {
        return ctx.remove(Table::KeyLocks, &lock);
    };
    let (_, _, next) = keys::parse_key_wait(&wait_key)?;
    ctx.remove(Table::KeyWaits, &wait_key)?;
    ctx.save(Table::KeyLocks, &lock, &next)?;
    let waiting = load_pending(ctx, group.id, next)?;
    assert!(matches!(waiting.state, PendingState::WaitingKey), "key waiter {next} is {waiting:?}");
    group.counts.waiting -= 1;
    let now_ms = ctx.now_ms;
    make_ready(ctx, group, next, waiting, now_ms)
}

/// When the group's earliest ready message becomes available, if any.
fn next_ready<S: Store>(ctx: &Ctx<'_, S>, group_id: u64) -> Res<Option<u64>> {
    let prefix = keys::id(group_id);
    let end = prefix_end(&prefix);
    match ctx.range(Table::Ready, &prefix, end.as_deref(), 1)?.first() {
        Some((key, _)) => Ok(Some(keys::parse_ready(key)?.1)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, RetentionPolicy, StartPosition, TopicConfig};
    use crate::limits::LEASE_COUNT_MAX;
    use crate::testkit::{Harness, message, payloads};

    fn harness(config: GroupConfig) -> Harness {
        let mut h = Harness::new();
        h.create_topic("t", TopicConfig::default());
        h.create_topic("dlq", TopicConfig::default());
        h.create_group("t", "g", config);
        h
    }

    /// A message trimmed while it waits for redelivery is counted as trimmed, not granted, even
    /// though its batch still holds it.
    #[test]
    fn a_trimmed_message_is_not_redelivered_from_its_batch() {
        let mut h = Harness::new();
        h.create_topic("t", TopicConfig { messages_max: Some(3), ..TopicConfig::default() });
        h.create_group("t", "g", GroupConfig::default());
        h.publish("t", &["a", "b", "c"]);
        let first = h.lease("t", "g", "w1", 1, 5_000);
        assert_eq!(payloads(&first.grants), ["a"]);
        assert_eq!(h.nack("t", "g", &[first.grants[0].token], 0), [Ok(())]);
        h.publish("t", &["d"]);
        assert_eq!(h.topic("t").first_seq, 2, "a is trimmed; its batch still holds b and c");
        let next = h.lease("t", "g", "w1", 10, 5_000);
        assert_eq!(payloads(&next.grants), ["b", "c", "d"]);
        assert_eq!(h.group("t", "g").counts.trimmed_total, 1);
    }

    #[test]
    fn leases_grant_oldest_first_with_growing_tokens() {
        let mut h = harness(GroupConfig::default());
        h.publish("t", &["a", "b", "c"]);
        let first = h.lease("t", "g", "w1", 2, 5_000);
        assert_eq!(payloads(&first.grants), ["a", "b"]);
        assert_eq!(first.grants.iter().map(|g| g.token).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(first.grants[0].deadline_ms, h.now_ms + 5_000);
        assert_eq!(first.grants[0].delivery_count, 1);
        let second = h.lease("t", "g", "w2", 10, 5_000);
        assert_eq!(payloads(&second.grants), ["c"]);
        assert_eq!(second.grants[0].token, 3);
        assert!(h.lease("t", "g", "w2", 10, 5_000).grants.is_empty());
        assert_eq!(h.group("t", "g").counts.leased, 3);
    }

    /// The hint counts messages never offered, plus one for due redeliveries, and names when a
    /// delayed redelivery comes due.
    #[test]
    fn the_oldest_unfinished_message_is_the_first_pending_or_else_the_first_fresh() {
        let mut h = harness(GroupConfig::default());
        let oldest = |h: &Harness| {
            let (topic, group) = (h.topic("t"), h.group("t", "g"));
            let seq = query::oldest_unfinished(h.machine.store(), &topic, &group).unwrap();
            (seq, query::oldest_unfinished_time_ms(h.machine.store(), &topic, &group).unwrap())
        };
        assert_eq!(oldest(&h), (None, None));
        let published_ms = h.now_ms;
        h.publish("t", &["a", "b"]);
        h.advance(500);
        h.publish("t", &["c"]);
        assert_eq!(oldest(&h), (Some(1), Some(published_ms)), "nothing examined yet");
        let leased = h.lease("t", "g", "w1", 2, 5_000);
        assert_eq!(oldest(&h), (Some(1), Some(published_ms)), "a is leased, not finished");
        assert_eq!(h.ack("t", "g", &[leased.grants[0].token]), [Ok(())]);
        assert_eq!(oldest(&h).0, Some(2), "b is still leased");
        assert_eq!(h.ack("t", "g", &[leased.grants[1].token]), [Ok(())]);
        assert_eq!(oldest(&h), (Some(3), Some(published_ms + 500)), "c was never examined");
        let last = h.lease("t", "g", "w1", 1, 5_000);
        assert_eq!(h.ack("t", "g", &[last.grants[0].token]), [Ok(())]);
        assert_eq!(oldest(&h), (None, None));
    }

    #[test]
    fn the_lease_hint_estimates_what_is_ready() {
        let mut h = harness(GroupConfig::default());
        let hint =
            |h: &Harness| query::lease_hint(h.machine.store(), &h.topic("t"), &h.group("t", "g"), h.now_ms).unwrap();
        assert_eq!((hint(&h).ready_now, hint(&h).ready_estimate), (false, 0));
        h.publish("t", &["a", "b", "c"]);
        assert_eq!((hint(&h).ready_now, hint(&h).ready_estimate), (true, 3));
        let leased = h.lease("t", "g", "w1", 3, 5_000);
        assert_eq!(hint(&h).ready_estimate, 0);
        assert_eq!(h.nack("t", "g", &[leased.grants[0].token], 1_000), [Ok(())]);
        assert_eq!(hint(&h).next_available_ms, Some(h.now_ms + 1_000));
        assert!(!hint(&h).ready_now);
        h.advance(1_000);
        assert_eq!((hint(&h).ready_now, hint(&h).ready_estimate), (true, 1));
    }

    #[test]
    fn acks_settle_once_and_stale_tokens_are_refused() {
        let mut h = harness(GroupConfig::default());
        h.publish("t", &["a"]);
        let token = h.lease("t", "g", "w", 1, 5_000).grants[0].token;
        assert_eq!(
            h.ack("t", "g", &[token, token, 999]),
            vec![Ok(()), Err(MachineError::StaleLease(token)), Err(MachineError::StaleLease(999))]
        );
        assert!(h.lease("t", "g", "w", 1, 5_000).grants.is_empty(), "an acked message is never leased again");
        let counts = h.group("t", "g").counts;
        assert_eq!((counts.leased, counts.acked_total), (0, 1));
    }

    #[test]
    fn expired_leases_fail_over_and_the_old_token_is_fenced() {
        let mut h = harness(GroupConfig::default());
        h.publish("t", &["a"]);
        let stalled = h.lease("t", "g", "w1", 1, 1_000).grants[0].token;
        h.advance(1_000);
        assert_eq!(
            h.ack("t", "g", &[stalled]),
            vec![Err(MachineError::StaleLease(stalled))],
            "expired at its deadline"
        );
        assert!(h.lease("t", "g", "w2", 1, 1_000).grants.is_empty(), "not redelivered before the pulse");
        assert_eq!(h.pulse().expired, 1);
        let retry = h.lease("t", "g", "w2", 1, 1_000).grants;
        assert_eq!((retry[0].seq, retry[0].delivery_count), (1, 2));
        assert!(retry[0].token > stalled);
        assert_eq!(h.ack("t", "g", &[stalled]), vec![Err(MachineError::StaleLease(stalled))]);
        assert_eq!(h.ack("t", "g", &[retry[0].token]), vec![Ok(())]);
    }

    /// One lease command's grants share one batch record; it goes with its last live lease, however
    /// each one ended.
    #[test]
    fn a_lease_batch_goes_with_its_last_live_lease() {
        let mut h = harness(GroupConfig::default());
        h.publish("t", &["a", "b", "c"]);
        let tokens: Vec<u64> = h.lease("t", "g", "w", 3, 1_000).grants.iter().map(|g| g.token).collect();
        let tables = |h: &Harness| (h.machine.store().len(Table::Leases), h.machine.store().len(Table::Deadlines));
        assert_eq!(tables(&h), (1, 1), "one batch, one deadline entry");
        assert_eq!(h.ack("t", "g", &[tokens[0]]), [Ok(())]);
        assert_eq!(h.nack("t", "g", &[tokens[1]], 0), [Ok(())]);
        assert_eq!(tables(&h), (1, 1), "one lease is still live");
        assert_eq!(query::leases(h.machine.store(), h.group("t", "g").id, 10).unwrap(), [(tokens[2], 3)]);
        h.advance(1_000);
        assert_eq!(h.pulse().expired, 1);
        assert_eq!(tables(&h), (0, 0));
        assert_eq!(h.machine.store().len(Table::Consumers), 0);
        let again: Vec<u64> = h.lease("t", "g", "w", 3, 1_000).grants.iter().map(|g| g.seq).collect();
        assert_eq!(again, [2, 3], "the nacked and the expired message come back");
        assert_eq!(
            h.ack("t", "g", &tokens),
            [
                Err(MachineError::StaleLease(tokens[0])),
                Err(MachineError::StaleLease(tokens[1])),
                Err(MachineError::StaleLease(tokens[2]))
            ]
        );
    }

    /// A first delivery without a key is a fresh lease: the batch alone holds it, so leasing and
    /// acking write no pending records. Its state moves to a pending record once it is nacked,
    /// extended or expired, and the batch leaves the fresh index with its last fresh lease.
    #[test]
    fn fresh_leases_live_in_their_batch_alone() {
        let mut h = harness(GroupConfig::default());
        h.publish("t", &["a", "b", "c", "d"]);
        let tokens: Vec<u64> = h.lease("t", "g", "w", 4, 1_000).grants.iter().map(|g| g.token).collect();
        let tables = |h: &Harness| (h.machine.store().len(Table::Pending), h.machine.store().len(Table::FreshBatches));
        assert_eq!(tables(&h), (0, 1), "no pending records; the batch is indexed as fresh");
        assert_eq!(h.ack("t", "g", &[tokens[0]]), [Ok(())]);
        assert_eq!(tables(&h), (0, 1));
        assert_eq!(h.nack("t", "g", &[tokens[1]], 60_000), [Ok(())]);
        assert_eq!(tables(&h), (1, 1), "the nacked message is ready again, in a pending record");
        h.ok(Command::Extend { topic: "t".into(), group: "g".into(), tokens: vec![tokens[2]], lease_ms: 5_000 });
        assert_eq!(tables(&h), (2, 1), "the extended lease has its own deadline, in a pending record");
        let group_id = h.group("t", "g").id;
        assert_eq!(query::leases(h.machine.store(), group_id, 10).unwrap(), [(tokens[2], 3), (tokens[3], 4)]);
        h.advance(1_000);
        assert_eq!(h.pulse().expired, 1, "the fresh lease of message 4 expires; the extended one does not");
        assert_eq!(tables(&h), (3, 0), "no fresh lease is left");
        assert_eq!(
            h.ack("t", "g", &[tokens[3], tokens[0]]),
            [Err(MachineError::StaleLease(tokens[3])), Err(MachineError::StaleLease(tokens[0]))]
        );
        assert_eq!(h.ack("t", "g", &[tokens[2]]), [Ok(())]);
        assert_eq!(query::leases(h.machine.store(), group_id, 10).unwrap(), []);
        assert_eq!(h.machine.store().len(Table::Leases), 0);
    }

    /// Work-queue retention keeps a message under a fresh lease, though it has no pending record.
    #[test]
    fn work_queue_retention_keeps_messages_under_fresh_leases() {
        let mut h = Harness::new();
        let config = TopicConfig { retention: RetentionPolicy::WorkQueue, ..TopicConfig::default() };
        h.create_topic("jobs", config);
        h.create_group("jobs", "g", GroupConfig::default());
        h.publish("jobs", &["1", "2", "3"]);
        let first: Vec<u64> = h.lease("jobs", "g", "w", 2, 10_000).grants.iter().map(|g| g.token).collect();
        let second: Vec<u64> = h.lease("jobs", "g", "w", 1, 10_000).grants.iter().map(|g| g.token).collect();
        assert_eq!(h.ack("jobs", "g", &[first[1], second[0]]), [Ok(()), Ok(())]);
        assert_eq!(h.topic("jobs").first_seq, 1, "message 1 is still leased");
        assert_eq!(h.ack("jobs", "g", &[first[0]]), [Ok(())]);
        assert_eq!(h.topic("jobs").messages(), 0);
    }

    /// An extend that shortens a lease moves its batch's deadline entry earlier at once; one that
    /// lengthens it leaves the entry early, and the pulse that finds nothing due moves it on.
    #[test]
    fn a_lease_batch_is_filed_by_its_earliest_live_deadline() {
        let mut h = harness(GroupConfig::default());
        h.publish("t", &["a", "b"]);
        let start_ms = h.now_ms;
        let tokens: Vec<u64> = h.lease("t", "g", "w", 2, 10_000).grants.iter().map(|g| g.token).collect();
        let extend =
            |token, lease_ms| Command::Extend { topic: "t".into(), group: "g".into(), tokens: vec![token], lease_ms };
        h.ok(extend(tokens[0], 1_000));
        assert_eq!(query::next_deadline(h.machine.store()).unwrap(), Some(start_ms + 1_000));
        h.advance(1_000);
        assert_eq!(h.pulse().expired, 1);
        assert_eq!(query::next_deadline(h.machine.store()).unwrap(), Some(start_ms + 10_000));
        h.ok(extend(tokens[1], 20_000));
        h.advance(9_000);
        assert_eq!(h.pulse().expired, 0, "extended past the entry's time");
        assert_eq!(query::next_deadline(h.machine.store()).unwrap(), Some(start_ms + 21_000));
        assert_eq!(h.ack("t", "g", &[tokens[1]]), [Ok(())]);
    }

    #[test]
    fn extend_moves_the_deadline() {
        let mut h = harness(GroupConfig::default());
        h.publish("t", &["a"]);
        let token = h.lease("t", "g", "w", 1, 1_000).grants[0].token;
        h.advance(900);
        let extended =
            h.ok(Command::Extend { topic: "t".into(), group: "g".into(), tokens: vec![token], lease_ms: 1_000 });
        assert_eq!(extended, Output::Extended(vec![Ok(h.now_ms + 1_000)]));
        h.advance(500);
        assert_eq!(h.pulse().expired, 0);
        assert_eq!(crate::query::next_deadline(h.machine.store()).unwrap(), Some(h.now_ms + 500));
        assert_eq!(h.ack("t", "g", &[token]), vec![Ok(())]);
        assert_eq!(crate::query::next_deadline(h.machine.store()).unwrap(), None);
    }

    #[test]
    fn nack_redelivers_after_the_delay() {
        let mut h = harness(GroupConfig::default());
        h.publish("t", &["a", "b"]);
        let token = h.lease("t", "g", "w", 1, 5_000).grants[0].token;
        assert_eq!(h.nack("t", "g", &[token], 2_000), vec![Ok(())]);
        let leased = h.lease("t", "g", "w", 5, 5_000);
        assert_eq!(payloads(&leased.grants), ["b"]);
        assert_eq!(leased.next_available_ms, Some(h.now_ms + 2_000));
        h.advance(2_000);
        let again = h.lease("t", "g", "w", 5, 5_000).grants;
        assert_eq!((payloads(&again), again[0].delivery_count), (vec!["a".to_owned()], 2));
    }

    #[test]
    fn past_max_deliveries_messages_go_to_the_dead_letter_topic() {
        let config = GroupConfig { deliveries_max: 2, dead_letter_topic: Some("dlq".into()), ..GroupConfig::default() };
        let mut h = harness(config);
        h.publish("t", &["poison"]);
        let token = h.lease("t", "g", "w", 1, 1_000).grants[0].token;
        h.nack("t", "g", &[token], 0);
        h.lease("t", "g", "w", 1, 1_000);
        h.advance(1_000);
        let report = h.pulse();
        assert_eq!((report.expired, report.dead_lettered), (1, 1));
        assert!(h.lease("t", "g", "w", 1, 1_000).grants.is_empty());
        let dlq = h.topic("dlq");
        let dead = crate::query::read(h.machine.store(), &dlq, 1, 10, u64::MAX).unwrap();
        assert_eq!(dead.len(), 1);
        let header = |name: &str| dead[0].1.headers.iter().find(|h| h.name == name).map(|h| h.value.clone());
        assert_eq!(dead[0].1.payload, "poison");
        assert_eq!(header("chorus-origin-topic").unwrap(), "t");
        assert_eq!(header("chorus-origin-seq").unwrap(), "1");
        assert_eq!(header("chorus-origin-group").unwrap(), "g");
        assert_eq!(header("chorus-dead-reason").unwrap(), "expired");
        assert_eq!(h.group("t", "g").counts.dead_lettered_total, 1);
    }

    #[test]
    fn without_a_dead_letter_topic_messages_are_dropped_and_counted() {
        let mut h = harness(GroupConfig { deliveries_max: 1, ..GroupConfig::default() });
        h.publish("t", &["x"]);
        let token = h.lease("t", "g", "w", 1, 1_000).grants[0].token;
        h.nack("t", "g", &[token], 0);
        let counts = h.group("t", "g").counts;
        assert_eq!((counts.dropped_total, counts.ready, counts.leased), (1, 0, 0));
    }

    #[test]
    fn per_key_groups_lease_one_message_per_key_in_order() {
        let mut h = harness(GroupConfig { ordering: KeyOrdering::PerKey, ..GroupConfig::default() });
        let messages = [("a", "a1"), ("a", "a2"), ("b", "b1"), ("a", "a3"), ("b", "b2")];
        h.publish_messages("t", messages.iter().map(|(k, p)| message(Some(k), p)).collect());
        let first = h.lease("t", "g", "w", 10, 5_000).grants;
        assert_eq!(payloads(&first), ["a1", "b1"], "other keys are not blocked");
        assert_eq!(h.group("t", "g").counts.waiting, 3);
        h.nack("t", "g", &[first[0].token], 0);
        let retry = h.lease("t", "g", "w", 10, 5_000).grants;
        assert_eq!(payloads(&retry), ["a1"], "a nacked head keeps its key");
        h.ack("t", "g", &[retry[0].token, first[1].token]);
        let next = h.lease("t", "g", "w", 10, 5_000).grants;
        assert_eq!(payloads(&next), ["a2", "b2"]);
        h.ack("t", "g", &[next[0].token]);
        assert_eq!(payloads(&h.lease("t", "g", "w", 10, 5_000).grants), ["a3"]);
    }

    #[test]
    fn delayed_messages_wait_for_their_time() {
        let mut h = harness(GroupConfig::default());
        let mut delayed = message(None, "later");
        delayed.not_before_ms = Some(h.now_ms + 3_000);
        h.publish_messages("t", vec![delayed, message(None, "now")]);
        let leased = h.lease("t", "g", "w", 10, 5_000);
        assert_eq!(payloads(&leased.grants), ["now"]);
        assert_eq!(leased.next_available_ms, Some(h.now_ms + 3_000));
        h.advance(3_000);
        assert_eq!(payloads(&h.lease("t", "g", "w", 10, 5_000).grants), ["later"]);
    }

    #[test]
    fn start_positions_pick_the_first_message() {
        let mut h = harness(GroupConfig::default());
        h.publish("t", &["1", "2"]);
        h.advance(100);
        h.publish("t", &["3"]);
        let time = h.now_ms;
        for (name, start, expected) in [
            ("latest", StartPosition::Latest, 4),
            ("seq", StartPosition::Seq(2), 2),
            ("time", StartPosition::TimeMs(time), 3),
            ("future", StartPosition::TimeMs(time + 1), 4),
        ] {
            let config = GroupConfig { start, ..GroupConfig::default() };
            let created = h.ok(Command::CreateGroup { topic: "t".into(), name: name.into(), config });
            assert!(
                matches!(created, Output::GroupCreated { next_seq, .. } if next_seq == expected),
                "{name}: {created:?}"
            );
        }
    }

    #[test]
    fn bad_lease_requests_are_rejected() {
        let mut h = harness(GroupConfig::default());
        let lease = |group: &str, count_max, lease_ms| Command::Lease {
            topic: "t".into(),
            group: group.into(),
            consumer: "w".into(),
            count_max,
            lease_ms,
            bytes_max: None,
        };
        assert!(matches!(h.err(lease("nope", 1, None)), MachineError::UnknownGroup(_)));
        assert!(matches!(h.err(lease("g", 0, None)), MachineError::InvalidArgument(_)));
        assert!(matches!(h.err(lease("g", LEASE_COUNT_MAX + 1, None)), MachineError::InvalidArgument(_)));
        assert!(matches!(h.err(lease("g", 1, Some(1))), MachineError::InvalidArgument(_)));
        let self_dead_letter = GroupConfig { dead_letter_topic: Some("t".into()), ..GroupConfig::default() };
        let create = Command::CreateGroup { topic: "t".into(), name: "loop".into(), config: self_dead_letter };
        assert!(matches!(h.err(create), MachineError::InvalidArgument(_)));
    }

    #[test]
    fn consumers_hold_a_bounded_number_of_leases() {
        let mut h = harness(GroupConfig::default());
        let batch: Vec<&str> = vec!["m"; 4096];
        for _ in 0..3 {
            h.publish("t", &batch);
        }
        let mut greedy_tokens = Vec::new();
        for _ in 0..(LEASES_PER_CONSUMER_MAX / LEASE_COUNT_MAX) {
            let leased = h.lease("t", "g", "greedy", LEASE_COUNT_MAX, 60_000);
            assert_eq!(leased.grants.len(), LEASE_COUNT_MAX as usize);
            greedy_tokens.extend(leased.grants.iter().map(|g| g.token));
        }
        let greedy_more = |count_max| Command::Lease {
            topic: "t".into(),
            group: "g".into(),
            consumer: "greedy".into(),
            count_max,
            lease_ms: None,
            bytes_max: None,
        };
        assert!(matches!(h.err(greedy_more(1)), MachineError::LimitReached(_)));
        let other = h.lease("t", "g", "other", 1, 60_000);
        assert_eq!(other.grants.len(), 1);
        // One ack settling both consumers' leases frees exactly each one's share.
        let mut tokens = greedy_tokens[..10].to_vec();
        tokens.push(other.grants[0].token);
        assert!(h.ack("t", "g", &tokens).iter().all(Result::is_ok));
        match h.ok(greedy_more(LEASE_COUNT_MAX)) {
            Output::Leased(leased) => assert_eq!(leased.grants.len(), 10, "greedy got back the 10 it acked"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(h.lease("t", "g", "other", 5, 60_000).grants.len(), 5);
    }

    #[test]
    fn deleting_a_group_purges_its_leases() {
        let mut h = harness(GroupConfig::default());
        h.publish("t", &["a"]);
        h.lease("t", "g", "w", 1, 1_000);
        h.ok(Command::DeleteGroup { topic: "t".into(), name: "g".into() });
        h.advance(1_000);
        h.pulse();
        for table in [Table::Pending, Table::Leases, Table::Deadlines, Table::Consumers, Table::Chores] {
            assert_eq!(h.machine.store().len(table), 0, "{table:?}");
        }
    }

    #[test]
    fn an_update_changes_lease_time_deliveries_and_dead_letters_but_not_ordering() {
        let mut h = harness(GroupConfig::default());
        h.create_topic("dlq", TopicConfig::default());
        let edited = GroupConfig {
            lease_ms_default: 3_000,
            deliveries_max: 4,
            dead_letter_topic: Some("dlq".into()),
            start: StartPosition::Latest,
            ..GroupConfig::default()
        };
        let update = |config| Command::UpdateGroup { topic: "t".into(), name: "g".into(), config };
        assert_eq!(h.ok(update(edited.clone())), Output::GroupUpdated);
        let config = h.group("t", "g").config;
        assert_eq!((config.lease_ms_default, config.deliveries_max), (3_000, 4));
        assert_eq!(config.start, StartPosition::Earliest, "the start stays");
        h.publish("t", &["a"]);
        let grant = &h.lease("t", "g", "w", 1, 3_000).grants[0];
        assert_eq!(grant.deadline_ms, h.now_ms + 3_000);
        let per_key = GroupConfig { ordering: KeyOrdering::PerKey, ..edited.clone() };
        assert!(matches!(h.err(update(per_key)), MachineError::InvalidArgument(_)));
        let missing = GroupConfig { dead_letter_topic: Some("nope".into()), ..edited };
        assert!(matches!(h.err(update(missing)), MachineError::UnknownTopic(_)));
    }

    /// Regression (issue 19): a lease of 20 messages of 1 MB was granted whole, its answer could
    /// not be encoded in a frame, and the messages expired until they were dropped. A lease now
    /// grants what fits in `bytes_max`, and always one message.
    #[test]
    fn a_lease_grants_what_fits_in_its_bytes_and_always_one() {
        let mut h = harness(GroupConfig::default());
        let big = |fill: u8| NewMessage {
            key: None,
            headers: vec![],
            payload: bytes::Bytes::from(vec![fill; 1000]),
            not_before_ms: None,
        };
        h.publish_messages("t", (0..5).map(big).collect());
        let one = leased_bytes(&messages::get(h.machine.store(), &h.topic("t"), 1).unwrap().unwrap());
        let lease = |h: &mut Harness, bytes_max| {
            let command = Command::Lease {
                topic: "t".into(),
                group: "g".into(),
                consumer: "w".into(),
                count_max: 10,
                lease_ms: Some(5_000),
                bytes_max: Some(bytes_max),
            };
            match h.ok(command) {
                Output::Leased(leased) => leased.grants.iter().map(|g| g.seq).collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(lease(&mut h, 2 * one + 1), [1, 2], "two fit, not three");
        assert_eq!(lease(&mut h, 10), [3], "one always goes, however small the budget");
        let token = h.lease("t", "g", "w", 1, 5_000).grants[0].token;
        h.nack("t", "g", &[token], 0);
        assert_eq!(lease(&mut h, one), [4], "a redelivery counts too");
        assert_eq!(lease(&mut h, u64::MAX), [5]);
    }
}
