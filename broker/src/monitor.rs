//! The broker's HTTP endpoint for operators (`chorus serve --metrics-addr`):
//!
//! - `/metrics`: every metric in the OpenMetrics text format, which Prometheus scrapes;
//! - `/healthz`: 200 while the process serves HTTP at all;
//! - `/readyz`: 200 while [`Broker::readiness`] holds (the Raft core runs, a live leader is
//!   known, the applied index is near the commit index); else 503 with the reason.
//!
//! The endpoint is read-only and unauthenticated: bind it where only monitoring reaches it. It
//! answers GET and HEAD only, keeps at most [`CONNECTIONS_MAX`] connections, reads a request head
//! of at most [`HEAD_BYTES_MAX`] within [`HEAD_READ_MS_MAX`], and closes a connection after
//! [`CONNECTION_MS_MAX`].
//!
//! Gauges of the Raft state and of the applied state are read at each scrape. Topic, group and
//! subscription labels are capped ([`TOPIC_LABELS_MAX`] and the like): the rest fold into
//! `_other`, so a cluster with thousands of topics does not swamp Prometheus.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chorus_machine::query;
use chorus_machine::records::TopicRecord;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use openraft::ServerState;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::broker::Broker;
use crate::metrics::Labels;

/// Connections the endpoint serves at once; more are closed at once.
pub const CONNECTIONS_MAX: usize = 16;
/// Bytes of a request's head at most.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Time to read a request's head.
pub const HEAD_READ_MS_MAX: u64 = 5_000;
/// A connection's life at most, keep-alive included.
pub const CONNECTION_MS_MAX: u64 = 120_000;
/// Topics with labels of their own; the rest are summed under `_other`.
pub const TOPIC_LABELS_MAX: usize = 100;
/// Groups with labels of their own, over all topics.
pub const GROUP_LABELS_MAX: usize = 100;
/// Subscriptions with labels of their own, over all topics.
pub const SUBSCRIPTION_LABELS_MAX: usize = 100;
/// The label value that stands for every topic, group or subscription past its cap.
pub const OTHER: &str = "_other";

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the endpoint on `listener` until the broker stops.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let shutdown = broker.shutdown_token();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "the metrics endpoint could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Past the cap, the connection is dropped, closed, as it arrives.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else { continue };
        let broker = Arc::clone(&broker);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(Arc::clone(&broker), request));
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(HEAD_READ_MS_MAX))
                .max_buf_size(HEAD_BYTES_MAX);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_millis(CONNECTION_MS_MAX), connection).await;
            drop(slot);
        });
    }
}

async fn answer(
    broker: Arc<Broker>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n".into()));
    }
    Ok(match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match broker.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
        },
        "/metrics" => match tokio::task::spawn_blocking(move || render(&broker)).await {
            Ok(Ok(body)) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response
                    .headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(OPENMETRICS));
                response
            }
            Ok(Err(error)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
            Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("rendering the metrics failed: {error}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n".into()),
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Why the metrics could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("reading the applied state: {0}")]
    Read(#[from] crate::broker::ReadError),
    #[error("querying the applied state: {0}")]
    Query(#[from] chorus_machine::StoreError),
    #[error("encoding the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Every metric, as `/metrics` serves it.
pub fn render(broker: &Broker) -> Result<String, RenderError> {
    let mut registry = Registry::with_prefix("chorus");
    broker.metrics.register(&mut registry);
    raft_gauges(broker, &mut registry);
    let store = broker.read()?;
    state_gauges(&store, broker.now_ms(), &mut registry)?;
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &registry)?;
    Ok(body)
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

fn index(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// This broker's view of Raft: role, term, leader, indexes, and (on the leader) each follower's lag.
fn raft_gauges(broker: &Broker, registry: &mut Registry) {
    let metrics = broker.raft.metrics().borrow().clone();
    let status = broker.status();
    let leading = metrics.state == ServerState::Leader;
    gauge(registry, "raft_term", "The current Raft term", index(metrics.current_term));
    gauge(registry, "raft_is_leader", "1 on the leader, else 0", i64::from(leading));
    gauge(
        registry,
        "raft_has_leader",
        "1 while this broker knows a leader, else 0",
        i64::from(status.leader_id.is_some()),
    );
    if let Some(leader) = status.leader_id {
        gauge(registry, "raft_leader_id", "The id of the leader this broker knows", index(leader));
    }
    gauge(
        registry,
        "raft_last_log_index",
        "The index of the last entry in this broker's log",
        index(metrics.last_log_index.unwrap_or(0)),
    );
    gauge(registry, "raft_committed_index", "The index this broker knows committed", index(status.commit_index));
    gauge(registry, "raft_applied_index", "The index this broker last applied", index(status.applied_index));
    gauge(
        registry,
        "raft_snapshot_index",
        "The last index in this broker's snapshot",
        index(metrics.snapshot.map_or(0, |id| id.index)),
    );
    gauge(
        registry,
        "raft_leader_silence_ms",
        "Milliseconds since this broker last had word that its leader is alive",
        index(broker.leader_silence_ms()),
    );
    let voters = status.brokers.iter().filter(|b| b.voter).count();
    gauge(registry, "raft_voters", "Voters in the membership", voters as i64);
    gauge(registry, "raft_learners", "Learners in the membership", (status.brokers.len() - voters) as i64);
    gauge(
        registry,
        "proposal_entries_in_flight",
        "Log entries the leader proposed and has not yet applied",
        broker.entries_in_flight() as i64,
    );
    gauge(registry, "ready", "1 while /readyz answers 200, else 0", i64::from(status.not_ready.is_none()));
    gauge(
        registry,
        "start_time_seconds",
        "When this broker started, in seconds since the Unix epoch",
        broker.started_ms() as i64 / 1000,
    );
    if let Ok(disk) = rustix::fs::statvfs(&broker.config.data_dir) {
        let block_bytes = disk.f_frsize;
        gauge(
            registry,
            "data_dir_free_bytes",
            "Bytes free to this broker on its data directory's file system",
            index(disk.f_bavail.saturating_mul(block_bytes)),
        );
        gauge(
            registry,
            "data_dir_capacity_bytes",
            "Size of the data directory's file system",
            index(disk.f_blocks.saturating_mul(block_bytes)),
        );
    }
    if leading {
        follower_lags(broker, &status, registry);
    }
}

/// Each follower's lag behind the leader's log, in entries and in milliseconds: the age of the
/// oldest entry it lacks.
fn follower_lags(broker: &Broker, status: &chorus_protocol::pb::ClusterStatus, registry: &mut Registry) {
    let entries = Family::<Labels, Gauge>::default();
    let millis = Family::<Labels, Gauge>::default();
    let last_index = broker.raft.metrics().borrow().last_log_index.unwrap_or(0);
    for follower in status.brokers.iter().filter(|b| b.id != status.broker_id) {
        let labels = vec![("follower", follower.id.to_string())];
        let matched = follower.matched_index.unwrap_or(0);
        entries.get_or_create(&labels).set(index(last_index.saturating_sub(matched)));
        millis.get_or_create(&labels).set(index(broker.append_times().lag_ms(matched)));
    }
    registry.register(
        "raft_follower_lag_entries",
        "Entries the leader holds that the follower has not acknowledged",
        entries,
    );
    registry.register(
        "raft_follower_lag_ms",
        "Milliseconds since the leader appended the oldest entry the follower has not acknowledged",
        millis,
    );
}

/// Topics, groups and subscriptions as the applied state has them.
fn state_gauges(store: &crate::storage::ReadStore, now_ms: u64, registry: &mut Registry) -> Result<(), RenderError> {
    let mut gauges = StateGauges::default();
    let mut after = String::new();
    loop {
        let page = query::topics(store, &after, 500)?;
        let Some(last) = page.last() else { break };
        after = last.name.clone();
        for topic in &page {
            gauges.topic(store, topic, now_ms)?;
        }
    }
    gauges.register(registry);
    Ok(())
}

/// The per-topic, per-group and per-subscription gauges of one scrape, labels capped.
#[derive(Default)]
struct StateGauges {
    topics: usize,
    groups: usize,
    subscriptions: usize,
    topic_messages: Family<Labels, Gauge>,
    topic_bytes: Family<Labels, Gauge>,
    topic_first_seq: Family<Labels, Gauge>,
    topic_last_seq: Family<Labels, Gauge>,
    group_backlog: Family<Labels, Gauge>,
    group_leased: Family<Labels, Gauge>,
    group_oldest_unacked_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    group_delivered: Family<Labels, Counter>,
    group_acked: Family<Labels, Counter>,
    group_redelivered: Family<Labels, Counter>,
    group_dead_lettered: Family<Labels, Counter>,
    group_dropped: Family<Labels, Counter>,
    subscription_lag: Family<Labels, Gauge>,
}

impl StateGauges {
    fn topic(
        &mut self,
        store: &crate::storage::ReadStore,
        topic: &TopicRecord,
        now_ms: u64,
    ) -> Result<(), RenderError> {
        self.topics += 1;
        let own = self.topics <= TOPIC_LABELS_MAX;
        let labels = vec![("topic", if own { topic.name.clone() } else { OTHER.to_owned() })];
        self.topic_messages.get_or_create(&labels).inc_by(index(topic.messages()));
        self.topic_bytes.get_or_create(&labels).inc_by(index(topic.bytes));
        if own {
            self.topic_first_seq.get_or_create(&labels).set(index(topic.first_seq));
            self.topic_last_seq.get_or_create(&labels).set(index(topic.last_seq));
        }
        for group in query::groups(store, topic.id)? {
            self.groups += 1;
            let labels = capped(self.groups <= GROUP_LABELS_MAX, "group", topic, &group.name);
            self.group_backlog.get_or_create(&labels).inc_by(index(query::group_backlog(topic, &group)));
            self.group_leased.get_or_create(&labels).inc_by(index(group.counts.leased));
            let counts = &group.counts;
            self.group_delivered.get_or_create(&labels).inc_by(counts.delivered_total);
            self.group_acked.get_or_create(&labels).inc_by(counts.acked_total);
            self.group_redelivered.get_or_create(&labels).inc_by(counts.nacked_total + counts.expired_total);
            self.group_dead_lettered.get_or_create(&labels).inc_by(counts.dead_lettered_total);
            self.group_dropped.get_or_create(&labels).inc_by(counts.dropped_total);
            // Three reads a group: only for the groups with labels of their own, so a scrape's
            // reads stay bounded however many groups there are.
            if self.groups <= GROUP_LABELS_MAX {
                let oldest = query::oldest_unfinished_time_ms(store, topic, &group)?;
                let age_s = oldest.map_or(0.0, |time_ms| now_ms.saturating_sub(time_ms) as f64 / 1000.0);
                self.group_oldest_unacked_seconds.get_or_create(&labels).set(age_s);
            }
        }
        for subscription in query::subscriptions(store, topic.id)? {
            self.subscriptions += 1;
            let labels =
                capped(self.subscriptions <= SUBSCRIPTION_LABELS_MAX, "subscription", topic, &subscription.name);
            self.subscription_lag.get_or_create(&labels).inc_by(index(query::subscription_lag(topic, &subscription)));
        }
        Ok(())
    }

    fn register(self, registry: &mut Registry) {
        registry.register("topic_messages", "Messages the topic retains", self.topic_messages);
        registry.register_with_unit(
            "topic_retained",
            "Bytes the topic retains: payloads, keys and headers",
            Unit::Bytes,
            self.topic_bytes,
        );
        registry.register("topic_first_seq", "The oldest sequence the topic retains", self.topic_first_seq);
        registry.register("topic_last_seq", "The newest sequence the topic assigned", self.topic_last_seq);
        registry.register(
            "group_backlog",
            "Messages the group has yet to deliver: never examined, ready or waiting",
            self.group_backlog,
        );
        registry.register("group_leased", "Messages the group has leased out", self.group_leased);
        registry.register_with_unit(
            "group_oldest_unacked_age",
            "Age of the oldest message the group has not finished (0 when none; not for groups past the label cap)",
            Unit::Seconds,
            self.group_oldest_unacked_seconds,
        );
        registry.register("group_delivered", "Leases the group granted", self.group_delivered);
        registry.register("group_acked", "Messages the group's workers acknowledged", self.group_acked);
        registry.register(
            "group_redelivered",
            "Messages returned for another delivery: nacked or lease expired",
            self.group_redelivered,
        );
        registry.register("group_dead_lettered", "Messages moved to the dead-letter topic", self.group_dead_lettered);
        registry.register(
            "group_dropped",
            "Messages dropped past their deliveries, with no dead-letter topic",
            self.group_dropped,
        );
        registry.register("subscription_lag", "Messages the subscription has yet to commit", self.subscription_lag);
    }
}

/// The labels of a group or subscription `name` on `topic`, or `_other` for both past the cap.
fn capped(own: bool, kind: &'static str, topic: &TopicRecord, name: &str) -> Labels {
    match own {
        true => vec![("topic", topic.name.clone()), (kind, name.to_owned())],
        false => vec![("topic", OTHER.to_owned()), (kind, OTHER.to_owned())],
    }
}
