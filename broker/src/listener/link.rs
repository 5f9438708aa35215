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

/// Times the writer yields to other ready tasks, while each yield brings more frames, before it
/// flushes what it has.
const YIELDS_BEFORE_FLUSH_MAX: usize = 4;

/// Sends the queued frames until the outbox closes, flushing only when no frame is ready even
/// after the tasks that are ready have run. The answers one applied entry completes each come
/// from their own task, and tokio runs a task it just woke first: flushing as soon as the queue
/// looked empty wrote each answer with its own syscall (21-byte writes, one per `--raw`
/// publish). A frame's bytes are given back as it is taken: the write buffer then holds it until
/// the socket does.
async fn write_coalesced<S, C, Out>(
    mut queued: mpsc::Receiver<(Out, OwnedSemaphorePermit)>,
    mut sink: futures::stream::SplitSink<Framed<S, C>, Out>,
) where
    S: AsyncWrite,
    C: Encoder<Out>,
{
    use futures::SinkExt;
    while let Some((frame, _room)) = queued.recv().await {
        if sink.feed(frame).await.is_err() {
            return;
        }
        let mut yields = 0;
        loop {
            match queued.try_recv() {
                Ok((frame, _room)) => {
                    if sink.feed(frame).await.is_err() {
                        return;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) if yields < YIELDS_BEFORE_FLUSH_MAX => {
                    yields += 1;
                    let before = queued.len();
                    tokio::task::yield_now().await;
                    if queued.len() == before {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
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
        let (sender, queued) = mpsc::channel::<(Out, OwnedSemaphorePermit)>(queued_max);
        let writer = tokio::spawn(write_coalesced(queued, sink));
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

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use chorus_protocol::{ServerCodec, pb};
    use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

    use super::*;

    /// A stream that counts the writes that reach it.
    struct Counting {
        inner: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let written = Pin::new(&mut self.inner).poll_write(cx, buf);
            if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            written
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// One applied entry completes many requests, each answered by its own task: their answers
    /// go out in a few writes, not one each. On one worker thread tokio runs the task a sender
    /// just woke (the writer) next, which flushed every answer alone before the writer yielded.
    #[test]
    fn answers_completed_together_share_a_write() {
        const ANSWERS: u64 = 200;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let writes = runtime.block_on(async {
            let (near, _far) = tokio::io::duplex(1 << 20);
            let writes = Arc::new(AtomicUsize::new(0));
            let stream = Counting { inner: near, writes: Arc::clone(&writes) };
            let link: Link<_, ServerCodec, pb::ServerFrame> =
                Link::open(stream, ServerCodec::new(1 << 20), 1024, 1 << 20);
            let (go, ready) = tokio::sync::watch::channel(false);
            let answering: Vec<_> = (1..=ANSWERS)
                .map(|request_id| {
                    let outbox = link.outbox().clone();
                    let mut ready = ready.clone();
                    tokio::spawn(async move {
                        ready.wait_for(|go| *go).await.unwrap();
                        outbox.send(pb::ServerFrame { request_id, body: None }).await.unwrap();
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Woken from the worker itself, as an applied entry wakes its requests' tasks.
            tokio::spawn(async move { go.send(true).unwrap() }).await.unwrap();
            for task in answering {
                task.await.unwrap();
            }
            link.close().await;
            writes.load(Ordering::SeqCst)
        });
        assert!(writes <= 10, "{ANSWERS} answers completed together took {writes} writes");
    }
}
