//! What a broker's client side keeps beside the broker, shared by every connection: lease claims,
//! users' sessions and the password checker.

use std::sync::Arc;

use super::claims::LeaseClaims;
use super::sessions::Sessions;
use crate::broker::Broker;
use crate::security::password;

/// What a broker's client side keeps beside the broker.
#[derive(Debug)]
pub struct Server {
    pub broker: Arc<Broker>,
    /// Messages claimed by the leases this broker has in flight, per group.
    pub claims: LeaseClaims,
    /// What each user holds open on this broker, against its quotas.
    pub sessions: Sessions,
    /// Checks users' passwords.
    pub passwords: password::Checker,
    /// Bytes of client requests in flight on this broker (`Limits::in_flight_bytes_max`).
    pub in_flight_bytes: Arc<tokio::sync::Semaphore>,
    /// Bytes client connections have read and not yet decoded (`Limits::read_bytes_max`).
    pub read_bytes: Arc<tokio::sync::Semaphore>,
}

/// A semaphore counts bytes as permits, in a u32 per acquisition and tokio's bound overall.
pub const MAX_PERMITS: usize = u32::MAX as usize >> 3;

impl Server {
    pub fn new(broker: Arc<Broker>) -> Arc<Server> {
        let limits = &broker.config.limits;
        let in_flight_bytes = limits.in_flight_bytes_max.max(limits.frame_bytes_max).min(MAX_PERMITS);
        // Room for at least one whole frame, so a frame can always complete.
        let read_bytes = limits.read_bytes_max.max(limits.frame_bytes_max + 4).min(MAX_PERMITS);
        Arc::new(Server {
            in_flight_bytes: Arc::new(tokio::sync::Semaphore::new(in_flight_bytes)),
            read_bytes: Arc::new(tokio::sync::Semaphore::new(read_bytes)),
            broker,
            claims: LeaseClaims::default(),
            sessions: Sessions::default(),
            passwords: password::Checker::default(),
        })
    }
}
