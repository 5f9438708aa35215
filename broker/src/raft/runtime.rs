//! openraft's async runtime for Chorus: tokio, with two differences.
//!
//! - openraft draws its election timeouts from `thread_rng()`; here that generator can be seeded
//!   per thread ([`seed_thread_rng`]) so a simulation that runs every broker on one thread replays
//!   the same elections from the same seed. Unseeded threads (every real broker) use
//!   `rand::thread_rng()`.
//! - A future run under [`ChorusRuntime::timeout`] may ask for more time ([`allow_until`]).
//!   openraft 0.9.25 gives every AppendEntries its heartbeat interval (100 ms), whatever it
//!   carries; the peer network, which knows how many bytes it sends, stretches that deadline so
//!   a large append is not taken for a dead follower (issue 19, case 5).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};
use rand08::{RngCore, SeedableRng};

thread_local! {
    static SEEDED: RefCell<Option<rand08::rngs::StdRng>> = const { RefCell::new(None) };
    /// Set by a future inside a [`Stretchable`] timeout while it is polled: the time, from the
    /// timeout's start, the future may take.
    static ALLOWED: Cell<Option<Duration>> = const { Cell::new(None) };
}

/// Lets the future being polled take `total` from the start of the [`ChorusRuntime::timeout`]
/// that runs it, if that is later than its deadline. Outside such a timeout it does nothing.
pub fn allow_until(total: Duration) {
    ALLOWED.with(|allowed| allowed.set(Some(total)));
}

/// A timeout whose deadline the future it runs may push back ([`allow_until`]).
pub struct Stretchable<F> {
    future: Pin<Box<F>>,
    started: tokio::time::Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<F> std::fmt::Debug for Stretchable<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stretchable").field("deadline", &self.sleep.deadline()).finish_non_exhaustive()
    }
}

/// A [`Stretchable`] timeout that ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline has elapsed")]
pub struct Elapsed;

impl<F: Future> Stretchable<F> {
    fn new(deadline: tokio::time::Instant, future: F) -> Stretchable<F> {
        let started = tokio::time::Instant::now();
        Stretchable { future: Box::pin(future), started, sleep: Box::pin(tokio::time::sleep_until(deadline)) }
    }
}

impl<F: Future> Future for Stretchable<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let outer = ALLOWED.with(|allowed| allowed.take());
        let polled = self.future.as_mut().poll(cx);
        let asked = ALLOWED.with(|allowed| allowed.replace(outer));
        if let Poll::Ready(output) = polled {
            return Poll::Ready(Ok(output));
        }
        if let Some(total) = asked {
            let deadline = self.started + total;
            if deadline > self.sleep.deadline() {
                self.sleep.as_mut().reset(deadline);
            }
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Makes this thread's election timeouts follow `seed`. For simulations only.
pub fn seed_thread_rng(seed: u64) {
    SEEDED.with(|rng| *rng.borrow_mut() = Some(rand08::rngs::StdRng::seed_from_u64(seed)));
}

/// The thread's generator: the seeded one if [`seed_thread_rng`] was called, else the OS-seeded
/// `rand::thread_rng()`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadRng;

impl ThreadRng {
    fn with<T>(f: impl FnOnce(&mut dyn RngCore) -> T) -> T {
        SEEDED.with(|seeded| match seeded.borrow_mut().as_mut() {
            Some(rng) => f(rng),
            None => f(&mut rand08::thread_rng()),
        })
    }
}

impl RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        ThreadRng::with(|rng| rng.next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        ThreadRng::with(|rng| rng.next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        ThreadRng::with(|rng| rng.fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        ThreadRng::with(|rng| rng.try_fill_bytes(dest))
    }
}

/// tokio, with a seedable `thread_rng`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChorusRuntime;

impl AsyncRuntime for ChorusRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Stretchable<T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        Stretchable::new(tokio::time::Instant::now() + duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        Stretchable::new(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(sender), receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand08::Rng;

    #[tokio::test(start_paused = true)]
    async fn a_future_may_ask_its_timeout_for_more_time() {
        let slow = || tokio::time::sleep(Duration::from_millis(200));
        let plain = ChorusRuntime::timeout(Duration::from_millis(100), slow()).await;
        assert_eq!(plain, Err(Elapsed));
        let asking = async {
            allow_until(Duration::from_millis(300));
            slow().await
        };
        assert_eq!(ChorusRuntime::timeout(Duration::from_millis(100), asking).await, Ok(()));
        let too_slow = async {
            allow_until(Duration::from_millis(150));
            slow().await
        };
        assert_eq!(ChorusRuntime::timeout(Duration::from_millis(100), too_slow).await, Err(Elapsed));
        // Asking never shortens a deadline, and outside a timeout it is forgotten.
        let shorter = async {
            allow_until(Duration::from_millis(10));
            slow().await
        };
        assert_eq!(ChorusRuntime::timeout(Duration::from_millis(300), shorter).await, Ok(()));
        allow_until(Duration::from_secs(60));
        assert_eq!(ChorusRuntime::timeout(Duration::from_millis(100), slow()).await, Err(Elapsed));
    }

    #[test]
    fn a_seeded_thread_repeats_its_draws() {
        let draw = || (0..8).map(|_| ChorusRuntime::thread_rng().gen_range(400..800)).collect::<Vec<u64>>();
        seed_thread_rng(42);
        let first = draw();
        seed_thread_rng(42);
        assert_eq!(draw(), first);
        seed_thread_rng(43);
        assert_ne!(draw(), first);
    }
}
