//! How the node's etcd session is doing: in step or not (since when, why), the
//! revision it routes on, and how long other nodes' changes take to reach it.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tern_catalog::SourceStatus;

/// Propagation samples kept for percentiles: the latest this many.
const SAMPLES: usize = 4096;

#[derive(Debug)]
pub struct Report {
    state: Mutex<State>,
    samples: Mutex<VecDeque<f64>>,
}

#[derive(Debug)]
struct State {
    in_step: bool,
    /// When `in_step` last changed.
    since: Instant,
    revision: i64,
    last_error: Option<String>,
    resyncs: u64,
    sessions: u64,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            state: Mutex::new(State {
                in_step: false,
                since: Instant::now(),
                revision: 0,
                last_error: None,
                resyncs: 0,
                sessions: 0,
            }),
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES)),
        }
    }
}

impl Report {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn connected(&self, revision: i64) {
        let mut s = self.state();
        s.sessions += 1;
        if !s.in_step {
            if s.sessions > 1 {
                tracing::info!(revision, after = ?s.since.elapsed(), "etcd reachable again: catalog caught up");
            }
            s.in_step = true;
            s.since = Instant::now();
        }
        s.revision = revision;
        s.last_error = None;
        metrics::gauge!("tern_catalog_in_step").set(1.0);
        metrics::gauge!("tern_catalog_revision").set(revision as f64);
    }

    pub(crate) fn revision(&self, revision: i64) {
        self.state().revision = revision;
        metrics::gauge!("tern_catalog_revision").set(revision as f64);
    }

    /// The session ended; returns whether this is news (it was in step).
    pub(crate) fn lost(&self, why: &str) -> bool {
        let mut s = self.state();
        let news = s.in_step;
        if news {
            s.in_step = false;
            s.since = Instant::now();
        }
        s.last_error = Some(why.to_owned());
        metrics::gauge!("tern_catalog_in_step").set(0.0);
        news
    }

    pub(crate) fn resynced(&self, why: &'static str) {
        self.state().resyncs += 1;
        metrics::counter!("tern_catalog_resyncs_total", "reason" => why).increment(1);
    }

    /// A change another node made, seen `delay` after it made it.
    pub(crate) fn propagated(&self, delay: Duration) {
        let secs = delay.as_secs_f64();
        metrics::histogram!("tern_catalog_propagation_seconds").record(secs);
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(secs);
    }

    /// Percentiles of the kept propagation samples, in milliseconds.
    pub fn propagation_ms(&self) -> serde_json::Value {
        let mut v: Vec<f64> = self
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|s| s * 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| -> Option<f64> {
            let i = ((v.len() as f64 - 1.0) * q).round() as usize;
            v.get(i).copied()
        };
        serde_json::json!({
            "count": v.len(),
            "p50": at(0.5),
            "p90": at(0.9),
            "p99": at(0.99),
            "max": v.last(),
        })
    }
}

impl SourceStatus for Report {
    fn in_step(&self) -> bool {
        self.state().in_step
    }

    fn health_line(&self) -> String {
        let s = self.state();
        if s.in_step {
            format!("catalog: etcd, in step at revision {}", s.revision)
        } else {
            format!(
                "catalog: etcd unreachable for {:.1}s, routing on revision {} ({})",
                s.since.elapsed().as_secs_f64(),
                s.revision,
                s.last_error.as_deref().unwrap_or("not connected yet")
            )
        }
    }

    fn detail(&self) -> serde_json::Value {
        let s = self.state();
        serde_json::json!({
            "source": "etcd",
            "in_step": s.in_step,
            "for_seconds": s.since.elapsed().as_secs_f64(),
            "revision": s.revision,
            "last_error": s.last_error,
            "resyncs": s.resyncs,
            "sessions": s.sessions,
            "propagation_ms": self.propagation_ms(),
        })
    }
}
