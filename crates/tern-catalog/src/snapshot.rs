//! One immutable view of the fleet, and the ranked choice of machines it offers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tern_balance::{choose, Candidate, Distance, WaitQueue};
use tern_config::{Machine, MachineState, RegionDistances, Service};

use crate::{HostIndex, MachineLive, ServiceSlot};

/// The whole fleet at one version. Cheap to share; never mutated once published.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub node_id: String,
    pub node_region: String,
    pub distances: RegionDistances,
    pub apps: BTreeMap<String, Arc<AppEntry>>,
    pub hosts: HostIndex<Arc<AppEntry>>,
    pub machines: BTreeMap<String, Arc<MachineEntry>>,
}

#[derive(Debug)]
pub struct AppEntry {
    pub name: String,
    pub hostnames: Vec<String>,
    pub max_request_body: u64,
    pub services: Vec<Arc<ServiceEntry>>,
    pub machines: Vec<Arc<MachineEntry>>,
}

#[derive(Debug)]
pub struct ServiceEntry {
    pub app: String,
    pub config: Service,
    pub queue: Arc<WaitQueue>,
}

#[derive(Debug)]
pub struct MachineEntry {
    pub config: Machine,
    pub live: Arc<MachineLive>,
}

/// A machine chosen for one service, with everything needed to reach it.
#[derive(Debug, Clone)]
pub struct Pick {
    pub machine: Arc<MachineEntry>,
    pub slot: Arc<ServiceSlot>,
    pub addr: SocketAddr,
}

impl AppEntry {
    /// The service of this app that listens on public `port`.
    pub fn service_for_port(&self, port: u16) -> Option<&Arc<ServiceEntry>> {
        self.services
            .iter()
            .find(|s| s.config.ports.iter().any(|p| p.port == port))
    }
}

impl Snapshot {
    /// The app that owns a raw TCP port (one app alone, as `tern check` enforces).
    pub fn tcp_owner(&self, port: u16) -> Option<&Arc<AppEntry>> {
        self.apps.values().find(|a| {
            a.services.iter().any(|s| {
                s.config
                    .ports
                    .iter()
                    .any(|p| p.port == port && !p.handlers.http && !p.handlers.tls)
            })
        })
    }

    /// Started, healthy machines of `app` for `service`, best first; those at their
    /// hard limit are left out (the caller queues when the list is empty but
    /// `eligible` is not).
    pub fn ranked(&self, app: &AppEntry, service: &ServiceEntry) -> Vec<Pick> {
        let mut eligible = self.eligible(app, service);
        if eligible.len() <= 1 {
            // Nothing to rank; only the hard limit can rule it out.
            eligible.retain(|p| p.slot.band() != tern_balance::Band::AtHard);
            return eligible;
        }
        let candidates: Vec<Candidate> = eligible
            .iter()
            .map(|p| Candidate {
                band: p.slot.band(),
                distance: self
                    .distances
                    .rtt(&self.node_region, &p.machine.config.region)
                    .map_or(Distance::Unknown, Distance::Rtt),
            })
            .collect();
        let order = choose(&candidates, &mut rand::rng());
        order.into_iter().map(|i| eligible[i].clone()).collect()
    }

    /// Whether any started, healthy machine not in `tried` serves `service`;
    /// allocates nothing.
    pub fn any_eligible(&self, app: &AppEntry, service: &ServiceEntry, tried: &[String]) -> bool {
        let port = service.config.internal_port;
        app.machines.iter().any(|m| {
            m.config.state == MachineState::Started
                && m.live.slot(port).is_some_and(|s| s.healthy())
                && !tried.contains(&m.config.id)
        })
    }

    /// Started, healthy machines of `app` for `service`, whatever their load.
    pub fn eligible(&self, app: &AppEntry, service: &ServiceEntry) -> Vec<Pick> {
        let port = service.config.internal_port;
        app.machines
            .iter()
            .filter(|m| m.config.state == MachineState::Started)
            .filter_map(|m| {
                let slot = m.live.slot(port)?;
                slot.healthy().then(|| Pick {
                    machine: Arc::clone(m),
                    slot: Arc::clone(slot),
                    addr: SocketAddr::new(m.config.ip, port),
                })
            })
            .collect()
    }
}
