//! A coarse clock for stamping progress: one thread per process advances a shared
//! millisecond count, so a poll that made progress pays an atomic load instead of a
//! clock read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often the clock advances: the resolution of "time since progress". Each
/// tick wakes a thread, which on a busy core costs tens of microseconds of
/// context switching: at 10 ms that was 0.6% of a loaded proxy's CPU, at 100 ms
/// it is a tenth of that (bench/NOTES.md, scenario 7).
pub(crate) const TICK: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub(crate) struct Clock {
    start: Instant,
    /// Milliseconds since `start`, at most one tick behind; `u64::MAX` when no
    /// thread keeps it.
    coarse_ms: AtomicU64,
}

static CLOCK: OnceLock<Clock> = OnceLock::new();

/// The process's clock, started (with its thread) on first use. A static rather
/// than a field of each connection: the hot path reads it without a pointer hop.
#[inline]
pub(crate) fn clock() -> &'static Clock {
    CLOCK.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("pollwatch-clock".into())
            .spawn(|| loop {
                std::thread::sleep(TICK);
                if let Some(clock) = CLOCK.get() {
                    clock.coarse_ms.store(clock.now_ms(), Ordering::Relaxed);
                }
            });
        let coarse = match spawned {
            Ok(_) => 0,
            Err(e) => {
                // Without the thread, stamps fall back to reading the clock.
                tracing::warn!(error = %e, "pollwatch: no clock thread; stamping progress with the system clock");
                u64::MAX
            }
        };
        Clock {
            start: Instant::now(),
            coarse_ms: AtomicU64::new(coarse),
        }
    })
}

/// Milliseconds on the process's coarse clock: up to one tick (100 ms) behind
/// the exact time, for an atomic load. For deadlines that tolerate that lag
/// (the clock's thread starts on first use).
pub fn coarse_millis() -> u64 {
    clock().coarse_ms()
}

impl Clock {
    /// Exact milliseconds since the clock started.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Milliseconds since the clock started, up to one tick behind.
    #[inline]
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
        let clock = clock();
        let first = clock.coarse_ms();
        std::thread::sleep(3 * TICK + TICK / 2);
        let (coarse, exact) = (clock.coarse_ms(), clock.now_ms());
        assert!(coarse <= exact, "{coarse} > {exact}");
        // Generous: a loaded machine may delay the ticking thread.
        let tick = TICK.as_millis() as u64;
        assert!(
            exact - coarse < 3 * tick,
            "coarse {coarse} ms, exact {exact} ms"
        );
        assert!(
            coarse >= first + tick,
            "the clock did not tick: {first} -> {coarse} ms"
        );
    }
}
