//! From a validated configuration (or catalog file) to the fleet's own types.

use tern_config as cfg;

use crate::model::*;

/// Every definition of a fleet: what a catalog file describes, or etcd holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Definitions {
    pub regions: RegionSeeds,
    pub nodes: Vec<NodeDef>,
    pub apps: Vec<AppDef>,
    pub machines: Vec<MachineDef>,
}

impl Definitions {
    /// The fleet a node's configuration describes, inline or in its catalog file.
    /// Machines that name no node run on this one.
    pub fn from_config(config: &cfg::Config) -> Self {
        Self::build(
            &config.regions,
            &config.nodes,
            &config.apps,
            &config.machines,
            &config.node.id,
        )
    }

    /// A catalog file read on its own; machines that name no node go to `reader`.
    pub fn from_catalog_file(file: &cfg::CatalogFile, reader: &str) -> Self {
        Self::build(
            &file.regions,
            &file.nodes,
            &file.apps,
            &file.machines,
            reader,
        )
    }

    fn build(
        regions: &cfg::RegionDistances,
        nodes: &[cfg::FleetNode],
        apps: &[cfg::App],
        machines: &[cfg::Machine],
        reader: &str,
    ) -> Self {
        Definitions {
            regions: RegionSeeds {
                rtt: regions.rtt.clone(),
            },
            nodes: nodes
                .iter()
                .map(|n| NodeDef {
                    id: n.id.clone(),
                    region: n.region.clone(),
                    backhaul: Some(n.backhaul),
                })
                .collect(),
            apps: apps.iter().map(app).collect(),
            machines: machines.iter().map(|m| machine(m, reader)).collect(),
        }
    }
}

fn app(a: &cfg::App) -> AppDef {
    AppDef {
        name: a.name.clone(),
        hostnames: a.hostnames.clone(),
        max_request_body: a.max_request_body,
        acme_hostnames: a.acme_hostnames.clone(),
        services: a.services.iter().map(service).collect(),
    }
}

fn service(s: &cfg::Service) -> ServiceDef {
    ServiceDef {
        internal_port: s.internal_port,
        h2_backend: s.h2_backend,
        concurrency: Concurrency {
            kind: match s.concurrency.kind {
                cfg::ConcurrencyKind::Connections => ConcurrencyKind::Connections,
                cfg::ConcurrencyKind::Requests => ConcurrencyKind::Requests,
            },
            soft_limit: s.concurrency.soft_limit,
            hard_limit: s.concurrency.hard_limit,
        },
        ports: s
            .ports
            .iter()
            .map(|p| PortDef {
                port: p.port,
                handlers: Handlers {
                    tls: p.handlers.tls,
                    http: p.handlers.http,
                    proxy_proto: p.handlers.proxy_proto.map(|v| match v {
                        cfg::ProxyProtoVersion::V1 => ProxyProto::V1,
                        cfg::ProxyProtoVersion::V2 => ProxyProto::V2,
                    }),
                },
                force_https: p.force_https,
            })
            .collect(),
        tcp_checks: s
            .tcp_checks
            .iter()
            .map(|c| TcpCheckDef {
                interval: c.interval,
                timeout: c.timeout,
                grace_period: c.grace_period,
            })
            .collect(),
        http_checks: s
            .http_checks
            .iter()
            .map(|c| HttpCheckDef {
                interval: c.interval,
                timeout: c.timeout,
                grace_period: c.grace_period,
                path: c.path.clone(),
                method: c.method.clone(),
            })
            .collect(),
        autostart: s.autostart,
        autostop: match s.autostop {
            cfg::AutoStop::Off => AutoStop::Off,
            cfg::AutoStop::Stop => AutoStop::Stop,
            cfg::AutoStop::Suspend => AutoStop::Suspend,
        },
        min_machines_running: s.min_machines_running,
    }
}

fn machine(m: &cfg::Machine, reader: &str) -> MachineDef {
    MachineDef {
        id: m.id.clone(),
        app: m.app.clone(),
        region: m.region.clone(),
        node: m.node.clone().unwrap_or_else(|| reader.to_owned()),
        ip: m.ip,
        state: match m.state {
            cfg::MachineState::Created => MachineState::Created,
            cfg::MachineState::Starting => MachineState::Starting,
            cfg::MachineState::Started => MachineState::Started,
            cfg::MachineState::Stopping => MachineState::Stopping,
            cfg::MachineState::Stopped => MachineState::Stopped,
            cfg::MachineState::Suspending => MachineState::Suspending,
            cfg::MachineState::Suspended => MachineState::Suspended,
        },
        driver: match &m.driver {
            cfg::Driver::External => Driver::External,
            cfg::Driver::Process(p) => Driver::Process(ProcessSpec {
                command: p.command.clone(),
                dir: p.dir.clone(),
                env: p.env.clone(),
            }),
        },
    }
}
