//! The last spins the watchdog found, kept for whoever looks (a dashboard): a
//! bounded list, one entry per connection's first spin.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// How many spins are kept; older ones are dropped.
pub const RECENT_SPINS: usize = 64;

/// One spin as it was found.
#[derive(Debug, Clone)]
pub struct SpinRecord {
    /// When it was found.
    pub at: SystemTime,
    /// The connection's id (as in [`crate::ConnSnapshot`]).
    pub conn: u64,
    /// What was seen: polls without progress, or the stuck state reported.
    pub cause: String,
    /// The streak's polls per second (0 for a stuck state).
    pub polls_per_sec: f64,
    /// What the watchdog did: `close`, `log` or `backoff`.
    pub action: &'static str,
    /// The connection's context at that moment (peer, SNI, app, machine, ...).
    pub context: Vec<(String, String)>,
}

#[derive(Debug, Default)]
pub(crate) struct RecentSpins(Mutex<VecDeque<SpinRecord>>);

impl RecentSpins {
    pub(crate) fn push(&self, record: SpinRecord) {
        let mut list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if list.len() == RECENT_SPINS {
            list.pop_front();
        }
        list.push_back(record);
    }

    /// Newest first.
    pub(crate) fn list(&self) -> Vec<SpinRecord> {
        let list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter().rev().cloned().collect()
    }
}

/// Polls per second of a streak of `polls` within `within`.
pub(crate) fn rate(polls: u64, within: Duration) -> f64 {
    let secs = within.as_secs_f64();
    if polls == 0 || secs <= 0.0 {
        0.0
    } else {
        polls as f64 / secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(conn: u64) -> SpinRecord {
        SpinRecord {
            at: SystemTime::now(),
            conn,
            cause: "test".into(),
            polls_per_sec: 1.0,
            action: "close",
            context: Vec::new(),
        }
    }

    #[test]
    fn keeps_the_newest_first_and_at_most_the_bound() {
        let recent = RecentSpins::default();
        for conn in 0..(RECENT_SPINS as u64 + 10) {
            recent.push(record(conn));
        }
        let list = recent.list();
        assert_eq!(list.len(), RECENT_SPINS);
        assert_eq!(list[0].conn, RECENT_SPINS as u64 + 9);
        assert_eq!(list[RECENT_SPINS - 1].conn, 10);
    }

    #[test]
    fn a_rate_over_no_time_is_zero_not_infinite() {
        assert_eq!(rate(1000, Duration::ZERO), 0.0);
        assert_eq!(rate(0, Duration::from_millis(10)), 0.0);
        assert_eq!(rate(1000, Duration::from_millis(100)), 10_000.0);
    }
}
