//! The configuration as written: serde structs that keep each value's source span so
//! validation can point at it. Only syntax and types are checked here.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

type Opt<T> = Option<Spanned<T>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub node: RawNode,
    pub admin: Option<RawAdmin>,
    pub tls: Option<RawTls>,
    pub limits: Option<RawLimits>,
    pub overload: Option<RawOverload>,
    pub lifecycle: Option<RawLifecycle>,
    pub log: Option<RawLog>,
    pub watchdog: Option<RawWatchdog>,
    pub backhaul: Option<RawBackhaul>,
    pub catalog: Option<RawCatalogSource>,
    pub acme: Option<Spanned<RawAcme>>,
    #[serde(default)]
    pub region: Vec<RawRegion>,
    #[serde(default)]
    pub app: Vec<RawApp>,
    #[serde(default)]
    pub machine: Vec<Spanned<RawMachine>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    pub directory: Spanned<String>,
    #[serde(default)]
    pub contact: Vec<Spanned<String>>,
    pub ca_root: Opt<String>,
    pub challenge: Opt<String>,
    pub state_dir: Opt<String>,
    pub orders_per_hour: Opt<i64>,
    pub on_demand: Opt<bool>,
    pub on_demand_wait: Opt<DurationText>,
    pub fleet_key: Opt<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificates {
    pub acme: Spanned<bool>,
    pub hostnames: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub id: Spanned<String>,
    pub region: Spanned<String>,
    pub workers: Opt<i64>,
    pub scheduler: Opt<String>,
    pub yield_every_polls: Opt<i64>,
    pub bind: Opt<String>,
    pub upgrade_socket: Opt<String>,
}

/// A catalog file on its own (`[catalog] file`, `tern catalog push`): the fleet's
/// definitions without any node's own settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCatalogFile {
    #[serde(default)]
    pub region: Vec<RawRegion>,
    #[serde(default)]
    pub node: Vec<Spanned<RawFleetNode>>,
    #[serde(default)]
    pub app: Vec<RawApp>,
    #[serde(default)]
    pub machine: Vec<Spanned<RawMachine>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleetNode {
    pub id: Spanned<String>,
    pub region: Spanned<String>,
    pub backhaul: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackhaul {
    pub listen: Spanned<String>,
    pub advertise: Opt<String>,
    pub ca: Spanned<String>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub ping_interval: Opt<DurationText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCatalogSource {
    pub source: Opt<String>,
    pub file: Opt<String>,
    pub endpoints: Option<Spanned<Vec<Spanned<String>>>>,
    pub prefix: Opt<String>,
    pub lease_ttl: Opt<DurationText>,
    pub dial_timeout: Opt<DurationText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Opt<String>,
    pub token: Opt<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub certs_dir: Opt<String>,
    pub unknown_sni: Opt<String>,
    pub handshake_timeout: Opt<DurationText>,
    pub reload_interval: Opt<DurationText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub header_read_timeout: Opt<DurationText>,
    pub idle_timeout: Opt<DurationText>,
    pub send_timeout: Opt<DurationText>,
    pub body_read_timeout: Opt<DurationText>,
    pub request_buffer: Opt<SizeValue>,
    pub max_header_bytes: Opt<SizeValue>,
    pub max_headers: Opt<i64>,
    pub max_request_body: Opt<SizeValue>,
    pub connect_timeout: Opt<DurationText>,
    pub response_header_timeout: Opt<DurationText>,
    pub max_connections_per_listener: Opt<i64>,
    pub queue_size: Opt<i64>,
    pub queue_timeout: Opt<DurationText>,
    pub connect_attempts: Opt<i64>,
    pub drain_timeout: Opt<DurationText>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOverload {
    pub max_connections: Opt<i64>,
    pub max_memory: Opt<SizeValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLifecycle {
    pub start_timeout: Opt<DurationText>,
    pub stop_timeout: Opt<DurationText>,
    pub autostop_interval: Opt<DurationText>,
    pub idle_timeout: Opt<DurationText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub format: Opt<String>,
    pub level: Opt<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWatchdog {
    pub enabled: Opt<bool>,
    pub spin_polls: Opt<i64>,
    pub spin_window: Opt<DurationText>,
    pub action: Opt<String>,
    pub backoff_initial: Opt<DurationText>,
    pub backoff_max: Opt<DurationText>,
    pub runtime_interval: Opt<DurationText>,
    pub runtime_deadline: Opt<DurationText>,
    pub runtime_action: Opt<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRegion {
    pub code: Spanned<String>,
    #[serde(default)]
    pub rtt: BTreeMap<Spanned<String>, Spanned<DurationText>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApp {
    pub name: Spanned<String>,
    #[serde(default)]
    pub hostnames: Vec<Spanned<String>>,
    pub max_request_body: Opt<SizeValue>,
    pub certificates: Option<RawCertificates>,
    #[serde(default)]
    pub service: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub internal_port: Spanned<i64>,
    pub h2_backend: Option<bool>,
    pub concurrency: Opt<RawConcurrency>,
    #[serde(default)]
    pub ports: Vec<Spanned<RawPort>>,
    #[serde(default)]
    pub tcp_checks: Vec<Spanned<RawTcpCheck>>,
    #[serde(default)]
    pub http_checks: Vec<Spanned<RawHttpCheck>>,
    pub auto_start_machines: Option<bool>,
    pub auto_stop_machines: Opt<String>,
    pub min_machines_running: Opt<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConcurrency {
    #[serde(rename = "type")]
    pub kind: Opt<String>,
    pub soft_limit: Opt<i64>,
    pub hard_limit: Opt<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPort {
    pub port: Spanned<i64>,
    pub handlers: Spanned<Vec<Spanned<String>>>,
    pub force_https: Opt<bool>,
    pub proxy_proto_options: Opt<RawProxyProtoOptions>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxyProtoOptions {
    pub version: Opt<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTcpCheck {
    pub interval: Opt<DurationText>,
    pub timeout: Opt<DurationText>,
    pub grace_period: Opt<DurationText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttpCheck {
    pub interval: Opt<DurationText>,
    pub timeout: Opt<DurationText>,
    pub grace_period: Opt<DurationText>,
    pub path: Opt<String>,
    pub method: Opt<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMachine {
    pub id: Spanned<String>,
    pub app: Spanned<String>,
    pub region: Spanned<String>,
    pub node: Opt<String>,
    pub ip: Spanned<String>,
    pub state: Opt<String>,
    pub driver: Opt<String>,
    pub command: Opt<Vec<String>>,
    pub dir: Opt<String>,
    pub env: Opt<BTreeMap<String, String>>,
}

/// A duration as written. Parsed during validation, so that every bad duration is
/// reported rather than only the first; the type exists for its "expected" message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DurationText(pub String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"10s\" or \"250ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_owned()))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// A size as written: integer bytes or a string with a unit, parsed during validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SizeValue {
    Bytes(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: integer bytes or a string such as \"64KiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeValue, E> {
                Ok(SizeValue::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeValue, E> {
                i64::try_from(v)
                    .map(SizeValue::Bytes)
                    .map_err(|_| E::custom("size is too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeValue, E> {
                Ok(SizeValue::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(V)
    }
}
