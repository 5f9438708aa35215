//! A fault-injecting proxy in front of each broker's peer port. Brokers advertise the proxy's
//! address, so every broker-to-broker connection passes through it. A peer connection opens with
//! a PeerHello naming its sender, which tells the proxy the (from, to) pair; blocked pairs are
//! refused, and blocking a pair cuts its open connections. Blocking (a, b) but not (b, a) is a
//! one-way partition: a cannot open connections to b, b can still reach a.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use chorus_protocol::PeerCodec;
use chorus_protocol::pb::peer_frame::Body;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_util::codec::{Encoder, Framed};

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

async fn pipe(faults: &Faults, to: u64, inbound: TcpStream, target: &str, handle: AbortHandle) {
    let mut framed = Framed::new(inbound, PeerCodec::default());
    let Some(Ok(hello)) = framed.next().await else { return };
    let Some(Body::Hello(greeting)) = &hello.body else { return };
    if !faults.admit(greeting.from_id, to, handle) {
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
    let parts = framed.into_parts();
    let mut head = bytes::BytesMut::new();
    if PeerCodec::default().encode(hello, &mut head).is_err() {
        return;
    }
    head.extend_from_slice(&parts.read_buf);
    if outbound.write_all(&head).await.is_err() {
        return;
    }
    let mut inbound = parts.io;
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
