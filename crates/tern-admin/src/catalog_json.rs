//! The catalog as JSON for `/catalog`: apps, services and machines with their live
//! state, health and load.

use serde::Serialize;
use tern_catalog::Snapshot;

#[derive(Serialize)]
struct CatalogView<'a> {
    version: u64,
    node: &'a str,
    region: &'a str,
    apps: Vec<AppView<'a>>,
}

#[derive(Serialize)]
struct AppView<'a> {
    name: &'a str,
    hostnames: &'a [String],
    services: Vec<ServiceView>,
    machines: Vec<MachineView<'a>>,
}

#[derive(Serialize)]
struct ServiceView {
    internal_port: u16,
    ports: Vec<u16>,
    concurrency: &'static str,
    soft_limit: u32,
    hard_limit: u32,
    waiting: usize,
}

#[derive(Serialize)]
struct MachineView<'a> {
    id: &'a str,
    region: &'a str,
    ip: String,
    state: &'static str,
    services: Vec<SlotView>,
}

#[derive(Serialize)]
struct SlotView {
    internal_port: u16,
    healthy: bool,
    load: u32,
    band: &'static str,
}

/// Renders a snapshot as pretty JSON.
pub fn catalog_json(snap: &Snapshot) -> String {
    let view = CatalogView {
        version: snap.version,
        node: &snap.node_id,
        region: &snap.node_region,
        apps: snap
            .apps
            .values()
            .map(|a| AppView {
                name: &a.name,
                hostnames: &a.hostnames,
                services: a
                    .services
                    .iter()
                    .map(|s| ServiceView {
                        internal_port: s.config.internal_port,
                        ports: s.config.ports.iter().map(|p| p.port).collect(),
                        concurrency: match s.config.concurrency.kind {
                            tern_config::ConcurrencyKind::Connections => "connections",
                            tern_config::ConcurrencyKind::Requests => "requests",
                        },
                        soft_limit: s.config.concurrency.soft_limit,
                        hard_limit: s.config.concurrency.hard_limit,
                        waiting: s.queue.waiting(),
                    })
                    .collect(),
                machines: a
                    .machines
                    .iter()
                    .map(|m| MachineView {
                        id: &m.config.id,
                        region: &m.config.region,
                        ip: m.config.ip.to_string(),
                        state: m.config.state.as_str(),
                        services: m
                            .live
                            .slots()
                            .map(|(port, slot)| SlotView {
                                internal_port: port,
                                healthy: slot.healthy(),
                                load: slot.load.active(),
                                band: slot.band().as_str(),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    };
    serde_json::to_string_pretty(&view).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
