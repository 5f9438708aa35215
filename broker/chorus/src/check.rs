//! `chorus check`: marks a state check through the log, asks every broker for the digest of its
//! applied state at that index, and says which brokers agree. Exits non-zero when a broker
//! differs from the majority, took no digest, or did not answer.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chorus_broker::raft::state_check::hex;
use chorus_consumers::{ConnectOptions, Connection};
use chorus_protocol::pb;
use clap::Args;
use serde_json::json;

use super::commands::connect;
use super::local::first_view;
use crate::target::Target;

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub target: Target,
    /// How long each broker may take to apply the mark and finish its digest.
    #[arg(long, default_value_t = 30_000)]
    pub wait_ms: u32,
}

/// One broker's answer.
struct Row {
    id: u64,
    addr: String,
    digest: Option<String>,
    mismatches: Vec<pb::DigestMismatch>,
    compared: u64,
}

pub async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let resolved = args.target.resolve()?;
    let options = resolved.connect_options("chorus-cli")?;
    let client = connect(&args.target).await?;
    let mark = client.call(pb::MarkStateCheckRequest {}).await.context("marking a state check")?;
    let view = first_view(&resolved.brokers, &options).await?;
    let mut rows = Vec::new();
    for broker in &view.brokers {
        let answer = digest_of(&broker.client_addr, &options, mark.index, args.wait_ms).await;
        let compared = answer.as_ref().map_or(0, |answer| answer.compared);
        let (digest, mismatches) = match answer {
            Some(answer) if !answer.digest.is_empty() => (Some(hex(&answer.digest)), answer.mismatches),
            Some(answer) => (None, answer.mismatches),
            None => (None, Vec::new()),
        };
        rows.push(Row { id: broker.id, addr: broker.client_addr.clone(), digest, mismatches, compared });
    }
    let majority = majority(&rows);
    let healthy = rows.iter().all(|row| row.digest.is_some() && row.digest == majority);
    if args.target.json {
        let brokers: Vec<_> = rows
            .iter()
            .map(|row| {
                json!({
                    "id": row.id, "client_addr": row.addr, "digest": row.digest,
                    "agrees": row.digest.is_some() && row.digest == majority,
                    "compared": row.compared,
                    "earlier_mismatches": row.mismatches.iter().map(|m| json!({"index": m.index, "other_broker": m.other_broker})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", json!({"index": mark.index, "agree": healthy, "brokers": brokers}));
    } else {
        print(&rows, mark.index, majority.as_deref());
    }
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Broker `addr`'s digest at `index`, if it answered.
async fn digest_of(addr: &str, options: &ConnectOptions, index: u64, wait_ms: u32) -> Option<pb::StateDigest> {
    let connection = Connection::connect_with(addr, options).await.ok()?;
    let wait = Duration::from_millis(u64::from(wait_ms) + 5_000);
    connection.call(pb::StateDigestRequest { index, wait_ms }, wait).await.ok()
}

/// The digest most brokers hold, if more than half of them hold the same one.
fn majority(rows: &[Row]) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for digest in rows.iter().filter_map(|row| row.digest.as_deref()) {
        *counts.entry(digest).or_default() += 1;
    }
    counts.into_iter().find(|(_, count)| *count * 2 > rows.len()).map(|(digest, _)| digest.to_owned())
}

fn print(rows: &[Row], index: u64, majority: Option<&str>) {
    println!("state at log index {index}:");
    println!("{:<7} {:<22} {:<18} verdict", "broker", "clients", "digest");
    for row in rows {
        let verdict = match (&row.digest, majority) {
            (None, _) => "NO DIGEST (down, or restarted since the mark)",
            (Some(_), None) => "no majority agrees",
            (Some(digest), Some(majority)) if digest == majority => "agrees",
            (Some(_), Some(_)) => "DIFFERS from the majority",
        };
        let short = row.digest.as_deref().map_or("-", |d| &d[..16]);
        println!("{:<7} {:<22} {:<18} {verdict}", row.id, row.addr, short);
        for mismatch in &row.mismatches {
            println!("        earlier: differed from broker {} at index {}", mismatch.other_broker, mismatch.index);
        }
    }
}
