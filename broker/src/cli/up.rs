//! `chorus up`: a local cluster on fixed loopback ports, data under `./chorus-data`, supervised
//! until Ctrl-C. Running it again restarts the same cluster on the same data.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::local::{LocalCluster, wait_for_leader};
use super::serve::termination;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the brokers keep their data and logs.
    #[arg(long, default_value = "chorus-data")]
    pub data_dir: PathBuf,
    /// How many brokers: 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    pub brokers: u64,
    /// The first broker's client port; the others follow.
    #[arg(long, default_value_t = 7101)]
    pub client_port: u16,
    /// The first broker's peer port; the others follow.
    #[arg(long, default_value_t = 9101)]
    pub peer_port: u16,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start(&args.data_dir, args.brokers, args.client_port, args.peer_port)?;
    println!("chorus: {} brokers, data in {}", args.brokers, args.data_dir.display());
    println!("  {:<8} {:<18} {:<18}", "broker", "clients", "peers");
    for broker in &cluster.brokers {
        println!("  {:<8} {:<18} {:<18}", broker.id, broker.client_addr, broker.peer_addr);
    }
    let leader = wait_for_leader(&cluster.client_addrs(), "", Duration::from_secs(30)).await?;
    println!("leader: broker {} (term {})", leader.broker_id, leader.term);
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
