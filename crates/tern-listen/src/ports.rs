//! The public ports, following the catalog: a port is bound when an app first
//! asks for it and closed when no app does any more (its connections drain), so
//! that apps pushed to etcd are served without a restart.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tern_catalog::Catalog;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::acceptors::Acceptors;
use crate::listener::{adopt, bind, run, ListenError, Listener, Shared};
use crate::plan::{plan, PortPlan};

/// Every public port this node serves.
pub struct Ports {
    ip: IpAddr,
    shared: Arc<Shared>,
    acceptors: Acceptors,
    open: BTreeMap<u16, Open>,
    /// Sockets handed over by the process this one replaces, by port: used
    /// instead of binding, then dropped once the first catalog is served.
    inherited: BTreeMap<u16, Vec<OwnedFd>>,
    sockets: Sockets,
    /// Closed ports whose accept loops outlived the close wait: not opened
    /// again until they end, since a new `SO_REUSEPORT` socket would join the
    /// old ones, and the connections queued on those would be lost.
    closing: BTreeMap<u16, Vec<JoinHandle<()>>>,
}

/// A descriptor of each open port's listening sockets (one, or one per worker),
/// to hand over in an upgrade; shared with whoever serves the upgrade socket.
pub type Sockets = Arc<Mutex<BTreeMap<u16, Vec<OwnedFd>>>>;

struct Open {
    plan: PortPlan,
    addr: SocketAddr,
    /// Turned true to close the port and drain its connections.
    stop: watch::Sender<bool>,
    /// The accept loops; the port is free again once they have returned.
    accepting: Vec<JoinHandle<()>>,
}

/// How long a closing port's accept loop may take to let go of its socket.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How soon a port that could not be opened is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

impl Ports {
    pub fn new(ip: IpAddr, shared: Arc<Shared>, acceptors: Acceptors) -> Self {
        Ports {
            ip,
            shared,
            acceptors,
            open: BTreeMap::new(),
            inherited: BTreeMap::new(),
            sockets: Sockets::default(),
            closing: BTreeMap::new(),
        }
    }

    /// Serves these ports on the sockets of the process this one replaces.
    pub fn inherit(&mut self, sockets: impl IntoIterator<Item = (u16, OwnedFd)>) {
        for (port, fd) in sockets {
            self.inherited.entry(port).or_default().push(fd);
        }
    }

    /// The open ports' sockets, kept up to date as ports open and close.
    pub fn sockets(&self) -> Sockets {
        Arc::clone(&self.sockets)
    }

    /// Opens the ports `snap`'s apps need and closes those they no longer do (or
    /// need with other handlers: closed first, then opened again); returns the
    /// ports that could not be opened.
    pub async fn reconcile(&mut self, snap: &tern_catalog::Snapshot) -> Vec<ListenError> {
        let wanted: BTreeMap<u16, PortPlan> = plan(snap).into_iter().map(|p| (p.port, p)).collect();
        let closing: Vec<u16> = self
            .open
            .iter()
            .filter(|(port, open)| wanted.get(*port) != Some(&open.plan))
            .map(|(port, _)| *port)
            .collect();
        for port in closing {
            let Some(open) = self.open.remove(&port) else {
                continue;
            };
            tracing::info!(port, "no app uses this port as it is any more: closing it");
            self.sockets_mut().remove(&port);
            let _ = open.stop.send(true);
            // Its sockets must be closed before the port can be bound again.
            let mut accepting = open.accepting;
            let all = futures_util::future::join_all(accepting.iter_mut());
            let _ = tokio::time::timeout(CLOSE_WAIT, all).await;
            accepting.retain(|loop_| !loop_.is_finished());
            if !accepting.is_empty() {
                self.closing.insert(port, accepting);
            }
        }
        self.closing
            .retain(|_, loops| loops.iter().any(|l| !l.is_finished()));
        let mut failed = Vec::new();
        for (port, p) in wanted {
            if self.open.contains_key(&port) {
                continue;
            }
            if self.closing.contains_key(&port) {
                failed.push(ListenError::StillClosing(port));
                continue;
            }
            match self.open_port(p) {
                Ok(open) => {
                    self.open.insert(port, open);
                }
                Err(e) => failed.push(e),
            }
        }
        // Sockets of ports this catalog does not use are closed.
        self.inherited.clear();
        failed
    }

    /// Opens one port: its inherited sockets, or new ones, and an accept loop
    /// per acceptor. Every inherited socket gets a loop, so that the
    /// connections in its queue are served.
    fn open_port(&mut self, p: PortPlan) -> Result<Open, ListenError> {
        let sockets = self.sockets_for(p)?;
        let addr = sockets[0]
            .local_addr()
            .unwrap_or(SocketAddr::new(self.ip, p.port));
        // Every loop's socket is registered with its runtime before anything is
        // kept or spawned: a failure leaves nothing listening for this port.
        let loops = self.acceptors.loops().max(sockets.len());
        let mut loop_sockets = Vec::with_capacity(loops);
        for i in 0..loops {
            let _runtime = self.acceptors.enter(i);
            let socket = sockets[i % sockets.len()]
                .for_accept_loop()
                .map_err(|source| ListenError::Bind { addr, source })?;
            loop_sockets.push(socket);
        }
        let fds: Vec<OwnedFd> = sockets
            .iter()
            .filter_map(|l| match l.dup() {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::warn!(port = p.port, error = %e, "cannot keep this port's socket for upgrades");
                    None
                }
            })
            .collect();
        self.sockets_mut().insert(p.port, fds);
        let limit = Arc::new(Semaphore::new(self.shared.max_connections));
        let (stop, stopped) = watch::channel(false);
        let mut accepting = Vec::with_capacity(loops);
        for (i, socket) in loop_sockets.into_iter().enumerate() {
            let accept = run(
                socket,
                Arc::clone(&self.shared),
                Arc::clone(&limit),
                stopped.clone(),
            );
            accepting.push(self.acceptors.spawn(i, accept));
        }
        Ok(Open {
            plan: p,
            addr,
            stop,
            accepting,
        })
    }

    /// A port's listening sockets: those inherited for it, as they are; else
    /// one new one and, per core, more up to one per worker. Inherited sockets
    /// get no new ones beside them: one bound now would join the port while the
    /// process this one replaces still serves it, and if this one then failed
    /// before serving, the connections queued on it would be lost. Workers
    /// without a socket of their own share the others'.
    fn sockets_for(&mut self, p: PortPlan) -> Result<Vec<Listener>, ListenError> {
        let reuse_port = self.acceptors.reuse_port();
        let mut sockets = Vec::new();
        for fd in self.inherited.remove(&p.port).unwrap_or_default() {
            sockets.push(adopt(p, fd, &self.shared)?);
        }
        if !sockets.is_empty() {
            return Ok(sockets);
        }
        sockets.push(bind(self.ip, p, &self.shared, reuse_port)?);
        while reuse_port && sockets.len() < self.acceptors.loops() {
            match bind(self.ip, p, &self.shared, true) {
                Ok(l) => sockets.push(l),
                Err(e) => {
                    tracing::info!(port = p.port, error = %e, "workers share this port's socket");
                    break;
                }
            }
        }
        Ok(sockets)
    }

    fn sockets_mut(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, Vec<OwnedFd>>> {
        self.sockets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where each open port listens.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.open.values().map(|o| o.addr).collect()
    }

    /// Follows the catalog until `shutdown` turns true, then closes every port
    /// (their connections drain) and ends once their accept loops have (within
    /// a bound), so that nothing is accepted after it. A port that cannot be
    /// opened is tried again every second.
    pub fn follow(
        mut self,
        catalog: Arc<dyn Catalog>,
        mut shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let mut updates = catalog.watch();
        tokio::spawn(async move {
            // Whatever was published between the first reconcile and this watch.
            updates.mark_changed();
            let mut failing = false;
            loop {
                let retry = async {
                    if failing {
                        tokio::time::sleep(RETRY_EVERY).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    changed = updates.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                    () = retry => {}
                    _ = shutdown.changed() => break,
                }
                let snap = Arc::clone(&updates.borrow_and_update());
                let failed = self.reconcile(&snap).await;
                if !failing || !failed.is_empty() {
                    for e in &failed {
                        tracing::error!(error = %e, "cannot serve a port the catalog asks for; trying again");
                    }
                }
                failing = !failed.is_empty();
            }
            let _ = shutdown.wait_for(|s| *s).await;
            for open in self.open.values() {
                let _ = open.stop.send(true);
            }
            let loops = self.open.into_values().flat_map(|open| open.accepting);
            let all = futures_util::future::join_all(loops);
            let _ = tokio::time::timeout(CLOSE_WAIT, all).await;
        })
    }
}
