//! Metadata values as redb stores them: the value, then a CRC-32 of its key and the value. redb
//! keeps page checksums but does not check them on every read, and a flipped bit in a vote or an
//! applied index would be taken for the truth: a broker that misread its vote could vote twice in
//! a term. A value that fails its checksum is [`MetaDamaged`], never its bytes.

/// Bytes after each value: its checksum.
const CHECKSUM_BYTES: usize = 4;

/// A metadata value that fails its checksum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the metadata value under {key:?} is damaged: it fails its checksum")]
pub struct MetaDamaged {
    pub key: String,
}

fn checksum(key: &str, value: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&(key.len() as u32).to_le_bytes());
    hasher.update(key.as_bytes());
    hasher.update(value);
    hasher.finalize()
}

/// `value` as stored under `key`.
pub(super) fn seal(key: &str, value: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(value.len() + CHECKSUM_BYTES);
    stored.extend_from_slice(value);
    stored.extend_from_slice(&checksum(key, value).to_le_bytes());
    stored
}

/// The value stored under `key` as `stored`, if its checksum holds.
pub(super) fn unseal<'v>(key: &str, stored: &'v [u8]) -> Result<&'v [u8], MetaDamaged> {
    let damaged = || MetaDamaged { key: key.to_owned() };
    let split = stored.len().checked_sub(CHECKSUM_BYTES).ok_or_else(damaged)?;
    let (value, crc) = stored.split_at(split);
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if checksum(key, value) == crc { Ok(value) } else { Err(damaged()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A value comes back as sealed; any flipped bit, or the value under another key, fails.
        #[test]
        fn a_sealed_value_round_trips_and_any_flip_fails(value in prop::collection::vec(any::<u8>(), 0..64), bit in any::<prop::sample::Index>()) {
            let stored = seal("vote", &value);
            prop_assert_eq!(unseal("vote", &stored), Ok(value.as_slice()));
            prop_assert!(unseal("purged", &stored).is_err());
            let mut flipped = stored.clone();
            let bit = bit.index(flipped.len() * 8);
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(unseal("vote", &flipped).is_err());
        }
    }
}
