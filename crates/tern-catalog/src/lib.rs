//! The fleet as this node sees it: apps, services, machines and nodes as the
//! catalog's own types; an immutable snapshot of them, changed one entry at a time
//! and swapped atomically; and the live state (machine state, health, load, peer
//! reachability) that outlives swaps and changes without one.
#![forbid(unsafe_code)]

mod admit;
mod convert;
mod fleet;
mod hosts;
mod live;
pub mod model;
mod snapshot;

pub use admit::{AdmitError, AttemptError};
pub use convert::Definitions;
pub use fleet::{now_us, settings_from, CatalogError, Change, Fleet, FleetSettings, RemoteStatus};
pub use hosts::HostIndex;
pub use live::{MachineLive, NodeLive, ServiceSlot};
pub use snapshot::{
    AppEntry, FleetMap, MachineEntry, NodeEntry, Peer, Pick, ServiceEntry, Snapshot,
};

use std::sync::Arc;

use tokio::sync::watch;

/// A source of the fleet's state. The data plane only ever reads `snapshot()`, which
/// never blocks; sources (a file, etcd) feed a [`Fleet`], which publishes new
/// snapshots through `watch()`.
pub trait Catalog: Send + Sync + 'static {
    /// The current snapshot.
    fn snapshot(&self) -> Arc<Snapshot>;
    /// Notified with every new snapshot.
    fn watch(&self) -> watch::Receiver<Arc<Snapshot>>;
}
