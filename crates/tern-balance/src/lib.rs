//! Choosing a machine: least-loaded band first, then the nearest region, then at random.
#![forbid(unsafe_code)]

mod choose;
mod load;
mod queue;

pub use choose::{choose, Candidate, Distance};
pub use load::{Band, Limits, Load, LoadGuard};
pub use queue::{QueueError, WaitQueue};
