//! The proxy's settings that a reload may change, each in an atomic: every
//! request reads several of them and a reload is rare, so a read is one plain
//! load, with no reference count or lock to take. A request may see one
//! reload's value of one setting and the previous reload's of another.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// What the proxy needs from the configuration.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// This node's region, sent as `Tern-Region`.
    pub region: String,
    pub connect_attempts: usize,
    pub response_header_timeout: Duration,
    pub queue_timeout: Duration,
    pub connect_timeout: Duration,
    /// A request body that makes no progress for this long ends its request.
    pub body_read_timeout: Duration,
    /// How much of a request body is read before a machine is chosen; 0 for
    /// none.
    pub request_buffer: usize,
    /// Test-only: `/__tern_test/spin` never completes and wakes itself forever,
    /// the shape of the close_notify busy loop, for testing the spin watchdog.
    pub test_hooks: bool,
}

/// The reloadable part of `ProxySettings`.
pub(crate) struct LiveSettings {
    connect_attempts: AtomicUsize,
    response_header_timeout: AtomicU64,
    queue_timeout: AtomicU64,
    connect_timeout: AtomicU64,
    body_read_timeout: AtomicU64,
    request_buffer: AtomicUsize,
}

impl LiveSettings {
    pub(crate) fn new(s: &ProxySettings) -> Self {
        let live = LiveSettings {
            connect_attempts: AtomicUsize::new(0),
            response_header_timeout: AtomicU64::new(0),
            queue_timeout: AtomicU64::new(0),
            connect_timeout: AtomicU64::new(0),
            body_read_timeout: AtomicU64::new(0),
            request_buffer: AtomicUsize::new(0),
        };
        live.store(s);
        live
    }

    pub(crate) fn store(&self, s: &ProxySettings) {
        self.connect_attempts.store(s.connect_attempts, Relaxed);
        self.response_header_timeout
            .store(nanos(s.response_header_timeout), Relaxed);
        self.queue_timeout.store(nanos(s.queue_timeout), Relaxed);
        self.connect_timeout
            .store(nanos(s.connect_timeout), Relaxed);
        self.body_read_timeout
            .store(nanos(s.body_read_timeout), Relaxed);
        self.request_buffer.store(s.request_buffer, Relaxed);
    }

    pub(crate) fn connect_attempts(&self) -> usize {
        self.connect_attempts.load(Relaxed)
    }

    pub(crate) fn response_header_timeout(&self) -> Duration {
        Duration::from_nanos(self.response_header_timeout.load(Relaxed))
    }

    pub(crate) fn queue_timeout(&self) -> Duration {
        Duration::from_nanos(self.queue_timeout.load(Relaxed))
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_nanos(self.connect_timeout.load(Relaxed))
    }

    pub(crate) fn body_read_timeout(&self) -> Duration {
        Duration::from_nanos(self.body_read_timeout.load(Relaxed))
    }

    pub(crate) fn request_buffer(&self) -> usize {
        self.request_buffer.load(Relaxed)
    }
}

/// A duration in nanoseconds, saturating (584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_replaces_every_setting() {
        let mut s = ProxySettings {
            region: "ams".into(),
            connect_attempts: 3,
            response_header_timeout: Duration::from_secs(60),
            queue_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_millis(1500),
            body_read_timeout: Duration::from_secs(60),
            request_buffer: 16 << 10,
            test_hooks: false,
        };
        let live = LiveSettings::new(&s);
        assert_eq!(live.connect_timeout(), Duration::from_millis(1500));
        s.connect_attempts = 1;
        s.response_header_timeout = Duration::from_secs(2);
        s.queue_timeout = Duration::from_millis(10);
        s.connect_timeout = Duration::from_secs(1);
        s.body_read_timeout = Duration::MAX;
        s.request_buffer = 0;
        live.store(&s);
        assert_eq!(live.connect_attempts(), 1);
        assert_eq!(live.response_header_timeout(), Duration::from_secs(2));
        assert_eq!(live.queue_timeout(), Duration::from_millis(10));
        assert_eq!(live.connect_timeout(), Duration::from_secs(1));
        assert_eq!(live.body_read_timeout(), Duration::from_nanos(u64::MAX));
        assert_eq!(live.request_buffer(), 0);
    }
}
