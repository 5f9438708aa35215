//! A history of what workload clients did and saw, and the checker that judges it (after
//! Jepsen's approach). Clients record each operation as invoke → ok | fail | info, where `info`
//! means the outcome is unknown (a timeout, a lost connection). The checker counts:
//!
//! - **lost**: an acknowledged publish that a caught-up subscriber or a drained work group never
//!   saw;
//! - **unexpected**: a delivered payload no producer attempted;
//! - **order**: subscribers whose deliveries are not gap-free prefixes of one total order, a
//!   payload at two positions, or a position holding two payloads;
//! - **stale acks**: an ack accepted although a newer grant of that message was already seen;
//! - **overlapping grants**: a message granted again before its previous lease ended (deadline,
//!   nack or ack), or after an accepted ack;
//! - **failed but present**: a publish answered as a definite failure that was delivered anyway;
//! - **producer order**: a process's acknowledged publishes, in the order it sent them, stored at
//!   sequences that do not increase (FIFO per producer);
//! - **corrupted**: a delivered or leased payload whose checksum fails ([`payload`] makes
//!   payloads that carry one): a damaged byte served;
//! - **redeliveries**, which are reported, not failures.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// Producer `process`'s `n`th payload, unique, ending in a checksum of the rest, so a damaged
/// byte anywhere in it is seen ([`payload_intact`]). Odd producers' payloads are padded past
/// [`LARGE_PAYLOAD_BYTES`], so their batches live in the state's message segments and the
/// small ones inline in redb: both paths meet every fault.
pub fn payload(process: u32, n: u64) -> String {
    let padding = if process % 2 == 1 { "-".repeat(LARGE_PAYLOAD_BYTES) } else { String::new() };
    let body = format!("p{process}-{n}{padding}");
    let sum = fnv1a(body.as_bytes());
    format!("{body}.{sum:08x}")
}

/// What odd producers pad their payloads with: past the size from which a batch is stored in a
/// message segment (`chorus_broker::message_segments::VALUE_INLINE_BYTES_MIN`).
pub const LARGE_PAYLOAD_BYTES: usize = 2100;
const _: () = assert!(LARGE_PAYLOAD_BYTES > chorus_broker::message_segments::VALUE_INLINE_BYTES_MIN);

/// Whether `payload` (one of [`payload`]'s) is as it was made.
pub fn payload_intact(payload: &str) -> bool {
    match payload.rsplit_once('.') {
        Some((body, sum)) => u32::from_str_radix(sum, 16).is_ok_and(|sum| sum == fnv1a(body.as_bytes())),
        None => false,
    }
}

/// FNV-1a, 32 bits.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, byte| (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193))
}

/// What one operation was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A publish of a unique payload; an `Ok` completion carries its sequence.
    Publish { payload: String, seq: Option<u64> },
    /// A subscriber saw `payload` at `seq`. Recorded as `Ok`.
    Deliver { subscriber: u32, seq: u64, payload: String },
    /// A worker was granted `seq` under `token` until `deadline_ms`, leased at `granted_ms`
    /// (both on the leader's clock). Recorded as `Ok`.
    Grant { seq: u64, payload: String, token: u64, granted_ms: u64, deadline_ms: u64 },
    /// An ack or nack of `token`; `Ok` means the broker accepted it, `Fail` that it was refused.
    Settle { seq: u64, token: u64, ack: bool },
}

impl Op {
    /// A grant of a `lease_ms` lease ending at `deadline_ms`, with the payload as text.
    pub fn grant(seq: u64, payload: &[u8], token: u64, deadline_ms: u64, lease_ms: u64) -> Op {
        let payload = String::from_utf8_lossy(payload).into_owned();
        Op::Grant { seq, payload, token, granted_ms: deadline_ms - lease_ms, deadline_ms }
    }
}

/// A history that concurrent clients append to.
pub type History = Arc<Mutex<Vec<Record>>>;

/// Appends one completed operation to `history`.
pub fn record(history: &History, process: u32, op: Op, outcome: Outcome) {
    history.lock().unwrap().push(Record { process, op, outcome });
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Definitely did not happen.
    Fail,
    /// Unknown: it may or may not have happened.
    Info,
}

/// One completed operation, in the order the clients observed completions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub process: u32,
    pub op: Op,
    pub outcome: Outcome,
}

/// The checker's verdict. Every count but `redeliveries` must be 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub publishes_ok: u64,
    pub publishes_unknown: u64,
    pub publishes_failed: u64,
    pub lost: u64,
    pub unexpected: u64,
    pub order_violations: u64,
    pub stale_acks_accepted: u64,
    pub overlapping_grants: u64,
    pub failed_but_present: u64,
    pub producer_order: u64,
    pub corrupted: u64,
    pub redeliveries: u64,
    /// What the first few violations were, for a failure message.
    pub examples: Vec<String>,
}

impl Verdict {
    pub fn is_valid(&self) -> bool {
        self.lost
            + self.unexpected
            + self.order_violations
            + self.stale_acks_accepted
            + self.overlapping_grants
            + self.failed_but_present
            + self.producer_order
            + self.corrupted
            == 0
    }

    fn flag(&mut self, example: String) {
        if self.examples.len() < 10 {
            self.examples.push(example);
        }
    }

    /// A one-line summary table row.
    pub fn summary(&self) -> String {
        format!(
            "ok publishes {:>7} | failed {:>5} | unknown {:>5} | lost {} | unexpected {} | order {} | producer order {} | stale acks {} | overlaps {} | failed-but-present {} | corrupted {} | redeliveries {}",
            self.publishes_ok,
            self.publishes_failed,
            self.publishes_unknown,
            self.lost,
            self.unexpected,
            self.order_violations,
            self.producer_order,
            self.stale_acks_accepted,
            self.overlapping_grants,
            self.failed_but_present,
            self.corrupted,
            self.redeliveries
        )
    }
}

/// What the checker needs to know beyond the records.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// Subscribers that read to the end of the topic: each must have seen every acknowledged
    /// publish.
    pub caught_up_subscribers: BTreeSet<u32>,
    /// The work group was drained: every acknowledged publish must have been acked by a worker.
    pub group_drained: bool,
}

pub fn check(history: &[Record], expect: &Expectations) -> Verdict {
    let mut verdict = Verdict::default();
    let mut attempted = BTreeSet::new();
    let mut acknowledged = BTreeSet::new();
    let mut failed = BTreeSet::new();
    for record in history {
        if let Op::Publish { payload, .. } = &record.op {
            attempted.insert(payload.clone());
            match record.outcome {
                Outcome::Ok => {
                    verdict.publishes_ok += 1;
                    acknowledged.insert(payload.clone());
                }
                Outcome::Fail => {
                    verdict.publishes_failed += 1;
                    failed.insert(payload.clone());
                }
                Outcome::Info => verdict.publishes_unknown += 1,
            }
        }
    }
    check_payloads(history, &mut verdict);
    check_producer_order(history, &mut verdict);
    check_order(history, expect, &attempted, &acknowledged, &failed, &mut verdict);
    check_leases(history, expect, &acknowledged, &mut verdict);
    verdict
}

/// A process publishes in order, one publish after another: the sequences of its acknowledged
/// publishes must increase in the order it recorded them.
fn check_producer_order(history: &[Record], verdict: &mut Verdict) {
    let mut last: BTreeMap<u32, (u64, &str)> = BTreeMap::new();
    for record in history {
        let Op::Publish { payload, seq: Some(seq) } = &record.op else { continue };
        if record.outcome != Outcome::Ok {
            continue;
        }
        if let Some((before, earlier)) = last.insert(record.process, (*seq, payload))
            && before >= *seq
        {
            verdict.producer_order += 1;
            verdict.flag(format!(
                "process {} sent {earlier:?} before {payload:?}, stored at {before} and {seq}",
                record.process
            ));
        }
    }
}

/// Every payload a subscriber or worker was served must pass its checksum.
fn check_payloads(history: &[Record], verdict: &mut Verdict) {
    for record in history {
        let (seq, payload) = match &record.op {
            Op::Deliver { seq, payload, .. } | Op::Grant { seq, payload, .. } => (seq, payload),
            _ => continue,
        };
        if !payload_intact(payload) {
            verdict.corrupted += 1;
            verdict.flag(format!("message {seq} was served damaged: {payload:?}"));
        }
    }
}

fn check_order(
    history: &[Record],
    expect: &Expectations,
    attempted: &BTreeSet<String>,
    acknowledged: &BTreeSet<String>,
    failed: &BTreeSet<String>,
    verdict: &mut Verdict,
) {
    // The one total order all subscribers must agree on: position → payload.
    let mut order: BTreeMap<u64, String> = BTreeMap::new();
    let mut position_of: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_subscriber: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for record in history {
        let Op::Deliver { subscriber, seq, payload } = &record.op else { continue };
        per_subscriber.entry(*subscriber).or_default().push(*seq);
        if !attempted.contains(payload) {
            verdict.unexpected += 1;
            verdict.flag(format!("subscriber {subscriber} got {payload:?}, which no one published"));
        }
        if failed.contains(payload) {
            verdict.failed_but_present += 1;
            verdict.flag(format!("{payload:?} was refused as failed but delivered at {seq}"));
        }
        match order.get(seq) {
            Some(known) if known != payload => {
                verdict.order_violations += 1;
                verdict.flag(format!("position {seq} holds {known:?} and {payload:?}"));
            }
            Some(_) => {}
            None => {
                order.insert(*seq, payload.clone());
            }
        }
        match position_of.get(payload) {
            Some(at) if at != seq => {
                verdict.order_violations += 1;
                verdict.flag(format!("{payload:?} is at positions {at} and {seq}"));
            }
            Some(_) => {}
            None => {
                position_of.insert(payload.clone(), *seq);
            }
        }
    }
    for (subscriber, seqs) in &per_subscriber {
        let Some(&first) = seqs.first() else { continue };
        for (i, seq) in seqs.iter().enumerate() {
            if *seq != first + i as u64 {
                verdict.order_violations += 1;
                verdict.flag(format!("subscriber {subscriber} saw {seq} where {} was due", first + i as u64));
                break;
            }
        }
    }
    for subscriber in &expect.caught_up_subscribers {
        let seen: BTreeSet<u64> =
            per_subscriber.get(subscriber).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for payload in acknowledged {
            if !position_of.get(payload).is_some_and(|seq| seen.contains(seq)) {
                verdict.lost += 1;
                verdict.flag(format!("acknowledged {payload:?} never reached subscriber {subscriber}"));
            }
        }
    }
}

/// Judges each message's grants in token order. Tokens grow with every grant of a group, so token
/// order is log order, whatever order the clients happened to observe answers in (a paused
/// leader's answer can arrive after its lease was re-granted elsewhere).
fn check_leases(history: &[Record], expect: &Expectations, acknowledged: &BTreeSet<String>, verdict: &mut Verdict) {
    // seq → (token, granted_ms, deadline_ms) of every grant seen.
    let mut grants: BTreeMap<u64, Vec<(u64, u64, u64)>> = BTreeMap::new();
    // seq → tokens the broker accepted an ack, or a nack, for.
    let mut acks: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut nacks: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut acked_payloads = BTreeSet::new();
    // An ack whose answer was lost may have been applied: it cannot prove a loss.
    let mut maybe_acked = BTreeSet::new();
    let mut payload_of: BTreeMap<u64, String> = BTreeMap::new();
    for record in history {
        match &record.op {
            Op::Grant { seq, payload, token, granted_ms, deadline_ms } => {
                payload_of.insert(*seq, payload.clone());
                grants.entry(*seq).or_default().push((*token, *granted_ms, *deadline_ms));
            }
            Op::Settle { seq, token, ack: true } if record.outcome == Outcome::Ok => {
                acks.entry(*seq).or_default().insert(*token);
            }
            Op::Settle { seq, token, ack: false } if record.outcome == Outcome::Ok => {
                nacks.entry(*seq).or_default().insert(*token);
            }
            Op::Settle { seq, ack: true, .. } if record.outcome == Outcome::Info => {
                maybe_acked.insert(*seq);
            }
            _ => {}
        }
    }
    for (seq, leases) in &mut grants {
        leases.sort_unstable();
        verdict.redeliveries += leases.len() as u64 - 1;
        for pair in leases.windows(2) {
            let ((token, _, deadline_ms), (next, granted_ms, _)) = (pair[0], pair[1]);
            if next == token {
                verdict.overlapping_grants += 1;
                verdict.flag(format!("message {seq}: token {token} granted twice"));
            }
            let nacked = nacks.get(seq).is_some_and(|tokens| tokens.contains(&token));
            if !nacked && granted_ms < deadline_ms {
                verdict.overlapping_grants += 1;
                verdict.flag(format!(
                    "message {seq}: token {next} granted at {granted_ms}, before token {token} ended at {deadline_ms}"
                ));
            }
        }
        let newest = leases.last().map_or(0, |lease| lease.0);
        for token in acks.get(seq).into_iter().flatten() {
            // In log order either the ack came first (then nothing may be granted after it) or
            // the newer grant did (then the ack was stale): both are an accepted stale ack.
            if *token < newest {
                verdict.stale_acks_accepted += 1;
                verdict.flag(format!(
                    "ack of message {seq} with token {token} accepted, but token {newest} was granted too"
                ));
            }
        }
    }
    for seq in acks.keys() {
        acked_payloads.extend(payload_of.get(seq).cloned());
    }
    if expect.group_drained {
        let maybe: BTreeSet<&String> = maybe_acked.iter().filter_map(|seq| payload_of.get(seq)).collect();
        for payload in acknowledged.difference(&acked_payloads).filter(|p| !maybe.contains(p)) {
            verdict.lost += 1;
            verdict.flag(format!("acknowledged {payload:?} was never acked by a worker of the drained group"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name` as a payload with its checksum, as producers make them.
    fn sealed(name: &str) -> String {
        format!("{name}.{:08x}", fnv1a(name.as_bytes()))
    }

    fn publish(payload: &str, outcome: Outcome) -> Record {
        Record { process: 0, op: Op::Publish { payload: sealed(payload), seq: None }, outcome }
    }

    fn deliver(subscriber: u32, seq: u64, payload: &str) -> Record {
        Record { process: 1, op: Op::Deliver { subscriber, seq, payload: sealed(payload) }, outcome: Outcome::Ok }
    }

    fn grant(seq: u64, token: u64, granted_ms: u64, deadline_ms: u64) -> Record {
        Record {
            process: 2,
            op: Op::Grant { seq, payload: sealed(&format!("m{seq}")), token, granted_ms, deadline_ms },
            outcome: Outcome::Ok,
        }
    }

    #[test]
    fn a_producers_publishes_stored_out_of_its_order_are_flagged() {
        let acked = |payload: &str, seq| Record {
            process: 4,
            op: Op::Publish { payload: sealed(payload), seq: Some(seq) },
            outcome: Outcome::Ok,
        };
        let in_order = vec![acked("a", 1), acked("b", 3)];
        assert_eq!(check(&in_order, &caught_up(&[])).producer_order, 0);
        let reordered = vec![acked("a", 5), acked("b", 3)];
        assert_eq!(check(&reordered, &caught_up(&[])).producer_order, 1);
    }

    #[test]
    fn a_damaged_payload_served_is_corrupted() {
        let made = payload(3, 17);
        assert!(payload_intact(&made));
        let mut damaged = made.clone().into_bytes();
        damaged[1] ^= 0x01;
        let damaged = String::from_utf8(damaged).unwrap();
        assert!(!payload_intact(&damaged));
        let history = vec![
            Record { process: 3, op: Op::Publish { payload: made, seq: Some(1) }, outcome: Outcome::Ok },
            Record { process: 1, op: Op::Deliver { subscriber: 1, seq: 1, payload: damaged }, outcome: Outcome::Ok },
        ];
        let verdict = check(&history, &caught_up(&[]));
        assert_eq!(verdict.corrupted, 1);
        assert!(!verdict.is_valid());
    }

    fn settle(seq: u64, token: u64, ack: bool, outcome: Outcome) -> Record {
        Record { process: 2, op: Op::Settle { seq, token, ack }, outcome }
    }

    fn caught_up(subscribers: &[u32]) -> Expectations {
        Expectations { caught_up_subscribers: subscribers.iter().copied().collect(), group_drained: false }
    }

    #[test]
    fn a_clean_history_is_valid() {
        let history = vec![
            publish("a", Outcome::Ok),
            publish("b", Outcome::Info),
            publish("c", Outcome::Ok),
            deliver(1, 1, "a"),
            deliver(1, 2, "c"),
            deliver(2, 1, "a"),
            deliver(2, 2, "c"),
        ];
        let verdict = check(&history, &caught_up(&[1, 2]));
        assert!(verdict.is_valid(), "{verdict:?}");
        assert_eq!((verdict.publishes_ok, verdict.publishes_unknown), (2, 1));
    }

    #[test]
    fn a_missing_acknowledged_message_is_lost() {
        let history = vec![publish("a", Outcome::Ok), publish("b", Outcome::Ok), deliver(1, 1, "a")];
        assert_eq!(check(&history, &caught_up(&[1])).lost, 1);
        assert_eq!(check(&history, &caught_up(&[])).lost, 0, "a subscriber not caught up proves nothing");
    }

    #[test]
    fn unknown_payloads_and_failed_publishes_are_flagged() {
        let history = vec![publish("a", Outcome::Fail), deliver(1, 1, "a"), deliver(1, 2, "ghost")];
        let verdict = check(&history, &caught_up(&[]));
        assert_eq!((verdict.failed_but_present, verdict.unexpected), (1, 1));
    }

    #[test]
    fn disagreeing_orders_and_gaps_are_violations() {
        let base = vec![publish("a", Outcome::Ok), publish("b", Outcome::Ok)];
        let mut two_values = base.clone();
        two_values.extend([deliver(1, 1, "a"), deliver(2, 1, "b")]);
        assert!(check(&two_values, &caught_up(&[])).order_violations > 0);
        let mut two_positions = base.clone();
        two_positions.extend([deliver(1, 1, "a"), deliver(2, 2, "a")]);
        assert!(check(&two_positions, &caught_up(&[])).order_violations > 0);
        let mut gap = base;
        gap.extend([deliver(1, 1, "a"), deliver(1, 3, "b")]);
        assert!(check(&gap, &caught_up(&[])).order_violations > 0);
    }

    #[test]
    fn lease_rules() {
        let drained = Expectations { group_drained: true, ..Expectations::default() };
        let published = |n: u64| (1..=n).map(|i| publish(&format!("m{i}"), Outcome::Ok)).collect::<Vec<_>>();
        // Expiry, then a redelivery, then an ack: valid, one redelivery.
        let mut history = published(1);
        history.extend([
            grant(1, 1, 0, 100),
            grant(1, 2, 150, 250),
            settle(1, 1, true, Outcome::Fail),
            settle(1, 2, true, Outcome::Ok),
        ]);
        let verdict = check(&history, &drained);
        assert!(verdict.is_valid(), "{verdict:?}");
        assert_eq!(verdict.redeliveries, 1);
        // A stale ack accepted.
        let mut history = published(1);
        history.extend([grant(1, 1, 0, 100), grant(1, 2, 150, 250), settle(1, 1, true, Outcome::Ok)]);
        assert_eq!(check(&history, &Expectations::default()).stale_acks_accepted, 1);
        // A second grant before the first lease ended.
        let mut history = published(1);
        history.extend([grant(1, 1, 0, 100), grant(1, 2, 50, 150)]);
        assert_eq!(check(&history, &Expectations::default()).overlapping_grants, 1);
        // A nack ends the lease early: an immediate regrant is fine.
        let mut history = published(1);
        history.extend([
            grant(1, 1, 0, 100),
            settle(1, 1, false, Outcome::Ok),
            grant(1, 2, 10, 110),
            settle(1, 2, true, Outcome::Ok),
        ]);
        assert!(check(&history, &drained).is_valid());
        // Granted again after an accepted ack: in log order this is the same as a stale ack.
        let mut history = published(1);
        history.extend([grant(1, 1, 0, 100), settle(1, 1, true, Outcome::Ok), grant(1, 2, 200, 300)]);
        assert_eq!(check(&history, &Expectations::default()).stale_acks_accepted, 1);
        // Answers observed out of log order are judged in token order: a paused leader's late
        // answer for token 1 arrives after token 2 was granted and acked.
        let mut history = published(1);
        history.extend([
            grant(1, 2, 150, 250),
            settle(1, 2, true, Outcome::Ok),
            grant(1, 1, 0, 100),
            settle(1, 1, true, Outcome::Fail),
        ]);
        let verdict = check(&history, &drained);
        assert!(verdict.is_valid(), "{verdict:?}");
        assert_eq!(verdict.redeliveries, 1);
        // A drained group that never acked an acknowledged publish lost it, unless an ack of it
        // had an unknown outcome.
        assert_eq!(check(&published(2), &drained).lost, 2);
        let mut history = published(1);
        history.extend([grant(1, 1, 0, 100), settle(1, 1, true, Outcome::Info)]);
        assert_eq!(check(&history, &drained).lost, 0);
    }
}
