//! A broker-wide budget for the bytes client connections have read and not yet decoded: the
//! start of a frame, or a whole one the reader has not taken yet. [`Budgeted`] wraps a
//! connection's stream; each read first takes room for what it may read from the shared
//! semaphore, and the room of whole frames comes back as the decoder takes them out of its
//! buffer ([`PartialFrame::take_consumed`]) or when the connection closes. When the budget is
//! spent, reads wait: a connection sending a large frame pauses until others' frames are taken,
//! and a thousand connections each holding most of a frame cost the budget, not a frame each.
//! The first [`FREE_BYTES`] a connection holds are its own, outside the budget, so a Hello and
//! small requests are read even while large frames have spent it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use chorus_protocol::PartialFrame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio_util::sync::PollSemaphore;

/// Bytes one read takes room for at most: small against the budget, so many connections share it.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes a connection may hold without room in the budget.
pub const FREE_BYTES: usize = 64 * 1024;

/// A stream whose reads hold room in a broker-wide budget until the decoder takes their bytes.
pub struct Budgeted<S> {
    inner: S,
    budget: PollSemaphore,
    /// Bytes read and not yet taken as frames.
    held: usize,
    /// The part of them charged to the budget: what is past [`FREE_BYTES`].
    charged: usize,
    decoder: PartialFrame,
}

impl<S> Budgeted<S> {
    /// Wraps `inner`; `decoder` is the codec's that will read it.
    pub fn new(inner: S, budget: Arc<Semaphore>, decoder: PartialFrame) -> Budgeted<S> {
        Budgeted { inner, budget: PollSemaphore::new(budget), held: 0, charged: 0, decoder }
    }

    /// Room in the budget that holding `more` bytes besides those held would need.
    fn room_needed(&self, more: usize) -> usize {
        (self.held + more).saturating_sub(FREE_BYTES).saturating_sub(self.charged)
    }

    fn give_back(&mut self, bytes: usize) {
        self.held -= bytes.min(self.held);
        let charged = self.held.saturating_sub(FREE_BYTES);
        self.budget.clone_inner().add_permits(self.charged - charged);
        self.charged = charged;
    }
}

impl<S> Drop for Budgeted<S> {
    fn drop(&mut self) {
        self.give_back(self.held);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let taken = self.decoder.take_consumed();
        self.give_back(taken);
        let want = buf.remaining().min(READ_CHUNK_BYTES);
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        let needed = self.room_needed(want);
        if needed > 0 {
            let Some(room) = ready!(self.budget.poll_acquire_many(cx, needed as u32)) else {
                return Poll::Ready(Err(std::io::Error::other("the read budget is closed")));
            };
            room.forget();
            self.charged += needed;
        }
        self.held += want;
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(want));
        let read = Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        let got = limited.filled().len();
        self.give_back(want - got);
        buf.advance(got);
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use chorus_protocol::{ClientCodec, ServerCodec, pb};
    use futures::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::{FramedRead, FramedWrite};

    use super::*;

    fn ping(request_id: u64) -> pb::ClientFrame {
        pb::ClientFrame { request_id, body: Some(pb::client_frame::Body::Ping(pb::Ping {})) }
    }

    #[tokio::test]
    async fn reads_hold_room_until_their_frames_are_decoded() {
        let budget = Arc::new(Semaphore::new(1 << 20));
        let (near, far) = tokio::io::duplex(1 << 20);
        let codec = ServerCodec::default();
        let mut frames = FramedRead::new(Budgeted::new(near, Arc::clone(&budget), codec.partial()), codec);
        let (_, far_write) = tokio::io::split(far);
        let mut sender = FramedWrite::new(far_write, ClientCodec::default());
        for id in 0..3 {
            sender.send(ping(id)).await.unwrap();
        }
        // Part of a frame: its prefix claims 1 MiB, 100 KiB come.
        sender.get_mut().write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        sender.get_mut().write_all(&[0; 100 * 1024]).await.unwrap();
        sender.get_mut().flush().await.unwrap();
        for id in 0..3 {
            assert_eq!(frames.next().await.unwrap().unwrap(), ping(id));
        }
        let next = tokio::time::timeout(std::time::Duration::from_millis(50), frames.next()).await;
        assert!(next.is_err(), "part of a frame is no frame");
        // Only the partial frame's bytes past the free allowance hold room; the whole frames'
        // room came back.
        assert_eq!(budget.available_permits(), (1 << 20) - (4 + 100 * 1024 - FREE_BYTES));
        drop(frames);
        assert_eq!(budget.available_permits(), 1 << 20);
    }

    #[tokio::test]
    async fn a_spent_budget_pauses_reads_until_room_comes_back() {
        let budget = Arc::new(Semaphore::new(1 << 20));
        let held = Arc::clone(&budget).acquire_many_owned(1 << 20).await.unwrap();
        let (near, far) = tokio::io::duplex(1 << 20);
        let codec = ServerCodec::default();
        let mut frames = FramedRead::new(Budgeted::new(near, Arc::clone(&budget), codec.partial()), codec);
        let (_, far_write) = tokio::io::split(far);
        let mut sender = FramedWrite::new(far_write, ClientCodec::default());
        // A small frame goes through on the free allowance alone.
        sender.send(ping(7)).await.unwrap();
        assert_eq!(frames.next().await.unwrap().unwrap(), ping(7));
        // A frame larger than the allowance waits for room.
        let big = pb::ClientFrame {
            request_id: 8,
            body: Some(pb::client_frame::Body::Publish(pb::PublishRequest {
                topic: "t".into(),
                messages: vec![pb::Message { payload: vec![1; 200 * 1024].into(), ..Default::default() }],
                ..Default::default()
            })),
        };
        sender.send(big.clone()).await.unwrap();
        let paused = tokio::time::timeout(std::time::Duration::from_millis(50), frames.next()).await;
        assert!(paused.is_err(), "a read with no room waits");
        drop(held);
        assert_eq!(frames.next().await.unwrap().unwrap(), big);
    }
}
