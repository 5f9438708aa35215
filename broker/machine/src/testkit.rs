//! A machine over a memory store with a clock the test moves, for unit tests.

use bytes::Bytes;

use crate::access::Actor;
use crate::command::{Command, Entry, GroupConfig, NewMessage, Publish, Submission, TopicConfig};
use crate::machine::Machine;
use crate::outcome::{Grant, Leased, MachineError, Outcome, Output, Published};
use crate::query;
use crate::records::{GroupRecord, TopicRecord};
use crate::store::MemStore;

pub(crate) struct Harness {
    pub machine: Machine<MemStore>,
    pub index: u64,
    pub now_ms: u64,
}

impl Harness {
    pub fn new() -> Harness {
        Harness { machine: Machine::new(MemStore::new()), index: 0, now_ms: 1_000_000 }
    }

    /// Runs `command` as an anonymous client: no permission checks.
    pub fn run(&mut self, command: Command) -> Outcome {
        self.run_as(&Actor::Anonymous, command)
    }

    pub fn run_as(&mut self, actor: &Actor, command: Command) -> Outcome {
        self.index += 1;
        let entry = Entry { time_ms: self.now_ms, submissions: vec![Submission::new(actor.clone(), command)] };
        self.machine.apply(self.index, &entry).expect("memory store never fails").remove(0)
    }

    pub fn ok(&mut self, command: Command) -> Output {
        self.run(command).expect("command should succeed")
    }

    pub fn err(&mut self, command: Command) -> MachineError {
        self.run(command).expect_err("command should be rejected")
    }

    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
    }

    pub fn create_topic(&mut self, name: &str, config: TopicConfig) {
        self.ok(Command::CreateTopic { name: name.into(), config });
    }

    pub fn create_group(&mut self, topic: &str, name: &str, config: GroupConfig) {
        self.ok(Command::CreateGroup { topic: topic.into(), name: name.into(), config });
    }

    pub fn publish(&mut self, topic: &str, payloads: &[&str]) -> Published {
        let messages = payloads.iter().map(|p| message(None, p)).collect();
        self.publish_messages(topic, messages)
    }

    pub fn publish_messages(&mut self, topic: &str, messages: Vec<NewMessage>) -> Published {
        match self.ok(Command::Publish(Publish { topic: topic.into(), producer: None, messages })) {
            Output::Published(published) => published,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn lease(&mut self, topic: &str, group: &str, consumer: &str, count_max: u32, lease_ms: u64) -> Leased {
        let command = Command::Lease {
            topic: topic.into(),
            group: group.into(),
            consumer: consumer.into(),
            count_max,
            lease_ms: Some(lease_ms),
            bytes_max: None,
        };
        match self.ok(command) {
            Output::Leased(leased) => leased,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn ack(&mut self, topic: &str, group: &str, tokens: &[u64]) -> Vec<Result<(), MachineError>> {
        match self.ok(Command::Ack { topic: topic.into(), group: group.into(), tokens: tokens.to_vec() }) {
            Output::Settled(results) => results,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn nack(&mut self, topic: &str, group: &str, tokens: &[u64], delay_ms: u64) -> Vec<Result<(), MachineError>> {
        let command = Command::Nack { topic: topic.into(), group: group.into(), tokens: tokens.to_vec(), delay_ms };
        match self.ok(command) {
            Output::Settled(results) => results,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn pulse(&mut self) -> crate::outcome::PulseReport {
        match self.run_as(&Actor::Broker, Command::Pulse).expect("a pulse succeeds") {
            Output::Pulsed(report) => report,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn topic(&self, name: &str) -> TopicRecord {
        query::topic(self.machine.store(), name).unwrap().expect("topic exists")
    }

    pub fn group(&self, topic: &str, name: &str) -> GroupRecord {
        let topic = self.topic(topic);
        query::group_of(self.machine.store(), topic.id, name).unwrap().expect("group exists")
    }
}

pub(crate) fn message(key: Option<&str>, payload: &str) -> NewMessage {
    NewMessage {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        headers: Vec::new(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        not_before_ms: None,
    }
}

pub(crate) fn payloads(grants: &[Grant]) -> Vec<String> {
    grants.iter().map(|g| String::from_utf8(g.message.payload.to_vec()).unwrap()).collect()
}
