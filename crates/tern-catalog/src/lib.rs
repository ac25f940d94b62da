//! The fleet as this node sees it: apps, services, machines and nodes as the
//! catalog's own types; an immutable snapshot of them, changed one entry at a time
//! and swapped atomically; and the live state (machine state, health, load, peer
//! reachability) that outlives swaps and changes without one.
#![forbid(unsafe_code)]

mod admit;
mod autostart;
mod convert;
mod fleet;
mod hosts;
mod live;
pub mod model;
mod snapshot;

pub use admit::{AdmitError, AttemptError};
pub use autostart::{Autostart, StartKind, StartNeed, WakeError, WakeFuture, Woken};
pub use convert::Definitions;
pub use fleet::{now_us, settings_from, CatalogError, Change, Fleet, FleetSettings, RemoteStatus};
pub use hosts::HostIndex;
pub use live::{MachineLive, NodeLive, ServiceSlot};
pub use snapshot::{
    AppEntry, FleetMap, MachineEntry, NodeEntry, Peer, Pick, ServiceEntry, Snapshot,
};

use std::sync::Arc;

use tokio::sync::watch;

/// How the catalog's source is doing, for `/healthz` and `/debug/catalog`: a
/// store that cannot be reached does not stop a node (it routes on what it last
/// had), but operators must see it.
pub trait SourceStatus: Send + Sync + 'static {
    /// Whether the source is in step with its store.
    fn in_step(&self) -> bool;
    /// One line for `/healthz`.
    fn health_line(&self) -> String;
    /// Everything known of it, for `/debug/catalog`.
    fn detail(&self) -> serde_json::Value;
}

/// A source of the fleet's state. The data plane only ever reads `snapshot()`, which
/// never blocks; sources (a file, etcd) feed a [`Fleet`], which publishes new
/// snapshots through `watch()`.
pub trait Catalog: Send + Sync + 'static {
    /// The current snapshot.
    fn snapshot(&self) -> Arc<Snapshot>;
    /// Notified with every new snapshot.
    fn watch(&self) -> watch::Receiver<Arc<Snapshot>>;
}
