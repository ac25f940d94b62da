//! The validated configuration that the rest of Tern reads: plain values, no spans.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A whole, validated Tern configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: Node,
    pub admin: Admin,
    pub tls: Tls,
    pub limits: Limits,
    pub overload: Overload,
    pub lifecycle: Lifecycle,
    pub log: Log,
    pub watchdog: Watchdog,
    /// The backhaul to other nodes; `None` for a node that runs alone.
    pub backhaul: Option<Backhaul>,
    /// Where the fleet's definitions come from.
    pub catalog: CatalogSource,
    /// Certificates by ACME; `None`: only the files in `tls.certs_dir`.
    pub acme: Option<Acme>,
    /// Round-trip times between regions, symmetric, as the operator gave them: the
    /// seed for peers whose RTT is not measured yet. Same region is zero.
    pub regions: RegionDistances,
    /// Every node of a static fleet (a catalog file's `[[node]]`); empty when this
    /// node runs alone or the catalog is in etcd.
    pub nodes: Vec<FleetNode>,
    pub apps: Vec<App>,
    pub machines: Vec<Machine>,
}

/// A catalog file on its own: the fleet's definitions, read by every node of a
/// static fleet (`[catalog] file`) or written to etcd (`tern catalog push`).
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogFile {
    pub regions: RegionDistances,
    pub nodes: Vec<FleetNode>,
    pub apps: Vec<App>,
    pub machines: Vec<Machine>,
}

/// What a catalog file is read for: the rules differ in who names a machine's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogUse {
    /// Read by the nodes themselves (`[catalog] file`).
    File,
    /// Written to etcd, where nodes register themselves: `[[node]]` is refused and
    /// every machine names its node.
    Etcd,
}

/// One node of a static fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetNode {
    pub id: String,
    pub region: String,
    /// Where its backhaul listens.
    pub backhaul: SocketAddr,
}

/// The mutual-TLS HTTP/2 link between nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Backhaul {
    pub listen: SocketAddr,
    /// The address peers are told to reach this node at (etcd registration).
    pub advertise: SocketAddr,
    /// The fleet CA's certificate: peers must present a certificate it signed.
    pub ca: PathBuf,
    /// This node's certificate (signed by the fleet CA) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often each peer's round trip is measured with an HTTP/2 PING.
    pub ping_interval: Duration,
}

/// Where the fleet's definitions come from.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogSource {
    /// This configuration's own `[[app]]` and `[[machine]]` entries, or those of the
    /// catalog file it names (already read into `Config`).
    File {
        path: Option<PathBuf>,
    },
    Etcd(EtcdSource),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdSource {
    /// Client URLs such as `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Every key Tern reads and writes starts with this.
    pub prefix: String,
    /// TTL of this node's lease: its registration and its machines' live state
    /// vanish this long after the node dies.
    pub lease_ttl: Duration,
    /// How long one connection attempt to etcd may take.
    pub dial_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    pub region: String,
    /// Tokio worker threads.
    pub workers: usize,
    /// How connections are spread over the workers.
    pub scheduler: Scheduler,
    /// A worker thread offers its CPU to the kernel (`sched_yield`) after this
    /// many polls of client connections; 0: never.
    pub yield_every_polls: u32,
    /// Address every public port binds on.
    pub bind: IpAddr,
    /// The Unix socket on which this process hands its listening sockets to
    /// its successor (`tern run --upgrade`); `None`: no upgrades.
    pub upgrade_socket: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// The access token the dashboard and the debug endpoints ask for. Off
    /// loopback, Tern makes one at start when none is set (docs/dashboard.md).
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// Directory of PEM pairs `NAME.crt`/`NAME.key` (or `NAME.pem` holding both).
    pub certs_dir: Option<PathBuf>,
    pub unknown_sni: UnknownSni,
    pub handshake_timeout: Duration,
    /// How often the certificate directory is re-read for changes.
    pub reload_interval: Duration,
}

/// Obtaining certificates from an ACME server (`[acme]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// The directory URL, e.g. Let's Encrypt's
    /// `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// `mailto:` addresses given to the ACME server with the account.
    pub contact: Vec<String>,
    /// PEM root that the directory's HTTPS certificate chains to, for test
    /// servers; `None`: the system's roots.
    pub ca_root: Option<PathBuf>,
    pub challenge: AcmeChallenge,
    /// Where the account's key is kept (owner-only).
    pub state_dir: PathBuf,
    /// Orders any one hostname may start in an hour.
    pub orders_per_hour: u32,
    /// With `Some(wait)`, a hostname is ordered at the first handshake that
    /// names it (a handshake waits for the order at most `wait`) instead of at
    /// start.
    pub on_demand: Option<Duration>,
    /// The file holding the key that certificates are sealed with in etcd
    /// (nodes on an etcd catalog share their certificates).
    pub fleet_key: Option<PathBuf>,
}

/// How the ACME server checks that this node answers for a hostname.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// RFC 8737: a handshake on the TLS port with ALPN `acme-tls/1`.
    TlsAlpn01,
    /// RFC 8555 8.3: `GET /.well-known/acme-challenge/TOKEN` on the plain HTTP port.
    Http01,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownSni {
    /// Serve the certificate with this name (file stem in `certs_dir`).
    DefaultCert(String),
    /// Fail the handshake.
    Reject,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Time a client has to send a complete request head.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// A response that makes no progress towards the client for this long (the
    /// client stopped reading) ends its connection.
    pub send_timeout: Duration,
    /// A request body that makes no progress for this long ends its request
    /// (408) and its connection.
    pub body_read_timeout: Duration,
    /// How much of a request body is read before a machine is chosen: a body
    /// that fits is read whole first, so a slow client holds no machine's
    /// capacity while it sends it. 0 streams every body from its first byte.
    pub request_buffer: usize,
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Most headers in one request.
    pub max_headers: usize,
    /// Largest request body, in bytes; an app may set its own.
    pub max_request_body: u64,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    /// Open client connections per listener; past it, new ones wait in the kernel backlog.
    pub max_connections_per_listener: usize,
    /// Requests that may wait for a machine when all are at their hard limit.
    pub queue_size: usize,
    /// How long a queued request waits before a 503.
    pub queue_timeout: Duration,
    /// Machines tried when connecting fails (the request was not sent yet).
    pub connect_attempts: usize,
    /// How long in-flight requests get to finish after SIGTERM.
    pub drain_timeout: Duration,
}

/// The process's budgets (`[overload]`): past one, new connections are closed
/// as they are accepted and new requests get 503 `overloaded`. `None` is no budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overload {
    /// Open client connections over every listener.
    pub max_connections: Option<usize>,
    /// Resident memory of the process, in bytes.
    pub max_memory: Option<u64>,
}

/// How this node runs the machines it starts and stops (`[lifecycle]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// How long a request waits for a machine it started before it gets an error.
    pub start_timeout: Duration,
    /// From SIGTERM to SIGKILL when a machine is stopped.
    pub stop_timeout: Duration,
    /// How often the autostop pass runs.
    pub autostop_interval: Duration,
    /// How long a lone machine's load must stay at zero before it is stopped.
    pub idle_timeout: Duration,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(10),
            autostop_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// The spin watchdog (per connection) and the runtime watchdog (per process).
#[derive(Debug, Clone, PartialEq)]
pub struct Watchdog {
    /// Run every connection under the spin watchdog.
    pub enabled: bool,
    /// Polls in a row without progress that make a spin...
    pub spin_polls: u64,
    /// ...when they happen within this window.
    pub spin_window: Duration,
    pub action: SpinAction,
    /// First pause of the `backoff` action; it doubles at each further spin.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How often the runtime watchdog pings the runtime.
    pub runtime_interval: Duration,
    /// A ping unanswered for this long means the runtime has stalled.
    pub runtime_deadline: Duration,
    pub runtime_action: RuntimeAction,
}

/// How a node's workers share its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// One tokio multi-thread runtime: every worker accepts from every port,
    /// and an idle worker steals tasks from a busy one.
    WorkStealing,
    /// One current-thread runtime per worker, each with its own `SO_REUSEPORT`
    /// socket on every public port: the kernel spreads connections over the
    /// workers, and a connection stays on the worker that accepted it.
    PerCore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpinAction {
    Close,
    Backoff,
    Log,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeAction {
    /// Log stacks and a runtime snapshot, then exit with status 70 for a supervisor
    /// to restart the process.
    Exit,
    /// Log only.
    Log,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive, e.g. `info` or `tern=debug`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Round-trip times between regions, as measured by the operator.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegionDistances {
    pub rtt: BTreeMap<(String, String), Duration>,
}

impl RegionDistances {
    /// RTT between two regions; zero for the same region, `None` when unknown.
    pub fn rtt(&self, a: &str, b: &str) -> Option<Duration> {
        if a == b {
            return Some(Duration::ZERO);
        }
        let key = if a < b {
            (a.to_owned(), b.to_owned())
        } else {
            (b.to_owned(), a.to_owned())
        };
        self.rtt.get(&key).copied()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct App {
    pub name: String,
    /// Exact names, or `*.suffix` wildcards matching one or more labels.
    pub hostnames: Vec<String>,
    /// Overrides `limits.max_request_body` for this app.
    pub max_request_body: Option<u64>,
    /// The hostnames this node obtains certificates for by ACME (`[app.certificates]`):
    /// exact names only, each one of `hostnames`.
    pub acme_hostnames: Vec<String>,
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub internal_port: u16,
    /// Speak h2c (prior knowledge) to the machine instead of HTTP/1.1.
    pub h2_backend: bool,
    pub concurrency: Concurrency,
    pub ports: Vec<Port>,
    pub tcp_checks: Vec<TcpCheck>,
    pub http_checks: Vec<HttpCheck>,
    /// Start a stopped or suspended machine when none started has room
    /// (`auto_start_machines`, on by default as in fly.toml).
    pub autostart: bool,
    /// What the autostop pass does to machines the load no longer needs.
    pub autostop: AutoStop,
    /// Machines per region that autostop leaves started.
    pub min_machines_running: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AutoStop {
    #[default]
    Off,
    Stop,
    Suspend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    pub kind: ConcurrencyKind,
    pub soft_limit: u32,
    pub hard_limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcurrencyKind {
    Connections,
    Requests,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub port: u16,
    pub handlers: Handlers,
    /// Answer plain-HTTP requests on this port with a 301 to https.
    pub force_https: bool,
}

/// The handler stack of a public port, in the combinations Tern supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handlers {
    pub tls: bool,
    pub http: bool,
    /// Send a PROXY protocol header to the machine (raw TCP stacks only).
    pub proxy_proto: Option<ProxyProtoVersion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtoVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TcpCheck {
    pub interval: Duration,
    pub timeout: Duration,
    pub grace_period: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    pub interval: Duration,
    pub timeout: Duration,
    pub grace_period: Duration,
    pub path: String,
    pub method: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub id: String,
    pub app: String,
    pub region: String,
    /// The node that runs it: the only one that connects to it, checks its health
    /// and publishes its live state. `None` in a catalog file without `[[node]]`:
    /// the node that reads it.
    pub node: Option<String>,
    pub ip: IpAddr,
    pub state: MachineState,
    pub driver: Driver,
}

/// Who runs a machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Driver {
    /// Someone else: Tern only routes to it.
    #[default]
    External,
    /// Tern, as a child process.
    Process(ProcessSpec),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Its working directory; Tern's own when `None`.
    pub dir: Option<String>,
    /// Added to the environment it inherits, after the `TERN_*` variables.
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
}
