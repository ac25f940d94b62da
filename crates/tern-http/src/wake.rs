//! The wake phase: before a machine is chosen, an app whose started machines are
//! all busy gets another started by the node's lifecycle manager, and an app with
//! none started gets one started while the request waits (up to the lifecycle's
//! `start_timeout`). A machine only another node runs is started by that node:
//! the request goes to it there. A peer's request for this node's machine
//! starts it here.

use http::HeaderValue;
use tern_catalog::{Pick, Snapshot, WakeError, Woken};

use crate::context::Proxy;
use crate::error::{ErrorCode, ProxyError};
use crate::route::{Route, Target};

/// What the wake phase found.
pub(crate) enum Wake {
    /// Nothing to wait for.
    Nothing,
    /// This request waited for a machine of this node to come up.
    Waited(Woken),
    /// Only another node can start a machine for this request: it goes to that
    /// machine through its node, which starts it.
    Via(Pick),
}

impl Proxy {
    pub(crate) async fn wake(
        &self,
        snapshot: &Snapshot,
        route: &Route,
    ) -> Result<Wake, ProxyError> {
        let Some(autostart) = &self.autostart else {
            return Ok(Wake::Nothing);
        };
        let woken = match &route.target {
            // A peer chose this node's machine: only this node can start it.
            Target::Machine(id) => autostart.wake_machine(id).await,
            Target::Balance => {
                let Some(wait) = snapshot.start_need(&route.app, &route.service).wait() else {
                    return Ok(Wake::Nothing);
                };
                let woken = if route.app.startable {
                    autostart.wake(snapshot, &route.app, wait).await
                } else {
                    Ok(None)
                };
                if wait && matches!(woken, Ok(None)) {
                    if let Some(pick) = snapshot.remote_wake_pick(&route.app, &route.service) {
                        return Ok(Wake::Via(pick));
                    }
                }
                woken
            }
        };
        match woken.map_err(wake_error)? {
            Some(w) => Ok(Wake::Waited(w)),
            None => Ok(Wake::Nothing),
        }
    }
}

#[cold]
fn wake_error(e: WakeError) -> ProxyError {
    let code = match e {
        WakeError::Timeout { .. } => ErrorCode::MachineStartTimeout,
        WakeError::Failed { .. } => ErrorCode::MachineStartFailed,
    };
    ProxyError::new(code, e.to_string())
}

/// `Tern-Machine-Start`, on a response whose request waited for a machine to
/// come up: how it came up, and how long the request waited for it.
pub(crate) fn start_header(woken: &Woken) -> Option<HeaderValue> {
    let text = format!(
        "{}; machine={}; waited_ms={:.1}",
        woken.kind.as_str(),
        woken.machine,
        woken.waited.as_secs_f64() * 1e3
    );
    HeaderValue::from_str(&text).ok()
}
