//! The deterministic simulation (`chorus_tests::sim`): many seeds, each a full run of brokers,
//! clients and faults in one thread on a paused clock, judged by the history checker.
//!
//! - `CHORUS_SIM_SEEDS` (default 100) seeds from `CHORUS_SIM_SEED` (default 1) are run; a
//!   failing seed is printed, and `CHORUS_SIM_SEEDS=1 CHORUS_SIM_SEED=<seed>` replays it.
//! - `CHORUS_SOAK_MINUTES=30 cargo test --release -p chorus-tests --test simulation -- --ignored
//!   --nocapture soak` runs fresh seeds until the time is up.

use std::time::{Duration, Instant};

use chorus_tests::sim::{Report, SimConfig, run};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A seed that takes this long in real time is stuck: a task spins without letting simulated
/// time advance. The process aborts, naming the seed.
const SEED_SECONDS_MAX: u64 = 300;

/// Runs `seeds` on two threads, printing each row as it finishes.
fn run_seeds(seeds: impl Iterator<Item = u64> + Send, until: Option<Instant>) -> Vec<Report> {
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
                        let report = run(seed, &SimConfig::for_seed(seed));
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
    for report in &failed {
        println!(
            "FAILED {}\n  faults: {:#?}\n  violations: {:#?}",
            report.row(),
            report.faults,
            report.verdict.examples
        );
    }
    assert!(failed.is_empty(), "failing seeds: {:?}", failed.iter().map(|r| r.seed).collect::<Vec<_>>());
}

#[test]
fn simulated_seeds_pass_the_checker() {
    let first = env_u64("CHORUS_SIM_SEED", 1);
    let count = env_u64("CHORUS_SIM_SEEDS", 100);
    let reports = run_seeds(first..first + count, None);
    assert_eq!(reports.len() as u64, count);
    assert_all_pass(&reports);
    assert!(reports.iter().all(|r| r.verdict.publishes_ok > 0 && !r.faults.is_empty()), "a run did nothing");
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
    let reports = run_seeds(first.., Some(until));
    assert_all_pass(&reports);
}
