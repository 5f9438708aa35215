//! Retention: trims a topic from its oldest message while a limit (count, bytes, age) is exceeded,
//! or, on a work-queue topic, while every group and durable subscription is past the message.
//! Trimming is bounded per call; what is left over becomes a chore that pulses finish.

use crate::chore::Chore;
use crate::command::RetentionPolicy;
use crate::ctx::{Ctx, Res};
use crate::keys;
use crate::limits::TRIM_MESSAGES_MAX;
use crate::lookup;
use crate::messages::{self, BatchRecord};
use crate::records::{GroupRecord, SubRecord, TopicRecord};
use crate::store::{Store, StoreError, Table, prefix_end};

/// Trims `topic` (the caller saves it). `floor`: messages below it are consumed everywhere.
pub(crate) fn trim<S: Store>(ctx: &mut Ctx<'_, S>, topic: &mut TopicRecord, floor: Option<u64>) -> Res<u64> {
    let first_before = topic.first_seq;
    let mut trimmed = 0u64;
    // The batch holding the oldest message, loaded once for all of its messages.
    let mut holding: Option<BatchRecord> = None;
    while topic.messages() > 0 {
        if trimmed == TRIM_MESSAGES_MAX as u64 {
            ctx.mark(Table::Chores, &Chore::TrimTopic.key(topic.id))?;
            break;
        }
        let (goes, may_be_aged) = reasons(topic, floor, ctx.now_ms);
        if !(goes || may_be_aged) {
            break;
        }
        if holding.as_ref().is_none_or(|batch| batch.last_seq() < topic.first_seq) {
            holding = Some(oldest_batch(ctx, topic)?);
        }
        let batch = holding.as_ref().expect("loaded above");
        let oldest = batch.stored(topic.first_seq).expect("the batch holds the oldest message");
        let aged = topic.config.age_ms_max.is_some_and(|age_ms| batch.time_ms.saturating_add(age_ms) <= ctx.now_ms);
        if !(goes || aged) {
            break;
        }
        if topic.first_seq == batch.last_seq() {
            messages::remove(&mut *ctx.store, topic.id, topic.first_seq)?;
        }
        topic.bytes -= oldest.size();
        topic.first_seq += 1;
        trimmed += 1;
    }
    if topic.first_seq != first_before {
        set_age_deadline(ctx, topic)?;
    }
    Ok(trimmed)
}

/// Whether [`trim`] may remove `topic`'s oldest message at `now_ms`.
pub(crate) fn due(topic: &TopicRecord, floor: Option<u64>, now_ms: u64) -> bool {
    let (goes, may_be_aged) = reasons(topic, floor, now_ms);
    topic.messages() > 0 && (goes || may_be_aged)
}

/// Why `topic`'s oldest message may go: it goes when the topic is over a limit or the message is
/// below `floor`; it may have aged out when the topic's age deadline has passed (its batch's time
/// tells).
fn reasons(topic: &TopicRecord, floor: Option<u64>, now_ms: u64) -> (bool, bool) {
    let over_count = topic.config.messages_max.is_some_and(|max| topic.messages() > max);
    let over_bytes = topic.config.bytes_max.is_some_and(|max| topic.bytes > max);
    let consumed = floor.is_some_and(|floor| topic.first_seq < floor);
    let may_be_aged = topic.age_deadline_ms.is_some_and(|deadline| deadline <= now_ms);
    (over_count || over_bytes || consumed, may_be_aged)
}

/// The batch holding the topic's oldest retained message, which must exist.
fn oldest_batch<S: Store>(ctx: &Ctx<'_, S>, topic: &TopicRecord) -> Res<BatchRecord> {
    let batch = messages::batch_at(&*ctx.store, topic.id, topic.first_seq)?;
    Ok(batch.ok_or_else(|| StoreError::new(format!("topic {} lost message {}", topic.id, topic.first_seq)))?)
}

/// Points the age index at the time the topic's oldest message ages out.
pub(crate) fn set_age_deadline<S: Store>(ctx: &mut Ctx<'_, S>, topic: &mut TopicRecord) -> Res<()> {
    if let Some(deadline_ms) = topic.age_deadline_ms.take() {
        ctx.remove(Table::AgeDeadlines, &keys::age_deadline(deadline_ms, topic.id))?;
    }
    let Some(age_ms) = topic.config.age_ms_max else {
        return Ok(());
    };
    if topic.messages() == 0 {
        return Ok(());
    }
    let deadline_ms = oldest_batch(ctx, topic)?.time_ms.saturating_add(age_ms);
    ctx.mark(Table::AgeDeadlines, &keys::age_deadline(deadline_ms, topic.id))?;
    topic.age_deadline_ms = Some(deadline_ms);
    Ok(())
}

/// The lowest sequence some group or durable subscription still needs, on a work-queue topic
/// that has at least one of them. `None` means work-queue retention deletes nothing.
pub(crate) fn work_queue_floor<S: Store>(ctx: &Ctx<'_, S>, topic: &TopicRecord) -> Res<Option<u64>> {
    if topic.config.retention != RetentionPolicy::WorkQueue {
        return Ok(None);
    }
    let mut floor: Option<u64> = None;
    for group_id in lookup::group_ids(&*ctx.store, topic.id)? {
        let Some(group) = ctx.load::<GroupRecord>(Table::Groups, &keys::id(group_id))? else {
            continue;
        };
        let mut needed = group.next_seq;
        for first in [first_pending(ctx, group.id)?, crate::leases::first_fresh(ctx, group.id)?].into_iter().flatten() {
            needed = needed.min(first);
        }
        floor = Some(floor.map_or(needed, |f| f.min(needed)));
    }
    for sub_id in lookup::subscription_ids(&*ctx.store, topic.id)? {
        if let Some(sub) = ctx.load::<SubRecord>(Table::Subs, &keys::id(sub_id))? {
            floor = Some(floor.map_or(sub.next_seq, |f| f.min(sub.next_seq)));
        }
    }
    Ok(floor)
}

/// The lowest sequence with a pending record in the group; fresh leases have none (see
/// [`crate::leases::first_fresh`]).
pub(crate) fn first_pending<S: Store>(ctx: &Ctx<'_, S>, group_id: u64) -> Res<Option<u64>> {
    let prefix = keys::id(group_id);
    let end = prefix_end(&prefix);
    match ctx.range(Table::Pending, &prefix, end.as_deref(), 1)?.first() {
        Some((key, _)) => Ok(Some(keys::parse_pair(key)?.1)),
        None => Ok(None),
    }
}

/// After a group or subscription consumed something: applies work-queue retention. `topic` must
/// be the topic's current record; on a limits topic this reads nothing.
pub(crate) fn after_consume<S: Store>(ctx: &mut Ctx<'_, S>, mut topic: TopicRecord) -> Res<u64> {
    let Some(floor) = work_queue_floor(ctx, &topic)? else {
        return Ok(0);
    };
    let trimmed = trim(ctx, &mut topic, Some(floor))?;
    if trimmed > 0 {
        ctx.save_topic(&topic)?;
    }
    Ok(trimmed)
}
