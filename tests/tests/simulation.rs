//! The deterministic simulation (`chorus_tests::sim`): many seeds, each a full run of brokers,
//! clients and faults in one thread on a paused clock, judged by the history checker.
//!
//! - `CHORUS_SIM_SEEDS` (default 100) seeds from `CHORUS_SIM_SEED` (default 1) are run; a
//!   failing seed is printed, and `CHORUS_SIM_SEEDS=1 CHORUS_SIM_SEED=<seed>` replays it.
//! - The same seeds run again with storage faults on a minority of brokers
//!   (`CHORUS_SIM_STORAGE_SEEDS`, default 100): each reports the faults injected, the damage the
//!   brokers detected and the repairs they made; nothing acknowledged may be lost and no damaged
//!   payload served.
//! - `CHORUS_SOAK_MINUTES=30 cargo test --release -p chorus-tests --test simulation -- --ignored
//!   --nocapture soak` runs fresh seeds until the time is up, every other one with storage
//!   faults.

use std::time::{Duration, Instant};

use chorus_tests::sim::{Report, SimConfig, run};

/// The configuration a seed runs under.
type Configure = fn(u64) -> SimConfig;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A seed that takes this long in real time is stuck: a task spins without letting simulated
/// time advance. The process aborts, naming the seed.
const SEED_SECONDS_MAX: u64 = 300;

/// Runs `seeds` on two threads, printing each row as it finishes.
fn run_seeds(seeds: impl Iterator<Item = u64> + Send, until: Option<Instant>, configure: Configure) -> Vec<Report> {
    let seeds = std::sync::Mutex::new(seeds);
    let reports = std::sync::Mutex::new(Vec::new());
    let running = std::sync::Mutex::new(std::collections::BTreeMap::<u64, Instant>::new());
    let finished = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !finished.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                for (seed, started) in running.lock().unwrap().iter() {
                    if started.elapsed() > Duration::from_secs(SEED_SECONDS_MAX) {
                        eprintln!("seed {seed} is stuck after {SEED_SECONDS_MAX} s; replay it with CHORUS_SIM_SEEDS=1 CHORUS_SIM_SEED={seed}");
                        std::process::abort();
                    }
                }
            }
        });
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    loop {
                        if until.is_some_and(|until| Instant::now() >= until) {
                            return;
                        }
                        let Some(seed) = seeds.lock().unwrap().next() else { return };
                        let started = Instant::now();
                        running.lock().unwrap().insert(seed, started);
                        let report = run(seed, &configure(seed));
                        running.lock().unwrap().remove(&seed);
                        println!("{} | {:.1} s", report.row(), started.elapsed().as_secs_f64());
                        reports.lock().unwrap().push(report);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("a simulation thread");
        }
        finished.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let mut reports = reports.into_inner().unwrap();
    reports.sort_by_key(|r| r.seed);
    reports
}

fn assert_all_pass(reports: &[Report]) {
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.passed()).collect();
    let totals = reports.iter().fold((0, 0, 0), |(faults, ops, redeliveries), r| {
        (faults + r.faults.len(), ops + r.operations, redeliveries + r.verdict.redeliveries)
    });
    println!(
        "simulation: {} seeds, {} faults, {} operations, {} redeliveries, {} failed",
        reports.len(),
        totals.0,
        totals.1,
        totals.2,
        failed.len()
    );
    let storage: Vec<_> = reports.iter().filter_map(|r| r.storage.as_ref()).collect();
    if !storage.is_empty() {
        let sum =
            |f: fn(&chorus_tests::sim::disk_faults::StorageReport) -> u64| storage.iter().map(|s| f(s)).sum::<u64>();
        let lost: u64 = reports.iter().filter(|r| r.storage.is_some()).map(|r| r.verdict.lost).sum();
        let corrupted: u64 = reports.iter().filter(|r| r.storage.is_some()).map(|r| r.verdict.corrupted).sum();
        println!(
            "storage faults: {} seeds, {} faults injected, {} detected, {} repairs, {} refused starts, {lost} lost, {corrupted} corrupted served",
            storage.len(),
            sum(|s| s.injected_total()),
            sum(|s| s.detected),
            sum(|s| s.repairs),
            sum(|s| s.refused_starts),
        );
        for why in storage.iter().flat_map(|s| s.refusals.iter()).take(8) {
            println!("  refused: {why}");
        }
    }
    for report in &failed {
        println!(
            "FAILED {}\n  faults: {:#?}\n  violations: {:#?}\n  storage: {:#?}",
            report.row(),
            report.faults,
            report.verdict.examples,
            report.storage
        );
    }
    assert!(failed.is_empty(), "failing seeds: {:?}", failed.iter().map(|r| r.seed).collect::<Vec<_>>());
}

#[test]
fn simulated_seeds_pass_the_checker() {
    let first = env_u64("CHORUS_SIM_SEED", 1);
    let count = env_u64("CHORUS_SIM_SEEDS", 100);
    let reports = run_seeds(first..first + count, None, SimConfig::for_seed);
    assert_eq!(reports.len() as u64, count);
    assert_all_pass(&reports);
    assert!(reports.iter().all(|r| r.verdict.publishes_ok > 0 && !r.faults.is_empty()), "a run did nothing");
}

#[test]
fn storage_fault_seeds_pass_the_checker() {
    let first = env_u64("CHORUS_SIM_SEED", 1);
    let count = env_u64("CHORUS_SIM_STORAGE_SEEDS", 100);
    let reports = run_seeds(first..first + count, None, SimConfig::with_storage_faults);
    assert_eq!(reports.len() as u64, count);
    assert_all_pass(&reports);
    let storage: Vec<_> = reports.iter().filter_map(|r| r.storage.as_ref()).collect();
    assert!(storage.iter().map(|s| s.injected_total()).sum::<u64>() > count, "too few storage faults injected");
    assert!(storage.iter().map(|s| s.detected).sum::<u64>() > 0, "no damage was ever detected");
    assert!(storage.iter().map(|s| s.repairs).sum::<u64>() > 0, "no repair was ever made");
}

#[test]
fn a_seed_replays_identically() {
    let config = SimConfig { fault_ms: 8_000, ..SimConfig::for_seed(3) };
    let first = run(3, &config);
    let second = run(3, &config);
    assert!(first.passed(), "{}", first.row());
    assert_eq!(first.faults, second.faults);
    assert_eq!(first.operations, second.operations);
    assert_eq!(first.digest, second.digest, "the same seed produced a different history");
    let other = run(4, &SimConfig { fault_ms: 8_000, ..SimConfig::for_seed(4) });
    assert_ne!(first.digest, other.digest);
}

#[test]
#[ignore = "a long soak: CHORUS_SOAK_MINUTES (default 30)"]
fn soak() {
    let minutes = env_u64("CHORUS_SOAK_MINUTES", 30);
    let first = env_u64("CHORUS_SIM_SEED", 1_000_000);
    let until = Instant::now() + Duration::from_secs(minutes * 60);
    let reports = run_seeds(first.., Some(until), |seed| {
        if seed % 2 == 0 { SimConfig::with_storage_faults(seed) } else { SimConfig::for_seed(seed) }
    });
    assert_all_pass(&reports);
}
