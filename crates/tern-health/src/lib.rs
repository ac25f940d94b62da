//! Health checks for Tern: tcp and http checks that take machines out of rotation
//! and bring them back, by setting the health of the catalog's service slots.
#![forbid(unsafe_code)]

mod checker;
mod plan;
mod probe;
mod slot;
mod task;

pub use checker::HealthChecker;
pub use plan::{host_header, http_probe};
pub use probe::{Probe, ProbeError, USER_AGENT_VALUE};
