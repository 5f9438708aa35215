//! What a broker does in the background, each as one task that ends when the broker stops:
//!
//! - [`pulse_loop`]: while leader, proposes a pulse whenever the machine's next deadline passed;
//! - [`bootstrap`]: initializes a new cluster, once, from the lowest-id initial member, and only
//!   when no peer already belongs to an initialized cluster;
//! - [`bootstrap_admin`]: while leader, proposes the configured first admin until users exist;
//! - [`watch_core`]: stops the broker when its Raft core stops;
//! - [`watch_repair`]: while the log is under repair, lets the broker vote again once it has
//!   applied the repair floor;
//! - [`state_check_loop`]: while leader, marks a state check now and then, carrying its digest at
//!   the previous mark for the others to compare;
//! - [`watch_membership`]: stops the broker once the membership has left it out for a while;
//! - [`watch_leadership`]: counts and logs, once each, every change of leader and of membership,
//!   and while leader, samples when the log reached which index (followers' lag in time).

use std::sync::Arc;
use std::time::Duration;

use chorus_machine::{Command, DigestClaim, Submission, query};
use chorus_protocol::pb;

use crate::broker::Broker;
use crate::raft::network::PeerClient;

/// The shortest gap between two pulses, so a backlog of deadlines cannot flood the log.
const PULSE_SPACING_MS: u64 = 20;
/// How long a bootstrap probe waits for a peer's hello.
const PROBE_TIMEOUT_MS: u64 = 300;
/// How long a broker that is no longer a member keeps serving before it stops.
const REMOVAL_GRACE_MS: u64 = 3_000;
/// How often a duty that waits for a change looks again anyway.
const RECHECK_MS: u64 = 500;

/// Starts every duty but [`bootstrap`], which only a broker with listeners runs.
pub fn start(broker: &Arc<Broker>) {
    tokio::spawn(pulse_loop(Arc::clone(broker)));
    tokio::spawn(watch_membership(Arc::clone(broker)));
    tokio::spawn(watch_core(Arc::clone(broker)));
    tokio::spawn(watch_leadership(Arc::clone(broker)));
    if broker.config.raft.state_check_interval_ms > 0 {
        tokio::spawn(state_check_loop(Arc::clone(broker)));
    }
    if broker.repair.floor().is_some() {
        tokio::spawn(watch_repair(Arc::clone(broker)));
    }
    if broker.config.security.bootstrap_admin.is_some() {
        tokio::spawn(bootstrap_admin(Arc::clone(broker)));
    }
}

/// Proposes a pulse whenever the machine's next deadline has passed, while leader.
async fn pulse_loop(broker: Arc<Broker>) {
    let mut applied = broker.applied();
    let mut metrics = broker.raft.metrics();
    let shutdown = broker.shutdown_token();
    loop {
        let deadline = applied.borrow_and_update().next_deadline_ms;
        let leader = broker.is_leader();
        let now_ms = broker.now_ms();
        if leader && deadline.is_some_and(|d| d <= now_ms) {
            if let Err(error) = broker.propose(Submission::broker(Command::Pulse)).await {
                tracing::debug!(%error, "pulse not applied");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(PULSE_SPACING_MS)) => {}
            }
            continue;
        }
        let wait_ms = match deadline {
            Some(d) if leader => d.saturating_sub(now_ms).clamp(1, 1_000),
            _ => 1_000,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            // A closed channel means raft stopped: so does this loop (and it must not spin).
            changed = applied.changed() => if changed.is_err() { return },
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
        }
    }
}

/// Counts every new leader this broker learns of (another broker, or a new term) and logs it at
/// `info`, once, as it does a moment with no leader known and every membership change.
async fn watch_leadership(broker: Arc<Broker>) {
    let mut metrics = broker.raft.metrics();
    let (mut leader, mut membership) = {
        let now = metrics.borrow_and_update();
        (now.current_leader.map(|id| (id, now.current_term)), now.membership_config.log_id().map(|id| id.index))
    };
    let mut leaderless = leader.is_none();
    let shutdown = broker.shutdown_token();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
        let (known, term, membership_now) = {
            // Under the borrow, no clone: this runs at every turn of the Raft core's loop.
            let now = metrics.borrow_and_update();
            match &now.replication {
                Some(followers) => {
                    let acknowledged = followers.values().map(|m| m.map_or(0, |id| id.index)).min().unwrap_or(0);
                    broker.append_times().record(now.last_log_index.unwrap_or(0), acknowledged);
                }
                None => broker.append_times().clear(),
            }
            let log_index = now.membership_config.log_id().map(|id| id.index);
            let membership_now = (log_index != membership).then(|| {
                let config = now.membership_config.membership();
                (log_index, config.voter_ids().collect::<Vec<_>>(), config.learner_ids().collect::<Vec<_>>())
            });
            (now.current_leader.map(|id| (id, now.current_term)), now.current_term, membership_now)
        };
        match known {
            Some(known) if Some(known) != leader => {
                // The first leader a broker learns of after it starts is no change.
                if leader.is_some() {
                    broker.leader_changed();
                }
                tracing::info!(term = known.1, from = ?leader.map(|(id, _)| id), to = known.0, "a new leader");
                (leader, leaderless) = (Some(known), false);
            }
            Some(_) => leaderless = false,
            None if !leaderless => {
                tracing::info!(term, last = ?leader.map(|(id, _)| id), "no leader known");
                leaderless = true;
            }
            None => {}
        }
        if let Some((log_index, voters, learners)) = membership_now {
            tracing::info!(?voters, ?learners, log_index = ?log_index, "the membership changed");
            membership = log_index;
        }
    }
}

/// Initializes the cluster once: only the lowest-id initial member, only while its own log is
/// empty, and only when no other member answers that it is already initialized.
pub async fn bootstrap(broker: Arc<Broker>) {
    let lowest = broker.config.members.keys().next().copied();
    if lowest != Some(broker.id()) {
        return;
    }
    let shutdown = broker.shutdown_token();
    loop {
        match broker.raft.is_initialized().await {
            Ok(false) => {}
            _ => return,
        }
        if !peers_initialized(&broker).await {
            match broker.raft.initialize(broker.config.members.clone()).await {
                Ok(()) => {
                    tracing::info!(members = ?broker.config.members.keys().collect::<Vec<_>>(), "bootstrapped the cluster")
                }
                Err(error) => tracing::info!(%error, "not bootstrapping"),
            }
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(RECHECK_MS)) => {}
        }
    }
}

/// Whether any other initial member says it belongs to an initialized cluster.
async fn peers_initialized(broker: &Broker) -> bool {
    let hello = pb::PeerHello {
        protocol_version: chorus_protocol::limits::PROTOCOL_VERSION,
        from_id: broker.id(),
        initialized: false,
    };
    let network = broker.config.network();
    for (id, node) in broker.config.members.iter().filter(|(id, _)| **id != broker.id()) {
        let mut client = PeerClient::new(&network, *id, node.peer_addr.clone());
        let answer = client.call(hello, Duration::from_millis(PROBE_TIMEOUT_MS)).await;
        if answer.is_ok_and(|answer| answer.initialized) {
            return true;
        }
    }
    false
}

/// Proposes the configured first admin while leader, until the cluster has a user.
async fn bootstrap_admin(broker: Arc<Broker>) {
    let Some(admin) = broker.config.security.bootstrap_admin.clone() else { return };
    let mut applied = broker.applied();
    let mut metrics = broker.raft.metrics();
    let shutdown = broker.shutdown_token();
    loop {
        let has_users = broker.read().ok().map(|store| query::has_users(&store));
        match has_users {
            Some(Ok(true)) => return,
            _ if broker.is_leader() => {
                let command =
                    Command::BootstrapAdmin { name: admin.name.clone(), password_hash: admin.password_hash.clone() };
                match broker.propose(Submission::broker(command)).await {
                    Ok(Ok(_)) => tracing::info!(user = %admin.name, "the cluster has its first admin"),
                    Ok(Err(refused)) => tracing::error!(%refused, "the first admin was refused"),
                    Err(error) => tracing::debug!(%error, "first admin not proposed yet"),
                }
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = applied.changed() => if changed.is_err() { return },
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(RECHECK_MS)) => {}
        }
    }
}

/// Stops the broker when its Raft core stops (a storage failure, an entry that does not
/// apply): a broker without a core must not answer as if it had one.
async fn watch_core(broker: Arc<Broker>) {
    let mut metrics = broker.raft.metrics();
    let shutdown = broker.shutdown_token();
    loop {
        // A core stopped by `stop` is no failure.
        if shutdown.is_cancelled() {
            return;
        }
        let failure = match &metrics.borrow_and_update().running_state {
            Ok(()) => None,
            Err(fatal) => Some(fatal.to_string()),
        };
        if let Some(failure) = failure {
            tracing::error!(id = broker.id(), %failure, "the raft core stopped; this broker stops serving");
            broker.core_stopped(failure);
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() {
                // The core is gone without a word: still no core to serve from.
                if !shutdown.is_cancelled() {
                    broker.core_stopped("the raft core ended".into());
                }
                return;
            },
        }
    }
}

/// Every `state_check_interval_ms`, while leader, proposes a state check mark carrying this
/// broker's digest at the latest mark it has one of: every broker compares that digest with its
/// own, and takes a new one at the new mark.
async fn state_check_loop(broker: Arc<Broker>) {
    let shutdown = broker.shutdown_token();
    let every = Duration::from_millis(broker.config.raft.state_check_interval_ms);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if !broker.is_leader() {
            continue;
        }
        let latest = broker.state_checks().subscribe().borrow().latest();
        let claim = latest.map(|(index, digest)| DigestClaim { index, broker: broker.id(), digest: digest.to_vec() });
        let mark = Submission::broker(Command::MarkStateCheck { claim });
        if let Err(error) = broker.propose(mark).await {
            tracing::debug!(%error, "state check not marked");
        }
    }
}

/// Waits until the state machine has applied the repair floor, records that the repair is
/// finished, and lets the broker vote and stand for election again.
async fn watch_repair(broker: Arc<Broker>) {
    let mut metrics = broker.raft.metrics();
    let shutdown = broker.shutdown_token();
    loop {
        let applied = metrics.borrow_and_update().last_applied.map(|id| id.index);
        if broker.repair.repaired_by(applied) {
            let floor = broker.repair.floor();
            if let Err(error) = broker.repair.finish() {
                // Not voting is safe; the next start finds the floor again and carries on.
                tracing::error!(%error, "the repair is done but cannot be recorded; this broker still does not vote");
                return;
            }
            tracing::info!(id = broker.id(), floor, "the log is repaired; this broker votes again");
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

/// Stops the broker once the newest membership leaves it out for longer than a grace period.
async fn watch_membership(broker: Arc<Broker>) {
    let mut metrics = broker.raft.metrics();
    let shutdown = broker.shutdown_token();
    let mut removed_since: Option<tokio::time::Instant> = None;
    loop {
        let removed = {
            let metrics = metrics.borrow_and_update();
            let membership = metrics.membership_config.membership();
            let newest_voters = membership.get_joint_config().last();
            metrics.membership_config.log_id().is_some()
                && !newest_voters.is_some_and(|voters| voters.contains(&broker.id()))
                && !membership.learner_ids().any(|id| id == broker.id())
        };
        match (removed, removed_since) {
            (false, _) => removed_since = None,
            (true, None) => removed_since = Some(tokio::time::Instant::now()),
            (true, Some(since)) if since.elapsed() >= Duration::from_millis(REMOVAL_GRACE_MS) => {
                tracing::warn!(id = broker.id(), "removed from the cluster; stopping");
                shutdown.cancel();
                return;
            }
            (true, Some(_)) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(RECHECK_MS)) => {}
        }
    }
}
