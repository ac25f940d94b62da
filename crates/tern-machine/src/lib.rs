//! The machine lifecycle on the node that runs the machines: drivers that run
//! them (child processes), each machine's state machine, starts on demand for the
//! request path, and the stops and suspends operators and autostop ask for.

mod autostop;
mod controller;
mod driver;
mod manager;
mod process;
mod ready;

pub use autostop::AutostopSettings;
pub use controller::{ControlError, Controller, Counts, StartError, Status, Timing};
pub use driver::{Control, Driver, DriverError, Running, StartFuture};
pub use manager::{Machines, ManageError};
pub use process::ProcessDriver;
pub use ready::Readiness;
