//! Which listeners the fleet's apps need: one per public port, with its handler stack.

use std::collections::BTreeMap;

use tern_catalog::Snapshot;

/// What one public port does. `tern check` has ensured every use of a port agrees
/// on `tls` and `http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPlan {
    pub port: u16,
    pub tls: bool,
    pub http: bool,
}

/// The ports to listen on, in order.
pub fn plan(snap: &Snapshot) -> Vec<PortPlan> {
    let mut ports = BTreeMap::new();
    for app in snap.apps.values() {
        for svc in &app.services {
            for p in &svc.def.ports {
                ports.entry(p.port).or_insert(PortPlan {
                    port: p.port,
                    tls: p.handlers.tls,
                    http: p.handlers.http,
                });
            }
        }
    }
    ports.into_values().collect()
}
