//! The watchdog: hands out probes and keeps a list of live connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::conn::{Conn, ConnSnapshot, Probe};
use crate::recent::{RecentSpins, SpinRecord};
use crate::SpinConfig;

#[derive(Debug)]
pub(crate) struct Registry {
    config: SpinConfig,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Weak<Conn>>>,
    pub(crate) spins: AtomicU64,
    pub(crate) recent: RecentSpins,
}

impl Registry {
    pub(crate) fn remove(&self, id: u64) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

/// Registers connections and lists the live ones. One per process is usual.
#[derive(Debug, Clone)]
pub struct Watchdog {
    inner: Arc<Registry>,
}

impl Watchdog {
    pub fn new(config: SpinConfig) -> Self {
        Watchdog {
            inner: Arc::new(Registry {
                config,
                next_id: AtomicU64::new(1),
                live: Mutex::new(HashMap::new()),
                spins: AtomicU64::new(0),
                recent: RecentSpins::default(),
            }),
        }
    }

    pub fn config(&self) -> SpinConfig {
        self.inner.config
    }

    /// A new connection to watch.
    pub fn register(&self) -> Probe {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let config = self.inner.config;
        let conn = Arc::new(Conn::new(id, config, Arc::downgrade(&self.inner)));
        self.inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::downgrade(&conn));
        Probe(conn)
    }

    /// Live connections right now.
    pub fn connections(&self) -> Vec<ConnSnapshot> {
        let live: Vec<Arc<Conn>> = self
            .inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        live.iter().map(|c| c.snapshot()).collect()
    }

    /// Spins found since start, over all connections.
    pub fn spins(&self) -> u64 {
        self.inner.spins.load(Ordering::Relaxed)
    }

    /// The last spins found (each connection's first), newest first; at most
    /// [`crate::RECENT_SPINS`].
    pub fn recent_spins(&self) -> Vec<SpinRecord> {
        self.inner.recent.list()
    }
}
