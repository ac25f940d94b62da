//! What counts as a spin, and what to do about one.

use std::time::Duration;

/// What happens to a connection found spinning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpinAction {
    /// End the connection's future at once; dropping it closes its sockets.
    Close,
    /// Stop polling the future for a while, doubling the pause at each further spin
    /// from `initial` up to `max`, and starting over after progress.
    Backoff { initial: Duration, max: Duration },
    /// Only log and count.
    Log,
}

impl SpinAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            SpinAction::Close => "close",
            SpinAction::Backoff { .. } => "backoff",
            SpinAction::Log => "log",
        }
    }
}

/// The spin threshold: `polls` polls in a row with no progress, within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpinConfig {
    pub polls: u64,
    pub window: Duration,
    pub action: SpinAction,
}

impl Default for SpinConfig {
    /// 1000 polls within 100 ms: a healthy connection is polled about once per
    /// readiness event, so even a busy one is far below this without moving a byte,
    /// while the incident's loop ran at millions of polls a second and is caught in
    /// well under a millisecond of CPU.
    fn default() -> Self {
        SpinConfig {
            polls: 1000,
            window: Duration::from_millis(100),
            action: SpinAction::Close,
        }
    }
}
