//! The catalog as JSON for `/catalog`: apps, services and machines with their live
//! state, health and load.

use std::collections::BTreeMap;

use serde::Serialize;
use tern_catalog::Snapshot;

#[derive(Serialize)]
struct CatalogView<'a> {
    version: u64,
    node: &'a str,
    region: &'a str,
    /// The other nodes this one knows, with what it measured of each.
    peers: Vec<PeerView<'a>>,
    apps: Vec<AppView<'a>>,
}

#[derive(Serialize)]
struct PeerView<'a> {
    id: &'a str,
    region: &'a str,
    backhaul: Option<String>,
    reachable: bool,
    rtt_ms: Option<f64>,
    /// What the peer itself measured to its peers, as it last published it.
    measured_ms: BTreeMap<String, f64>,
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
    node: &'a str,
    ip: String,
    state: &'static str,
    /// Whether this node may route to it now (started, reported, node reachable).
    routable: bool,
    services: Vec<SlotView>,
    /// For a machine this node runs: its last transition, starts and stops.
    #[serde(skip_serializing_if = "Option::is_none")]
    lifecycle: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct SlotView {
    internal_port: u16,
    healthy: bool,
    load: u32,
    band: &'static str,
}

/// Renders a snapshot as pretty JSON, with what `lifecycle` says of each machine.
pub fn catalog_json(
    snap: &Snapshot,
    lifecycle: &dyn Fn(&str) -> Option<serde_json::Value>,
) -> String {
    let view = CatalogView {
        version: snap.version,
        node: &snap.node.id,
        region: &snap.node.region,
        peers: snap
            .nodes
            .values()
            .map(|n| PeerView {
                id: &n.def.id,
                region: &n.def.region,
                backhaul: n.def.backhaul.map(|a| a.to_string()),
                reachable: n.live.reachable(),
                rtt_ms: n.live.rtt().map(|d| d.as_secs_f64() * 1000.0),
                measured_ms: n
                    .live
                    .their_rtts()
                    .into_iter()
                    .map(|(peer, d)| (peer, d.as_secs_f64() * 1000.0))
                    .collect(),
            })
            .collect(),
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
                        internal_port: s.def.internal_port,
                        ports: s.def.ports.iter().map(|p| p.port).collect(),
                        concurrency: s.def.concurrency.kind.as_str(),
                        soft_limit: s.def.concurrency.soft_limit,
                        hard_limit: s.def.concurrency.hard_limit,
                        waiting: s.queue.waiting(),
                    })
                    .collect(),
                machines: a
                    .machines
                    .iter()
                    .map(|m| MachineView {
                        id: &m.def.id,
                        region: &m.def.region,
                        node: &m.def.node,
                        ip: m.def.ip.to_string(),
                        state: m.live.state().as_str(),
                        routable: m.routable(),
                        services: m
                            .live
                            .slots()
                            .map(|(port, slot)| SlotView {
                                internal_port: port,
                                healthy: slot.healthy(),
                                load: slot.seen_load(),
                                band: slot.band().as_str(),
                            })
                            .collect(),
                        lifecycle: lifecycle(&m.def.id),
                    })
                    .collect(),
            })
            .collect(),
    };
    serde_json::to_string_pretty(&view).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
