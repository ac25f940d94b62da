//! `pollwatch`: find futures that are polled again and again without making
//! progress, attribute each to its connection, and cut (or park) only that one.
//!
//! A busy loop in an async server rarely looks like one: a future wakes its own
//! task and returns `Pending`, the runtime polls it again at once, and a core burns
//! while nothing moves. Tokio's cooperative budget does not stop it. `pollwatch`
//! counts, per connection, the polls of the connection's future against the bytes
//! its sockets move. A streak of polls with no byte moved (by default 1000 within
//! 100 ms) is a *spin*, and the configured [`SpinAction`] runs.
//!
//! ```no_run
//! # async fn demo(stream: tokio::net::TcpStream) {
//! use pollwatch::{SpinConfig, Watchdog};
//! use tokio::io::AsyncReadExt;
//!
//! let dog = Watchdog::new(SpinConfig::default());
//! let probe = dog.register();
//! probe.set("peer", "192.0.2.1:5000");
//! let mut io = probe.io(stream); // counts bytes: that is progress
//! let outcome = probe
//!     .watch(async move {
//!         let mut buf = Vec::new();
//!         io.read_to_end(&mut buf).await
//!     })
//!     .await;
//! if let Err(spun) = outcome {
//!     eprintln!("cut a busy connection: {spun}");
//! }
//! # }
//! ```
#![forbid(unsafe_code)]

mod clock;
mod config;
mod conn;
mod io;
mod recent;
mod registry;
mod stall;
mod watched;

pub use clock::coarse_millis;
pub use config::{SpinAction, SpinConfig};
pub use conn::{ConnSnapshot, Probe};
pub use io::WatchedIo;
pub use recent::{SpinRecord, RECENT_SPINS};
pub use registry::Watchdog;
pub use stall::{
    debugger_stacks, debugger_stacks_of, runtime_snapshot, thread_dump, StallConfig, StallReport,
    StallState, StallStatus, StallWatchdog,
};
pub use watched::{Spun, Watched, INSPECT_AFTER};
