//! Starting machines on demand: when a connection or request finds no started
//! machine with room, the request path asks the node's lifecycle manager to start
//! one, and waits for it when there is nothing else to go to.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use std::sync::Arc;

use tern_balance::Band;

use crate::snapshot::{AppEntry, Pick, ServiceEntry, Snapshot};

/// What a request needs of the lifecycle manager before it is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartNeed {
    /// A started machine has room: nothing to start.
    None,
    /// Every started machine is over its soft limit: start one, but serve this
    /// request on those already started.
    Background,
    /// No machine is started: this request waits for one.
    Wait,
}

/// How a machine came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// From stopped: a new process.
    Cold,
    /// From suspended: the same process, continued.
    Resume,
}

impl StartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StartKind::Cold => "cold",
            StartKind::Resume => "resume",
        }
    }
}

/// A start a request waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Woken {
    pub machine: String,
    pub kind: StartKind,
    /// From this request's ask to the machine's being up.
    pub waited: Duration,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WakeError {
    #[error("machine {machine} of {app} did not come up within {waited:?}")]
    Timeout {
        app: String,
        machine: String,
        waited: Duration,
    },
    #[error("machine {machine} of {app} failed to start: {reason}")]
    Failed {
        app: String,
        machine: String,
        reason: String,
    },
}

pub type WakeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Woken>, WakeError>> + Send + 'a>>;

/// The node's lifecycle manager, as the request path sees it.
pub trait Autostart: Send + Sync + 'static {
    /// Starts the nearest of this node's stopped or suspended machines of `app`
    /// that autostart allows. With `wait`, resolves once it is up (or with the
    /// start's error); otherwise at once, the start going on. `Ok(None)` when no
    /// machine could be started. Requests that ask while a start is under way
    /// join it rather than start another.
    fn wake<'a>(&'a self, snapshot: &'a Snapshot, app: &'a AppEntry, wait: bool) -> WakeFuture<'a>;

    /// Brings up this node's own machine `id`, which a peer chose for a request
    /// (the peer cannot start it: only its node does), and waits for it.
    /// `Ok(None)` when it was up already or is not one this node runs.
    fn wake_machine<'a>(&'a self, id: &'a str) -> WakeFuture<'a>;
}

impl StartNeed {
    /// Whether to start a machine, and whether the request waits for it.
    pub fn wait(self) -> Option<bool> {
        match self {
            StartNeed::None => None,
            StartNeed::Background => Some(false),
            StartNeed::Wait => Some(true),
        }
    }
}

impl Snapshot {
    /// Whether a request for `service` should start a machine first. Cheap when
    /// the app has no machine this node runs: one flag.
    pub fn start_need(&self, app: &AppEntry, service: &ServiceEntry) -> StartNeed {
        if !(app.startable || app.remote_startable) || !service.def.autostart {
            return StartNeed::None;
        }
        let port = service.def.internal_port;
        let mut any_started = false;
        for m in &app.machines {
            if !m.routable() {
                continue;
            }
            let Some(slot) = m.live.slot(port).filter(|s| s.healthy()) else {
                continue;
            };
            if self.peer(m, port).is_none() {
                continue;
            }
            if slot.band() == Band::UnderSoft {
                return StartNeed::None;
            }
            any_started = true;
        }
        if any_started {
            StartNeed::Background
        } else {
            StartNeed::Wait
        }
    }
}

impl Snapshot {
    /// Another node's machine of `app` that its node could start for a request:
    /// one its node runs (not external), not up, with a status out for it and its
    /// node reachable, nearest first (a start under way or a resume before a cold
    /// start). The edge sends the request there, and that node starts it.
    pub fn remote_wake_pick(&self, app: &AppEntry, service: &ServiceEntry) -> Option<Pick> {
        if !app.remote_startable {
            return None;
        }
        let port = service.def.internal_port;
        app.machines
            .iter()
            .filter(|m| !m.is_local() && !m.def.driver.is_external() && m.live.reported())
            .filter(|m| m.node.as_ref().is_some_and(|n| n.reachable()))
            .filter_map(|m| {
                let rank = m.live.state().wake_rank()?;
                let pick = Pick {
                    machine: Arc::clone(m),
                    slot: Arc::clone(m.live.slot(port)?),
                    peer: self.peer(m, port)?,
                };
                Some((rank, self.distance(m), pick))
            })
            .min_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))
            .map(|(_, _, pick)| pick)
    }
}
