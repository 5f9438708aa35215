//! Harness for Chorus's cluster, fault and simulation tests: real broker processes on loopback
//! (`cluster`), a fault-injecting peer proxy (`proxy`), workload helpers (`workload`), the
//! history checker (`history`), a plain HTTP GET for metrics and Prometheus (`http`), and the
//! deterministic in-process simulation (`sim`).

pub mod cluster;
pub mod history;
pub mod http;
pub mod proxy;
pub mod sim;
pub mod workload;
