//! A cluster of `chorus serve` child processes on loopback, for `chorus up`, `chorus demo` and
//! `chorus bench`. Each broker logs to `<data dir>/broker-<id>.log` and records its pid in
//! `<data dir>/<id>/broker.pid`. A broker that dies is restarted by `supervise`.
//!
//! Secured, the cluster keeps its secrets in the data directory, made on first start and reused
//! after: a CA and one broker certificate for loopback (`tls/`), and the first admin's password
//! (`admin.password`, readable by its owner only) and its argon2 hash (`admin.hash`). Its
//! `context()` tells a client how to connect.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chorus_consumers::{ConnectOptions, Connection};
use chorus_protocol::pb;

use super::context::{Context, Overrides, Resolved};
use chorus_broker::security::pki::{self, Authority, Validity};
use chorus_broker::security::{password, secret};

/// The first admin of a secured local cluster.
pub const ADMIN: &str = "admin";

/// How a local cluster is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalSecurity {
    /// TLS on both ports: peers by mutual TLS under a local CA, clients trusting it.
    pub tls: bool,
    /// Clients authenticate as users; the first is `admin`.
    pub auth: bool,
}

impl LocalSecurity {
    pub const SECURE: LocalSecurity = LocalSecurity { tls: true, auth: true };
    /// Nothing authenticated: brokers on loopback, for benchmarks and old habits.
    pub const OPEN: LocalSecurity = LocalSecurity { tls: false, auth: false };
}

/// The first broker's ports; broker N's are these plus N - 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub client: u16,
    pub peer: u16,
    /// No metrics endpoint when `None`.
    pub metrics: Option<u16>,
}

/// One broker of a local cluster.
#[derive(Debug)]
pub struct LocalBroker {
    pub id: u64,
    pub client_addr: String,
    pub peer_addr: String,
    pub metrics_addr: Option<String>,
    child: Option<Child>,
    restarted_at: Option<Instant>,
}

#[derive(Debug)]
pub struct LocalCluster {
    data_dir: PathBuf,
    pub brokers: Vec<LocalBroker>,
    /// The flags every broker gets for its security.
    security_args: Vec<String>,
    context: Context,
    /// Held while this cluster runs: a second `chorus up` on the same directory is refused.
    _lock: std::fs::File,
}

/// Takes the data directory's lock, or says who holds it.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = data_dir.join("up.lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            anyhow::bail!(
                "{} is in use by another `chorus up` (pid {}): stop it first, or give another --data-dir",
                data_dir.display(),
                holder.trim()
            );
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(error).with_context(|| format!("locking {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

impl LocalCluster {
    /// Starts `count` brokers with ports numbered from `ports`, keeping data under `data_dir`
    /// (reused as is when it exists).
    pub fn start(data_dir: &Path, count: u64, ports: Ports, security: LocalSecurity) -> anyhow::Result<LocalCluster> {
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let data_dir = &data_dir.canonicalize().with_context(|| format!("finding {}", data_dir.display()))?;
        let lock = lock_data_dir(data_dir)?;
        let (security_args, mut context) = secure(data_dir, security)?;
        let brokers: Vec<LocalBroker> = (1..=count)
            .map(|id| LocalBroker {
                id,
                client_addr: format!("127.0.0.1:{}", ports.client + id as u16 - 1),
                peer_addr: format!("127.0.0.1:{}", ports.peer + id as u16 - 1),
                metrics_addr: ports.metrics.map(|port| format!("127.0.0.1:{}", port + id as u16 - 1)),
                child: None,
                restarted_at: None,
            })
            .collect();
        context.brokers = brokers.iter().map(|b| b.client_addr.clone()).collect();
        let mut cluster =
            LocalCluster { data_dir: data_dir.to_path_buf(), brokers, security_args, context, _lock: lock };
        for index in 0..cluster.brokers.len() {
            cluster.spawn(index)?;
        }
        Ok(cluster)
    }

    pub fn client_addrs(&self) -> Vec<String> {
        self.brokers.iter().map(|b| b.client_addr.clone()).collect()
    }

    /// How a client reaches this cluster: its brokers, CA and admin.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The context, resolved for connecting.
    pub fn resolved(&self) -> anyhow::Result<Resolved> {
        let path = self.data_dir.join("context.json");
        self.context.save(&path)?;
        Overrides { context: Some(path), ..Overrides::default() }.resolve()
    }

    /// Where broker `id` writes its log.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.data_dir.join(format!("broker-{id}.log"))
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let members: Vec<String> =
            self.brokers.iter().map(|b| format!("--member={}={},{}", b.id, b.peer_addr, b.client_addr)).collect();
        let worker_threads = worker_threads_each(self.brokers.len());
        let broker = &mut self.brokers[index];
        let dir = self.data_dir.join(broker.id.to_string());
        std::fs::create_dir_all(&dir)?;
        let log_path = self.data_dir.join(format!("broker-{}.log", broker.id));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let metrics_args = broker.metrics_addr.iter().map(|addr| format!("--metrics-addr={addr}"));
        let child = Command::new(std::env::current_exe().context("finding the chorus binary")?)
            .arg("serve")
            .arg(format!("--id={}", broker.id))
            .arg(format!("--data-dir={}", dir.display()))
            .arg(format!("--client-addr={}", broker.client_addr))
            .arg(format!("--peer-addr={}", broker.peer_addr))
            .args(members)
            .args(metrics_args)
            .arg(format!("--worker-threads={}", worker_threads))
            .args(&self.security_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting a broker")?;
        std::fs::write(dir.join("broker.pid"), child.id().to_string())?;
        broker.child = Some(child);
        Ok(())
    }

    /// Restarts brokers whose process has exited (at most once a second each). Returns the ids
    /// restarted.
    pub fn supervise(&mut self) -> Vec<u64> {
        let mut restarted = Vec::new();
        for index in 0..self.brokers.len() {
            let broker = &mut self.brokers[index];
            let exited = match broker.child.as_mut() {
                Some(child) => matches!(child.try_wait(), Ok(Some(_))),
                None => true,
            };
            let recently = broker.restarted_at.is_some_and(|at| at.elapsed() < Duration::from_secs(1));
            if exited && !recently {
                broker.child = None;
                broker.restarted_at = Some(Instant::now());
                if self.spawn(index).is_ok() {
                    restarted.push(self.brokers[index].id);
                }
            }
        }
        restarted
    }

    /// The process id of broker `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.brokers.iter().find(|b| b.id == id)?.child.as_ref().map(Child::id)
    }

    /// SIGTERM every broker and wait for them to exit (kill -9 after 10 s).
    /// Stops every broker at once: SIGINT, so that no leader hands over to a broker that is
    /// stopping too; kill -9 after 10 s.
    pub fn stop(&mut self) {
        for broker in &mut self.brokers {
            if let Some(child) = &broker.child {
                let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for broker in &mut self.brokers {
            if let Some(mut child) = broker.child.take() {
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for broker in &mut self.brokers {
            if let Some(mut child) = broker.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Makes, or finds from an earlier start, the cluster's secrets in `data_dir`: the flags its
/// brokers need, and a context for its clients (without the brokers).
fn secure(data_dir: &Path, security: LocalSecurity) -> anyhow::Result<(Vec<String>, Context)> {
    let mut args = Vec::new();
    let mut context = Context::default();
    if security.tls {
        let dir = data_dir.join("tls");
        let files = pki::TlsFiles {
            cert: dir.join("broker.pem"),
            key: dir.join("broker.key"),
            ca: dir.join("ca.pem"),
            client_ca: None,
        };
        if !files.ca.exists() {
            std::fs::create_dir_all(&dir)?;
            let ca = Authority::generate("Chorus local CA")?;
            pki::write_file(&dir.join("ca.key"), &ca.key_pem, true)?;
            let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned(), "::1".to_owned()];
            let broker = ca.issue_server("chorus-broker", &hosts, Validity::days(3650))?;
            pki::write_broker_files(&dir, &ca, &broker)?;
        }
        args.push(format!("--tls-cert={}", files.cert.display()));
        args.push(format!("--tls-key={}", files.key.display()));
        args.push(format!("--tls-ca={}", files.ca.display()));
        context.ca = Some(files.ca);
    }
    if security.auth {
        let (password_file, hash_file) = (data_dir.join("admin.password"), data_dir.join("admin.hash"));
        if !password_file.exists() || !hash_file.exists() {
            let password = secret::generate();
            pki::write_file(&password_file, &format!("{password}\n"), true)?;
            pki::write_file(&hash_file, &format!("{}\n", password::hash(&password)?), true)?;
        }
        args.push("--auth".into());
        args.push(format!("--admin-user={ADMIN}"));
        args.push(format!("--admin-password-hash-file={}", hash_file.display()));
        context.user = Some(ADMIN.into());
        context.password_file = Some(password_file);
    }
    Ok((args, context))
}

/// Asks `addr` for its view of the cluster.
pub async fn status_of(addr: &str, options: &ConnectOptions) -> Option<pb::ClusterStatus> {
    let options = ConnectOptions { timeout: Duration::from_millis(500), ..options.clone() };
    let connection = Connection::connect_with(addr, &options).await.ok()?;
    connection.call(pb::ClusterStatusRequest {}, Duration::from_secs(2)).await.ok()
}

/// The cluster as the first of `addrs` that answers sees it.
pub async fn first_view(addrs: &[String], options: &ConnectOptions) -> anyhow::Result<pb::ClusterStatus> {
    for addr in addrs {
        if let Some(status) = status_of(addr, options).await {
            return Ok(status);
        }
    }
    anyhow::bail!("no broker answered at {}", addrs.join(","))
}

/// Waits until some broker in `addrs` reports itself leader; returns its status.
pub async fn wait_for_leader(
    addrs: &[String],
    options: &ConnectOptions,
    timeout: Duration,
) -> anyhow::Result<pb::ClusterStatus> {
    wait_for_leader_where(addrs, options, timeout, |_| true).await
}

/// Waits until some broker in `addrs` reports itself leader with a status `accept` takes.
pub async fn wait_for_leader_where(
    addrs: &[String],
    options: &ConnectOptions,
    timeout: Duration,
    accept: impl Fn(&pb::ClusterStatus) -> bool,
) -> anyhow::Result<pb::ClusterStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        for addr in addrs {
            if let Some(status) = status_of(addr, options).await
                && status.role == "leader"
                && accept(&status)
            {
                return Ok(status);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no leader elected within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each of `brokers` brokers on this host gets its share of the cores, at least one thread,
/// rather than a thread per core each.
fn worker_threads_each(brokers: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / brokers.max(1)).max(1)
}
