//! Where a link's frames out wait for its writer: bounded in frames and in bytes. A sender waits
//! for room in both, and may hold room for a frame before it builds it ([`Outbox::reserve`]), so
//! that what it reads to build the frame is bounded too.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

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

impl<Out> Outbox<Out> {
    /// An outbox over `frames`, the writer's queue, holding at most `bytes_max` bytes.
    pub(super) fn new(frames: mpsc::Sender<(Out, OwnedSemaphorePermit)>, bytes_max: usize) -> Outbox<Out> {
        let bytes_max = bytes_max.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Outbox { frames, bytes: Arc::new(Semaphore::new(bytes_max)), bytes_max }
    }
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
