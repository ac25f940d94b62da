//! The wake phase: before a machine is chosen, an app whose started machines are
//! all busy gets another started by the node's lifecycle manager, and an app with
//! none started gets one started while the request waits (up to the lifecycle's
//! `start_timeout`).

use http::HeaderValue;
use tern_catalog::{Snapshot, StartNeed, WakeError, Woken};

use crate::context::Proxy;
use crate::error::{ErrorCode, ProxyError};
use crate::route::{Route, Target};

impl Proxy {
    /// Returns the start this request waited for, if it waited for one.
    pub(crate) async fn wake(
        &self,
        snapshot: &Snapshot,
        route: &Route,
    ) -> Result<Option<Woken>, ProxyError> {
        let Some(autostart) = &self.autostart else {
            return Ok(None);
        };
        if !matches!(route.target, Target::Balance) {
            return Ok(None);
        }
        let wait = match snapshot.start_need(&route.app, &route.service) {
            StartNeed::None => return Ok(None),
            StartNeed::Background => false,
            StartNeed::Wait => true,
        };
        autostart
            .wake(snapshot, &route.app, &route.service, wait)
            .await
            .map_err(wake_error)
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
