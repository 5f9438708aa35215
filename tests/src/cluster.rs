//! Real broker processes on loopback. Each broker advertises a fault-proxy address as its peer
//! address, so tests can partition the cluster; clients talk to brokers directly. Every process
//! is killed when the `Cluster` is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chorus_consumers::Connection;
use chorus_protocol::pb::{self, client_frame::Body as Request, server_frame::Body};
use tokio::task::AbortHandle;

use crate::proxy::Faults;

/// Raft settings the tests may shrink so snapshots happen within a test.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub snapshot_after_entries: u64,
    pub entries_kept_after_snapshot: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// More `chorus serve` flags, such as `--auth-token` or `--in-flight-max`.
    pub extra_args: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            snapshot_after_entries: 20_000,
            entries_kept_after_snapshot: 2_000,
            heartbeat_ms: 100,
            election_timeout_ms: 400,
            extra_args: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct BrokerProcess {
    pub id: u64,
    pub client_addr: String,
    /// Where the broker listens for peers.
    pub peer_listen: String,
    /// What other brokers dial: the fault proxy in front of `peer_listen`.
    pub peer_public: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    proxy: AbortHandle,
}

#[derive(Debug)]
pub struct Cluster {
    root: tempfile::TempDir,
    pub brokers: BTreeMap<u64, BrokerProcess>,
    /// The members the cluster was bootstrapped with: id, peer (proxy) and client addresses.
    initial: Vec<(u64, String, String)>,
    pub faults: Faults,
    pub options: ClusterOptions,
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").to_string()
}

/// The broker binary: cargo builds `chorus-node` beside the integration test executables
/// (`target/<profile>/deps/<test>` → `target/<profile>/chorus-node`).
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CHORUS_NODE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let binary = profile_dir.join(format!("chorus-node{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.exists(), "{} is missing: run the tests through cargo", binary.display());
    binary
}

impl Cluster {
    pub async fn start(brokers: u64) -> Cluster {
        Cluster::start_with(brokers, ClusterOptions::default()).await
    }

    pub async fn start_with(brokers: u64, options: ClusterOptions) -> Cluster {
        let root = tempfile::tempdir().expect("temp dir");
        let mut cluster =
            Cluster { root, brokers: BTreeMap::new(), initial: Vec::new(), faults: Faults::default(), options };
        for id in 1..=brokers {
            cluster.prepare(id).await;
        }
        cluster.initial =
            cluster.brokers.values().map(|b| (b.id, b.peer_public.clone(), b.client_addr.clone())).collect();
        for id in 1..=brokers {
            cluster.spawn(id);
        }
        cluster
    }

    /// Allocates addresses, a data directory and a proxy for broker `id`.
    async fn prepare(&mut self, id: u64) {
        let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let peer_public = proxy_listener.local_addr().unwrap().to_string();
        let peer_listen = free_addr();
        let proxy = self.faults.serve(id, proxy_listener, peer_listen.clone());
        let broker = BrokerProcess {
            id,
            client_addr: free_addr(),
            peer_listen,
            peer_public,
            data_dir: self.root.path().join(format!("broker-{id}")),
            log_path: self.root.path().join(format!("broker-{id}.log")),
            child: None,
            proxy,
        };
        self.brokers.insert(id, broker);
    }

    /// Starts (or restarts) broker `id`'s process on its data directory.
    pub fn spawn(&mut self, id: u64) {
        let options = self.options.clone();
        let members: Vec<String> =
            self.initial.iter().map(|(id, peer, client)| format!("--member={id}={peer},{client}")).collect();
        let broker = self.brokers.get_mut(&id).expect("known broker");
        assert!(broker.child.is_none(), "broker {id} is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&broker.log_path).expect("log file");
        let child = Command::new(binary())
            .arg("serve")
            .arg(format!("--id={id}"))
            .arg(format!("--data-dir={}", broker.data_dir.display()))
            .arg(format!("--client-addr={}", broker.client_addr))
            .arg(format!("--peer-addr={}", broker.peer_listen))
            .args(members)
            .arg(format!("--snapshot-after-entries={}", options.snapshot_after_entries))
            .arg(format!("--entries-kept-after-snapshot={}", options.entries_kept_after_snapshot))
            .arg(format!("--heartbeat-ms={}", options.heartbeat_ms))
            .arg(format!("--election-timeout-ms={}", options.election_timeout_ms))
            .args(&options.extra_args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start chorus-node");
        broker.child = Some(child);
    }

    /// Adds a new broker process that is not yet a member (join it with a membership change).
    pub async fn prepare_and_spawn(&mut self, id: u64) -> (String, String) {
        self.prepare(id).await;
        self.spawn(id);
        let broker = &self.brokers[&id];
        (broker.peer_public.clone(), broker.client_addr.clone())
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.brokers.get_mut(&id).and_then(|b| b.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to broker `id`'s process.
    pub fn signal(&self, id: u64, signal: &str) {
        if let Some(child) = self.brokers.get(&id).and_then(|b| b.child.as_ref()) {
            let _ = Command::new("kill").args([format!("-{signal}"), child.id().to_string()]).status();
        }
    }

    /// SIGTERM, then wait for the process to exit (at most 20 s, then kill -9).
    pub fn terminate(&mut self, id: u64) {
        let Some(mut child) = self.brokers.get_mut(&id).and_then(|b| b.child.take()) else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether broker `id`'s process has exited by itself.
    pub fn exited(&mut self, id: u64) -> bool {
        let Some(broker) = self.brokers.get_mut(&id) else { return true };
        match broker.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) | None => {
                broker.child = None;
                true
            }
            _ => false,
        }
    }

    /// Deletes broker `id`'s data directory (the broker must be stopped).
    pub fn wipe(&mut self, id: u64) {
        let broker = &self.brokers[&id];
        assert!(broker.child.is_none(), "wipe a stopped broker");
        let _ = std::fs::remove_dir_all(&broker.data_dir);
    }

    /// The `--auth-token` the brokers were started with, or empty.
    pub fn auth_token(&self) -> String {
        let flag = self.options.extra_args.iter().find_map(|arg| arg.strip_prefix("--auth-token="));
        flag.unwrap_or_default().to_owned()
    }

    pub fn client_addrs(&self) -> Vec<String> {
        self.brokers.values().map(|b| b.client_addr.clone()).collect()
    }

    pub fn running(&self) -> Vec<u64> {
        self.brokers.values().filter(|b| b.child.is_some()).map(|b| b.id).collect()
    }

    /// Broker `id`'s own view of the cluster, or `None` if it does not answer.
    pub async fn status(&self, id: u64) -> Option<pb::ClusterStatus> {
        let addr = &self.brokers.get(&id)?.client_addr;
        let connection =
            Connection::connect_with_token(addr, "harness", &self.auth_token(), Duration::from_millis(500))
                .await
                .ok()?;
        match connection.request(Request::ClusterStatus(pb::ClusterStatusRequest {}), Duration::from_secs(1)).await {
            Ok(Body::ClusterStatus(status)) => Some(status),
            _ => None,
        }
    }

    /// Waits until one of `among` reports itself leader and a majority of `among` agree.
    pub async fn wait_for_leader(&self, among: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
            let mut leader_says = None;
            for &id in among {
                if let Some(status) = self.status(id).await {
                    if let Some(leader) = status.leader_id {
                        *votes.entry(leader).or_default() += 1;
                    }
                    if status.role == "leader" {
                        leader_says = Some(id);
                    }
                }
            }
            if let Some(leader) = leader_says
                && votes.get(&leader).copied().unwrap_or(0) * 2 > among.len()
            {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader among {among:?} within {timeout:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every broker in `ids` has applied the same index and it is at least `index`:
    /// for a quiet cluster, whose states can then be compared.
    pub async fn wait_caught_up(&self, ids: &[u64], index: u64, timeout: Duration) {
        self.wait_applied(ids, index, true, timeout).await;
    }

    /// Waits until every broker in `ids` has applied at least `index`. Under load the brokers
    /// are seldom at the same index at the instant they are asked, so this is the wait for a busy
    /// cluster.
    pub async fn wait_applied_through(&self, ids: &[u64], index: u64, timeout: Duration) {
        self.wait_applied(ids, index, false, timeout).await;
    }

    async fn wait_applied(&self, ids: &[u64], index: u64, equal: bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut applied = Vec::new();
            for &id in ids {
                applied.push(self.status(id).await.map(|s| s.applied_index));
            }
            let first = applied[0];
            let through = applied.iter().all(|a| a.is_some_and(|a| a >= index));
            if through && (!equal || applied.iter().all(|a| *a == first)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "brokers {ids:?} did not catch up to {index}: {applied:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The topic's messages in a stopped broker's state, as `chorus inspect` prints them.
    pub fn inspect(&self, id: u64, topic: &str) -> Vec<String> {
        let broker = &self.brokers[&id];
        assert!(broker.child.is_none(), "inspect a stopped broker");
        let output = Command::new(binary())
            .arg("inspect")
            .arg(format!("--data-dir={}", broker.data_dir.display()))
            .arg(format!("--topic={topic}"))
            .output()
            .expect("run inspect");
        assert!(output.status.success(), "inspect failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("utf-8").lines().map(str::to_owned).collect()
    }

    pub fn data_dir(&self, id: u64) -> &Path {
        &self.brokers[&id].data_dir
    }

    /// The last lines of every broker's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for broker in self.brokers.values() {
            let text = std::fs::read_to_string(&broker.log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- broker {} log (last 15 lines)\n", broker.id));
            for line in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for broker in self.brokers.values_mut() {
            if let Some(mut child) = broker.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            broker.proxy.abort();
        }
    }
}
