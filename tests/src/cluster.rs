//! Real broker processes on loopback. Each broker advertises a fault-proxy address as its peer
//! address, so tests can partition the cluster; clients talk to brokers directly. Every process
//! is killed when the `Cluster` is dropped.
//!
//! Peers authenticate by mutual TLS unless a test says otherwise ([`Security`]), under a CA made
//! for the cluster in its temporary directory, so every cluster test also runs the TLS path.
//! Clients connect without TLS or users unless a test secures them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chorus_broker::security::peer_link::PeerAuth;
use chorus_broker::security::pki::{self, Authority, TlsFiles, Validity};
use chorus_broker::security::secret::ClusterSecret;
use chorus_broker::security::tls::BrokerTls;
use chorus_broker::security::{Stream, password, secret};
use chorus_consumers::{ConnectOptions, Connection, Credentials, Tls};
use chorus_protocol::PeerCodec;
use chorus_protocol::pb::{self, client_frame::Body as Request, server_frame::Body};
use futures::{SinkExt, StreamExt};
use tokio::task::AbortHandle;
use tokio_util::codec::Framed;

use crate::proxy::Faults;

/// How brokers authenticate each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMode {
    Tls,
    Secret,
    /// Nobody: how brokers ran before peers authenticated.
    Open,
}

/// How a test cluster is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Security {
    pub peers: PeerMode,
    /// TLS on the client port.
    pub client_tls: bool,
    /// Clients authenticate as users; the first is `admin`.
    pub auth: bool,
}

impl Default for Security {
    fn default() -> Security {
        Security { peers: PeerMode::Tls, client_tls: false, auth: false }
    }
}

impl Security {
    /// What `chorus up` runs: TLS everywhere, users.
    pub const SECURED: Security = Security { peers: PeerMode::Tls, client_tls: true, auth: true };
}

/// The first admin of a cluster with users.
pub const ADMIN: &str = "admin";

/// The secrets a cluster was made with, in its temporary directory.
#[derive(Debug)]
pub struct Secrets {
    pub ca: Authority,
    /// The certificate, key and CA files every broker is started with.
    pub tls: TlsFiles,
    /// The client CA, whose certificates name users.
    pub client_ca: Authority,
    pub client_ca_file: PathBuf,
    pub secret_file: PathBuf,
    pub admin_password: String,
    pub admin_hash_file: PathBuf,
}

/// Raft settings the tests may shrink so snapshots happen within a test.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub snapshot_after_entries: u64,
    pub entries_kept_after_snapshot: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// More `chorus serve` flags, such as `--in-flight-max`.
    pub extra_args: Vec<String>,
    pub security: Security,
    /// The brokers' certificate: its host names and validity, instead of loopback for two days.
    pub broker_certificate: Option<(Vec<String>, Validity)>,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            snapshot_after_entries: 20_000,
            entries_kept_after_snapshot: 2_000,
            heartbeat_ms: 100,
            election_timeout_ms: 400,
            extra_args: Vec::new(),
            security: Security::default(),
            broker_certificate: None,
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
    /// Where the broker serves `/metrics`, `/healthz` and `/readyz`.
    pub metrics_addr: String,
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
    pub secrets: Secrets,
}

/// Ports for broker processes come from below Linux's ephemeral range (32768–60999). A port the
/// kernel hands out for `bind(0)` comes from that range, and so does the source port of every
/// outgoing connection: released again for the broker to bind, it could be taken by any
/// connection of a test running beside this one, and the broker failed with "address in use"
/// (seen in CI). Below the range nothing is handed out implicitly.
const LISTEN_PORT_FIRST: u32 = 10_000;
const LISTEN_PORT_COUNT: u32 = 22_000;

/// An address a broker process can listen on: the next port of this test process's walk through
/// the range that is free right now. Each process starts its walk at a place chosen by its id, so
/// test processes running at once rarely meet, and the walk never returns to a port this process
/// used (a killed broker's port may still be in TIME_WAIT).
pub fn free_addr() -> String {
    static WALKED: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % LISTEN_PORT_COUNT;
    for _ in 0..LISTEN_PORT_COUNT {
        let step = WALKED.fetch_add(1, Ordering::Relaxed);
        let port = LISTEN_PORT_FIRST + (start + step) % LISTEN_PORT_COUNT;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            return listener.local_addr().expect("local addr").to_string();
        }
    }
    panic!("no free loopback port in {LISTEN_PORT_FIRST}..{}", LISTEN_PORT_FIRST + LISTEN_PORT_COUNT);
}

/// The broker binary: cargo builds `chorus-node` beside the integration test executables
/// (`target/<profile>/deps/<test>` → `target/<profile>/chorus-node`).
/// The `chorus` binary the tests run (`chorus-node`, or `CHORUS_NODE_BIN`).
pub fn binary() -> PathBuf {
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
        let secrets = make_secrets(root.path(), options.broker_certificate.clone());
        let mut cluster = Cluster {
            root,
            brokers: BTreeMap::new(),
            initial: Vec::new(),
            faults: Faults::default(),
            options,
            secrets,
        };
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
            metrics_addr: free_addr(),
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
            // Other brokers reach it through its fault proxy, which it is told to advertise.
            .arg(format!("--peer-addr={}", broker.peer_public))
            .arg(format!("--peer-bind={}", broker.peer_listen))
            .arg(format!("--metrics-addr={}", broker.metrics_addr))
            .args(members)
            .arg(format!("--snapshot-after-entries={}", options.snapshot_after_entries))
            .arg(format!("--entries-kept-after-snapshot={}", options.entries_kept_after_snapshot))
            .arg(format!("--heartbeat-ms={}", options.heartbeat_ms))
            .arg(format!("--election-timeout-ms={}", options.election_timeout_ms))
            .args(security_args(&options.security, &self.secrets))
            .args(&options.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("CHORUS_TEST_RUST_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn,openraft::replication=off".into()),
            )
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

    /// Broker `id`'s process id, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.brokers.get(&id).and_then(|b| b.child.as_ref()).map(Child::id)
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

    /// Waits up to `timeout` for broker `id` to exit by itself, and returns how it exited.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let broker = self.brokers.get_mut(&id).expect("known broker");
            let child = broker.child.as_mut().expect("broker is running");
            if let Some(status) = child.try_wait().expect("poll the broker") {
                broker.child = None;
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "broker {id} did not exit\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes broker `id`'s data directory (the broker must be stopped).
    pub fn wipe(&mut self, id: u64) {
        let broker = &self.brokers[&id];
        assert!(broker.child.is_none(), "wipe a stopped broker");
        let _ = std::fs::remove_dir_all(&broker.data_dir);
    }

    /// How a client connects to this cluster: over TLS when its client port has it, as the admin
    /// when it has users.
    pub fn connect_options(&self) -> ConnectOptions {
        let security = self.options.security;
        ConnectOptions {
            tls: security.client_tls.then(|| Tls::from_files(&self.secrets.tls.ca, None).expect("the cluster CA")),
            credentials: security.auth.then(|| Credentials::new(ADMIN, &self.secrets.admin_password)),
            timeout: Duration::from_millis(500),
            ..ConnectOptions::new("harness")
        }
    }

    /// The same, acting as `user` with `password`.
    pub fn connect_options_as(&self, user: &str, password: &str) -> ConnectOptions {
        ConnectOptions { credentials: Some(Credentials::new(user, password)), ..self.connect_options() }
    }

    /// A broker's own peer authentication, as broker `id` would hold it: for tests that speak
    /// to a peer port as a member of the cluster would.
    pub fn peer_auth(&self) -> PeerAuth {
        match self.options.security.peers {
            PeerMode::Tls => PeerAuth::tls(&BrokerTls::load(&self.secrets.tls).expect("the cluster's certificates")),
            PeerMode::Secret => PeerAuth::Secret(ClusterSecret::load(&self.secrets.secret_file).expect("the secret")),
            PeerMode::Open => PeerAuth::Open,
        }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A peer connection to broker `to`'s own peer port, authenticated as a member of the cluster
    /// (claiming to be broker `from`), after its PeerHello: for tests that act as a broker.
    pub async fn peer_connection(&self, from: u64, to: u64) -> Framed<Stream, PeerCodec> {
        let addr = &self.brokers[&to].peer_listen;
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect to the peer port");
        let stream = self.peer_auth().dial(tcp, from, to, addr).await.expect("authenticate as a peer");
        let mut peer = Framed::new(stream, PeerCodec::default());
        let hello = pb::PeerHello { protocol_version: 1, from_id: from, initialized: false };
        peer.send(pb::PeerFrame { request_id: 0, body: Some(pb::peer_frame::Body::Hello(hello)) }).await.unwrap();
        peer.next().await.expect("a hello back").expect("a frame");
        peer
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
        let connection = Connection::connect_with(addr, &self.connect_options()).await.ok()?;
        match connection.request(Request::ClusterStatus(pb::ClusterStatusRequest {}), Duration::from_secs(1)).await {
            Ok(Body::ClusterStatus(status)) => Some(status),
            _ => None,
        }
    }

    /// Waits until one of `among` reports itself leader and every broker of `among` names it:
    /// a settled cluster, in which any of them takes requests at once. (A majority alone may have
    /// settled while a broker that started late still waits out a reconnection backoff.)
    pub async fn wait_for_leader(&self, among: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut named = Vec::new();
            let mut leader_says = None;
            for &id in among {
                if let Some(status) = self.status(id).await {
                    named.push(status.leader_id);
                    if status.role == "leader" {
                        leader_says = Some(id);
                    }
                }
            }
            if let Some(leader) = leader_says
                && named.len() == among.len()
                && named.iter().all(|named| *named == Some(leader))
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

    /// Runs `chorus <args>` against this cluster's running brokers, without credentials, off the
    /// runtime's threads.
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_input(args, b"").await
    }

    /// Runs `chorus <args>` as [`Cluster::cli`] does, with `input` as its standard input.
    pub async fn cli_input(&self, args: &[&str], input: &[u8]) -> std::process::Output {
        let mut command = self.cli_command(args, &self.running());
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let input = input.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().expect("run the chorus command line");
            let mut stdin = child.stdin.take().expect("a piped stdin");
            // A command that stops reading early closes the pipe: not the test's failure.
            let _ = std::io::Write::write_all(&mut stdin, &input);
            drop(stdin);
            child.wait_with_output().expect("the command line's output")
        })
        .await
        .expect("the command line thread")
    }

    /// Runs `chorus <args>` against brokers `ids` (down ones included), off the runtime's threads:
    /// its exit code, and its stdout then stderr as one text.
    pub async fn cli_exit(&self, args: &[&str], ids: &[u64]) -> (Option<i32>, String) {
        let mut command = self.cli_command(args, ids);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let output =
            tokio::task::spawn_blocking(move || command.output().expect("run chorus")).await.expect("the CLI thread");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code(), text)
    }

    /// `chorus <args>` against brokers `ids` only, without credentials or a saved context: to run
    /// as the caller likes (spawned, with pipes).
    pub fn cli_command(&self, args: &[&str], ids: &[u64]) -> Command {
        let brokers: Vec<String> = ids.iter().map(|id| self.brokers[id].client_addr.clone()).collect();
        let mut command = Command::new(binary());
        // A context saved on this machine (by `chorus up`, say) must not lend its CA or user.
        let no_context = self.root().join("no-cli-context");
        // The brokers go in the environment: a flag after `work ... -- CMD` would be CMD's.
        command
            .args(args)
            .env("CHORUS_BROKERS", brokers.join(","))
            .env_remove("CHORUS_CONTEXT")
            .env("CHORUS_CONFIG_DIR", no_context);
        command
    }

    pub fn data_dir(&self, id: u64) -> &Path {
        &self.brokers[&id].data_dir
    }

    /// Broker `id`'s whole log.
    pub fn logs_of(&self, id: u64) -> String {
        std::fs::read_to_string(&self.brokers[&id].log_path).unwrap_or_default()
    }

    /// The last lines of every broker's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for broker in self.brokers.values() {
            let text = std::fs::read_to_string(&broker.log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- broker {} log (last 15 lines)\n", broker.id));
            let keep: usize = std::env::var("CHORUS_TEST_LOG_LINES").ok().and_then(|n| n.parse().ok()).unwrap_or(15);
            for line in &lines[lines.len().saturating_sub(keep)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// A CA with one broker certificate (for loopback, unless `certificate` says otherwise), a client
/// CA, a cluster secret, and an admin password with its hash, in `root`.
fn make_secrets(root: &Path, certificate: Option<(Vec<String>, Validity)>) -> Secrets {
    let dir = root.join("secrets");
    std::fs::create_dir_all(&dir).expect("secrets dir");
    let ca = Authority::generate("test cluster CA").expect("a CA");
    let (hosts, validity) =
        certificate.unwrap_or_else(|| (vec!["127.0.0.1".into(), "localhost".into()], Validity::days(2)));
    let broker = ca.issue_server("test-broker", &hosts, validity).expect("a cert");
    let tls = pki::write_broker_files(&dir, &ca, &broker).expect("write the broker's files");
    let client_ca = Authority::generate("test client CA").expect("a client CA");
    let client_ca_file = dir.join("client-ca.pem");
    pki::write_file(&client_ca_file, &client_ca.cert_pem, false).expect("write the client CA");
    let secret_file = dir.join("cluster.secret");
    pki::write_file(&secret_file, &secret::generate(), true).expect("write the secret");
    let admin_password = secret::generate();
    let admin_hash_file = dir.join("admin.hash");
    pki::write_file(&admin_hash_file, &password::hash(&admin_password).expect("hash"), true).expect("write the hash");
    Secrets { ca, tls, client_ca, client_ca_file, secret_file, admin_password, admin_hash_file }
}

/// The `chorus serve` flags for `security`.
fn security_args(security: &Security, secrets: &Secrets) -> Vec<String> {
    let mut args = Vec::new();
    let path = |flag: &str, path: &Path| format!("--{flag}={}", path.display());
    match security.peers {
        PeerMode::Tls => {
            args.push(path("tls-cert", &secrets.tls.cert));
            args.push(path("tls-key", &secrets.tls.key));
            args.push(path("tls-ca", &secrets.tls.ca));
        }
        PeerMode::Secret => args.push(path("cluster-secret-file", &secrets.secret_file)),
        PeerMode::Open => {}
    }
    assert!(!security.client_tls || security.peers == PeerMode::Tls, "client TLS comes with the broker's certificate");
    match (security.peers, security.client_tls) {
        (PeerMode::Tls, true) => args.push(path("tls-client-ca", &secrets.client_ca_file)),
        (PeerMode::Tls, false) => args.push("--no-client-tls".into()),
        _ => {}
    }
    if security.auth {
        args.push("--auth".into());
        args.push(path("admin-password-hash-file", &secrets.admin_hash_file));
    }
    args
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
