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
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Voluntary context switches of this thread, from /proc: a `sched_yield`
    /// with nothing else runnable may not switch, so the test makes the CPU
    /// busy with other threads first.
    fn switches() -> u64 {
        let tid = thread_id();
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        status
            .lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches")
                    || l.starts_with("nonvoluntary_ctxt_switches")
            })
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
            .sum()
    }

    fn thread_id() -> i32 {
        std::fs::read_link("/proc/thread-self")
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn poll_n(every: u32, n: u32) {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut fut = std::pin::pin!(ThreadYield::new(std::future::pending::<()>(), every));
        for _ in 0..n {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
    }

    #[test]
    fn counts_polls_over_the_thread_and_restarts_after_each_yield() {
        POLLS.with(|p| p.set(0));
        poll_n(4, 3);
        assert_eq!(POLLS.with(Cell::get), 3);
        // A second future on the same thread continues the same count.
        poll_n(4, 1);
        assert_eq!(
            POLLS.with(Cell::get),
            0,
            "the fourth poll yields and restarts the count"
        );
        poll_n(4, 6);
        assert_eq!(POLLS.with(Cell::get), 2);
    }

    #[test]
    fn zero_never_counts_or_yields() {
        POLLS.with(|p| p.set(0));
        poll_n(0, 100);
        assert_eq!(POLLS.with(Cell::get), 0);
    }

    #[test]
    fn a_due_poll_gives_the_cpu_to_a_waiting_thread() {
        // Keep every CPU busy, so that a yield has someone to yield to.
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinners: Vec<_> = (0..cpus * 2)
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let (before_never, after_never) = {
            let b = switches();
            poll_n(0, 200);
            (b, switches())
        };
        let (before, after) = {
            let b = switches();
            poll_n(1, 200);
            (b, switches())
        };
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for s in spinners {
            s.join().unwrap();
        }
        assert!(
            after - before > (after_never - before_never) + 20,
            "200 yields gave {} switches, 200 plain polls {}",
            after - before,
            after_never - before_never
        );
    }
}
