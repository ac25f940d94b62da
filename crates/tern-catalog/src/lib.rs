//! The fleet as this node sees it: an immutable snapshot of apps, services and
//! machines, swapped atomically, with the live state (health, load) that outlives swaps.
#![forbid(unsafe_code)]

mod admit;
mod file;
mod hosts;
mod live;
mod snapshot;

pub use admit::AdmitError;
pub use file::{CatalogError, FileCatalog};
pub use hosts::HostIndex;
pub use live::{MachineLive, ServiceSlot};
pub use snapshot::{AppEntry, MachineEntry, Pick, ServiceEntry, Snapshot};

use std::sync::Arc;

use tokio::sync::watch;

/// A source of the fleet's state. The data plane only ever reads `snapshot()`, which
/// never blocks; backends (a file now, etcd later) push new snapshots through `watch()`.
pub trait Catalog: Send + Sync + 'static {
    /// The current snapshot.
    fn snapshot(&self) -> Arc<Snapshot>;
    /// Notified with every new snapshot.
    fn watch(&self) -> watch::Receiver<Arc<Snapshot>>;
}
