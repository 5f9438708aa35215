//! What each user holds on this broker right now: connections, and bytes of requests in flight.
//! These two quotas are a broker's own (the state machine holds the quotas, each broker counts
//! against them): they bound what one user's clients can cost one broker, whatever its other
//! users do. A connection's [`SessionUse`] and each request's [`InFlight`] give back what they
//! took when dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chorus_machine::Quotas;

/// Every user's use of this broker.
#[derive(Debug, Default)]
pub struct Sessions {
    usage: Arc<Mutex<BTreeMap<String, Usage>>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    connections: u32,
    in_flight_bytes: u64,
}

/// Why a user may not take more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("user {user:?} has {max} connections open on this broker, its quota")]
    Connections { user: String, max: u32 },
    #[error("user {user:?} has {held} bytes of requests in flight on this broker, at most {max}")]
    InFlightBytes { user: String, held: u64, max: u64 },
}

impl Sessions {
    /// Counts a new connection of `user`, within its quota.
    pub fn open(&self, user: &str, quotas: Quotas) -> Result<SessionUse, QuotaError> {
        let mut usage = self.usage.lock().expect("sessions lock");
        let entry = usage.entry(user.to_owned()).or_default();
        if let Some(max) = quotas.connections_max
            && entry.connections >= max
        {
            return Err(QuotaError::Connections { user: user.to_owned(), max });
        }
        entry.connections += 1;
        Ok(SessionUse { usage: Arc::clone(&self.usage), user: user.to_owned(), quotas })
    }

    /// Connections `user` holds open here.
    pub fn connections(&self, user: &str) -> u32 {
        self.usage.lock().expect("sessions lock").get(user).map_or(0, |u| u.connections)
    }
}

/// One connection of a user; the connection count drops with it.
#[derive(Debug)]
pub struct SessionUse {
    usage: Arc<Mutex<BTreeMap<String, Usage>>>,
    user: String,
    quotas: Quotas,
}

impl SessionUse {
    /// Counts a request of `bytes` in flight, within the user's quota. A request alone larger
    /// than the quota is still let through when nothing else of the user's is in flight, so the
    /// quota slows a user down and never locks it out.
    pub fn reserve(&self, bytes: u64) -> Result<InFlight, QuotaError> {
        let mut usage = self.usage.lock().expect("sessions lock");
        let entry = usage.entry(self.user.clone()).or_default();
        if let Some(max) = self.quotas.in_flight_bytes_max
            && entry.in_flight_bytes > 0
            && entry.in_flight_bytes + bytes > max
        {
            return Err(QuotaError::InFlightBytes { user: self.user.clone(), held: entry.in_flight_bytes, max });
        }
        entry.in_flight_bytes += bytes;
        Ok(InFlight { usage: Arc::clone(&self.usage), user: self.user.clone(), bytes })
    }
}

impl Drop for SessionUse {
    fn drop(&mut self) {
        release(&self.usage, &self.user, |u| u.connections -= 1);
    }
}

/// One request's bytes, counted while it is in flight.
#[derive(Debug)]
pub struct InFlight {
    usage: Arc<Mutex<BTreeMap<String, Usage>>>,
    user: String,
    bytes: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let bytes = self.bytes;
        release(&self.usage, &self.user, |u| u.in_flight_bytes -= bytes);
    }
}

/// Gives back what `take_back` undoes, and forgets users who hold nothing.
fn release(usage: &Mutex<BTreeMap<String, Usage>>, user: &str, take_back: impl FnOnce(&mut Usage)) {
    let mut usage = usage.lock().expect("sessions lock");
    let entry = usage.get_mut(user).expect("a user's use is counted while anything of it is held");
    take_back(entry);
    if *entry == Usage::default() {
        usage.remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_and_bytes_are_bounded_per_user_and_given_back() {
        let sessions = Sessions::default();
        let quotas = Quotas { connections_max: Some(2), in_flight_bytes_max: Some(100), ..Quotas::UNLIMITED };
        let first = sessions.open("alice", quotas).unwrap();
        let second = sessions.open("alice", quotas).unwrap();
        assert!(matches!(sessions.open("alice", quotas), Err(QuotaError::Connections { max: 2, .. })));
        assert!(sessions.open("bob", quotas).is_ok(), "users are counted apart");
        let big = first.reserve(500).expect("alone, a request over the quota still goes");
        assert!(matches!(second.reserve(1), Err(QuotaError::InFlightBytes { held: 500, .. })));
        drop(big);
        let a = first.reserve(60).unwrap();
        assert!(second.reserve(41).is_err());
        let b = second.reserve(40).unwrap();
        drop((a, b));
        drop(first);
        assert_eq!(sessions.connections("alice"), 1);
        drop(second);
        assert!(sessions.usage.lock().unwrap().is_empty(), "nothing held, nothing kept");
    }
}
