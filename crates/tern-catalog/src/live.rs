//! Live state of a machine that must survive catalog swaps: per-service health and load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tern_balance::{Band, Limits, Load};

/// One machine's live state, shared by every snapshot that holds the machine.
#[derive(Debug)]
pub struct MachineLive {
    pub id: String,
    /// Keyed by the service's internal port.
    slots: BTreeMap<u16, Arc<ServiceSlot>>,
}

impl MachineLive {
    pub fn new(id: String, slots: BTreeMap<u16, Arc<ServiceSlot>>) -> Self {
        MachineLive { id, slots }
    }

    pub fn slot(&self, internal_port: u16) -> Option<&Arc<ServiceSlot>> {
        self.slots.get(&internal_port)
    }

    pub fn slots(&self) -> impl Iterator<Item = (u16, &Arc<ServiceSlot>)> {
        self.slots.iter().map(|(p, s)| (*p, s))
    }
}

/// A machine as one service sees it: is it passing the service's checks, how loaded is it.
#[derive(Debug)]
pub struct ServiceSlot {
    pub load: Arc<Load>,
    pub limits: Limits,
    healthy: AtomicBool,
}

impl ServiceSlot {
    pub fn new(load: Arc<Load>, limits: Limits) -> Self {
        // Optimistic start, as nginx and HAProxy do: a machine takes traffic until a
        // check says otherwise, so a fresh node serves at once.
        ServiceSlot {
            load,
            limits,
            healthy: AtomicBool::new(true),
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Sets health; returns the previous value so callers can log transitions.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::AcqRel)
    }

    pub fn band(&self) -> Band {
        self.limits.band(self.load.active())
    }
}
