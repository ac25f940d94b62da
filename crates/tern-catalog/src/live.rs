//! Live state that outlives catalog swaps and changes without one: a machine's
//! state, its per-service health and load, and what this node knows of each peer.
//! Routing reads these atomics directly, so a status change reaches it the moment
//! it is stored, with no snapshot rebuilt.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tern_balance::{Band, Limits, Load};
use tokio::sync::{watch, Notify};

use crate::model::MachineState;

/// What this node knows of one peer node, shared by every snapshot that holds it.
#[derive(Debug)]
pub struct NodeLive {
    /// Whether the backhaul to it works (or has not failed yet).
    reachable: AtomicBool,
    /// Smoothed round trip in microseconds; `u64::MAX` until measured.
    rtt_us: AtomicU64,
    /// The round trips the peer itself measured to its own peers, as it last
    /// published them (etcd); nothing routes on them, the dashboard shows them.
    their_rtts: Mutex<BTreeMap<String, Duration>>,
}

impl Default for NodeLive {
    fn default() -> Self {
        NodeLive {
            reachable: AtomicBool::new(true),
            rtt_us: AtomicU64::new(u64::MAX),
            their_rtts: Mutex::new(BTreeMap::new()),
        }
    }
}

impl NodeLive {
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    /// Sets reachability; returns the previous value so callers can log changes.
    pub fn set_reachable(&self, reachable: bool) -> bool {
        self.reachable.swap(reachable, Ordering::AcqRel)
    }

    /// The measured round trip, once there is one.
    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Ordering::Acquire) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    pub fn set_rtt(&self, rtt: Duration) {
        let us = u64::try_from(rtt.as_micros())
            .unwrap_or(u64::MAX - 1)
            .min(u64::MAX - 1);
        self.rtt_us.store(us, Ordering::Release);
    }

    /// What the peer measured to each of its peers, as it last published it.
    pub fn their_rtts(&self) -> BTreeMap<String, Duration> {
        self.their_rtts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_their_rtts(&self, rtts: BTreeMap<String, Duration>) {
        *self
            .their_rtts
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = rtts;
    }
}

/// One machine's live state, shared by every snapshot that holds the machine.
#[derive(Debug)]
pub struct MachineLive {
    pub id: String,
    state: AtomicU8,
    /// Whether a status is out for it: always for this node's own machines and in
    /// a static fleet; for another node's machine in etcd, once that node has
    /// published one (and not after its lease ran out).
    reported: AtomicBool,
    /// Keyed by the service's internal port.
    slots: BTreeMap<u16, Arc<ServiceSlot>>,
    /// Rung when this node's own machine changes state, for the catalog to publish.
    changes: Option<Arc<Notify>>,
    /// Bumped when the machine is about to be stopped or suspended: its WebSocket
    /// tunnels say goodbye to their clients.
    leaving: watch::Sender<u64>,
}

impl MachineLive {
    pub fn new(id: String, slots: BTreeMap<u16, Arc<ServiceSlot>>) -> Self {
        MachineLive {
            id,
            state: AtomicU8::new(MachineState::Started.to_u8()),
            reported: AtomicBool::new(true),
            slots,
            changes: None,
            leaving: watch::Sender::new(0),
        }
    }

    /// A machine whose state changes ring `changes` (this node's own).
    pub(crate) fn with_changes(mut self, changes: Option<Arc<Notify>>) -> Self {
        self.changes = changes;
        self
    }

    pub(crate) fn with_state(self, state: MachineState, reported: bool) -> Self {
        self.state.store(state.to_u8(), Ordering::Release);
        self.reported.store(reported, Ordering::Release);
        self
    }

    pub fn state(&self) -> MachineState {
        MachineState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Sets the state; returns whether it changed.
    pub fn set_state(&self, state: MachineState) -> bool {
        let changed = self.state.swap(state.to_u8(), Ordering::AcqRel) != state.to_u8();
        if changed {
            if let Some(n) = &self.changes {
                n.notify_one();
            }
        }
        changed
    }

    pub fn reported(&self) -> bool {
        self.reported.load(Ordering::Acquire)
    }

    pub(crate) fn set_reported(&self, reported: bool) {
        self.reported.store(reported, Ordering::Release);
    }

    /// Whether it may take traffic at all: reported and started.
    pub fn started(&self) -> bool {
        self.reported() && self.state() == MachineState::Started
    }

    /// Tells the machine's tunnels that it is going away (a stop or a suspend).
    pub fn leave(&self) {
        self.leaving.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes when the machine is going away.
    pub fn leaving(&self) -> watch::Receiver<u64> {
        self.leaving.subscribe()
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
    /// Units in flight from this node.
    pub load: Arc<Load>,
    pub limits: Limits,
    healthy: AtomicBool,
    /// For another node's machine: the load its node last published. This node's
    /// own in-flight units come on top.
    reported_load: AtomicU32,
    changes: Option<Arc<Notify>>,
}

impl ServiceSlot {
    pub fn new(load: Arc<Load>, limits: Limits) -> Self {
        // Optimistic start, as nginx and HAProxy do: a machine takes traffic until a
        // check says otherwise, so a fresh node serves at once.
        ServiceSlot {
            load,
            limits,
            healthy: AtomicBool::new(true),
            reported_load: AtomicU32::new(0),
            changes: None,
        }
    }

    pub(crate) fn with_changes(mut self, changes: Option<Arc<Notify>>) -> Self {
        self.changes = changes;
        self
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Sets health; returns the previous value so callers can log transitions.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        if was != healthy {
            if let Some(n) = &self.changes {
                n.notify_one();
            }
        }
        was
    }

    pub fn reported_load(&self) -> u32 {
        self.reported_load.load(Ordering::Acquire)
    }

    pub(crate) fn set_reported_load(&self, load: u32) {
        self.reported_load.store(load, Ordering::Release);
    }

    /// The load as this node sees it: what the machine's node last published plus
    /// this node's own units in flight.
    pub fn seen_load(&self) -> u32 {
        self.load.active().saturating_add(self.reported_load())
    }

    pub fn band(&self) -> Band {
        self.limits.band(self.seen_load())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_load_counts_with_this_nodes_own() {
        let slot = ServiceSlot::new(Arc::new(Load::default()), Limits { soft: 2, hard: 4 });
        let _a = slot.load.try_acquire(4).unwrap();
        assert_eq!(slot.band(), Band::UnderSoft);
        slot.set_reported_load(3);
        assert_eq!(slot.seen_load(), 4);
        assert_eq!(slot.band(), Band::AtHard);
    }

    #[test]
    fn own_changes_ring_and_others_do_not() {
        let rung = Arc::new(Notify::new());
        let m = MachineLive::new("m".into(), BTreeMap::new()).with_changes(Some(rung.clone()));
        assert!(!m.set_state(MachineState::Started));
        assert!(m.set_state(MachineState::Stopped));
        // A stored permit means it rang.
        let waited = futures_util_now(rung.notified());
        assert!(waited);
        let rtt = NodeLive::default();
        assert_eq!(rtt.rtt(), None);
        rtt.set_rtt(Duration::from_millis(20));
        assert_eq!(rtt.rtt(), Some(Duration::from_millis(20)));
    }

    /// Whether a future is ready at its first poll.
    fn futures_util_now<F: std::future::Future>(f: F) -> bool {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        f.as_mut().poll(&mut cx).is_ready()
    }
}
