//! What an operator sees, with real broker processes: each broker's `/metrics`, `/healthz` and
//! `/readyz`; `chorus status`'s exit code when a broker is down, when there is no leader, and
//! when a broker is cut off from the leader; and a real Prometheus scraping the brokers with the
//! alerting rules of `docs/alerts.yml`, seeing leader changes and firing the flapping alert.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chorus_protocol::pb;
use chorus_tests::cluster::{Cluster, free_addr};
use chorus_tests::http::{self, sample};
use chorus_tests::workload::{client, create_topic, publish_many};

const TOPIC: &str = "events";

/// Topics with labels of their own in `/metrics` (`chorus_broker::monitor::TOPIC_LABELS_MAX`).
const TOPIC_LABELS_MAX: usize = chorus_broker::monitor::TOPIC_LABELS_MAX;

/// Broker `id`'s `/metrics` body.
fn metrics(cluster: &Cluster, id: u64) -> String {
    let answer = http::get(&cluster.brokers[&id].metrics_addr, "/metrics").expect("the metrics endpoint answers");
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

/// Polls `check` every 100 ms until it holds, for at most `timeout`.
async fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_broker_serves_metrics_health_and_readiness() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let client = client(cluster.client_addrs()).await;
    create_topic(&client, TOPIC).await;
    let group = pb::CreateGroup { topic: TOPIC.into(), name: "billing".into(), config: None };
    client.call(group).await.expect("create a group");
    let acked = publish_many(&client, TOPIC, 2, 25, Default::default()).await;
    assert_eq!(acked.len(), 50);
    // More topics than get labels of their own: the rest fold into `_other`.
    for n in 0..TOPIC_LABELS_MAX + 1 {
        create_topic(&client, &format!("t{n:03}")).await;
    }
    let status = cluster.status(leader).await.expect("the leader's status");
    cluster.wait_applied_through(&[1, 2, 3], status.applied_index, Duration::from_secs(20)).await;

    for id in [1, 2, 3] {
        let addr = &cluster.brokers[&id].metrics_addr;
        assert_eq!(http::get(addr, "/healthz").map(|a| a.status), Some(200));
        let ready = http::get(addr, "/readyz").expect("readyz answers");
        assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"), "broker {id}");
        assert_eq!(http::get(addr, "/nothing").map(|a| a.status), Some(404));
        let text = metrics(&cluster, id);
        assert_eq!(sample(&text, "chorus_raft_is_leader"), Some(f64::from(id == leader)), "broker {id}");
        assert_eq!(sample(&text, "chorus_raft_leader_id"), Some(leader as f64));
        assert_eq!(sample(&text, "chorus_ready"), Some(1.0));
        assert!(sample(&text, "chorus_raft_applied_index").is_some_and(|i| i >= status.applied_index as f64));
        assert!(sample(&text, "chorus_log_fsync_seconds_count").is_some_and(|n| n > 0.0), "broker {id} synced");
        // Every broker reads the topics from its own applied state.
        assert_eq!(sample(&text, "chorus_topic_messages{topic=\"events\"}"), Some(50.0), "broker {id}");
        assert_eq!(sample(&text, "chorus_group_backlog{topic=\"events\",group=\"billing\"}"), Some(50.0));
        let labelled = text.lines().filter(|l| l.starts_with("chorus_topic_first_seq{")).count();
        assert_eq!(labelled, TOPIC_LABELS_MAX, "broker {id}: labels are capped");
        assert_eq!(sample(&text, "chorus_topic_messages{topic=\"_other\"}"), Some(0.0));
    }
    let on_leader = metrics(&cluster, leader);
    for follower in [1, 2, 3].into_iter().filter(|id| *id != leader) {
        let lag = format!("chorus_raft_follower_lag_entries{{follower=\"{follower}\"}}");
        assert!(sample(&on_leader, &lag).is_some(), "{lag} missing:\n{on_leader}");
    }
    // Publishes are counted where the client sent them, their proposals on the leader.
    let published: f64 =
        [1, 2, 3].iter().filter_map(|id| sample(&metrics(&cluster, *id), "chorus_publish_messages_total")).sum();
    assert_eq!(published, 50.0);
    assert!(sample(&on_leader, "chorus_proposals_committed_total").is_some_and(|n| n >= 50.0));
    assert!(on_leader.contains("chorus_client_requests_total{kind=\"Publish\",code=\"OK\"}"), "{on_leader}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_exits_non_zero_when_a_broker_is_down() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let (code, text) = cluster.cli_exit(&["status"], &[1, 2, 3]).await;
    assert_eq!(code, Some(0), "a healthy cluster:\n{text}");
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    cluster.kill(follower);
    let (code, text) = cluster.cli_exit(&["status"], &[1, 2, 3]).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&format!("problem: broker {follower} does not answer")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_exits_non_zero_without_a_leader() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    cluster.kill(leader);
    cluster.kill(others[0]);
    let survivor = others[1];
    let addr = cluster.brokers[&survivor].metrics_addr.clone();
    eventually(Duration::from_secs(10), "the survivor not ready", || {
        http::get(&addr, "/readyz").is_some_and(|a| a.status == 503)
    })
    .await;
    let (code, text) = cluster.cli_exit(&["status"], &[1, 2, 3]).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("problem: no leader"), "{text}");
    assert!(text.contains(&format!("problem: broker {survivor} is not ready")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_exits_non_zero_when_a_broker_is_cut_off_from_the_leader() {
    let cluster = Cluster::start(3).await;
    let old = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    // The old leader keeps its client port, but no follower hears it: it still calls itself the
    // leader, with no quorum behind it, while the others elect another.
    cluster.faults.partition(&[&[old], &others]);
    let new = cluster.wait_for_leader(&others, Duration::from_secs(20)).await;
    assert_ne!(new, old);
    let addr = cluster.brokers[&old].metrics_addr.clone();
    eventually(Duration::from_secs(10), "the old leader not ready", || {
        http::get(&addr, "/readyz").is_some_and(|a| a.status == 503 && a.body.contains("no word that leader"))
    })
    .await;
    // Leader changes are logged at info, once each: the new leader's log names two leaders, the
    // first it learned of and itself.
    let named = cluster.logs_of(new).lines().filter(|line| line.contains("a new leader")).count();
    assert_eq!(named, 2, "{}", cluster.logs_of(new));
    let status = cluster.status(old).await.expect("the old leader answers on its client port");
    assert_eq!(status.role, "leader", "openraft's leader does not step down by itself");
    let (code, text) = cluster.cli_exit(&["status"], &[1, 2, 3]).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("problem: broker {old} is not ready: no word that leader {old} is alive")),
        "{text}"
    );
    cluster.faults.heal();
    eventually(Duration::from_secs(20), "the old leader ready again", || {
        http::get(&addr, "/readyz").is_some_and(|a| a.status == 200)
    })
    .await;
}

/// Issue 21: a follower paused for 4 s made the leader log about 1,950 error lines in two
/// minutes, one per failed heartbeat. Now it is a line when the follower has failed for 2 s
/// (then one per 10 s), and one when it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_follower_costs_the_leaders_log_a_line_or_two_not_one_per_heartbeat() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let before = cluster.logs_of(leader).lines().count();
    cluster.signal(follower, "STOP");
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.signal(follower, "CONT");
    let about = format!("target_id={follower}");
    eventually(Duration::from_secs(10), "the leader logging that the follower answers again", || {
        cluster
            .logs_of(leader)
            .lines()
            .skip(before)
            .any(|line| line.contains("a peer answers again") && line.contains(&about))
    })
    .await;
    let log = cluster.logs_of(leader);
    let complaints: Vec<&str> = log
        .lines()
        .skip(before)
        .filter(|line| (line.contains("WARN") || line.contains("ERROR")) && line.contains(&about))
        .collect();
    assert!(!complaints.is_empty() && complaints.len() <= 2, "{complaints:#?}");
}

/// A Prometheus server scraping the brokers every second, with the project's alerting rules;
/// killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's `prometheus` package puts it on the PATH; `.ci/test` installs it.
fn prometheus_binary() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file());
    found.expect("no `prometheus` on the PATH: `apt-get install -y prometheus` (`.ci/test` does)")
}

fn alert_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").join("docs/alerts.yml")
}

impl Prometheus {
    fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().expect("a directory for Prometheus");
        let addr = free_addr();
        let targets = targets.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: chorus\n    static_configs:\n      - targets: [{targets}]\n",
            alert_rules().display()
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("a log file");
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, dir }
    }

    /// The result vector of an instant query.
    fn query(&self, query: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", http::url_encoded(query));
        let Some(answer) = http::get(&self.addr, &path) else { return Vec::new() };
        let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
        json["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of an instant query that yields one sample.
    fn value(&self, query: &str) -> Option<f64> {
        let result = self.query(query);
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_sees_leader_changes_and_fires_the_flapping_alert() {
    let mut cluster = Cluster::start(3).await;
    let mut leader = cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(20)).await;
    let targets: Vec<String> = cluster.brokers.values().map(|b| b.metrics_addr.clone()).collect();
    let prometheus = Prometheus::start(&targets);
    eventually(Duration::from_secs(30), "Prometheus scraping all three brokers", || {
        prometheus.value("sum(up{job=\"chorus\"})") == Some(3.0)
    })
    .await;
    let before = prometheus.value("max(chorus_raft_leader_changes_total)").expect("leader changes scraped");
    assert!(prometheus.query("ALERTS{alertname=\"ChorusLeaderFlapping\"}").is_empty());

    cluster.kill(leader);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let next = cluster.wait_for_leader(&others, Duration::from_secs(20)).await;
    eventually(Duration::from_secs(20), "leader changes rising in Prometheus", || {
        prometheus.value("max(chorus_raft_leader_changes_total)").is_some_and(|after| after > before)
    })
    .await;
    cluster.spawn(leader);
    leader = next;

    // Leader after leader killed and restarted: the survivors see a new one each time.
    for _ in 0..3 {
        cluster.wait_for_leader(&[1, 2, 3], Duration::from_secs(30)).await;
        cluster.kill(leader);
        let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
        let next = cluster.wait_for_leader(&others, Duration::from_secs(20)).await;
        cluster.spawn(leader);
        leader = next;
    }
    let firing = "ALERTS{alertname=\"ChorusLeaderFlapping\",alertstate=\"firing\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    while prometheus.query(firing).is_empty() {
        assert!(Instant::now() < deadline, "the flapping alert did not fire\n{}", prometheus.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
