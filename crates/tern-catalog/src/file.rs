//! The embedded catalog: the fleet as the TOML file describes it, plus state changes
//! made at run time (machines started or stopped by this node).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use foldhash::{HashMap, HashMapExt};

use tern_balance::{Limits, Load, WaitQueue};
use tern_config::{Config, MachineState};
use tokio::sync::watch;

use crate::snapshot::{AppEntry, MachineEntry, ServiceEntry, Snapshot};
use crate::{Catalog, HostIndex, MachineLive, ServiceSlot};

/// A catalog fed by a configuration file.
pub struct FileCatalog {
    tx: watch::Sender<Arc<Snapshot>>,
    inner: Mutex<Inner>,
}

/// Live objects kept across rebuilds, so loads, health and queues survive a reload.
struct Inner {
    config: Config,
    version: u64,
    slots: HashMap<(String, u16), Arc<ServiceSlot>>,
    queues: HashMap<(String, u16), Arc<WaitQueue>>,
    states: HashMap<String, MachineState>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("no machine with id {0:?}")]
    UnknownMachine(String),
}

impl FileCatalog {
    pub fn new(config: &Config) -> Self {
        let mut inner = Inner {
            config: config.clone(),
            version: 0,
            slots: HashMap::new(),
            queues: HashMap::new(),
            states: HashMap::new(),
        };
        let snap = inner.rebuild();
        let (tx, _) = watch::channel(snap);
        FileCatalog {
            tx,
            inner: Mutex::new(inner),
        }
    }

    /// Replaces the fleet with a newly loaded configuration.
    pub fn replace(&self, config: &Config) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.states.clear();
        inner.config = config.clone();
        let snap = inner.rebuild();
        self.tx.send_replace(snap);
    }

    /// Records a machine's new lifecycle state and publishes a new snapshot.
    pub fn set_machine_state(&self, id: &str, state: MachineState) -> Result<(), CatalogError> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let known = inner.config.machines.iter().any(|m| m.id == id);
        if !known {
            return Err(CatalogError::UnknownMachine(id.to_owned()));
        }
        inner.states.insert(id.to_owned(), state);
        let snap = inner.rebuild();
        self.tx.send_replace(snap);
        Ok(())
    }
}

impl Inner {
    fn rebuild(&mut self) -> Arc<Snapshot> {
        self.version += 1;
        let config = &self.config;
        let mut slots = HashMap::new();
        let mut queues = HashMap::new();
        let mut apps = BTreeMap::new();
        let mut hosts = HostIndex::default();
        let mut machines = BTreeMap::new();

        for app in &config.apps {
            let services: Vec<Arc<ServiceEntry>> =
                app.services
                    .iter()
                    .map(|svc| {
                        let key = (app.name.clone(), svc.internal_port);
                        let queue =
                            self.queues.get(&key).cloned().unwrap_or_else(|| {
                                Arc::new(WaitQueue::new(config.limits.queue_size))
                            });
                        queues.insert(key, Arc::clone(&queue));
                        Arc::new(ServiceEntry {
                            app: app.name.clone(),
                            config: svc.clone(),
                            queue,
                        })
                    })
                    .collect();

            let mut app_machines = Vec::new();
            for m in config.machines.iter().filter(|m| m.app == app.name) {
                let mut machine_slots = BTreeMap::new();
                for svc in &services {
                    let port = svc.config.internal_port;
                    let limits = Limits {
                        soft: svc.config.concurrency.soft_limit,
                        hard: svc.config.concurrency.hard_limit,
                    };
                    let key = (m.id.clone(), port);
                    let slot = match self.slots.get(&key) {
                        Some(s) if s.limits == limits => Arc::clone(s),
                        _ => Arc::new(ServiceSlot::new(
                            Arc::new(Load::with_notify(svc.queue.notifier())),
                            limits,
                        )),
                    };
                    slots.insert(key, Arc::clone(&slot));
                    machine_slots.insert(port, slot);
                }
                let mut machine = m.clone();
                if let Some(state) = self.states.get(&m.id) {
                    machine.state = *state;
                }
                let entry = Arc::new(MachineEntry {
                    config: machine,
                    live: Arc::new(MachineLive::new(m.id.clone(), machine_slots)),
                });
                machines.insert(m.id.clone(), Arc::clone(&entry));
                app_machines.push(entry);
            }

            let entry = Arc::new(AppEntry {
                name: app.name.clone(),
                hostnames: app.hostnames.clone(),
                max_request_body: app
                    .max_request_body
                    .unwrap_or(config.limits.max_request_body),
                services,
                machines: app_machines,
            });
            for h in &app.hostnames {
                hosts.insert(h, Arc::clone(&entry));
            }
            apps.insert(app.name.clone(), entry);
        }

        let snap = Arc::new(Snapshot {
            version: self.version,
            node_id: config.node.id.clone(),
            node_region: config.node.region.clone(),
            distances: config.regions.clone(),
            apps,
            hosts,
            machines,
        });
        self.slots = slots;
        self.queues = queues;
        snap
    }
}

impl Catalog for FileCatalog {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }
}
