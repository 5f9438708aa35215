//! What the client and peer listeners share:
//!
//! - [`accept`]: an accept loop that caps the connections open at once, in all and per IP
//!   address, hands each accepted one to its own task, stops at shutdown and returns once they
//!   have all closed; failed accepts back off and are logged once in a while;
//! - [`Link`] (`link`): a connection split in two halves, frames in, timed, and an [`Outbox`]
//!   (`outbox`) of frames out, bounded in frames and in bytes;
//! - [`Budgeted`] (`budget`): a stream whose bytes read and not yet decoded hold room in a
//!   broker-wide budget.

mod budget;
mod link;
mod outbox;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use budget::Budgeted;
pub use link::{Arrival, FrameTiming, Link};
pub use outbox::Outbox;

/// How long the accept loop pauses after a failed accept (out of file descriptors, say), so it
/// does not spin.
const ACCEPT_RETRY_MS: u64 = 50;
/// Failed accepts are logged at most once in this long, with how many failed since.
const ACCEPT_FAILURE_LOG_MS: u64 = 10_000;

/// How many connections a listener keeps open at once: in all, and from one IP address.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub total: usize,
    pub per_address: usize,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener holds `Caps::total` connections.
    Full,
    /// Its address holds `Caps::per_address` connections.
    AddressFull,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Full => "too many connections",
            Refusal::AddressFull => "too many connections from this address",
        })
    }
}

/// The connections open per address; a [`AddressSlot`] gives its place back when dropped.
#[derive(Debug, Default)]
struct AddressCounts(std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>);

struct AddressSlot {
    counts: Arc<AddressCounts>,
    address: IpAddr,
}

impl AddressCounts {
    fn take(self: &Arc<Self>, address: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut counts = self.0.lock().expect("address counts");
        let open = counts.entry(address).or_default();
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(AddressSlot { counts: Arc::clone(self), address })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().expect("address counts");
        if let Some(open) = counts.get_mut(&self.address) {
            *open -= 1;
            if *open == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// Accepts connections on `listener` until `shutdown`, within `caps`, then returns once every
/// connection it accepted has closed. Each accepted connection is served by `serve` in a task of
/// its own; one over a cap is given to `refuse`, likewise, with the reason.
pub async fn accept<Serve, Served, Refuse, Refused>(
    listener: TcpListener,
    caps: Caps,
    shutdown: CancellationToken,
    serve: Serve,
    refuse: Refuse,
) where
    Serve: Fn(TcpStream, SocketAddr) -> Served,
    Served: Future<Output = ()> + Send + 'static,
    Refuse: Fn(TcpStream, SocketAddr, Refusal) -> Refused,
    Refused: Future<Output = ()> + Send + 'static,
{
    let connections_max = caps.total;
    let permits = Arc::new(Semaphore::new(connections_max));
    let addresses = Arc::new(AddressCounts::default());
    let mut failures = FailureLog::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                failures.failed(&error);
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(slot) = addresses.take(remote.ip(), caps.per_address) else {
            tokio::spawn(refuse(stream, remote, Refusal::AddressFull));
            continue;
        };
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                let served = serve(stream, remote);
                tokio::spawn(async move {
                    served.await;
                    drop((permit, slot));
                });
            }
            Err(_) => {
                tokio::spawn(refuse(stream, remote, Refusal::Full));
            }
        }
    }
    drop(listener);
    // Each connection drains within its own bound; wait for them all.
    let _ = permits.acquire_many(connections_max as u32).await;
}

/// Logs failed accepts once per [`ACCEPT_FAILURE_LOG_MS`], counting the ones in between: out of
/// file descriptors, every accept fails, and a line each would flood the log.
#[derive(Default)]
struct FailureLog {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl FailureLog {
    fn failed(&mut self, error: &std::io::Error) {
        self.unlogged += 1;
        let due = self.last_logged.is_none_or(|at| at.elapsed() >= Duration::from_millis(ACCEPT_FAILURE_LOG_MS));
        if due {
            tracing::warn!(%error, failures = self.unlogged, "accepting connections fails; retrying every {ACCEPT_RETRY_MS} ms");
            self.last_logged = Some(Instant::now());
            self.unlogged = 0;
        }
    }
}
