//! Where a public port's accept loops run: one loop on the runtime that opens
//! the port (work stealing spreads its connections), or one loop per worker
//! runtime, each on its own `SO_REUSEPORT` socket (per core: the kernel spreads
//! connections over the sockets, and each stays on the worker that accepted it).

use std::future::Future;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

#[derive(Clone, Default)]
pub enum Acceptors {
    /// One accept loop per port socket, spawned on the current runtime.
    #[default]
    Shared,
    /// One accept loop per port on each of these current-thread runtimes.
    PerCore(Arc<[Handle]>),
}

impl Acceptors {
    /// How many accept loops, and sockets, a newly bound port gets (a port
    /// with more inherited sockets gets a loop for each).
    pub fn loops(&self) -> usize {
        match self {
            Acceptors::Shared => 1,
            Acceptors::PerCore(workers) => workers.len().max(1),
        }
    }

    /// Whether a port's sockets are bound with `SO_REUSEPORT`, so that one
    /// per worker can listen on it.
    pub fn reuse_port(&self) -> bool {
        matches!(self, Acceptors::PerCore(_))
    }

    /// The runtime of accept loop `i`; `None` with work stealing, whose loops
    /// run on the runtime that opens the port.
    fn runtime(&self, i: usize) -> Option<&Handle> {
        match self {
            Acceptors::PerCore(workers) if !workers.is_empty() => Some(&workers[i % workers.len()]),
            _ => None,
        }
    }

    /// Enters the runtime of accept loop `i`, so that its socket is registered
    /// with that runtime's I/O driver.
    pub fn enter(&self, i: usize) -> Option<tokio::runtime::EnterGuard<'_>> {
        self.runtime(i).map(Handle::enter)
    }

    /// Spawns accept loop `i` (of [`Acceptors::loops`]) where it belongs.
    pub fn spawn<F>(&self, i: usize, accept: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self.runtime(i) {
            Some(runtime) => runtime.spawn(accept),
            None => tokio::spawn(accept),
        }
    }
}
