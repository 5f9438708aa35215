//! Limits on replicated state. Every broker must apply them identically, so they are constants and
//! not configuration: changing one changes what `apply` computes and is a state-machine upgrade.
//! Runtime limits (connections, in-flight requests, frame size) live in the broker and protocol.

/// Longest topic, group or subscription name, in bytes.
pub const NAME_BYTES_MAX: usize = 128;
/// Longest producer id, in bytes.
pub const PRODUCER_ID_BYTES_MAX: usize = 128;
/// Longest message key, in bytes.
pub const KEY_BYTES_MAX: usize = 256;
/// Most headers on one message.
pub const HEADERS_MAX: usize = 32;
/// Longest header name, in bytes.
pub const HEADER_NAME_BYTES_MAX: usize = 128;
/// Longest header value, in bytes.
pub const HEADER_VALUE_BYTES_MAX: usize = 4 * 1024;
/// Largest payload of one message. Stays well under the 8 MiB default frame.
pub const PAYLOAD_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most messages in one publish command.
pub const PUBLISH_MESSAGES_MAX: usize = 4096;

/// Most messages one lease command may grant.
pub const LEASE_COUNT_MAX: u32 = 1024;
/// Shortest lease a worker may ask for.
pub const LEASE_MS_MIN: u64 = 100;
/// Longest lease a worker may ask for (12 hours, as SQS's visibility timeout).
pub const LEASE_MS_MAX: u64 = 12 * 60 * 60 * 1000;
/// Longest nack delay.
pub const NACK_DELAY_MS_MAX: u64 = LEASE_MS_MAX;
/// Most leases one consumer may hold in one group at once.
pub const LEASES_PER_CONSUMER_MAX: u32 = 8192;
/// Most tokens in one ack, nack or extend command.
pub const SETTLE_TOKENS_MAX: usize = 4096;
/// Most never-delivered messages one lease command examines, so a lease is bounded work even when
/// many messages are delayed or wait behind a busy key.
pub const LEASE_SCAN_MAX: usize = 4096;

/// Most lease tokens one pulse examines for expiry, give or take the rest of one lease batch; the
/// rest wait for the next pulse.
pub const PULSE_EXPIRIES_MAX: usize = 4096;
/// Most keys one pulse purges for deleted topics and groups.
pub const PULSE_PURGE_KEYS_MAX: usize = 8192;
/// Most messages one command trims by retention; further trimming is left as a chore for pulses.
pub const TRIM_MESSAGES_MAX: usize = 4096;
/// Most expired idempotency records dropped per command.
pub const DEDUP_EXPIRIES_MAX: usize = 256;

/// Most topics in the cluster.
pub const TOPICS_MAX: usize = 10_000;
/// Messages one redrive moves at most.
pub const REDRIVE_MESSAGES_MAX: usize = 1024;
/// Most work groups on one topic.
pub const GROUPS_PER_TOPIC_MAX: usize = 256;
/// Most durable subscriptions on one topic.
pub const SUBSCRIPTIONS_PER_TOPIC_MAX: usize = 1024;

/// Most users in the cluster.
pub const USERS_MAX: u64 = 10_000;
/// Most permissions one user holds.
pub const PERMISSIONS_PER_USER_MAX: usize = 64;
/// Longest stored password hash (an argon2 PHC string is about 100 bytes).
pub const PASSWORD_HASH_BYTES_MAX: usize = 256;
/// Messages the audit topic keeps; older records are trimmed.
pub const AUDIT_MESSAGES_MAX: u64 = 100_000;

/// Default idempotency window for producer ids.
pub const DEDUP_WINDOW_MS_DEFAULT: u64 = 2 * 60 * 1000;
/// How long a topic remembers a producer's last batch, for its order, after that batch: a
/// producer silent for longer starts a new run at sequence 1 (the client library does so after
/// half of this).
pub const PRODUCER_IDLE_MS_MAX: u64 = 10 * 60 * 1000;
/// Longest idempotency window.
pub const DEDUP_WINDOW_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Default lease length of a work group.
pub const LEASE_MS_DEFAULT: u64 = 30_000;

/// Most entries a listing query returns.
pub const LIST_MAX: usize = 1000;

const _: () = assert!(LEASE_MS_MIN < LEASE_MS_DEFAULT && LEASE_MS_DEFAULT <= LEASE_MS_MAX);
const _: () = assert!(LEASE_COUNT_MAX as usize <= LEASE_SCAN_MAX);
const _: () = assert!(LEASE_COUNT_MAX <= LEASES_PER_CONSUMER_MAX);
const _: () = assert!(DEDUP_WINDOW_MS_DEFAULT <= DEDUP_WINDOW_MS_MAX);
const _: () = assert!(
    PAYLOAD_BYTES_MAX + HEADERS_MAX * (HEADER_NAME_BYTES_MAX + HEADER_VALUE_BYTES_MAX) + KEY_BYTES_MAX
        < 8 * 1024 * 1024
);
