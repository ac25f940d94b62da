//! A future that, every N polls counted over all such futures on its thread,
//! offers the thread's CPU to the kernel (`sched_yield`) after its poll.
//!
//! Why: a worker that always finds work never sleeps, and the kernel switches
//! from a thread that does not sleep to the other runnable threads on its CPU
//! only at its tick (4 ms at HZ=250). On a host whose CPUs Tern shares with the
//! machines and their clients, those threads then wait up to a tick for the
//! CPU while a request they must answer waits on them (bench/NOTES.md,
//! fourteenth session). A yield with nothing else runnable returns at once.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

thread_local! {
    /// Polls on this thread since it last yielded.
    static POLLS: Cell<u32> = const { Cell::new(0) };
}

#[cfg(test)]
thread_local! {
    /// Yields made on this thread. Whether the kernel switched threads then is
    /// its choice, and the benchmark's to show (bench/layouts).
    static YIELDED: Cell<u32> = const { Cell::new(0) };
}

pin_project_lite::pin_project! {
    /// `future`, yielding its thread after every `every`-th poll on that
    /// thread; with `every` 0, never.
    pub struct ThreadYield<F> {
        #[pin]
        future: F,
        every: u32,
    }
}

impl<F> ThreadYield<F> {
    pub fn new(future: F, every: u32) -> Self {
        ThreadYield { future, every }
    }
}

impl<F: Future> Future for ThreadYield<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let polled = this.future.poll(cx);
        if *this.every != 0 {
            after_poll(*this.every);
        }
        polled
    }
}

/// Counts a poll on this thread and yields it when the count reaches `every`.
fn after_poll(every: u32) {
    let due = POLLS.with(|polls| {
        let n = polls.get() + 1;
        let due = n >= every;
        polls.set(if due { 0 } else { n });
        due
    });
    if due {
        #[cfg(test)]
        YIELDED.with(|y| y.set(y.get() + 1));
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_n(every: u32, n: u32) {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut fut = std::pin::pin!(ThreadYield::new(std::future::pending::<()>(), every));
        for _ in 0..n {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
    }

    fn reset() {
        POLLS.with(|p| p.set(0));
        YIELDED.with(|y| y.set(0));
    }

    #[test]
    fn counts_polls_over_the_thread_and_yields_at_each_nth() {
        reset();
        poll_n(4, 3);
        assert_eq!((POLLS.with(Cell::get), YIELDED.with(Cell::get)), (3, 0));
        // A second future on the same thread continues the same count.
        poll_n(4, 1);
        assert_eq!((POLLS.with(Cell::get), YIELDED.with(Cell::get)), (0, 1));
        poll_n(4, 406);
        assert_eq!((POLLS.with(Cell::get), YIELDED.with(Cell::get)), (2, 102));
    }

    #[test]
    fn zero_never_counts_or_yields() {
        reset();
        poll_n(0, 100);
        assert_eq!((POLLS.with(Cell::get), YIELDED.with(Cell::get)), (0, 0));
    }
}
