//! Key layouts of every table. Numbers are big-endian so byte order is numeric order; a variable
//! field followed by more fields carries a u16 length prefix so no key is a prefix of another.
//! `docs/design.md` lists the same layouts.

use crate::store::StoreError;

/// Builds a key field by field.
#[derive(Debug, Default)]
pub(crate) struct KeyBuf(Vec<u8>);

impl KeyBuf {
    pub(crate) fn new() -> KeyBuf {
        KeyBuf(Vec::with_capacity(32))
    }
    pub(crate) fn u64(mut self, value: u64) -> KeyBuf {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }
    pub(crate) fn u8(mut self, value: u8) -> KeyBuf {
        self.0.push(value);
        self
    }
    /// A trailing variable field: no length prefix, so prefix scans over it work.
    pub(crate) fn tail(mut self, bytes: &[u8]) -> KeyBuf {
        self.0.extend_from_slice(bytes);
        self
    }
    /// A variable field followed by more fields.
    pub(crate) fn prefixed(mut self, bytes: &[u8]) -> KeyBuf {
        let len = u16::try_from(bytes.len()).expect("key fields are bounded by limits far below u16::MAX");
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }
    pub(crate) fn done(self) -> Vec<u8> {
        self.0
    }
}

/// Reads the big-endian u64 at `at`.
pub(crate) fn read_u64(key: &[u8], at: usize) -> Result<u64, StoreError> {
    key.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::new(format!("corrupt key: no u64 at {at} in {key:?}")))
}

pub(crate) const META: &[u8] = b"meta";

pub(crate) fn id(id: u64) -> Vec<u8> {
    KeyBuf::new().u64(id).done()
}
pub(crate) fn message(topic_id: u64, seq: u64) -> Vec<u8> {
    KeyBuf::new().u64(topic_id).u64(seq).done()
}
pub(crate) fn dedup(topic_id: u64, producer: &str, producer_seq: u64) -> Vec<u8> {
    KeyBuf::new().u64(topic_id).prefixed(producer.as_bytes()).u64(producer_seq).done()
}
/// The dedup expiry key is the expiry time followed by the dedup key itself.
pub(crate) fn dedup_expiry(expire_ms: u64, dedup_key: &[u8]) -> Vec<u8> {
    KeyBuf::new().u64(expire_ms).tail(dedup_key).done()
}
pub(crate) fn age_deadline(deadline_ms: u64, topic_id: u64) -> Vec<u8> {
    KeyBuf::new().u64(deadline_ms).u64(topic_id).done()
}
/// (parent id, name): group and subscription names within a topic.
pub(crate) fn child_name(parent_id: u64, name: &str) -> Vec<u8> {
    KeyBuf::new().u64(parent_id).tail(name.as_bytes()).done()
}
/// (group id, seq) for pending records, or (group id, last token) for lease batches.
pub(crate) fn pair(first: u64, second: u64) -> Vec<u8> {
    KeyBuf::new().u64(first).u64(second).done()
}
pub(crate) fn ready(group_id: u64, available_ms: u64, seq: u64) -> Vec<u8> {
    KeyBuf::new().u64(group_id).u64(available_ms).u64(seq).done()
}
pub(crate) fn deadline(deadline_ms: u64, group_id: u64, last_token: u64) -> Vec<u8> {
    KeyBuf::new().u64(deadline_ms).u64(group_id).u64(last_token).done()
}
pub(crate) fn key_lock(group_id: u64, key: &[u8]) -> Vec<u8> {
    KeyBuf::new().u64(group_id).tail(key).done()
}
pub(crate) fn key_wait_prefix(group_id: u64, key: &[u8]) -> Vec<u8> {
    KeyBuf::new().u64(group_id).prefixed(key).done()
}
pub(crate) fn key_wait(group_id: u64, key: &[u8], seq: u64) -> Vec<u8> {
    KeyBuf::new().u64(group_id).prefixed(key).u64(seq).done()
}
/// (kind, id) of a topic or group, for its owner.
pub(crate) fn owned(kind: u8, id: u64) -> Vec<u8> {
    KeyBuf::new().u8(kind).u64(id).done()
}
pub(crate) fn holder_prefix(user: &str) -> Vec<u8> {
    KeyBuf::new().prefixed(user.as_bytes()).done()
}
pub(crate) fn holder_lease(user: &str, group_id: u64, last_token: u64) -> Vec<u8> {
    KeyBuf::new().prefixed(user.as_bytes()).u64(group_id).u64(last_token).done()
}
pub(crate) fn chore(kind: u8, id: u64) -> Vec<u8> {
    KeyBuf::new().u8(kind).u64(id).done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_order_is_byte_order() {
        assert!(message(1, 255) < message(1, 256));
        assert!(message(1, u64::MAX) < message(2, 0));
        assert!(ready(3, 10, 99) < ready(3, 11, 1));
        assert!(deadline(5, 9, 9) < deadline(6, 0, 0));
    }

    #[test]
    fn prefixed_fields_keep_keys_apart() {
        // Without the length prefix, key "a" + seq could collide with key "a\0..." + seq.
        let short = key_wait(1, b"a", 1);
        let long = key_wait(1, b"a\0\0\0\0\0\0\0\0", 1);
        assert!(!long.starts_with(&key_wait_prefix(1, b"a")));
        assert!(short.starts_with(&key_wait_prefix(1, b"a")));
        assert_eq!(read_u64(&short, short.len() - 8).unwrap(), 1);
    }

    #[test]
    fn read_u64_rejects_short_keys() {
        assert!(read_u64(&[1, 2, 3], 0).is_err());
    }
}
