//! A bound on orders per hostname per hour, so that a misconfiguration (a name
//! whose validation always fails) cannot get the account rate-limited or banned.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub(crate) struct OrderLimiter {
    per_hour: usize,
    started: HashMap<String, VecDeque<Instant>>,
}

impl OrderLimiter {
    pub(crate) fn new(per_hour: u32) -> Self {
        OrderLimiter {
            per_hour: usize::try_from(per_hour).unwrap_or(usize::MAX),
            started: HashMap::new(),
        }
    }

    /// Records an order for `hostname` at `now` if the hour's bound allows one;
    /// otherwise says when it will.
    pub(crate) fn try_start(&mut self, hostname: &str, now: Instant) -> Result<(), Instant> {
        let times = self.started.entry(hostname.to_owned()).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= HOUR)
        {
            times.pop_front();
        }
        if times.len() >= self.per_hour {
            return Err(times.front().map_or(now, |t| *t + HOUR));
        }
        times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_each_hostname_per_hour_on_its_own() {
        let t0 = Instant::now();
        let mut l = OrderLimiter::new(2);
        assert!(l.try_start("a.test", t0).is_ok());
        assert!(l.try_start("a.test", t0 + Duration::from_secs(1)).is_ok());
        assert_eq!(
            l.try_start("a.test", t0 + Duration::from_secs(2)),
            Err(t0 + HOUR)
        );
        assert!(l.try_start("b.test", t0 + Duration::from_secs(2)).is_ok());
        assert!(
            l.try_start("a.test", t0 + HOUR).is_ok(),
            "the first order has aged out"
        );
    }
}
