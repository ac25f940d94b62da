//! Per-request metrics with their handles cached, so the hot path does no label
//! allocation or registry lookup once an (app, code, status) has been seen. The
//! cache is per thread: recording takes no lock and shares no cache line with
//! another worker (a handle is the recorder's own shared counter either way).

use foldhash::HashMap;
use std::cell::RefCell;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

/// Most apps whose handles a thread keeps; past it, handles are looked up each
/// time, so a flood of apps cannot grow memory.
const MAX_APPS: usize = 4096;
/// Most (code, status) pairs kept per app, for the same reason.
const MAX_PER_APP: usize = 64;

/// One app's handles. An app sees few distinct (code, status) pairs, so a short
/// list scanned in order beats hashing them.
struct AppMetrics {
    latency: Histogram,
    counters: Vec<((&'static str, u16), Counter)>,
}

thread_local! {
    /// This thread's handles by app, looked up by `&str` without allocating: one
    /// hash per request.
    static HANDLES: RefCell<HashMap<String, AppMetrics>> = RefCell::new(HashMap::default());
}

pub(crate) struct RequestMetrics {
    /// Request bodies being read by the buffer phase.
    pub(crate) buffering: Gauge,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            buffering: metrics::gauge!("tern_request_bodies_buffering"),
        }
    }
}

fn counter(app: &str, code: &'static str, status: u16) -> Counter {
    metrics::counter!("tern_requests_total", "app" => app.to_owned(), "code" => code, "status" => status.to_string())
}

fn latency(app: &str) -> Histogram {
    metrics::histogram!("tern_request_duration_seconds", "app" => app.to_owned())
}

impl AppMetrics {
    fn new(app: &str) -> Self {
        AppMetrics {
            latency: latency(app),
            counters: Vec::new(),
        }
    }

    fn record(&mut self, app: &str, code: &'static str, status: u16, took: Duration) {
        self.latency.record(took.as_secs_f64());
        match self.counters.iter().find(|(k, _)| *k == (code, status)) {
            Some((_, c)) => c.increment(1),
            None => {
                let c = counter(app, code, status);
                c.increment(1);
                if self.counters.len() < MAX_PER_APP {
                    self.counters.push(((code, status), c));
                }
            }
        }
    }
}

impl RequestMetrics {
    pub(crate) fn record(&self, app: &str, code: &'static str, status: u16, took: Duration) {
        let app = if app.is_empty() { "-" } else { app };
        HANDLES.with(|handles| {
            let mut apps = handles.borrow_mut();
            if let Some(m) = apps.get_mut(app) {
                m.record(app, code, status, took);
                return;
            }
            if apps.len() >= MAX_APPS {
                counter(app, code, status).increment(1);
                latency(app).record(took.as_secs_f64());
                return;
            }
            let mut fresh = AppMetrics::new(app);
            fresh.record(app, code, status, took);
            apps.insert(app.to_owned(), fresh);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_cached_per_app_and_bounded() {
        let m = RequestMetrics::default();
        for status in 0..(MAX_PER_APP as u16 + 10) {
            m.record("web", "ok", 100 + status, Duration::from_millis(1));
            m.record("web", "ok", 100 + status, Duration::from_millis(1));
        }
        m.record("", "no_app_for_host", 404, Duration::ZERO);
        HANDLES.with(|h| {
            let apps = h.borrow();
            assert_eq!(apps.len(), 2);
            assert_eq!(apps["web"].counters.len(), MAX_PER_APP);
            assert_eq!(apps["-"].counters.len(), 1);
        });
        // Another thread has handles of its own.
        std::thread::scope(|s| {
            s.spawn(|| {
                m.record("web", "ok", 200, Duration::ZERO);
                HANDLES.with(|h| assert_eq!(h.borrow()["web"].counters.len(), 1));
            });
        });
    }
}
