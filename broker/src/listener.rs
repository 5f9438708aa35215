//! What the client and peer listeners share:
//!
//! - [`accept`]: an accept loop that caps the connections open at once, hands each accepted one
//!   to its own task, and stops at shutdown;
//! - [`Link`]: a connection split in two halves, frames in and a bounded queue of frames out.
//!   One writer task sends what is queued and flushes only when nothing more is ready, so a burst
//!   of answers shares one write.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use chorus_protocol::PartialFrame;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{SplitStream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, Encoder, Framed};
use tokio_util::sync::CancellationToken;

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

/// What [`Link::next_timed`] saw.
#[derive(Debug)]
pub enum Arrival<T, E> {
    Frame(Result<T, E>),
    /// The other side closed, or the broker stops.
    Closed,
    /// A frame begun has not arrived whole within the bound.
    TooSlow,
    /// No frame for this long, and none begun too long ago.
    Silent(Duration),
}

/// Times a connection's frames: since the last whole one, and since a partial one began.
#[derive(Debug)]
pub struct FrameTiming {
    partial: PartialFrame,
    partial_since: Option<Instant>,
    last_frame: Instant,
    frame_read_max: Duration,
}

impl FrameTiming {
    /// Timing for a link whose decoder reports partial frames through `partial`.
    pub fn new(partial: PartialFrame, frame_read_max: Duration) -> FrameTiming {
        FrameTiming { partial, partial_since: None, last_frame: Instant::now(), frame_read_max }
    }

    fn check<T, E>(&mut self) -> Arrival<T, E> {
        match (self.partial.pending(), self.partial_since) {
            (false, _) => self.partial_since = None,
            (true, None) => self.partial_since = Some(Instant::now()),
            (true, Some(since)) if since.elapsed() > self.frame_read_max => return Arrival::TooSlow,
            (true, Some(_)) => {}
        }
        Arrival::Silent(self.last_frame.elapsed())
    }
}

/// Logs failed accepts once per [`ACCEPT_FAILURE_LOG_MS`], counting the ones in between: out of
/// file descriptors, every accept fails, and a line each would flood the log.
#[derive(Default)]
struct FailureLog {
    last_logged: Option<std::time::Instant>,
    unlogged: u64,
}

impl FailureLog {
    fn failed(&mut self, error: &std::io::Error) {
        self.unlogged += 1;
        let due = self.last_logged.is_none_or(|at| at.elapsed() >= Duration::from_millis(ACCEPT_FAILURE_LOG_MS));
        if due {
            tracing::warn!(%error, failures = self.unlogged, "accepting connections fails; retrying every {ACCEPT_RETRY_MS} ms");
            self.last_logged = Some(std::time::Instant::now());
            self.unlogged = 0;
        }
    }
}

/// A framed connection's two halves: [`Link::next_timed`] reads frames, [`Link::outbox`] queues
/// frames for the writer task.
pub struct Link<S, C: Decoder, Out> {
    frames: SplitStream<Framed<S, C>>,
    outbox: Outbox<Out>,
    writer: JoinHandle<()>,
}

/// Where a link's frames out queue, bounded in frames and in bytes: a sender waits until both
/// have room, so a peer that does not read costs at most the byte bound (and one frame being
/// written). A frame's bytes are given back when the writer takes it. Cheap to clone.
pub struct Outbox<Out> {
    frames: mpsc::Sender<(Out, OwnedSemaphorePermit)>,
    bytes: Arc<Semaphore>,
    bytes_max: usize,
}

impl<Out> std::fmt::Debug for Outbox<Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("bytes_free", &self.bytes.available_permits()).finish_non_exhaustive()
    }
}

impl<Out> std::fmt::Debug for Reserved<Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reserved").field("bytes", &self.permit.num_permits()).finish_non_exhaustive()
    }
}

impl<Out> Clone for Outbox<Out> {
    fn clone(&self) -> Outbox<Out> {
        Outbox { frames: self.frames.clone(), bytes: Arc::clone(&self.bytes), bytes_max: self.bytes_max }
    }
}

/// The link's writer is gone: the connection closed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the connection closed")]
pub struct OutboxClosed;

/// Room held in an [`Outbox`] for a frame about to be built ([`Outbox::reserve`]).
pub struct Reserved<Out> {
    outbox: Outbox<Out>,
    permit: OwnedSemaphorePermit,
}

impl<Out: prost::Message> Outbox<Out> {
    /// Queues `frame` once its bytes fit.
    pub async fn send(&self, frame: Out) -> Result<(), OutboxClosed> {
        let len = frame.encoded_len();
        self.reserve(len).await?.queue(frame, len).await
    }

    /// Holds room for a frame of about `bytes` before it is built, so that what a sender reads
    /// to build it is bounded too.
    pub async fn reserve(&self, bytes: usize) -> Result<Reserved<Out>, OutboxClosed> {
        let permits = bytes.clamp(1, self.bytes_max) as u32;
        let permit = Arc::clone(&self.bytes).acquire_many_owned(permits).await.map_err(|_| OutboxClosed)?;
        Ok(Reserved { outbox: self.clone(), permit })
    }
}

impl<Out: prost::Message> Reserved<Out> {
    /// Queues `frame`, first taking more room if it came out larger than reserved.
    pub async fn send(self, frame: Out) -> Result<(), OutboxClosed> {
        let len = frame.encoded_len();
        self.queue(frame, len).await
    }

    /// Queues `frame` of `len` encoded bytes, holding exactly that much room.
    async fn queue(mut self, frame: Out, len: usize) -> Result<(), OutboxClosed> {
        let wanted = len.clamp(1, self.outbox.bytes_max) as u32;
        if let Some(more) = wanted.checked_sub(self.permit.num_permits() as u32).filter(|more| *more > 0) {
            let extra = Arc::clone(&self.outbox.bytes).acquire_many_owned(more).await.map_err(|_| OutboxClosed)?;
            self.permit.merge(extra);
        } else if let Some(spare) = self.permit.split(self.permit.num_permits() - wanted as usize) {
            drop(spare);
        }
        self.outbox.frames.send((frame, self.permit)).await.map_err(|_| OutboxClosed)
    }
}

impl<S, C, Out> std::fmt::Debug for Link<S, C, Out>
where
    C: Decoder,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

impl<S, C, Out> Link<S, C, Out>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    C: Decoder + Encoder<Out> + Send + 'static,
    Out: Send + 'static,
{
    /// Splits `stream`, framed by `codec`, with room for `queued_max` frames and `queued_bytes_max`
    /// bytes out.
    pub fn open(stream: S, codec: C, queued_max: usize, queued_bytes_max: usize) -> Link<S, C, Out> {
        let (sink, frames) = Framed::new(stream, codec).split();
        let (sender, mut queued) = mpsc::channel::<(Out, OwnedSemaphorePermit)>(queued_max);
        let queued = futures::stream::poll_fn(move |cx| queued.poll_recv(cx));
        // `forward` flushes only when no frame is ready. A frame's bytes are given back as it is
        // taken: the write buffer then holds it until the socket does.
        let writer = tokio::spawn(async move {
            let _ = queued.map(|(frame, _room)| Ok::<Out, <C as Encoder<Out>>::Error>(frame)).forward(sink).await;
        });
        let bytes_max = queued_bytes_max.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let outbox = Outbox { frames: sender, bytes: Arc::new(Semaphore::new(bytes_max)), bytes_max };
        Link { frames, outbox, writer }
    }

    /// The next frame, or, every `check_every` without one, word of the silence; `TooSlow` once a
    /// frame begun has taken longer than `timing` allows to arrive whole.
    pub async fn next_timed(
        &mut self,
        shutdown: &CancellationToken,
        timing: &mut FrameTiming,
        check_every: Duration,
    ) -> Arrival<C::Item, <C as Decoder>::Error> {
        tokio::select! {
            _ = shutdown.cancelled() => Arrival::Closed,
            next = self.frames.next() => {
                timing.last_frame = Instant::now();
                match next {
                    Some(frame) => Arrival::Frame(frame),
                    None => Arrival::Closed,
                }
            }
            _ = tokio::time::sleep(check_every) => timing.check(),
        }
    }

    /// The next frame if it comes within `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Result<C::Item, <C as Decoder>::Error>> {
        tokio::time::timeout(timeout, self.frames.next()).await.ok().flatten()
    }

    /// Where frames out are queued; clones may outlive the link's reader.
    pub fn outbox(&self) -> &Outbox<Out> {
        &self.outbox
    }

    /// Sends what is queued, once every clone of the outbox is dropped, and closes.
    pub async fn close(self) {
        drop(self.outbox);
        let _ = self.writer.await;
    }
}
