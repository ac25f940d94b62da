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
    /// One accept loop per port, spawned on the current runtime.
    #[default]
    Shared,
    /// One accept loop per port on each of these current-thread runtimes.
    PerCore(Arc<[Handle]>),
}

impl Acceptors {
    /// How many accept loops, and sockets, each port gets.
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

    /// Enters the runtime of accept loop `i`, so that its socket is registered
    /// with that runtime's I/O driver; `None` with work stealing, whose loops
    /// run on the runtime the caller is in already.
    pub fn enter(&self, i: usize) -> Option<tokio::runtime::EnterGuard<'_>> {
        match self {
            Acceptors::PerCore(workers) if !workers.is_empty() => {
                Some(workers[i % workers.len()].enter())
            }
            _ => None,
        }
    }

    /// Spawns accept loop `i` (of [`Acceptors::loops`]) where it belongs.
    pub fn spawn<F>(&self, i: usize, accept: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self {
            Acceptors::PerCore(workers) if !workers.is_empty() => {
                workers[i % workers.len()].spawn(accept)
            }
            _ => tokio::spawn(accept),
        }
    }
}
