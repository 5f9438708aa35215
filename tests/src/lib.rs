//! Harness for Chorus's cluster, fault and simulation tests: real broker processes on loopback
//! (`cluster`), a fault-injecting peer proxy (`proxy`), and workload helpers (`workload`).

pub mod cluster;
pub mod history;
pub mod proxy;
pub mod workload;
