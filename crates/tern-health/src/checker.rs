//! The supervisor: follows the catalog and keeps exactly one task running per check
//! the current snapshot asks for.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use tern_catalog::{Catalog, Snapshot};
use tokio::task::JoinHandle;

use crate::plan::{plan, CheckKey, CheckSpec, Planned};
use crate::slot::SlotHealth;
use crate::task::run_check;

/// Runs the catalog's tcp and http checks and sets each `ServiceSlot`'s health.
///
/// A slot is healthy iff every check of its service on its machine passed on its
/// latest run; a check that has not run yet (grace period) does not hold it out,
/// and a slot left with no checks (machine stopped or removed, checks dropped from
/// the config) is put back to healthy, the catalog's optimistic default.
///
/// Checks follow the catalog: on every new snapshot, checks that are gone or whose
/// config changed are aborted, new ones are started (after their grace period), and
/// unchanged ones keep running without a pause.
///
/// Stopping: when the `shutdown` future completes, `run` returns and every check
/// task is aborted; dropping or aborting the future returned by `run` (or the
/// `JoinHandle` from `spawn`) does the same. Slots keep the health they had.
pub struct HealthChecker {
    catalog: Arc<dyn Catalog>,
    running: HashMap<CheckKey, Running>,
    slots: HashMap<(String, u16), Arc<SlotHealth>>,
    next_id: u64,
    watchdog: Option<pollwatch::Watchdog>,
}

struct Running {
    id: u64,
    spec: CheckSpec,
    health: Arc<SlotHealth>,
    _task: AbortOnDrop,
}

/// Ties a check task's life to its entry in the checker, so no path (removal,
/// replacement, shutdown, the checker being aborted) can leak one.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl HealthChecker {
    pub fn new(catalog: Arc<dyn Catalog>) -> Self {
        HealthChecker {
            catalog,
            running: HashMap::new(),
            slots: HashMap::new(),
            next_id: 0,
            watchdog: None,
        }
    }

    /// Runs every HTTP check's exchange under the spin watchdog.
    pub fn with_watchdog(mut self, watchdog: Option<pollwatch::Watchdog>) -> Self {
        self.watchdog = watchdog;
        self
    }

    /// Spawns `HealthChecker::new(catalog).run(shutdown)` on the current runtime.
    ///
    /// `shutdown` is any future that completes when checking should stop, e.g.
    /// `async move { let _ = rx.wait_for(|stop| *stop).await; }` for a
    /// `watch::Receiver<bool>`, or a cancellation token's `cancelled_owned()`.
    pub fn spawn(
        catalog: Arc<dyn Catalog>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        tokio::spawn(HealthChecker::new(catalog).run(shutdown))
    }

    /// Checks the fleet until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut updates = self.catalog.watch();
        let mut shutdown = pin!(shutdown);
        loop {
            let snap = Arc::clone(&updates.borrow_and_update());
            self.reconcile(&snap);
            tokio::select! {
                () = &mut shutdown => return,
                changed = updates.changed() => {
                    if changed.is_err() {
                        // The catalog is gone: keep checking the fleet it last described.
                        shutdown.await;
                        return;
                    }
                }
            }
        }
    }

    /// Brings the running tasks in line with `snap`.
    fn reconcile(&mut self, snap: &Snapshot) {
        let plan = plan(snap);

        let gone: Vec<CheckKey> = self
            .running
            .keys()
            .filter(|k| !plan.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(old) = self.running.remove(&key) {
                old.health.take(old.id);
                old.health.settle(&format!("{key} removed"));
            }
        }

        for (key, planned) in plan {
            let health = self.slot_health(&key, &planned);
            if let Some(r) = self.running.get(&key) {
                if r.spec == planned.spec {
                    continue;
                }
            }
            // Dropping the old entry aborts its task before the new one starts.
            let previous = self
                .running
                .remove(&key)
                .and_then(|old| old.health.take(old.id));
            let id = self.next_id;
            self.next_id += 1;
            health.add(id, key.to_string(), previous);
            let task = tokio::spawn(run_check(
                id,
                planned.spec.clone(),
                Arc::clone(&health),
                self.watchdog.clone(),
            ));
            self.running.insert(
                key,
                Running {
                    id,
                    spec: planned.spec,
                    health,
                    _task: AbortOnDrop(task),
                },
            );
        }

        self.slots.retain(|_, h| !h.is_empty());
    }

    fn slot_health(&mut self, key: &CheckKey, planned: &Planned) -> Arc<SlotHealth> {
        let health = self
            .slots
            .entry((key.machine.clone(), key.port))
            .or_insert_with(|| {
                Arc::new(SlotHealth::new(
                    planned.spec.app.clone(),
                    key.machine.clone(),
                    key.port,
                    Arc::clone(&planned.slot),
                ))
            });
        health.set_slot(&planned.slot);
        Arc::clone(health)
    }
}
