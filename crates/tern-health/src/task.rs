//! The life of one check task: wait out the grace period, then probe every interval.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{interval, MissedTickBehavior};

use crate::plan::CheckSpec;
use crate::slot::SlotHealth;

/// Floor for a check's interval: tokio panics on a zero period, and a near-zero one
/// would turn a check into a busy loop against the machine.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Runs until aborted by the checker. Each probe is bounded by its own timeout,
/// so a hung machine delays the next tick rather than stacking probes up.
pub(crate) async fn run_check(
    id: u64,
    spec: CheckSpec,
    health: Arc<SlotHealth>,
    watchdog: Option<pollwatch::Watchdog>,
) {
    // A machine that has just started is still booting; failing it now would only
    // log noise and flap it out of rotation.
    tokio::time::sleep(spec.grace_period).await;
    let mut ticks = interval(spec.interval.max(MIN_INTERVAL));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = spec.probe.run_watched(watchdog.as_ref()).await;
        metrics::counter!(
            "tern_health_checks_total",
            "app" => spec.app.clone(),
            "kind" => spec.probe.kind(),
            "result" => if result.is_ok() { "pass" } else { "fail" },
        )
        .increment(1);
        if let Err(reason) = &result {
            // Transitions are logged by the slot; single failures only at debug.
            tracing::debug!(app = %spec.app, kind = spec.probe.kind(), %reason, "check failed");
        }
        health.record(id, result);
    }
}
