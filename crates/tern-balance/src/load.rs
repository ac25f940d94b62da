//! Live load of one machine for one service, and the band it puts the machine in.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// How loaded a machine is, in the order the balancer prefers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Band {
    /// Below the soft limit.
    UnderSoft,
    /// At or above the soft limit, below the hard limit.
    OverSoft,
    /// At the hard limit: takes no more.
    AtHard,
}

impl Band {
    pub const ALL: [Band; 3] = [Band::UnderSoft, Band::OverSoft, Band::AtHard];

    pub fn as_str(self) -> &'static str {
        match self {
            Band::UnderSoft => "under_soft",
            Band::OverSoft => "over_soft",
            Band::AtHard => "at_hard",
        }
    }
}

/// A service's soft and hard limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub soft: u32,
    pub hard: u32,
}

impl Limits {
    pub fn band(&self, active: u32) -> Band {
        if active >= self.hard {
            Band::AtHard
        } else if active >= self.soft {
            Band::OverSoft
        } else {
            Band::UnderSoft
        }
    }
}

/// Units (connections or requests) in flight to one machine for one service.
///
/// Shared by every snapshot of the catalog, so a swap never loses the count.
#[derive(Debug, Default)]
pub struct Load {
    active: AtomicU32,
    /// Units ever taken: whether a machine was used between two looks at it
    /// (autostop's idle clock), even by requests that came and went.
    taken: AtomicU64,
    /// Woken whenever a unit is released anywhere that shares this notifier.
    released: Arc<Notify>,
}

impl Load {
    /// A load whose releases wake `released` (the service's wait queue).
    pub fn with_notify(released: Arc<Notify>) -> Self {
        Load {
            active: AtomicU32::new(0),
            taken: AtomicU64::new(0),
            released,
        }
    }

    /// Whether releases ring `notify`.
    pub fn notifies(&self, notify: &Arc<Notify>) -> bool {
        Arc::ptr_eq(&self.released, notify)
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// Units taken since the load was made.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Takes one unit if that keeps the load within `hard`; the guard gives it back.
    pub fn try_acquire(self: &Arc<Self>, hard: u32) -> Option<LoadGuard> {
        let mut cur = self.active.load(Ordering::Acquire);
        loop {
            if cur >= hard {
                return None;
            }
            match self.active.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.taken.fetch_add(1, Ordering::Relaxed);
                    return Some(LoadGuard {
                        load: Arc::clone(self),
                    });
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

/// One unit of load, released on drop.
#[derive(Debug)]
pub struct LoadGuard {
    load: Arc<Load>,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.load.active.fetch_sub(1, Ordering::AcqRel);
        self.load.released.notify_waiters();
        self.load.released.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_follow_limits() {
        let l = Limits { soft: 2, hard: 4 };
        assert_eq!(l.band(0), Band::UnderSoft);
        assert_eq!(l.band(1), Band::UnderSoft);
        assert_eq!(l.band(2), Band::OverSoft);
        assert_eq!(l.band(3), Band::OverSoft);
        assert_eq!(l.band(4), Band::AtHard);
        assert_eq!(l.band(9), Band::AtHard);
    }

    #[test]
    fn acquire_stops_at_hard_and_guard_releases() {
        let load = Arc::new(Load::default());
        let a = load.try_acquire(2).unwrap();
        let _b = load.try_acquire(2).unwrap();
        assert!(load.try_acquire(2).is_none());
        assert_eq!(load.active(), 2);
        drop(a);
        assert_eq!(load.active(), 1);
        assert!(load.try_acquire(2).is_some());
        assert_eq!(load.taken(), 3);
    }
}
