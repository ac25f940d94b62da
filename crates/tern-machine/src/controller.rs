//! One machine's state machine, on the node that runs it:
//!
//! ```text
//! created ─┐
//! stopped ─┴─> starting ──> started ──> stopping ──> stopped
//!                  ^           │
//!                  │           └──> suspending ──> suspended ─┐
//!                  └──────────────────────────────────────────┘
//! ```
//!
//! Every transition is a compare-and-set on the machine's status and is then
//! published to the catalog, so two requests that both want a start start it
//! once, and a stop that races a start ends in one state or the other. Starts run
//! in a task of their own: a request that gives up waiting does not cancel one.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tern_catalog::model::{MachineDef, MachineState};
use tern_catalog::{Catalog, Fleet, StartKind};
use tokio::sync::watch;

use crate::driver::{Control, Driver};
use crate::ready::{wait_until_up, Readiness};

/// Timing that every machine of a node shares.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a start may take before it is given up.
    pub start_timeout: Duration,
    /// From SIGTERM to SIGKILL.
    pub stop_timeout: Duration,
    /// How long a stop or suspend waits for the machine's requests to finish.
    pub drain_timeout: Duration,
}

/// A machine's status as its controller keeps it.
#[derive(Debug, Clone)]
pub struct Status {
    pub state: MachineState,
    /// Counts starts, so that a waiter knows whether a failure is its start's.
    pub attempt: u64,
    /// How the last start began.
    pub kind: StartKind,
    /// Why the last start failed, or why the machine last ended on its own.
    pub failure: Option<StartError>,
    /// When the state last changed.
    pub since: Instant,
}

/// What a machine went through since its node began to run it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub cold_starts: u64,
    pub resumes: u64,
    pub failed_starts: u64,
    pub stops: u64,
    pub suspends: u64,
    /// Ends nobody asked for (a crash, a kill from outside).
    pub exits: u64,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StartError {
    #[error("did not come up within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("machine {id} cannot be {what} while it is {state}")]
    Busy {
        id: String,
        what: &'static str,
        state: &'static str,
    },
    #[error("machine {0} did not stop within its stop timeout after SIGKILL")]
    Unkillable(String),
    #[error("machine {id}: {reason}")]
    Driver { id: String, reason: String },
}

pub struct Controller {
    def: MachineDef,
    /// What makes each of its services up.
    services: Vec<Readiness>,
    fleet: Arc<Fleet>,
    driver: Arc<dyn Driver>,
    timing: Timing,
    status: watch::Sender<Status>,
    /// Held across a status change and its publication: transitions happen one
    /// at a time, and the catalog sees them in order.
    publish: Mutex<()>,
    control: Mutex<Option<Arc<dyn Control>>>,
    /// The state the catalog declares; the controller moves the machine to it
    /// when it changes (autostart and autostop move it in between).
    declared: Mutex<MachineState>,
    counts: Mutex<Counts>,
}

impl Controller {
    pub fn new(
        def: MachineDef,
        services: Vec<Readiness>,
        fleet: Arc<Fleet>,
        driver: Arc<dyn Driver>,
        timing: Timing,
    ) -> Arc<Controller> {
        let def_state = def.state;
        let (status, _) = watch::channel(Status {
            state: MachineState::Stopped,
            attempt: 0,
            kind: StartKind::Cold,
            failure: None,
            since: Instant::now(),
        });
        Arc::new(Controller {
            def,
            services,
            fleet,
            driver,
            timing,
            status,
            publish: Mutex::new(()),
            control: Mutex::new(None),
            declared: Mutex::new(def_state),
            counts: Mutex::new(Counts::default()),
        })
    }

    pub fn counts(&self) -> Counts {
        *self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, what: impl FnOnce(&mut Counts)) {
        what(&mut self.counts.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Records a new declared state; returns whether it changed.
    pub fn set_declared(&self, state: MachineState) -> bool {
        let mut declared = self.declared.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = *declared != state;
        *declared = state;
        changed
    }

    pub fn services(&self) -> &[Readiness] {
        &self.services
    }

    pub fn id(&self) -> &str {
        &self.def.id
    }

    pub fn def(&self) -> &MachineDef {
        &self.def
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn state(&self) -> MachineState {
        self.status.borrow().state
    }

    /// Moves to `to` if the state is one of `from`, after `edit` (which sees the
    /// state being left); publishes the change. Returns the status it moved from.
    fn transition(
        &self,
        from: &[MachineState],
        to: MachineState,
        edit: impl FnOnce(&mut Status),
    ) -> Option<Status> {
        // Every transition holds this lock, so the check and the change are one
        // step; the catalog is told first, so that whoever the status wakes
        // (a request waiting for a start) finds the machine routable.
        let _one_at_a_time = self.publish.lock().unwrap_or_else(PoisonError::into_inner);
        let before = self.status.borrow().clone();
        if !from.contains(&before.state) {
            return None;
        }
        if let Err(e) = self.fleet.set_state(&self.def.id, to) {
            tracing::warn!(machine = %self.def.id, error = %e, "machine state not published");
        }
        self.status.send_modify(|s| {
            // `edit` sees the state being left.
            edit(s);
            s.state = to;
            s.since = Instant::now();
        });
        metrics::counter!("tern_machine_transitions_total", "to" => to.as_str()).increment(1);
        let id = self.def.id.clone();
        metrics::gauge!("tern_machine_state", "machine" => id.clone(), "state" => before.state.as_str())
            .set(0.0);
        metrics::gauge!("tern_machine_state", "machine" => id, "state" => to.as_str()).set(1.0);
        Some(before)
    }

    /// Brings the machine up, or joins the start under way, and waits for it up
    /// to `timeout`. `Ok(None)` when it was already started; otherwise how it
    /// came up.
    pub async fn start(
        self: &Arc<Self>,
        timeout: Duration,
    ) -> Result<Option<StartKind>, StartError> {
        let began = Instant::now();
        let deadline = tokio::time::Instant::from_std(began + timeout);
        let mut status = self.status.subscribe();
        let mut joined: Option<u64> = None;
        loop {
            let now = status.borrow_and_update().clone();
            match now.state {
                MachineState::Started => return Ok(joined.map(|_| now.kind)),
                MachineState::Starting => {
                    joined.get_or_insert(now.attempt);
                }
                MachineState::Stopped | MachineState::Created | MachineState::Suspended => {
                    if let (Some(attempt), Some(failure)) = (joined, &now.failure) {
                        if now.attempt == attempt {
                            return Err(failure.clone());
                        }
                    }
                    self.start_in_background();
                    continue;
                }
                MachineState::Stopping | MachineState::Suspending => {}
            }
            match tokio::time::timeout_at(deadline, status.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(StartError::Failed("its controller is gone".into())),
                Err(_) => return Err(StartError::Timeout(timeout)),
            }
        }
    }

    /// Starts the machine in a task of its own, unless a start is under way or it
    /// is up; returns at once. The requests queued for its app are woken when it
    /// is up.
    pub fn start_in_background(self: &Arc<Self>) {
        let startable = [
            MachineState::Stopped,
            MachineState::Created,
            MachineState::Suspended,
        ];
        let kind_from = |state| match state {
            MachineState::Suspended => StartKind::Resume,
            _ => StartKind::Cold,
        };
        let Some(before) = self.transition(&startable, MachineState::Starting, |s| {
            s.attempt += 1;
            s.failure = None;
            s.kind = kind_from(s.state);
        }) else {
            return;
        };
        let kind = kind_from(before.state);
        let me = Arc::clone(self);
        tokio::spawn(async move { me.run_start(kind).await });
    }

    async fn run_start(self: Arc<Self>, kind: StartKind) {
        let began = Instant::now();
        let result = match kind {
            StartKind::Resume => self.resume().await,
            StartKind::Cold => self.cold_start().await,
        };
        match result {
            Ok(()) => {
                let took = began.elapsed();
                if self
                    .transition(&[MachineState::Starting], MachineState::Started, |_| {})
                    .is_some()
                {
                    metrics::histogram!("tern_machine_start_seconds", "kind" => kind.as_str())
                        .record(took.as_secs_f64());
                    self.count(|c| match kind {
                        StartKind::Cold => c.cold_starts += 1,
                        StartKind::Resume => c.resumes += 1,
                    });
                    tracing::info!(machine = %self.def.id, kind = kind.as_str(), took_ms = took.as_secs_f64() * 1e3, "machine started");
                    self.wake_queued();
                }
            }
            Err(reason) => {
                tracing::warn!(machine = %self.def.id, kind = kind.as_str(), %reason, "machine failed to start");
                metrics::counter!("tern_machine_start_failures_total", "kind" => kind.as_str())
                    .increment(1);
                self.count(|c| c.failed_starts += 1);
                if let Some(control) = self.control() {
                    let _ = control.kill();
                    // Its exit (seen by the exit watcher) ends it as stopped.
                }
                self.transition(&[MachineState::Starting], MachineState::Stopped, |s| {
                    s.failure = Some(reason);
                });
            }
        }
    }

    /// Requests waiting in the queues of the machine's app (every machine at its
    /// hard limit) try again: this one has room now.
    fn wake_queued(&self) {
        let snapshot = self.fleet.snapshot();
        if let Some(app) = snapshot.apps.get(&self.def.app) {
            for service in &app.services {
                service.queue.notifier().notify_waiters();
            }
        }
    }

    async fn cold_start(self: &Arc<Self>) -> Result<(), StartError> {
        let ports: Vec<u16> = self.services.iter().map(|s| s.port).collect();
        let running = self
            .driver
            .start(&self.def, &ports)
            .await
            .map_err(|e| StartError::Failed(e.to_string()))?;
        let control: Arc<dyn Control> = Arc::from(running.control);
        *self.control.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&control));
        let me = Arc::clone(self);
        let exit = running.exit;
        tokio::spawn(async move {
            let how = exit.await;
            me.exited(&control, how);
        });
        let mut status = self.status.subscribe();
        let gave_up = async {
            // Ends the wait if the process ends (or a stop wins) first.
            let _ = status.wait_for(|s| s.state != MachineState::Starting).await;
        };
        tokio::select! {
            listening = self.listening() => listening,
            () = gave_up => Err(self.status.borrow().failure.clone().unwrap_or_else(|| StartError::Failed("it ended while starting".into()))),
        }
    }

    async fn resume(&self) -> Result<(), StartError> {
        let control = self
            .control()
            .ok_or_else(|| StartError::Failed("it has no process to resume".into()))?;
        control
            .resume()
            .map_err(|e| StartError::Failed(e.to_string()))?;
        self.listening().await
    }

    /// Up when every service port accepts a connection and every service with
    /// HTTP checks passes its first, within the start timeout. Being up is what
    /// a check would have found: its services are marked healthy (a check made
    /// before it stopped may have left them otherwise).
    async fn listening(&self) -> Result<(), StartError> {
        let limit = self.timing.start_timeout;
        if let Err(why) = wait_until_up(self.def.ip, &self.services, limit).await {
            tracing::info!(machine = %self.def.id, %why, "machine not up");
            return Err(StartError::Timeout(limit));
        }
        if let Some(m) = self.fleet.snapshot().machines.get(&self.def.id) {
            for (_, slot) in m.live.slots() {
                slot.set_healthy(true);
            }
        }
        Ok(())
    }

    fn control(&self) -> Option<Arc<dyn Control>> {
        self.control
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The process ended: whatever the state, the machine is stopped and out of
    /// rotation at once.
    fn exited(&self, control: &Arc<dyn Control>, how: String) {
        {
            let mut current = self.control.lock().unwrap_or_else(PoisonError::into_inner);
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, control)) {
                *current = None;
            }
        }
        let every = [
            MachineState::Created,
            MachineState::Starting,
            MachineState::Started,
            MachineState::Stopping,
            MachineState::Suspending,
            MachineState::Suspended,
        ];
        let asked = self.state() == MachineState::Stopping;
        if asked {
            tracing::info!(machine = %self.def.id, how = %how, "machine stopped");
            self.count(|c| c.stops += 1);
            self.transition(&[MachineState::Stopping], MachineState::Stopped, |_| {});
        } else if self
            .transition(&every, MachineState::Stopped, |s| {
                s.failure = Some(StartError::Failed(format!("its process {how}")));
            })
            .is_some()
        {
            tracing::warn!(machine = %self.def.id, how = %how, "machine ended on its own; out of rotation");
            metrics::counter!("tern_machine_exits_total").increment(1);
            self.count(|c| c.exits += 1);
        }
    }

    /// Takes the machine out of rotation, lets its requests finish (up to the
    /// drain timeout), then stops it: SIGTERM, and SIGKILL after the stop
    /// timeout. Returns once it is stopped.
    pub async fn stop(&self) -> Result<(), ControlError> {
        let mut status = self.status.subscribe();
        loop {
            let state = status.borrow_and_update().state;
            match state {
                MachineState::Stopped | MachineState::Created => return Ok(()),
                MachineState::Started | MachineState::Suspended => {
                    let from = [MachineState::Started, MachineState::Suspended];
                    if let Some(before) = self.transition(&from, MachineState::Stopping, |_| {}) {
                        return self
                            .terminate(before.state == MachineState::Suspended)
                            .await;
                    }
                    continue;
                }
                MachineState::Starting | MachineState::Stopping | MachineState::Suspending => {}
            }
            let _ = status.changed().await;
        }
    }

    async fn terminate(&self, suspended: bool) -> Result<(), ControlError> {
        if !suspended {
            self.leave();
            self.drain().await;
        }
        let Some(control) = self.control() else {
            self.transition(&[MachineState::Stopping], MachineState::Stopped, |_| {});
            return Ok(());
        };
        let driver_error = |e: crate::driver::DriverError| ControlError::Driver {
            id: self.def.id.clone(),
            reason: e.to_string(),
        };
        control.terminate().map_err(driver_error)?;
        if suspended {
            // A frozen process cannot act on SIGTERM until it runs again.
            control.resume().map_err(driver_error)?;
        }
        if self.stopped_within(self.timing.stop_timeout).await {
            return Ok(());
        }
        tracing::warn!(machine = %self.def.id, timeout = ?self.timing.stop_timeout, "machine ignored SIGTERM; killing it");
        control.kill().map_err(driver_error)?;
        if self
            .stopped_within(self.timing.stop_timeout.max(Duration::from_secs(5)))
            .await
        {
            return Ok(());
        }
        Err(ControlError::Unkillable(self.def.id.clone()))
    }

    /// Whether this stop's stopping ended (its process exited) within `limit`.
    /// Not "is stopped now": a start that raced in after the exit may have moved
    /// the machine on already, and must not be taken for a process that ignored
    /// its SIGTERM.
    async fn stopped_within(&self, limit: Duration) -> bool {
        let mut status = self.status.subscribe();
        let ended = tokio::time::timeout(
            limit,
            status.wait_for(|s| s.state != MachineState::Stopping),
        )
        .await
        .is_ok();
        ended
    }

    /// Freezes the machine (memory kept) once its requests have finished.
    pub async fn suspend(&self) -> Result<(), ControlError> {
        if self
            .transition(&[MachineState::Started], MachineState::Suspending, |_| {})
            .is_none()
        {
            let state = self.state();
            if state == MachineState::Suspended {
                return Ok(());
            }
            return Err(ControlError::Busy {
                id: self.def.id.clone(),
                what: "suspended",
                state: state.as_str(),
            });
        }
        self.leave();
        self.drain().await;
        let Some(control) = self.control() else {
            return Ok(());
        };
        if let Err(e) = control.suspend() {
            self.transition(&[MachineState::Suspending], MachineState::Started, |_| {});
            return Err(ControlError::Driver {
                id: self.def.id.clone(),
                reason: e.to_string(),
            });
        }
        if self
            .transition(&[MachineState::Suspending], MachineState::Suspended, |_| {})
            .is_some()
        {
            self.count(|c| c.suspends += 1);
        }
        Ok(())
    }

    /// Asks the machine's WebSocket tunnels to say goodbye to their clients.
    fn leave(&self) {
        if let Some(m) = self.fleet.snapshot().machines.get(&self.def.id) {
            m.live.leave();
        }
    }

    /// Waits until no connection or request is on the machine, up to the drain
    /// timeout. It is out of rotation already, so its load only falls.
    async fn drain(&self) {
        let deadline = Instant::now() + self.timing.drain_timeout;
        while Instant::now() < deadline && self.load() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Units in flight on the machine, over all its services.
    pub fn load(&self) -> u32 {
        let snapshot = self.fleet.snapshot();
        snapshot.machines.get(&self.def.id).map_or(0, |m| {
            m.live.slots().map(|(_, slot)| slot.load.active()).sum()
        })
    }
}
