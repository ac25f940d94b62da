//! Tern's admin listener: `/metrics` in Prometheus text, `/healthz`, and `/catalog`
//! as JSON. It is for operators, so it binds to loopback by default.
#![forbid(unsafe_code)]

mod catalog_json;
mod connections;
mod flamegraph;
mod machines;
mod pprof_format;
mod profile;
mod recorder;
mod runtime_metrics;
mod server;

pub use catalog_json::catalog_json;
pub use connections::connections_json;
pub use machines::{ActionError, ActionFuture, MachineAction, MachineAdmin};
pub use profile::{profile, ProfileError, ProfileFormat};
pub use recorder::{install_recorder, MetricsError};
pub use runtime_metrics::BusyTracker;
pub use server::{serve, AdminState, CertificateHealth, Reload};
