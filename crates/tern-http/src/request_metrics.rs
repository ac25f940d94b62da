//! Per-request metrics with their handles cached, so the hot path does no label
//! allocation or registry lookup once an (app, code, status) has been seen.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use metrics::{Counter, Histogram};

/// Most distinct label sets kept; past it, handles are looked up each time, so a
/// flood of odd status codes cannot grow memory.
const MAX_CACHED: usize = 4096;

/// One app's request counters, by (code, status).
type AppCounters = HashMap<(&'static str, u16), Counter>;

#[derive(Default)]
pub(crate) struct RequestMetrics {
    /// By app, then by (code, status): looked up by `&str`, without allocating.
    counters: Mutex<HashMap<String, AppCounters>>,
    latencies: Mutex<HashMap<String, Histogram>>,
}

impl RequestMetrics {
    pub(crate) fn record(&self, app: &str, code: &'static str, status: u16, took: Duration) {
        let app = if app.is_empty() { "-" } else { app };
        {
            let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
            match counters.get(app).and_then(|m| m.get(&(code, status))) {
                Some(c) => c.increment(1),
                None => {
                    let c = metrics::counter!("tern_requests_total", "app" => app.to_owned(), "code" => code, "status" => status.to_string());
                    c.increment(1);
                    let cached: usize = counters.values().map(HashMap::len).sum();
                    if cached < MAX_CACHED {
                        counters
                            .entry(app.to_owned())
                            .or_default()
                            .insert((code, status), c);
                    }
                }
            }
        }
        let mut latencies = self
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match latencies.get(app) {
            Some(h) => h.record(took.as_secs_f64()),
            None => {
                let h =
                    metrics::histogram!("tern_request_duration_seconds", "app" => app.to_owned());
                h.record(took.as_secs_f64());
                if latencies.len() < MAX_CACHED {
                    latencies.insert(app.to_owned(), h);
                }
            }
        }
    }
}
