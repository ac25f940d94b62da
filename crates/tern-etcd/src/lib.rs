//! The fleet's catalog in etcd.
//!
//! Definitions (apps, machines, region seeds) are written by `tern catalog push`
//! ([`Store::push`]). Each node registers itself and publishes its own machines'
//! live status under a lease ([`EtcdSource`]), so that a node that dies takes its
//! machines out of every other node's rotation when the lease runs out. Every
//! node reads the whole fleet once, then watches it from that revision on; the
//! data plane reads only the in-memory [`Fleet`](tern_catalog::Fleet), so etcd
//! going away stops no request. The key layout is in [`keys`].
#![forbid(unsafe_code)]

pub mod keys;
mod publish;
mod report;
mod source;
mod store;

pub use keys::AcmeKey;
pub use publish::BAND_EVERY;
pub use report::Report;
pub use source::{EtcdSettings, EtcdSource};
pub use store::{EtcdError, Loaded, PushSummary, Store};
