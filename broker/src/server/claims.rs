//! Lease admission on the leader. A long-poll proposes its lease only while the leases already in
//! flight for the same group claim fewer messages than the group has ready. Without it, every
//! poller of a group woke on each apply and proposed at once, and all but the first lease came
//! back empty: a wasted command in the log each (4 workers leasing 256 at a time moved 22k
//! tasks/s, 1 worker 31k).
//!
//! The count is local, in memory and approximate: it only decides when to propose, never what a
//! lease grants, which the state machine alone decides. An entry lives while a lease holds it, so
//! the map is bounded by the leases in flight.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// Messages claimed by the leases in flight, per (topic, group).
#[derive(Debug)]
pub struct LeaseClaims {
    claimed: Mutex<BTreeMap<(String, String), u64>>,
    /// Counts releases, so a refused poller wakes when a claim ends (a lease that failed leaves
    /// no apply behind to wake it).
    released: watch::Sender<u64>,
}

impl Default for LeaseClaims {
    fn default() -> LeaseClaims {
        LeaseClaims { claimed: Mutex::default(), released: watch::Sender::new(0) }
    }
}

/// A lease in flight; its claim is released when dropped.
#[derive(Debug)]
pub struct Claim<'a> {
    claims: &'a LeaseClaims,
    key: (String, String),
    count: u64,
}

impl LeaseClaims {
    /// Claims `count` messages for a lease on `group`, unless the leases in flight already claim
    /// at least the `ready` messages there are.
    pub fn claim(&self, topic: &str, group: &str, ready: u64, count: u64) -> Option<Claim<'_>> {
        let key = (topic.to_owned(), group.to_owned());
        let mut claimed = self.claimed.lock().expect("lease claims lock");
        let held = claimed.get(&key).copied().unwrap_or(0);
        if held >= ready {
            return None;
        }
        claimed.insert(key.clone(), held + count);
        Some(Claim { claims: self, key, count })
    }

    /// Messages claimed for `group` by leases in flight.
    #[cfg(test)]
    fn claimed(&self, topic: &str, group: &str) -> u64 {
        let claimed = self.claimed.lock().expect("lease claims lock");
        claimed.get(&(topic.to_owned(), group.to_owned())).copied().unwrap_or(0)
    }

    /// Changes each time a claim is released. Subscribe before trying to claim.
    pub fn releases(&self) -> watch::Receiver<u64> {
        self.released.subscribe()
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        {
            let mut claimed = self.claims.claimed.lock().expect("lease claims lock");
            let held = claimed.get_mut(&self.key).expect("a claim's entry lives while it does");
            *held -= self.count;
            if *held == 0 {
                claimed.remove(&self.key);
            }
        }
        self.claims.released.send_modify(|count| *count = count.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_admitted_until_they_claim_what_is_ready() {
        let claims = LeaseClaims::default();
        let first = claims.claim("t", "g", 100, 64).expect("nothing in flight");
        let second = claims.claim("t", "g", 100, 64).expect("64 claimed of 100 ready");
        assert!(claims.claim("t", "g", 100, 64).is_none(), "128 claimed covers 100 ready");
        assert!(claims.claim("t", "other", 100, 64).is_some(), "groups are counted apart");
        assert!(claims.claim("t", "g", 0, 1).is_none(), "nothing ready, nothing admitted");
        let mut releases = claims.releases();
        drop(first);
        assert!(releases.has_changed().unwrap(), "a release wakes refused pollers");
        releases.mark_unchanged();
        assert_eq!(claims.claimed("t", "g"), 64);
        drop(second);
        assert_eq!(claims.claimed("t", "g"), 0);
        assert!(claims.claimed.lock().unwrap().is_empty(), "released groups leave no entry");
    }
}
