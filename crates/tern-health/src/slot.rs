//! The health of one machine for one service: the latest result of each of its
//! checks, folded into the slot's healthy flag, with every transition logged and counted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tern_catalog::ServiceSlot;

use crate::probe::ProbeError;

/// Shared by the checker and every check task of one (machine, internal port).
#[derive(Debug)]
pub(crate) struct SlotHealth {
    app: String,
    machine: String,
    port: u16,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The catalog may hand out a new slot object for the same machine and port
    /// (when the service's limits change); results apply to the current one.
    slot: Arc<ServiceSlot>,
    /// Keyed by task id rather than check key, so a task aborted mid-probe cannot
    /// overwrite the result of the task that replaced it.
    checks: BTreeMap<u64, CheckState>,
}

#[derive(Debug)]
pub(crate) struct CheckState {
    name: String,
    /// `None` until the check has run once; a check that has not run yet does not
    /// hold the machine out (the slot starts healthy, as nginx and HAProxy do).
    last: Option<Result<(), ProbeError>>,
}

impl SlotHealth {
    pub fn new(app: String, machine: String, port: u16, slot: Arc<ServiceSlot>) -> Self {
        let health = SlotHealth {
            app,
            machine,
            port,
            inner: Mutex::new(Inner {
                slot,
                checks: BTreeMap::new(),
            }),
        };
        let healthy = health.lock().slot.healthy();
        health.set_gauge(healthy);
        health
    }

    pub fn is_empty(&self) -> bool {
        self.lock().checks.is_empty()
    }

    /// Points at the slot of the newest snapshot, carrying the current verdict over.
    pub fn set_slot(&self, slot: &Arc<ServiceSlot>) {
        let mut inner = self.lock();
        if Arc::ptr_eq(&inner.slot, slot) {
            return;
        }
        let healthy = inner.slot.healthy();
        slot.set_healthy(healthy);
        inner.slot = Arc::clone(slot);
    }

    /// Registers a new check task. `previous` is the state of the check it replaces,
    /// if any: a check whose config changed keeps holding the machine out until the
    /// new one has passed, so an edit cannot put a failing machine back in rotation.
    pub fn add(&self, id: u64, name: String, previous: Option<CheckState>) {
        let last = previous.and_then(|p| p.last);
        self.lock().checks.insert(id, CheckState { name, last });
    }

    /// Unregisters a check task without re-evaluating (see `add` and `settle`).
    pub fn take(&self, id: u64) -> Option<CheckState> {
        self.lock().checks.remove(&id)
    }

    /// Records one result of a registered task; results of unregistered ones are dropped.
    pub fn record(&self, id: u64, result: Result<(), ProbeError>) {
        let mut inner = self.lock();
        let Some(check) = inner.checks.get_mut(&id) else {
            return;
        };
        check.last = Some(result);
        let trigger = check.name.clone();
        self.settle_locked(&inner, &trigger);
    }

    /// Re-evaluates the slot after checks were removed. With no checks left the
    /// machine is healthy: there is nothing left that could say otherwise.
    pub fn settle(&self, trigger: &str) {
        let inner = self.lock();
        self.settle_locked(&inner, trigger);
    }

    fn settle_locked(&self, inner: &Inner, trigger: &str) {
        // Every check must pass: one failure takes the machine out, and it comes
        // back as soon as all of them pass again (fly-proxy's rule).
        let failure = inner.checks.values().find_map(|c| match &c.last {
            Some(Err(e)) => Some((c.name.as_str(), e)),
            _ => None,
        });
        let healthy = failure.is_none();
        let was = inner.slot.set_healthy(healthy);
        if was == healthy {
            return;
        }
        match failure {
            Some((check, reason)) => tracing::warn!(
                app = %self.app,
                machine = %self.machine,
                port = self.port,
                check,
                reason = %reason,
                "machine unhealthy: out of rotation"
            ),
            None => {
                let reason = if inner.checks.is_empty() {
                    "no checks left"
                } else {
                    "all checks passing"
                };
                tracing::info!(
                    app = %self.app,
                    machine = %self.machine,
                    port = self.port,
                    check = trigger,
                    reason,
                    "machine healthy: back in rotation"
                );
            }
        }
        metrics::counter!(
            "tern_health_transitions_total",
            "app" => self.app.clone(),
            "machine" => self.machine.clone(),
            "to" => if healthy { "healthy" } else { "unhealthy" },
        )
        .increment(1);
        self.set_gauge(healthy);
    }

    fn set_gauge(&self, healthy: bool) {
        metrics::gauge!(
            "tern_machine_healthy",
            "app" => self.app.clone(),
            "machine" => self.machine.clone(),
            "port" => self.port.to_string(),
        )
        .set(if healthy { 1.0 } else { 0.0 });
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing here can leave the map half-updated, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_balance::{Limits, Load};

    fn slot() -> Arc<ServiceSlot> {
        Arc::new(ServiceSlot::new(
            Arc::new(Load::default()),
            Limits { soft: 1, hard: 2 },
        ))
    }

    fn refused() -> Result<(), ProbeError> {
        Err(ProbeError::ConnectRefused)
    }

    fn health(slot: &Arc<ServiceSlot>) -> SlotHealth {
        let h = SlotHealth::new("demo".into(), "m1".into(), 8080, Arc::clone(slot));
        h.add(1, "tcp[0]".into(), None);
        h.add(2, "http[0]".into(), None);
        h
    }

    #[test]
    fn one_failure_takes_out_all_passes_bring_back() {
        let s = slot();
        let h = health(&s);
        h.record(1, refused());
        assert!(!s.healthy());
        h.record(2, Ok(()));
        assert!(!s.healthy(), "another check passing is not enough");
        h.record(1, Ok(()));
        assert!(s.healthy());
    }

    #[test]
    fn checks_not_run_yet_do_not_hold_out() {
        let s = slot();
        let h = health(&s);
        h.record(2, Ok(()));
        assert!(s.healthy());
    }

    #[test]
    fn removed_and_stale_checks() {
        let s = slot();
        let h = health(&s);
        h.record(1, refused());
        assert!(h.take(1).is_some());
        // A task aborted after it was unregistered must not count.
        h.record(1, refused());
        h.settle("tcp[0] removed");
        assert!(s.healthy());
        assert!(h.take(2).is_some());
        assert!(h.is_empty());
    }

    #[test]
    fn replaced_check_inherits_failure() {
        let s = slot();
        let h = health(&s);
        h.record(1, refused());
        let old = h.take(1);
        h.add(3, "tcp[0]".into(), old);
        h.settle("tcp[0] changed");
        assert!(!s.healthy());
        h.record(3, Ok(()));
        assert!(s.healthy());
    }

    #[test]
    fn new_slot_object_gets_current_verdict() {
        let s = slot();
        let h = health(&s);
        h.record(1, refused());
        let fresh = slot();
        h.set_slot(&fresh);
        assert!(!fresh.healthy());
        h.record(1, Ok(()));
        assert!(fresh.healthy());
    }
}
