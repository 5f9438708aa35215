//! Durable subscriptions: a named cursor on a topic. Delivery is a read of the log; only the
//! cursor is replicated. A commit never moves a cursor back.

use crate::command::StartPosition;
use crate::ctx::{Ctx, Res};
use crate::keys;
use crate::limits::SUBSCRIPTIONS_PER_TOPIC_MAX;
use crate::outcome::{MachineError, Output};
use crate::records::SubRecord;
use crate::store::{Store, Table};
use crate::{query, retention, validate};

/// Creates the subscription, or returns the existing one with its cursor untouched.
pub(crate) fn create<S: Store>(
    ctx: &mut Ctx<'_, S>,
    topic_name: &str,
    name: &str,
    start: StartPosition,
) -> Res<Output> {
    validate::name("subscription", name)?;
    let mut topic = ctx.topic(topic_name)?;
    if let Some(existing) = query::subscription_of(&*ctx.store, topic.id, name)? {
        return Ok(Output::SubscriptionCreated {
            subscription_id: existing.id,
            created: false,
            next_seq: existing.next_seq,
        });
    }
    if topic.subscriptions as usize >= SUBSCRIPTIONS_PER_TOPIC_MAX {
        return Err(MachineError::LimitReached(format!(
            "at most {SUBSCRIPTIONS_PER_TOPIC_MAX} subscriptions per topic"
        ))
        .into());
    }
    let next_seq = query::seq_at(&*ctx.store, &topic, start)?;
    ctx.meta.next_sub_id += 1;
    let sub = SubRecord {
        id: ctx.meta.next_sub_id,
        topic_id: topic.id,
        name: name.to_owned(),
        next_seq,
        created_ms: ctx.now_ms,
    };
    ctx.save(Table::SubNames, &keys::child_name(topic.id, name), &sub.id)?;
    ctx.save(Table::Subs, &keys::id(sub.id), &sub)?;
    topic.subscriptions += 1;
    ctx.save_topic(&topic)?;
    Ok(Output::SubscriptionCreated { subscription_id: sub.id, created: true, next_seq })
}

pub(crate) fn delete<S: Store>(ctx: &mut Ctx<'_, S>, topic_name: &str, name: &str) -> Res<Output> {
    let mut topic = ctx.topic(topic_name)?;
    let sub = subscription(ctx, topic.id, name)?;
    ctx.remove(Table::SubNames, &keys::child_name(topic.id, name))?;
    ctx.remove(Table::Subs, &keys::id(sub.id))?;
    topic.subscriptions -= 1;
    ctx.save_topic(&topic)?;
    retention::after_consume(ctx, topic)?;
    Ok(Output::SubscriptionDeleted)
}

/// Records that the subscriber has processed everything up to and including `seq`.
pub(crate) fn commit<S: Store>(ctx: &mut Ctx<'_, S>, topic_name: &str, name: &str, seq: u64) -> Res<Output> {
    let topic = ctx.topic(topic_name)?;
    let mut sub = subscription(ctx, topic.id, name)?;
    if seq > topic.last_seq {
        return Err(MachineError::InvalidArgument(format!(
            "commit of {seq} is past the end of topic {topic_name:?} ({})",
            topic.last_seq
        ))
        .into());
    }
    if seq < sub.next_seq {
        return Ok(Output::Committed { next_seq: sub.next_seq });
    }
    sub.next_seq = seq + 1;
    ctx.save(Table::Subs, &keys::id(sub.id), &sub)?;
    retention::after_consume(ctx, topic)?;
    Ok(Output::Committed { next_seq: sub.next_seq })
}

/// Moves the cursor to `start`, back or forth: never below the oldest retained message, nor
/// further than just past the last.
pub(crate) fn seek<S: Store>(ctx: &mut Ctx<'_, S>, topic_name: &str, name: &str, start: StartPosition) -> Res<Output> {
    let topic = ctx.topic(topic_name)?;
    let mut sub = subscription(ctx, topic.id, name)?;
    let next_seq = query::seq_at(&*ctx.store, &topic, start)?.clamp(topic.first_seq, topic.last_seq + 1);
    let forward = next_seq > sub.next_seq;
    sub.next_seq = next_seq;
    ctx.save(Table::Subs, &keys::id(sub.id), &sub)?;
    if forward {
        retention::after_consume(ctx, topic)?;
    }
    Ok(Output::CursorMoved { next_seq })
}

fn subscription<S: Store>(ctx: &Ctx<'_, S>, topic_id: u64, name: &str) -> Res<SubRecord> {
    query::subscription_of(&*ctx.store, topic_id, name)?
        .ok_or_else(|| MachineError::UnknownSubscription(name.to_owned()).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, TopicConfig};
    use crate::testkit::Harness;

    fn create(h: &mut Harness, name: &str, start: StartPosition) -> Output {
        h.ok(Command::CreateSubscription { topic: "t".into(), name: name.into(), start })
    }

    #[test]
    fn subscriptions_keep_their_cursor_when_created_again() {
        let mut h = Harness::new();
        h.create_topic("t", TopicConfig::default());
        h.publish("t", &["1", "2", "3"]);
        assert!(matches!(
            create(&mut h, "s", StartPosition::Earliest),
            Output::SubscriptionCreated { next_seq: 1, created: true, .. }
        ));
        h.ok(Command::Commit { topic: "t".into(), subscription: "s".into(), seq: 2 });
        assert!(matches!(
            create(&mut h, "s", StartPosition::Latest),
            Output::SubscriptionCreated { next_seq: 3, created: false, .. }
        ));
        assert!(matches!(
            create(&mut h, "tail", StartPosition::Latest),
            Output::SubscriptionCreated { next_seq: 4, .. }
        ));
    }

    #[test]
    fn commits_move_forward_only() {
        let mut h = Harness::new();
        h.create_topic("t", TopicConfig::default());
        h.publish("t", &["1", "2", "3"]);
        create(&mut h, "s", StartPosition::Earliest);
        let commit = |seq| Command::Commit { topic: "t".into(), subscription: "s".into(), seq };
        assert_eq!(h.ok(commit(2)), Output::Committed { next_seq: 3 });
        assert_eq!(h.ok(commit(1)), Output::Committed { next_seq: 3 }, "a lower commit is ignored");
        assert!(matches!(h.err(commit(4)), MachineError::InvalidArgument(_)));
        let unknown = Command::Commit { topic: "t".into(), subscription: "nope".into(), seq: 1 };
        assert!(matches!(h.err(unknown), MachineError::UnknownSubscription(_)));
    }

    #[test]
    fn delete_removes_the_cursor() {
        let mut h = Harness::new();
        h.create_topic("t", TopicConfig::default());
        create(&mut h, "s", StartPosition::Earliest);
        h.ok(Command::DeleteSubscription { topic: "t".into(), name: "s".into() });
        assert_eq!(h.topic("t").subscriptions, 0);
        let again = Command::DeleteSubscription { topic: "t".into(), name: "s".into() };
        assert!(matches!(h.err(again), MachineError::UnknownSubscription(_)));
    }

    #[test]
    fn a_seek_moves_the_cursor_back_and_forth_within_the_topic() {
        let mut h = Harness::new();
        h.create_topic("t", TopicConfig::default());
        h.publish("t", &["1", "2", "3", "4"]);
        create(&mut h, "s", StartPosition::Latest);
        let seek = |start| Command::SeekSubscription { topic: "t".into(), name: "s".into(), start };
        assert_eq!(h.ok(seek(StartPosition::Earliest)), Output::CursorMoved { next_seq: 1 });
        assert_eq!(h.ok(seek(StartPosition::Seq(3))), Output::CursorMoved { next_seq: 3 });
        assert_eq!(h.ok(seek(StartPosition::Seq(99))), Output::CursorMoved { next_seq: 5 }, "just past the last");
        assert_eq!(h.ok(seek(StartPosition::TimeMs(0))), Output::CursorMoved { next_seq: 1 });
        let unknown =
            Command::SeekSubscription { topic: "t".into(), name: "nope".into(), start: StartPosition::Earliest };
        assert!(matches!(h.err(unknown), MachineError::UnknownSubscription(_)));
    }
}
