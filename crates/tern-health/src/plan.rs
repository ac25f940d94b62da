//! Which checks a snapshot asks for: one per (started machine, service, check).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_catalog::model::{HttpCheckDef, MachineState};
use tern_catalog::{AppEntry, ServiceSlot, Snapshot};

use crate::probe::Probe;

/// Identifies one check of one service on one machine across snapshots.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct CheckKey {
    pub machine: String,
    pub port: u16,
    pub kind: CheckKind,
    /// Position in the service's `tcp_checks` or `http_checks`.
    pub index: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum CheckKind {
    Tcp,
    Http,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
        }
    }
}

impl fmt::Display for CheckKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.kind.as_str(), self.index)
    }
}

/// Everything a running check depends on; a change to any of it restarts the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckSpec {
    pub app: String,
    pub probe: Probe,
    pub interval: Duration,
    pub grace_period: Duration,
}

/// A check the snapshot asks for, with the slot whose health it feeds.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub spec: CheckSpec,
    pub slot: Arc<ServiceSlot>,
}

/// All checks the snapshot asks for, of this node's own machines: a machine is
/// checked only by the node that runs it, which publishes the result. Machines not
/// started are left out: nothing is routed to them, and probing a machine that is
/// booting or gone only adds noise.
pub(crate) fn plan(snap: &Snapshot) -> BTreeMap<CheckKey, Planned> {
    let mut out = BTreeMap::new();
    for app in snap.apps.values() {
        let host = host_header(app);
        for machine in &app.machines {
            if !machine.is_local() || machine.live.state() != MachineState::Started {
                continue;
            }
            for svc in &app.services {
                let port = svc.def.internal_port;
                let Some(slot) = machine.live.slot(port) else {
                    continue;
                };
                let addr = SocketAddr::new(machine.def.ip, port);
                let key = |kind, index| CheckKey {
                    machine: machine.def.id.clone(),
                    port,
                    kind,
                    index,
                };
                let planned = |probe, interval, grace_period| Planned {
                    spec: CheckSpec {
                        app: app.name.clone(),
                        probe,
                        interval,
                        grace_period,
                    },
                    slot: Arc::clone(slot),
                };
                for (i, c) in svc.def.tcp_checks.iter().enumerate() {
                    let probe = Probe::Tcp {
                        addr,
                        timeout: c.timeout,
                    };
                    out.insert(
                        key(CheckKind::Tcp, i),
                        planned(probe, c.interval, c.grace_period),
                    );
                }
                for (i, c) in svc.def.http_checks.iter().enumerate() {
                    let probe = http_probe(c, addr, host.as_deref());
                    out.insert(
                        key(CheckKind::Http, i),
                        planned(probe, c.interval, c.grace_period),
                    );
                }
            }
        }
    }
    out
}

/// The app's first concrete hostname: apps often route by Host, and a wildcard
/// cannot be sent as one. `None` means "use the machine's address".
pub fn host_header(app: &AppEntry) -> Option<String> {
    app.hostnames.iter().find(|h| !h.contains('*')).cloned()
}

/// One HTTP check of a service against the machine at `addr`, sent with `host`
/// (the app's, from `host_header`) or else the machine's address.
pub fn http_probe(check: &HttpCheckDef, addr: SocketAddr, host: Option<&str>) -> Probe {
    Probe::Http {
        addr,
        timeout: check.timeout,
        method: check.method.clone(),
        path: check.path.clone(),
        host: host.map_or_else(|| addr.to_string(), str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(hostnames: &[&str]) -> AppEntry {
        AppEntry {
            name: "demo".into(),
            hostnames: hostnames.iter().map(|h| (*h).to_owned()).collect(),
            max_request_body: 0,
            acme_hostnames: Vec::new(),
            services: Vec::new(),
            machines: Vec::new(),
            startable: false,
            remote_startable: false,
        }
    }

    #[test]
    fn host_header_skips_wildcards() {
        assert_eq!(
            host_header(&app(&["*.demo.localhost", "demo.localhost"])).as_deref(),
            Some("demo.localhost")
        );
        assert_eq!(host_header(&app(&["*.demo.localhost"])), None);
        assert_eq!(host_header(&app(&[])), None);
    }
}
