//! `chorus up`: a local cluster on fixed loopback ports, data under `./chorus-data`, supervised
//! until Ctrl-C. Running it again restarts the same cluster on the same data. It is secured the
//! way a production cluster is: TLS on both ports under a CA of its own, and users, the first
//! being `admin`. It writes a context (`<data dir>/context.json`, and the current one) so that
//! client commands reach it with no flags. Each broker serves `/metrics`, `/healthz` and
//! `/readyz` on a loopback port of its own, and logs to a file; both are printed.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::context::current_path;
use super::local::{LocalCluster, LocalSecurity, Ports, wait_for_leader};
use super::serve::termination;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the brokers keep their data and logs.
    #[arg(long, default_value = "chorus-data")]
    pub data_dir: PathBuf,
    /// How many brokers: 3 or 5. (Other commands' --brokers is a list of addresses.)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    pub size: u64,
    /// The first broker's client port; the others follow.
    #[arg(long, default_value_t = 7101)]
    pub client_port: u16,
    /// The first broker's peer port; the others follow.
    #[arg(long, default_value_t = 9101)]
    pub peer_port: u16,
    /// The first broker's metrics port (`/metrics`, `/healthz`, `/readyz`); the others follow.
    #[arg(long, default_value_t = 9201)]
    pub metrics_port: u16,
    /// No TLS and no users: every client may do anything, and the peer ports (on loopback)
    /// authenticate nobody.
    #[arg(long)]
    pub insecure: bool,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let security = if args.insecure { LocalSecurity::OPEN } else { LocalSecurity::SECURE };
    let ports = Ports { client: args.client_port, peer: args.peer_port, metrics: Some(args.metrics_port) };
    let mut cluster = LocalCluster::start(&args.data_dir, args.size, ports, security)?;
    println!("chorus: {} brokers, data in {}", args.size, args.data_dir.display());
    println!("  {:<8} {:<18} {:<18} {:<34} log", "broker", "clients", "peers", "metrics");
    for broker in &cluster.brokers {
        let metrics = broker.metrics_addr.as_ref().map_or("-".to_owned(), |addr| format!("http://{addr}/metrics"));
        println!(
            "  {:<8} {:<18} {:<18} {:<34} {}",
            broker.id,
            broker.client_addr,
            broker.peer_addr,
            metrics,
            cluster.log_path(broker.id).display()
        );
    }
    let resolved = cluster.resolved()?;
    let options = resolved.connect_options("chorus-up")?;
    let leader = wait_for_leader(&cluster.client_addrs(), &options, Duration::from_secs(30)).await?;
    println!("leader: broker {} (term {})", leader.broker_id, leader.term);
    let context = args.data_dir.join("context.json");
    match current_path() {
        Some(current) => {
            cluster.context().save(&current)?;
            println!("context: {} (also {}); client commands use it", current.display(), context.display());
        }
        None => println!("context: {}; pass it with --context", context.display()),
    }
    if let (Some(ca), Some(password)) = (&cluster.context().ca, &cluster.context().password_file) {
        println!("security: TLS under the CA {}; user admin, password in {}", ca.display(), password.display());
    }
    println!("try:    chorus status | chorus demo --brokers {}", cluster.client_addrs().join(","));
    println!("Ctrl-C stops the cluster.");
    let stop = termination();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for id in cluster.supervise() {
                    println!("broker {id} had stopped; restarted it");
                }
            }
        }
    }
    println!("stopping...");
    cluster.stop();
    println!("stopped; `chorus up` again resumes on the same data");
    Ok(())
}
