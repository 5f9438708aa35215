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
}

impl Server {
    pub fn new(broker: Arc<Broker>) -> Arc<Server> {
        Arc::new(Server {
            broker,
            claims: LeaseClaims::default(),
            sessions: Sessions::default(),
            passwords: password::Checker::default(),
        })
    }
}
