//! One immutable view of the fleet, and the ranked choice of machines it offers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_balance::{choose, Band, Candidate, Distance, WaitQueue};

use crate::live::{MachineLive, NodeLive, ServiceSlot};
use crate::model::{MachineDef, NodeDef, RegionSeeds, ServiceDef};
use crate::HostIndex;

/// A persistent ordered map: cloning it is O(1) and a change to one entry copies
/// only the path to it, so a snapshot follows one machine's change without the
/// rest of the fleet being rebuilt or copied.
pub type FleetMap<V> = imbl::OrdMap<String, V>;

/// The whole fleet at one version. Cheap to share; never mutated once published.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub version: u64,
    /// This node.
    pub node: Arc<NodeDef>,
    /// Operator-given RTTs between regions: the seed for unmeasured peers.
    pub regions: Arc<RegionSeeds>,
    /// Every other node, by id.
    pub nodes: FleetMap<Arc<NodeEntry>>,
    pub apps: FleetMap<Arc<AppEntry>>,
    pub hosts: HostIndex<Arc<AppEntry>>,
    /// Every machine of a known app, by id.
    pub machines: FleetMap<Arc<MachineEntry>>,
}

/// Another node, as this one knows it.
#[derive(Debug)]
pub struct NodeEntry {
    pub def: NodeDef,
    pub live: Arc<NodeLive>,
}

#[derive(Debug)]
pub struct AppEntry {
    pub name: String,
    pub hostnames: Vec<String>,
    /// The hostnames whose certificates nodes obtain by ACME.
    pub acme_hostnames: Vec<String>,
    pub max_request_body: u64,
    pub services: Vec<Arc<ServiceEntry>>,
    pub machines: Vec<Arc<MachineEntry>>,
    /// Whether this node runs any of its machines (and so may start one).
    pub startable: bool,
    /// Whether another node runs any of them (and so may start one when asked).
    pub remote_startable: bool,
}

#[derive(Debug)]
pub struct ServiceEntry {
    pub app: String,
    pub def: ServiceDef,
    /// Where requests wait while every machine is at its hard limit.
    pub queue: Arc<WaitQueue>,
}

#[derive(Debug)]
pub struct MachineEntry {
    pub def: MachineDef,
    pub live: Arc<MachineLive>,
    /// What this node knows of the machine's node; `None` when it is this node.
    pub node: Option<Arc<NodeLive>>,
}

impl MachineEntry {
    /// Whether this node runs it.
    pub fn is_local(&self) -> bool {
        self.node.is_none()
    }

    /// Whether it may take traffic from this node: started, reported, and its
    /// node reachable.
    pub fn routable(&self) -> bool {
        self.live.started() && self.node.as_ref().is_none_or(|n| n.reachable())
    }
}

/// How a chosen machine is reached: a machine is connected to only by the node
/// that runs it, so from anywhere else it is behind that node's backhaul.
#[derive(Debug, Clone)]
pub enum Peer {
    /// This node's own machine, over TCP.
    Local(SocketAddr),
    /// Another node's machine, through that node's backhaul.
    Backhaul {
        node: Arc<NodeEntry>,
        /// The machine's own address, which only its node connects to.
        machine: SocketAddr,
    },
}

/// A machine chosen for one service, with everything needed to reach it.
#[derive(Debug, Clone)]
pub struct Pick {
    pub machine: Arc<MachineEntry>,
    pub slot: Arc<ServiceSlot>,
    pub peer: Peer,
}

impl Pick {
    /// The machine's own address (its IP and the service's internal port).
    pub fn addr(&self) -> SocketAddr {
        match &self.peer {
            Peer::Local(a) => *a,
            Peer::Backhaul { machine, .. } => *machine,
        }
    }
}

impl AppEntry {
    /// The service of this app that listens on public `port`.
    pub fn service_for_port(&self, port: u16) -> Option<&Arc<ServiceEntry>> {
        self.services
            .iter()
            .find(|s| s.def.ports.iter().any(|p| p.port == port))
    }

    /// The service with this internal port.
    pub fn service_for_internal_port(&self, port: u16) -> Option<&Arc<ServiceEntry>> {
        self.services.iter().find(|s| s.def.internal_port == port)
    }
}

/// Below any measured round trip: another node in the same region still counts
/// as farther than this node's own machines.
const NEIGHBOUR: Duration = Duration::from_micros(1);

impl Snapshot {
    /// The app that owns a raw TCP port (one app alone, as `tern check` enforces).
    pub fn tcp_owner(&self, port: u16) -> Option<&Arc<AppEntry>> {
        self.apps.values().find(|a| {
            a.services.iter().any(|s| {
                s.def
                    .ports
                    .iter()
                    .any(|p| p.port == port && !p.handlers.http && !p.handlers.tls)
            })
        })
    }

    /// Routable, healthy machines of `app` for `service`, best first; those at
    /// their hard limit are left out (the caller queues when the list is empty
    /// but `any_eligible` is not).
    pub fn ranked(&self, app: &AppEntry, service: &ServiceEntry) -> Vec<Pick> {
        let mut eligible = self.eligible(app, service);
        if eligible.len() <= 1 {
            // Nothing to rank; only the hard limit can rule it out.
            eligible.retain(|p| p.slot.band() != Band::AtHard);
            return eligible;
        }
        let candidates: Vec<Candidate> = eligible
            .iter()
            .map(|p| Candidate {
                band: p.slot.band(),
                distance: self.distance(&p.machine),
            })
            .collect();
        let order = choose(&candidates, &mut rand::rng());
        order.into_iter().map(|i| eligible[i].clone()).collect()
    }

    /// How far a machine is from this node: for its own, the operator's RTT between
    /// their regions (zero when they share one); for another node's, the measured
    /// round trip to that node, else the operator's RTT, and never less than its
    /// own machines in the same region.
    pub fn distance(&self, machine: &MachineEntry) -> Distance {
        let seed = || self.regions.rtt(&self.node.region, &machine.def.region);
        let Some(node) = &machine.node else {
            return seed().map_or(Distance::Unknown, Distance::Rtt);
        };
        node.rtt()
            .or_else(seed)
            .map_or(Distance::Unknown, |d| Distance::Rtt(d.max(NEIGHBOUR)))
    }

    /// Whether any routable, healthy machine not in `tried` serves `service`;
    /// allocates nothing.
    pub fn any_eligible(&self, app: &AppEntry, service: &ServiceEntry, tried: &[String]) -> bool {
        let port = service.def.internal_port;
        app.machines.iter().any(|m| {
            m.routable()
                && m.live.slot(port).is_some_and(|s| s.healthy())
                && !tried.contains(&m.def.id)
                && self.peer(m, port).is_some()
        })
    }

    /// Routable, healthy machines of `app` for `service`, whatever their load.
    pub fn eligible(&self, app: &AppEntry, service: &ServiceEntry) -> Vec<Pick> {
        let port = service.def.internal_port;
        app.machines
            .iter()
            .filter(|m| m.routable())
            .filter_map(|m| {
                let slot = m.live.slot(port)?;
                if !slot.healthy() {
                    return None;
                }
                Some(Pick {
                    machine: Arc::clone(m),
                    slot: Arc::clone(slot),
                    peer: self.peer(m, port)?,
                })
            })
            .collect()
    }

    /// How this node reaches `machine` on `port`; `None` when its node is unknown
    /// or has no backhaul.
    pub fn peer(&self, machine: &MachineEntry, port: u16) -> Option<Peer> {
        let addr = SocketAddr::new(machine.def.ip, port);
        if machine.is_local() {
            return Some(Peer::Local(addr));
        }
        let node = self.nodes.get(&machine.def.node)?;
        node.def.backhaul?;
        Some(Peer::Backhaul {
            node: Arc::clone(node),
            machine: addr,
        })
    }

    /// This node's own machine `id` for `service`, if it may take traffic, with its
    /// slot: what a peer's request names.
    pub fn local_pick(&self, app: &AppEntry, service: &ServiceEntry, id: &str) -> Option<Pick> {
        let port = service.def.internal_port;
        let m = app.machines.iter().find(|m| m.def.id == id)?;
        if !m.is_local() || !m.routable() {
            return None;
        }
        let slot = m.live.slot(port).filter(|s| s.healthy())?;
        Some(Pick {
            machine: Arc::clone(m),
            slot: Arc::clone(slot),
            peer: Peer::Local(SocketAddr::new(m.def.ip, port)),
        })
    }
}
