//! openraft's async runtime for Chorus: tokio, with one difference. openraft draws its election
//! timeouts from `thread_rng()`; here that generator can be seeded per thread
//! ([`seed_thread_rng`]) so a simulation that runs every broker on one thread replays the same
//! elections from the same seed. Unseeded threads (every real broker) use `rand::thread_rng()`.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};
use rand08::{RngCore, SeedableRng};

thread_local! {
    static SEEDED: RefCell<Option<rand08::rngs::StdRng>> = const { RefCell::new(None) };
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
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
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
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
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
