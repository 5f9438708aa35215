//! Topics: create, delete, and publish. A publish assigns dense per-topic sequences from 1 and
//! stamps each message with (log index, batch position), the global total order.

use crate::access::Actor;
use crate::chore::Chore;
use crate::command::{NewMessage, ProducerStamp, Publish, TopicConfig};
use crate::ctx::{Ctx, PublishRun, Res};
use crate::keys;
use crate::limits::{
    DEDUP_EXPIRIES_MAX, GROUPS_PER_TOPIC_MAX, PRODUCER_IDLE_MS_MAX, SUBSCRIPTIONS_PER_TOPIC_MAX, TOPICS_MAX,
};
use crate::messages::{BatchRecord, StoredMessage};
use crate::outcome::{MachineError, Output, Published};
use crate::owners::{self, Owned};
use crate::records::{DedupRecord, ProducerHead, TopicRecord};
use crate::retention;
use crate::store::{Store, Table, prefix_end};
use crate::validate;

/// Creates the topic; a user who creates one owns it, within its quota.
pub(crate) fn create<S: Store>(ctx: &mut Ctx<'_, S>, actor: &Actor, name: &str, config: &TopicConfig) -> Res<Output> {
    validate::name("topic", name)?;
    validate::topic_config(config)?;
    if let Some(existing) = crate::query::topic(&*ctx.store, name)? {
        if existing.config != *config {
            let differences = existing.config.differences(config);
            let why = format!("topic {name:?} already exists with another configuration: {differences}");
            return Err(MachineError::Conflict(why).into());
        }
        return Ok(Output::TopicCreated { topic_id: existing.id, created: false });
    }
    if ctx.meta.topics >= TOPICS_MAX as u64 {
        return Err(MachineError::LimitReached(format!("at most {TOPICS_MAX} topics")).into());
    }
    owners::check_quota(ctx, actor, Owned::Topic)?;
    let topic = insert(ctx, name, config)?;
    owners::take(ctx, actor, Owned::Topic, topic.id)?;
    Ok(Output::TopicCreated { topic_id: topic.id, created: true })
}

/// Stores a new, empty topic under the next id. The caller has checked the name and limits.
pub(crate) fn insert<S: Store>(ctx: &mut Ctx<'_, S>, name: &str, config: &TopicConfig) -> Res<TopicRecord> {
    ctx.meta.next_topic_id += 1;
    ctx.meta.topics += 1;
    let topic = TopicRecord {
        id: ctx.meta.next_topic_id,
        name: name.to_owned(),
        config: config.clone(),
        created_ms: ctx.now_ms,
        first_seq: 1,
        last_seq: 0,
        bytes: 0,
        groups: 0,
        subscriptions: 0,
        age_deadline_ms: None,
    };
    ctx.save(Table::TopicNames, name.as_bytes(), &topic.id)?;
    ctx.save_topic(&topic)?;
    Ok(topic)
}

/// Deletes the topic's name, groups and subscriptions now; its messages and idempotency records
/// are purged by pulses, so deleting a large topic is bounded work per entry.
/// Replaces the topic's limits and dedup window; tighter limits trim at once (up to a bound, the
/// rest by pulses). The retention policy cannot change.
pub(crate) fn update<S: Store>(ctx: &mut Ctx<'_, S>, name: &str, config: &TopicConfig) -> Res<Output> {
    validate::topic_config(config)?;
    let mut topic = ctx.topic(name)?;
    if config.retention != topic.config.retention {
        let why = format!("topic {name:?}'s retention policy cannot change; create another topic for it");
        return Err(MachineError::InvalidArgument(why).into());
    }
    topic.config = config.clone();
    retention::set_age_deadline(ctx, &mut topic)?;
    retention::trim(ctx, &mut topic, None)?;
    ctx.save_topic(&topic)?;
    Ok(Output::TopicUpdated)
}

pub(crate) fn delete<S: Store>(ctx: &mut Ctx<'_, S>, name: &str) -> Res<Output> {
    let topic = ctx.topic(name)?;
    let prefix = keys::id(topic.id);
    let end = prefix_end(&prefix);
    for (key, value) in ctx.range(Table::GroupNames, &prefix, end.as_deref(), GROUPS_PER_TOPIC_MAX)? {
        let group_id: u64 = crate::records::decode(&value)?;
        owners::disown(ctx, Owned::Group, group_id)?;
        ctx.remove(Table::GroupNames, &key)?;
        ctx.remove(Table::Groups, &keys::id(group_id))?;
        ctx.mark(Table::Chores, &Chore::PurgeGroup.key(group_id))?;
    }
    for (key, value) in ctx.range(Table::SubNames, &prefix, end.as_deref(), SUBSCRIPTIONS_PER_TOPIC_MAX)? {
        let sub_id: u64 = crate::records::decode(&value)?;
        ctx.remove(Table::SubNames, &key)?;
        ctx.remove(Table::Subs, &keys::id(sub_id))?;
    }
    if let Some(deadline_ms) = topic.age_deadline_ms {
        ctx.remove(Table::AgeDeadlines, &keys::age_deadline(deadline_ms, topic.id))?;
    }
    ctx.remove(Table::Chores, &Chore::TrimTopic.key(topic.id))?;
    owners::disown(ctx, Owned::Topic, topic.id)?;
    ctx.remove(Table::TopicNames, name.as_bytes())?;
    ctx.remove(Table::Topics, &keys::id(topic.id))?;
    ctx.mark(Table::Chores, &Chore::PurgeTopic.key(topic.id))?;
    ctx.meta.topics -= 1;
    Ok(Output::TopicDeleted)
}

/// Publishes a batch. Its messages join the entry's open run on the topic ([`PublishRun`]); the
/// run is stored at once when the topic must trim, or was empty and ages its messages, since
/// both read the stored batches.
pub(crate) fn publish<S: Store>(ctx: &mut Ctx<'_, S>, publish: &Publish) -> Res<Output> {
    let mut topic = ctx.publishing_topic(&publish.topic)?;
    validate::messages(&publish.messages)?;
    if let Some(producer) = &publish.producer {
        validate::producer_id(&producer.id)?;
        expire_dedup(ctx, DEDUP_EXPIRIES_MAX)?;
        let key = keys::dedup(topic.id, &producer.id, producer.sequence);
        if let Some(seen) = ctx.load::<DedupRecord>(Table::Dedup, &key)? {
            return Ok(Output::Published(Published {
                topic_id: topic.id,
                first_seq: seen.first_seq,
                count: seen.count,
                log_index: seen.log_index,
                batch_pos: seen.batch_pos,
                duplicate: true,
            }));
        }
        in_producer_order(ctx, topic.id, producer)?;
    }
    let was_empty = topic.messages() == 0;
    let published = join_run(ctx, &mut topic, &publish.messages);
    if let Some(producer) = &publish.producer {
        let expire_ms = ctx.now_ms.saturating_add(topic.config.dedup_window_ms);
        let key = keys::dedup(topic.id, &producer.id, producer.sequence);
        let record = DedupRecord {
            first_seq: published.first_seq,
            count: published.count,
            log_index: published.log_index,
            batch_pos: published.batch_pos,
            expire_ms,
        };
        ctx.save(Table::Dedup, &key, &record)?;
        ctx.mark(Table::DedupExpiry, &keys::dedup_expiry(expire_ms, &key))?;
        advance_producer(ctx, &topic, producer)?;
    }
    let ages = was_empty && topic.config.age_ms_max.is_some();
    let trims = retention::due(&topic, None, ctx.now_ms);
    ctx.run.as_mut().expect("joined above").topic = topic;
    if ages || trims {
        let mut topic = ctx.end_run()?.expect("open above");
        if ages {
            retention::set_age_deadline(ctx, &mut topic)?;
        }
        retention::trim(ctx, &mut topic, None)?;
        ctx.save_topic(&topic)?;
    }
    Ok(Output::Published(published))
}

/// A producer's batches are stored in its sequence order, FIFO per producer: a batch must follow
/// the last one the topic stored from that producer (its sequence plus one), so a batch that
/// overtook an earlier one still in flight or being retried is refused, and the producer sends it
/// again after the earlier one. Sequence 0 or 1 starts a run (a new producer, or one that
/// restarted): a run that starts at 0 must send its first batch alone, since its 1 would start a
/// run too. A retry of a stored first batch is a duplicate before it gets here. The topic
/// remembers a producer's last batch for [`PRODUCER_IDLE_MS_MAX`] (or the dedup window, if
/// longer).
fn in_producer_order<S: Store>(ctx: &mut Ctx<'_, S>, topic_id: u64, producer: &ProducerStamp) -> Res<()> {
    let head = ctx.load::<ProducerHead>(Table::Dedup, &keys::producer_head(topic_id, &producer.id))?;
    let last = head.map(|head| head.last_sequence);
    if producer.sequence <= 1 || last.is_some_and(|last| producer.sequence == last + 1) {
        return Ok(());
    }
    let behind = last.is_some_and(|last| producer.sequence <= last);
    Err(MachineError::OutOfOrder { producer: producer.id.clone(), sequence: producer.sequence, behind }.into())
}

/// Records `producer`'s batch as the last one `topic` stored from it.
fn advance_producer<S: Store>(ctx: &mut Ctx<'_, S>, topic: &TopicRecord, producer: &ProducerStamp) -> Res<()> {
    let key = keys::producer_head(topic.id, &producer.id);
    if let Some(old) = ctx.load::<ProducerHead>(Table::Dedup, &key)? {
        ctx.remove(Table::DedupExpiry, &keys::dedup_expiry(old.expire_ms, &key))?;
    }
    let life_ms = topic.config.dedup_window_ms.max(PRODUCER_IDLE_MS_MAX);
    let head = ProducerHead { last_sequence: producer.sequence, expire_ms: ctx.now_ms.saturating_add(life_ms) };
    ctx.save(Table::Dedup, &key, &head)?;
    ctx.mark(Table::DedupExpiry, &keys::dedup_expiry(head.expire_ms, &key))?;
    Ok(())
}

/// Adds validated messages to the entry's run on `topic`, opening one if none is open, and
/// advances `topic` past them (the caller puts it in the run).
fn join_run<S: Store>(ctx: &mut Ctx<'_, S>, topic: &mut TopicRecord, messages: &[NewMessage]) -> Published {
    let (published, batch) = place(ctx, topic, messages);
    match &mut ctx.run {
        Some(run) => {
            assert_eq!(run.topic.id, topic.id, "a run holds one topic's publishes");
            assert_eq!(run.batch.last_seq() + 1, batch.first_seq, "a run's messages are consecutive");
            let next_pos = run.batch.batch_pos as usize + run.batch.messages.len();
            assert_eq!(next_pos, batch.batch_pos as usize, "a run's batch positions are consecutive");
            run.batch.messages.extend(batch.messages);
        }
        None => ctx.run = Some(PublishRun { topic: topic.clone(), batch }),
    }
    published
}

/// Appends validated messages to `topic` (the caller saves it). Also used to dead-letter.
pub(crate) fn append<S: Store>(
    ctx: &mut Ctx<'_, S>,
    topic: &mut TopicRecord,
    messages: &[NewMessage],
) -> Res<Published> {
    let was_empty = topic.messages() == 0;
    let (published, batch) = place(ctx, topic, messages);
    crate::messages::put(&mut *ctx.store, topic.id, &batch)?;
    if was_empty {
        retention::set_age_deadline(ctx, topic)?;
    }
    Ok(published)
}

/// Places validated messages after `topic`'s last: their sequences and their positions in the
/// entry, as a publish's outcome and as a batch of their own; `topic` counts them.
fn place<S: Store>(ctx: &mut Ctx<'_, S>, topic: &mut TopicRecord, messages: &[NewMessage]) -> (Published, BatchRecord) {
    let published = Published {
        topic_id: topic.id,
        first_seq: topic.last_seq + 1,
        count: u32::try_from(messages.len()).expect("publish batches are bounded by limits"),
        log_index: ctx.log_index,
        batch_pos: ctx.batch_pos,
        duplicate: false,
    };
    let batch = BatchRecord {
        first_seq: published.first_seq,
        log_index: ctx.log_index,
        batch_pos: published.batch_pos,
        time_ms: ctx.now_ms,
        messages: messages.iter().map(StoredMessage::from).collect(),
    };
    topic.bytes += batch.messages.iter().map(StoredMessage::size).sum::<u64>();
    topic.last_seq = batch.last_seq();
    ctx.batch_pos += published.count;
    (published, batch)
}

/// Forgets up to `budget` idempotency records whose window has passed.
pub(crate) fn expire_dedup<S: Store>(ctx: &mut Ctx<'_, S>, budget: usize) -> Res<u64> {
    let end = keys::dedup_expiry(ctx.now_ms.saturating_add(1), &[]);
    let expired = ctx.range(Table::DedupExpiry, &[], Some(&end), budget)?;
    for (key, _) in &expired {
        ctx.remove(Table::Dedup, keys::parse_dedup_expiry(key)?.1)?;
        ctx.remove(Table::DedupExpiry, key)?;
    }
    Ok(expired.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Entry, ProducerStamp, Publish, RetentionPolicy, Submission, TopicConfig};
    use crate::outcome::Outcome;
    use crate::store::Table;
    use crate::testkit::{Harness, message};
    use bytes::Bytes;

    #[test]
    fn create_is_idempotent_and_conflicts_on_other_config() {
        let mut h = Harness::new();
        let first = h.ok(Command::CreateTopic { name: "orders".into(), config: TopicConfig::default() });
        assert!(matches!(first, Output::TopicCreated { topic_id: 1, created: true }));
        let again = h.ok(Command::CreateTopic { name: "orders".into(), config: TopicConfig::default() });
        assert!(matches!(again, Output::TopicCreated { topic_id: 1, created: false }));
        let other = TopicConfig { messages_max: Some(5), ..TopicConfig::default() };
        // Regression (issue 18): the refusal did not say what differs.
        let refused = h.err(Command::CreateTopic { name: "orders".into(), config: other });
        assert_eq!(
            refused,
            MachineError::Conflict(
                "topic \"orders\" already exists with another configuration: max_messages none here, 5 asked".into()
            )
        );
        let bad = Command::CreateTopic { name: "bad name".into(), config: TopicConfig::default() };
        assert!(matches!(h.err(bad), MachineError::InvalidArgument(_)));
    }

    #[test]
    fn publish_assigns_dense_sequences_and_the_global_order() {
        let mut h = Harness::new();
        h.create_topic("a", TopicConfig::default());
        h.create_topic("b", TopicConfig::default());
        let first = h.publish("a", &["1", "2", "3"]);
        assert_eq!((first.first_seq, first.count, first.batch_pos), (1, 3, 0));
        let second = h.publish("a", &["4"]);
        assert_eq!(second.first_seq, 4);
        assert!(second.log_index > first.log_index);
        // Two publishes in one entry share its index and take consecutive batch positions.
        h.index += 1;
        let commands = ["a", "b"]
            .map(|topic| {
                Command::Publish(Publish { topic: topic.into(), producer: None, messages: vec![message(None, "x")] })
            })
            .to_vec();
        let submissions = commands.into_iter().map(crate::command::Submission::broker).collect();
        let outcomes = h.machine.apply(h.index, &Entry { time_ms: h.now_ms, submissions }).unwrap();
        let placed: Vec<(u64, u64, u32)> = outcomes
            .into_iter()
            .map(|o| match o.unwrap() {
                Output::Published(p) => (p.first_seq, p.log_index, p.batch_pos),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(placed, vec![(5, h.index, 0), (1, h.index, 1)]);
        let topic = h.topic("a");
        assert_eq!((topic.first_seq, topic.last_seq, topic.messages(), topic.bytes), (1, 5, 5, 5));
    }

    /// One-message publishes in one entry were one record each, with the topic read and written
    /// per publish (a tenth of the leader's CPU under `--raw`). Publishes to a topic that follow
    /// each other in an entry are now one record, read back message by message in their places.
    #[test]
    fn an_entrys_run_of_publishes_to_a_topic_is_one_record() {
        let mut h = Harness::new();
        h.create_topic("a", TopicConfig::default());
        h.create_topic("b", TopicConfig::default());
        let publish = |topic: &str, payload: &str| {
            Command::Publish(Publish { topic: topic.into(), producer: None, messages: vec![message(None, payload)] })
        };
        let commands = [publish("a", "1"), publish("a", "2"), publish("b", "x"), publish("a", "3"), publish("a", "4")];
        h.index += 1;
        let submissions = commands.into_iter().map(Submission::broker).collect();
        let outcomes = h.machine.apply(h.index, &Entry { time_ms: h.now_ms, submissions }).unwrap();
        let placed: Vec<(u64, u32)> = outcomes
            .into_iter()
            .map(|o| match o.unwrap() {
                Output::Published(p) => (p.first_seq, p.batch_pos),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(placed, [(1, 0), (2, 1), (1, 2), (3, 3), (4, 4)]);
        assert_eq!(h.machine.store().len(Table::Messages), 3, "a's first run, b, a's second run");
        let topic = h.topic("a");
        assert_eq!((topic.first_seq, topic.last_seq, topic.bytes), (1, 4, 4));
        let read = crate::query::read(h.machine.store(), &topic, 1, 10, u64::MAX).unwrap();
        let read: Vec<(u64, u32, Bytes)> = read.into_iter().map(|(seq, m)| (seq, m.batch_pos, m.payload)).collect();
        let expected: Vec<(u64, u32, Bytes)> =
            [(1, 0, "1"), (2, 1, "2"), (3, 3, "3"), (4, 4, "4")].map(|(s, p, m)| (s, p, Bytes::from(m))).to_vec();
        assert_eq!(read, expected);
    }

    #[test]
    fn publish_rejects_unknown_topics_and_bad_batches_without_writing() {
        let mut h = Harness::new();
        let publish =
            |topic: &str, messages| Command::Publish(Publish { topic: topic.into(), producer: None, messages });
        assert!(matches!(h.err(publish("nope", vec![message(None, "x")])), MachineError::UnknownTopic(_)));
        h.create_topic("t", TopicConfig::default());
        assert!(matches!(h.err(publish("t", vec![])), MachineError::InvalidArgument(_)));
        let huge =
            NewMessage { payload: vec![0; crate::limits::PAYLOAD_BYTES_MAX + 1].into(), ..NewMessage::default() };
        assert!(matches!(h.err(publish("t", vec![message(None, "ok"), huge])), MachineError::TooLarge(_)));
        assert_eq!(h.topic("t").last_seq, 0);
    }

    #[test]
    fn idempotent_producers_are_deduplicated_within_the_window() {
        let mut h = Harness::new();
        h.create_topic("t", TopicConfig { dedup_window_ms: 1000, ..TopicConfig::default() });
        let stamped = |sequence| {
            Command::Publish(Publish {
                topic: "t".into(),
                producer: Some(ProducerStamp { id: "p1".into(), sequence }),
                messages: vec![message(None, "a"), message(None, "b")],
            })
        };
        let Output::Published(original) = h.ok(stamped(1)) else { panic!() };
        let Output::Published(retry) = h.ok(stamped(1)) else { panic!() };
        assert!(retry.duplicate && !original.duplicate);
        assert_eq!((retry.first_seq, retry.count, retry.log_index), (original.first_seq, 2, original.log_index));
        assert_eq!(h.topic("t").last_seq, 2);
        h.advance(1000);
        let Output::Published(late) = h.ok(stamped(1)) else { panic!() };
        assert!(!late.duplicate, "the window has passed");
        assert_eq!(late.first_seq, 3);
    }

    /// A producer's batches are stored in its sequence order: one that overtakes an earlier
    /// batch is refused until that one is stored, a retry of a stored one is a duplicate, and one
    /// that comes after a later one was stored is refused for good.
    #[test]
    fn a_producers_batches_are_stored_in_sequence_order() {
        let mut h = Harness::new();
        h.create_topic("t", TopicConfig { dedup_window_ms: 1000, ..TopicConfig::default() });
        let stamped = |sequence| {
            Command::Publish(Publish {
                topic: "t".into(),
                producer: Some(ProducerStamp { id: "p".into(), sequence }),
                messages: vec![message(None, &format!("m{sequence}"))],
            })
        };
        let Output::Published(first) = h.ok(stamped(1)) else { panic!() };
        let overtaking = h.err(stamped(3));
        assert!(matches!(overtaking, MachineError::OutOfOrder { sequence: 3, behind: false, .. }), "{overtaking:?}");
        let Output::Published(second) = h.ok(stamped(2)) else { panic!() };
        let Output::Published(third) = h.ok(stamped(3)) else { panic!() };
        assert_eq!((first.first_seq, second.first_seq, third.first_seq), (1, 2, 3));
        let Output::Published(retry) = h.ok(stamped(2)) else { panic!() };
        assert!(retry.duplicate);
        h.advance(1000);
        // Out of the dedup window, batch 2 is no duplicate any more, and comes after batch 3.
        let late = h.err(stamped(2));
        assert!(matches!(late, MachineError::OutOfOrder { sequence: 2, behind: true, .. }), "{late:?}");
        let Output::Published(fourth) = h.ok(stamped(4)) else { panic!("the order outlives the dedup window") };
        assert_eq!(fourth.first_seq, 4);
        let restart = h.ok(stamped(1));
        assert!(matches!(restart, Output::Published(Published { duplicate: false, .. })), "sequence 1 starts a run");
        h.advance(crate::limits::PRODUCER_IDLE_MS_MAX);
        let forgotten = h.err(stamped(2));
        assert!(matches!(forgotten, MachineError::OutOfOrder { behind: false, .. }), "a silent producer is forgotten");
        assert_eq!(h.topic("t").last_seq, 5);
    }

    proptest::proptest! {
        /// Whatever order a producer's batches arrive in, with retries, the batches stored (not
        /// duplicates) are stored in sequence order, each once.
        #[test]
        fn stored_batches_follow_the_producers_sequence(arrivals in proptest::collection::vec(1u64..8, 1..40)) {
            let mut h = Harness::new();
            h.create_topic("t", TopicConfig::default());
            let mut stored = Vec::new();
            for sequence in arrivals {
                let publish = Command::Publish(Publish {
                    topic: "t".into(),
                    producer: Some(ProducerStamp { id: "p".into(), sequence }),
                    messages: vec![message(None, "m")],
                });
                if let Ok(Output::Published(published)) = h.run_as(&Actor::Anonymous, publish)
                    && !published.duplicate
                {
                    stored.push(sequence);
                }
            }
            // Each stored batch starts a run or follows the one before.
            proptest::prop_assert!(stored.first().is_none_or(|first| *first == 1), "stored {:?}", stored);
            proptest::prop_assert!(stored.windows(2).all(|pair| pair[1] == 1 || pair[1] == pair[0] + 1), "stored {:?}", stored);
        }
    }

    /// What a client publishes, to a topic with or without limits, as an idempotent producer or
    /// not, valid or not; or a pulse, which ends a run.
    fn arbitrary_command() -> impl proptest::strategy::Strategy<Value = Command> {
        use proptest::prelude::*;
        let topic = prop_oneof![Just("plain"), Just("capped"), Just("bytes"), Just("aged"), Just("missing")];
        let payloads = proptest::collection::vec("[a-z]{1,4}", 0..3);
        let producer = proptest::option::of(1u64..5);
        let publish = (topic, payloads, producer).prop_map(|(topic, payloads, producer)| {
            Command::Publish(Publish {
                topic: topic.into(),
                producer: producer.map(|sequence| ProducerStamp { id: "p".into(), sequence }),
                messages: payloads.iter().map(|p| message(None, p)).collect(),
            })
        });
        prop_oneof![8 => publish, 1 => Just(Command::Pulse)]
    }

    /// The topics the proptest below publishes to.
    fn harness_with_topics() -> Harness {
        let mut h = Harness::new();
        let with = |config: TopicConfig| TopicConfig { dedup_window_ms: 1000, ..config };
        h.create_topic("plain", with(TopicConfig::default()));
        h.create_topic("capped", with(TopicConfig { messages_max: Some(3), ..TopicConfig::default() }));
        h.create_topic("bytes", with(TopicConfig { bytes_max: Some(7), ..TopicConfig::default() }));
        h.create_topic("aged", with(TopicConfig { age_ms_max: Some(5), ..TopicConfig::default() }));
        h
    }

    /// What a publish's outcome says, but for where its entry placed it.
    fn outcome_apart_from_place(outcome: Outcome) -> Result<Option<(u64, u32, bool)>, MachineError> {
        outcome.map(|output| match output {
            Output::Published(p) => Some((p.first_seq, p.count, p.duplicate)),
            _ => None,
        })
    }

    /// Every topic's retained messages and counters.
    fn retained(h: &Harness) -> Vec<(TopicRecord, Vec<(u64, Bytes)>)> {
        ["plain", "capped", "bytes", "aged"]
            .map(|name| {
                let topic = h.topic(name);
                let read = crate::query::read(h.machine.store(), &topic, 1, 1000, u64::MAX).unwrap();
                (topic, read.into_iter().map(|(seq, m)| (seq, m.payload)).collect())
            })
            .to_vec()
    }

    proptest::proptest! {
        /// Runs of publishes change nothing a client sees: the same commands applied in entries of
        /// many, 3 ms apart, or each in its own entry at its entry's time, give the same outcomes
        /// (but for the places) and the same retained messages and topics.
        #[test]
        fn runs_of_publishes_keep_every_outcome(
            entries in proptest::collection::vec(proptest::collection::vec(arbitrary_command(), 1..12), 1..6),
        ) {
            let (mut together, mut apart) = (harness_with_topics(), harness_with_topics());
            for commands in entries {
                together.advance(3);
                apart.advance(3);
                let submissions: Vec<Submission> = commands.iter().cloned().map(|command| match command {
                    Command::Pulse => Submission::broker(command),
                    command => Submission::new(Actor::Anonymous, command),
                }).collect();
                together.index += 1;
                let entry = Entry { time_ms: together.now_ms, submissions: submissions.clone() };
                let outcomes = together.machine.apply(together.index, &entry).unwrap();
                for (submission, outcome) in submissions.into_iter().zip(outcomes) {
                    let alone = apart.run_as(&submission.actor, submission.command);
                    proptest::prop_assert_eq!(outcome_apart_from_place(outcome), outcome_apart_from_place(alone));
                }
            }
            proptest::prop_assert_eq!(retained(&together), retained(&apart));
        }
    }

    #[test]
    fn limits_trim_the_oldest_messages() {
        let mut h = Harness::new();
        h.create_topic("count", TopicConfig { messages_max: Some(2), ..TopicConfig::default() });
        h.publish("count", &["1", "2", "3"]);
        let topic = h.topic("count");
        assert_eq!((topic.first_seq, topic.last_seq, topic.bytes), (2, 3, 2));
        h.create_topic("bytes", TopicConfig { bytes_max: Some(5), ..TopicConfig::default() });
        h.publish("bytes", &["aaa", "bbb", "cc"]);
        let topic = h.topic("bytes");
        assert_eq!((topic.first_seq, topic.bytes), (2, 5));
    }

    /// A batch is one record: trimming part of it keeps the record and its later messages, and
    /// trimming its last message removes the record.
    #[test]
    fn trimming_part_of_a_batch_keeps_the_rest_readable() {
        let mut h = Harness::new();
        h.create_topic("t", TopicConfig { messages_max: Some(2), ..TopicConfig::default() });
        h.publish("t", &["a", "bb", "ccc"]);
        let topic = h.topic("t");
        assert_eq!((topic.first_seq, topic.bytes), (2, 5));
        let read = |h: &Harness| -> Vec<(u64, String)> {
            let topic = h.topic("t");
            crate::query::read(h.machine.store(), &topic, 1, 10, u64::MAX)
                .unwrap()
                .into_iter()
                .map(|(seq, m)| (seq, String::from_utf8(m.payload.to_vec()).unwrap()))
                .collect()
        };
        assert_eq!(read(&h), [(2, "bb".into()), (3, "ccc".into())], "from inside the first batch");
        assert_eq!(h.machine.store().len(Table::Messages), 1);
        h.publish("t", &["d"]);
        assert_eq!(h.machine.store().len(Table::Messages), 2, "the first batch still holds message 3");
        h.publish("t", &["e"]);
        assert_eq!(h.machine.store().len(Table::Messages), 2, "the first batch is gone with message 3");
        assert_eq!(read(&h), [(4, "d".into()), (5, "e".into())]);
        assert_eq!(h.topic("t").bytes, 2);
    }

    #[test]
    fn age_limits_trim_on_pulses() {
        let mut h = Harness::new();
        h.create_topic("t", TopicConfig { age_ms_max: Some(1000), ..TopicConfig::default() });
        h.publish("t", &["old"]);
        h.advance(600);
        h.publish("t", &["new"]);
        assert_eq!(crate::query::next_deadline(h.machine.store()).unwrap(), Some(h.now_ms + 400));
        h.advance(400);
        assert_eq!(h.pulse().trimmed, 1);
        assert_eq!(h.topic("t").first_seq, 2);
        assert_eq!(crate::query::next_deadline(h.machine.store()).unwrap(), Some(h.now_ms + 600));
        h.advance(600);
        h.pulse();
        assert_eq!(h.topic("t").messages(), 0);
        assert_eq!(crate::query::next_deadline(h.machine.store()).unwrap(), None);
    }

    #[test]
    fn work_queue_retention_deletes_what_everyone_has_consumed() {
        let mut h = Harness::new();
        h.create_topic("jobs", TopicConfig { retention: RetentionPolicy::WorkQueue, ..TopicConfig::default() });
        h.create_group("jobs", "workers", crate::command::GroupConfig::default());
        h.ok(Command::CreateSubscription {
            topic: "jobs".into(),
            name: "audit".into(),
            start: crate::command::StartPosition::Earliest,
        });
        h.publish("jobs", &["1", "2", "3"]);
        let grants = h.lease("jobs", "workers", "w", 3, 10_000).grants;
        h.ack("jobs", "workers", &[grants[1].token, grants[0].token]);
        assert_eq!(h.topic("jobs").first_seq, 1, "the subscription has not moved");
        h.ok(Command::Commit { topic: "jobs".into(), subscription: "audit".into(), seq: 3 });
        assert_eq!(h.topic("jobs").first_seq, 3, "message 3 is still leased");
        h.ack("jobs", "workers", &[grants[2].token]);
        assert_eq!(h.topic("jobs").messages(), 0);
    }

    #[test]
    fn delete_purges_through_pulses_and_frees_the_name() {
        let mut h = Harness::new();
        h.create_topic("t", TopicConfig::default());
        h.create_group("t", "g", crate::command::GroupConfig::default());
        h.publish("t", &["1", "2"]);
        h.lease("t", "g", "w", 1, 10_000);
        assert_eq!(h.ok(Command::DeleteTopic { name: "t".into() }), Output::TopicDeleted);
        assert!(matches!(h.err(Command::DeleteTopic { name: "t".into() }), MachineError::UnknownTopic(_)));
        assert_eq!(crate::query::next_deadline(h.machine.store()).unwrap(), Some(h.now_ms), "chores are due");
        h.create_topic("t", TopicConfig::default());
        assert_eq!(h.topic("t").id, 2);
        let report = h.pulse();
        assert!(report.purged >= 3, "{report:?}");
        let store = h.machine.store();
        for table in [
            Table::Messages,
            Table::Pending,
            Table::Leases,
            Table::FreshBatches,
            Table::Chores,
            Table::Groups,
            Table::Consumers,
        ] {
            assert_eq!(store.len(table), 0, "{table:?} keeps data of the deleted topic");
        }
    }

    #[test]
    fn an_update_changes_limits_and_trims_at_once_but_not_the_policy() {
        let mut h = Harness::new();
        h.create_topic("t", TopicConfig::default());
        h.publish("t", &["1", "2", "3", "4", "5"]);
        let tighter = TopicConfig { messages_max: Some(2), ..TopicConfig::default() };
        assert_eq!(h.ok(Command::UpdateTopic { name: "t".into(), config: tighter.clone() }), Output::TopicUpdated);
        let topic = h.topic("t");
        assert_eq!((topic.first_seq, topic.messages(), topic.config), (4, 2, tighter));
        let work_queue = TopicConfig { retention: RetentionPolicy::WorkQueue, ..TopicConfig::default() };
        let refused = h.err(Command::UpdateTopic { name: "t".into(), config: work_queue });
        assert!(matches!(refused, MachineError::InvalidArgument(_)), "{refused:?}");
    }
}
