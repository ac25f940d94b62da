//! Listeners: one per public port, accepting within the connection limit, ending
//! TLS where the port says so, and handing each connection to HTTP or raw TCP;
//! and the backhaul's, where peers' connections arrive.
#![forbid(unsafe_code)]

mod acceptors;
mod backhaul;
mod listener;
mod plan;
mod ports;
mod tcp;
mod thread_yield;

pub use acceptors::Acceptors;
pub use backhaul::{bind_backhaul, run_backhaul};
pub use listener::{bind, run, AcceptLoopSocket, ConnLimits, ListenError, Listener, Shared};
pub use plan::{plan, PortPlan};
pub use ports::{Ports, Sockets};
