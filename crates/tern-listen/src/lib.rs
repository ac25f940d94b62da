//! Public listeners: one per port, accepting within the connection limit, ending
//! TLS where the port says so, and handing each connection to HTTP or raw TCP.
#![forbid(unsafe_code)]

mod listener;
mod plan;
mod tcp;

pub use listener::{bind, run, ListenError, Listener, Shared};
pub use plan::{plan, PortPlan};
