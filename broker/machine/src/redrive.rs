//! Dead letters and their way back. A group's exhausted message goes to its dead-letter topic
//! with its key, its headers and five more ([`HEADERS`]) that say where it came from and why.
//! A redrive takes messages from the head of a dead-letter topic, appends each to the topic it
//! came from (its key and its own headers, without the five), and deletes them from the
//! dead-letter topic, in one command: nothing is moved twice or lost between the two.

use std::collections::BTreeMap;

use crate::command::{Header, NewMessage};
use crate::ctx::{Ctx, Res};
use crate::limits::{REDRIVE_MESSAGES_MAX, TRIM_MESSAGES_MAX};
use crate::outcome::{MachineError, Output, Redriven};
use crate::records::MessageRecord;
use crate::store::Store;
use crate::{messages, query, retention, topic};

/// The topic a dead letter came from.
pub const ORIGIN_TOPIC: &str = "chorus-origin-topic";
/// Its sequence there.
pub const ORIGIN_SEQ: &str = "chorus-origin-seq";
/// The group that gave up on it.
pub const ORIGIN_GROUP: &str = "chorus-origin-group";
/// Why: `nacked` or `expired`.
pub const DEAD_REASON: &str = "chorus-dead-reason";
/// How often it was delivered.
pub const DELIVERIES: &str = "chorus-deliveries";
/// The headers dead-lettering adds, in the order it adds them, after the message's own.
pub const HEADERS: [&str; 5] = [ORIGIN_TOPIC, ORIGIN_SEQ, ORIGIN_GROUP, DEAD_REASON, DELIVERIES];

const _: () = assert!(REDRIVE_MESSAGES_MAX <= TRIM_MESSAGES_MAX, "a redrive deletes what it moved in one trim");

/// Moves up to `count_max` messages from the head of `topic_name` back to their origin topics.
/// Stops before the first message it cannot move (no origin header, or the origin is gone):
/// that one stays at the head, and the answer says why.
pub(crate) fn redrive<S: Store>(ctx: &mut Ctx<'_, S>, topic_name: &str, count_max: u32) -> Res<Output> {
    if count_max == 0 || count_max as usize > REDRIVE_MESSAGES_MAX {
        let why = format!("redrive 1 to {REDRIVE_MESSAGES_MAX} messages, not {count_max}");
        return Err(MachineError::InvalidArgument(why).into());
    }
    let mut dead_letters = ctx.topic(topic_name)?;
    let count = count_max as usize;
    let taken = messages::scan(&*ctx.store, dead_letters.id, dead_letters.first_seq, count, count)?;
    let mut by_origin: BTreeMap<String, Vec<NewMessage>> = BTreeMap::new();
    let mut redriven = Redriven::default();
    let mut moved_through = None;
    for (seq, message) in taken {
        let origin = match origin_of(&message) {
            Some(origin) if origin != topic_name && query::topic(&*ctx.store, &origin)?.is_some() => origin,
            Some(origin) => {
                redriven.stopped = Some((seq, format!("its origin topic {origin:?} does not exist")));
                break;
            }
            None => {
                redriven.stopped = Some((seq, format!("it has no {ORIGIN_TOPIC} header")));
                break;
            }
        };
        by_origin.entry(origin).or_default().push(restored(message));
        moved_through = Some(seq);
    }
    for (origin, messages) in by_origin {
        let mut target = ctx.topic(&origin)?;
        topic::append(ctx, &mut target, &messages)?;
        retention::trim(ctx, &mut target, None)?;
        ctx.save_topic(&target)?;
        redriven.moved.push((origin, messages.len() as u64));
    }
    if let Some(last) = moved_through {
        retention::trim(ctx, &mut dead_letters, Some(last + 1))?;
        assert_eq!(dead_letters.first_seq, last + 1, "a redrive deletes every message it moved");
        ctx.save_topic(&dead_letters)?;
    }
    Ok(Output::Redriven(redriven))
}

fn origin_of(message: &MessageRecord) -> Option<String> {
    let header = message.headers.iter().rev().find(|header| header.name == ORIGIN_TOPIC)?;
    String::from_utf8(header.value.to_vec()).ok()
}

/// The message as it was published: its key and its own headers, without dead-lettering's.
fn restored(message: MessageRecord) -> NewMessage {
    let own = message.headers.len().saturating_sub(HEADERS.len());
    let added = &message.headers[own..];
    let headers: Vec<Header> = match added.iter().map(|h| h.name.as_str()).eq(HEADERS) {
        true => message.headers[..own].to_vec(),
        false => message.headers.into_iter().filter(|h| !HEADERS.contains(&h.name.as_str())).collect(),
    };
    NewMessage { key: message.key, headers, payload: message.payload, not_before_ms: None }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::command::{Command, GroupConfig, TopicConfig};
    use crate::testkit::Harness;

    /// "orders" with a group that dead-letters to "dlq" on the first nack; `payloads` published
    /// (the first with a key and a header) and each nacked once, so all are dead letters.
    fn dead_letters(payloads: &[&str]) -> Harness {
        let mut h = Harness::new();
        h.create_topic("orders", TopicConfig::default());
        h.create_topic("dlq", TopicConfig::default());
        let config = GroupConfig { deliveries_max: 1, dead_letter_topic: Some("dlq".into()), ..GroupConfig::default() };
        h.create_group("orders", "billing", config);
        let mut messages: Vec<NewMessage> = payloads
            .iter()
            .map(|p| NewMessage {
                key: None,
                headers: vec![],
                payload: Bytes::from(p.to_string()),
                not_before_ms: None,
            })
            .collect();
        messages[0].key = Some(Bytes::from_static(b"k"));
        messages[0].headers = vec![Header { name: "trace".into(), value: Bytes::from_static(b"t1") }];
        h.publish_messages("orders", messages);
        let tokens: Vec<u64> =
            h.lease("orders", "billing", "w", payloads.len() as u32, 5_000).grants.iter().map(|g| g.token).collect();
        h.nack("orders", "billing", &tokens, 0);
        assert_eq!(h.topic("dlq").messages(), payloads.len() as u64);
        h
    }

    fn stored(h: &Harness, topic: &str, seq: u64) -> MessageRecord {
        messages::get(h.machine.store(), &h.topic(topic), seq).unwrap().expect("a stored message")
    }

    #[test]
    fn a_redrive_moves_dead_letters_home_with_their_key_and_own_headers() {
        let mut h = dead_letters(&["a", "b", "c"]);
        let redrive = Command::Redrive { topic: "dlq".into(), count_max: 2 };
        let moved = Redriven { moved: vec![("orders".into(), 2)], stopped: None };
        assert_eq!(h.ok(redrive), Output::Redriven(moved));
        let (dlq, orders) = (h.topic("dlq"), h.topic("orders"));
        assert_eq!((dlq.first_seq, dlq.messages()), (3, 1), "the two moved left the dead-letter topic");
        assert_eq!(orders.last_seq, 5, "appended to their origin");
        let home = stored(&h, "orders", 4);
        assert_eq!(home.payload, Bytes::from_static(b"a"));
        assert_eq!(home.key, Some(Bytes::from_static(b"k")));
        assert_eq!(home.headers, vec![Header { name: "trace".into(), value: Bytes::from_static(b"t1") }]);
        assert_eq!(stored(&h, "orders", 5).payload, Bytes::from_static(b"b"));
        let leased = h.lease("orders", "billing", "w", 5, 5_000);
        assert_eq!(leased.grants.len(), 2, "the group sees them again");
    }

    #[test]
    fn a_redrive_stops_before_a_message_it_cannot_move() {
        let mut h = dead_letters(&["a"]);
        h.publish("dlq", &["stray"]);
        h.publish("dlq", &["after"]);
        let redriven = h.ok(Command::Redrive { topic: "dlq".into(), count_max: 10 });
        let expected = Redriven {
            moved: vec![("orders".into(), 1)],
            stopped: Some((2, format!("it has no {ORIGIN_TOPIC} header"))),
        };
        assert_eq!(redriven, Output::Redriven(expected));
        assert_eq!(h.topic("dlq").first_seq, 2, "the stray stays at the head, and what follows it");
        assert!(matches!(
            h.err(Command::Redrive { topic: "dlq".into(), count_max: 0 }),
            MachineError::InvalidArgument(_)
        ));
    }
}
