//! The attacks of issue 15 and the security they are refused by, against real brokers.
//!
//! - A stranger on the peer port (no certificate, no secret) tries every attack that used to
//!   work: forwarding a client request, a forged AppendEntries, undecodable entries, a snapshot
//!   whose id is a path, a vote storm. Each connection closes without an answer, and the cluster
//!   keeps its term and every acknowledged message.
//! - A peer that does authenticate still cannot put an undecodable entry in a log or write a
//!   snapshot outside the data directory.
//! - Clients: TLS with a wrong CA, an expired certificate, a wrong host name; client
//!   certificates as identities; permissions for each action, through a follower too; membership
//!   and users for admins only; revocation mid-subscription and mid-lease; quotas; the audit topic.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus_consumers::{ClientError, ConnectOptions, Connection, Credentials, Tls};
use chorus_protocol::PeerCodec;
use chorus_protocol::pb::{
    self, ErrorCode, client_frame::Body as Request, peer_frame::Body as Peer, server_frame::Body,
};
use chorus_tests::cluster::{ADMIN, Cluster, ClusterOptions, PeerMode, Security};
use chorus_tests::workload::{ok, refused};
use futures::{SinkExt, StreamExt};
use prost::Message;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const T: Duration = Duration::from_secs(10);

async fn admin(cluster: &Cluster, id: u64) -> Connection {
    Connection::connect_with(&cluster.brokers[&id].client_addr, &cluster.connect_options()).await.expect("connect")
}

fn publish(topic: &str, payload: &str) -> Request {
    Request::Publish(pb::PublishRequest {
        topic: topic.into(),
        messages: vec![pb::Message { payload: Bytes::copy_from_slice(payload.as_bytes()), ..Default::default() }],
        ..Default::default()
    })
}

fn create_topic(name: &str) -> Request {
    Request::CreateTopic(pb::CreateTopic { name: name.into(), config: None })
}

/// Every payload of `topic`, read through an ephemeral subscription from the start.
async fn payloads(connection: &Connection, topic: &str, count: usize) -> Vec<String> {
    let subscribe = pb::SubscribeRequest {
        topic: topic.into(),
        subscription: None,
        start: None,
        credits: 10_000,
        credit_bytes: None,
    };
    let (id, _, mut pushes) = connection.open_stream(subscribe, T).await.expect("subscribe");
    let mut seen = Vec::new();
    while seen.len() < count {
        match tokio::time::timeout(T, pushes.recv()).await.expect("a delivery") {
            Some(Body::Delivery(delivery)) => {
                seen.extend(delivery.messages.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()))
            }
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    connection.close_stream(id);
    seen
}

fn log_id(term: u64, node_id: u64, index: u64) -> pb::LogId {
    pb::LogId { leader_id: Some(pb::LeaderId { term, node_id }), index }
}

/// What a stranger sends: each the way issue 15 found it served.
fn attacks(term: u64, last_index: u64, escape: &str) -> Vec<(&'static str, Peer)> {
    let forged_entry = pb::Entry {
        time_ms: 2_100_000_000_000,
        commands: vec![pb::Command {
            op: Some(pb::command::Op::Publish(pb::PublishRequest {
                topic: "orders".into(),
                messages: vec![pb::Message { payload: Bytes::from_static(b"FORGED"), ..Default::default() }],
                ..Default::default()
            })),
            actor: None,
        }],
    };
    let append = |payload: pb::raft_entry::Payload| {
        Peer::AppendEntries(pb::AppendEntriesRequest {
            vote: Some(pb::Vote { leader_id: Some(pb::LeaderId { term: term + 1000, node_id: 77 }), committed: true }),
            prev_log_id: Some(log_id(term, 1, last_index)),
            entries: vec![pb::RaftEntry {
                log_id: Some(log_id(term + 1000, 77, last_index + 1)),
                payload: Some(payload),
            }],
            leader_commit: Some(log_id(term + 1000, 77, last_index + 1)),
        })
    };
    let forward = |request: Request| {
        Peer::Forward(pb::Forwarded {
            request: Some(pb::ClientFrame { request_id: 9, body: Some(request) }),
            actor: None,
        })
    };
    vec![
        ("forwarded create topic", forward(create_topic("injected"))),
        ("forwarded publish", forward(publish("orders", "INJECTED"))),
        ("forged append", append(pb::raft_entry::Payload::Normal(forged_entry.encode_to_vec().into()))),
        ("undecodable append", append(pb::raft_entry::Payload::Normal(Bytes::from_static(&[0xff, 0xfe, 0xfd])))),
        (
            "path-traversing snapshot",
            Peer::SnapshotChunk(pb::SnapshotChunk {
                vote: Some(pb::Vote {
                    leader_id: Some(pb::LeaderId { term: term + 1000, node_id: 77 }),
                    committed: true,
                }),
                meta: Some(pb::SnapshotMeta {
                    last_log_id: Some(log_id(term + 1000, 77, last_index + 100)),
                    last_membership: None,
                    snapshot_id: escape.into(),
                }),
                offset: 0,
                data: Bytes::from_static(b"attacker's bytes"),
                done: true,
            }),
        ),
        (
            "vote",
            Peer::Vote(pb::VoteRequest {
                vote: Some(pb::Vote {
                    leader_id: Some(pb::LeaderId { term: term + 1000, node_id: 77 }),
                    committed: false,
                }),
                last_log_id: Some(log_id(term + 1000, 77, last_index + 1000)),
            }),
        ),
    ]
}

/// Sends each attack on fresh unauthenticated connections to broker `to` at `addr`: the way it
/// used to work (a PeerHello, then the request), and after a preamble claiming each mode, as one
/// who knows the protocol but holds no certificate or secret. The broker must answer nothing and
/// close. (A broker that authenticated nobody would serve the `Open` preamble's requests.)
async fn strangers_are_refused(addr: &str, to: u64, attacks: Vec<(&'static str, Peer)>) {
    use chorus_broker::security::peer_link::{Mode, Preamble};
    use tokio::io::AsyncWriteExt;
    let preambles = [None, Some(Mode::Open), Some(Mode::Tls), Some(Mode::Secret)];
    for (name, body) in attacks {
        for preamble in preambles {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            if let Some(mode) = preamble {
                tcp.write_all(&Preamble { mode, from: 77, to }.encode()).await.unwrap();
            }
            let mut stranger = Framed::new(tcp, PeerCodec::default());
            let hello = pb::PeerHello { protocol_version: 1, from_id: 77, initialized: true };
            let _ = stranger.send(pb::PeerFrame { request_id: 1, body: Some(Peer::Hello(hello)) }).await;
            let _ = stranger.send(pb::PeerFrame { request_id: 2, body: Some(body.clone()) }).await;
            // The secret handshake's challenge, 32 bytes that make no frame, is the broker's
            // only word to a stranger.
            let answer = match tokio::time::timeout(T, stranger.next()).await.expect("the broker closes, never hangs") {
                Some(Ok(frame)) => Some(frame),
                Some(Err(_)) | None => None,
            };
            assert!(answer.is_none(), "{name} after {preamble:?}: the broker answered a stranger: {answer:?}");
        }
    }
}

async fn the_peer_port_refuses_strangers(peers: PeerMode) {
    let options = ClusterOptions { security: Security { peers, client_tls: false, auth: false }, ..Default::default() };
    let cluster = Cluster::start_with(3, options).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await;
    let c = admin(&cluster, leader).await;
    ok(&c, create_topic("orders")).await;
    for i in 0..20 {
        ok(&c, publish("orders", &format!("m{i}"))).await;
    }
    let before = cluster.status(leader).await.expect("status");
    let escape = cluster.root().join("escaped").display().to_string();
    let storm_until = Instant::now() + Duration::from_secs(2);
    // Every broker, several times over: a vote storm among the rest.
    while Instant::now() < storm_until {
        for id in [1, 2, 3] {
            let attacks = attacks(before.term, before.applied_index, &escape);
            strangers_are_refused(&cluster.brokers[&id].peer_listen, id, attacks).await;
        }
    }
    // A stranger with a TLS certificate of its own CA gets no further.
    if peers == PeerMode::Tls {
        let foreign = chorus_broker::security::pki::Authority::generate("a stranger's CA").unwrap();
        let dir = cluster.root().join("stranger");
        std::fs::create_dir_all(&dir).unwrap();
        let cert = foreign
            .issue_server("stranger", &["127.0.0.1".into()], chorus_broker::security::pki::Validity::days(1))
            .unwrap();
        let files = chorus_broker::security::pki::write_broker_files(&dir, &foreign, &cert).unwrap();
        let auth = chorus_broker::security::peer_link::PeerAuth::tls(
            &chorus_broker::security::tls::BrokerTls::load(&files).unwrap(),
        );
        let addr = &cluster.brokers[&leader].peer_listen;
        let dialed = auth.dial(TcpStream::connect(addr).await.unwrap(), 77, leader, addr).await;
        // TLS 1.3 lets the client finish before the server refuses its certificate: the refusal
        // shows as the first read failing.
        if let Ok(stream) = dialed {
            let mut framed = Framed::new(stream, PeerCodec::default());
            let hello = pb::PeerHello { protocol_version: 1, from_id: 77, initialized: true };
            let _ = framed.send(pb::PeerFrame { request_id: 1, body: Some(Peer::Hello(hello)) }).await;
            assert!(!matches!(framed.next().await, Some(Ok(_))), "a certificate of another CA was answered");
        }
    }
    let after = cluster.status(leader).await.expect("the leader still answers");
    assert_eq!((after.term, after.leader_id), (before.term, before.leader_id), "the vote storm moved nothing");
    assert!(!std::path::Path::new(&format!("{escape}.snap")).exists(), "a snapshot escaped the data directory");
    for id in [1, 2, 3] {
        let c = admin(&cluster, id).await;
        let seen = payloads(&c, "orders", 20).await;
        assert_eq!(seen, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>(), "broker {id} lost or gained messages");
        let topics = match ok(&c, Request::ListTopics(pb::ListTopics::default())).await {
            Body::Topics(list) => list.topics.into_iter().map(|t| t.name).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(topics, ["orders"], "broker {id} serves an injected topic");
    }
    // Still a working cluster.
    ok(&c, publish("orders", "after")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_peer_port_refuses_strangers_under_tls() {
    the_peer_port_refuses_strangers(PeerMode::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_peer_port_refuses_strangers_with_a_cluster_secret() {
    the_peer_port_refuses_strangers(PeerMode::Secret).await;
}

/// A peer that authenticates (a buggy or damaged broker) still cannot make a log hold an entry
/// that does not apply, nor write a snapshot outside the data directory: each is refused before
/// openraft sees it, and the broker goes on. Before, the first stopped every broker for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_cannot_poison_the_log_or_escape_the_data_directory() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let c = admin(&cluster, leader).await;
    ok(&c, create_topic("orders")).await;
    ok(&c, publish("orders", "before")).await;
    cluster.wait_caught_up(&[1, 2, 3], 0, T).await;
    let status = cluster.status(follower).await.unwrap();
    let (term, last) = (status.term, status.applied_index);
    // As the leader itself would send it: its vote, right after the last entry, committing it.
    let vote = Some(pb::Vote { leader_id: Some(pb::LeaderId { term, node_id: leader }), committed: true });
    let mut peer = cluster.peer_connection(leader, follower).await;
    let poisoned = pb::AppendEntriesRequest {
        vote,
        prev_log_id: Some(log_id(term, leader, last)),
        entries: vec![pb::RaftEntry {
            log_id: Some(log_id(term, leader, last + 1)),
            payload: Some(pb::raft_entry::Payload::Normal(Bytes::from_static(&[0xff, 0xfe]))),
        }],
        leader_commit: Some(log_id(term, leader, last + 1)),
    };
    peer.send(pb::PeerFrame { request_id: 1, body: Some(Peer::AppendEntries(poisoned)) }).await.unwrap();
    let answer = peer.next().await.unwrap().unwrap();
    assert!(matches!(&answer.body, Some(Peer::Error(e)) if e.message.contains("does not decode")), "{answer:?}");

    let escape = cluster.root().join("escaped");
    let voters = pb::Membership { configs: vec![pb::VoterSet { ids: vec![1, 2, 3] }], nodes: Vec::new() };
    let chunk = pb::SnapshotChunk {
        vote,
        meta: Some(pb::SnapshotMeta {
            last_log_id: Some(log_id(term, leader, last + 50)),
            last_membership: Some(pb::StoredMembership { log_id: Some(log_id(1, 1, 0)), membership: Some(voters) }),
            snapshot_id: escape.display().to_string(),
        }),
        offset: 0,
        data: Bytes::from_static(b"not a snapshot"),
        done: true,
    };
    peer.send(pb::PeerFrame { request_id: 2, body: Some(Peer::SnapshotChunk(chunk)) }).await.unwrap();
    let answer = peer.next().await.unwrap().unwrap();
    assert!(matches!(&answer.body, Some(Peer::Error(e)) if e.message.contains("not a plain name")), "{answer:?}");
    assert!(!escape.with_extension("snap").exists(), "the snapshot escaped the data directory");

    // The follower goes on, and so does the cluster, across a restart of every broker.
    ok(&c, publish("orders", "after")).await;
    let applied = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_applied_through(&[follower], applied, T).await;
    let mut cluster = cluster;
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    for id in [1, 2, 3] {
        cluster.spawn(id);
    }
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let c = admin(&cluster, follower).await;
    assert_eq!(payloads(&c, "orders", 2).await, ["before", "after"]);
    ok(&admin(&cluster, leader).await, publish("orders", "restarted")).await;
}

/// A secured cluster: TLS on both ports, users. Returns it with the admin's connection to the
/// leader, and the leader's id.
async fn secured(brokers: u64) -> (Cluster, Connection, u64) {
    let options = ClusterOptions { security: Security::SECURED, ..Default::default() };
    let cluster = Cluster::start_with(brokers, options).await;
    let ids: Vec<u64> = (1..=brokers).collect();
    let leader = cluster.wait_for_leader(&ids, T).await;
    let c = admin(&cluster, leader).await;
    (cluster, c, leader)
}

async fn create_user(
    c: &Connection,
    name: &str,
    password: Option<&str>,
    permissions: &[&str],
    quotas: Option<pb::Quotas>,
) {
    let permissions = permissions.iter().map(|text| {
        let permission = chorus_machine::Permission::parse(text).unwrap();
        chorus_broker::command::permission_to_pb(&permission)
    });
    let request = pb::CreateUser {
        name: name.into(),
        password: password.map(Into::into),
        permissions: permissions.collect(),
        quotas,
    };
    assert!(matches!(ok(c, Request::CreateUser(request)).await, Body::Done(_)));
}

async fn connect_as(cluster: &Cluster, id: u64, user: &str, password: &str) -> Result<Connection, ClientError> {
    Connection::connect_with(&cluster.brokers[&id].client_addr, &cluster.connect_options_as(user, password)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_tls_refuses_a_wrong_ca_and_plaintext_and_takes_certificates_as_users() {
    let (cluster, c, leader) = secured(1).await;
    let addr = cluster.brokers[&leader].client_addr.clone();
    let password = cluster.secrets.admin_password.clone();
    let credentials = Some(Credentials::new(ADMIN, &password));

    // A client that trusts another CA does not trust the broker.
    let dir = cluster.root().join("client-side");
    std::fs::create_dir_all(&dir).unwrap();
    let stranger = chorus_broker::security::pki::Authority::generate("another CA").unwrap();
    let stranger_ca = dir.join("stranger-ca.pem");
    chorus_broker::security::pki::write_file(&stranger_ca, &stranger.cert_pem, false).unwrap();
    let wrong_ca =
        ConnectOptions { tls: Some(Tls::from_files(&stranger_ca, None).unwrap()), ..cluster.connect_options() };
    assert!(matches!(Connection::connect_with(&addr, &wrong_ca).await, Err(ClientError::Tls(_))), "a wrong CA");

    // Plaintext to a TLS port: told so, in the client's own framing.
    let plain = ConnectOptions { tls: None, ..cluster.connect_options() };
    match Connection::connect_with(&addr, &plain).await {
        Err(ClientError::Server(error)) => {
            assert_eq!(error.code, ErrorCode::InvalidArgument);
            assert!(error.message.contains("TLS"), "{}", error.message);
        }
        other => panic!("plaintext to a TLS port: {other:?}"),
    }

    // A client certificate names its user: a certificate-only user.
    create_user(&c, "carol", None, &["publish:orders"], None).await;
    ok(&c, create_topic("orders")).await;
    let issue = |ca: &chorus_broker::security::pki::Authority, user: &str, validity| {
        let issued = ca.issue_client(user, validity).unwrap();
        let (cert, key) = (dir.join(format!("{user}-{}.pem", rand::random::<u32>())), dir.join(format!("{user}.key")));
        chorus_broker::security::pki::write_file(&cert, &issued.cert_pem, false).unwrap();
        chorus_broker::security::pki::write_file(&key, &issued.key_pem, true).unwrap();
        Tls::from_files(&cluster.secrets.tls.ca, Some((&cert, &key))).unwrap()
    };
    let valid = chorus_broker::security::pki::Validity::days(1);
    let carol = ConnectOptions {
        tls: Some(issue(&cluster.secrets.client_ca, "carol", valid)),
        credentials: None,
        ..cluster.connect_options()
    };
    let as_carol = Connection::connect_with(&addr, &carol).await.expect("carol's certificate");
    assert_eq!(as_carol.hello().user, "carol");
    ok(&as_carol, publish("orders", "by certificate")).await;
    assert_eq!(refused(&as_carol, create_topic("mine")).await, ErrorCode::Forbidden);

    // Refused: a certificate of the cluster CA (a broker's, not a user's), one of no known CA, an
    // expired one, and one naming nobody.
    for (why, tls) in [
        ("the cluster CA", issue(&cluster.secrets.ca, "carol", valid)),
        ("a stranger's CA", issue(&stranger, "carol", valid)),
        ("expired", issue(&cluster.secrets.client_ca, "carol", chorus_broker::security::pki::Validity::expired())),
    ] {
        let options = ConnectOptions { tls: Some(tls), credentials: None, ..cluster.connect_options() };
        let result = Connection::connect_with(&addr, &options).await;
        assert!(result.is_err(), "{why}: {result:?}");
    }
    let nobody = ConnectOptions {
        tls: Some(issue(&cluster.secrets.client_ca, "dave", valid)),
        credentials: None,
        ..cluster.connect_options()
    };
    match Connection::connect_with(&addr, &nobody).await {
        Err(ClientError::Server(error)) => assert_eq!(error.code, ErrorCode::Unauthorized),
        other => panic!("a certificate naming no user: {other:?}"),
    }
    // A certificate and credentials must name the same user.
    let both = ConnectOptions { credentials, ..carol };
    assert!(
        matches!(Connection::connect_with(&addr, &both).await, Err(ClientError::Server(e)) if e.code == ErrorCode::Unauthorized)
    );
}

/// The broker's certificate must be valid now and for the host dialed: a one-broker cluster
/// started with an expired one, then with one for another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_refuse_an_expired_certificate_and_a_wrong_host() {
    for (why, hosts, validity) in [
        ("expired", vec!["127.0.0.1".to_owned()], chorus_broker::security::pki::Validity::expired()),
        ("another host", vec!["broker.chorus.invalid".to_owned()], chorus_broker::security::pki::Validity::days(1)),
    ] {
        let options = ClusterOptions {
            security: Security::SECURED,
            broker_certificate: Some((hosts, validity)),
            ..Default::default()
        };
        let cluster = Cluster::start_with(1, options).await;
        let addr = cluster.brokers[&1].client_addr.clone();
        let deadline = Instant::now() + T;
        // The broker runs: its port accepts connections; the TLS handshake is what fails.
        let result = loop {
            match Connection::connect_with(&addr, &cluster.connect_options()).await {
                Err(ClientError::Connect { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => break other,
            }
        };
        match result {
            Err(ClientError::Tls(error)) => assert!(error.to_string().contains("certificate"), "{why}: {error}"),
            other => panic!("{why}: {other:?}"),
        }
    }
}

fn lease(topic: &str, group: &str, count_max: u32, wait_ms: u64) -> Request {
    Request::Lease(pb::LeaseRequest {
        topic: topic.into(),
        group: group.into(),
        consumer: "w".into(),
        count_max,
        wait_ms,
        lease_ms: Some(60_000),
    })
}

fn subscribe(topic: &str, subscription: Option<&str>) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        topic: topic.into(),
        subscription: subscription.map(Into::into),
        start: None,
        credits: 1000,
        credit_bytes: None,
    }
}

fn group(topic: &str, name: &str) -> Request {
    Request::CreateGroup(pb::CreateGroup { topic: topic.into(), name: name.into(), config: None })
}

async fn open_refused(connection: &Connection, request: pb::SubscribeRequest) -> ErrorCode {
    match connection.open_stream(request, T).await {
        Err(ClientError::Server(error)) => error.code,
        Ok((_, first, _)) => panic!("expected a refusal, got {first:?}"),
        Err(other) => panic!("expected an error answer, got {other:?}"),
    }
}

/// Each action needs its own permission, on the exact names or prefixes given, whichever broker
/// a client talks to: a follower forwards the request with the client's identity, and the
/// leader's state machine checks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_action_needs_its_permission_on_every_broker() {
    let (cluster, c, leader) = secured(3).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    for topic in ["orders", "audit-log", "payments"] {
        ok(&c, create_topic(topic)).await;
    }
    ok(&c, group("orders", "billing")).await;
    ok(&c, group("orders", "shipping")).await;
    ok(&c, publish("orders", "o1")).await;
    create_user(&c, "producer", Some("p"), &["publish:orders"], None).await;
    create_user(&c, "reader", Some("r"), &["subscribe:orders"], None).await;
    create_user(&c, "worker", Some("w"), &["consume:orders/billing"], None).await;
    create_user(&c, "owner", Some("o"), &["manage:team.*", "manage:orders/*"], None).await;
    // Permissions are replicated state: wait until the follower applied them.
    let applied = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_applied_through(&[follower], applied, T).await;

    for id in [leader, follower] {
        let producer = connect_as(&cluster, id, "producer", "p").await.unwrap();
        assert!(matches!(ok(&producer, publish("orders", "by producer")).await, Body::PublishOk(_)));
        assert_eq!(refused(&producer, publish("payments", "x")).await, ErrorCode::Forbidden);
        assert_eq!(open_refused(&producer, subscribe("orders", None)).await, ErrorCode::Forbidden);
        assert_eq!(refused(&producer, lease("orders", "billing", 1, 0)).await, ErrorCode::Forbidden);
        assert_eq!(refused(&producer, create_topic("mine")).await, ErrorCode::Forbidden);
        assert_eq!(
            refused(&producer, Request::DescribeTopic(pb::DescribeTopic { name: "payments".into() })).await,
            ErrorCode::Forbidden
        );
        let Body::Topics(visible) = ok(&producer, Request::ListTopics(pb::ListTopics::default())).await else {
            panic!()
        };
        assert_eq!(
            visible.topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["orders"],
            "listing shows what one may see"
        );

        let reader = connect_as(&cluster, id, "reader", "r").await.unwrap();
        assert_eq!(refused(&reader, publish("orders", "x")).await, ErrorCode::Forbidden);
        reader.open_stream(subscribe("orders", Some(&format!("durable-{id}"))), T).await.expect("subscribe");
        assert_eq!(open_refused(&reader, subscribe("payments", None)).await, ErrorCode::Forbidden);
        let commit = Request::Commit(pb::CommitRequest {
            topic: "orders".into(),
            subscription: format!("durable-{id}"),
            seq: 1,
        });
        assert!(matches!(ok(&reader, commit).await, Body::CommitOk(_)));

        let worker = connect_as(&cluster, id, "worker", "w").await.unwrap();
        let Body::LeaseOk(leased) = ok(&worker, lease("orders", "billing", 1, 0)).await else { panic!() };
        let tokens: Vec<u64> = leased.messages.iter().map(|m| m.token).collect();
        let ack = Request::Ack(pb::AckRequest { topic: "orders".into(), group: "billing".into(), tokens });
        assert!(matches!(ok(&worker, ack).await, Body::SettleOk(_)));
        assert_eq!(refused(&worker, lease("orders", "shipping", 1, 0)).await, ErrorCode::Forbidden);
        assert_eq!(
            refused(&worker, lease("orders", "shipping", 1, 5_000)).await,
            ErrorCode::Forbidden,
            "no long-poll either"
        );

        let owner = connect_as(&cluster, id, "owner", "o").await.unwrap();
        let topic = format!("team.{id}");
        assert!(matches!(ok(&owner, create_topic(&topic)).await, Body::Topic(_)));
        assert!(matches!(ok(&owner, group("orders", &format!("g{id}"))).await, Body::Group(_)));
        assert_eq!(refused(&owner, create_topic("elsewhere")).await, ErrorCode::Forbidden);
        assert_eq!(
            refused(&owner, Request::DeleteTopic(pb::DeleteTopic { name: "orders".into() })).await,
            ErrorCode::Forbidden
        );
        assert!(matches!(ok(&owner, Request::DeleteTopic(pb::DeleteTopic { name: topic })).await, Body::Done(_)));

        // Users and membership are for admins; a user may describe itself.
        for user in [&producer, &reader, &worker, &owner] {
            let new = pb::CreateUser { name: "mallory".into(), password: Some("x".into()), ..Default::default() };
            assert_eq!(refused(user, Request::CreateUser(new)).await, ErrorCode::Forbidden);
            assert_eq!(refused(user, Request::ListUsers(pb::ListUsers::default())).await, ErrorCode::Forbidden);
            let remove = pb::ChangeMembership {
                change: Some(pb::change_membership::Change::Remove(pb::RemoveBroker { id: 3 })),
            };
            assert_eq!(refused(user, Request::ChangeMembership(remove)).await, ErrorCode::Forbidden);
            assert!(matches!(ok(user, Request::DescribeUser(pb::DescribeUser::default())).await, Body::User(_)));
        }
    }
    // Nothing above touched the membership.
    let status = cluster.status(leader).await.unwrap();
    assert_eq!(status.brokers.iter().filter(|b| b.voter).count(), 3, "{status:?}");
    assert!(
        matches!(connect_as(&cluster, leader, "producer", "wrong").await, Err(ClientError::Server(e)) if e.code == ErrorCode::Unauthorized)
    );
    assert!(
        matches!(connect_as(&cluster, leader, "ghost", "p").await, Err(ClientError::Server(e)) if e.code == ErrorCode::Unauthorized)
    );
}

/// A revocation takes effect at its log position on every broker: a subscription on a follower
/// ends with FORBIDDEN and sees nothing published after it; a worker's leases end at the next
/// pulse and go to another worker at once, not when they would have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_ends_subscriptions_and_leases_mid_flight() {
    let (cluster, c, leader) = secured(3).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    ok(&c, create_topic("orders")).await;
    ok(&c, group("orders", "billing")).await;
    create_user(&c, "reader", Some("r"), &["subscribe:orders"], None).await;
    create_user(&c, "worker", Some("w"), &["consume:orders/*"], None).await;
    let applied = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_applied_through(&[follower], applied, T).await;

    let reader = connect_as(&cluster, follower, "reader", "r").await.unwrap();
    let (_, _, mut pushes) = reader.open_stream(subscribe("orders", None), T).await.unwrap();
    for i in 0..5 {
        ok(&c, publish("orders", &format!("before-{i}"))).await;
    }
    let mut seen = 0;
    while seen < 5 {
        match tokio::time::timeout(T, pushes.recv()).await.unwrap() {
            Some(Body::Delivery(d)) => seen += d.messages.len(),
            other => panic!("{other:?}"),
        }
    }
    let worker = connect_as(&cluster, leader, "worker", "w").await.unwrap();
    let Body::LeaseOk(held) = ok(&worker, lease("orders", "billing", 5, 0)).await else { panic!() };
    assert_eq!(held.messages.len(), 5);

    let revoke = |name: &str| {
        Request::UpdateUser(pb::UpdateUser {
            name: name.into(),
            password: None,
            permissions: Some(pb::PermissionList { permissions: Vec::new() }),
            quotas: None,
        })
    };
    ok(&c, revoke("reader")).await;
    ok(&c, revoke("worker")).await;
    ok(&c, publish("orders", "after")).await;
    // The subscription ends, on the follower, with FORBIDDEN, and "after" never arrives.
    loop {
        match tokio::time::timeout(T, pushes.recv()).await.expect("the stream ends") {
            Some(Body::Delivery(d)) => {
                assert!(d.messages.iter().all(|m| &m.payload[..] != b"after"), "delivered past the revocation");
            }
            Some(Body::Error(e)) => {
                assert_eq!(e.code(), ErrorCode::Forbidden);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    // The worker's 60-second leases end within a pulse: another worker takes the messages now.
    let started = Instant::now();
    let held_seqs: Vec<u64> = held.messages.iter().filter_map(|m| m.message.as_ref().map(|m| m.seq)).collect();
    let mut retaken = Vec::new();
    while !held_seqs.iter().all(|seq| retaken.contains(seq)) {
        assert!(started.elapsed() < Duration::from_secs(5), "the revoked leases did not go at once: {retaken:?}");
        let Body::LeaseOk(leased) = ok(&c, lease("orders", "billing", 10, 1_000)).await else { panic!() };
        retaken.extend(leased.messages.iter().filter_map(|m| m.message.as_ref().map(|m| m.seq)));
    }
    let tokens: Vec<u64> = held.messages.iter().map(|m| m.token).collect();
    let ack = Request::Ack(pb::AckRequest { topic: "orders".into(), group: "billing".into(), tokens });
    assert_eq!(refused(&worker, ack).await, ErrorCode::Forbidden);
}

/// Per-user quotas: topics and groups it owns, connections it holds on a broker. The cluster-wide
/// topic cap is no longer one client's to use up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_bound_each_user() {
    let (cluster, c, leader) = secured(1).await;
    let quotas =
        pb::Quotas { topics_max: Some(2), groups_max: Some(1), connections_max: Some(2), in_flight_bytes_max: None };
    create_user(&c, "tenant", Some("t"), &["manage:*"], Some(quotas)).await;
    let first = connect_as(&cluster, leader, "tenant", "t").await.unwrap();
    let second = connect_as(&cluster, leader, "tenant", "t").await.unwrap();
    match connect_as(&cluster, leader, "tenant", "t").await {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::QuotaExceeded),
        other => panic!("a third connection: {other:?}"),
    }
    drop(second);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _third = connect_as(&cluster, leader, "tenant", "t").await.expect("a closed connection frees its place");
    ok(&first, create_topic("a")).await;
    ok(&first, create_topic("b")).await;
    assert_eq!(refused(&first, create_topic("c")).await, ErrorCode::QuotaExceeded);
    ok(&first, group("a", "g")).await;
    assert_eq!(refused(&first, group("a", "h")).await, ErrorCode::QuotaExceeded);
    ok(&first, Request::DeleteTopic(pb::DeleteTopic { name: "a".into() })).await;
    ok(&first, create_topic("c")).await;
    let Body::User(me) = ok(&first, Request::DescribeUser(pb::DescribeUser::default())).await else { panic!() };
    assert_eq!((me.topics_owned, me.groups_owned), (2, 0));

    // Bytes in flight: with a 4 KiB quota, eight pipelined 3 KiB publishes cannot all be in flight
    // at once; those over the quota are OVERLOADED at once (retryable), the others succeed.
    let quotas = pb::Quotas { in_flight_bytes_max: Some(4096), ..Default::default() };
    create_user(&c, "streamer", Some("s"), &["publish:c"], Some(quotas)).await;
    let streamer = connect_as(&cluster, leader, "streamer", "s").await.unwrap();
    let big = "x".repeat(3 * 1024);
    let sends = (0..8).map(|_| streamer.request(publish("c", &big), T));
    let results = futures::future::join_all(sends).await;
    let overloaded =
        results.iter().filter(|r| matches!(r, Err(ClientError::Server(e)) if e.code == ErrorCode::Overloaded)).count();
    let published = results.iter().filter(|r| matches!(r, Ok(Body::PublishOk(_)))).count();
    assert_eq!(overloaded + published, 8, "{results:?}");
    assert!(overloaded >= 1 && published >= 1, "{results:?}");
    assert!(matches!(ok(&streamer, publish("c", &big)).await, Body::PublishOk(_)), "the quota frees with the answers");
}

/// Every user and membership change is a message of the `.audit` topic, which only the broker
/// writes and an admin reads like any topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_and_membership_changes_are_audited_on_the_log() {
    let (cluster, c, leader) = secured(3).await;
    create_user(&c, "alice", Some("a"), &["publish:*"], None).await;
    ok(&c, Request::DeleteUser(pb::DeleteUser { name: "alice".into() })).await;
    // A membership change: remove broker 3 (not the leader), as the admin.
    let removed = [1, 2, 3].into_iter().rev().find(|id| *id != leader).unwrap();
    let remove =
        pb::ChangeMembership { change: Some(pb::change_membership::Change::Remove(pb::RemoveBroker { id: removed })) };
    ok(&c, Request::ChangeMembership(remove)).await;
    let records = payloads(&c, ".audit", 5).await;
    let events: Vec<&str> = records.iter().map(|r| r.split('"').nth(3).unwrap_or_default()).collect();
    assert_eq!(
        &events[..4],
        ["user.bootstrapped", "user.created", "user.deleted", "membership.requested"],
        "{records:?}"
    );
    assert!(records[3].contains(&format!(r#""change":"remove","broker":"{removed}""#)), "{records:?}");
    assert!(events[4..].iter().all(|e| *e == "membership.applied"), "{records:?}");
    assert!(records.iter().all(|r| !r.contains("$argon2")), "no password hash in the trail");
    assert_eq!(refused(&c, publish(".audit", "forged")).await, ErrorCode::Forbidden);
    assert_eq!(
        refused(&c, Request::DeleteTopic(pb::DeleteTopic { name: ".audit".into() })).await,
        ErrorCode::Forbidden
    );
    let _ = cluster;
}

/// Should an entry that does not apply reach a state machine anyway (a damaged disk: appends
/// refuse them), that broker's Raft core stops with a typed error naming the entry, and the
/// broker stops serving rather than answering from a core that is gone; its process then exits
/// non-zero for a supervisor to restart it.
#[tokio::test]
async fn an_entry_that_does_not_apply_stops_its_broker_loudly() {
    use chorus_broker::raft::crash_disk::Disks;
    use chorus_broker::raft::{BrokerNode, Entry, EntryBytes, LogId, Membership};
    use chorus_tests::sim::{broker_config, net::Net, start_broker};
    use openraft::{CommittedLeaderId, EntryPayload};

    let members: std::collections::BTreeMap<u64, BrokerNode> =
        (1..=3).map(|id| (id, BrokerNode { peer_addr: format!("n{id}:p"), client_addr: format!("n{id}:c") })).collect();
    let dir = tempfile::tempdir().unwrap();
    let disks = Disks::default();
    let broker = start_broker(broker_config(3, &members, dir.path()), &disks, &Net::new(0)).await;
    let log_id = |index| LogId::new(CommittedLeaderId::new(1, 1), index);
    let membership = Membership::new(vec![members.keys().copied().collect()], members.clone());
    let entries = vec![
        Entry { log_id: log_id(0), payload: EntryPayload::Membership(membership) },
        Entry { log_id: log_id(1), payload: EntryPayload::Normal(EntryBytes(Bytes::from_static(&[0xff, 0x01]))) },
    ];
    let request = openraft::raft::AppendEntriesRequest {
        vote: openraft::Vote::new_committed(1, 1),
        prev_log_id: None,
        entries,
        leader_commit: Some(log_id(1)),
    };
    // Straight to openraft, past the check a peer's append goes through.
    let _ = broker.raft.append_entries(request).await;
    let stopped = tokio::time::timeout(T, broker.shutdown_token().cancelled_owned()).await;
    assert!(stopped.is_ok(), "the broker kept serving from a stopped core");
    let failure = broker.core_failure().expect("the failure is kept").to_owned();
    assert!(failure.contains("entry 1 does not decode"), "{failure}");
}
