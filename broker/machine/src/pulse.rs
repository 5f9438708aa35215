//! Pulses: how time acts on the state. The leader proposes one when `query::next_deadline` has
//! passed. A pulse expires leases, ages out messages, forgets old idempotency records and does a
//! bounded slice of deferred chores. Each part is bounded; what is left waits for the next pulse.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use crate::chore::Chore;
use crate::ctx::{Ctx, Res};
use crate::keys;
use crate::limits::{DEDUP_EXPIRIES_MAX, PULSE_EXPIRIES_MAX, PULSE_PURGE_KEYS_MAX};
use crate::outcome::{Output, PulseReport};
use crate::records::{GroupRecord, TopicRecord};
use crate::store::{Store, Table, prefix_end};
use crate::topic::expire_dedup;
use crate::{group, retention, revocation};

pub(crate) fn pulse<S: Store>(ctx: &mut Ctx<'_, S>) -> Res<Output> {
    let mut report = PulseReport::default();
    expire_leases(ctx, &mut report)?;
    age_out(ctx, &mut report)?;
    report.purged += expire_dedup(ctx, DEDUP_EXPIRIES_MAX)?;
    do_chores(ctx, &mut report)?;
    Ok(Output::Pulsed(report))
}

fn expire_leases<S: Store>(ctx: &mut Ctx<'_, S>, report: &mut PulseReport) -> Res<()> {
    let end = keys::deadline(ctx.now_ms.saturating_add(1), 0, 0);
    let due = ctx.range(Table::Deadlines, &[], Some(&end), PULSE_EXPIRIES_MAX)?;
    let mut groups: BTreeMap<u64, GroupRecord> = BTreeMap::new();
    let mut examined = 0;
    for (key, _) in due {
        if examined >= PULSE_EXPIRIES_MAX {
            break;
        }
        let (_, group_id, last_token) = keys::parse_deadline(&key)?;
        let group = match groups.entry(group_id) {
            Entry::Occupied(cached) => cached.into_mut(),
            Entry::Vacant(slot) => {
                match ctx.load::<GroupRecord>(Table::Groups, &keys::id(group_id))? {
                    Some(group) => slot.insert(group),
                    None => {
                        // The group was deleted; its other tables are purged by a chore.
                        ctx.remove(Table::Deadlines, &key)?;
                        continue;
                    }
                }
            }
        };
        let before = (group.counts.dead_lettered_total, group.counts.dropped_total);
        let expiry = group::expire_batch(ctx, group, last_token)?;
        examined += expiry.examined;
        report.expired += expiry.expired;
        report.dead_lettered += group.counts.dead_lettered_total - before.0;
        report.dropped += group.counts.dropped_total - before.1;
    }
    let mut topics = BTreeSet::new();
    for group in groups.values() {
        ctx.save_group(group)?;
        topics.insert(group.topic_id);
    }
    for topic_id in topics {
        if let Some(topic) = ctx.topic_by_id(topic_id)? {
            report.trimmed += retention::after_consume(ctx, topic)?;
        }
    }
    Ok(())
}

fn age_out<S: Store>(ctx: &mut Ctx<'_, S>, report: &mut PulseReport) -> Res<()> {
    let end = keys::age_deadline(ctx.now_ms.saturating_add(1), 0);
    for (key, _) in ctx.range(Table::AgeDeadlines, &[], Some(&end), PULSE_EXPIRIES_MAX)? {
        let (_, topic_id) = keys::parse_age_deadline(&key)?;
        let Some(mut topic) = ctx.topic_by_id(topic_id)? else {
            ctx.remove(Table::AgeDeadlines, &key)?;
            continue;
        };
        let floor = retention::work_queue_floor(ctx, &topic)?;
        report.trimmed += retention::trim(ctx, &mut topic, floor)?;
        ctx.save_topic(&topic)?;
    }
    Ok(())
}

fn do_chores<S: Store>(ctx: &mut Ctx<'_, S>, report: &mut PulseReport) -> Res<()> {
    let mut budget = PULSE_PURGE_KEYS_MAX;
    for (key, value) in ctx.range(Table::Chores, &[], None, PULSE_PURGE_KEYS_MAX)? {
        if budget == 0 {
            break;
        }
        let (chore, id) = Chore::parse(&key)?;
        let done = match chore {
            Chore::PurgeTopic => purge(ctx, &[Table::Messages, Table::Dedup], id, &mut budget, report)?,
            Chore::PurgeGroup => {
                let tables = [
                    Table::Pending,
                    Table::Ready,
                    Table::Leases,
                    Table::FreshBatches,
                    Table::KeyLocks,
                    Table::KeyWaits,
                    Table::Consumers,
                ];
                purge(ctx, &tables, id, &mut budget, report)?
            }
            Chore::TrimTopic => {
                ctx.remove(Table::Chores, &key)?;
                if let Some(mut topic) = ctx.topic_by_id(id)? {
                    report.trimmed += trim_again(ctx, &mut topic)?;
                }
                budget = budget.saturating_sub(crate::limits::TRIM_MESSAGES_MAX);
                false // trim re-marks the chore itself when more is left
            }
            Chore::RevokeLeases => revocation::revoke_slice(ctx, &key, &value, &mut budget, report)?,
        };
        if done {
            ctx.remove(Table::Chores, &key)?;
        }
    }
    Ok(())
}

fn trim_again<S: Store>(ctx: &mut Ctx<'_, S>, topic: &mut TopicRecord) -> Res<u64> {
    let floor = retention::work_queue_floor(ctx, topic)?;
    let trimmed = retention::trim(ctx, topic, floor)?;
    ctx.save_topic(topic)?;
    Ok(trimmed)
}

/// Deletes keys prefixed by `id` from `tables`, within `budget`. True when nothing is left.
fn purge<S: Store>(
    ctx: &mut Ctx<'_, S>,
    tables: &[Table],
    id: u64,
    budget: &mut usize,
    report: &mut PulseReport,
) -> Res<bool> {
    let prefix = keys::id(id);
    let end = prefix_end(&prefix);
    for &table in tables {
        let keys = ctx.keys(table, &prefix, end.as_deref(), *budget)?;
        for key in &keys {
            ctx.remove(table, key)?;
        }
        *budget -= keys.len();
        report.purged += keys.len() as u64;
        if *budget == 0 {
            // Possibly done; the next pulse finds out cheaply.
            return Ok(false);
        }
    }
    Ok(true)
}
