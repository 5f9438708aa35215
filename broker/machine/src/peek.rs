//! Peek: a work group's unfinished messages, in sequence order, without consuming them. Each is
//! ready, delayed, leased (to whom, until when) or waiting behind its key. A query: any broker
//! answers it from its applied state.

use std::collections::BTreeMap;

use crate::keys;
use crate::limits::LEASE_SCAN_MAX;
use crate::messages;
use crate::records::{self, GroupRecord, LeaseBatchRecord, MessageRecord, PendingRecord, PendingState, TopicRecord};
use crate::store::{StoreError, StoreRead, Table};

/// Where a peeked message stands in its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeekState {
    Ready,
    Delayed { available_ms: u64 },
    Leased { consumer: String, deadline_ms: u64 },
    WaitingForKey,
}

/// One unfinished message of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked {
    pub seq: u64,
    pub message: MessageRecord,
    pub state: PeekState,
    /// Deliveries so far, the current lease included.
    pub deliveries: u32,
}

/// How many messages a peek shows at most, and how many of their bytes (always one message).
#[derive(Debug, Clone, Copy)]
pub struct PeekLimit {
    pub messages: usize,
    pub bytes: u64,
}

/// Up to `limit` of the group's unfinished messages after `after_seq`, at `now_ms`: those it has
/// examined (pending records and live fresh leases) and those it has not reached yet. Leases are
/// found among the group's first [`LEASE_SCAN_MAX`] lease batches.
pub fn peek(
    store: &impl StoreRead,
    topic: &TopicRecord,
    group: &GroupRecord,
    after_seq: u64,
    limit: PeekLimit,
    now_ms: u64,
) -> Result<Vec<Peeked>, StoreError> {
    let PeekLimit { messages: limit, bytes: mut bytes_left } = limit;
    let from = after_seq.saturating_add(1).max(topic.first_seq);
    let batches = lease_batches(store, group.id)?;
    let mut found: BTreeMap<u64, (PeekState, u32)> = BTreeMap::new();
    for batch in &batches {
        for (_, seq) in batch.slots().filter(|(token, seq)| *seq >= from && batch.is_fresh(*token)) {
            let leased = PeekState::Leased { consumer: batch.consumer.clone(), deadline_ms: batch.fresh_deadline_ms };
            found.insert(seq, (leased, 1));
        }
    }
    let end = keys::pair(group.id.saturating_add(1), 0);
    for (key, value) in store.range(Table::Pending, &keys::pair(group.id, from), Some(&end), limit)? {
        let (_, seq) = keys::parse_pair(&key)?;
        let pending: PendingRecord = records::decode(&value)?;
        let state = match pending.state {
            PendingState::Leased { token, deadline_ms } => {
                let consumer = batches.iter().find(|b| b.seq_of(token).is_some()).map(|b| b.consumer.clone());
                PeekState::Leased { consumer: consumer.unwrap_or_default(), deadline_ms }
            }
            PendingState::Ready { available_ms } if available_ms > now_ms => PeekState::Delayed { available_ms },
            PendingState::Ready { .. } => PeekState::Ready,
            PendingState::WaitingKey => PeekState::WaitingForKey,
        };
        found.insert(seq, (state, pending.deliveries));
    }
    let unexamined = from.max(group.next_seq)..=topic.last_seq;
    for seq in unexamined.take(limit) {
        found.insert(seq, (PeekState::Ready, 0));
    }
    let mut peeked = Vec::new();
    for (seq, (state, deliveries)) in found.into_iter().take(limit) {
        let Some(message) = messages::get(store, topic, seq)? else { continue };
        let size = crate::group::leased_bytes(&message);
        if !peeked.is_empty() && size > bytes_left {
            break;
        }
        bytes_left = bytes_left.saturating_sub(size);
        let state = match (state, message.not_before_ms) {
            (PeekState::Ready, Some(at)) if deliveries == 0 && at > now_ms => PeekState::Delayed { available_ms: at },
            (state, _) => state,
        };
        peeked.push(Peeked { seq, message, state, deliveries });
    }
    Ok(peeked)
}

fn lease_batches(store: &impl StoreRead, group_id: u64) -> Result<Vec<LeaseBatchRecord>, StoreError> {
    let end = keys::pair(group_id.saturating_add(1), 0);
    let found = store.range(Table::Leases, &keys::pair(group_id, 0), Some(&end), LEASE_SCAN_MAX)?;
    found.iter().map(|(_, value)| records::decode(value)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{GroupConfig, TopicConfig};
    use crate::testkit::Harness;

    #[test]
    fn a_peek_shows_each_unfinished_message_as_it_stands() {
        let mut h = Harness::new();
        h.create_topic("t", TopicConfig::default());
        h.create_group("t", "g", GroupConfig::default());
        h.publish("t", &["1", "2", "3", "4"]);
        let tokens: Vec<u64> = h.lease("t", "g", "w", 3, 5_000).grants.iter().map(|g| g.token).collect();
        h.ack("t", "g", &tokens[..1]);
        h.nack("t", "g", &tokens[1..2], 2_000);
        let (topic, group) = (h.topic("t"), h.group("t", "g"));
        let all = PeekLimit { messages: 10, bytes: u64::MAX };
        let peeked = peek(h.machine.store(), &topic, &group, 0, all, h.now_ms).unwrap();
        let seen: Vec<(u64, PeekState, u32)> = peeked.iter().map(|p| (p.seq, p.state.clone(), p.deliveries)).collect();
        assert_eq!(
            seen,
            vec![
                (2, PeekState::Delayed { available_ms: h.now_ms + 2_000 }, 1),
                (3, PeekState::Leased { consumer: "w".into(), deadline_ms: h.now_ms + 5_000 }, 1),
                (4, PeekState::Ready, 0),
            ],
            "1 is acked and gone"
        );
        assert_eq!(peeked[2].message.payload, bytes::Bytes::from_static(b"4"));
        let one = PeekLimit { messages: 1, bytes: u64::MAX };
        let after = peek(h.machine.store(), &topic, &group, 2, one, h.now_ms).unwrap();
        assert_eq!(after.iter().map(|p| p.seq).collect::<Vec<_>>(), [3], "after a seq, up to the limit");
        let few_bytes = PeekLimit { messages: 10, bytes: 1 };
        let first = peek(h.machine.store(), &topic, &group, 0, few_bytes, h.now_ms).unwrap();
        assert_eq!(first.iter().map(|p| p.seq).collect::<Vec<_>>(), [2], "one message, whatever the bytes");
        assert_eq!(h.lease("t", "g", "w2", 5, 5_000).grants.len(), 1, "peeking consumed nothing: 4 is still there");
    }
}
