//! Orders that handshakes ask for (ACME on demand): the TLS listener asks for a
//! hostname it holds no certificate for and waits; the ACME task orders it, but
//! only if an app claims the name, and says how it went.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

/// How an asked-for order ended: `Some(true)` when a certificate is served.
pub type Outcome = watch::Receiver<Option<bool>>;

/// What a handshake that asks for a certificate is told.
#[derive(Debug)]
pub enum Asked {
    /// No app claims the name: nothing is ordered.
    Unclaimed,
    /// The name's last order failed and its retry is not due: no certificate
    /// now, and nothing ordered.
    HeldOff,
    /// An order is asked for (or already under way): its outcome, to wait on.
    Ordering(Outcome),
}

/// The hostnames that may be ordered on demand, and the orders handshakes wait on.
#[derive(Debug)]
pub struct OnDemand {
    wait: Duration,
    claimed: Mutex<HashSet<String>>,
    /// One entry per asked hostname (all claimed, so bounded by the catalog).
    asked: Mutex<HashMap<String, watch::Sender<Option<bool>>>>,
    /// Claimed names not to ask for before a time (bounded likewise).
    held_off: Mutex<HashMap<String, Instant>>,
    wake: Notify,
}

impl OnDemand {
    /// Handshakes wait at most `wait` for an order.
    pub fn new(wait: Duration) -> OnDemand {
        OnDemand {
            wait,
            claimed: Mutex::default(),
            asked: Mutex::default(),
            held_off: Mutex::default(),
            wake: Notify::new(),
        }
    }

    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// The names apps claim: only these are ever ordered.
    pub fn set_claimed(&self, names: impl IntoIterator<Item = String>) {
        *lock(&self.claimed) = names.into_iter().collect();
    }

    /// Asks for a certificate for `hostname`, joining an order already asked
    /// for. Nothing is ordered for a name no app claims, nor for one held off
    /// after a failure.
    pub fn ask(&self, hostname: &str) -> Asked {
        let name = hostname.trim_end_matches('.').to_ascii_lowercase();
        if !lock(&self.claimed).contains(&name) {
            return Asked::Unclaimed;
        }
        if lock(&self.held_off)
            .get(&name)
            .is_some_and(|until| *until > Instant::now())
        {
            return Asked::HeldOff;
        }
        let mut asked = lock(&self.asked);
        let fresh = !asked.contains_key(&name);
        let outcome = asked
            .entry(name)
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        drop(asked);
        if fresh {
            self.wake.notify_one();
        }
        Asked::Ordering(outcome)
    }

    /// Answers handshakes for `hostname` at once, with no certificate, until
    /// `until` (its order failed and waits for its retry).
    pub fn hold_off(&self, hostname: &str, until: Instant) {
        let mut held = lock(&self.held_off);
        held.retain(|_, t| *t > Instant::now());
        held.insert(hostname.to_owned(), until);
    }

    /// The hostnames asked for and not yet answered.
    pub fn asked(&self) -> Vec<String> {
        lock(&self.asked).keys().cloned().collect()
    }

    /// Resolves when a hostname has been asked for since the last call.
    pub async fn asked_again(&self) {
        self.wake.notified().await
    }

    /// Tells every handshake waiting on `hostname` whether it is now served.
    pub fn answer(&self, hostname: &str, served: bool) {
        if let Some(waiting) = lock(&self.asked).remove(hostname) {
            waiting.send_replace(Some(served));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain sets and maps, never left half-written by a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_claimed_names_are_asked_for_and_waiters_share_one_answer() {
        let od = OnDemand::new(Duration::from_secs(1));
        od.set_claimed(["a.test".to_owned()]);
        let ordering = |asked: Asked| match asked {
            Asked::Ordering(outcome) => outcome,
            other => panic!("claimed, so ordered: {other:?}"),
        };
        assert!(
            matches!(od.ask("b.test"), Asked::Unclaimed),
            "an unclaimed name orders nothing"
        );
        assert!(od.asked().is_empty());
        let first = ordering(od.ask("A.test."));
        let second = ordering(od.ask("a.test"));
        assert_eq!(od.asked(), vec!["a.test".to_owned()], "one order for both");
        od.answer("a.test", true);
        assert_eq!(*first.borrow(), Some(true));
        assert_eq!(*second.borrow(), Some(true));
        assert!(od.asked().is_empty());

        od.hold_off("a.test", Instant::now() + Duration::from_secs(60));
        assert!(matches!(od.ask("a.test"), Asked::HeldOff));
        assert!(od.asked().is_empty(), "nothing asked for");
        od.hold_off("a.test", Instant::now());
        ordering(od.ask("a.test"));
    }
}
