//! Random command sequences, pulses at random times included, applied to the machine and to a
//! simple reference model. After every entry the machine's leases, counts and cursors must match
//! the model, and at the end a replay and a snapshot restore must reproduce every outcome.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use chorus_machine::{
    Actor, Command, Entry, GroupConfig, KeyOrdering, Machine, MachineError, MemStore, NewMessage, Outcome, Output,
    Publish, StartPosition, Submission, TopicConfig, query, snapshot,
};
use proptest::prelude::*;

const TOPIC: &str = "t";
const DEAD_LETTERS: &str = "dlq";
const SUBSCRIPTION: &str = "s";
/// g0: unordered, three deliveries then dead-lettered. g1: per-key, unlimited deliveries.
const GROUPS: [&str; 2] = ["g0", "g1"];
const DELIVERIES_MAX: [u32; 2] = [3, 0];
const BOGUS_TOKEN: u64 = 1 << 40;

#[derive(Debug, Clone)]
enum Op {
    Publish(Vec<(Option<u8>, u64)>),
    Lease { group: usize, count_max: u32, lease_ms: u64 },
    Ack { group: usize, pick: usize },
    Nack { group: usize, pick: usize, delay_ms: u64 },
    Extend { group: usize, pick: usize, lease_ms: u64 },
    Commit { seq: u64 },
    Pulse,
}

fn op() -> impl Strategy<Value = Op> {
    let message = (prop::option::of(0u8..3), prop::sample::select(vec![0u64, 0, 0, 300, 1500]));
    let group = 0usize..2;
    let lease_ms = prop::sample::select(vec![100u64, 1000, 5000]);
    prop_oneof![
        3 => prop::collection::vec(message, 1..5).prop_map(Op::Publish),
        3 => (group.clone(), 1u32..5, lease_ms.clone()).prop_map(|(group, count_max, lease_ms)| Op::Lease { group, count_max, lease_ms }),
        3 => (group.clone(), any::<usize>()).prop_map(|(group, pick)| Op::Ack { group, pick }),
        1 => (group.clone(), any::<usize>(), prop::sample::select(vec![0u64, 500])).prop_map(|(group, pick, delay_ms)| Op::Nack { group, pick, delay_ms }),
        1 => (group, any::<usize>(), lease_ms).prop_map(|(group, pick, lease_ms)| Op::Extend { group, pick, lease_ms }),
        1 => (0u64..40).prop_map(|seq| Op::Commit { seq }),
        2 => Just(Op::Pulse),
    ]
}

/// One entry: how far time moves before it, and its commands.
fn entries() -> impl Strategy<Value = Vec<(u64, Vec<Op>)>> {
    let advance = prop::sample::select(vec![0u64, 0, 50, 400, 1200, 6000]);
    prop::collection::vec((advance, prop::collection::vec(op(), 1..4)), 1..60)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Not leased: available once `at` and the message's not-before time have passed.
    Waiting {
        at: u64,
        deliveries: u32,
    },
    Leased {
        token: u64,
        deadline_ms: u64,
        deliveries: u32,
    },
    Acked,
    Dead,
}

#[derive(Debug, Default)]
struct ModelGroup {
    states: BTreeMap<u64, State>,
    tokens_seen: Vec<u64>,
}

#[derive(Debug)]
struct Model {
    now_ms: u64,
    /// seq → (key, not-before time)
    messages: BTreeMap<u64, (Option<u8>, u64)>,
    groups: [ModelGroup; 2],
    cursor: u64,
}

impl Model {
    fn available(&self, group: usize, seq: u64) -> bool {
        let (key, not_before) = self.messages[&seq];
        let state = self.groups[group].states[&seq];
        let State::Waiting { at, .. } = state else {
            return false;
        };
        if at.max(not_before) > self.now_ms {
            return false;
        }
        // A per-key group serves a key's oldest unfinished message only.
        group != 1 || key.is_none() || self.key_head(group, key) == Some(seq)
    }

    fn key_head(&self, group: usize, key: Option<u8>) -> Option<u64> {
        self.groups[group]
            .states
            .iter()
            .find(|(seq, state)| self.messages[seq].0 == key && !matches!(state, State::Acked | State::Dead))
            .map(|(seq, _)| *seq)
    }

    fn live(&self, group: usize, token: u64) -> Option<(u64, u32)> {
        self.groups[group].states.iter().find_map(|(seq, state)| match *state {
            State::Leased { token: t, deadline_ms, deliveries } if t == token && deadline_ms > self.now_ms => {
                Some((*seq, deliveries))
            }
            _ => None,
        })
    }

    fn pick(&self, group: usize, pick: usize) -> u64 {
        let seen = &self.groups[group].tokens_seen;
        seen.get(pick % (seen.len() + 1)).copied().unwrap_or(BOGUS_TOKEN)
    }

    fn requeue(&mut self, group: usize, seq: u64, deliveries: u32, at: u64) {
        let max = DELIVERIES_MAX[group];
        let next = if max > 0 && deliveries >= max { State::Dead } else { State::Waiting { at, deliveries } };
        self.groups[group].states.insert(seq, next);
    }
}

fn command(op: &Op, model: &Model) -> Command {
    match *op {
        Op::Publish(ref messages) => Command::Publish(Publish {
            topic: TOPIC.into(),
            producer: None,
            messages: messages
                .iter()
                .map(|&(key, delay)| NewMessage {
                    key: key.map(|k| Bytes::from(vec![b'a' + k])),
                    headers: Vec::new(),
                    payload: Bytes::from(format!("m{}", model.messages.len())),
                    not_before_ms: (delay > 0).then_some(model.now_ms + delay),
                })
                .collect(),
        }),
        Op::Lease { group, count_max, lease_ms } => Command::Lease {
            topic: TOPIC.into(),
            group: GROUPS[group].into(),
            consumer: format!("w{}", model.now_ms % 3),
            count_max,
            lease_ms: Some(lease_ms),
            bytes_max: None,
        },
        Op::Ack { group, pick } => {
            Command::Ack { topic: TOPIC.into(), group: GROUPS[group].into(), tokens: vec![model.pick(group, pick)] }
        }
        Op::Nack { group, pick, delay_ms } => Command::Nack {
            topic: TOPIC.into(),
            group: GROUPS[group].into(),
            tokens: vec![model.pick(group, pick)],
            delay_ms,
        },
        Op::Extend { group, pick, lease_ms } => Command::Extend {
            topic: TOPIC.into(),
            group: GROUPS[group].into(),
            tokens: vec![model.pick(group, pick)],
            lease_ms,
        },
        Op::Commit { seq } => Command::Commit { topic: TOPIC.into(), subscription: SUBSCRIPTION.into(), seq },
        Op::Pulse => Command::Pulse,
    }
}

/// Checks one outcome against the model and advances the model.
fn check(op: &Op, outcome: &Outcome, model: &mut Model) -> Result<(), TestCaseError> {
    match (op, outcome) {
        (Op::Publish(messages), Ok(Output::Published(published))) => {
            prop_assert_eq!(published.first_seq, model.messages.len() as u64 + 1);
            for (i, &(key, delay)) in messages.iter().enumerate() {
                let seq = published.first_seq + i as u64;
                let not_before = if delay > 0 { model.now_ms + delay } else { 0 };
                model.messages.insert(seq, (key, not_before));
                for group in &mut model.groups {
                    group.states.insert(seq, State::Waiting { at: 0, deliveries: 0 });
                }
            }
        }
        (&Op::Lease { group, count_max, lease_ms }, Ok(Output::Leased(leased))) => {
            let available = model.messages.keys().filter(|&&seq| model.available(group, seq)).count();
            prop_assert_eq!(leased.grants.len(), available.min(count_max as usize), "grant count");
            for grant in &leased.grants {
                prop_assert!(model.available(group, grant.seq), "granted unavailable message {}", grant.seq);
                let last_token = model.groups[group].tokens_seen.last().copied().unwrap_or(0);
                prop_assert!(grant.token > last_token, "token {} after {}", grant.token, last_token);
                let State::Waiting { deliveries, .. } = model.groups[group].states[&grant.seq] else { unreachable!() };
                prop_assert_eq!(grant.delivery_count, deliveries + 1);
                prop_assert_eq!(grant.deadline_ms, model.now_ms + lease_ms);
                let state =
                    State::Leased { token: grant.token, deadline_ms: grant.deadline_ms, deliveries: deliveries + 1 };
                model.groups[group].states.insert(grant.seq, state);
                model.groups[group].tokens_seen.push(grant.token);
            }
        }
        (&Op::Ack { group, pick }, Ok(Output::Settled(results))) => {
            let token = model.pick(group, pick);
            match model.live(group, token) {
                Some((seq, _)) => {
                    prop_assert_eq!(&results[0], &Ok(()));
                    model.groups[group].states.insert(seq, State::Acked);
                }
                None => prop_assert_eq!(&results[0], &Err(MachineError::StaleLease(token))),
            }
        }
        (&Op::Nack { group, pick, delay_ms }, Ok(Output::Settled(results))) => {
            let token = model.pick(group, pick);
            match model.live(group, token) {
                Some((seq, deliveries)) => {
                    prop_assert_eq!(&results[0], &Ok(()));
                    model.requeue(group, seq, deliveries, model.now_ms + delay_ms);
                }
                None => prop_assert_eq!(&results[0], &Err(MachineError::StaleLease(token))),
            }
        }
        (&Op::Extend { group, pick, lease_ms }, Ok(Output::Extended(results))) => {
            let token = model.pick(group, pick);
            match model.live(group, token) {
                Some((seq, deliveries)) => {
                    let deadline_ms = model.now_ms + lease_ms;
                    prop_assert_eq!(&results[0], &Ok(deadline_ms));
                    model.groups[group].states.insert(seq, State::Leased { token, deadline_ms, deliveries });
                }
                None => prop_assert_eq!(&results[0], &Err(MachineError::StaleLease(token))),
            }
        }
        (&Op::Commit { seq }, outcome) => {
            if seq > model.messages.len() as u64 {
                prop_assert!(matches!(outcome, Err(MachineError::InvalidArgument(_))), "{:?}", outcome);
            } else {
                model.cursor = model.cursor.max(seq + 1);
                prop_assert_eq!(outcome, &Ok(Output::Committed { next_seq: model.cursor }));
            }
        }
        (Op::Pulse, Ok(Output::Pulsed(report))) => {
            let mut expired = 0;
            for group in 0..2 {
                let due: Vec<(u64, u32)> = model.groups[group]
                    .states
                    .iter()
                    .filter_map(|(seq, state)| match *state {
                        State::Leased { deadline_ms, deliveries, .. } if deadline_ms <= model.now_ms => {
                            Some((*seq, deliveries))
                        }
                        _ => None,
                    })
                    .collect();
                expired += due.len() as u64;
                for (seq, deliveries) in due {
                    model.requeue(group, seq, deliveries, model.now_ms);
                }
            }
            prop_assert_eq!(report.expired, expired);
        }
        (op, outcome) => prop_assert!(false, "{:?} gave {:?}", op, outcome),
    }
    Ok(())
}

/// The machine's state agrees with the model: one lease per message, the same leases, counts and
/// cursor, and every published message in exactly one state per group.
fn check_state(machine: &Machine<MemStore>, model: &Model, cursor_before: u64) -> Result<(), TestCaseError> {
    let store = machine.store();
    let topic = query::topic(store, TOPIC).unwrap().unwrap();
    prop_assert_eq!(topic.last_seq, model.messages.len() as u64);
    for (index, name) in GROUPS.iter().enumerate() {
        let group = query::group_of(store, topic.id, name).unwrap().unwrap();
        let states = &model.groups[index].states;
        let leases: BTreeSet<(u64, u64)> = query::leases(store, group.id, usize::MAX).unwrap().into_iter().collect();
        let expected: BTreeSet<(u64, u64)> = states
            .iter()
            .filter_map(|(seq, s)| match s {
                State::Leased { token, .. } => Some((*token, *seq)),
                _ => None,
            })
            .collect();
        prop_assert_eq!(&leases, &expected, "leases of {}", name);
        let seqs: BTreeSet<u64> = leases.iter().map(|(_, seq)| *seq).collect();
        prop_assert_eq!(seqs.len(), leases.len(), "a message with two live leases");
        let count = |f: fn(&State) -> bool| states.values().filter(|s| f(s)).count() as u64;
        let c = &group.counts;
        prop_assert_eq!(c.leased, count(|s| matches!(s, State::Leased { .. })));
        prop_assert_eq!(c.acked_total, count(|s| matches!(s, State::Acked)));
        prop_assert_eq!(c.dead_lettered_total + c.dropped_total, count(|s| matches!(s, State::Dead)));
        prop_assert_eq!(query::group_backlog(&topic, &group), count(|s| matches!(s, State::Waiting { .. })));
        let accounted =
            query::group_backlog(&topic, &group) + c.leased + c.acked_total + c.dead_lettered_total + c.dropped_total;
        prop_assert_eq!(accounted, topic.last_seq, "every message is in exactly one state");
    }
    let dead_letters = query::topic(store, DEAD_LETTERS).unwrap().unwrap();
    prop_assert_eq!(
        dead_letters.last_seq,
        model.groups[0].states.values().filter(|s| **s == State::Dead).count() as u64
    );
    let sub = query::subscription_of(store, topic.id, SUBSCRIPTION).unwrap().unwrap();
    prop_assert!(sub.next_seq >= cursor_before, "cursor moved back");
    prop_assert_eq!(sub.next_seq, model.cursor);
    Ok(())
}

fn setup() -> Entry {
    let mut commands = vec![
        Command::CreateTopic { name: TOPIC.into(), config: TopicConfig::default() },
        Command::CreateTopic { name: DEAD_LETTERS.into(), config: TopicConfig::default() },
        Command::CreateSubscription { topic: TOPIC.into(), name: SUBSCRIPTION.into(), start: StartPosition::Earliest },
    ];
    for (index, name) in GROUPS.iter().enumerate() {
        let config = GroupConfig {
            deliveries_max: DELIVERIES_MAX[index],
            dead_letter_topic: (index == 0).then(|| DEAD_LETTERS.to_owned()),
            ordering: if index == 1 { KeyOrdering::PerKey } else { KeyOrdering::Unordered },
            ..GroupConfig::default()
        };
        commands.push(Command::CreateGroup { topic: TOPIC.into(), name: (*name).into(), config });
    }
    Entry { time_ms: 1_000, submissions: commands.into_iter().map(submit).collect() }
}

/// Pulses are the broker's; clients' commands are anonymous (no authentication, no checks).
fn submit(command: Command) -> Submission {
    let actor = if command == Command::Pulse { Actor::Broker } else { Actor::Anonymous };
    Submission::new(actor, command)
}

fn snapshot_bytes(machine: &Machine<MemStore>) -> Vec<u8> {
    let mut bytes = Vec::new();
    snapshot::export(machine.store(), &mut bytes).unwrap();
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn machine_matches_the_model(plan in entries()) {
        let mut machine = Machine::new(MemStore::new());
        let setup = setup();
        let mut log = vec![setup.clone()];
        prop_assert!(machine.apply(1, &setup).unwrap().iter().all(Result::is_ok));
        let mut model = Model { now_ms: 1_000, messages: BTreeMap::new(), groups: Default::default(), cursor: 1 };
        let mut outcomes = Vec::new();
        for (advance_ms, ops) in &plan {
            model.now_ms += advance_ms;
            // Each command is built from the model as the previous one left it.
            for op in ops {
                let index = log.len() as u64 + 1;
                let single = Entry { time_ms: model.now_ms, submissions: vec![submit(command(op, &model))] };
                let outcome = machine.apply(index, &single).unwrap().remove(0);
                let cursor_before = model.cursor;
                check(op, &outcome, &mut model)?;
                check_state(&machine, &model, cursor_before)?;
                log.push(single);
                outcomes.push(outcome);
            }
        }
        // Determinism: a second machine fed the same entries, restored from a snapshot halfway,
        // gives the same outcomes and the same final snapshot.
        let half = log.len() / 2;
        let mut first_half = Machine::new(MemStore::new());
        for (i, entry) in log[..half].iter().enumerate() {
            first_half.apply(i as u64 + 1, entry).unwrap();
        }
        let mut restored = MemStore::new();
        snapshot::import(&mut restored, &mut snapshot_bytes(&first_half).as_slice()).unwrap();
        let mut replica = Machine::new(restored);
        let mut replayed = Vec::new();
        for (i, entry) in log.iter().enumerate().skip(half) {
            replayed.extend(replica.apply(i as u64 + 1, entry).unwrap());
        }
        let skip = outcomes.len() - replayed.len();
        prop_assert_eq!(&outcomes[skip..], &replayed[..]);
        prop_assert_eq!(snapshot_bytes(&machine), snapshot_bytes(&replica));
    }

    #[test]
    fn batching_commands_into_entries_does_not_change_outcomes(plan in entries()) {
        // The same commands applied one per entry and grouped as planned give the same outcomes
        // when time is the same: batching is only a transport optimisation.
        // Tokens are picked from a fixed range so that many settles hit live leases.
        let mut model = Model { now_ms: 1_000, messages: BTreeMap::new(), groups: Default::default(), cursor: 1 };
        for group in &mut model.groups {
            group.tokens_seen = (1..=12).collect();
        }
        let commands: Vec<Vec<Command>> = plan.iter().map(|(_, ops)| ops.iter().map(|op| command(op, &model)).collect()).collect();
        let mut batched = Machine::new(MemStore::new());
        let mut single = Machine::new(MemStore::new());
        batched.apply(1, &setup()).unwrap();
        single.apply(1, &setup()).unwrap();
        let (mut batched_out, mut single_out) = (Vec::new(), Vec::new());
        let mut index = 1;
        for (entry_no, group) in commands.iter().enumerate() {
            let time_ms = 1_000 + entry_no as u64 * 100;
            index += 1;
            let submissions = group.iter().cloned().map(submit).collect();
            batched_out.extend(batched.apply(index, &Entry { time_ms, submissions }).unwrap());
            for command in group {
                index += 1;
                let submissions = vec![submit(command.clone())];
                single_out.extend(single.apply(index, &Entry { time_ms, submissions }).unwrap());
            }
        }
        // Log indexes differ between the two runs, so compare with them masked.
        let mask = |outcomes: Vec<Outcome>| -> Vec<Outcome> {
            outcomes.into_iter().map(|o| match o {
                Ok(Output::Published(mut p)) => { p.log_index = 0; p.batch_pos = 0; Ok(Output::Published(p)) }
                Ok(Output::Leased(mut l)) => {
                    for g in &mut l.grants { g.message.log_index = 0; g.message.batch_pos = 0; }
                    Ok(Output::Leased(l))
                }
                other => other,
            }).collect()
        };
        prop_assert_eq!(mask(batched_out), mask(single_out));
    }
}
