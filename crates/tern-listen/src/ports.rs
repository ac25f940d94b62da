//! The public ports, following the catalog: a port is bound when an app first
//! asks for it and closed when no app does any more (its connections drain), so
//! that apps pushed to etcd are served without a restart.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tern_catalog::Catalog;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::listener::{bind, run, ListenError, Shared};
use crate::plan::{plan, PortPlan};

/// Every public port this node serves.
pub struct Ports {
    ip: IpAddr,
    shared: Arc<Shared>,
    open: BTreeMap<u16, Open>,
}

struct Open {
    plan: PortPlan,
    addr: SocketAddr,
    /// Turned true to close the port and drain its connections.
    stop: watch::Sender<bool>,
}

impl Ports {
    pub fn new(ip: IpAddr, shared: Arc<Shared>) -> Self {
        Ports {
            ip,
            shared,
            open: BTreeMap::new(),
        }
    }

    /// Opens the ports `snap`'s apps need and closes those they no longer do;
    /// returns the ports that could not be opened.
    pub fn reconcile(&mut self, snap: &tern_catalog::Snapshot) -> Vec<ListenError> {
        let wanted: BTreeMap<u16, PortPlan> = plan(snap).into_iter().map(|p| (p.port, p)).collect();
        self.open.retain(|port, open| {
            let keep = wanted.get(port) == Some(&open.plan);
            if !keep {
                tracing::info!(port, "no app uses this port any more: closing it");
                let _ = open.stop.send(true);
            }
            keep
        });
        let mut failed = Vec::new();
        for (port, p) in wanted {
            if self.open.contains_key(&port) {
                continue;
            }
            match bind(self.ip, p, &self.shared) {
                Ok(listener) => {
                    let addr = listener
                        .local_addr()
                        .unwrap_or(SocketAddr::new(self.ip, port));
                    let (stop, stopped) = watch::channel(false);
                    tokio::spawn(run(listener, Arc::clone(&self.shared), stopped));
                    self.open.insert(
                        port,
                        Open {
                            plan: p,
                            addr,
                            stop,
                        },
                    );
                }
                Err(e) => failed.push(e),
            }
        }
        failed
    }

    /// Where each open port listens.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.open.values().map(|o| o.addr).collect()
    }

    /// Follows the catalog until `shutdown` turns true, then closes every port
    /// (their connections drain).
    pub fn follow(
        mut self,
        catalog: Arc<dyn Catalog>,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let mut updates = catalog.watch();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = updates.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let snap = Arc::clone(&updates.borrow_and_update());
                        for e in self.reconcile(&snap) {
                            tracing::error!(error = %e, "cannot serve a port the catalog asks for");
                        }
                    }
                    _ = shutdown.changed() => break,
                }
            }
            let _ = shutdown.wait_for(|s| *s).await;
            for open in self.open.values() {
                let _ = open.stop.send(true);
            }
        })
    }
}
