//! Tern's admin listener: the dashboard at `/`, `/metrics` in Prometheus text,
//! `/healthz`, `/catalog` as JSON and the debug endpoints. It is for operators, so
//! it binds to loopback by default, and asks for a token elsewhere.
#![forbid(unsafe_code)]

mod access;
mod catalog_json;
mod connections;
mod dashboard;
mod flamegraph;
mod machines;
mod pprof_format;
mod profile;
mod query;
mod recorder;
mod runtime_metrics;
mod server;
mod traffic;

pub use access::{Access, NoRandom};
pub use catalog_json::catalog_json;
pub use connections::connections_json;
pub use machines::{ActionError, ActionFuture, MachineAction, MachineAdmin};
pub use profile::{profile, ProfileError, ProfileFormat};
pub use recorder::{install_recorder, MetricsError};
pub use runtime_metrics::BusyTracker;
pub use server::{serve, AdminState, CertificateHealth, Reload};
