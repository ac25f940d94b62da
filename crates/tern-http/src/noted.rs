//! Which app and machine a connection last told its spin-watchdog probe about, so
//! that a keep-alive connection pays one atomic load per request instead of a lock
//! and a string comparison.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The last value noted, compared by address. The `Arc` is held so that its
/// address cannot be reused by another entry while it is remembered.
#[derive(Debug)]
pub(crate) struct Noted<T> {
    addr: AtomicUsize,
    held: Mutex<Option<Arc<T>>>,
}

impl<T> Default for Noted<T> {
    fn default() -> Self {
        Noted {
            addr: AtomicUsize::new(0),
            held: Mutex::new(None),
        }
    }
}

impl<T> Noted<T> {
    /// Remembers `current` and says whether it differs from what was remembered.
    #[inline]
    pub(crate) fn changed(&self, current: &Arc<T>) -> bool {
        let addr = Arc::as_ptr(current) as usize;
        if self.addr.load(Ordering::Acquire) == addr {
            return false;
        }
        self.remember(current, addr);
        true
    }

    #[cold]
    fn remember(&self, current: &Arc<T>, addr: usize) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        *held = Some(Arc::clone(current));
        self.addr.store(addr, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_different_entry_counts_as_a_change() {
        let noted = Noted::default();
        let a = Arc::new("web");
        let b = Arc::new("web");
        assert!(noted.changed(&a));
        assert!(!noted.changed(&a));
        assert!(!noted.changed(&Arc::clone(&a)));
        // Equal contents, another entry (a reloaded catalog): noted again.
        assert!(noted.changed(&b));
        assert!(noted.changed(&a));
    }
}
