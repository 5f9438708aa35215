//! The message table: one record per publish, or per run of publishes to a topic within an entry
//! (a [`BatchRecord`]), under (topic id, the sequence of the batch's last message), so a publish
//! of many messages is one insert. A topic's records
//! cover its retained sequences without gaps, so the first record at or after a sequence holds
//! it. Trimming removes a record with its last message; until then a record may also hold
//! messages older than the topic's `first_seq`, which readers skip.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::command::{Header, NewMessage};
use crate::keys;
use crate::records::{self, MessageRecord, TopicRecord};
use crate::store::{Store, StoreError, StoreRead, Table};

/// The messages one publish, or one run of publishes in an entry, appended to a topic: their
/// batch positions are consecutive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BatchRecord {
    pub first_seq: u64,
    /// The Raft index of the entry that published it.
    pub log_index: u64,
    /// The first message's position among the messages its entry published.
    pub batch_pos: u32,
    pub time_ms: u64,
    /// Never empty: a publish carries at least one message.
    pub messages: Vec<StoredMessage>,
}

/// One message of a batch; the rest of its [`MessageRecord`] is the batch's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredMessage {
    pub not_before_ms: Option<u64>,
    pub key: Option<Bytes>,
    pub headers: Vec<Header>,
    pub payload: Bytes,
}

impl From<&NewMessage> for StoredMessage {
    fn from(message: &NewMessage) -> StoredMessage {
        StoredMessage {
            not_before_ms: message.not_before_ms,
            key: message.key.clone(),
            headers: message.headers.clone(),
            payload: message.payload.clone(),
        }
    }
}

impl StoredMessage {
    /// The bytes it counts against a topic's `bytes_max`, as [`MessageRecord::size`].
    pub fn size(&self) -> u64 {
        records::message_size(&self.payload, self.key.as_ref(), &self.headers)
    }
}

impl BatchRecord {
    pub fn last_seq(&self) -> u64 {
        assert!(!self.messages.is_empty(), "a batch holds at least one message");
        self.first_seq + self.messages.len() as u64 - 1
    }

    /// The stored message at `seq`, if this batch holds it.
    pub fn stored(&self, seq: u64) -> Option<&StoredMessage> {
        self.messages.get(usize::try_from(seq.checked_sub(self.first_seq)?).ok()?)
    }
}

/// A stored batch read in place: decoding borrows the payloads instead of copying them, so a
/// reader that wants a few messages of a large batch copies only those.
#[derive(Debug, Deserialize)]
struct BatchView<'a> {
    first_seq: u64,
    log_index: u64,
    batch_pos: u32,
    time_ms: u64,
    #[serde(borrow)]
    messages: Vec<MessageView<'a>>,
}

/// [`StoredMessage`] in place; the same encoding.
#[derive(Debug, Deserialize)]
struct MessageView<'a> {
    not_before_ms: Option<u64>,
    #[serde(borrow)]
    key: Option<&'a [u8]>,
    #[serde(borrow)]
    headers: Vec<HeaderView<'a>>,
    payload: &'a [u8],
}

/// [`Header`] in place.
#[derive(Debug, Deserialize)]
struct HeaderView<'a> {
    name: &'a str,
    value: &'a [u8],
}

impl BatchView<'_> {
    /// Saturating: a record is never empty, but a read must not panic on one.
    fn last_seq(&self) -> u64 {
        (self.first_seq + self.messages.len() as u64).saturating_sub(1)
    }

    /// The message at `seq`, copied out, if this batch holds it.
    fn message(&self, seq: u64) -> Option<MessageRecord> {
        let offset = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        let stored = self.messages.get(offset)?;
        Some(MessageRecord {
            log_index: self.log_index,
            batch_pos: self.batch_pos + u32::try_from(offset).expect("batches are bounded by limits"),
            time_ms: self.time_ms,
            not_before_ms: stored.not_before_ms,
            key: stored.key.map(Bytes::copy_from_slice),
            headers: stored
                .headers
                .iter()
                .map(|h| Header { name: h.name.to_owned(), value: Bytes::copy_from_slice(h.value) })
                .collect(),
            payload: Bytes::copy_from_slice(stored.payload),
        })
    }
}

/// Stores `batch` as one record.
pub(crate) fn put(store: &mut impl Store, topic_id: u64, batch: &BatchRecord) -> Result<(), StoreError> {
    store.put(Table::Messages, &keys::message(topic_id, batch.last_seq()), &records::encode(batch)?)
}

/// Removes the batch whose last message is `last_seq`.
pub(crate) fn remove(store: &mut impl Store, topic_id: u64, last_seq: u64) -> Result<(), StoreError> {
    store.delete(Table::Messages, &keys::message(topic_id, last_seq))
}

/// The raw record at or after `seq`: the batch that holds `seq`, when `seq` is stored.
fn record_at(store: &impl StoreRead, topic_id: u64, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let end = keys::message(topic_id.saturating_add(1), 0);
    Ok(store.range(Table::Messages, &keys::message(topic_id, seq), Some(&end), 1)?.pop().map(|(_, value)| value))
}

/// The batch holding `seq`, if it is stored.
pub(crate) fn batch_at(store: &impl StoreRead, topic_id: u64, seq: u64) -> Result<Option<BatchRecord>, StoreError> {
    let Some(value) = record_at(store, topic_id, seq)? else { return Ok(None) };
    let batch: BatchRecord = records::decode(&value)?;
    Ok((batch.first_seq <= seq).then_some(batch))
}

/// The message at `seq` of `topic`, if it is retained: a trimmed message may linger in its batch.
pub(crate) fn get(store: &impl StoreRead, topic: &TopicRecord, seq: u64) -> Result<Option<MessageRecord>, StoreError> {
    if seq < topic.first_seq {
        return Ok(None);
    }
    let Some(value) = record_at(store, topic.id, seq)? else { return Ok(None) };
    Ok(records::decode::<BatchView<'_>>(&value)?.message(seq))
}

/// Records one scan step fetches: a read usually needs one or two, and each may be large.
const SCAN_PAGE_BATCHES: usize = 4;

/// Up to `count_max` messages from `from_seq` on, in order, read from at most `batches_max`
/// records. The caller starts at or after the topic's `first_seq`.
pub(crate) fn scan(
    store: &impl StoreRead,
    topic_id: u64,
    from_seq: u64,
    count_max: usize,
    batches_max: usize,
) -> Result<Vec<(u64, MessageRecord)>, StoreError> {
    let end = keys::message(topic_id.saturating_add(1), 0);
    let mut next_seq = from_seq;
    let mut batches_left = batches_max;
    let mut found = Vec::new();
    while batches_left > 0 && found.len() < count_max {
        let page_len = batches_left.min(SCAN_PAGE_BATCHES);
        let page = store.range(Table::Messages, &keys::message(topic_id, next_seq), Some(&end), page_len)?;
        if page.is_empty() {
            break;
        }
        for (_, value) in &page {
            let batch: BatchView<'_> = records::decode(value)?;
            let wanted = count_max - found.len();
            let first = batch.first_seq.max(next_seq);
            found.extend((first..=batch.last_seq()).take(wanted).filter_map(|seq| Some((seq, batch.message(seq)?))));
            next_seq = batch.last_seq() + 1;
            batches_left -= 1;
            if found.len() == count_max {
                break;
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn batch(first_seq: u64, payloads: &[&'static str]) -> BatchRecord {
        let messages = payloads
            .iter()
            .map(|p| StoredMessage { not_before_ms: None, key: None, headers: vec![], payload: Bytes::from(*p) })
            .collect();
        BatchRecord { first_seq, log_index: first_seq * 10, batch_pos: 2, time_ms: 7, messages }
    }

    fn topic(id: u64, first_seq: u64) -> TopicRecord {
        TopicRecord {
            id,
            name: "t".into(),
            config: crate::command::TopicConfig::default(),
            created_ms: 0,
            first_seq,
            last_seq: 4,
            bytes: 0,
            groups: 0,
            subscriptions: 0,
            age_deadline_ms: None,
        }
    }

    fn store() -> MemStore {
        let mut store = MemStore::new();
        put(&mut store, 1, &batch(1, &["a", "b", "c"])).unwrap();
        put(&mut store, 1, &batch(4, &["d"])).unwrap();
        put(&mut store, 2, &batch(1, &["other"])).unwrap();
        store
    }

    #[test]
    fn a_message_is_found_in_the_batch_that_holds_it() {
        let store = store();
        let b = get(&store, &topic(1, 1), 2).unwrap().unwrap();
        assert_eq!((b.payload.as_ref(), b.log_index, b.batch_pos, b.time_ms), (b"b".as_ref(), 10, 3, 7));
        assert_eq!(get(&store, &topic(1, 1), 4).unwrap().unwrap().payload, Bytes::from("d"));
        assert!(get(&store, &topic(1, 1), 5).unwrap().is_none(), "past the topic's last message");
        assert!(get(&store, &topic(1, 1), 0).unwrap().is_none(), "before its first");
        assert!(get(&store, &topic(1, 3), 2).unwrap().is_none(), "trimmed, though its batch remains");
        assert_eq!(store.len(Table::Messages), 3);
    }

    /// Readers decode batches in place; what they read equals what was stored, field for field.
    #[test]
    fn the_in_place_view_reads_what_the_record_stored() {
        let mut store = MemStore::new();
        let mut stored = batch(1, &["plain", "full"]);
        stored.messages[1].not_before_ms = Some(99);
        stored.messages[1].key = Some(Bytes::from("k"));
        stored.messages[1].headers = vec![
            Header { name: "h1".into(), value: Bytes::from("v1") },
            Header { name: "h2".into(), value: Bytes::new() },
        ];
        put(&mut store, 1, &stored).unwrap();
        let expected = |seq: u64| {
            let message = stored.stored(seq).unwrap().clone();
            let batch_pos = stored.batch_pos + (seq - stored.first_seq) as u32;
            let (log_index, time_ms) = (stored.log_index, stored.time_ms);
            let StoredMessage { not_before_ms, key, headers, payload } = message;
            MessageRecord { log_index, batch_pos, time_ms, not_before_ms, key, headers, payload }
        };
        for seq in 1..=2 {
            assert_eq!(get(&store, &topic(1, 1), seq).unwrap(), Some(expected(seq)));
        }
        let scanned: Vec<_> = scan(&store, 1, 1, 10, 10).unwrap().into_iter().map(|(_, m)| m).collect();
        assert_eq!(scanned, [expected(1), expected(2)]);
    }

    #[test]
    fn a_scan_starts_mid_batch_and_stays_in_its_topic() {
        let store = store();
        let seqs = |from, count_max, batches_max| -> Vec<u64> {
            scan(&store, 1, from, count_max, batches_max).unwrap().into_iter().map(|(seq, _)| seq).collect()
        };
        assert_eq!(seqs(2, 10, 10), [2, 3, 4]);
        assert_eq!(seqs(1, 10, 1), [1, 2, 3], "one record");
        assert_eq!(seqs(1, 2, 10), [1, 2], "two messages");
        assert!(seqs(5, 10, 10).is_empty());
    }

    #[test]
    fn removing_a_batch_removes_all_of_it() {
        let mut store = store();
        remove(&mut store, 1, 3).unwrap();
        assert!(batch_at(&store, 1, 1).unwrap().is_none());
        assert_eq!(get(&store, &topic(1, 4), 4).unwrap().unwrap().payload, Bytes::from("d"));
    }
}
