//! What applying a command returns. Outcomes are part of the replicated result: every broker
//! computes the same ones, and the broker that proposed the entry sends them to the client.

use crate::records::MessageRecord;

/// The result of one command.
pub type Outcome = Result<Output, MachineError>;

/// What a redrive moved: how many messages went back to each origin topic, in name order; and,
/// if it stopped early, the sequence of the message it could not move, and why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Redriven {
    pub moved: Vec<(String, u64)>,
    pub stopped: Option<(u64, String)>,
}

/// Why a command changed nothing. These are answers, not failures of the machine: the same entry
/// yields the same error on every broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("unknown work group {0:?}")]
    UnknownGroup(String),
    #[error("unknown subscription {0:?}")]
    UnknownSubscription(String),
    #[error("lease token {0} is not a live lease")]
    StaleLease(u64),
    /// Something to create exists already, otherwise: the message says what differs.
    #[error("{0}")]
    Conflict(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("limit reached: {0}")]
    LimitReached(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// A producer's batch does not follow the last one stored from it: `behind`, it comes after a
    /// later one (it cannot be stored in order any more); otherwise an earlier one is missing.
    #[error("{}", out_of_order(producer, *sequence, *behind))]
    OutOfOrder { producer: String, sequence: u64, behind: bool },
}

fn out_of_order(producer: &str, sequence: u64, behind: bool) -> String {
    match behind {
        true => format!("batch {sequence} of producer {producer:?} comes after a later batch of it was stored"),
        false => format!(
            "batch {sequence} of producer {producer:?} does not follow the last one stored: send the earlier batches first"
        ),
    }
}

/// The successful result of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    TopicCreated {
        topic_id: u64,
        created: bool,
    },
    TopicDeleted,
    TopicUpdated,
    Published(Published),
    GroupCreated {
        group_id: u64,
        created: bool,
        next_seq: u64,
    },
    GroupDeleted,
    GroupUpdated,
    SubscriptionCreated {
        subscription_id: u64,
        created: bool,
        next_seq: u64,
    },
    SubscriptionDeleted,
    Committed {
        next_seq: u64,
    },
    /// Where a seek put a subscription's cursor.
    CursorMoved {
        next_seq: u64,
    },
    Redriven(Redriven),
    Leased(Leased),
    /// One result per token of an ack or nack, in order.
    Settled(Vec<Result<(), MachineError>>),
    /// One result per token of an extend, in order: the new deadline.
    Extended(Vec<Result<u64, MachineError>>),
    Pulsed(PulseReport),
    /// `created` is false for a bootstrap that found users already there.
    UserCreated {
        created: bool,
    },
    UserUpdated,
    UserDeleted,
    MembershipRecorded,
    /// The log index a state check marked.
    StateMarked {
        log_index: u64,
    },
}

/// An output of another kind than its command yields: a bug in the machine or the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the machine answered {got:?} where {expected} was due")]
pub struct OutputMismatch {
    pub expected: &'static str,
    pub got: Box<Output>,
}

/// Takes the one output a command yields: `$variant` with its fields as `$out`.
macro_rules! takers {
    ($($(#[$doc:meta])* $name:ident -> $out:ty = $variant:pat => $value:expr;)*) => {
        impl Output {
            $($(#[$doc])*
            pub fn $name(self) -> Result<$out, OutputMismatch> {
                match self {
                    $variant => Ok($value),
                    got => Err(OutputMismatch { expected: stringify!($name), got: Box::new(got) }),
                }
            })*
        }
    };
}

takers! {
    /// Of `MarkStateCheck`: the index it marked.
    state_marked -> u64 = Output::StateMarked { log_index } => log_index;
    /// Of `Publish`.
    published -> Published = Output::Published(published) => published;
    /// Of `Lease`.
    leased -> Leased = Output::Leased(leased) => leased;
    /// Of `Commit`: the subscription's next sequence.
    committed -> u64 = Output::Committed { next_seq } => next_seq;
    /// Of `Ack` and `Nack`.
    settled -> Vec<Result<(), MachineError>> = Output::Settled(results) => results;
    /// Of `Extend`.
    extended -> Vec<Result<u64, MachineError>> = Output::Extended(results) => results;
    /// Of `CreateSubscription`: its next sequence.
    subscription_created -> u64 = Output::SubscriptionCreated { next_seq, .. } => next_seq;
    /// Of `SeekSubscription`: where the cursor went.
    cursor_moved -> u64 = Output::CursorMoved { next_seq } => next_seq;
    /// Of `Redrive`.
    redriven -> Redriven = Output::Redriven(redriven) => redriven;
}

/// Where a publish landed. Its messages hold sequences `first_seq..first_seq + count` and batch
/// positions `batch_pos..batch_pos + count` of entry `log_index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub topic_id: u64,
    pub first_seq: u64,
    pub count: u32,
    pub log_index: u64,
    pub batch_pos: u32,
    /// The (producer, sequence) pair was seen before: these are the original placements and
    /// nothing was appended.
    pub duplicate: bool,
}

/// Messages granted by a lease.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Leased {
    pub grants: Vec<Grant>,
    /// When the group's next delayed message becomes available, if one is waiting: a long-poll
    /// need not retry before then.
    pub next_available_ms: Option<u64>,
}

/// One leased message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub seq: u64,
    /// The fencing token: only it can ack, nack or extend this lease.
    pub token: u64,
    pub deadline_ms: u64,
    /// 1 on the first delivery.
    pub delivery_count: u32,
    pub message: MessageRecord,
}

/// What a pulse did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PulseReport {
    pub expired: u64,
    pub dead_lettered: u64,
    pub dropped: u64,
    pub trimmed: u64,
    pub purged: u64,
    /// Leases ended because their holder lost the right to consume.
    pub revoked: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_command_takes_its_own_output_only() {
        assert_eq!(Output::Committed { next_seq: 4 }.committed(), Ok(4));
        let mismatch = Output::TopicDeleted.published().unwrap_err();
        assert_eq!(mismatch.expected, "published");
        assert_eq!(*mismatch.got, Output::TopicDeleted);
    }
}
