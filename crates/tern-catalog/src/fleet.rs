//! The fleet in memory: definitions and live state, changed one entry at a time by
//! whatever feeds it (a file, etcd), and published as snapshots.
//!
//! A definition change rebuilds only the entries it touches: the app's entry, its
//! machines' entries and its hostnames, in persistent maps whose untouched parts
//! are shared with the previous snapshot. A live status change rebuilds nothing:
//! it is stored in the machine's atomics, which every snapshot shares.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tern_balance::{Limits, Load, WaitQueue};
use tokio::sync::{watch, Notify};

use crate::convert::Definitions;
use crate::live::{MachineLive, NodeLive, ServiceSlot};
use crate::model::*;
use crate::snapshot::{AppEntry, FleetMap, MachineEntry, NodeEntry, ServiceEntry, Snapshot};
use crate::{Catalog, HostIndex};

/// One change to the fleet, as a source reports it. `None` removes.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    App(String, Option<AppDef>),
    Machine(String, Option<MachineDef>),
    Node(String, Option<NodeDef>),
    /// Another node's machine's live status.
    Status(String, Option<MachineStatus>),
    /// The round trips a node measured to its peers (none: it is gone).
    Rtts(String, Option<MeasuredRtts>),
    Regions(RegionSeeds),
}

/// How the live state of other nodes' machines is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteStatus {
    /// A static fleet: as declared, with nothing published.
    Declared,
    /// From the statuses their nodes publish (etcd); none means not routable.
    Published,
}

/// What the fleet needs from this node's configuration.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub me: NodeDef,
    /// Requests that may wait for a machine when all are at their hard limit.
    pub queue_size: usize,
    /// An app's body limit when it sets none.
    pub max_request_body: u64,
    pub remote: RemoteStatus,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("no machine with id {0:?}")]
    UnknownMachine(String),
    #[error("machine {id:?} runs on node {node:?}; only that node changes its state")]
    NotLocal { id: String, node: String },
}

/// The in-memory catalog that every source feeds.
pub struct Fleet {
    tx: watch::Sender<Arc<Snapshot>>,
    state: Mutex<State>,
    /// Rung when one of this node's machines changes state or health.
    local_changes: Arc<Notify>,
}

struct State {
    settings: FleetSettings,
    snap: Snapshot,
    apps: BTreeMap<String, AppDef>,
    machines: BTreeMap<String, MachineDef>,
    /// App name -> ids of its machines.
    by_app: BTreeMap<String, BTreeSet<String>>,
    nodes: BTreeMap<String, NodeDef>,
    node_live: HashMap<String, Arc<NodeLive>>,
    /// Other nodes' machines' statuses, kept also for machines not defined yet.
    statuses: HashMap<String, MachineStatus>,
    queues: HashMap<(String, u16), Arc<WaitQueue>>,
    /// Machine id -> internal port -> its load, which outlives the machine's entries.
    loads: HashMap<String, HashMap<u16, Arc<Load>>>,
    local_changes: Arc<Notify>,
    /// Apps whose machines changed, rebuilt once before anything else is applied
    /// (and at the end of a batch): a catalog of N machines loads in one rebuild,
    /// not N.
    dirty: BTreeSet<String>,
}

impl Fleet {
    pub fn new(settings: FleetSettings) -> Self {
        let local_changes = Arc::new(Notify::new());
        let snap = Snapshot {
            version: 0,
            node: Arc::new(settings.me.clone()),
            regions: Arc::new(RegionSeeds::default()),
            nodes: FleetMap::new(),
            apps: FleetMap::new(),
            hosts: HostIndex::default(),
            machines: FleetMap::new(),
        };
        let (tx, _) = watch::channel(Arc::new(snap.clone()));
        Fleet {
            tx,
            state: Mutex::new(State {
                settings,
                snap,
                apps: BTreeMap::new(),
                machines: BTreeMap::new(),
                by_app: BTreeMap::new(),
                nodes: BTreeMap::new(),
                node_live: HashMap::new(),
                statuses: HashMap::new(),
                queues: HashMap::new(),
                loads: HashMap::new(),
                local_changes: Arc::clone(&local_changes),
                dirty: BTreeSet::new(),
            }),
            local_changes,
        }
    }

    /// A fleet holding `defs`.
    pub fn with_definitions(settings: FleetSettings, defs: Definitions) -> Self {
        let fleet = Fleet::new(settings);
        fleet.replace(defs);
        fleet
    }

    /// The catalog of a node's configuration: its inline fleet or its catalog
    /// file, with other nodes' machines as declared.
    pub fn from_config(config: &tern_config::Config) -> Self {
        Fleet::with_definitions(
            settings_from(config, RemoteStatus::Declared),
            Definitions::from_config(config),
        )
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies changes in order and publishes one snapshot for all of them.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) {
        let mut state = self.state();
        let mut defined = false;
        for change in changes {
            defined |= state.apply(change);
        }
        state.rebuild_dirty();
        if defined {
            state.snap.version += 1;
            self.tx.send_replace(Arc::new(state.snap.clone()));
        }
    }

    /// Makes the fleet hold exactly `defs`: what is new or changed is applied,
    /// what is gone is removed. Statuses are kept.
    pub fn replace(&self, defs: Definitions) {
        let changes = self.state().diff(defs);
        self.apply(changes);
    }

    /// New fleet-wide limits (a configuration reload). The wait queues change
    /// size in place (the machines' loads ring them), and every app is rebuilt
    /// with its new body limit.
    pub fn set_limits(&self, queue_size: usize, max_request_body: u64) {
        let mut state = self.state();
        if state.settings.queue_size == queue_size
            && state.settings.max_request_body == max_request_body
        {
            return;
        }
        state.settings.queue_size = queue_size;
        state.settings.max_request_body = max_request_body;
        for queue in state.queues.values() {
            queue.set_capacity(queue_size);
        }
        let names: Vec<String> = state.apps.keys().cloned().collect();
        for name in &names {
            state.rebuild_app(name);
        }
        state.snap.version += 1;
        self.tx.send_replace(Arc::new(state.snap.clone()));
    }

    /// Makes other nodes' statuses exactly `statuses` (after a resynchronisation).
    pub fn replace_statuses(&self, statuses: HashMap<String, MachineStatus>) {
        let gone: Vec<Change> = {
            let state = self.state();
            state
                .statuses
                .keys()
                .filter(|id| !statuses.contains_key(*id))
                .map(|id| Change::Status(id.clone(), None))
                .collect()
        };
        let changes = statuses
            .into_iter()
            .map(|(id, s)| Change::Status(id, Some(s)));
        self.apply(gone.into_iter().chain(changes));
    }

    /// Sets the live state of one of this node's machines.
    pub fn set_state(&self, id: &str, to: MachineState) -> Result<(), CatalogError> {
        let mut state = self.state();
        let Some(m) = state.snap.machines.get(id).cloned() else {
            return Err(CatalogError::UnknownMachine(id.to_owned()));
        };
        if !m.is_local() {
            return Err(CatalogError::NotLocal {
                id: id.to_owned(),
                node: m.def.node.clone(),
            });
        }
        if m.live.set_state(to) {
            // Health checks follow the snapshot: a stopped machine is not checked.
            state.snap.version += 1;
            self.tx.send_replace(Arc::new(state.snap.clone()));
        }
        Ok(())
    }

    /// Rung when one of this node's machines changes state or health.
    pub fn local_changes(&self) -> Arc<Notify> {
        Arc::clone(&self.local_changes)
    }

    /// The live status of each of this node's machines, as it would publish it.
    pub fn local_statuses(&self) -> BTreeMap<String, MachineStatus> {
        let snap = self.snapshot();
        snap.machines
            .values()
            .filter(|m| m.is_local())
            .map(|m| (m.def.id.clone(), status_of(m, &snap.node.id)))
            .collect()
    }

    /// The node this fleet is seen from.
    pub fn me(&self) -> NodeDef {
        self.state().settings.me.clone()
    }
}

/// This node's settings for its fleet, from its configuration.
pub fn settings_from(config: &tern_config::Config, remote: RemoteStatus) -> FleetSettings {
    FleetSettings {
        me: NodeDef {
            id: config.node.id.clone(),
            region: config.node.region.clone(),
            backhaul: config.backhaul.as_ref().map(|b| b.advertise),
        },
        queue_size: config.limits.queue_size,
        max_request_body: config.limits.max_request_body,
        remote,
    }
}

/// A local machine's status now.
fn status_of(m: &MachineEntry, node: &str) -> MachineStatus {
    MachineStatus {
        node: node.to_owned(),
        state: m.live.state(),
        services: m
            .live
            .slots()
            .map(|(port, s)| {
                (
                    port,
                    SlotStatus {
                        healthy: s.healthy(),
                        load: s.load.active(),
                    },
                )
            })
            .collect(),
        changed_at_us: now_us(),
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Catalog for Fleet {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }
}

impl State {
    /// Applies one change; returns whether a definition changed (a new snapshot
    /// is due).
    fn apply(&mut self, change: Change) -> bool {
        // Whatever comes next may read the rebuilt entries (a status, a node).
        if !matches!(change, Change::Machine(..)) {
            self.rebuild_dirty();
        }
        match change {
            Change::App(name, def) => {
                match def {
                    Some(d) => {
                        if self.apps.get(&name) == Some(&d) {
                            return false;
                        }
                        self.apps.insert(name.clone(), d);
                    }
                    None => {
                        if self.apps.remove(&name).is_none() {
                            return false;
                        }
                    }
                }
                self.rebuild_app(&name);
                true
            }
            Change::Machine(id, def) => {
                let old = self.machines.get(&id).cloned();
                if old == def {
                    return false;
                }
                if let Some(o) = &old {
                    if let Some(set) = self.by_app.get_mut(&o.app) {
                        set.remove(&id);
                    }
                }
                match def {
                    Some(d) => {
                        let app = d.app.clone();
                        self.by_app
                            .entry(app.clone())
                            .or_default()
                            .insert(id.clone());
                        self.machines.insert(id.clone(), d);
                        if let Some(o) = old.filter(|o| o.app != app) {
                            self.dirty.insert(o.app);
                        }
                        self.dirty.insert(app);
                    }
                    None => {
                        self.machines.remove(&id);
                        self.loads.remove(&id);
                        if let Some(o) = old {
                            self.dirty.insert(o.app);
                        }
                    }
                }
                true
            }
            Change::Node(id, def) => self.set_node(id, def),
            Change::Status(id, status) => {
                self.set_status(id, status);
                false
            }
            Change::Rtts(node, measured) => {
                self.set_their_rtts(node, measured);
                false
            }
            Change::Regions(seeds) => {
                if *self.snap.regions == seeds {
                    return false;
                }
                self.snap.regions = Arc::new(seeds);
                true
            }
        }
    }

    /// Kept in the node's live state, which outlives snapshots: nothing routes on
    /// another node's measurements, so nothing is rebuilt. They may come before
    /// the node's own entry does (its live state is made then, and found by it).
    fn set_their_rtts(&mut self, node: String, measured: Option<MeasuredRtts>) {
        if node == self.settings.me.id {
            return;
        }
        let rtts = measured
            .map(|m| {
                m.rtt_us
                    .into_iter()
                    .map(|(peer, us)| (peer, Duration::from_micros(us)))
                    .collect()
            })
            .unwrap_or_default();
        match self.node_live.get(&node) {
            Some(live) => live.set_their_rtts(rtts),
            None if rtts.is_empty() => {}
            None => self.node_live.entry(node).or_default().set_their_rtts(rtts),
        }
    }

    fn set_node(&mut self, id: String, def: Option<NodeDef>) -> bool {
        if id == self.settings.me.id {
            // This node's own entry (in a static fleet's list, or its registration
            // seen back from etcd) says nothing new.
            return false;
        }
        match def {
            Some(d) => {
                if self.nodes.get(&id) == Some(&d) {
                    return false;
                }
                let live = Arc::clone(self.node_live.entry(id.clone()).or_default());
                self.nodes.insert(id.clone(), d.clone());
                self.snap
                    .nodes
                    .insert(id.clone(), Arc::new(NodeEntry { def: d, live }));
            }
            None => {
                if self.nodes.remove(&id).is_none() {
                    return false;
                }
                self.node_live.remove(&id);
                self.snap.nodes.remove(&id);
            }
        }
        // A machine's entry holds its node's live state: rebuild those on it.
        let apps: BTreeSet<String> = self
            .machines
            .values()
            .filter(|m| m.node == id)
            .map(|m| m.app.clone())
            .collect();
        for app in apps {
            self.rebuild_app(&app);
        }
        true
    }

    /// Stores another node's machine's status in its live state.
    fn set_status(&mut self, id: String, status: Option<MachineStatus>) {
        let local = self
            .machines
            .get(&id)
            .is_some_and(|m| m.node == self.settings.me.id);
        if local {
            // Only this node writes its machines' state; an echo is not news.
            return;
        }
        match status {
            Some(s) => {
                if let Some(m) = self.snap.machines.get(&id) {
                    // A late write from a node the machine has moved away from.
                    if m.def.node != s.node {
                        return;
                    }
                    apply_status(&m.live, &s);
                }
                self.statuses.insert(id, s);
            }
            None => {
                self.statuses.remove(&id);
                if self.settings.remote == RemoteStatus::Published {
                    if let Some(m) = self.snap.machines.get(&id) {
                        m.live.set_reported(false);
                    }
                }
            }
        }
    }

    /// Rebuilds the apps whose machines changed since the last rebuild. Each
    /// rebuild leaves entries of other apps alone, so the order does not matter.
    fn rebuild_dirty(&mut self) {
        for app in std::mem::take(&mut self.dirty) {
            self.rebuild_app(&app);
        }
    }

    /// Rebuilds one app's entry from its definition and its machines', reusing the
    /// live objects (queues, loads, machine state) of what did not change.
    fn rebuild_app(&mut self, name: &str) {
        let old = self.snap.apps.get(name).cloned();
        if let Some(old) = &old {
            // Only what is still this app's: a hostname (or a machine) may have
            // moved to another app, rebuilt before this one.
            for h in &old.hostnames {
                self.snap.hosts.remove_if(h, |a| Arc::ptr_eq(a, old));
            }
            for m in &old.machines {
                if self
                    .snap
                    .machines
                    .get(&m.def.id)
                    .is_some_and(|e| Arc::ptr_eq(e, m))
                {
                    self.snap.machines.remove(&m.def.id);
                }
            }
        }
        let Some(def) = self.apps.get(name).cloned() else {
            self.snap.apps.remove(name);
            self.queues.retain(|(app, _), _| app != name);
            return;
        };
        let services: Vec<Arc<ServiceEntry>> = def
            .services
            .iter()
            .map(|svc| {
                let key = (name.to_owned(), svc.internal_port);
                let size = self.settings.queue_size;
                let queue = self
                    .queues
                    .entry(key)
                    .or_insert_with(|| Arc::new(WaitQueue::new(size)));
                Arc::new(ServiceEntry {
                    app: name.to_owned(),
                    def: svc.clone(),
                    queue: Arc::clone(queue),
                })
            })
            .collect();
        let ports: BTreeSet<u16> = services.iter().map(|s| s.def.internal_port).collect();
        self.queues
            .retain(|(app, port), _| app != name || ports.contains(port));

        let ids: Vec<String> = self
            .by_app
            .get(name)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let previous_by_id: HashMap<&str, &Arc<MachineEntry>> = old
            .iter()
            .flat_map(|o| o.machines.iter())
            .map(|m| (m.def.id.as_str(), m))
            .collect();
        let mut machines = Vec::with_capacity(ids.len());
        for id in ids {
            let previous = previous_by_id.get(id.as_str()).copied();
            if let Some(entry) = self.machine_entry(&id, &services, previous.map(Arc::as_ref)) {
                self.snap.machines.insert(id, Arc::clone(&entry));
                machines.push(entry);
            }
        }
        let runs = |local: bool| {
            machines
                .iter()
                .any(|m| m.is_local() == local && !m.def.driver.is_external())
        };
        let entry = Arc::new(AppEntry {
            startable: runs(true),
            remote_startable: runs(false),
            name: name.to_owned(),
            hostnames: def.hostnames.clone(),
            acme_hostnames: def.acme_hostnames.clone(),
            max_request_body: def
                .max_request_body
                .unwrap_or(self.settings.max_request_body),
            services,
            machines,
        });
        for h in &entry.hostnames {
            self.snap.hosts.insert(h, Arc::clone(&entry));
        }
        self.snap.apps.insert(name.to_owned(), entry);
    }

    fn machine_entry(
        &mut self,
        id: &str,
        services: &[Arc<ServiceEntry>],
        previous: Option<&MachineEntry>,
    ) -> Option<Arc<MachineEntry>> {
        let def = self.machines.get(id)?.clone();
        let local = def.node == self.settings.me.id;
        let node = if local {
            None
        } else {
            Some(Arc::clone(
                self.node_live.entry(def.node.clone()).or_default(),
            ))
        };
        let changes = local.then(|| Arc::clone(&self.local_changes));
        let mut slots = BTreeMap::new();
        for svc in services {
            let port = svc.def.internal_port;
            let limits = Limits {
                soft: svc.def.concurrency.soft_limit,
                hard: svc.def.concurrency.hard_limit,
            };
            // A load rings its service's queue when a unit is released: a load made
            // for a queue that has since been replaced (the app or service removed
            // and added again) would ring nobody's.
            let loads = self.loads.entry(id.to_owned()).or_default();
            let notifier = svc.queue.notifier();
            let load = loads
                .entry(port)
                .and_modify(|l| {
                    if !l.notifies(&notifier) {
                        *l = Arc::new(Load::with_notify(Arc::clone(&notifier)));
                    }
                })
                .or_insert_with(|| Arc::new(Load::with_notify(notifier)));
            let reuse = previous
                .and_then(|p| p.live.slot(port))
                .filter(|s| s.limits == limits && Arc::ptr_eq(&s.load, load));
            let slot = match reuse {
                Some(s) => Arc::clone(s),
                None => {
                    let s =
                        ServiceSlot::new(Arc::clone(load), limits).with_changes(changes.clone());
                    if let Some(p) = previous.and_then(|p| p.live.slot(port)) {
                        s.set_healthy(p.healthy());
                    }
                    Arc::new(s)
                }
            };
            slots.insert(port, slot);
        }
        if let Some(loads) = self.loads.get_mut(id) {
            loads.retain(|port, _| slots.contains_key(port));
        }

        let same_shape = previous.is_some_and(|p| {
            p.is_local() == local
                && p.live.slots().count() == slots.len()
                && slots
                    .iter()
                    .all(|(port, s)| p.live.slot(*port).is_some_and(|o| Arc::ptr_eq(o, s)))
        });
        let declared_changed = previous.is_some_and(|p| p.def.state != def.state);
        let live = match previous {
            Some(p) if same_shape => {
                if declared_changed && self.adopts_declared(&def, local) {
                    p.live.set_state(def.state);
                }
                Arc::clone(&p.live)
            }
            _ => Arc::new(self.new_live(&def, local, slots, previous, changes)),
        };
        Some(Arc::new(MachineEntry { def, live, node }))
    }

    /// Whether a machine's live state follows its declared state: this node's own
    /// machines do, and other nodes' in a static fleet. Not one that this node
    /// runs itself: its state is what its process does, which the lifecycle
    /// manager sets as it moves the machine towards the declared state.
    fn adopts_declared(&self, def: &MachineDef, local: bool) -> bool {
        if local {
            def.driver.is_external()
        } else {
            self.settings.remote == RemoteStatus::Declared
        }
    }

    fn new_live(
        &self,
        def: &MachineDef,
        local: bool,
        slots: BTreeMap<u16, Arc<ServiceSlot>>,
        previous: Option<&MachineEntry>,
        changes: Option<Arc<Notify>>,
    ) -> MachineLive {
        let live = MachineLive::new(def.id.clone(), slots).with_changes(changes);
        if let Some(p) = previous.filter(|p| p.is_local() == local) {
            let state = if p.def.state != def.state && self.adopts_declared(def, local) {
                def.state
            } else {
                p.live.state()
            };
            return live.with_state(state, p.live.reported());
        }
        if local && !def.driver.is_external() {
            // Nothing runs until the lifecycle manager starts it.
            return live.with_state(MachineState::Stopped, true);
        }
        if self.adopts_declared(def, local) {
            return live.with_state(def.state, true);
        }
        match self.statuses.get(&def.id).filter(|s| s.node == def.node) {
            Some(s) => {
                let live = live.with_state(s.state, true);
                apply_status(&live, s);
                live
            }
            None => live.with_state(MachineState::Stopped, false),
        }
    }

    /// The changes that turn the current definitions into `defs`.
    fn diff(&self, defs: Definitions) -> Vec<Change> {
        let mut changes = Vec::new();
        if *self.snap.regions != defs.regions {
            changes.push(Change::Regions(defs.regions));
        }
        let nodes: BTreeMap<String, NodeDef> =
            defs.nodes.into_iter().map(|n| (n.id.clone(), n)).collect();
        let apps: BTreeMap<String, AppDef> =
            defs.apps.into_iter().map(|a| (a.name.clone(), a)).collect();
        let machines: BTreeMap<String, MachineDef> = defs
            .machines
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        diff_map(&self.nodes, nodes, Change::Node, &mut changes);
        diff_map(&self.apps, apps, Change::App, &mut changes);
        diff_map(&self.machines, machines, Change::Machine, &mut changes);
        changes
    }
}

fn diff_map<T: PartialEq>(
    old: &BTreeMap<String, T>,
    new: BTreeMap<String, T>,
    change: fn(String, Option<T>) -> Change,
    out: &mut Vec<Change>,
) {
    for id in old.keys().filter(|k| !new.contains_key(*k)) {
        out.push(change(id.clone(), None));
    }
    for (id, def) in new {
        if old.get(&id) != Some(&def) {
            out.push(change(id, Some(def)));
        }
    }
}

fn apply_status(live: &MachineLive, s: &MachineStatus) {
    live.set_state(s.state);
    for (port, slot) in live.slots() {
        match s.services.get(&port) {
            Some(st) => {
                slot.set_healthy(st.healthy);
                slot.set_reported_load(st.load);
            }
            None => {
                slot.set_healthy(false);
                slot.set_reported_load(0);
            }
        }
    }
    live.set_reported(true);
}

#[cfg(test)]
pub(crate) mod fixtures {
    use crate::model::*;

    /// An app with one HTTP service on internal port 7000 (soft 1, hard 2).
    pub(crate) fn app(name: &str) -> AppDef {
        AppDef {
            name: name.into(),
            hostnames: vec![format!("{name}.test")],
            max_request_body: None,
            acme_hostnames: Vec::new(),
            services: vec![ServiceDef {
                internal_port: 7000,
                h2_backend: false,
                concurrency: Concurrency {
                    kind: ConcurrencyKind::Requests,
                    soft_limit: 1,
                    hard_limit: 2,
                },
                ports: vec![PortDef {
                    port: 80,
                    handlers: Handlers {
                        tls: false,
                        http: true,
                        proxy_proto: None,
                    },
                    force_https: false,
                }],
                tcp_checks: vec![],
                http_checks: vec![],
                autostart: true,
                autostop: AutoStop::Off,
                min_machines_running: 0,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::app;
    use super::*;
    use std::net::SocketAddr;

    fn settings(me: &str, remote: RemoteStatus) -> FleetSettings {
        FleetSettings {
            me: NodeDef {
                id: me.into(),
                region: "ams".into(),
                backhaul: Some("127.0.0.1:4431".parse().unwrap()),
            },
            queue_size: 10,
            max_request_body: 1 << 20,
            remote,
        }
    }

    fn machine(id: &str, app: &str, node: &str) -> MachineDef {
        MachineDef {
            id: id.into(),
            app: app.into(),
            region: "ams".into(),
            node: node.into(),
            ip: "127.0.0.2".parse().unwrap(),
            state: MachineState::Started,
            driver: Driver::External,
        }
    }

    fn node(id: &str) -> NodeDef {
        NodeDef {
            id: id.into(),
            region: "ord".into(),
            backhaul: Some("127.0.0.1:4432".parse::<SocketAddr>().unwrap()),
        }
    }

    fn status(state: MachineState, healthy: bool, load: u32) -> MachineStatus {
        MachineStatus {
            node: "ord-1".into(),
            state,
            services: [(7000, SlotStatus { healthy, load })].into(),
            changed_at_us: 1,
        }
    }

    fn eligible(f: &Fleet, app: &str) -> Vec<String> {
        let snap = f.snapshot();
        let a = &snap.apps[app];
        snap.eligible(a, &a.services[0])
            .into_iter()
            .map(|p| p.machine.def.id.clone())
            .collect()
    }

    #[test]
    fn new_limits_rebuild_every_app_and_keep_machine_load() {
        let f = Fleet::new(settings("ams-1", RemoteStatus::Declared));
        f.apply([
            Change::App("a".into(), Some(app("a"))),
            Change::Machine("m1".into(), Some(machine("m1", "a", "ams-1"))),
        ]);
        let before = f.snapshot();
        let load = Arc::clone(&before.machines["m1"].live.slot(7000).unwrap().load);
        let _held = load.try_acquire(2).unwrap();
        f.set_limits(10, 1 << 20);
        assert_eq!(
            f.snapshot().version,
            before.version,
            "unchanged: no new snapshot"
        );
        f.set_limits(3, 512);
        let after = f.snapshot();
        assert!(after.version > before.version);
        assert_eq!(after.apps["a"].max_request_body, 512);
        assert_eq!(after.hosts.lookup("a.test").unwrap().max_request_body, 512);
        assert!(Arc::ptr_eq(
            &before.apps["a"].services[0].queue,
            &after.apps["a"].services[0].queue
        ));
        assert!(Arc::ptr_eq(
            &before.machines["m1"].live,
            &after.machines["m1"].live
        ));
        assert_eq!(
            after.machines["m1"].live.slot(7000).unwrap().load.active(),
            1
        );
    }

    #[test]
    fn a_machine_change_leaves_other_apps_entries_untouched() {
        let f = Fleet::new(settings("ams-1", RemoteStatus::Declared));
        f.apply([
            Change::App("a".into(), Some(app("a"))),
            Change::App("b".into(), Some(app("b"))),
            Change::Machine("m1".into(), Some(machine("m1", "a", "ams-1"))),
            Change::Machine("m2".into(), Some(machine("m2", "b", "ams-1"))),
        ]);
        let before = f.snapshot();
        let m2_load = Arc::clone(&before.machines["m2"].live.slot(7000).unwrap().load);
        let _held = m2_load.try_acquire(2).unwrap();
        f.apply([Change::Machine(
            "m3".into(),
            Some(machine("m3", "b", "ams-1")),
        )]);
        let after = f.snapshot();
        assert!(after.version > before.version);
        assert!(Arc::ptr_eq(&before.apps["a"], &after.apps["a"]));
        assert!(Arc::ptr_eq(&before.machines["m1"], &after.machines["m1"]));
        assert!(!Arc::ptr_eq(&before.apps["b"], &after.apps["b"]));
        // m2's live state (and load) carried over into its new entry.
        assert!(Arc::ptr_eq(
            &before.machines["m2"].live,
            &after.machines["m2"].live
        ));
        assert_eq!(
            after.machines["m2"].live.slot(7000).unwrap().load.active(),
            1
        );
        assert_eq!(after.hosts.lookup("b.test").unwrap().machines.len(), 2);
        assert_eq!(eligible(&f, "b"), ["m2", "m3"]);

        // Removing an app takes its hostnames and machines out.
        f.apply([Change::App("b".into(), None)]);
        let gone = f.snapshot();
        assert!(gone.hosts.lookup("b.test").is_none());
        assert!(!gone.machines.contains_key("m2"));
        assert!(gone.machines.contains_key("m1"));
    }

    #[test]
    fn a_peers_measured_rtts_are_kept_in_its_live_state_without_a_rebuild() {
        let f = Fleet::new(settings("ams-1", RemoteStatus::Published));
        let measured = |pairs: &[(&str, u64)]| MeasuredRtts {
            rtt_us: pairs.iter().map(|(p, us)| (p.to_string(), *us)).collect(),
        };
        // Published before the node's own entry arrives: kept for it.
        f.apply([Change::Rtts(
            "ord-1".into(),
            Some(measured(&[("ams-1", 90_000), ("sin-1", 210_000)])),
        )]);
        f.apply([Change::Node("ord-1".into(), Some(node("ord-1")))]);
        let before = f.snapshot();
        let ord = Arc::clone(&before.nodes["ord-1"].live);
        assert_eq!(
            ord.their_rtts()["sin-1"],
            Duration::from_millis(210),
            "{:?}",
            ord.their_rtts()
        );
        f.apply([Change::Rtts(
            "ord-1".into(),
            Some(measured(&[("ams-1", 80_000)])),
        )]);
        assert_eq!(f.snapshot().version, before.version, "nothing rebuilt");
        assert_eq!(
            ord.their_rtts().into_iter().collect::<Vec<_>>(),
            [("ams-1".to_owned(), Duration::from_millis(80))]
        );
        // A deletion (the node's lease ran out) empties them.
        f.apply([Change::Rtts("ord-1".into(), None)]);
        assert!(ord.their_rtts().is_empty());
    }

    #[test]
    fn a_batch_of_machines_is_rebuilt_before_a_status_that_follows_it() {
        let f = Fleet::new(settings("ams-1", RemoteStatus::Published));
        let mut changes = vec![
            Change::Node("ord-1".into(), Some(node("ord-1"))),
            Change::Node("sin-1".into(), Some(node("sin-1"))),
            Change::App("a".into(), Some(app("a"))),
            Change::App("b".into(), Some(app("b"))),
            Change::Machine("far".into(), Some(machine("far", "a", "sin-1"))),
        ];
        for i in 0..1000 {
            let id = format!("m{i}");
            changes.push(Change::Machine(
                id.clone(),
                Some(machine(&id, "a", "ams-1")),
            ));
        }
        // A machine that moves to another app within the batch.
        changes.push(Change::Machine(
            "m0".into(),
            Some(machine("m0", "b", "ams-1")),
        ));
        f.apply(changes);
        let snap = f.snapshot();
        assert_eq!(snap.apps["a"].machines.len(), 1000, "m1..m999 and far");
        assert_eq!(snap.apps["b"].machines.len(), 1);
        assert_eq!(snap.machines.len(), 1001);
        assert!(Arc::ptr_eq(
            &snap.machines["m0"],
            &snap.apps["b"].machines[0]
        ));

        // `far` moves to ord-1, and ord-1's status for it follows in the same
        // batch. Read against the entry of before the move (on sin-1), the status
        // would be taken for a late write from another node and dropped.
        f.apply([
            Change::Machine("far".into(), Some(machine("far", "a", "ord-1"))),
            Change::Status("far".into(), Some(status(MachineState::Started, true, 3))),
        ]);
        let far = f.snapshot().machines["far"]
            .live
            .slot(7000)
            .unwrap()
            .clone();
        assert_eq!(far.seen_load(), 3);
    }

    #[test]
    fn published_statuses_decide_other_nodes_machines() {
        let f = Fleet::new(settings("ams-1", RemoteStatus::Published));
        f.apply([
            Change::Node("ord-1".into(), Some(node("ord-1"))),
            Change::App("a".into(), Some(app("a"))),
            Change::Machine("far".into(), Some(machine("far", "a", "ord-1"))),
            Change::Machine("near".into(), Some(machine("near", "a", "ams-1"))),
        ]);
        // Nothing published for `far` yet: only the local machine.
        assert_eq!(eligible(&f, "a"), ["near"]);
        let version = f.snapshot().version;
        f.apply([Change::Status(
            "far".into(),
            Some(status(MachineState::Started, true, 1)),
        )]);
        assert_eq!(f.snapshot().version, version, "a status rebuilds nothing");
        assert_eq!(eligible(&f, "a"), ["far", "near"]);
        let snap = f.snapshot();
        let slot = snap.machines["far"].live.slot(7000).unwrap();
        assert_eq!(slot.seen_load(), 1);
        assert!(matches!(
            snap.peer(&snap.machines["far"], 7000),
            Some(crate::Peer::Backhaul { .. })
        ));

        f.apply([Change::Status(
            "far".into(),
            Some(status(MachineState::Started, false, 0)),
        )]);
        assert_eq!(eligible(&f, "a"), ["near"]);
        f.apply([Change::Status(
            "far".into(),
            Some(status(MachineState::Started, true, 0)),
        )]);
        assert_eq!(eligible(&f, "a"), ["far", "near"]);
        // The node's lease ran out: its status goes, and so does it.
        f.apply([Change::Status("far".into(), None)]);
        assert_eq!(eligible(&f, "a"), ["near"]);
        f.apply([Change::Status(
            "far".into(),
            Some(status(MachineState::Started, true, 0)),
        )]);
        f.apply([Change::Node("ord-1".into(), None)]);
        assert_eq!(eligible(&f, "a"), ["near"]);
        // An unreachable node's machines are out too.
        f.apply([Change::Node("ord-1".into(), Some(node("ord-1")))]);
        assert_eq!(eligible(&f, "a"), ["far", "near"]);
        f.snapshot().nodes["ord-1"].live.set_reachable(false);
        assert_eq!(eligible(&f, "a"), ["near"]);
    }

    #[test]
    fn only_this_node_sets_its_machines_state_and_an_echo_changes_nothing() {
        let f = Fleet::new(settings("ams-1", RemoteStatus::Published));
        f.apply([
            Change::Node("ord-1".into(), Some(node("ord-1"))),
            Change::App("a".into(), Some(app("a"))),
            Change::Machine("far".into(), Some(machine("far", "a", "ord-1"))),
            Change::Machine("near".into(), Some(machine("near", "a", "ams-1"))),
        ]);
        let rung = f.local_changes();
        assert!(matches!(
            f.set_state("far", MachineState::Stopped),
            Err(CatalogError::NotLocal { .. })
        ));
        assert_eq!(
            f.set_state("nope", MachineState::Stopped),
            Err(CatalogError::UnknownMachine("nope".into()))
        );
        f.set_state("near", MachineState::Stopped).unwrap();
        assert!(std::pin::pin!(rung.notified())
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
            .is_ready());
        assert_eq!(eligible(&f, "a"), Vec::<String>::new());
        // Its own status, seen back from the store, does not override it.
        f.apply([Change::Status(
            "near".into(),
            Some(status(MachineState::Started, true, 0)),
        )]);
        assert_eq!(
            f.snapshot().machines["near"].live.state(),
            MachineState::Stopped
        );
        let published = f.local_statuses();
        assert_eq!(published["near"].state, MachineState::Stopped);
        assert_eq!(published.len(), 1);
    }

    #[test]
    fn replace_applies_only_the_difference() {
        let f = Fleet::new(settings("ams-1", RemoteStatus::Declared));
        let defs = Definitions {
            regions: RegionSeeds::default(),
            nodes: vec![],
            apps: vec![app("a"), app("b")],
            machines: vec![machine("m1", "a", "ams-1"), machine("m2", "b", "ams-1")],
        };
        f.replace(defs.clone());
        let before = f.snapshot();
        let mut changed = defs.clone();
        changed.machines[1].state = MachineState::Stopped;
        f.replace(changed);
        let after = f.snapshot();
        assert!(Arc::ptr_eq(&before.apps["a"], &after.apps["a"]));
        assert_eq!(after.machines["m2"].live.state(), MachineState::Stopped);
        let v = after.version;
        f.replace(defs_with_stopped(&defs));
        assert_eq!(
            f.snapshot().version,
            v,
            "nothing changed, nothing published"
        );
    }

    #[test]
    fn a_hostname_that_moves_stays_with_the_app_it_moved_to() {
        let f = Fleet::new(settings("ams-1", RemoteStatus::Declared));
        f.apply([Change::App("web".into(), Some(app("web")))]);
        // Renamed, as `tern catalog push` writes it: the new name first.
        let mut www = app("www");
        www.hostnames = vec!["web.test".into()];
        f.apply([
            Change::App("www".into(), Some(www)),
            Change::App("web".into(), None),
        ]);
        let snap = f.snapshot();
        assert_eq!(
            snap.hosts.lookup("web.test").map(|a| a.name.as_str()),
            Some("www")
        );
        // A hostname moving from one app to another in one replace.
        let mut b = app("b");
        b.hostnames.push("shared.test".into());
        f.replace(Definitions {
            apps: vec![app("a"), b.clone()],
            ..Definitions::default()
        });
        let mut a = app("a");
        a.hostnames.push("shared.test".into());
        b.hostnames.pop();
        f.replace(Definitions {
            apps: vec![a, b],
            ..Definitions::default()
        });
        let snap = f.snapshot();
        assert_eq!(
            snap.hosts.lookup("shared.test").map(|a| a.name.as_str()),
            Some("a")
        );
        assert_eq!(
            snap.hosts.lookup("b.test").map(|a| a.name.as_str()),
            Some("b")
        );
    }

    #[test]
    fn a_machines_load_rings_the_queue_of_its_service_as_it_is_now() {
        let f = Fleet::new(settings("ams-1", RemoteStatus::Declared));
        f.apply([
            Change::App("a".into(), Some(app("a"))),
            Change::Machine("m1".into(), Some(machine("m1", "a", "ams-1"))),
        ]);
        f.apply([Change::App("a".into(), None)]);
        f.apply([Change::App("a".into(), Some(app("a")))]);
        let snap = f.snapshot();
        let svc = &snap.apps["a"].services[0];
        let load = &snap.machines["m1"].live.slot(7000).unwrap().load;
        assert!(load.notifies(&svc.queue.notifier()));
    }

    #[test]
    fn a_status_from_a_node_that_does_not_run_the_machine_is_ignored() {
        let f = Fleet::new(settings("ams-1", RemoteStatus::Published));
        f.apply([
            Change::Node("ord-1".into(), Some(node("ord-1"))),
            Change::App("a".into(), Some(app("a"))),
            Change::Machine("far".into(), Some(machine("far", "a", "ord-1"))),
        ]);
        let mut elsewhere = status(MachineState::Started, true, 0);
        elsewhere.node = "sin-1".into();
        f.apply([Change::Status("far".into(), Some(elsewhere))]);
        assert!(eligible(&f, "a").is_empty());
        f.apply([Change::Status(
            "far".into(),
            Some(status(MachineState::Started, true, 0)),
        )]);
        assert_eq!(eligible(&f, "a"), ["far"]);
    }

    fn defs_with_stopped(d: &Definitions) -> Definitions {
        let mut d = d.clone();
        d.machines[1].state = MachineState::Stopped;
        d
    }

    use std::future::Future;
}
