//! The client protocol against real brokers: every request kind, every error code a client can
//! provoke, protocol violations, random frames, ordered subscriptions and leases.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use chorus_consumers::Connection;
use chorus_protocol::ClientCodec;
use chorus_protocol::pb::{self, ErrorCode, client_frame::Body as Request, server_frame::Body};
use chorus_tests::cluster::{ADMIN, Cluster, ClusterOptions, Security};
use chorus_tests::workload::{ok, refused};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const T: Duration = Duration::from_secs(10);

async fn connect(cluster: &Cluster, id: u64) -> Connection {
    Connection::connect(&cluster.brokers[&id].client_addr, "protocol-test", T).await.expect("connect")
}

fn publish(topic: &str, payloads: &[&str]) -> Request {
    Request::Publish(pb::PublishRequest {
        topic: topic.into(),
        messages: payloads
            .iter()
            .map(|p| pb::Message { payload: Bytes::copy_from_slice(p.as_bytes()), ..Default::default() })
            .collect(),
        ..Default::default()
    })
}

fn lease(group: &str, consumer: &str, count_max: u32, wait_ms: u64, lease_ms: u64) -> Request {
    Request::Lease(pb::LeaseRequest {
        topic: "jobs".into(),
        group: group.into(),
        consumer: consumer.into(),
        count_max,
        wait_ms,
        lease_ms: Some(lease_ms),
    })
}

fn leased(body: Body) -> Vec<pb::LeasedMessage> {
    match body {
        Body::LeaseOk(ok) => ok.messages,
        other => panic!("expected LeaseOk, got {other:?}"),
    }
}

fn settle_errors(body: Body) -> Vec<Option<ErrorCode>> {
    match body {
        Body::SettleOk(ok) => ok.results.into_iter().map(|r| r.error.map(|e| e.code())).collect(),
        other => panic!("expected SettleOk, got {other:?}"),
    }
}

/// A raw connection that has said Hello.
async fn raw(addr: &str) -> Framed<TcpStream, ClientCodec> {
    let mut framed = Framed::new(TcpStream::connect(addr).await.unwrap(), ClientCodec::default());
    let hello = pb::Hello { protocol_version: 1, client_name: "raw".into(), credentials: None };
    framed.send(pb::ClientFrame { request_id: 1, body: Some(Request::Hello(hello)) }).await.unwrap();
    let answer = framed.next().await.unwrap().unwrap();
    assert!(matches!(answer.body, Some(Body::HelloOk(_))), "{answer:?}");
    framed
}

/// The next frame, or `None` once the broker closed the connection.
async fn next_frame(framed: &mut Framed<TcpStream, ClientCodec>) -> Option<pb::ServerFrame> {
    match tokio::time::timeout(T, framed.next()).await.expect("the broker answers or closes") {
        Some(Ok(frame)) => Some(frame),
        _ => None,
    }
}

fn error_code(frame: &pb::ServerFrame) -> ErrorCode {
    match &frame.body {
        Some(Body::Error(error)) => error.code(),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_kind_is_served() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let c = connect(&cluster, follower).await;
    assert_eq!(c.hello().leader_id, Some(leader));
    assert!(matches!(ok(&c, Request::Ping(pb::Ping {})).await, Body::Pong(_)));
    let created = ok(&c, Request::CreateTopic(pb::CreateTopic { name: "jobs".into(), config: None })).await;
    assert!(matches!(created, Body::Topic(ref t) if t.name == "jobs"), "{created:?}");
    let group = pb::CreateGroup { topic: "jobs".into(), name: "g".into(), config: None };
    assert!(matches!(ok(&c, Request::CreateGroup(group)).await, Body::Group(ref g) if g.name == "g"));
    let Body::PublishOk(published) = ok(&c, publish("jobs", &["a", "b", "c"])).await else { panic!() };
    assert_eq!((published.first_seq, published.count), (1, 3));
    let grants = leased(ok(&c, lease("g", "w", 3, 0, 30_000)).await);
    assert_eq!(grants.len(), 3);
    let tokens: Vec<u64> = grants.iter().map(|g| g.token).collect();
    let extend = Request::Extend(pb::ExtendRequest {
        topic: "jobs".into(),
        group: "g".into(),
        tokens: vec![tokens[0]],
        lease_ms: 60_000,
    });
    assert_eq!(settle_errors(ok(&c, extend).await), vec![None]);
    let nack = Request::Nack(pb::NackRequest {
        topic: "jobs".into(),
        group: "g".into(),
        tokens: vec![tokens[1]],
        delay_ms: 0,
    });
    assert_eq!(settle_errors(ok(&c, nack).await), vec![None]);
    let ack =
        Request::Ack(pb::AckRequest { topic: "jobs".into(), group: "g".into(), tokens: vec![tokens[0], tokens[2]] });
    assert_eq!(settle_errors(ok(&c, ack).await), vec![None, None]);
    let create_sub = pb::CreateSubscription { topic: "jobs".into(), name: "s".into(), start: None };
    assert!(
        matches!(ok(&c, Request::CreateSubscription(create_sub)).await, Body::Subscription(ref s) if s.next_seq == 1)
    );
    let commit = Request::Commit(pb::CommitRequest { topic: "jobs".into(), subscription: "s".into(), seq: 2 });
    assert!(matches!(ok(&c, commit).await, Body::CommitOk(pb::CommitOk { next_seq: 3 })));
    // Reads are served by the broker asked, from its applied state: wait for it to catch up.
    let status = cluster.status(leader).await.unwrap();
    cluster.wait_caught_up(&[follower], status.applied_index, T).await;
    let Body::Topic(topic) = ok(&c, Request::DescribeTopic(pb::DescribeTopic { name: "jobs".into() })).await else {
        panic!()
    };
    assert_eq!((topic.messages, topic.groups.len(), topic.subscriptions[0].lag), (3, 1, 1));
    assert_eq!((topic.groups[0].acked_total, topic.groups[0].leased, topic.groups[0].backlog), (2, 0, 1));
    let Body::Topics(list) = ok(&c, Request::ListTopics(pb::ListTopics::default())).await else { panic!() };
    assert_eq!(list.topics.len(), 1);
    let Body::Group(described) =
        ok(&c, Request::DescribeGroup(pb::DescribeGroup { topic: "jobs".into(), name: "g".into() })).await
    else {
        panic!()
    };
    assert_eq!(described.nacked_total, 1);
    let Body::Groups(groups) = ok(&c, Request::ListGroups(pb::ListGroups { topic: "jobs".into() })).await else {
        panic!()
    };
    assert_eq!(groups.groups.len(), 1);
    // Subscribe, Credit, Unsubscribe.
    let subscribe = pb::SubscribeRequest {
        topic: "jobs".into(),
        subscription: Some("s".into()),
        start: None,
        credits: 1,
        credit_bytes: None,
    };
    let (subscribe_id, first, mut deliveries) = c.open_stream(subscribe, T).await.unwrap();
    assert_eq!(first, pb::SubscribeOk { next_seq: 3 }, "resumes after the commit");
    let Some(Body::Delivery(delivery)) = deliveries.recv().await else { panic!() };
    assert_eq!(delivery.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [3]);
    c.send(Request::Credit(pb::CreditRequest { subscribe_id, credits: 5, credit_bytes: 0 })).await.unwrap();
    c.request(publish("jobs", &["d"]), T).await.unwrap();
    let Some(Body::Delivery(delivery)) = deliveries.recv().await else { panic!() };
    assert_eq!(delivery.messages[0].payload, "d");
    assert!(matches!(ok(&c, Request::Unsubscribe(pb::UnsubscribeRequest { subscribe_id })).await, Body::Done(_)));
    let status = ok(&c, Request::ClusterStatus(pb::ClusterStatusRequest {})).await;
    assert!(
        matches!(status, Body::ClusterStatus(ref s) if s.brokers.len() == 3 && s.leader_id == Some(leader)),
        "{status:?}"
    );
    // Deletes.
    let delete_sub = Request::DeleteSubscription(pb::DeleteSubscription { topic: "jobs".into(), name: "s".into() });
    assert!(matches!(ok(&c, delete_sub).await, Body::Done(_)));
    let delete_group = Request::DeleteGroup(pb::DeleteGroup { topic: "jobs".into(), name: "g".into() });
    assert!(matches!(ok(&c, delete_group).await, Body::Done(_)));
    assert!(matches!(ok(&c, Request::DeleteTopic(pb::DeleteTopic { name: "jobs".into() })).await, Body::Done(_)));
    // Membership: removing a broker that is not a member is refused.
    let remove =
        pb::ChangeMembership { change: Some(pb::change_membership::Change::Remove(pb::RemoveBroker { id: 9 })) };
    assert_eq!(refused(&c, Request::ChangeMembership(remove)).await, ErrorCode::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_error_code_a_client_can_provoke_is_returned() {
    let options = ClusterOptions { extra_args: vec!["--in-flight-max=4".into()], ..ClusterOptions::default() };
    let mut cluster = Cluster::start_with(3, options).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await;
    let c = connect(&cluster, leader).await;
    ok(&c, Request::CreateTopic(pb::CreateTopic { name: "jobs".into(), config: None })).await;
    ok(&c, Request::CreateGroup(pb::CreateGroup { topic: "jobs".into(), name: "g".into(), config: None })).await;

    assert_eq!(refused(&c, publish("nope", &["x"])).await, ErrorCode::UnknownTopic);
    assert_eq!(refused(&c, lease("nope", "w", 1, 0, 1000)).await, ErrorCode::UnknownGroup);
    let commit = Request::Commit(pb::CommitRequest { topic: "jobs".into(), subscription: "nope".into(), seq: 1 });
    assert_eq!(refused(&c, commit).await, ErrorCode::UnknownSubscription, "not UNKNOWN_GROUP");
    let delete = Request::DeleteSubscription(pb::DeleteSubscription { topic: "jobs".into(), name: "nope".into() });
    assert_eq!(refused(&c, delete).await, ErrorCode::UnknownSubscription);
    let bad_name = Request::CreateTopic(pb::CreateTopic { name: "no spaces".into(), config: None });
    assert_eq!(refused(&c, bad_name).await, ErrorCode::InvalidArgument);
    assert_eq!(refused(&c, lease("g", "w", 0, 0, 1000)).await, ErrorCode::InvalidArgument);
    let half_producer = Request::Publish(pb::PublishRequest {
        topic: "jobs".into(),
        producer_id: Some("p".into()),
        ..Default::default()
    });
    assert_eq!(refused(&c, half_producer).await, ErrorCode::InvalidArgument);
    let big = Request::Publish(pb::PublishRequest {
        topic: "jobs".into(),
        messages: vec![pb::Message { payload: vec![0u8; 5 * 1024 * 1024].into(), ..Default::default() }],
        ..Default::default()
    });
    assert_eq!(refused(&c, big).await, ErrorCode::TooLarge);
    let ack = Request::Ack(pb::AckRequest { topic: "jobs".into(), group: "g".into(), tokens: vec![424242] });
    assert_eq!(settle_errors(ok(&c, ack).await), vec![Some(ErrorCode::StaleLease)]);

    // LimitReached, not Overloaded: the 257th group of a topic. The client library does not
    // retry it, so it fails at once instead of after its 30 s retry deadline.
    let create_group =
        |name: String| Request::CreateGroup(pb::CreateGroup { topic: "jobs".into(), name, config: None });
    for i in 1..256 {
        ok(&c, create_group(format!("g{i}"))).await;
    }
    assert_eq!(refused(&c, create_group("one-too-many".into())).await, ErrorCode::LimitReached);
    let client = chorus_consumers::Client::connect([cluster.brokers[&leader].client_addr.clone()]).await.unwrap();
    let refusal = client.request(create_group("one-too-many".into())).await.unwrap_err();
    assert_eq!(refusal.code(), Some(ErrorCode::LimitReached));
    assert!(!refusal.is_retryable(), "a reached limit is not retried");

    // Overloaded: four long-polls fill this broker's in-flight limit of 4.
    let mut polls = Vec::new();
    for i in 0..4 {
        let c = c.clone();
        polls.push(tokio::spawn(async move { c.request(lease("g", &format!("w{i}"), 1, 3_000, 1000), T).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(refused(&c, Request::Ping(pb::Ping {})).await, ErrorCode::Overloaded);
    for poll in polls {
        assert!(leased(poll.await.unwrap().unwrap()).is_empty(), "an idle long-poll ends empty");
    }

    // NotLeader: a request forwarded to a broker that is not the leader carries the leader hint.
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let mut peer = cluster.peer_connection(99, follower).await;
    let request = pb::ClientFrame { request_id: 7, body: Some(publish("jobs", &["x"])) };
    let forwarded = pb::Forwarded { request: Some(request), actor: None };
    peer.send(pb::PeerFrame { request_id: 2, body: Some(pb::peer_frame::Body::Forward(forwarded)) }).await.unwrap();
    let answer = peer.next().await.unwrap().unwrap();
    let Some(pb::peer_frame::Body::ForwardOk(pb::ForwardedAnswer {
        answer: Some(pb::ServerFrame { body: Some(Body::Error(not_leader)), .. }),
        ..
    })) = answer.body
    else {
        panic!("{answer:?}")
    };
    assert_eq!((not_leader.code(), not_leader.leader_id), (ErrorCode::NotLeader, Some(leader)));
    assert_eq!(not_leader.leader_addr, cluster.brokers[&leader].client_addr);

    // Unavailable: with two of three brokers gone there is no quorum.
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    for id in others {
        cluster.kill(id);
    }
    let started = Instant::now();
    assert_eq!(refused(&c, publish("jobs", &["lost"])).await, ErrorCode::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(10), "refused within the write timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_rules_and_protocol_violations() {
    let security = Security { auth: true, ..Security::default() };
    let options = ClusterOptions { security, ..ClusterOptions::default() };
    let cluster = Cluster::start_with(1, options).await;
    cluster.wait_for_leader(&[1], T).await;
    let addr = cluster.brokers[&1].client_addr.clone();
    let credentials = |password: &str| Some(pb::Credentials { user: ADMIN.into(), password: password.into() });
    let password = cluster.secrets.admin_password.clone();
    let fresh = || async { Framed::new(TcpStream::connect(&addr).await.unwrap(), ClientCodec::default()) };

    // A request before Hello: error frame, then the connection closes.
    let mut framed = fresh().await;
    framed.send(pb::ClientFrame { request_id: 5, body: Some(Request::Ping(pb::Ping {})) }).await.unwrap();
    let answer = next_frame(&mut framed).await.unwrap();
    assert_eq!((answer.request_id, error_code(&answer)), (5, ErrorCode::InvalidArgument));
    assert!(next_frame(&mut framed).await.is_none(), "closed after the violation");

    // Wrong password, no user, wrong version.
    let cases = [
        (1, credentials("wrong"), ErrorCode::Unauthorized),
        (1, None, ErrorCode::Unauthorized),
        (99, credentials(&password), ErrorCode::InvalidArgument),
    ];
    for (version, credentials, code) in cases {
        let mut framed = fresh().await;
        let hello = pb::Hello { protocol_version: version, client_name: "t".into(), credentials };
        framed.send(pb::ClientFrame { request_id: 1, body: Some(Request::Hello(hello)) }).await.unwrap();
        assert_eq!(error_code(&next_frame(&mut framed).await.unwrap()), code);
        assert!(next_frame(&mut framed).await.is_none());
    }

    let authed = || async {
        let mut framed = fresh().await;
        let hello = pb::Hello { protocol_version: 1, client_name: "t".into(), credentials: credentials(&password) };
        framed.send(pb::ClientFrame { request_id: 1, body: Some(Request::Hello(hello)) }).await.unwrap();
        let answer = next_frame(&mut framed).await.unwrap();
        assert!(matches!(answer.body, Some(Body::HelloOk(ref ok)) if ok.user == ADMIN), "{answer:?}");
        framed
    };
    // An empty body and a second Hello are invalid requests; the connection stays up.
    let mut framed = authed().await;
    framed.send(pb::ClientFrame { request_id: 2, body: None }).await.unwrap();
    assert_eq!(error_code(&next_frame(&mut framed).await.unwrap()), ErrorCode::InvalidArgument);
    let again = pb::Hello { protocol_version: 1, client_name: "t".into(), credentials: credentials(&password) };
    framed.send(pb::ClientFrame { request_id: 3, body: Some(Request::Hello(again)) }).await.unwrap();
    assert_eq!(error_code(&next_frame(&mut framed).await.unwrap()), ErrorCode::InvalidArgument);
    framed.send(pb::ClientFrame { request_id: 4, body: Some(Request::Ping(pb::Ping {})) }).await.unwrap();
    assert!(matches!(next_frame(&mut framed).await.unwrap().body, Some(Body::Pong(_))));

    // A frame over the 8 MiB limit: TooLarge, then closed, before the broker reads the bytes.
    let mut framed = authed().await;
    let mut header = BytesMut::new();
    header.put_u32(9 * 1024 * 1024);
    framed.get_mut().write_all_buf(&mut header).await.unwrap();
    assert_eq!(error_code(&next_frame(&mut framed).await.unwrap()), ErrorCode::TooLarge);
    assert!(next_frame(&mut framed).await.is_none());

    // Garbage that claims to be a frame: InvalidArgument, then closed.
    let mut framed = authed().await;
    let mut junk = BytesMut::new();
    junk.put_u32(4);
    junk.put_slice(&[0xff, 0xff, 0xff, 0xff]);
    framed.get_mut().write_all_buf(&mut junk).await.unwrap();
    assert_eq!(error_code(&next_frame(&mut framed).await.unwrap()), ErrorCode::InvalidArgument);
    assert!(next_frame(&mut framed).await.is_none());
}

use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_survives_random_frames() {
    use prost::Message;
    use rand::{RngExt, SeedableRng};
    let mut cluster = Cluster::start(1).await;
    cluster.wait_for_leader(&[1], T).await;
    let addr = cluster.brokers[&1].client_addr.clone();
    let seed: u64 = std::env::var("CHORUS_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    println!("fuzz seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let watcher = connect(&cluster, 1).await;
    for round in 0..200 {
        let mut framed = raw(&addr).await;
        let mut bytes = BytesMut::new();
        for _ in 0..rng.random_range(1..8) {
            match rng.random_range(0..3) {
                // Random bytes with an honest length prefix.
                0 => {
                    let body: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
                    bytes.put_u32(body.len() as u32);
                    bytes.put_slice(&body);
                }
                // A valid frame with a random field flipped.
                1 => {
                    let frame = pb::ClientFrame { request_id: rng.random(), body: Some(publish("t", &["x"])) };
                    let mut body = frame.encode_to_vec();
                    let at = rng.random_range(0..body.len());
                    body[at] ^= 1 << rng.random_range(0..8);
                    bytes.put_u32(body.len() as u32);
                    bytes.put_slice(&body);
                }
                // Random prefix and random bytes.
                _ => {
                    let body: Vec<u8> = (0..rng.random_range(0..16)).map(|_| rng.random()).collect();
                    bytes.put_slice(&body);
                }
            }
        }
        let _ = framed.get_mut().write_all_buf(&mut bytes).await;
        let _ = framed.get_mut().shutdown().await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), framed.next()).await {}
        if round % 20 == 0 {
            assert!(matches!(ok(&watcher, Request::Ping(pb::Ping {})).await, Body::Pong(_)), "round {round}");
        }
    }
    assert!(!cluster.exited(1), "the broker process died\n{}", cluster.logs());
    assert!(matches!(ok(&watcher, Request::ClusterStatus(pb::ClusterStatusRequest {})).await, Body::ClusterStatus(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_see_one_order_and_resume_after_their_commit() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let (on_leader, on_follower) = (connect(&cluster, leader).await, connect(&cluster, follower).await);
    ok(&on_leader, Request::CreateTopic(pb::CreateTopic { name: "feed".into(), config: None })).await;
    let subscribe = |name: Option<&str>| pb::SubscribeRequest {
        topic: "feed".into(),
        subscription: name.map(Into::into),
        start: None,
        credits: 16,
        credit_bytes: None,
    };
    let streams = [(on_leader.clone(), subscribe(Some("durable"))), (on_follower.clone(), subscribe(None))];
    let mut readers = Vec::new();
    for (connection, request) in streams {
        let (id, _, mut deliveries) = connection.open_stream(request, T).await.unwrap();
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < 400 {
                match tokio::time::timeout(T, deliveries.recv()).await {
                    Ok(Some(Body::Delivery(delivery))) => {
                        let n = delivery.messages.len() as u32;
                        seen.extend(delivery.messages.into_iter().map(|m| (m.seq, m.payload)));
                        connection
                            .send(Request::Credit(pb::CreditRequest { subscribe_id: id, credits: n, credit_bytes: 0 }))
                            .await
                            .unwrap();
                    }
                    other => panic!("subscription ended after {} messages: {other:?}", seen.len()),
                }
            }
            seen
        }));
    }
    let mut publishers = Vec::new();
    for p in 0..4 {
        let connection = on_follower.clone();
        publishers.push(tokio::spawn(async move {
            for n in 0..100 {
                connection.request(publish("feed", &[&format!("p{p}-{n}")]), T).await.unwrap();
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let first = readers.remove(0).await.unwrap();
    let second = readers.remove(0).await.unwrap();
    assert_eq!(first.len(), 400);
    assert_eq!(first, second, "two subscribers saw different orders");
    assert!(first.iter().enumerate().all(|(i, (seq, _))| *seq == i as u64 + 1), "gap-free from 1");

    // The durable subscription commits 250 and resumes right after it on a new connection.
    let commit = Request::Commit(pb::CommitRequest { topic: "feed".into(), subscription: "durable".into(), seq: 250 });
    ok(&on_leader, commit).await;
    let again = connect(&cluster, follower).await;
    let (_, first_answer, mut deliveries) = again.open_stream(subscribe(Some("durable")), T).await.unwrap();
    assert_eq!(first_answer, pb::SubscribeOk { next_seq: 251 });
    let Some(Body::Delivery(delivery)) = deliveries.recv().await else { panic!() };
    assert_eq!(delivery.messages[0].seq, 251);
    assert!(delivery.messages.len() <= 16, "never more than the credit granted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_lease_fails_over_and_its_stale_ack_is_refused() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], T).await;
    let c = connect(&cluster, leader).await;
    ok(&c, Request::CreateTopic(pb::CreateTopic { name: "jobs".into(), config: None })).await;
    ok(&c, Request::CreateGroup(pb::CreateGroup { topic: "jobs".into(), name: "g".into(), config: None })).await;
    ok(&c, publish("jobs", &["task"])).await;
    let stalled = leased(ok(&c, lease("g", "stalled", 1, 0, 500)).await).remove(0);
    assert_eq!(stalled.delivery_count, 1);
    // The stalled worker never extends; another worker long-polls and gets the message after
    // the lease expires.
    let started = Instant::now();
    let retry = leased(ok(&c, lease("g", "healthy", 1, 5_000, 10_000)).await);
    assert_eq!(retry.len(), 1, "the message failed over");
    let retry = &retry[0];
    assert!(started.elapsed() >= Duration::from_millis(300), "not before the lease expired");
    assert_eq!((retry.message.as_ref().unwrap().seq, retry.delivery_count), (1, 2));
    assert!(retry.token > stalled.token);
    let stale = Request::Ack(pb::AckRequest { topic: "jobs".into(), group: "g".into(), tokens: vec![stalled.token] });
    assert_eq!(settle_errors(ok(&c, stale).await), vec![Some(ErrorCode::StaleLease)]);
    let fresh = Request::Ack(pb::AckRequest { topic: "jobs".into(), group: "g".into(), tokens: vec![retry.token] });
    assert_eq!(settle_errors(ok(&c, fresh).await), vec![None]);

    // A worker that keeps extending keeps its lease.
    ok(&c, publish("jobs", &["long task"])).await;
    let kept = leased(ok(&c, lease("g", "steady", 1, 0, 500)).await).remove(0);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let extend = Request::Extend(pb::ExtendRequest {
            topic: "jobs".into(),
            group: "g".into(),
            tokens: vec![kept.token],
            lease_ms: 500,
        });
        assert_eq!(settle_errors(ok(&c, extend).await), vec![None]);
    }
    assert!(leased(ok(&c, lease("g", "thief", 1, 300, 500)).await).is_empty(), "an extended lease is not taken");
}
