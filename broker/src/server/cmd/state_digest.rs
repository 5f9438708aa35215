//! StateDigest: this broker's digest of its applied state at a marked index (admin), waiting up
//! to the request's `wait_ms` (at most [`WAIT_MS_MAX`]) for it to apply the mark and finish the
//! digest. Never forwarded: each broker answers for itself. An empty digest means this broker
//! took none at that index.

use std::time::Duration;

use chorus_machine::Actor;
use chorus_protocol::pb;

use super::{Route, Serve, Served};
use crate::server::access::{self, Needs};
use crate::server::state::Server;

/// The longest a digest request waits.
const WAIT_MS_MAX: u32 = 60_000;

impl Serve for pb::StateDigestRequest {
    const ROUTE: Route = Route::Here;

    async fn serve(self, server: &Server, actor: &Actor) -> Served<pb::StateDigest> {
        access::check(&server.broker.read()?, actor, Needs::Admin)?;
        let broker = &server.broker;
        let mut checks = broker.state_checks().subscribe();
        let mut applied = broker.applied();
        let wait = tokio::time::sleep(Duration::from_millis(u64::from(self.wait_ms.min(WAIT_MS_MAX))));
        tokio::pin!(wait);
        loop {
            let digest = checks.borrow_and_update().digest_at(self.index);
            let past = applied.borrow_and_update().log_index >= self.index;
            match digest {
                Some(Some(digest)) => return Ok(answer(broker, self.index, Some(digest))),
                // Applied past the mark without a digest of it: there will be none.
                None if past => return Ok(answer(broker, self.index, None)),
                _ => {}
            }
            tokio::select! {
                _ = &mut wait => return Ok(answer(broker, self.index, None)),
                changed = checks.changed() => if changed.is_err() { return Ok(answer(broker, self.index, None)) },
                changed = applied.changed() => if changed.is_err() { return Ok(answer(broker, self.index, None)) },
            }
        }
    }
}

fn answer(broker: &crate::Broker, index: u64, digest: Option<[u8; 32]>) -> pb::StateDigest {
    let (mismatches, compared) = {
        let checks = broker.state_checks().subscribe();
        let checks = checks.borrow();
        (checks.mismatches().to_vec(), checks.compared())
    };
    pb::StateDigest {
        compared,
        broker_id: broker.id(),
        index,
        digest: digest.map(|d| d.to_vec()).unwrap_or_default().into(),
        mismatches: mismatches
            .into_iter()
            .map(|(index, other_broker)| pb::DigestMismatch { index, other_broker })
            .collect(),
    }
}
