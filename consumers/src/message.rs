//! Messages as the library hands them over: [`Message`] to publish, [`Delivered`] to consume.

use bytes::Bytes;
use chorus_protocol::pb;

/// A message to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub key: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    pub payload: Bytes,
    /// Work groups do not lease the message before this time (ms since the Unix epoch).
    pub not_before_ms: Option<u64>,
}

impl Message {
    pub fn new(payload: impl Into<Bytes>) -> Message {
        Message { payload: payload.into(), ..Message::default() }
    }

    pub fn key(mut self, key: impl Into<Bytes>) -> Message {
        self.key = Some(key.into());
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Message {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn not_before_ms(mut self, time_ms: u64) -> Message {
        self.not_before_ms = Some(time_ms);
        self
    }

    pub(crate) fn size(&self) -> usize {
        self.payload.len()
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
    }
}

impl From<Message> for pb::Message {
    fn from(message: Message) -> pb::Message {
        pb::Message {
            key: message.key,
            headers: message.headers.into_iter().map(|(name, value)| pb::Header { name, value }).collect(),
            payload: message.payload,
            not_before_ms: message.not_before_ms,
        }
    }
}

impl<T: Into<Bytes>> From<T> for Message {
    fn from(payload: T) -> Message {
        Message::new(payload)
    }
}

/// A message as a subscriber or worker receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Its sequence in the topic, dense from 1.
    pub seq: u64,
    /// With `batch_pos`, its place in the one order of all topics.
    pub log_index: u64,
    pub batch_pos: u32,
    /// When the leader committed it.
    pub time_ms: u64,
    pub key: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    pub payload: Bytes,
}

impl Delivered {
    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

impl From<pb::StoredMessage> for Delivered {
    fn from(message: pb::StoredMessage) -> Delivered {
        Delivered {
            seq: message.seq,
            log_index: message.log_index,
            batch_pos: message.batch_pos,
            time_ms: message.time_ms,
            key: message.key,
            headers: message.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            payload: message.payload,
        }
    }
}
