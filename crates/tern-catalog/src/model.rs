//! The fleet's own types: apps, services, machines and nodes as definitions, and a
//! machine's live status as its node publishes it. Serialisable, since etcd holds
//! them as JSON; independent of how a configuration file spells them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An application: reachable at its hostnames, exposed by its services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppDef {
    pub name: String,
    /// Exact names, or `*.suffix` wildcards matching one or more labels.
    pub hostnames: Vec<String>,
    /// Overrides the node's `limits.max_request_body` for this app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<u64>,
    /// The hostnames whose certificates nodes obtain by ACME.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acme_hostnames: Vec<String>,
    pub services: Vec<ServiceDef>,
}

/// How an app is exposed: one internal port, reached from its public ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDef {
    pub internal_port: u16,
    /// Speak h2c (prior knowledge) to the machine instead of HTTP/1.1.
    #[serde(default)]
    pub h2_backend: bool,
    pub concurrency: Concurrency,
    pub ports: Vec<PortDef>,
    #[serde(default)]
    pub tcp_checks: Vec<TcpCheckDef>,
    #[serde(default)]
    pub http_checks: Vec<HttpCheckDef>,
    /// Start a stopped or suspended machine when no started one has room.
    #[serde(default = "yes")]
    pub autostart: bool,
    #[serde(default)]
    pub autostop: AutoStop,
    /// Machines per region that autostop leaves started.
    #[serde(default)]
    pub min_machines_running: u32,
}

fn yes() -> bool {
    true
}

/// What autostop does to a machine the load no longer needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoStop {
    #[default]
    Off,
    Stop,
    Suspend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concurrency {
    #[serde(rename = "type")]
    pub kind: ConcurrencyKind,
    pub soft_limit: u32,
    pub hard_limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConcurrencyKind {
    Connections,
    Requests,
}

impl ConcurrencyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConcurrencyKind::Connections => "connections",
            ConcurrencyKind::Requests => "requests",
        }
    }
}

/// A public port of a service, with its handler stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortDef {
    pub port: u16,
    pub handlers: Handlers,
    /// Answer plain-HTTP requests on this port with a 301 to https.
    #[serde(default)]
    pub force_https: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handlers {
    pub tls: bool,
    pub http: bool,
    /// Send a PROXY protocol header to the machine (raw TCP stacks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_proto: Option<ProxyProto>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProto {
    V1,
    V2,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpCheckDef {
    #[serde(with = "duration_text")]
    pub interval: Duration,
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    #[serde(with = "duration_text")]
    pub grace_period: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCheckDef {
    #[serde(with = "duration_text")]
    pub interval: Duration,
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    #[serde(with = "duration_text")]
    pub grace_period: Duration,
    pub path: String,
    pub method: String,
}

/// One instance of an app, run by one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineDef {
    pub id: String,
    pub app: String,
    pub region: String,
    /// The node that runs it: the only one that connects to it, checks it and
    /// publishes its live status.
    pub node: String,
    /// Its own address; services reach it on their internal port.
    pub ip: IpAddr,
    /// The state it is declared in; its node adopts it as the live state, or
    /// for a machine it runs, moves the machine to it.
    pub state: MachineState,
    /// Who runs it.
    #[serde(default, skip_serializing_if = "Driver::is_external")]
    pub driver: Driver,
}

/// Who runs a machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Driver {
    /// Someone else; its node only routes to it, and cannot start or stop it.
    #[default]
    External,
    /// Its node, as a child process.
    Process(ProcessSpec),
}

impl Driver {
    pub fn is_external(&self) -> bool {
        matches!(self, Driver::External)
    }
}

/// A machine that is a child process of its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Its working directory; the node's own when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Added to the environment it inherits, after the `TERN_*` variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// A Tern node: an edge for the clients that reach it, a worker for its machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDef {
    pub id: String,
    pub region: String,
    /// Where peers reach its backhaul; `None` for a node that runs alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backhaul: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    Created,
    Starting,
    Started,
    Stopping,
    Stopped,
    Suspending,
    Suspended,
}

impl MachineState {
    pub const ALL: [MachineState; 7] = [
        MachineState::Created,
        MachineState::Starting,
        MachineState::Started,
        MachineState::Stopping,
        MachineState::Stopped,
        MachineState::Suspending,
        MachineState::Suspended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Created => "created",
            MachineState::Starting => "starting",
            MachineState::Started => "started",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::Suspending => "suspending",
            MachineState::Suspended => "suspended",
        }
    }

    /// How soon a machine in this state can take traffic when asked to start,
    /// for choosing which to start: a start under way (it is joined), then a
    /// resume, then a cold start. `None` for a state no start begins from.
    pub fn wake_rank(self) -> Option<u8> {
        match self {
            MachineState::Starting => Some(0),
            MachineState::Suspended => Some(1),
            MachineState::Stopped | MachineState::Created => Some(2),
            _ => None,
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> MachineState {
        MachineState::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(MachineState::Stopped)
    }
}

/// A machine's live status, written only by the node that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineStatus {
    pub node: String,
    pub state: MachineState,
    /// Per service, by internal port.
    pub services: BTreeMap<u16, SlotStatus>,
    /// When the node changed it, in microseconds since the Unix epoch: lets every
    /// other node measure how long the change took to reach it.
    pub changed_at_us: u64,
}

/// The round trips one node measured to its peers over the backhaul, as it
/// publishes them: microseconds, by peer id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasuredRtts {
    pub rtt_us: BTreeMap<String, u64>,
}

/// One service's view of a machine, as its node last published it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotStatus {
    pub healthy: bool,
    /// Units (connections or requests) in flight when published.
    pub load: u32,
}

/// Round-trip times between regions as the operator gave them, symmetric: the
/// seed for distances not measured yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSeeds {
    /// Keyed by the two region codes, the smaller first.
    #[serde(with = "rtt_pairs")]
    pub rtt: BTreeMap<(String, String), Duration>,
}

impl RegionSeeds {
    /// RTT between two regions; zero for the same region, `None` when unknown.
    pub fn rtt(&self, a: &str, b: &str) -> Option<Duration> {
        if a == b {
            return Some(Duration::ZERO);
        }
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        self.rtt.get(&(lo.to_owned(), hi.to_owned())).copied()
    }
}

/// Durations as humantime text ("1s", "250ms") in JSON.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Region pairs as a list of `{a, b, rtt}` in JSON, whose maps take only string keys.
mod rtt_pairs {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Pair {
        a: String,
        b: String,
        #[serde(with = "super::duration_text")]
        rtt: Duration,
    }

    type Map = BTreeMap<(String, String), Duration>;

    pub fn serialize<S: Serializer>(m: &Map, s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<Pair> = m
            .iter()
            .map(|((a, b), rtt)| Pair {
                a: a.clone(),
                b: b.clone(),
                rtt: *rtt,
            })
            .collect();
        pairs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        let pairs = Vec::<Pair>::deserialize(d)?;
        Ok(pairs
            .into_iter()
            .map(|p| {
                let key = if p.a < p.b { (p.a, p.b) } else { (p.b, p.a) };
                (key, p.rtt)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_round_trip_through_json() {
        let mut app = crate::fleet::fixtures::app("web");
        app.services[0].http_checks = vec![HttpCheckDef {
            interval: Duration::from_secs(5),
            timeout: Duration::from_millis(1500),
            grace_period: Duration::from_secs(1),
            path: "/healthz".into(),
            method: "GET".into(),
        }];
        let json = serde_json::to_string(&app).unwrap();
        assert!(json.contains(r#""type":"requests""#), "{json}");
        assert!(json.contains(r#""timeout":"1s 500ms""#), "{json}");
        assert_eq!(serde_json::from_str::<AppDef>(&json).unwrap(), app);

        let mut seeds = RegionSeeds::default();
        seeds
            .rtt
            .insert(("ams".into(), "ord".into()), Duration::from_millis(90));
        let json = serde_json::to_string(&seeds).unwrap();
        let back: RegionSeeds = serde_json::from_str(&json).unwrap();
        assert_eq!(back.rtt("ord", "ams"), Some(Duration::from_millis(90)));
        assert_eq!(back.rtt("ams", "ams"), Some(Duration::ZERO));
        assert_eq!(back.rtt("ams", "syd"), None);
    }

    #[test]
    fn states_survive_their_atomic_form() {
        for s in MachineState::ALL {
            assert_eq!(MachineState::from_u8(s.to_u8()), s);
        }
    }
}
