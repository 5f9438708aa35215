//! Wire limits shared by brokers and clients. Limits on replicated state live in the state
//! machine's `limits`; runtime limits of a broker live in its config.

/// The protocol version a Hello must carry.
pub const PROTOCOL_VERSION: u32 = 1;
/// Length of the big-endian frame length prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;
/// Default largest frame, excluding its length prefix.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024;
/// The largest frame any configuration may allow: the prefix is a u32, and a peer must not be
/// able to make a broker buffer more than this for one frame.
pub const FRAME_BYTES_MAX_LIMIT: usize = 64 * 1024 * 1024;

/// The longest producer id a publish may carry.
pub const PRODUCER_ID_BYTES_MAX: usize = 128;
/// How long a topic remembers a producer's last batch, for its order: a producer silent for
/// longer must start a new run at sequence 1.
pub const PRODUCER_IDLE_MS_MAX: u64 = 10 * 60 * 1000;

const _: () = assert!(FRAME_BYTES_MAX_DEFAULT <= FRAME_BYTES_MAX_LIMIT);
const _: () = assert!(FRAME_BYTES_MAX_LIMIT <= u32::MAX as usize);
