//! Every frame body, log command and peer message survives encode → frame → decode unchanged.
//! The `*_tag` functions match exhaustively, so a new variant without a sample here fails to
//! compile, and the coverage assertions fail if a sample is missing.

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::{ClientCodec, PeerCodec, ServerCodec};
use crate::pb::{self, client_frame::Body as C, peer_frame::Body as P, server_frame::Body as S};

fn message() -> pb::Message {
    pb::Message {
        key: Some(Bytes::from_static(b"k")),
        headers: vec![pb::Header { name: "h".into(), value: Bytes::from_static(b"v") }],
        payload: Bytes::from_static(b"payload"),
        not_before_ms: Some(5),
    }
}

fn stored() -> pb::StoredMessage {
    pb::StoredMessage {
        seq: 9,
        log_index: 40,
        batch_pos: 2,
        time_ms: 1_700_000_000_000,
        key: Some(Bytes::from_static(b"k")),
        headers: vec![pb::Header { name: "h".into(), value: Bytes::from_static(b"v") }],
        payload: Bytes::from_static(b"stored"),
    }
}

fn start() -> pb::StartPosition {
    pb::StartPosition { position: Some(pb::start_position::Position::Seq(3)) }
}

fn topic_config() -> pb::TopicConfig {
    pb::TopicConfig {
        retention: pb::RetentionPolicy::WorkQueue as i32,
        messages_max: Some(10),
        bytes_max: Some(20),
        age_ms_max: Some(30),
        dedup_window_ms: Some(40),
    }
}

fn group_config() -> pb::GroupConfig {
    pb::GroupConfig {
        lease_ms_default: Some(1000),
        deliveries_max: 5,
        dead_letter_topic: Some("dlq".into()),
        start: Some(start()),
        ordering: pb::KeyOrdering::PerKey as i32,
    }
}

fn group_info() -> pb::GroupInfo {
    pb::GroupInfo {
        topic: "t".into(),
        name: "g".into(),
        config: Some(group_config()),
        next_seq: 4,
        backlog: 5,
        leased: 6,
        waiting_for_key: 7,
        delivered_total: 8,
        acked_total: 9,
        nacked_total: 10,
        expired_total: 11,
        dead_lettered_total: 12,
        dropped_total: 13,
        consumers: vec![pb::ConsumerLeases { consumer: "w".into(), leased: 2 }],
    }
}

fn topic_info() -> pb::TopicInfo {
    pb::TopicInfo {
        name: "t".into(),
        config: Some(topic_config()),
        created_ms: 1,
        first_seq: 2,
        last_seq: 3,
        messages: 2,
        bytes: 100,
        groups: vec![group_info()],
        subscriptions: vec![pb::SubscriptionInfo { name: "s".into(), next_seq: 3, lag: 1 }],
    }
}

fn publish() -> pb::PublishRequest {
    pb::PublishRequest {
        topic: "t".into(),
        messages: vec![message(), pb::Message::default()],
        producer_id: Some("p".into()),
        producer_seq: Some(77),
    }
}

fn tokens() -> (String, String, Vec<u64>) {
    ("t".into(), "g".into(), vec![1, 2, u64::MAX])
}

fn client_bodies() -> Vec<C> {
    let (topic, group, tokens) = tokens();
    vec![
        C::Hello(pb::Hello {
            protocol_version: 1,
            client_name: "c".into(),
            credentials: Some(pb::Credentials { user: "alice".into(), password: "secret".into() }),
        }),
        C::Ping(pb::Ping {}),
        C::Publish(publish()),
        C::Subscribe(pb::SubscribeRequest {
            topic: topic.clone(),
            subscription: Some("s".into()),
            start: Some(start()),
            credits: 64,
            credit_bytes: Some(1 << 20),
        }),
        C::Credit(pb::CreditRequest { subscribe_id: 3, credits: 10, credit_bytes: 4096 }),
        C::Commit(pb::CommitRequest { topic: topic.clone(), subscription: "s".into(), seq: 8 }),
        C::Unsubscribe(pb::UnsubscribeRequest { subscribe_id: 3 }),
        C::Lease(pb::LeaseRequest {
            topic: topic.clone(),
            group: group.clone(),
            consumer: "w".into(),
            count_max: 4,
            wait_ms: 500,
            lease_ms: Some(2000),
        }),
        C::Ack(pb::AckRequest { topic: topic.clone(), group: group.clone(), tokens: tokens.clone() }),
        C::Nack(pb::NackRequest { topic: topic.clone(), group: group.clone(), tokens: tokens.clone(), delay_ms: 9 }),
        C::Extend(pb::ExtendRequest { topic: topic.clone(), group: group.clone(), tokens, lease_ms: 3000 }),
        C::CreateTopic(pb::CreateTopic { name: topic.clone(), config: Some(topic_config()) }),
        C::DescribeTopic(pb::DescribeTopic { name: topic.clone() }),
        C::ListTopics(pb::ListTopics { after: "a".into(), limit: 10 }),
        C::DeleteTopic(pb::DeleteTopic { name: topic.clone() }),
        C::CreateGroup(pb::CreateGroup { topic: topic.clone(), name: group.clone(), config: Some(group_config()) }),
        C::DescribeGroup(pb::DescribeGroup { topic: topic.clone(), name: group.clone() }),
        C::ListGroups(pb::ListGroups { topic: topic.clone() }),
        C::DeleteGroup(pb::DeleteGroup { topic: topic.clone(), name: group }),
        C::DeleteSubscription(pb::DeleteSubscription { topic, name: "s".into() }),
        C::ClusterStatus(pb::ClusterStatusRequest {}),
        C::ChangeMembership(pb::ChangeMembership {
            change: Some(pb::change_membership::Change::Add(pb::AddBroker {
                id: 4,
                client_addr: "127.0.0.1:7004".into(),
                peer_addr: "127.0.0.1:8004".into(),
            })),
        }),
        C::ChangeMembership(pb::ChangeMembership {
            change: Some(pb::change_membership::Change::Remove(pb::RemoveBroker { id: 4 })),
        }),
        C::CreateSubscription(pb::CreateSubscription { topic: "t".into(), name: "s".into(), start: Some(start()) }),
        C::CreateUser(pb::CreateUser {
            name: "alice".into(),
            password: Some("secret".into()),
            permissions: permissions(),
            quotas: Some(quotas()),
        }),
        C::UpdateUser(pb::UpdateUser {
            name: "alice".into(),
            password: None,
            permissions: Some(pb::PermissionList { permissions: permissions() }),
            quotas: None,
        }),
        C::DeleteUser(pb::DeleteUser { name: "alice".into() }),
        C::DescribeUser(pb::DescribeUser { name: String::new() }),
        C::ListUsers(pb::ListUsers { after: "a".into(), limit: 5 }),
        C::MarkStateCheck(pb::MarkStateCheckRequest {}),
        C::StateDigest(pb::StateDigestRequest { index: 9, wait_ms: 100 }),
        C::UpdateTopic(pb::UpdateTopic { name: "t".into(), config: Some(topic_config()) }),
        C::UpdateGroup(pb::UpdateGroup { topic: "t".into(), name: "g".into(), config: Some(group_config()) }),
        C::SeekSubscription(pb::SeekSubscription { topic: "t".into(), name: "s".into(), start: Some(start()) }),
        C::Redrive(pb::RedriveRequest { topic: "dlq".into(), count_max: 10 }),
        C::PeekGroup(pb::PeekGroup { topic: "t".into(), group: "g".into(), after_seq: 3, limit: 50 }),
        C::TransferLeader(pb::TransferLeader { to: Some(2) }),
        C::TransferLeader(pb::TransferLeader { to: None }),
    ]
}

fn permissions() -> Vec<pb::Permission> {
    vec![
        pb::Permission { action: pb::Action::Publish as i32, pattern: "orders".into() },
        pb::Permission { action: pb::Action::Consume as i32, pattern: "orders/*".into() },
        pb::Permission { action: pb::Action::Admin as i32, pattern: "*".into() },
    ]
}

fn quotas() -> pb::Quotas {
    pb::Quotas { topics_max: Some(1), groups_max: None, connections_max: Some(3), in_flight_bytes_max: Some(4) }
}

fn user_info() -> pb::UserInfo {
    pb::UserInfo {
        name: "alice".into(),
        permissions: permissions(),
        quotas: Some(quotas()),
        has_password: true,
        created_ms: 7,
        topics_owned: 1,
        groups_owned: 0,
    }
}

fn client_tag(body: &C) -> usize {
    match body {
        C::Hello(_) => 0,
        C::Ping(_) => 1,
        C::Publish(_) => 2,
        C::Subscribe(_) => 3,
        C::Credit(_) => 4,
        C::Commit(_) => 5,
        C::Unsubscribe(_) => 6,
        C::Lease(_) => 7,
        C::Ack(_) => 8,
        C::Nack(_) => 9,
        C::Extend(_) => 10,
        C::CreateTopic(_) => 11,
        C::DescribeTopic(_) => 12,
        C::ListTopics(_) => 13,
        C::DeleteTopic(_) => 14,
        C::CreateGroup(_) => 15,
        C::DescribeGroup(_) => 16,
        C::ListGroups(_) => 17,
        C::DeleteGroup(_) => 18,
        C::DeleteSubscription(_) => 19,
        C::ClusterStatus(_) => 20,
        C::ChangeMembership(_) => 21,
        C::CreateSubscription(_) => 22,
        C::CreateUser(_) => 23,
        C::UpdateUser(_) => 24,
        C::DeleteUser(_) => 25,
        C::DescribeUser(_) => 26,
        C::ListUsers(_) => 27,
        C::MarkStateCheck(_) => 28,
        C::StateDigest(_) => 29,
        C::UpdateTopic(_) => 30,
        C::UpdateGroup(_) => 31,
        C::SeekSubscription(_) => 32,
        C::Redrive(_) => 33,
        C::PeekGroup(_) => 34,
        C::TransferLeader(_) => 35,
    }
}

fn server_bodies() -> Vec<S> {
    let mut not_leader = pb::Error::new(pb::ErrorCode::NotLeader, "ask broker 2");
    not_leader.leader_id = Some(2);
    not_leader.leader_addr = "127.0.0.1:7002".into();
    vec![
        S::HelloOk(pb::HelloOk {
            protocol_version: 1,
            broker_id: 1,
            leader_id: Some(2),
            leader_addr: "127.0.0.1:7002".into(),
            in_flight_max: 1024,
            frame_bytes_max: 8 << 20,
            user: "alice".into(),
        }),
        S::Pong(pb::Pong {}),
        S::PublishOk(pb::PublishOk { first_seq: 1, count: 2, log_index: 3, batch_pos: 4, duplicate: true }),
        S::SubscribeOk(pb::SubscribeOk { next_seq: 5 }),
        S::Delivery(pb::Delivery { messages: vec![stored(), stored()] }),
        S::CommitOk(pb::CommitOk { next_seq: 6 }),
        S::LeaseOk(pb::LeaseOk {
            messages: vec![pb::LeasedMessage { message: Some(stored()), token: 7, deadline_ms: 8, delivery_count: 2 }],
        }),
        S::SettleOk(pb::SettleOk {
            results: vec![
                pb::SettleResult { token: 1, error: None, deadline_ms: Some(10) },
                pb::SettleResult {
                    token: 2,
                    error: Some(pb::Error::new(pb::ErrorCode::StaleLease, "stale")),
                    deadline_ms: None,
                },
            ],
        }),
        S::Topic(topic_info()),
        S::Topics(pb::TopicList { topics: vec![topic_info(), pb::TopicInfo::default()] }),
        S::Group(group_info()),
        S::Groups(pb::GroupList { groups: vec![group_info()] }),
        S::ClusterStatus(pb::ClusterStatus {
            broker_id: 1,
            role: "leader".into(),
            term: 3,
            leader_id: Some(1),
            commit_index: 100,
            applied_index: 99,
            brokers: vec![pb::BrokerInfo {
                id: 2,
                client_addr: "127.0.0.1:7002".into(),
                peer_addr: "127.0.0.1:8002".into(),
                voter: true,
                matched_index: Some(98),
                lag: Some(2),
            }],
            repair_floor: Some(97),
            leader_changes_10m: 4,
            uptime_ms: 61_000,
            not_ready: Some("no leader known".into()),
        }),
        S::Done(pb::Empty {}),
        S::Error(not_leader),
        S::Subscription(pb::SubscriptionInfo { name: "s".into(), next_seq: 4, lag: 2 }),
        S::User(user_info()),
        S::Users(pb::UserList { users: vec![user_info(), pb::UserInfo::default()] }),
        S::StateMark(pb::StateMark { index: 42 }),
        S::StateDigest(pb::StateDigest {
            broker_id: 2,
            index: 42,
            digest: vec![7; 32].into(),
            mismatches: vec![pb::DigestMismatch { index: 30, other_broker: 1 }],
            compared: 12,
        }),
        S::RedriveOk(pb::RedriveOk {
            moved: vec![pb::RedrivenTopic { topic: "t".into(), messages: 3 }],
            stopped_seq: Some(9),
            stopped_why: "gone".into(),
        }),
        S::LeaderTransferred(pb::LeaderTransferred { leader_id: 2, term: 5, took_ms: 840 }),
        S::GroupPeek(pb::GroupPeek {
            messages: vec![pb::PeekedMessage {
                message: Some(stored()),
                state: pb::PeekedState::Leased as i32,
                deliveries: 2,
                consumer: "w".into(),
                deadline_ms: 77,
                available_ms: 0,
            }],
        }),
    ]
}

fn server_tag(body: &S) -> usize {
    match body {
        S::HelloOk(_) => 0,
        S::Pong(_) => 1,
        S::PublishOk(_) => 2,
        S::SubscribeOk(_) => 3,
        S::Delivery(_) => 4,
        S::CommitOk(_) => 5,
        S::LeaseOk(_) => 6,
        S::SettleOk(_) => 7,
        S::Topic(_) => 8,
        S::Topics(_) => 9,
        S::Group(_) => 10,
        S::Groups(_) => 11,
        S::ClusterStatus(_) => 12,
        S::Done(_) => 13,
        S::Error(_) => 14,
        S::Subscription(_) => 15,
        S::User(_) => 16,
        S::Users(_) => 17,
        S::StateMark(_) => 18,
        S::StateDigest(_) => 19,
        S::RedriveOk(_) => 20,
        S::GroupPeek(_) => 21,
        S::LeaderTransferred(_) => 22,
    }
}

fn commands() -> Vec<pb::command::Op> {
    use pb::command::Op;
    let (topic, group, tokens) = tokens();
    vec![
        Op::CreateTopic(pb::CreateTopic { name: topic.clone(), config: Some(topic_config()) }),
        Op::DeleteTopic(pb::DeleteTopic { name: topic.clone() }),
        Op::Publish(publish()),
        Op::CreateGroup(pb::CreateGroup { topic: topic.clone(), name: group.clone(), config: Some(group_config()) }),
        Op::DeleteGroup(pb::DeleteGroup { topic: topic.clone(), name: group.clone() }),
        Op::CreateSubscription(pb::CreateSubscription { topic: topic.clone(), name: "s".into(), start: Some(start()) }),
        Op::DeleteSubscription(pb::DeleteSubscription { topic: topic.clone(), name: "s".into() }),
        Op::Commit(pb::CommitRequest { topic: topic.clone(), subscription: "s".into(), seq: 4 }),
        Op::Lease(pb::LeaseCommand {
            topic: topic.clone(),
            group: group.clone(),
            consumer: "w".into(),
            count_max: 3,
            lease_ms: Some(100),
            bytes_max: Some(1 << 20),
        }),
        Op::Ack(pb::AckRequest { topic: topic.clone(), group: group.clone(), tokens: tokens.clone() }),
        Op::Nack(pb::NackRequest { topic: topic.clone(), group: group.clone(), tokens: tokens.clone(), delay_ms: 1 }),
        Op::Extend(pb::ExtendRequest { topic, group, tokens, lease_ms: 200 }),
        Op::Pulse(pb::Empty {}),
        Op::CreateUser(pb::UserCommand {
            name: "alice".into(),
            password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            permissions: permissions(),
            quotas: Some(quotas()),
        }),
        Op::UpdateUser(pb::UserUpdateCommand {
            name: "alice".into(),
            password_hash: None,
            permissions: Some(pb::PermissionList { permissions: Vec::new() }),
            quotas: Some(pb::Quotas::default()),
        }),
        Op::DeleteUser(pb::DeleteUser { name: "alice".into() }),
        Op::BootstrapAdmin(pb::BootstrapAdmin { name: "admin".into(), password_hash: "$argon2id$x".into() }),
        Op::RecordMembershipChange(pb::ChangeMembership {
            change: Some(pb::change_membership::Change::Remove(pb::RemoveBroker { id: 3 })),
        }),
        Op::MembershipApplied(pb::MembershipApplied { voters: vec![1, 2], learners: vec![4] }),
        Op::MarkStateCheck(pb::MarkStateCheck { claim: None }),
        Op::MarkStateCheck(pb::MarkStateCheck {
            claim: Some(pb::DigestClaim { index: 5, broker: 2, digest: vec![1; 32].into() }),
        }),
        Op::UpdateTopic(pb::UpdateTopic { name: "t".into(), config: Some(topic_config()) }),
        Op::UpdateGroup(pb::UpdateGroup { topic: "t".into(), name: "g".into(), config: Some(group_config()) }),
        Op::SeekSubscription(pb::SeekSubscription { topic: "t".into(), name: "s".into(), start: Some(start()) }),
        Op::Redrive(pb::RedriveRequest { topic: "dlq".into(), count_max: 4 }),
    ]
}

/// Every kind of actor, in turn.
fn actor(i: usize) -> Option<pb::Actor> {
    use pb::actor::Kind;
    let kind = match i % 4 {
        0 => return None,
        1 => Kind::Broker(pb::Empty {}),
        2 => Kind::Anonymous(pb::Empty {}),
        _ => Kind::User("alice".into()),
    };
    Some(pb::Actor { kind: Some(kind) })
}

fn command_tag(op: &pb::command::Op) -> usize {
    use pb::command::Op;
    match op {
        Op::CreateTopic(_) => 0,
        Op::DeleteTopic(_) => 1,
        Op::Publish(_) => 2,
        Op::CreateGroup(_) => 3,
        Op::DeleteGroup(_) => 4,
        Op::CreateSubscription(_) => 5,
        Op::DeleteSubscription(_) => 6,
        Op::Commit(_) => 7,
        Op::Lease(_) => 8,
        Op::Ack(_) => 9,
        Op::Nack(_) => 10,
        Op::Extend(_) => 11,
        Op::Pulse(_) => 12,
        Op::CreateUser(_) => 13,
        Op::UpdateUser(_) => 14,
        Op::DeleteUser(_) => 15,
        Op::BootstrapAdmin(_) => 16,
        Op::RecordMembershipChange(_) => 17,
        Op::MembershipApplied(_) => 18,
        Op::MarkStateCheck(_) => 19,
        Op::UpdateTopic(_) => 20,
        Op::UpdateGroup(_) => 21,
        Op::SeekSubscription(_) => 22,
        Op::Redrive(_) => 23,
    }
}

fn log_id(term: u64, index: u64) -> pb::LogId {
    pb::LogId { leader_id: Some(pb::LeaderId { term, node_id: 1 }), index }
}

fn vote() -> pb::Vote {
    pb::Vote { leader_id: Some(pb::LeaderId { term: 3, node_id: 2 }), committed: true }
}

fn membership() -> pb::Membership {
    pb::Membership {
        configs: vec![pb::VoterSet { ids: vec![1, 2, 3] }, pb::VoterSet { ids: vec![1, 2, 3, 4, 5] }],
        nodes: vec![pb::BrokerAddr { id: 1, peer_addr: "127.0.0.1:8001".into(), client_addr: "127.0.0.1:7001".into() }],
    }
}

fn peer_bodies() -> Vec<P> {
    use pb::append_entries_response::Result as R;
    use pb::raft_entry::Payload;
    let commands = commands().into_iter().enumerate().map(|(i, op)| pb::Command { op: Some(op), actor: actor(i) });
    let entry = pb::Entry { time_ms: 1, commands: commands.collect() };
    let append = |result| P::AppendEntriesOk(pb::AppendEntriesResponse { result: Some(result) });
    vec![
        P::Hello(pb::PeerHello { protocol_version: 1, from_id: 2, initialized: true }),
        P::AppendEntries(pb::AppendEntriesRequest {
            vote: Some(vote()),
            prev_log_id: Some(log_id(2, 10)),
            entries: vec![
                pb::RaftEntry { log_id: Some(log_id(3, 11)), payload: Some(Payload::Blank(pb::Empty {})) },
                pb::RaftEntry {
                    log_id: Some(log_id(3, 12)),
                    payload: Some(Payload::Normal(entry.encode_to_vec().into())),
                },
                pb::RaftEntry { log_id: Some(log_id(3, 13)), payload: Some(Payload::Membership(membership())) },
            ],
            leader_commit: Some(log_id(3, 9)),
        }),
        append(R::Success(pb::Empty {})),
        append(R::PartialSuccess(pb::PartialSuccess { matching: Some(log_id(3, 12)) })),
        append(R::Conflict(pb::Empty {})),
        append(R::HigherVote(vote())),
        P::Vote(pb::VoteRequest { vote: Some(vote()), last_log_id: Some(log_id(2, 10)) }),
        P::VoteOk(pb::VoteResponse { vote: Some(vote()), vote_granted: true, last_log_id: None }),
        P::SnapshotChunk(pb::SnapshotChunk {
            vote: Some(vote()),
            meta: Some(pb::SnapshotMeta {
                last_log_id: Some(log_id(3, 100)),
                last_membership: Some(pb::StoredMembership {
                    log_id: Some(log_id(1, 1)),
                    membership: Some(membership()),
                }),
                snapshot_id: "3-100-1".into(),
            }),
            offset: 1 << 20,
            data: Bytes::from_static(b"chunk"),
            done: true,
        }),
        P::SnapshotChunkOk(pb::SnapshotChunkOk { vote: Some(vote()) }),
        P::Forward(pb::Forwarded {
            request: Some(pb::ClientFrame { request_id: 5, body: Some(C::Publish(publish())) }),
            actor: actor(3),
        }),
        P::ForwardOk(pb::ForwardedAnswer {
            answer: Some(pb::ServerFrame { request_id: 5, body: Some(S::Done(pb::Empty {})) }),
            applied_index: 17,
        }),
        P::PreVote(pb::PreVoteRequest { candidate: 3, next_term: 4, last_log_id: Some(log_id(3, 12)) }),
        P::PreVoteOk(pb::PreVoteAnswer { granted: true, term: 3 }),
        P::TimeoutNow(pb::TimeoutNow { from: 1, term: 4, candidate: 2 }),
        P::TimeoutNowOk(pb::Empty {}),
        P::Error(pb::PeerError { message: "busy".into(), higher_vote: Some(vote()), snapshot_mismatch: true }),
    ]
}

fn peer_tag(body: &P) -> usize {
    match body {
        P::Hello(_) => 0,
        P::AppendEntries(_) => 1,
        P::AppendEntriesOk(_) => 2,
        P::Vote(_) => 3,
        P::VoteOk(_) => 4,
        P::SnapshotChunk(_) => 5,
        P::SnapshotChunkOk(_) => 6,
        P::Forward(_) => 7,
        P::ForwardOk(_) => 8,
        P::Error(_) => 9,
        P::PreVote(_) => 10,
        P::PreVoteOk(_) => 11,
        P::TimeoutNow(_) => 12,
        P::TimeoutNowOk(_) => 13,
    }
}

/// Encodes with `encoder`, decodes with `decoder`, and checks nothing changed or was left over.
fn through<T, E, D>(frame: T, encoder: &mut E, decoder: &mut D) -> T
where
    T: Clone + PartialEq + std::fmt::Debug,
    E: Encoder<T>,
    E::Error: std::fmt::Debug,
    D: Decoder<Item = T>,
    D::Error: std::fmt::Debug,
{
    let mut bytes = BytesMut::new();
    encoder.encode(frame.clone(), &mut bytes).unwrap();
    let decoded = decoder.decode(&mut bytes).unwrap().expect("a whole frame");
    assert!(bytes.is_empty(), "bytes left after one frame");
    assert_eq!(decoded, frame);
    decoded
}

fn covers(tags: impl Iterator<Item = usize>, variants: usize) {
    let seen: BTreeSet<usize> = tags.collect();
    assert_eq!(seen, (0..variants).collect(), "a variant has no round-trip sample");
}

#[test]
fn every_client_frame_round_trips() {
    let bodies = client_bodies();
    covers(bodies.iter().map(client_tag), 36);
    for (i, body) in bodies.into_iter().enumerate() {
        let frame = pb::ClientFrame { request_id: i as u64 + 1, body: Some(body) };
        through(frame, &mut ClientCodec::default(), &mut ServerCodec::default());
    }
}

#[test]
fn every_server_frame_round_trips() {
    let bodies = server_bodies();
    covers(bodies.iter().map(server_tag), 23);
    for (i, body) in bodies.into_iter().enumerate() {
        let frame = pb::ServerFrame { request_id: u64::MAX - i as u64, body: Some(body) };
        through(frame, &mut ServerCodec::default(), &mut ClientCodec::default());
    }
}

#[test]
fn every_log_command_round_trips() {
    let ops = commands();
    covers(ops.iter().map(command_tag), 24);
    let entry = pb::Entry {
        time_ms: 1_700_000_000_123,
        commands: ops.into_iter().enumerate().map(|(i, op)| pb::Command { op: Some(op), actor: actor(i) }).collect(),
    };
    let decoded = pb::Entry::decode(entry.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, entry);
}

#[test]
fn every_peer_frame_round_trips() {
    let bodies = peer_bodies();
    covers(bodies.iter().map(peer_tag), 14);
    for (i, body) in bodies.into_iter().enumerate() {
        let frame = pb::PeerFrame { request_id: i as u64, body: Some(body) };
        through(frame, &mut PeerCodec::default(), &mut PeerCodec::default());
    }
}

#[test]
fn start_positions_round_trip() {
    use pb::start_position::Position;
    for position in
        [Position::Earliest(pb::Empty {}), Position::Latest(pb::Empty {}), Position::Seq(1), Position::TimeMs(2)]
    {
        let start = pb::StartPosition { position: Some(position) };
        assert_eq!(pb::StartPosition::decode(start.encode_to_vec().as_slice()).unwrap(), start);
    }
}
