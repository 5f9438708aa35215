//! Deterministic simulation: 3 or 5 real brokers (openraft, the redb stores, the proposer, the
//! state machine) run in one thread on tokio's paused clock, over a simulated network
//! ([`net`]) and in-memory disks that lose unsynced writes on a crash ([`disk`]). Producers,
//! workers and subscribers record a history while a seeded nemesis crashes and restarts
//! brokers, partitions the network (majority/minority, one-way, bridge) and changes its delays
//! and drops. Then everything heals, drains and is judged by [`crate::history::check`].
//!
//! One seed fixes everything: the nemesis, the network, openraft's election timeouts
//! (`seed_thread_rng`), tokio's `select!` choices (`rng_seed`, which needs `--cfg
//! tokio_unstable`, set in `.cargo/config.toml`) and the clocks. The same seed replays the same
//! history, which [`Report::digest`] fingerprints.

pub mod disk_faults;
pub mod net;
mod workload;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use chorus_broker::Broker;
use chorus_broker::clock::Clock;
use chorus_broker::config::{BrokerConfig, Limits, RaftTiming};
use chorus_broker::raft::log_store::{LogStore, Writer};
use chorus_broker::raft::state_store::{StateOpenError, StateStore};
use chorus_broker::raft::{BrokerNode, NodeId};
use chorus_machine::{Command, Submission};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::history::History;
use crate::history::{Expectations, Verdict, check};
use chorus_broker::raft::crash_disk::Disks;
use disk_faults::StorageReport;
use net::{Net, SimNetwork, Weather};

/// Page cache per redb database in the simulation.
const CACHE_BYTES: usize = 1 << 20;
/// How long, in simulated time, the cluster has to drain after healing.
const DRAIN_MS_MAX: u64 = 120_000;

/// What one simulated run does.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub brokers: u64,
    /// Simulated time under faults.
    pub fault_ms: u64,
    pub producers: u32,
    pub workers: u32,
    pub subscribers: u32,
    /// Damage the disks of a minority of brokers too ([`disk_faults`]).
    pub storage_faults: bool,
}

impl SimConfig {
    /// The run a seed gets by default: odd seeds run 5 brokers, even seeds 3.
    pub fn for_seed(seed: u64) -> SimConfig {
        SimConfig {
            brokers: if seed % 2 == 1 { 5 } else { 3 },
            fault_ms: 20_000,
            producers: 3,
            workers: 2,
            subscribers: 2,
            storage_faults: false,
        }
    }

    /// [`SimConfig::for_seed`] with storage faults on a minority of brokers.
    pub fn with_storage_faults(seed: u64) -> SimConfig {
        SimConfig { storage_faults: true, ..SimConfig::for_seed(seed) }
    }
}

/// What a run did and the checker's verdict on it.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub brokers: u64,
    pub faults: Vec<String>,
    pub operations: usize,
    pub drained: bool,
    pub verdict: Verdict,
    /// A fingerprint of the history and the faults: equal for equal runs.
    pub digest: u64,
    /// Panics in broker tasks. Must be 0.
    pub panics: u64,
    /// State checks: digests compared between brokers during the run, and at the end.
    pub states: StateCheckReport,
    /// What storage faults did, when the run had them.
    pub storage: Option<StorageReport>,
}

/// What the brokers' state checks found over a run.
#[derive(Debug, Clone, Default)]
pub struct StateCheckReport {
    /// Other brokers' digests a broker compared with its own during the run.
    pub compared: u64,
    /// Differences: (broker, index, other broker). Must be none.
    pub mismatches: Vec<(NodeId, u64, u64)>,
    /// At a mark after draining, every running broker's digest, equal or not.
    pub final_agree: bool,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.drained
            && self.panics == 0
            && self.verdict.is_valid()
            && self.states.mismatches.is_empty()
            && self.states.final_agree
    }

    /// One row of the summary table.
    pub fn row(&self) -> String {
        format!(
            "seed {:>5} | {} brokers | {:>2} faults | {:>5} ops | drained {} | panics {} | states {} compared, {} differ, final {} | {}",
            self.seed,
            self.brokers,
            self.faults.len(),
            self.operations,
            self.drained,
            self.panics,
            self.states.compared,
            self.states.mismatches.len(),
            if self.states.final_agree { "agree" } else { "DIFFER" },
            self.verdict.summary()
        ) + &self.storage.as_ref().map(|storage| format!(" | {}", storage.summary())).unwrap_or_default()
    }
}

thread_local! {
    /// Panics on this thread: a broker task that panics (openraft's own invariant checks
    /// included) is caught by tokio, so the run counts them here.
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // redb panics on some damaged pages (in debug builds on all of them); the state store
            // catches those and rebuilds. Any other panic is a failure.
            let in_redb = info.location().is_some_and(|at| at.file().contains("/redb-"));
            if !in_redb {
                PANICS.with(|panics| panics.set(panics.get() + 1));
            }
            report(info);
        }));
    });
    PANICS.with(|panics| panics.set(0));
}

/// Runs one seed to its verdict, on a fresh single-threaded runtime with a paused clock.
pub fn run(seed: u64, config: &SimConfig) -> Report {
    count_panics();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
        .build()
        .expect("a runtime");
    chorus_broker::raft::runtime::seed_thread_rng(seed);
    // The world is made inside the runtime: outside it, `tokio::time::Instant::now()` reads the
    // real clock, and the origin would sit a load-dependent fraction of a millisecond past the
    // paused clock's.
    let mut report = runtime.block_on(async { World::new(seed, config.clone()).run().await });
    drop(runtime);
    report.panics = PANICS.with(Cell::get);
    report
}

/// A broker's configuration on simulated disks: its addresses from `members`, small page caches,
/// default raft timing and the system clock.
pub fn broker_config(id: NodeId, members: &BTreeMap<NodeId, BrokerNode>, data_dir: &Path) -> BrokerConfig {
    BrokerConfig {
        id,
        data_dir: data_dir.to_path_buf(),
        client_addr: members[&id].client_addr.clone(),
        peer_addr: members[&id].peer_addr.clone(),
        metrics_addr: None,
        members: members.clone(),
        security: Default::default(),
        limits: Limits { log_cache_bytes: CACHE_BYTES, state_cache_bytes: CACHE_BYTES, ..Limits::default() },
        raft: RaftTiming::default(),
        clock: Clock::System,
    }
}

/// Opens a broker's log and state on its simulated disks (snapshot files under `data_dir`). A
/// damaged state is set aside (its disk wiped) and rebuilt, as `StateStore::open` does with files.
pub fn open_stores(disks: &Disks, data_dir: &Path) -> (LogStore, StateStore) {
    try_open_stores(disks, data_dir).expect("open the stores")
}

/// [`open_stores`], or why a store did not open.
pub fn try_open_stores(disks: &Disks, data_dir: &Path) -> Result<(LogStore, StateStore), String> {
    let log = LogStore::open_on(disks.log.open(), disks.segments.open(), CACHE_BYTES, Writer::Inline)
        .map_err(|e| format!("the log: {e}"))?;
    let snapshots = data_dir.join("snapshots");
    let state =
        match StateStore::open_on(disks.state.open(), disks.state_segments.open(), snapshots.clone(), CACHE_BYTES) {
            Ok(state) => state,
            Err(StateOpenError::Damaged(_)) => {
                disks.state.wipe();
                disks.state_segments.wipe();
                StateStore::rebuild_on(disks.state.open(), disks.state_segments.open(), snapshots, CACHE_BYTES)
                    .map_err(|e| format!("the state: {e}"))?
            }
            Err(StateOpenError::Failed(error)) => return Err(format!("the state: {error}")),
        };
    Ok((log, state))
}

/// Starts a broker on simulated disks, its peers reached through `net`; attaching it to `net`
/// (so others reach it) is the caller's choice.
pub async fn start_broker(config: BrokerConfig, disks: &Disks, net: &Arc<Net>) -> Arc<Broker> {
    let (log, state) = open_stores(disks, &config.data_dir);
    let network = SimNetwork { from: config.id, net: Arc::clone(net) };
    Broker::start_in_process(config, log, state, network).await.expect("start a broker")
}

/// One broker's disks, kept across its crashes.
struct Node {
    disks: Disks,
    /// Snapshot files; the simulation does not snapshot, but the store wants a directory.
    dir: tempfile::TempDir,
    /// This broker's clock offset from true time, so leaders disagree about the time.
    skew_ms: u64,
}

/// The workload's tasks and the flags that stop them.
struct Clients {
    stop_producing: Arc<AtomicBool>,
    stop_working: Arc<AtomicBool>,
    /// Set once the group drained: subscribers read up to it, then end.
    last_seq: Arc<std::sync::Mutex<Option<u64>>>,
    producers: Vec<tokio::task::JoinHandle<()>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    subscribers: Vec<tokio::task::JoinHandle<()>>,
}

struct World {
    seed: u64,
    config: SimConfig,
    rng: StdRng,
    net: Arc<Net>,
    nodes: BTreeMap<NodeId, Node>,
    members: BTreeMap<NodeId, BrokerNode>,
    /// When the run began, on the true clock.
    origin: tokio::time::Instant,
    /// State checks of the brokers stopped so far, and of the rest at the end.
    states: StateCheckReport,
    /// Brokers whose disks take damage: a minority, when the run has storage faults.
    faulty: BTreeSet<NodeId>,
    storage: StorageReport,
    /// Per broker: damage found at its last start whose repair is not yet seen done.
    repairing: BTreeMap<NodeId, Repairing>,
}

/// Damage a broker found at its start, until its repair is seen done.
#[derive(Debug, Clone, Copy, Default)]
struct Repairing {
    /// The log was cut and a repair floor set.
    floor: bool,
    /// The state was set aside and started empty.
    rebuilt: bool,
}

impl World {
    /// Must run inside the simulation's runtime, so the origin is on its paused clock.
    fn new(seed: u64, config: SimConfig) -> World {
        assert!(tokio::runtime::Handle::try_current().is_ok(), "World::new outside the paused runtime");
        let mut rng = StdRng::seed_from_u64(seed);
        let ids = 1..=config.brokers;
        let members = ids
            .clone()
            .map(|id| (id, BrokerNode { peer_addr: format!("sim-{id}:peer"), client_addr: format!("sim-{id}:client") }))
            .collect();
        let nodes = ids
            .map(|id| {
                let node = Node {
                    disks: Disks::default(),
                    dir: tempfile::tempdir().expect("a temp dir"),
                    skew_ms: rng.random_range(0..300),
                };
                (id, node)
            })
            .collect();
        let faulty = if config.storage_faults {
            let mut ids: Vec<NodeId> = (1..=config.brokers).collect();
            shuffle(&mut rng, &mut ids);
            let minority = (config.brokers as usize - 1) / 2;
            ids.into_iter().take(rng.random_range(1..=minority)).collect()
        } else {
            BTreeSet::new()
        };
        World {
            seed,
            config,
            rng,
            faulty,
            storage: StorageReport::default(),
            repairing: BTreeMap::new(),
            net: Net::new(seed),
            nodes,
            members,
            origin: tokio::time::Instant::now(),
            states: StateCheckReport::default(),
        }
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn elapsed_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Starts broker `id`, unless its damaged files stop it (counted, and it stays down).
    async fn start(&mut self, id: NodeId) {
        let node = &self.nodes[&id];
        let config = BrokerConfig {
            // Never snapshot: a crash then always recovers by replaying the log, and no
            // snapshot file IO (off this thread) can reorder events.
            raft: RaftTiming {
                snapshot_after_entries: u64::MAX / 2,
                // Often, so every run compares the brokers' states several times.
                state_check_interval_ms: 2_000,
                ..RaftTiming::default()
            },
            clock: Clock::Tokio { origin: self.origin, origin_ms: 1_700_000_000_000 + node.skew_ms },
            ..broker_config(id, &self.members, node.dir.path())
        };
        let (log, state) = match try_open_stores(&node.disks, node.dir.path()) {
            Ok(stores) => stores,
            Err(error) => {
                assert!(self.faulty.contains(&id), "broker {id}'s stores did not open: {error}");
                self.storage.refused(id, error);
                return;
            }
        };
        let found = Repairing { floor: log.repair().floor().is_some(), rebuilt: state.rebuilt() };
        let network = SimNetwork { from: id, net: Arc::clone(&self.net) };
        match Broker::start_in_process(config, log, state, network).await {
            Ok(broker) => self.net.attach(broker),
            Err(error) => {
                assert!(self.faulty.contains(&id), "broker {id} did not start: {error}");
                self.storage.refused(id, error.to_string());
                return;
            }
        }
        let known = self.repairing.entry(id).or_default();
        self.storage.detected += u64::from(found.floor && !known.floor) + u64::from(found.rebuilt);
        known.floor |= found.floor;
        known.rebuilt |= found.rebuilt;
    }

    /// Starts every broker that is down, after crashing those that stopped themselves.
    async fn restart_all(&mut self) {
        self.reap_stopped().await;
        for id in self.down_ids() {
            self.start(id).await;
        }
    }

    /// Crashes the brokers that stopped themselves (their Raft core stopped, or they found their
    /// state damaged), so that they start again; returns them.
    async fn reap_stopped(&mut self) -> Vec<NodeId> {
        let stopped: Vec<(NodeId, String)> = self
            .net
            .up_ids()
            .into_iter()
            .filter_map(|id| self.net.broker(id).and_then(|b| b.core_failure().map(|why| (id, why.to_owned()))))
            .collect();
        for (id, why) in &stopped {
            assert!(self.faulty.contains(id), "broker {id} stopped without a disk fault: {why}");
            self.storage.detected += u64::from(why.contains("damaged"));
            self.crash(*id).await;
        }
        stopped.into_iter().map(|(id, _)| id).collect()
    }

    /// Power loss: off the network, unsynced writes gone, raft stopped.
    async fn crash(&mut self, id: NodeId) {
        if let Some(broker) = self.net.detach(id) {
            self.harvest_state_checks(&broker);
            self.harvest_repairs(&broker);
            if self.faulty.contains(&id) && self.rng.random_bool(0.3) {
                disk_faults::crash_torn(&mut self.rng, &self.nodes[&id].disks, &mut self.storage);
            } else {
                self.nodes[&id].disks.crash();
            }
            broker.stop().await;
        }
    }

    /// Counts the repairs `broker` finished since its start.
    fn harvest_repairs(&mut self, broker: &Broker) {
        let Some(known) = self.repairing.get_mut(&broker.id()) else { return };
        if known.floor && broker.repair_floor().is_none() {
            self.storage.repairs += 1;
            known.floor = false;
        }
        if known.rebuilt && broker.applied().borrow().log_index > 0 {
            self.storage.repairs += 1;
            known.rebuilt = false;
        }
    }

    /// Adds what `broker`'s state checks found to the run's, before it stops and forgets them.
    fn harvest_state_checks(&mut self, broker: &Broker) {
        let checks = broker.state_checks().subscribe().borrow().clone();
        self.states.compared += checks.compared();
        let id = broker.id();
        self.states.mismatches.extend(checks.mismatches().iter().map(|(index, other)| (id, *index, *other)));
    }

    /// Marks a state check through the leader and waits for every running broker's digest at the
    /// mark: whether they are all equal.
    async fn final_state_check(&self) -> bool {
        let mut marked = None;
        for _ in 0..20 {
            if let Some(leader) = self.leader().and_then(|id| self.net.broker(id)) {
                let mark = Submission::broker(Command::MarkStateCheck { claim: None });
                if let Ok(Ok(output)) = leader.propose(mark).await {
                    marked = output.state_marked().ok();
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let Some(index) = marked else { return false };
        let digests = self
            .poll_leader(100, |_| {
                let digests: Vec<Option<[u8; 32]>> = self
                    .net
                    .up_ids()
                    .into_iter()
                    .filter_map(|id| self.net.broker(id))
                    .map(|broker| broker.state_checks().subscribe().borrow().digest_at(index).flatten())
                    .collect();
                digests.iter().all(Option::is_some).then_some(digests)
            })
            .await;
        digests.is_some_and(|digests| digests.windows(2).all(|pair| pair[0] == pair[1]))
    }

    fn down_ids(&self) -> Vec<NodeId> {
        let up = self.net.up_ids();
        self.ids().into_iter().filter(|id| !up.contains(id)).collect()
    }

    fn leader(&self) -> Option<NodeId> {
        self.net.up_ids().into_iter().find(|id| self.net.broker(*id).is_some_and(|b| b.is_leader()))
    }

    async fn run(mut self) -> Report {
        for id in self.ids() {
            self.start(id).await;
        }
        let first = self.net.broker(1).expect("broker 1 runs");
        first.raft.initialize(self.members.clone()).await.expect("initialize");
        workload::setup(&self.net, &self.ids()).await;
        let history: History = Arc::default();
        let clients = self.spawn_clients(&history);

        let mut faults = Vec::new();
        while self.elapsed_ms() < self.config.fault_ms {
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(200..1_500))).await;
            for id in self.reap_stopped().await {
                faults.push(format!("{:>6} ms: {id} stopped itself", self.elapsed_ms()));
            }
            let fault = self.inject().await;
            faults.push(format!("{:>6} ms: {fault}", self.elapsed_ms()));
        }
        let (drained, caught_up) = self.heal_and_drain(clients).await;
        self.restart_all().await;
        self.states.final_agree = self.final_state_check().await;

        let history = history.lock().unwrap().clone();
        let expect = Expectations { caught_up_subscribers: caught_up, group_drained: drained };
        let verdict = check(&history, &expect);
        let mut hasher = std::hash::DefaultHasher::new();
        format!("{history:?}{faults:?}").hash(&mut hasher);
        for id in self.ids() {
            self.crash(id).await;
        }
        Report {
            seed: self.seed,
            brokers: self.config.brokers,
            faults,
            operations: history.len(),
            drained,
            verdict,
            digest: hasher.finish(),
            panics: 0,
            states: self.states,
            storage: self.config.storage_faults.then_some(self.storage),
        }
    }

    fn spawn_clients(&self, history: &History) -> Clients {
        let ids = self.ids();
        let mut clients = Clients {
            stop_producing: Arc::default(),
            stop_working: Arc::default(),
            last_seq: Arc::default(),
            producers: Vec::new(),
            workers: Vec::new(),
            subscribers: Vec::new(),
        };
        let client = |process| workload::SimClient::new(&self.net, &ids, self.seed, process);
        for process in 0..self.config.producers {
            let task = workload::producer(client(process), Arc::clone(history), Arc::clone(&clients.stop_producing));
            clients.producers.push(tokio::spawn(task));
        }
        for process in 10..10 + self.config.workers {
            let task = workload::worker(client(process), Arc::clone(history), Arc::clone(&clients.stop_working));
            clients.workers.push(tokio::spawn(task));
        }
        for id in 0..self.config.subscribers {
            let task = workload::subscriber(client(100 + id), id, Arc::clone(history), Arc::clone(&clients.last_seq));
            clients.subscribers.push(tokio::spawn(task));
        }
        clients
    }

    /// Heals everything, stops the producers, waits for the group to drain and then for the
    /// subscribers to reach the last sequence. Returns whether all of it happened in time, and
    /// which subscribers caught up.
    async fn heal_and_drain(&mut self, clients: Clients) -> (bool, BTreeSet<u32>) {
        self.net.heal();
        self.net.set_weather(Weather::CALM);
        self.restart_all().await;
        clients.stop_producing.store(true, Ordering::Relaxed);
        for producer in clients.producers {
            producer.await.expect("a producer");
        }
        // Empty twice in a row, on the leader's applied state.
        let mut empty_readings = 0;
        let drained = self
            .poll_leader(500, |leader| {
                let empty = leader.is_some_and(workload::group_is_empty);
                empty_readings = if empty { empty_readings + 1 } else { 0 };
                (empty_readings == 2).then_some(())
            })
            .await
            .is_some();
        clients.stop_working.store(true, Ordering::Relaxed);
        for worker in clients.workers {
            worker.await.expect("a worker");
        }
        let last = self.poll_leader(100, |leader| leader.and_then(workload::last_seq)).await;
        // Without a leader to ask, the subscribers stop at once and the run fails as undrained.
        *clients.last_seq.lock().unwrap() = Some(last.unwrap_or(0));
        let mut caught_up = BTreeSet::new();
        for (id, subscriber) in (0..).zip(clients.subscribers) {
            let done = tokio::time::timeout(Duration::from_millis(DRAIN_MS_MAX), subscriber).await;
            if matches!(done, Ok(Ok(()))) {
                caught_up.insert(id);
            }
        }
        let everyone = caught_up.len() == self.config.subscribers as usize;
        (drained && last.is_some() && everyone, caught_up)
    }

    /// Asks `ask` about the current leader (`None` while there is none) every `every_ms`, until
    /// it answers, for at most `DRAIN_MS_MAX` of simulated time.
    async fn poll_leader<T>(&self, every_ms: u64, mut ask: impl FnMut(Option<&Broker>) -> Option<T>) -> Option<T> {
        let asked_ms = self.elapsed_ms();
        loop {
            let leader = self.leader().and_then(|id| self.net.broker(id));
            if let Some(answer) = ask(leader.as_deref()) {
                return Some(answer);
            }
            if self.elapsed_ms() - asked_ms > DRAIN_MS_MAX {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(every_ms)).await;
        }
    }

    /// One fault from the schedule; returns what it did. A new partition replaces the last one.
    async fn inject(&mut self) -> String {
        let ids = self.ids();
        let minority = (ids.len() - 1) / 2;
        let down = self.down_ids();
        let leader = self.leader();
        let kinds = if self.faulty.is_empty() { 10 } else { 12 };
        match self.rng.random_range(0..kinds) {
            10 | 11 => {
                let faulty: Vec<NodeId> = self.faulty.iter().copied().collect();
                let id = faulty[self.rng.random_range(0..faulty.len())];
                let was_up = self.net.broker(id).is_some();
                self.crash(id).await;
                let damage = disk_faults::damage_at_rest(&mut self.rng, &self.nodes[&id].disks, &mut self.storage);
                let damage = damage.unwrap_or_else(|| "nothing to damage".into());
                if was_up {
                    self.start(id).await;
                }
                format!("disk fault on {id}: {damage}")
            }
            0 | 1 if !down.is_empty() => {
                let id = down[self.rng.random_range(0..down.len())];
                self.start(id).await;
                format!("restart {id}")
            }
            // Any number may be down at once, even all: synced data must survive that too.
            0..=2 if down.len() < minority || (down.len() < ids.len() && self.rng.random_bool(0.3)) => {
                let up = self.net.up_ids();
                let id = match leader {
                    Some(leader) if self.rng.random_bool(0.5) => leader,
                    _ => up[self.rng.random_range(0..up.len())],
                };
                self.crash(id).await;
                format!("crash {id}")
            }
            3 => {
                self.net.heal();
                let mut shuffled = ids.clone();
                shuffle(&mut self.rng, &mut shuffled);
                let (small, large) = shuffled.split_at(minority);
                self.net.partition(&[small.to_vec(), large.to_vec()]);
                format!("partition {small:?} | {large:?}")
            }
            4 if leader.is_some() => {
                self.net.heal();
                let leader = leader.unwrap_or_default();
                let others: Vec<NodeId> = ids.iter().copied().filter(|id| *id != leader).collect();
                self.net.partition(&[vec![leader], others]);
                format!("isolate leader {leader}")
            }
            5 if leader.is_some() => {
                // The leader hears everyone, nobody hears the leader.
                self.net.heal();
                let leader = leader.unwrap_or_default();
                for id in ids.iter().filter(|id| **id != leader) {
                    self.net.cut(leader, *id);
                }
                format!("one-way: {leader} is not heard")
            }
            6 => {
                // Two sides that only one broker (the bridge) still connects.
                self.net.heal();
                let mut shuffled = ids.clone();
                shuffle(&mut self.rng, &mut shuffled);
                let bridge = shuffled[0];
                let half = (shuffled.len() - 1) / 2;
                let (left, right) = shuffled[1..].split_at(half);
                self.net.partition(&[left.to_vec(), right.to_vec()]);
                format!("bridge {bridge} between {left:?} and {right:?}")
            }
            7 => {
                let weather = Weather {
                    drops_per_mille: self.rng.random_range(0..200),
                    delay_ms_min: 1,
                    delay_ms_max: self.rng.random_range(2..80),
                };
                self.net.set_weather(weather);
                format!("weather {weather:?}")
            }
            _ => {
                self.net.heal();
                "heal".into()
            }
        }
    }
}

fn shuffle(rng: &mut StdRng, ids: &mut [NodeId]) {
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.random_range(0..=i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: when raft stopped (after a fatal storage error, say) while the broker still
    /// ran, the pulse and membership loops woke on their closed watch channels forever. A
    /// spinning task keeps the paused clock from advancing, so the sleep below would never end.
    #[test]
    fn a_broker_whose_raft_stopped_does_not_spin() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let mut world = World::new(1, SimConfig { brokers: 1, ..SimConfig::for_seed(0) });
                world.start(1).await;
                let broker = world.net.broker(1).expect("broker 1 runs");
                broker.raft.initialize(world.members.clone()).await.expect("initialize");
                broker.raft.shutdown().await.expect("raft stops");
                tokio::time::sleep(Duration::from_secs(10)).await;
            });
            let _ = done.send(());
        });
        assert!(finished.recv_timeout(Duration::from_secs(60)).is_ok(), "a broker task spins after raft stopped");
    }
}
