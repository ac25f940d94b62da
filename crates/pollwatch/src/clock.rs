//! A coarse clock for stamping progress: a thread advances a shared millisecond
//! count, so a poll that made progress pays an atomic load instead of a clock read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the clock advances: the resolution of "time since progress".
pub(crate) const TICK: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub(crate) struct Clock {
    start: Instant,
    /// Milliseconds since `start`, at most one tick behind.
    coarse_ms: AtomicU64,
}

impl Clock {
    /// A clock with its ticking thread; the thread ends once the clock is dropped.
    pub(crate) fn start() -> Arc<Clock> {
        let clock = Arc::new(Clock {
            start: Instant::now(),
            coarse_ms: AtomicU64::new(0),
        });
        let weak: Weak<Clock> = Arc::downgrade(&clock);
        let spawned = std::thread::Builder::new()
            .name("pollwatch-clock".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                match weak.upgrade() {
                    Some(clock) => clock.coarse_ms.store(clock.now_ms(), Ordering::Relaxed),
                    None => return,
                }
            });
        if let Err(e) = spawned {
            // Without the thread, stamps fall back to reading the clock each time.
            tracing::warn!(error = %e, "pollwatch: no clock thread; stamping progress with the system clock");
            clock.coarse_ms.store(u64::MAX, Ordering::Relaxed);
        }
        clock
    }

    /// Exact milliseconds since the clock started.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Milliseconds since the clock started, up to one tick behind.
    pub(crate) fn coarse_ms(&self) -> u64 {
        match self.coarse_ms.load(Ordering::Relaxed) {
            u64::MAX => self.now_ms(),
            ms => ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_follows_the_exact_one_within_a_few_ticks() {
        let clock = Clock::start();
        std::thread::sleep(Duration::from_millis(120));
        let (coarse, exact) = (clock.coarse_ms(), clock.now_ms());
        assert!(coarse <= exact, "{coarse} > {exact}");
        // Generous: a loaded machine may delay the ticking thread.
        assert!(exact - coarse < 100, "coarse {coarse} ms, exact {exact} ms");
        assert!(coarse >= 20, "the clock did not tick: {coarse} ms");
    }

    #[test]
    fn the_thread_ends_with_the_clock() {
        let clock = Clock::start();
        let weak = Arc::downgrade(&clock);
        drop(clock);
        assert!(weak.upgrade().is_none());
    }
}
