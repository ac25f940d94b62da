//! Tokio's runtime counters on /metrics: how busy each worker is, how much it
//! polls, steals and parks, and how deep the queues are.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The previous scrape's busy times, to turn them into a ratio over the interval.
#[derive(Debug, Default)]
pub struct BusyTracker {
    last: Mutex<Option<(Instant, Vec<Duration>)>>,
}

impl BusyTracker {
    pub fn publish(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let m = handle.metrics();
        let workers = m.num_workers();
        metrics::gauge!("tokio_workers").set(workers as f64);
        metrics::gauge!("tokio_alive_tasks").set(m.num_alive_tasks() as f64);
        metrics::gauge!("tokio_global_queue_depth").set(m.global_queue_depth() as f64);
        let now = Instant::now();
        let busy: Vec<Duration> = (0..workers)
            .map(|w| m.worker_total_busy_duration(w))
            .collect();
        for (w, b) in busy.iter().enumerate() {
            let worker = w.to_string();
            metrics::gauge!("tokio_worker_busy_seconds", "worker" => worker.clone())
                .set(b.as_secs_f64());
            metrics::counter!("tokio_worker_parks_total", "worker" => worker.clone())
                .absolute(m.worker_park_count(w));
            #[cfg(tokio_unstable)]
            {
                metrics::counter!("tokio_worker_polls_total", "worker" => worker.clone())
                    .absolute(m.worker_poll_count(w));
                metrics::counter!("tokio_worker_steals_total", "worker" => worker.clone())
                    .absolute(m.worker_steal_count(w));
                metrics::gauge!("tokio_worker_local_queue_depth", "worker" => worker.clone())
                    .set(m.worker_local_queue_depth(w) as f64);
            }
        }
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((then, prev)) = last.as_ref() {
            let span = now.duration_since(*then).as_secs_f64();
            if span > 0.0 {
                for (w, (b, p)) in busy.iter().zip(prev).enumerate() {
                    let ratio = b.saturating_sub(*p).as_secs_f64() / span;
                    metrics::gauge!("tokio_worker_busy_ratio", "worker" => w.to_string())
                        .set(ratio.min(1.0));
                }
            }
        }
        *last = Some((now, busy));
    }
}
