//! Key layouts of every table, built here and parsed here: no call site slices a key. Numbers are
//! big-endian so byte order is numeric order; a variable field followed by more fields carries a
//! u16 length prefix so no key is a prefix of another. `docs/design.md` lists the same layouts.

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

/// Reads a key field by field, as [`KeyBuf`] wrote it. A key too short for its layout is a
/// damaged store: a `StoreError`, never a panic.
struct KeyReader<'k> {
    key: &'k [u8],
    at: usize,
}

impl<'k> KeyReader<'k> {
    fn new(key: &'k [u8]) -> KeyReader<'k> {
        KeyReader { key, at: 0 }
    }

    fn bytes(&mut self, len: usize) -> Result<&'k [u8], StoreError> {
        let field = self.key.get(self.at..self.at + len).ok_or_else(|| corrupt(self.key, self.at))?;
        self.at += len;
        Ok(field)
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.bytes(8)?.try_into().expect("8 bytes")))
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.bytes(1)?[0])
    }

    fn prefixed(&mut self) -> Result<&'k [u8], StoreError> {
        let len = u16::from_be_bytes(self.bytes(2)?.try_into().expect("2 bytes"));
        self.bytes(usize::from(len))
    }

    /// What is left: a trailing variable field.
    fn tail(self) -> &'k [u8] {
        &self.key[self.at..]
    }
}

fn corrupt(key: &[u8], at: usize) -> StoreError {
    StoreError::new(format!("corrupt key: too short at byte {at} in {key:?}"))
}

/// (id, u64): a pending record's (group id, seq), a lease batch's (group id, last token), a
/// message batch's (topic id, seq of its last message).
pub(crate) fn parse_pair(key: &[u8]) -> Result<(u64, u64), StoreError> {
    let mut key = KeyReader::new(key);
    Ok((key.u64()?, key.u64()?))
}

/// A deadlines key: (deadline ms, group id, last token of the batch).
pub(crate) fn parse_deadline(key: &[u8]) -> Result<(u64, u64, u64), StoreError> {
    let mut key = KeyReader::new(key);
    Ok((key.u64()?, key.u64()?, key.u64()?))
}

/// The leading time of a deadlines or age-deadlines key.
pub(crate) fn parse_time(key: &[u8]) -> Result<u64, StoreError> {
    KeyReader::new(key).u64()
}

/// An age-deadlines key: (deadline ms, topic id).
pub(crate) fn parse_age_deadline(key: &[u8]) -> Result<(u64, u64), StoreError> {
    let mut key = KeyReader::new(key);
    Ok((key.u64()?, key.u64()?))
}

/// A ready key: (group id, available ms, seq).
pub(crate) fn parse_ready(key: &[u8]) -> Result<(u64, u64, u64), StoreError> {
    let mut key = KeyReader::new(key);
    Ok((key.u64()?, key.u64()?, key.u64()?))
}

/// A key-waits key: (group id, key, seq).
pub(crate) fn parse_key_wait(key: &[u8]) -> Result<(u64, &[u8], u64), StoreError> {
    let mut key = KeyReader::new(key);
    Ok((key.u64()?, key.prefixed()?, key.u64()?))
}

/// A dedup-expiry key: (expiry ms, the dedup key it expires).
pub(crate) fn parse_dedup_expiry(key: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    let mut key = KeyReader::new(key);
    Ok((key.u64()?, key.tail()))
}

/// A holder-leases key: (user, group id, last token of the batch).
pub(crate) fn parse_holder_lease(key: &[u8]) -> Result<(&[u8], u64, u64), StoreError> {
    let mut key = KeyReader::new(key);
    Ok((key.prefixed()?, key.u64()?, key.u64()?))
}

/// A chores key: (kind, id).
pub(crate) struct ChoreKey;

impl ChoreKey {
    pub(crate) fn parse(key: &[u8]) -> Result<(u8, u64), StoreError> {
        let mut key = KeyReader::new(key);
        Ok((key.u8()?, key.u64()?))
    }
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
/// A producer's head on a topic: a prefix of its dedup keys, so no dedup range holds it.
pub(crate) fn producer_head(topic_id: u64, producer: &str) -> Vec<u8> {
    KeyBuf::new().u64(topic_id).prefixed(producer.as_bytes()).done()
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
        assert_eq!(parse_key_wait(&short).unwrap(), (1, &b"a"[..], 1));
    }

    #[test]
    fn every_layout_parses_what_it_builds() {
        assert_eq!(parse_pair(&pair(3, 4)).unwrap(), (3, 4));
        assert_eq!(parse_deadline(&deadline(5, 6, 7)).unwrap(), (5, 6, 7));
        assert_eq!(parse_time(&deadline(5, 6, 7)).unwrap(), 5);
        assert_eq!(parse_age_deadline(&age_deadline(8, 9)).unwrap(), (8, 9));
        assert_eq!(parse_ready(&ready(1, 2, 3)).unwrap(), (1, 2, 3));
        let dedup_key = dedup(1, "p", 2);
        assert_eq!(parse_dedup_expiry(&dedup_expiry(9, &dedup_key)).unwrap(), (9, &dedup_key[..]));
        assert_eq!(parse_holder_lease(&holder_lease("alice", 4, 5)).unwrap(), (&b"alice"[..], 4, 5));
        assert_eq!(ChoreKey::parse(&chore(2, 11)).unwrap(), (2, 11));
    }

    proptest::proptest! {
        #[test]
        fn any_key_parses_back_to_its_fields(
            a in proptest::prelude::any::<u64>(),
            b in proptest::prelude::any::<u64>(),
            c in proptest::prelude::any::<u64>(),
            name in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            proptest::prop_assert_eq!(parse_pair(&pair(a, b)).unwrap(), (a, b));
            proptest::prop_assert_eq!(parse_deadline(&deadline(a, b, c)).unwrap(), (a, b, c));
            proptest::prop_assert_eq!(parse_ready(&ready(a, b, c)).unwrap(), (a, b, c));
            proptest::prop_assert_eq!(parse_age_deadline(&age_deadline(a, b)).unwrap(), (a, b));
            let wait = key_wait(a, &name, b);
            proptest::prop_assert_eq!(parse_key_wait(&wait).unwrap(), (a, &name[..], b));
            proptest::prop_assert_eq!(ChoreKey::parse(&chore(c as u8, a)).unwrap(), (c as u8, a));
        }

        #[test]
        fn no_truncated_key_parses(a in proptest::prelude::any::<u64>(), cut in 0usize..16) {
            let key = pair(a, a);
            proptest::prop_assert!(parse_pair(&key[..cut]).is_err());
        }
    }

    #[test]
    fn short_keys_are_errors() {
        assert!(parse_pair(&[1, 2, 3]).is_err());
        assert!(parse_key_wait(&KeyBuf::new().u64(1).u8(0).u8(9).done()).is_err(), "a length past the end");
        assert!(ChoreKey::parse(&[4]).is_err());
    }
}
