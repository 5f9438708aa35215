//! `chorus status`: every broker's own view of its role, term and indexes, and the leader's view
//! of each follower's lag.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use crate::local::{first_view, status_of};
use crate::target::Target;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let resolved = args.target.resolve()?;
    let options = resolved.connect_options("chorus-cli")?;
    let view = first_view(&resolved.brokers, &options).await?;
    // Ask every member for its own role and indexes; the leader knows each follower's lag.
    let mut rows = Vec::new();
    let mut lags = std::collections::BTreeMap::new();
    for broker in &view.brokers {
        let own = status_of(&broker.client_addr, &options).await;
        if let Some(own) = &own
            && own.role == "leader"
        {
            lags = own.brokers.iter().map(|b| (b.id, b.lag)).collect();
        }
        rows.push((broker.clone(), own));
    }
    if args.target.json {
        let brokers: Vec<_> = rows
            .iter()
            .map(|(b, own)| {
                json!({
                    "id": b.id, "client_addr": b.client_addr, "voter": b.voter,
                    "role": own.as_ref().map(|s| s.role.clone()), "term": own.as_ref().map(|s| s.term),
                    "leader_id": own.as_ref().and_then(|s| s.leader_id),
                    "commit_index": own.as_ref().map(|s| s.commit_index), "applied_index": own.as_ref().map(|s| s.applied_index),
                    "lag": lags.get(&b.id).copied().flatten(),
                    "repair_floor": own.as_ref().and_then(|s| s.repair_floor),
                })
            })
            .collect();
        println!("{}", json!({"leader_id": view.leader_id, "brokers": brokers}));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<7} {:<18} {:<10} {:>6} {:>7} {:>9} {:>9} {:>6}",
        "broker", "clients", "role", "term", "leader", "commit", "applied", "lag"
    );
    let mut repairing = Vec::new();
    for (broker, own) in rows {
        let lag = lags.get(&broker.id).copied().flatten().map_or("-".to_owned(), |l| l.to_string());
        match own {
            Some(s) => {
                println!(
                    "{:<7} {:<18} {:<10} {:>6} {:>7} {:>9} {:>9} {:>6}",
                    broker.id,
                    broker.client_addr,
                    s.role,
                    s.term,
                    s.leader_id.map_or("-".into(), |l| l.to_string()),
                    s.commit_index,
                    s.applied_index,
                    lag
                );
                repairing.extend(s.repair_floor.map(|floor| (broker.id, floor)));
            }
            None => println!("{:<7} {:<18} {:<10}", broker.id, broker.client_addr, "down"),
        }
    }
    for (id, floor) in repairing {
        println!("broker {id} is repairing a damaged log through index {floor}: it does not vote until then");
    }
    Ok(ExitCode::SUCCESS)
}
