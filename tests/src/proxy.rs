//! A fault-injecting proxy in front of each broker's peer port. Brokers advertise the proxy's
//! address, so every broker-to-broker connection passes through it. A peer connection opens with
//! a cleartext preamble naming its sender (`security::peer_link`), which tells the proxy the
//! (from, to) pair whatever the authentication after it; blocked pairs are refused, and blocking
//! a pair cuts its open connections. Blocking (a, b) but not (b, a) is a one-way partition: a
//! cannot open connections to b, b can still reach a. The proxy relays bytes, TLS or not.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use chorus_broker::security::peer_link::{PREAMBLE_BYTES, Preamble};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Default)]
struct Rules {
    blocked: BTreeSet<(u64, u64)>,
    open: Vec<(u64, u64, AbortHandle)>,
}

/// The shared switchboard of every broker's proxy.
#[derive(Clone, Default)]
pub struct Faults {
    rules: Arc<Mutex<Rules>>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults").field("blocked", &self.rules.lock().unwrap().blocked).finish()
    }
}

impl Faults {
    /// Stops traffic from `from` to `to`, cutting open connections.
    pub fn block(&self, from: u64, to: u64) {
        let mut rules = self.rules.lock().unwrap();
        rules.blocked.insert((from, to));
        rules.open.retain(|(f, t, handle)| {
            let cut = (*f, *t) == (from, to);
            if cut {
                handle.abort();
            }
            !cut
        });
    }

    /// Splits the brokers into sides that cannot talk to each other at all.
    pub fn partition(&self, sides: &[&[u64]]) {
        for (i, side) in sides.iter().enumerate() {
            for other in sides.iter().skip(i + 1) {
                for &a in *side {
                    for &b in *other {
                        self.block(a, b);
                        self.block(b, a);
                    }
                }
            }
        }
    }

    pub fn heal(&self) {
        self.rules.lock().unwrap().blocked.clear();
    }

    fn admit(&self, from: u64, to: u64, handle: AbortHandle) -> bool {
        let mut rules = self.rules.lock().unwrap();
        if rules.blocked.contains(&(from, to)) {
            return false;
        }
        rules.open.retain(|(_, _, h)| !h.is_finished());
        rules.open.push((from, to, handle));
        true
    }

    /// Proxies `listener` (broker `to`'s advertised peer address) to `target`, its real one.
    pub fn serve(&self, to: u64, listener: TcpListener, target: String) -> AbortHandle {
        let faults = self.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let faults = faults.clone();
                let target = target.clone();
                let (ready, go) = tokio::sync::oneshot::channel::<AbortHandle>();
                let task = tokio::spawn(async move {
                    let Ok(handle) = go.await else { return };
                    pipe(&faults, to, inbound, &target, handle).await;
                });
                let _ = ready.send(task.abort_handle());
            }
        })
        .abort_handle()
    }
}

async fn pipe(faults: &Faults, to: u64, mut inbound: TcpStream, target: &str, handle: AbortHandle) {
    let mut head = [0u8; PREAMBLE_BYTES];
    if inbound.read_exact(&mut head).await.is_err() {
        return;
    }
    // Not a peer's preamble: pass it on, and let the broker refuse it.
    let from = Preamble::decode(&head).map_or(0, |preamble| preamble.from);
    if !faults.admit(from, to, handle) {
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
    // As the brokers do: a TLS handshake's small writes must not wait on Nagle and delayed ACKs
    // (40 ms each on Linux).
    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
    if outbound.write_all(&head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
