//! Harness for Chorus's cluster, fault and simulation tests: starting real broker processes on
//! loopback, injecting faults, and checking recorded histories.
