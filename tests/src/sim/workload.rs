//! The simulation's clients. They call brokers in-process, through the same `Broker::propose`
//! and applied-state reads the network server uses, and record every operation in the history:
//! producers publish unique payloads, workers lease and ack (sometimes too late, sometimes not
//! at all), subscribers read the topic in order from whichever broker is up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chorus_broker::Broker;
use chorus_broker::proposer::ProposeError;
use chorus_broker::raft::NodeId;
use chorus_machine::query;
use chorus_machine::{Command, GroupConfig, NewMessage, Output, Publish, TopicConfig};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::net::Net;
use crate::history::{History, Op, Outcome, record};

pub const TOPIC: &str = "sim";
pub const GROUP: &str = "workers";
const LEASE_MS: u64 = 1_000;

/// A client of the simulated cluster: it keeps to the broker it believes leads, and moves on
/// when told otherwise or when that broker is down.
#[derive(Debug)]
pub struct SimClient {
    pub process: u32,
    net: Arc<Net>,
    ids: Vec<NodeId>,
    target: NodeId,
    pub rng: StdRng,
}

impl SimClient {
    pub fn new(net: &Arc<Net>, ids: &[NodeId], seed: u64, process: u32) -> SimClient {
        // One client per (seed, process): its choices replay with the seed.
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000).wrapping_add(u64::from(process)));
        let target = ids[rng.random_range(0..ids.len())];
        SimClient { process, net: Arc::clone(net), ids: ids.to_vec(), target, rng }
    }

    fn retarget(&mut self, hint: Option<NodeId>) {
        self.target = hint.unwrap_or_else(|| self.ids[self.rng.random_range(0..self.ids.len())]);
    }

    /// The broker this client talks to now, if it is up.
    fn broker(&mut self) -> Option<Arc<Broker>> {
        let broker = self.net.broker(self.target);
        if broker.is_none() {
            self.retarget(None);
        }
        broker
    }

    async fn propose(&mut self, command: Command) -> Result<chorus_machine::Outcome, ProposeError> {
        let Some(broker) = self.broker() else {
            return Err(ProposeError::NotLeader { leader: None });
        };
        let result = broker.propose(chorus_machine::Submission::new(chorus_machine::Actor::Anonymous, command)).await;
        match &result {
            Err(ProposeError::NotLeader { leader }) => self.retarget(leader.as_ref().map(|(id, _)| *id)),
            Err(_) => self.retarget(None),
            Ok(_) => {}
        }
        result
    }

    async fn pause(&mut self, ms: std::ops::Range<u64>) {
        tokio::time::sleep(Duration::from_millis(self.rng.random_range(ms))).await;
    }
}

/// How a proposal's failure counts: `NotLeader`, `ShuttingDown`, `Overloaded` and `HandingOver`
/// were never proposed, and a membership change was refused; anything else may have been applied.
fn outcome_of(error: &ProposeError) -> Outcome {
    match error {
        ProposeError::NotLeader { .. }
        | ProposeError::ShuttingDown
        | ProposeError::Overloaded
        | ProposeError::HandingOver { .. }
        | ProposeError::Membership(_) => Outcome::Fail,
        ProposeError::NoQuorum { .. } | ProposeError::OutcomeUnknown | ProposeError::RaftStopped(_) => Outcome::Info,
    }
}

/// Creates the topic and the work group, retrying until a leader takes them.
pub async fn setup(net: &Arc<Net>, ids: &[NodeId]) {
    let mut client = SimClient::new(net, ids, 0, u32::MAX);
    let commands = [
        Command::CreateTopic { name: TOPIC.into(), config: TopicConfig::default() },
        Command::CreateGroup { topic: TOPIC.into(), name: GROUP.into(), config: GroupConfig::default() },
    ];
    for command in commands {
        for attempt in 0.. {
            assert!(attempt < 1_000, "no leader took the setup commands");
            if let Ok(Ok(_)) = client.propose(command.clone()).await {
                break;
            }
            client.pause(50..100).await;
        }
    }
}

pub async fn producer(mut client: SimClient, history: History, stop: Arc<AtomicBool>) {
    let process = client.process;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let payload = crate::history::payload(process, n);
        let message =
            NewMessage { key: None, headers: Vec::new(), payload: Bytes::from(payload.clone()), not_before_ms: None };
        let command = Command::Publish(Publish { topic: TOPIC.into(), producer: None, messages: vec![message] });
        let (seq, outcome) = match client.propose(command).await {
            Ok(Ok(Output::Published(published))) => (Some(published.first_seq), Outcome::Ok),
            Ok(Ok(other)) => panic!("a publish answered {other:?}"),
            Ok(Err(_)) => (None, Outcome::Fail),
            Err(error) => (None, outcome_of(&error)),
        };
        record(&history, process, Op::Publish { payload, seq }, outcome);
        client.pause(5..40).await;
    }
}

/// Leases and acks until told to stop. One grant in twenty is abandoned (its lease expires), one
/// in twenty is acked after its lease ran out (off to the side: that ack must be refused), and
/// the rest are acked in time.
pub async fn worker(mut client: SimClient, history: History, stop: Arc<AtomicBool>) {
    let process = client.process;
    while !stop.load(Ordering::Relaxed) {
        let lease = Command::Lease {
            topic: TOPIC.into(),
            group: GROUP.into(),
            consumer: format!("worker-{process}"),
            count_max: 8,
            lease_ms: Some(LEASE_MS),
            bytes_max: None,
        };
        let grants = match client.propose(lease).await {
            Ok(Ok(Output::Leased(leased))) => leased.grants,
            _ => Vec::new(),
        };
        if grants.is_empty() {
            client.pause(20..60).await;
            continue;
        }
        for grant in grants {
            let op = Op::grant(grant.seq, &grant.message.payload, grant.token, grant.deadline_ms, LEASE_MS);
            record(&history, process, op, Outcome::Ok);
            match client.rng.random_range(0..20) {
                0 => {}
                1 => {
                    let late = SimClient::new(&client.net, &client.ids, client.rng.random(), process);
                    tokio::spawn(ack_late(late, grant.seq, grant.token, Arc::clone(&history)));
                }
                _ => {
                    client.pause(1..10).await;
                    ack(&mut client, grant.seq, grant.token, &history).await;
                }
            }
        }
    }
}

async fn ack(client: &mut SimClient, seq: u64, token: u64, history: &History) {
    let command = Command::Ack { topic: TOPIC.into(), group: GROUP.into(), tokens: vec![token] };
    let outcome = match client.propose(command).await {
        Ok(Ok(Output::Settled(results))) if results.first().is_some_and(|r| r.is_ok()) => Outcome::Ok,
        Ok(_) => Outcome::Fail,
        Err(error) => outcome_of(&error),
    };
    record(history, client.process, Op::Settle { seq, token, ack: true }, outcome);
}

/// Acks after the lease ran out, as a stalled worker would.
async fn ack_late(mut client: SimClient, seq: u64, token: u64, history: History) {
    client.pause(LEASE_MS + 100..LEASE_MS + 600).await;
    ack(&mut client, seq, token, &history).await;
}

/// Reads the topic in order from whichever broker is up, until told the last sequence and
/// having seen it.
pub async fn subscriber(mut client: SimClient, id: u32, history: History, last_seq: Arc<Mutex<Option<u64>>>) {
    let mut next_seq = 0;
    loop {
        if last_seq.lock().unwrap().is_some_and(|last| next_seq > last) {
            return;
        }
        if let Some(broker) = client.broker() {
            for (seq, payload) in read_from(&broker, next_seq) {
                record(&history, client.process, Op::Deliver { subscriber: id, seq, payload }, Outcome::Ok);
                next_seq = seq + 1;
            }
        }
        if client.rng.random_range(0..20) == 0 {
            client.retarget(None);
        }
        client.pause(10..50).await;
    }
}

fn read_from(broker: &Broker, from_seq: u64) -> Vec<(u64, String)> {
    let Ok(store) = broker.read() else { return Vec::new() };
    let Ok(Some(topic)) = query::topic(&store, TOPIC) else { return Vec::new() };
    let messages = query::read(&store, &topic, from_seq, 64, 1 << 20).unwrap_or_default();
    messages.into_iter().map(|(seq, m)| (seq, String::from_utf8_lossy(&m.payload).into_owned())).collect()
}

/// Whether the group has nothing left to deliver and nothing leased, in `broker`'s applied state.
pub fn group_is_empty(broker: &Broker) -> bool {
    let Ok(store) = broker.read() else { return false };
    let Ok(Some(topic)) = query::topic(&store, TOPIC) else { return false };
    let Ok(Some(group)) = query::group_of(&store, topic.id, GROUP) else { return false };
    query::group_backlog(&topic, &group) == 0 && query::leases(&store, group.id, 1).is_ok_and(|l| l.is_empty())
}

/// The topic's last sequence in `broker`'s applied state.
pub fn last_seq(broker: &Broker) -> Option<u64> {
    let store = broker.read().ok()?;
    let topic = query::topic(&store, TOPIC).ok()??;
    Some(topic.last_seq)
}
