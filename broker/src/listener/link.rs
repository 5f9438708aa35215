//! A connection split in two halves: frames in, read with a clock ([`Link::next_timed`]: a frame
//! begun must arrive whole in time, and silence is reported for the caller to judge), and an
//! [`Outbox`] of frames out. One writer task sends what is queued and flushes only when nothing
//! more is ready, so a burst of answers shares one write.

use std::time::{Duration, Instant};

use chorus_protocol::PartialFrame;
use futures::stream::{SplitStream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, Encoder, Framed};
use tokio_util::sync::CancellationToken;

use super::outbox::Outbox;

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

/// A framed connection's two halves: [`Link::next_timed`] reads frames, [`Link::outbox`] queues
/// frames for the writer task.
pub struct Link<S, C: Decoder, Out> {
    frames: SplitStream<Framed<S, C>>,
    outbox: Outbox<Out>,
    writer: JoinHandle<()>,
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
        Link { frames, outbox: Outbox::new(sender, queued_bytes_max), writer }
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
