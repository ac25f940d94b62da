//! The node's lifecycle manager: a controller for each machine this node runs,
//! kept in step with the catalog; starts on demand for the request path; and the
//! start, stop and suspend that operators ask for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tern_catalog::model::{MachineDef, MachineState};
use tern_catalog::{AppEntry, Autostart, Catalog, Fleet, Snapshot, WakeError, WakeFuture, Woken};

use crate::autostop::{self, AutostopSettings, Usage};
use crate::controller::{ControlError, Controller, StartError, Timing};
use crate::driver::Driver;
use crate::ready::Readiness;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ManageError {
    #[error("no machine with id {0:?}")]
    Unknown(String),
    #[error("machine {id} runs on node {node}; only that node starts, stops or suspends it")]
    NotLocal { id: String, node: String },
    #[error("machine {0} is run by someone else (driver = \"external\"); Tern cannot start, stop or suspend it")]
    External(String),
    #[error("machine {id}: {error}")]
    Start { id: String, error: StartError },
    #[error(transparent)]
    Control(#[from] ControlError),
}

pub struct Machines {
    fleet: Arc<Fleet>,
    driver: Arc<dyn Driver>,
    timing: Timing,
    autostop: AutostopSettings,
    controllers: Mutex<HashMap<String, Arc<Controller>>>,
}

impl Machines {
    pub fn new(
        fleet: Arc<Fleet>,
        driver: Arc<dyn Driver>,
        timing: Timing,
        autostop: AutostopSettings,
    ) -> Arc<Machines> {
        Arc::new(Machines {
            fleet,
            driver,
            timing,
            autostop,
            controllers: Mutex::new(HashMap::new()),
        })
    }

    fn controllers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Controller>>> {
        self.controllers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn controller(&self, id: &str) -> Option<Arc<Controller>> {
        self.controllers().get(id).cloned()
    }

    /// Follows the catalog and runs autostop until `shutdown` resolves, then
    /// stops every machine.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut snapshots = self.fleet.watch();
        let follow = async {
            loop {
                let snapshot = snapshots.borrow_and_update().clone();
                self.sync(&snapshot);
                if snapshots.changed().await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            () = follow => {}
            () = self.autostop_loop() => {}
            () = shutdown => {}
        }
        self.stop_all().await;
    }

    async fn autostop_loop(&self) {
        let mut usage = Usage::default();
        let mut ticks = tokio::time::interval(self.autostop.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let snapshot = self.fleet.snapshot();
            let state = |id: &str| {
                let c = self.controller(id)?;
                let s = c.status();
                Some((s.state, s.since))
            };
            let actions = autostop::pass(
                &snapshot,
                state,
                &mut usage,
                self.autostop.idle_timeout,
                Instant::now(),
            );
            for action in actions {
                let Some(c) = self.controller(&action.machine) else {
                    continue;
                };
                tracing::info!(
                    machine = %action.machine,
                    started = action.started,
                    needed = action.needed,
                    how = if action.suspend { "suspend" } else { "stop" },
                    "autostop"
                );
                metrics::counter!("tern_machine_autostops_total", "how" => if action.suspend { "suspend" } else { "stop" }).increment(1);
                tokio::spawn(async move {
                    let done = if action.suspend {
                        c.suspend().await
                    } else {
                        c.stop().await
                    };
                    if let Err(e) = done {
                        tracing::warn!(machine = %c.id(), error = %e, "autostop failed");
                    }
                });
            }
        }
    }

    /// Makes the controllers match this node's machines in `snapshot`: new ones
    /// get a controller and go to their declared state; a machine whose
    /// definition changed is stopped and gets a new controller, which moves
    /// only once the old process is gone (it holds the machine's ports); one
    /// that is gone is stopped. A change of the declared state alone moves the
    /// machine.
    fn sync(self: &Arc<Self>, snapshot: &Snapshot) {
        let wanted: HashMap<String, (MachineDef, Vec<Readiness>)> = snapshot
            .machines
            .values()
            .filter(|m| m.is_local() && !m.def.driver.is_external())
            .map(|m| {
                let services = snapshot
                    .apps
                    .get(&m.def.app)
                    .map(|a| readiness(a, &m.def))
                    .unwrap_or_default();
                (m.def.id.clone(), (m.def.clone(), services))
            })
            .collect();
        let mut controllers = self.controllers();
        let mut retired = HashMap::new();
        controllers.retain(|id, c| match wanted.get(id) {
            Some((def, services))
                if same_but_state(c.def(), def) && c.services() == services.as_slice() =>
            {
                true
            }
            _ => {
                retired.insert(id.clone(), Arc::clone(c));
                false
            }
        });
        let mut moves = Vec::new();
        for (id, (def, services)) in wanted {
            match controllers.get(&id) {
                Some(c) => {
                    if c.set_declared(def.state) {
                        moves.push((Arc::clone(c), def.state));
                    }
                }
                None => {
                    let c = Controller::new(
                        def.clone(),
                        services,
                        Arc::clone(&self.fleet),
                        Arc::clone(&self.driver),
                        self.timing,
                    );
                    moves.push((Arc::clone(&c), def.state));
                    controllers.insert(id, c);
                }
            }
        }
        drop(controllers);
        let start_timeout = self.timing.start_timeout;
        for (c, declared) in moves {
            let replaced = retired.remove(c.id());
            tokio::spawn(async move {
                if let Some(old) = replaced {
                    stop_retired(&old).await;
                }
                let result = match declared {
                    MachineState::Started => c
                        .start(start_timeout)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    MachineState::Stopped => c.stop().await.map_err(|e| e.to_string()),
                    MachineState::Suspended => c.suspend().await.map_err(|e| e.to_string()),
                    _ => Ok(()),
                };
                if let Err(e) = result {
                    tracing::warn!(machine = %c.id(), declared = declared.as_str(), error = %e, "machine not moved to its declared state");
                }
            });
        }
        for old in retired.into_values() {
            tokio::spawn(async move { stop_retired(&old).await });
        }
    }

    /// Stops every machine this node runs, all at once.
    pub async fn stop_all(&self) {
        let all: Vec<Arc<Controller>> = self.controllers().values().cloned().collect();
        let mut stops = tokio::task::JoinSet::new();
        for c in all {
            stops.spawn(async move {
                if let Err(e) = c.stop().await {
                    tracing::warn!(machine = %c.id(), error = %e, "stopping at shutdown");
                }
            });
        }
        while stops.join_next().await.is_some() {}
    }

    /// The controller of one of this node's machines, or why there is none.
    pub fn local(&self, id: &str) -> Result<Arc<Controller>, ManageError> {
        if let Some(c) = self.controller(id) {
            return Ok(c);
        }
        let snapshot = self.fleet.snapshot();
        let Some(m) = snapshot.machines.get(id) else {
            return Err(ManageError::Unknown(id.to_owned()));
        };
        if !m.is_local() {
            return Err(ManageError::NotLocal {
                id: id.to_owned(),
                node: m.def.node.clone(),
            });
        }
        Err(ManageError::External(id.to_owned()))
    }

    /// An operator's start.
    pub async fn start(&self, id: &str) -> Result<MachineState, ManageError> {
        let c = self.local(id)?;
        c.start(self.timing.start_timeout)
            .await
            .map_err(|error| ManageError::Start {
                id: id.to_owned(),
                error,
            })?;
        Ok(c.state())
    }

    /// An operator's stop.
    pub async fn stop(&self, id: &str) -> Result<MachineState, ManageError> {
        let c = self.local(id)?;
        c.stop().await?;
        Ok(c.state())
    }

    /// An operator's suspend.
    pub async fn suspend(&self, id: &str) -> Result<MachineState, ManageError> {
        let c = self.local(id)?;
        c.suspend().await?;
        Ok(c.state())
    }

    /// The machine autostart would bring up for `app`: this node's own, started
    /// by it, not up, nearest first; a start under way first of all (it is
    /// joined), then a suspended one (a resume is fast), then a stopped one.
    fn candidate(&self, snapshot: &Snapshot, app: &AppEntry) -> Option<Arc<Controller>> {
        let controllers = self.controllers();
        app.machines
            .iter()
            .filter_map(|m| {
                let c = controllers.get(&m.def.id)?;
                let rank = c.state().wake_rank()?;
                Some((rank, snapshot.distance(m), Arc::clone(c)))
            })
            .min_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))
            .map(|(_, _, c)| c)
    }
}

/// Stops the machine of a controller that no longer matches the catalog.
async fn stop_retired(old: &Controller) {
    if let Err(e) = old.stop().await {
        tracing::warn!(machine = %old.id(), error = %e, "stopping a machine whose definition changed or left the catalog");
    }
}

/// What makes each service of `machine` up: its port accepts, and its first HTTP
/// check (if it has any) passes, sent as the health checker sends it.
fn readiness(app: &AppEntry, machine: &MachineDef) -> Vec<Readiness> {
    let host = tern_health::host_header(app);
    app.services
        .iter()
        .map(|s| {
            let port = s.def.internal_port;
            let addr = std::net::SocketAddr::new(machine.ip, port);
            let check = s.def.http_checks.first();
            Readiness {
                port,
                check: check.map(|c| tern_health::http_probe(c, addr, host.as_deref())),
            }
        })
        .collect()
}

/// Whether two definitions differ in their declared state at most.
fn same_but_state(a: &MachineDef, b: &MachineDef) -> bool {
    let mut b = b.clone();
    b.state = a.state;
    *a == b
}

impl Autostart for Machines {
    fn wake<'a>(&'a self, snapshot: &'a Snapshot, app: &'a AppEntry, wait: bool) -> WakeFuture<'a> {
        Box::pin(async move {
            let Some(c) = self.candidate(snapshot, app) else {
                return Ok(None);
            };
            if !wait {
                c.start_in_background();
                return Ok(None);
            }
            start_and_wait(&c, self.timing.start_timeout).await
        })
    }

    fn wake_machine<'a>(&'a self, id: &'a str) -> WakeFuture<'a> {
        Box::pin(async move {
            let Some(c) = self.controller(id) else {
                return Ok(None);
            };
            if c.state() == MachineState::Started {
                return Ok(None);
            }
            start_and_wait(&c, self.timing.start_timeout).await
        })
    }
}

/// Starts `c` (or joins its start) and waits for it.
async fn start_and_wait(
    c: &Arc<Controller>,
    timeout: std::time::Duration,
) -> Result<Option<Woken>, WakeError> {
    let asked = Instant::now();
    let app = c.def().app.clone();
    match c.start(timeout).await {
        Ok(kind) => Ok(kind.map(|kind| Woken {
            machine: c.id().to_owned(),
            kind,
            waited: asked.elapsed(),
        })),
        Err(StartError::Timeout(waited)) => Err(WakeError::Timeout {
            app,
            machine: c.id().to_owned(),
            waited,
        }),
        Err(StartError::Failed(reason)) => Err(WakeError::Failed {
            app,
            machine: c.id().to_owned(),
            reason,
        }),
    }
}
