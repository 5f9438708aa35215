//! Broker-to-broker RPCs (placeholder until the peer transport lands).
