//! `chorus status`: every broker's own view of its role, term, indexes, leader changes in the last
//! 10 minutes, uptime and readiness, and the leader's view of each follower's lag. It exits 1 when
//! a broker is down, there is no leader, or a broker is not ready (cut off from the leader, say);
//! a broker that saw [`FLAPPING_CHANGES_10M`] leader changes or more is flagged FLAPPING.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use chorus_protocol::pb;

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
    let verdict = Verdict::of(&rows);
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
                    "leader_changes_10m": own.as_ref().map(|s| s.leader_changes_10m),
                    "flapping": own.as_ref().is_some_and(flapping),
                    "uptime_ms": own.as_ref().map(|s| s.uptime_ms),
                    "not_ready": own.as_ref().and_then(|s| s.not_ready.clone()),
                })
            })
            .collect();
        println!("{}", json!({"leader_id": view.leader_id, "brokers": brokers, "problems": verdict.problems}));
        return Ok(verdict.exit_code());
    }
    println!(
        "{:<7} {:<18} {:<10} {:>6} {:>7} {:>9} {:>9} {:>6} {:>8} {:>9}  state",
        "broker", "clients", "role", "term", "leader", "commit", "applied", "lag", "changes", "uptime"
    );
    let mut repairing = Vec::new();
    for (broker, own) in &rows {
        let lag = lags.get(&broker.id).copied().flatten().map_or("-".to_owned(), |l| l.to_string());
        match own {
            Some(s) => {
                let state = match (&s.not_ready, flapping(s)) {
                    (Some(_), _) => "NOT READY",
                    (None, true) => "FLAPPING",
                    (None, false) => "ok",
                };
                println!(
                    "{:<7} {:<18} {:<10} {:>6} {:>7} {:>9} {:>9} {:>6} {:>8} {:>9}  {}",
                    broker.id,
                    broker.client_addr,
                    s.role,
                    s.term,
                    s.leader_id.map_or("-".into(), |l| l.to_string()),
                    s.commit_index,
                    s.applied_index,
                    lag,
                    s.leader_changes_10m,
                    uptime(s.uptime_ms),
                    state
                );
                repairing.extend(s.repair_floor.map(|floor| (broker.id, floor)));
            }
            None => println!("{:<7} {:<18} {:<10}", broker.id, broker.client_addr, "down"),
        }
    }
    for (id, floor) in repairing {
        println!("broker {id} is repairing a damaged log through index {floor}: it does not vote until then");
    }
    for (broker, own) in &rows {
        if let Some(s) = own.as_ref().filter(|s| flapping(s)) {
            println!(
                "broker {} saw {} leader changes in the last 10 minutes (FLAPPING from {FLAPPING_CHANGES_10M})",
                broker.id, s.leader_changes_10m
            );
        }
    }
    for problem in &verdict.problems {
        println!("problem: {problem}");
    }
    Ok(verdict.exit_code())
}

/// Leader changes one broker saw in 10 minutes from which `status` flags it FLAPPING: a planned
/// restart of the leader costs one, a crash and its restart one or two.
pub const FLAPPING_CHANGES_10M: u64 = 3;

fn flapping(status: &pb::ClusterStatus) -> bool {
    status.leader_changes_10m >= FLAPPING_CHANGES_10M
}

/// `3d4h`, `2h5m`, `4m12s`, `9s`.
fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{}s", s % 60),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// What is wrong with the cluster, from every broker's own status: a broker down, no leader, or
/// a broker that is not ready (cut off from the leader, or the leader from a quorum, or far
/// behind). Any of them makes `status` exit 1.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn of(rows: &[(pb::BrokerInfo, Option<pb::ClusterStatus>)]) -> Verdict {
        let mut problems = Vec::new();
        for (broker, own) in rows {
            match own {
                None => problems.push(format!("broker {} does not answer at {}", broker.id, broker.client_addr)),
                Some(s) => {
                    problems.extend(s.not_ready.as_ref().map(|why| format!("broker {} is not ready: {why}", broker.id)))
                }
            }
        }
        let leading =
            rows.iter().filter_map(|(_, own)| own.as_ref()).any(|s| s.role == "leader" && s.not_ready.is_none());
        if !leading {
            problems.push("no leader: no broker leads with a quorum behind it, so the cluster takes no writes".into());
        }
        Verdict { problems }
    }

    pub fn exit_code(&self) -> ExitCode {
        if self.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(id: u64) -> pb::BrokerInfo {
        pb::BrokerInfo { id, client_addr: format!("127.0.0.1:{}", 7100 + id), voter: true, ..Default::default() }
    }

    fn own(id: u64, role: &str, not_ready: Option<&str>) -> Option<pb::ClusterStatus> {
        Some(pb::ClusterStatus {
            broker_id: id,
            role: role.into(),
            leader_id: Some(1),
            not_ready: not_ready.map(str::to_owned),
            ..Default::default()
        })
    }

    #[test]
    fn a_healthy_cluster_has_no_problem() {
        let rows = [(broker(1), own(1, "leader", None)), (broker(2), own(2, "follower", None))];
        assert_eq!(Verdict::of(&rows), Verdict::default());
    }

    #[test]
    fn a_broker_down_no_leader_and_a_cut_off_broker_are_each_a_problem() {
        let down = [(broker(1), own(1, "leader", None)), (broker(2), None)];
        assert_eq!(Verdict::of(&down).problems, ["broker 2 does not answer at 127.0.0.1:7102"]);
        let leaderless = [
            (broker(1), own(1, "follower", Some("no leader known"))),
            (broker(2), own(2, "candidate", Some("no leader known"))),
        ];
        assert_eq!(Verdict::of(&leaderless).problems.len(), 3, "{:?}", Verdict::of(&leaderless));
        assert!(Verdict::of(&leaderless).problems[2].starts_with("no leader"));
        // An old leader cut off from the rest still says it leads, but no quorum backs it.
        let stale = [
            (broker(1), own(1, "leader", Some("no word that leader 1 is alive for 3000 ms"))),
            (broker(2), own(2, "leader", None)),
        ];
        assert_eq!(Verdict::of(&stale).problems, ["broker 1 is not ready: no word that leader 1 is alive for 3000 ms"]);
    }

    #[test]
    fn uptime_reads_in_its_two_largest_units() {
        assert_eq!(uptime(9_400), "9s");
        assert_eq!(uptime(252_000), "4m12s");
        assert_eq!(uptime(7_500_000), "2h5m");
        assert_eq!(uptime(273_600_000), "3d4h");
    }
}
