//! A cluster of `chorus serve` child processes on loopback, for `chorus up` and `chorus demo`.
//! Each broker logs to `<data dir>/broker-<id>.log` and records its pid in
//! `<data dir>/<id>/broker.pid`. A broker that dies is restarted by `supervise`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use chorus_consumers::Connection;
use chorus_protocol::pb::{self, client_frame::Body as Request, server_frame::Body};

/// One broker of a local cluster.
#[derive(Debug)]
pub struct LocalBroker {
    pub id: u64,
    pub client_addr: String,
    pub peer_addr: String,
    child: Option<Child>,
    restarted_at: Option<Instant>,
}

#[derive(Debug)]
pub struct LocalCluster {
    data_dir: PathBuf,
    pub brokers: Vec<LocalBroker>,
}

impl LocalCluster {
    /// Starts `count` brokers with client ports from `client_port` and peer ports from
    /// `peer_port`, keeping data under `data_dir` (reused as is when it exists).
    pub fn start(data_dir: &Path, count: u64, client_port: u16, peer_port: u16) -> anyhow::Result<LocalCluster> {
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let brokers = (1..=count)
            .map(|id| LocalBroker {
                id,
                client_addr: format!("127.0.0.1:{}", client_port + id as u16 - 1),
                peer_addr: format!("127.0.0.1:{}", peer_port + id as u16 - 1),
                child: None,
                restarted_at: None,
            })
            .collect();
        let mut cluster = LocalCluster { data_dir: data_dir.to_path_buf(), brokers };
        for index in 0..cluster.brokers.len() {
            cluster.spawn(index)?;
        }
        Ok(cluster)
    }

    pub fn client_addrs(&self) -> Vec<String> {
        self.brokers.iter().map(|b| b.client_addr.clone()).collect()
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let members: Vec<String> =
            self.brokers.iter().map(|b| format!("--member={}={},{}", b.id, b.peer_addr, b.client_addr)).collect();
        let broker = &mut self.brokers[index];
        let dir = self.data_dir.join(broker.id.to_string());
        std::fs::create_dir_all(&dir)?;
        let log_path = self.data_dir.join(format!("broker-{}.log", broker.id));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let child = Command::new(std::env::current_exe().context("finding the chorus binary")?)
            .arg("serve")
            .arg(format!("--id={}", broker.id))
            .arg(format!("--data-dir={}", dir.display()))
            .arg(format!("--client-addr={}", broker.client_addr))
            .arg(format!("--peer-addr={}", broker.peer_addr))
            .args(members)
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
    pub fn stop(&mut self) {
        for broker in &mut self.brokers {
            if let Some(child) = &broker.child {
                let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
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

/// Asks `addr` for its view of the cluster.
pub async fn status_of(addr: &str, token: &str) -> Option<pb::ClusterStatus> {
    let connection =
        Connection::connect_with_token(addr, "chorus-cli", token, Duration::from_millis(500)).await.ok()?;
    match connection.request(Request::ClusterStatus(pb::ClusterStatusRequest {}), Duration::from_secs(2)).await {
        Ok(Body::ClusterStatus(status)) => Some(status),
        _ => None,
    }
}

/// Waits until some broker in `addrs` reports itself leader; returns its status.
pub async fn wait_for_leader(addrs: &[String], token: &str, timeout: Duration) -> anyhow::Result<pb::ClusterStatus> {
    wait_for_leader_where(addrs, token, timeout, |_| true).await
}

/// Waits until some broker in `addrs` reports itself leader with a status `accept` takes.
pub async fn wait_for_leader_where(
    addrs: &[String],
    token: &str,
    timeout: Duration,
    accept: impl Fn(&pb::ClusterStatus) -> bool,
) -> anyhow::Result<pb::ClusterStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        for addr in addrs {
            if let Some(status) = status_of(addr, token).await
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
