//! What Tern needs from whatever runs a machine: start it, signal it, and learn
//! of its exit. Child processes are the one driver built; a VM driver would be
//! another implementation of the same two traits.

use std::future::Future;
use std::pin::Pin;

use tern_catalog::model::MachineDef;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("machine {0} is run by someone else (driver = \"external\"); Tern cannot start, stop or suspend it")]
    External(String),
    #[error("starting {command:?}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("signalling the machine's process group: {0}")]
    Signal(std::io::Error),
}

pub type StartFuture<'a> = Pin<Box<dyn Future<Output = Result<Running, DriverError>> + Send + 'a>>;

/// Starts machines of one kind.
pub trait Driver: Send + Sync + 'static {
    /// Starts `machine`, whose services listen on `ports`.
    fn start<'a>(&'a self, machine: &'a MachineDef, ports: &'a [u16]) -> StartFuture<'a>;
}

/// A machine that was started: how to signal it, and its exit.
pub struct Running {
    pub control: Box<dyn Control>,
    /// Resolves when the machine has ended, however it ended, with a line that
    /// says how (an exit code, a signal).
    pub exit: Pin<Box<dyn Future<Output = String> + Send>>,
}

/// What can be asked of a running machine.
pub trait Control: Send + Sync {
    /// Asks it to stop (SIGTERM for a process).
    fn terminate(&self) -> Result<(), DriverError>;
    /// Stops it now (SIGKILL).
    fn kill(&self) -> Result<(), DriverError>;
    /// Freezes it, memory kept (SIGSTOP).
    fn suspend(&self) -> Result<(), DriverError>;
    /// Lets a frozen machine run again (SIGCONT).
    fn resume(&self) -> Result<(), DriverError>;
}
