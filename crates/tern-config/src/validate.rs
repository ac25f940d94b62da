//! Semantic validation: turns the raw, spanned configuration into the public model,
//! collecting every problem found instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::error::{Diagnostic, Locator};
use crate::model::*;
use crate::raw::*;
use crate::values;

/// The smallest `overload.max_memory`: below it, Tern would shed from its start.
const MIN_MEMORY_BUDGET: u64 = 16 << 20;

/// The largest `limits.request_buffer`: it is memory per request in flight.
const MAX_REQUEST_BUFFER: u64 = 1 << 20;
/// Polls after which a worker offers its CPU to the kernel: about a millisecond
/// of keep-alive requests, far below the kernel's 4 ms tick (docs/operations.md,
/// "Sharing the CPUs").
const DEFAULT_YIELD_EVERY_POLLS: u32 = 64;
/// How long a handshake waits for an on-demand order: pebble and Let's Encrypt
/// usually issue within a few seconds, and browsers give up after about 30.
const DEFAULT_ON_DEMAND_WAIT: Duration = Duration::from_secs(10);

const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9090);
const DEFAULT_TCP_CHECK: (Duration, Duration, Duration) = (
    Duration::from_secs(15),
    Duration::from_secs(2),
    Duration::from_secs(1),
);
const DEFAULT_HTTP_CHECK: (Duration, Duration, Duration) = (
    Duration::from_secs(10),
    Duration::from_secs(2),
    Duration::from_secs(5),
);
const ALLOWED_STACKS: &str = "[] (raw TCP), [\"tls\"], [\"http\"], [\"tls\", \"http\"], [\"proxy_proto\"], [\"tls\", \"proxy_proto\"]";

struct Validator<'a> {
    loc: Locator<'a>,
    file: &'a Path,
    diags: Vec<Diagnostic>,
    /// Problems found in another file (a catalog file the configuration names),
    /// reported after this file's own.
    elsewhere: Vec<Diagnostic>,
}

/// How a public port is used, remembered to check later uses of the same number.
struct PortUse {
    app: String,
    tls: bool,
    http: bool,
    span: Range<usize>,
}

pub(crate) fn validate(raw: RawConfig, src: &str, file: &Path) -> Result<Config, Vec<Diagnostic>> {
    let mut v = Validator {
        loc: Locator::new(src, file),
        file,
        diags: Vec::new(),
        elsewhere: Vec::new(),
    };
    let config = v.config(raw);
    v.finish(config)
}

/// Validates a catalog file read on its own.
pub(crate) fn validate_catalog(
    raw: RawCatalogFile,
    src: &str,
    file: &Path,
    used: CatalogUse,
) -> Result<CatalogFile, Vec<Diagnostic>> {
    let mut v = Validator {
        loc: Locator::new(src, file),
        file,
        diags: Vec::new(),
        elsewhere: Vec::new(),
    };
    let catalog = v.catalog_file(raw, used);
    v.finish(catalog)
}

impl Validator<'_> {
    fn finish<T>(self, value: T) -> Result<T, Vec<Diagnostic>> {
        if self.diags.is_empty() && self.elsewhere.is_empty() {
            return Ok(value);
        }
        let mut diags = self.diags;
        diags.sort_by_key(|d| (d.line, d.column));
        diags.extend(self.elsewhere);
        Err(diags)
    }

    fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let d = self.loc.diagnostic(span, message);
        self.diags.push(d);
    }

    fn at(&self, span: &Range<usize>) -> String {
        self.loc.position(span)
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let node_id_span = raw.node.id.span();
        let node_region_span = raw.node.region.span();
        let scheduler_span = raw.node.scheduler.as_ref().map(|s| s.span());
        let node = self.node(raw.node);
        let (admin, admin_span) = self.admin(raw.admin);
        let tls = self.tls(raw.tls);
        let limits = self.limits(raw.limits);
        if let Some(span) = &scheduler_span {
            self.check_per_core_limit(&node, &limits, span);
        }
        let overload = self.overload(raw.overload.unwrap_or_default());
        let lifecycle = self.lifecycle(raw.lifecycle.unwrap_or_default());
        let log = self.log(raw.log);
        let watchdog = self.watchdog(raw.watchdog.unwrap_or_default());
        let backhaul_span = raw.backhaul.as_ref().map(|b| b.listen.span());
        let backhaul = raw.backhaul.map(|b| self.backhaul(b));
        let (catalog, catalog_span) = self.catalog_source(raw.catalog);
        let inline = raw.app.first().map(|a| a.name.span()).or_else(|| {
            raw.machine
                .first()
                .map(|m| m.span())
                .or_else(|| raw.region.first().map(|r| r.code.span()))
        });
        let ports = PortCtx {
            node: &node,
            admin: &admin,
            admin_span: admin_span.as_ref(),
        };
        let acme_span = raw.acme.as_ref().map(|a| a.span());
        let acme = raw
            .acme
            .map(|a| self.acme(a.into_inner(), &tls, acme_span.as_ref()));
        if let (Some(acme), Some(span)) = (&acme, &acme_span) {
            let on_etcd = matches!(catalog, CatalogSource::Etcd(_));
            match (&acme.fleet_key, on_etcd) {
                (None, true) => self.error(
                    span,
                    "[acme] on an etcd catalog needs acme.fleet_key: the file holding the key that the fleet's certificates are sealed with in etcd (64 hex digits, such as `openssl rand -hex 32` prints)",
                ),
                (Some(_), false) => self.error(
                    span,
                    "acme.fleet_key is set but the catalog is not in etcd: only nodes of an etcd catalog share certificates",
                ),
                _ => {}
            }
        }
        let asks_acme = raw
            .app
            .iter()
            .find_map(|a| a.certificates.as_ref().filter(|c| *c.acme.get_ref()))
            .map(|c| c.acme.span());
        if let (None, Some(span)) = (&acme, asks_acme) {
            self.error(
                &span,
                "certificates.acme needs an [acme] section: the ACME directory to order from",
            );
        }
        let regions = self.regions(raw.region);
        let apps = self.apps(raw.app, Some(&ports));
        let machines = self.machines(raw.machine, &apps, Nodes::Inline(&node.id));
        let mut config = Config {
            node,
            admin,
            tls,
            limits,
            overload,
            lifecycle,
            log,
            watchdog,
            backhaul,
            catalog,
            acme,
            regions,
            nodes: Vec::new(),
            apps,
            machines,
        };
        let (Some(inline), Some(source_span)) = (inline, &catalog_span) else {
            self.read_catalog_file(&mut config, catalog_span.as_ref());
            self.check_fleet(&config, &node_id_span, &node_region_span, backhaul_span);
            return config;
        };
        let message = match &config.catalog {
            CatalogSource::Etcd(_) => format!(
                "catalog.source at {} is \"etcd\": apps, machines and regions live in etcd (push them with `tern catalog push`), not in this file",
                self.at(source_span)
            ),
            CatalogSource::File { .. } => format!(
                "catalog.file at {} names the catalog file: apps, machines and regions go there, not in this file",
                self.at(source_span)
            ),
        };
        self.error(&inline, message);
        config
    }

    /// Per core, every worker's accept loop waits for a connection with a
    /// permit of the port's limit in hand: with fewer permits than workers,
    /// connections the kernel gave to the other workers' sockets would wait.
    fn check_per_core_limit(&mut self, node: &Node, limits: &Limits, span: &Range<usize>) {
        if node.scheduler == Scheduler::PerCore
            && limits.max_connections_per_listener < node.workers
        {
            self.error(
                span,
                format!(
                    "node.scheduler \"per-core\" needs limits.max_connections_per_listener ({}) to be at least node.workers ({})",
                    limits.max_connections_per_listener, node.workers
                ),
            );
        }
    }

    /// Reads the catalog file that `[catalog] file` names into `config`.
    fn read_catalog_file(&mut self, config: &mut Config, span: Option<&Range<usize>>) {
        let (CatalogSource::File { path: Some(path) }, Some(span)) = (&config.catalog, span) else {
            return;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("cannot read catalog file {}: {e}", path.display());
                self.error(span, msg);
                return;
            }
        };
        match crate::parse_catalog(&text, path, CatalogUse::File) {
            Ok(file) => {
                config.regions = file.regions;
                config.nodes = file.nodes;
                config.apps = file.apps;
                config.machines = file.machines;
            }
            Err(e) => self.elsewhere.extend(e.diagnostics().iter().cloned()),
        }
    }

    /// The fleet as a whole, seen from this node: it is listed among the fleet's
    /// nodes, and it can reach machines that other nodes run.
    fn check_fleet(
        &mut self,
        config: &Config,
        id_span: &Range<usize>,
        region_span: &Range<usize>,
        backhaul_span: Option<Range<usize>>,
    ) {
        let me = &config.node;
        if !config.nodes.is_empty() {
            match config.nodes.iter().find(|n| n.id == me.id) {
                None => {
                    let listed: Vec<String> = config
                        .nodes
                        .iter()
                        .map(|n| format!("\"{}\"", n.id))
                        .collect();
                    self.error(
                        id_span,
                        format!(
                            "node.id \"{}\" is not among the catalog file's nodes ({}); every node of a static fleet is listed there",
                            me.id,
                            listed.join(", ")
                        ),
                    );
                }
                Some(listed) => {
                    if listed.region != me.region {
                        self.error(
                            region_span,
                            format!(
                                "node.region \"{}\" differs from the catalog file, which puts node \"{}\" in region \"{}\"",
                                me.region, me.id, listed.region
                            ),
                        );
                    }
                    if let (Some(b), Some(span)) = (&config.backhaul, &backhaul_span) {
                        if b.advertise != listed.backhaul {
                            self.error(
                                span,
                                format!(
                                    "this node's backhaul address is {} but the catalog file gives {} for node \"{}\"; peers dial the catalog's address",
                                    b.advertise, listed.backhaul, me.id
                                ),
                            );
                        }
                    }
                }
            }
        }
        // An inline catalog's machines are this node's (checked where they are given).
        let inline = matches!(config.catalog, CatalogSource::File { path: None });
        if config.backhaul.is_some() || inline {
            return;
        }
        let remote = config
            .machines
            .iter()
            .find(|m| m.node.as_deref().is_some_and(|n| n != me.id));
        if let Some(m) = remote {
            self.error(
                id_span,
                format!(
                    "machine \"{}\" runs on node \"{}\", which this node can reach only over the backhaul; add a [backhaul] section",
                    m.id,
                    m.node.as_deref().unwrap_or_default()
                ),
            );
        }
    }

    fn catalog_file(&mut self, raw: RawCatalogFile, used: CatalogUse) -> CatalogFile {
        let regions = self.regions(raw.region);
        let nodes = self.fleet_nodes(raw.node, used);
        let apps = self.apps(raw.app, None);
        let rule = match used {
            CatalogUse::Etcd => Nodes::Required,
            CatalogUse::File if nodes.is_empty() => Nodes::Optional,
            CatalogUse::File => Nodes::Listed(&nodes),
        };
        let machines = self.machines(raw.machine, &apps, rule);
        CatalogFile {
            regions,
            nodes,
            apps,
            machines,
        }
    }

    fn fleet_nodes(&mut self, raw: Vec<Spanned<RawFleetNode>>, used: CatalogUse) -> Vec<FleetNode> {
        let mut ids: BTreeMap<String, Range<usize>> = BTreeMap::new();
        let mut addrs: BTreeMap<SocketAddr, Range<usize>> = BTreeMap::new();
        let mut nodes = Vec::new();
        for n in raw {
            if used == CatalogUse::Etcd {
                self.error(
                    &n.span(),
                    "a catalog for etcd has no [[node]] entries: nodes register themselves when they start",
                );
                continue;
            }
            let n = n.into_inner();
            let id = n.id.get_ref();
            if let Err(e) = values::check_slug("node id", id) {
                self.error(&n.id.span(), e);
            } else if let Some(first) = ids.get(id) {
                let msg = format!("node \"{id}\" is already listed at {}", self.at(first));
                self.error(&n.id.span(), msg);
            } else {
                ids.insert(id.clone(), n.id.span());
            }
            if let Err(e) = values::check_slug("node region", n.region.get_ref()) {
                self.error(&n.region.span(), e);
            }
            let Some(backhaul) = self.socket_addr(&n.backhaul, "node backhaul") else {
                continue;
            };
            if let Some(first) = addrs.get(&backhaul) {
                let msg = format!(
                    "backhaul address {backhaul} is already given to another node at {}",
                    self.at(first)
                );
                self.error(&n.backhaul.span(), msg);
            } else {
                addrs.insert(backhaul, n.backhaul.span());
            }
            nodes.push(FleetNode {
                id: n.id.into_inner(),
                region: n.region.into_inner(),
                backhaul,
            });
        }
        nodes
    }

    fn backhaul(&mut self, raw: RawBackhaul) -> Backhaul {
        let unset = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        let listen = self
            .socket_addr(&raw.listen, "backhaul.listen")
            .unwrap_or(unset);
        let advertise = match &raw.advertise {
            Some(a) => self.socket_addr(a, "backhaul.advertise").unwrap_or(listen),
            None => {
                if listen.ip().is_unspecified() && listen != unset {
                    self.error(
                        &raw.listen.span(),
                        format!("backhaul.listen {listen} is not an address peers can dial; set backhaul.advertise to the address they should use"),
                    );
                }
                listen
            }
        };
        Backhaul {
            listen,
            advertise,
            ca: self.path(&raw.ca, "backhaul.ca"),
            cert: self.path(&raw.cert, "backhaul.cert"),
            key: self.path(&raw.key, "backhaul.key"),
            ping_interval: self.duration(
                &raw.ping_interval,
                "backhaul.ping_interval",
                Duration::from_secs(1),
                false,
            ),
        }
    }

    /// The catalog's source, and where `source` or `file` was given.
    fn catalog_source(
        &mut self,
        raw: Option<RawCatalogSource>,
    ) -> (CatalogSource, Option<Range<usize>>) {
        let Some(raw) = raw else {
            return (CatalogSource::File { path: None }, None);
        };
        let kind = raw.source.as_ref().map_or("file", |s| s.get_ref().as_str());
        let kind_span = raw.source.as_ref().map(|s| s.span());
        let etcd_keys = [
            raw.endpoints.as_ref().map(|e| ("endpoints", e.span())),
            raw.prefix.as_ref().map(|p| ("prefix", p.span())),
            raw.lease_ttl.as_ref().map(|l| ("lease_ttl", l.span())),
            raw.dial_timeout
                .as_ref()
                .map(|d| ("dial_timeout", d.span())),
        ];
        match kind {
            "file" => {
                for (key, span) in etcd_keys.into_iter().flatten() {
                    self.error(
                        &span,
                        format!("catalog.{key} is only for catalog.source = \"etcd\""),
                    );
                }
                let path = raw.file.as_ref().map(|f| self.path(f, "catalog.file"));
                let span = raw.file.as_ref().map(|f| f.span());
                (CatalogSource::File { path }, span)
            }
            "etcd" => {
                if let Some(f) = &raw.file {
                    self.error(
                        &f.span(),
                        "catalog.file is only for catalog.source = \"file\"",
                    );
                }
                (CatalogSource::Etcd(self.etcd(&raw)), kind_span)
            }
            other => {
                if let Some(span) = &kind_span {
                    self.error(
                        span,
                        format!(
                            "unknown catalog.source \"{other}\"; expected \"file\" or \"etcd\""
                        ),
                    );
                }
                (CatalogSource::File { path: None }, None)
            }
        }
    }

    fn etcd(&mut self, raw: &RawCatalogSource) -> EtcdSource {
        let mut endpoints = Vec::new();
        match &raw.endpoints {
            None => endpoints.push("http://127.0.0.1:2379".to_owned()),
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.error(
                        &list.span(),
                        "catalog.endpoints must list at least one etcd URL",
                    );
                }
                for e in list.get_ref() {
                    let url = e.get_ref();
                    if url.starts_with("https://") {
                        self.error(
                            &e.span(),
                            format!("catalog endpoint \"{url}\": TLS to etcd is not supported yet; use http:// on a trusted network"),
                        );
                    } else if !url.starts_with("http://") || url.len() <= "http://".len() {
                        self.error(
                            &e.span(),
                            format!("catalog endpoint \"{url}\" is not an etcd client URL; expected e.g. \"http://127.0.0.1:2379\""),
                        );
                    }
                    endpoints.push(url.clone());
                }
            }
        }
        let prefix = match &raw.prefix {
            None => "/tern".to_owned(),
            Some(p) => {
                let text = p.get_ref();
                if !text.starts_with('/') || text.len() < 2 || text.ends_with('/') {
                    self.error(
                        &p.span(),
                        format!("catalog.prefix \"{text}\" must start with '/', not end with one, and name something, e.g. \"/tern\""),
                    );
                }
                text.clone()
            }
        };
        let lease_ttl = self.duration(
            &raw.lease_ttl,
            "catalog.lease_ttl",
            Duration::from_secs(5),
            false,
        );
        if lease_ttl < Duration::from_secs(1) {
            if let Some(l) = &raw.lease_ttl {
                self.error(
                    &l.span(),
                    "catalog.lease_ttl must be at least 1s: etcd counts leases in whole seconds",
                );
            }
        }
        EtcdSource {
            endpoints,
            prefix,
            lease_ttl,
            dial_timeout: self.duration(
                &raw.dial_timeout,
                "catalog.dial_timeout",
                Duration::from_secs(2),
                false,
            ),
        }
    }

    /// A path, relative to the configuration file's directory unless absolute.
    fn path(&mut self, raw: &Spanned<String>, key: &str) -> PathBuf {
        if raw.get_ref().is_empty() {
            self.error(&raw.span(), format!("{key} must not be empty"));
        }
        let path = PathBuf::from(raw.get_ref());
        match self.file.parent() {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        }
    }

    fn socket_addr(&mut self, raw: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match raw.get_ref().parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => Some(a),
            _ => {
                self.error(
                    &raw.span(),
                    format!(
                        "{key} \"{}\" is not a socket address with a port; expected IP:PORT such as \"127.0.0.1:4433\"",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// One of a key's named values; the first is the default, and what is
    /// unset or unknown (an error) gets it.
    fn one_of<T: Copy>(
        &mut self,
        raw: &Option<Spanned<String>>,
        key: &str,
        choices: &[(&str, T)],
    ) -> T {
        let default = choices[0].1;
        let Some(v) = raw else { return default };
        if let Some((_, value)) = choices.iter().find(|(name, _)| name == v.get_ref()) {
            return *value;
        }
        let names: Vec<String> = choices
            .iter()
            .map(|(name, _)| format!("\"{name}\""))
            .collect();
        let expected = match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        let message = format!("unknown {key} \"{}\"; expected {expected}", v.get_ref());
        self.error(&v.span(), message);
        default
    }

    fn watchdog(&mut self, raw: RawWatchdog) -> Watchdog {
        let ms = Duration::from_millis;
        let action = self.one_of(
            &raw.action,
            "watchdog.action",
            &[
                ("close", SpinAction::Close),
                ("backoff", SpinAction::Backoff),
                ("log", SpinAction::Log),
            ],
        );
        let runtime_action = self.one_of(
            &raw.runtime_action,
            "watchdog.runtime_action",
            &[("exit", RuntimeAction::Exit), ("log", RuntimeAction::Log)],
        );
        let spin_polls = self.int(
            &raw.spin_polls,
            "watchdog.spin_polls",
            1000,
            2,
            u64::from(u32::MAX),
        );
        let backoff_initial = self.duration(
            &raw.backoff_initial,
            "watchdog.backoff_initial",
            ms(1),
            false,
        );
        let backoff_max = self.duration(&raw.backoff_max, "watchdog.backoff_max", ms(1000), false);
        if backoff_initial > backoff_max {
            if let Some(b) = &raw.backoff_initial {
                self.error(
                    &b.span(),
                    format!(
                        "watchdog.backoff_initial ({backoff_initial:?}) must not exceed watchdog.backoff_max ({backoff_max:?})"
                    ),
                );
            }
        }
        let runtime_interval = self.duration(
            &raw.runtime_interval,
            "watchdog.runtime_interval",
            ms(1000),
            false,
        );
        let runtime_deadline = self.duration(
            &raw.runtime_deadline,
            "watchdog.runtime_deadline",
            ms(5000),
            false,
        );
        if runtime_deadline < runtime_interval {
            if let Some(d) = &raw.runtime_deadline {
                self.error(
                    &d.span(),
                    format!(
                        "watchdog.runtime_deadline ({runtime_deadline:?}) must be at least watchdog.runtime_interval ({runtime_interval:?})"
                    ),
                );
            }
        }
        Watchdog {
            enabled: raw.enabled.as_ref().is_none_or(|e| *e.get_ref()),
            spin_polls,
            spin_window: self.duration(&raw.spin_window, "watchdog.spin_window", ms(100), false),
            action,
            backoff_initial,
            backoff_max,
            runtime_interval,
            runtime_deadline,
            runtime_action,
        }
    }

    fn node(&mut self, raw: RawNode) -> Node {
        // A node's id names it to its peers, and in its backhaul certificate.
        if let Err(e) = values::check_slug("node.id", raw.id.get_ref()) {
            self.error(&raw.id.span(), e);
        }
        if let Err(e) = values::check_slug("node.region", raw.region.get_ref()) {
            self.error(&raw.region.span(), e);
        }
        let default_workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = self.count(&raw.workers, "node.workers", default_workers, 1);
        let scheduler = self.one_of(
            &raw.scheduler,
            "node.scheduler",
            &[
                ("work-stealing", Scheduler::WorkStealing),
                ("per-core", Scheduler::PerCore),
            ],
        );
        let yield_every_polls = self.int(
            &raw.yield_every_polls,
            "node.yield_every_polls",
            u64::from(DEFAULT_YIELD_EVERY_POLLS),
            0,
            u64::from(u32::MAX),
        );
        let bind = match &raw.bind {
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Some(b) => self.ip(b, "node.bind"),
        };
        let upgrade_socket = raw.upgrade_socket.as_ref().and_then(|p| {
            if p.get_ref().is_empty() {
                self.error(&p.span(), "node.upgrade_socket must not be empty");
                return None;
            }
            Some(self.relative_to_file(p.get_ref()))
        });
        Node {
            id: raw.id.into_inner(),
            region: raw.region.into_inner(),
            workers,
            scheduler,
            yield_every_polls: u32::try_from(yield_every_polls).unwrap_or(u32::MAX),
            bind,
            upgrade_socket,
        }
    }

    /// A path as written, relative to the configuration file's directory.
    fn relative_to_file(&self, path: &str) -> PathBuf {
        let path = PathBuf::from(path);
        match self.file.parent() {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        }
    }

    fn admin(&mut self, raw: Option<RawAdmin>) -> (Admin, Option<Range<usize>>) {
        let (listen, token) = raw.map_or((None, None), |a| (a.listen, a.token));
        let token = token.and_then(|t| self.admin_token(t));
        let Some(listen) = listen else {
            return (
                Admin {
                    listen: DEFAULT_ADMIN_LISTEN,
                    token,
                },
                None,
            );
        };
        match listen.get_ref().parse::<SocketAddr>() {
            Ok(addr) => (
                Admin {
                    listen: addr,
                    token,
                },
                Some(listen.span()),
            ),
            Err(_) => {
                self.error(
                    &listen.span(),
                    format!(
                        "admin.listen \"{}\" is not a socket address; expected IP:PORT such as \"127.0.0.1:9090\" or \"[::1]:9090\"",
                        listen.get_ref()
                    ),
                );
                (
                    Admin {
                        listen: DEFAULT_ADMIN_LISTEN,
                        token,
                    },
                    None,
                )
            }
        }
    }

    /// `admin.token`: 16 to 256 characters of a URL's unreserved set, so that it
    /// reads the same in a header and in a query string.
    fn admin_token(&mut self, token: Spanned<String>) -> Option<String> {
        let t = token.get_ref();
        let unreserved = t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if (16..=256).contains(&t.len()) && unreserved {
            return Some(t.clone());
        }
        self.error(
            &token.span(),
            "admin.token must be 16 to 256 characters among A-Z, a-z, 0-9, '-', '.', '_' and '~'"
                .to_owned(),
        );
        None
    }

    fn tls(&mut self, raw: Option<RawTls>) -> Tls {
        let raw = raw.unwrap_or(RawTls {
            certs_dir: None,
            unknown_sni: None,
            handshake_timeout: None,
            reload_interval: None,
        });
        let certs_dir = match &raw.certs_dir {
            None => None,
            Some(dir) if dir.get_ref().is_empty() => {
                self.error(&dir.span(), "tls.certs_dir must not be empty");
                None
            }
            Some(dir) => {
                let path = PathBuf::from(dir.get_ref());
                // Relative to the config file, so `tern` works from any working directory.
                Some(match self.file.parent() {
                    Some(base) if path.is_relative() => base.join(path),
                    _ => path,
                })
            }
        };
        let unknown_sni = match &raw.unknown_sni {
            None => UnknownSni::Reject,
            Some(s) if s.get_ref() == "reject" => UnknownSni::Reject,
            Some(s) => {
                let name = s.get_ref();
                if name.is_empty() || name.contains(['/', '\\']) {
                    self.error(
                        &s.span(),
                        format!("tls.unknown_sni \"{name}\" is not valid; expected \"reject\" or the name (file stem) of a certificate in tls.certs_dir"),
                    );
                } else if raw.certs_dir.is_none() {
                    self.error(
                        &s.span(),
                        format!("tls.unknown_sni names certificate \"{name}\" but tls.certs_dir is not set; set certs_dir or use \"reject\""),
                    );
                }
                UnknownSni::DefaultCert(name.clone())
            }
        };
        Tls {
            certs_dir,
            unknown_sni,
            handshake_timeout: self.duration(
                &raw.handshake_timeout,
                "tls.handshake_timeout",
                Duration::from_secs(10),
                false,
            ),
            reload_interval: self.duration(
                &raw.reload_interval,
                "tls.reload_interval",
                Duration::from_secs(2),
                false,
            ),
        }
    }

    fn limits(&mut self, raw: Option<RawLimits>) -> Limits {
        let raw = raw.unwrap_or(RawLimits {
            header_read_timeout: None,
            idle_timeout: None,
            send_timeout: None,
            body_read_timeout: None,
            request_buffer: None,
            max_header_bytes: None,
            max_headers: None,
            max_request_body: None,
            connect_timeout: None,
            response_header_timeout: None,
            max_connections_per_listener: None,
            queue_size: None,
            queue_timeout: None,
            connect_attempts: None,
            drain_timeout: None,
        });
        let secs = Duration::from_secs;
        let max_header_bytes = self.size(&raw.max_header_bytes, "limits.max_header_bytes", 1);
        let request_buffer = self.size(&raw.request_buffer, "limits.request_buffer", 0);
        let request_buffer = match request_buffer {
            Some(n) if n > MAX_REQUEST_BUFFER => {
                let span = raw
                    .request_buffer
                    .as_ref()
                    .map(|v| v.span())
                    .unwrap_or_default();
                self.error(
                    &span,
                    format!("limits.request_buffer must be at most {MAX_REQUEST_BUFFER} bytes (1MiB): it is held in memory for every request whose body is arriving"),
                );
                None
            }
            n => n,
        };
        Limits {
            header_read_timeout: self.duration(
                &raw.header_read_timeout,
                "limits.header_read_timeout",
                secs(10),
                false,
            ),
            idle_timeout: self.duration(&raw.idle_timeout, "limits.idle_timeout", secs(60), false),
            send_timeout: self.duration(&raw.send_timeout, "limits.send_timeout", secs(60), false),
            body_read_timeout: self.duration(
                &raw.body_read_timeout,
                "limits.body_read_timeout",
                secs(60),
                false,
            ),
            request_buffer: request_buffer.map_or(16 << 10, |n| n as usize),
            max_header_bytes: max_header_bytes
                .map_or(64 << 10, |n| usize::try_from(n).unwrap_or(usize::MAX)),
            max_headers: self.count(&raw.max_headers, "limits.max_headers", 100, 1),
            max_request_body: self
                .size(&raw.max_request_body, "limits.max_request_body", 0)
                .unwrap_or(64 << 20),
            connect_timeout: self.duration(
                &raw.connect_timeout,
                "limits.connect_timeout",
                secs(5),
                false,
            ),
            response_header_timeout: self.duration(
                &raw.response_header_timeout,
                "limits.response_header_timeout",
                secs(60),
                false,
            ),
            max_connections_per_listener: self.count(
                &raw.max_connections_per_listener,
                "limits.max_connections_per_listener",
                10_000,
                1,
            ),
            queue_size: self.count(&raw.queue_size, "limits.queue_size", 100, 0),
            queue_timeout: self.duration(
                &raw.queue_timeout,
                "limits.queue_timeout",
                secs(5),
                false,
            ),
            connect_attempts: self.count(&raw.connect_attempts, "limits.connect_attempts", 3, 1),
            drain_timeout: self.duration(
                &raw.drain_timeout,
                "limits.drain_timeout",
                secs(30),
                false,
            ),
        }
    }

    fn overload(&mut self, raw: RawOverload) -> Overload {
        let max_connections = raw
            .max_connections
            .as_ref()
            .map(|_| self.count(&raw.max_connections, "overload.max_connections", 1, 1));
        let max_memory = self.size(&raw.max_memory, "overload.max_memory", MIN_MEMORY_BUDGET);
        Overload {
            max_connections,
            max_memory,
        }
    }

    fn lifecycle(&mut self, raw: RawLifecycle) -> Lifecycle {
        let default = Lifecycle::default();
        Lifecycle {
            start_timeout: self.duration(
                &raw.start_timeout,
                "lifecycle.start_timeout",
                default.start_timeout,
                false,
            ),
            stop_timeout: self.duration(
                &raw.stop_timeout,
                "lifecycle.stop_timeout",
                default.stop_timeout,
                true,
            ),
            autostop_interval: self.duration(
                &raw.autostop_interval,
                "lifecycle.autostop_interval",
                default.autostop_interval,
                false,
            ),
            idle_timeout: self.duration(
                &raw.idle_timeout,
                "lifecycle.idle_timeout",
                default.idle_timeout,
                false,
            ),
        }
    }

    fn log(&mut self, raw: Option<RawLog>) -> Log {
        let raw = raw.unwrap_or(RawLog {
            format: None,
            level: None,
        });
        let format = self.one_of(
            &raw.format,
            "log.format",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        );
        let level = match raw.level {
            None => "info".to_owned(),
            Some(l) => {
                if l.get_ref().trim().is_empty() {
                    self.error(
                        &l.span(),
                        "log.level must not be empty; expected a filter such as \"info\" or \"tern=debug\"",
                    );
                }
                l.into_inner()
            }
        };
        Log { format, level }
    }

    fn regions(&mut self, raw: Vec<RawRegion>) -> RegionDistances {
        let mut codes: BTreeMap<String, Range<usize>> = BTreeMap::new();
        // Value and where it was given, to report conflicting measurements.
        let mut rtt: BTreeMap<(String, String), (Duration, Range<usize>)> = BTreeMap::new();
        for region in raw {
            let code = region.code.get_ref();
            if let Err(e) = values::check_slug("region code", code) {
                self.error(&region.code.span(), e);
            }
            if let Some(first) = codes.get(code) {
                let msg = format!(
                    "region \"{code}\" is already listed at {}; give each region one [[region]] entry",
                    self.at(first)
                );
                self.error(&region.code.span(), msg);
            } else {
                codes.insert(code.clone(), region.code.span());
            }
            for (other, value) in &region.rtt {
                let other_name = other.get_ref();
                if let Err(e) = values::check_slug("region code", other_name) {
                    self.error(&other.span(), e);
                    continue;
                }
                if other_name == code {
                    self.error(
                        &other.span(),
                        format!(
                            "rtt from region \"{code}\" to itself is always 0; remove this entry"
                        ),
                    );
                    continue;
                }
                let Some(d) =
                    self.parse_duration(value, &format!("rtt {code} -> {other_name}"), false)
                else {
                    continue;
                };
                let key = if code < other_name {
                    (code.clone(), other_name.clone())
                } else {
                    (other_name.clone(), code.clone())
                };
                match rtt.get(&key) {
                    Some((previous, at)) if *previous != d => {
                        let msg = format!(
                            "conflicting rtt between \"{}\" and \"{}\": {} here but {} at {}; RTTs are symmetric, give one value",
                            key.0,
                            key.1,
                            humantime::format_duration(d),
                            humantime::format_duration(*previous),
                            self.at(at)
                        );
                        self.error(&value.span(), msg);
                    }
                    Some(_) => {}
                    None => {
                        rtt.insert(key, (d, value.span()));
                    }
                }
            }
        }
        RegionDistances {
            rtt: rtt.into_iter().map(|(k, (d, _))| (k, d)).collect(),
        }
    }

    /// `own` is this node's own setup, for a catalog inside its configuration:
    /// public ports must not clash with its admin listener.
    fn apps(&mut self, raw: Vec<RawApp>, own: Option<&PortCtx<'_>>) -> Vec<App> {
        let mut names: BTreeMap<String, Range<usize>> = BTreeMap::new();
        let mut hostnames: BTreeMap<String, (String, Range<usize>)> = BTreeMap::new();
        let mut ports: BTreeMap<u16, PortUse> = BTreeMap::new();
        let mut apps = Vec::new();
        for app in raw {
            let name = app.name.get_ref().clone();
            if let Err(e) = values::check_slug("app name", &name) {
                self.error(&app.name.span(), e);
            }
            if let Some(first) = names.get(&name) {
                let msg = format!("app \"{name}\" is already defined at {}", self.at(first));
                self.error(&app.name.span(), msg);
            } else {
                names.insert(name.clone(), app.name.span());
            }

            let mut app_hostnames = Vec::new();
            for host in &app.hostnames {
                match values::hostname(host.get_ref()) {
                    Err(e) => self.error(&host.span(), e),
                    Ok(h) => {
                        if let Some((owner, first)) = hostnames.get(&h) {
                            let msg = format!(
                                "hostname \"{h}\" is already used by app \"{owner}\" at {}; each hostname routes to one app",
                                self.at(first)
                            );
                            self.error(&host.span(), msg);
                        } else {
                            hostnames.insert(h.clone(), (name.clone(), host.span()));
                        }
                        app_hostnames.push(h);
                    }
                }
            }

            let max_request_body = match &app.max_request_body {
                None => None,
                some => self.size(some, "app.max_request_body", 0),
            };
            let acme_hostnames = match &app.certificates {
                Some(c) => self.acme_hostnames(c, &app.hostnames, &app_hostnames),
                None => Vec::new(),
            };

            // Public port -> where this app first uses it, to reject reuse across services.
            let mut app_ports: BTreeMap<u16, (usize, Range<usize>)> = BTreeMap::new();
            let mut internal_ports: BTreeMap<u16, Range<usize>> = BTreeMap::new();
            let mut services = Vec::new();
            for (index, service) in app.service.iter().enumerate() {
                let ctx = ServiceCtx {
                    app: &name,
                    index,
                    ports: own,
                };
                let service = self.service(
                    service,
                    &ctx,
                    &mut app_ports,
                    &mut internal_ports,
                    &mut ports,
                );
                services.push(service);
            }
            apps.push(App {
                name,
                hostnames: app_hostnames,
                max_request_body,
                acme_hostnames,
                services,
            });
        }
        apps
    }

    /// `[acme]`: where certificates are ordered, and how this node proves it
    /// answers for a name.
    fn acme(&mut self, raw: RawAcme, tls: &Tls, span: Option<&Range<usize>>) -> Acme {
        let directory = raw.directory.get_ref().trim().to_owned();
        if !directory.starts_with("https://") || directory.len() <= "https://".len() {
            self.error(
                &raw.directory.span(),
                format!("acme.directory \"{directory}\" must be an https:// URL, such as https://acme-v02.api.letsencrypt.org/directory"),
            );
        }
        let mut contact = Vec::new();
        for c in &raw.contact {
            match c.get_ref().strip_prefix("mailto:") {
                Some(addr) if addr.contains('@') && !addr.contains(char::is_whitespace) => {
                    contact.push(c.get_ref().clone())
                }
                _ => self.error(
                    &c.span(),
                    format!("acme.contact \"{}\" must be a mailto: address, such as \"mailto:ops@example.com\"", c.get_ref()),
                ),
            }
        }
        let ca_root = raw.ca_root.as_ref().and_then(|p| {
            if p.get_ref().is_empty() {
                self.error(&p.span(), "acme.ca_root must not be empty");
                return None;
            }
            Some(self.relative_to_file(p.get_ref()))
        });
        let challenge = self.one_of(
            &raw.challenge,
            "acme.challenge",
            &[
                ("tls-alpn-01", AcmeChallenge::TlsAlpn01),
                ("http-01", AcmeChallenge::Http01),
            ],
        );
        let state_dir = match &raw.state_dir {
            Some(p) if p.get_ref().is_empty() => {
                self.error(&p.span(), "acme.state_dir must not be empty");
                PathBuf::new()
            }
            Some(p) => self.relative_to_file(p.get_ref()),
            None => self.relative_to_file("acme"),
        };
        let orders_per_hour = self.limit(&raw.orders_per_hour, "acme.orders_per_hour", 5);
        let on_demand = self.on_demand(&raw);
        let fleet_key = raw.fleet_key.as_ref().and_then(|p| {
            if p.get_ref().is_empty() {
                self.error(&p.span(), "acme.fleet_key must not be empty");
                return None;
            }
            Some(self.relative_to_file(p.get_ref()))
        });
        if tls.certs_dir.is_none() {
            if let Some(span) = span {
                self.error(
                    span,
                    "[acme] needs tls.certs_dir: issued certificates are written there and served from there",
                );
            }
        }
        Acme {
            directory,
            contact,
            ca_root,
            challenge,
            state_dir,
            orders_per_hour,
            on_demand,
            fleet_key,
        }
    }

    /// `acme.on_demand`, and how long a handshake waits for its order.
    fn on_demand(&mut self, raw: &RawAcme) -> Option<Duration> {
        let on = raw.on_demand.as_ref().is_some_and(|v| *v.get_ref());
        if !on {
            if let Some(wait) = &raw.on_demand_wait {
                self.error(
                    &wait.span(),
                    "acme.on_demand_wait is set but acme.on_demand is not true",
                );
            }
            return None;
        }
        Some(self.duration(
            &raw.on_demand_wait,
            "acme.on_demand_wait",
            DEFAULT_ON_DEMAND_WAIT,
            false,
        ))
    }

    /// The names an app's `[app.certificates]` asks ACME for: all its hostnames,
    /// or the listed ones; never a wildcard (that needs DNS-01).
    fn acme_hostnames(
        &mut self,
        raw: &RawCertificates,
        spans: &[Spanned<String>],
        hostnames: &[String],
    ) -> Vec<String> {
        if !*raw.acme.get_ref() {
            if let Some(first) = raw.hostnames.as_ref().and_then(|h| h.first()) {
                self.error(
                    &first.span(),
                    "certificates.hostnames is given but certificates.acme is false",
                );
            }
            return Vec::new();
        }
        let wildcard = "cannot get an ACME certificate: a wildcard needs the DNS-01 challenge, which Tern does not support; list exact names in certificates.hostnames, or put a certificate file in tls.certs_dir";
        let Some(listed) = &raw.hostnames else {
            // Every hostname of the app (as validated); located at the app's own list.
            for host in spans {
                if let Ok(name) = values::hostname(host.get_ref()) {
                    if name.starts_with("*.") {
                        self.error(&host.span(), format!("hostname \"{name}\" {wildcard}"));
                    }
                }
            }
            return hostnames
                .iter()
                .filter(|h| !h.starts_with("*."))
                .cloned()
                .collect();
        };
        let mut names = Vec::new();
        for host in listed {
            let name = match values::hostname(host.get_ref()) {
                Ok(h) => h,
                Err(e) => {
                    self.error(&host.span(), e);
                    continue;
                }
            };
            if name.starts_with("*.") {
                self.error(
                    &host.span(),
                    format!("certificates.hostnames \"{name}\" {wildcard}"),
                );
            } else if !hostnames.contains(&name) {
                self.error(
                    &host.span(),
                    format!("certificates.hostnames \"{name}\" is not one of the app's hostnames"),
                );
            } else if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    fn service(
        &mut self,
        raw: &RawService,
        ctx: &ServiceCtx<'_>,
        app_ports: &mut BTreeMap<u16, (usize, Range<usize>)>,
        internal_ports: &mut BTreeMap<u16, Range<usize>>,
        ports: &mut BTreeMap<u16, PortUse>,
    ) -> Service {
        let internal_port = self.port_number(&raw.internal_port, "internal_port");
        if let Some(p) = internal_port {
            if let Some(first) = internal_ports.get(&p) {
                let msg = format!(
                    "internal_port {p} is already used by another service of app \"{}\" at {}",
                    ctx.app,
                    self.at(first)
                );
                self.error(&raw.internal_port.span(), msg);
            } else {
                internal_ports.insert(p, raw.internal_port.span());
            }
        }

        let concurrency = self.concurrency(raw.concurrency.as_ref());

        let mut out_ports = Vec::new();
        for port in &raw.ports {
            if let Some(p) = self.port(port, ctx, app_ports, ports) {
                out_ports.push(p);
            }
        }

        let mut tcp_checks = Vec::new();
        for check in &raw.tcp_checks {
            let c = check.get_ref();
            let (interval, timeout, grace_period) = self.check_times(
                &check.span(),
                "tcp_checks",
                DEFAULT_TCP_CHECK,
                [&c.interval, &c.timeout, &c.grace_period],
            );
            tcp_checks.push(TcpCheck {
                interval,
                timeout,
                grace_period,
            });
        }
        let mut http_checks = Vec::new();
        for check in &raw.http_checks {
            let c = check.get_ref();
            let (interval, timeout, grace_period) = self.check_times(
                &check.span(),
                "http_checks",
                DEFAULT_HTTP_CHECK,
                [&c.interval, &c.timeout, &c.grace_period],
            );
            let path = match &c.path {
                None => "/".to_owned(),
                Some(p) => {
                    if !p.get_ref().starts_with('/') {
                        self.error(
                            &p.span(),
                            format!("http_checks.path \"{}\" must start with '/'", p.get_ref()),
                        );
                    }
                    p.get_ref().clone()
                }
            };
            let method = match &c.method {
                None => "GET".to_owned(),
                Some(m) => {
                    if let Err(e) = values::http_method(m.get_ref()) {
                        self.error(&m.span(), e);
                    }
                    m.get_ref().clone()
                }
            };
            http_checks.push(HttpCheck {
                interval,
                timeout,
                grace_period,
                path,
                method,
            });
        }

        let autostop = self.one_of(
            &raw.auto_stop_machines,
            "auto_stop_machines",
            &[
                ("off", AutoStop::Off),
                ("stop", AutoStop::Stop),
                ("suspend", AutoStop::Suspend),
            ],
        );
        let min_machines_running = self.int(
            &raw.min_machines_running,
            "min_machines_running",
            0,
            0,
            u64::from(u32::MAX),
        ) as u32;
        Service {
            internal_port: internal_port.unwrap_or(0),
            h2_backend: raw.h2_backend.unwrap_or(false),
            concurrency,
            ports: out_ports,
            tcp_checks,
            http_checks,
            autostart: raw.auto_start_machines.unwrap_or(true),
            autostop,
            min_machines_running,
        }
    }

    fn concurrency(&mut self, raw: Option<&Spanned<RawConcurrency>>) -> Concurrency {
        let mut c = Concurrency {
            kind: ConcurrencyKind::Connections,
            soft_limit: 20,
            hard_limit: 25,
        };
        let Some(raw) = raw else {
            return c;
        };
        let r = raw.get_ref();
        if let Some(kind) = &r.kind {
            c.kind = match kind.get_ref().as_str() {
                "connections" => ConcurrencyKind::Connections,
                "requests" => ConcurrencyKind::Requests,
                other => {
                    self.error(
                        &kind.span(),
                        format!("unknown concurrency type \"{other}\"; expected \"connections\" or \"requests\""),
                    );
                    ConcurrencyKind::Connections
                }
            };
        }
        c.soft_limit = self.limit(&r.soft_limit, "concurrency.soft_limit", 20);
        c.hard_limit = self.limit(&r.hard_limit, "concurrency.hard_limit", 25);
        if c.soft_limit > c.hard_limit {
            let span = r
                .soft_limit
                .as_ref()
                .or(r.hard_limit.as_ref())
                .map_or_else(|| raw.span(), |s| s.span());
            self.error(
                &span,
                format!(
                    "concurrency.soft_limit ({}) must not exceed hard_limit ({})",
                    c.soft_limit, c.hard_limit
                ),
            );
        }
        c
    }

    fn port(
        &mut self,
        raw: &Spanned<RawPort>,
        ctx: &ServiceCtx<'_>,
        app_ports: &mut BTreeMap<u16, (usize, Range<usize>)>,
        ports: &mut BTreeMap<u16, PortUse>,
    ) -> Option<Port> {
        let r = raw.get_ref();
        let number = self.port_number(&r.port, "port");
        let handlers = self.handlers(r);

        let force_https = match &r.force_https {
            Some(f) if *f.get_ref() => {
                if let Some(h) = handlers {
                    if h.tls || !h.http || h.proxy_proto.is_some() {
                        self.error(
                            &f.span(),
                            format!(
                                "force_https is only allowed on a port whose handlers are exactly [\"http\"], but this port's handlers are {}",
                                stack_name(h)
                            ),
                        );
                    }
                }
                true
            }
            _ => false,
        };

        let port_span = r.port.span();
        let number = number?;
        if let Some((service, first)) = app_ports.get(&number) {
            let whom = if *service == ctx.index {
                "this service".to_owned()
            } else {
                format!("another service of app \"{}\"", ctx.app)
            };
            let msg = format!(
                "port {number} is already used by {whom} at {}; a port may appear once per app",
                self.at(first)
            );
            self.error(&port_span, msg);
        } else {
            app_ports.insert(number, (ctx.index, port_span.clone()));
        }

        if let Some(node) = ctx.ports.filter(|p| p.admin.listen.port() == number) {
            let bind = node.node.bind;
            let admin_ip = node.admin.listen.ip();
            if bind == admin_ip || bind.is_unspecified() || admin_ip.is_unspecified() {
                let where_set = node.admin_span.map_or_else(
                    || " (the default)".to_owned(),
                    |s| format!(" at {}", self.at(s)),
                );
                self.error(
                    &port_span,
                    format!(
                        "port {number} on {bind} clashes with admin.listen {}{where_set}; use another port or bind them to different addresses",
                        node.admin.listen
                    ),
                );
            }
        }

        let handlers = handlers?;
        match ports.get(&number) {
            Some(first) if first.app != ctx.app => {
                let raw_tcp = !handlers.tls && !handlers.http;
                if (first.tls, first.http) != (handlers.tls, handlers.http) {
                    let msg = format!(
                        "port {number} is {} here but {} in app \"{}\" at {}; apps sharing a port must agree on \"tls\" and \"http\" handlers",
                        kind_name(handlers.tls, handlers.http),
                        kind_name(first.tls, first.http),
                        first.app,
                        self.at(&first.span)
                    );
                    self.error(&port_span, msg);
                } else if raw_tcp {
                    let msg = format!(
                        "raw TCP port {number} already belongs to app \"{}\" at {}; a raw TCP port cannot be routed by name, so only one app may use it",
                        first.app,
                        self.at(&first.span)
                    );
                    self.error(&port_span, msg);
                }
            }
            Some(_) => {}
            None => {
                ports.insert(
                    number,
                    PortUse {
                        app: ctx.app.to_owned(),
                        tls: handlers.tls,
                        http: handlers.http,
                        span: port_span,
                    },
                );
            }
        }

        Some(Port {
            port: number,
            handlers,
            force_https,
        })
    }

    /// The handler stack of a port, with its proxy_proto_options; `None` if invalid.
    fn handlers(&mut self, r: &RawPort) -> Option<Handlers> {
        let mut seen: BTreeMap<&str, Range<usize>> = BTreeMap::new();
        let mut ok = true;
        for h in r.handlers.get_ref() {
            let name = h.get_ref().as_str();
            if !matches!(name, "tls" | "http" | "proxy_proto") {
                self.error(
                    &h.span(),
                    format!("unknown handler \"{name}\"; allowed handlers are \"tls\", \"http\" and \"proxy_proto\""),
                );
                ok = false;
            } else if let Some(first) = seen.get(name) {
                let msg = format!("handler \"{name}\" is already listed at {}", self.at(first));
                self.error(&h.span(), msg);
                ok = false;
            } else {
                seen.insert(name, h.span());
            }
        }
        let tls = seen.contains_key("tls");
        let http = seen.contains_key("http");
        let proxy_proto = seen.contains_key("proxy_proto");
        if ok && http && proxy_proto {
            let listed: Vec<String> = r
                .handlers
                .get_ref()
                .iter()
                .map(|h| format!("\"{}\"", h.get_ref()))
                .collect();
            self.error(
                &r.handlers.span(),
                format!(
                    "handlers [{}] are not a supported stack; allowed stacks are {ALLOWED_STACKS}",
                    listed.join(", ")
                ),
            );
            ok = false;
        }

        let mut version = ProxyProtoVersion::V1;
        if let Some(options) = &r.proxy_proto_options {
            if !proxy_proto {
                self.error(
                    &options.span(),
                    "proxy_proto_options is only allowed when handlers include \"proxy_proto\"",
                );
            }
            if let Some(v) = &options.get_ref().version {
                match v.get_ref().as_str() {
                    "v1" => version = ProxyProtoVersion::V1,
                    "v2" => version = ProxyProtoVersion::V2,
                    other => self.error(
                        &v.span(),
                        format!("unknown proxy_proto_options.version \"{other}\"; expected \"v1\" or \"v2\""),
                    ),
                }
            }
        }
        ok.then_some(Handlers {
            tls,
            http,
            proxy_proto: proxy_proto.then_some(version),
        })
    }

    /// interval, timeout and grace_period of a health check, with `timeout <= interval`.
    fn check_times(
        &mut self,
        check_span: &Range<usize>,
        kind: &str,
        defaults: (Duration, Duration, Duration),
        [interval, timeout, grace]: [&Option<Spanned<DurationText>>; 3],
    ) -> (Duration, Duration, Duration) {
        let i = self.duration(interval, &format!("{kind}.interval"), defaults.0, false);
        let t = self.duration(timeout, &format!("{kind}.timeout"), defaults.1, false);
        let g = self.duration(grace, &format!("{kind}.grace_period"), defaults.2, true);
        if t > i {
            let span = timeout
                .as_ref()
                .or(interval.as_ref())
                .map_or_else(|| check_span.clone(), |s| s.span());
            self.error(
                &span,
                format!(
                    "{kind}.timeout ({}) must not exceed interval ({})",
                    humantime::format_duration(t),
                    humantime::format_duration(i)
                ),
            );
        }
        (i, t, g)
    }

    fn machines(
        &mut self,
        raw: Vec<Spanned<RawMachine>>,
        apps: &[App],
        nodes: Nodes<'_>,
    ) -> Vec<Machine> {
        let app_names: BTreeSet<&str> = apps.iter().map(|a| a.name.as_str()).collect();
        let mut ids: BTreeMap<String, Range<usize>> = BTreeMap::new();
        let mut machines = Vec::new();
        for m in raw {
            let m = m.into_inner();
            let id = m.id.get_ref();
            if id.is_empty() {
                self.error(&m.id.span(), "machine id must not be empty");
            } else if let Some(first) = ids.get(id) {
                let msg = format!("machine id \"{id}\" is already used at {}", self.at(first));
                self.error(&m.id.span(), msg);
            } else {
                ids.insert(id.clone(), m.id.span());
            }
            let app = m.app.get_ref();
            if !app_names.contains(app.as_str()) {
                let defined = if app_names.is_empty() {
                    "no apps are defined".to_owned()
                } else {
                    let list: Vec<String> = app_names.iter().map(|a| format!("\"{a}\"")).collect();
                    format!("defined apps: {}", list.join(", "))
                };
                self.error(
                    &m.app.span(),
                    format!(
                        "machine \"{id}\" names app \"{app}\", which is not defined; {defined}"
                    ),
                );
            }
            if let Err(e) = values::check_slug("machine region", m.region.get_ref()) {
                self.error(&m.region.span(), e);
            }
            let node = self.machine_node(id, m.node.as_ref(), &m.id.span(), nodes);
            let ip = self.ip(&m.ip, "machine ip");
            let state = self.machine_state(m.state.as_ref());
            let driver = self.driver(id, &m);
            machines.push(Machine {
                id: m.id.into_inner(),
                app: m.app.into_inner(),
                region: m.region.into_inner(),
                node,
                ip,
                state,
                driver,
            });
        }
        machines
    }

    /// The state a machine is declared in: those an operator may ask for.
    fn machine_state(&mut self, raw: Option<&Spanned<String>>) -> MachineState {
        let Some(s) = raw else {
            return MachineState::Started;
        };
        match s.get_ref().as_str() {
            "created" => MachineState::Created,
            "started" => MachineState::Started,
            "stopped" => MachineState::Stopped,
            "suspended" => MachineState::Suspended,
            other => {
                self.error(
                    &s.span(),
                    format!("unknown machine state \"{other}\"; expected one of \"created\", \"started\", \"stopped\", \"suspended\" (the others are passing states that only Tern sets)"),
                );
                MachineState::Started
            }
        }
    }

    /// Who runs a machine, and for a process, how.
    fn driver(&mut self, id: &str, m: &RawMachine) -> Driver {
        let kind = m
            .driver
            .as_ref()
            .map_or("external", |d| d.get_ref().as_str());
        match kind {
            "external" => {
                for (key, span) in [
                    ("command", m.command.as_ref().map(Spanned::span)),
                    ("dir", m.dir.as_ref().map(Spanned::span)),
                    ("env", m.env.as_ref().map(Spanned::span)),
                ] {
                    if let Some(span) = span {
                        self.error(
                            &span,
                            format!("machine \"{id}\": {key} is only for driver = \"process\"; this machine is run by someone else (driver = \"external\")"),
                        );
                    }
                }
                Driver::External
            }
            "process" => {
                let command = m
                    .command
                    .as_ref()
                    .map(|c| c.get_ref().clone())
                    .unwrap_or_default();
                if command.first().is_none_or(|p| p.is_empty()) {
                    let span = m
                        .command
                        .as_ref()
                        .map(Spanned::span)
                        .or_else(|| m.driver.as_ref().map(Spanned::span))
                        .unwrap_or_default();
                    self.error(
                        &span,
                        format!("machine \"{id}\" has driver = \"process\" but no command; give the program and its arguments, e.g. command = [\"./server\", \"--port\", \"8080\"]"),
                    );
                }
                Driver::Process(ProcessSpec {
                    command,
                    dir: m.dir.as_ref().map(|d| d.get_ref().clone()),
                    env: m
                        .env
                        .as_ref()
                        .map(|e| e.get_ref().clone())
                        .unwrap_or_default(),
                })
            }
            other => {
                let span = m.driver.as_ref().map(Spanned::span).unwrap_or_default();
                self.error(
                    &span,
                    format!("unknown machine driver \"{other}\"; expected \"external\" (someone else runs it) or \"process\" (Tern runs it as a child process)"),
                );
                Driver::External
            }
        }
    }

    /// The node a machine runs on, by the rule of where it is described.
    fn machine_node(
        &mut self,
        id: &str,
        given: Option<&Spanned<String>>,
        id_span: &Range<usize>,
        nodes: Nodes<'_>,
    ) -> Option<String> {
        let Some(given) = given else {
            return match nodes {
                Nodes::Inline(me) => Some(me.to_owned()),
                Nodes::Optional => None,
                Nodes::Listed(_) => {
                    self.error(id_span, format!("machine \"{id}\" names no node; this catalog lists its nodes, so each machine says which one runs it (node = \"...\")"));
                    None
                }
                Nodes::Required => {
                    self.error(id_span, format!("machine \"{id}\" names no node; in etcd each machine says which node runs it (node = \"...\")"));
                    None
                }
            };
        };
        let name = given.get_ref();
        match nodes {
            Nodes::Inline(me) if name != me => self.error(
                &given.span(),
                format!("machine \"{id}\" runs on node \"{name}\", but this file describes node \"{me}\" alone; describe a fleet of several nodes in a catalog file ([catalog] file)"),
            ),
            Nodes::Listed(list) if !list.iter().any(|n| &n.id == name) => {
                let listed: Vec<String> = list.iter().map(|n| format!("\"{}\"", n.id)).collect();
                self.error(
                    &given.span(),
                    format!("machine \"{id}\" names node \"{name}\", which is not listed; listed nodes: {}", listed.join(", ")),
                );
            }
            _ => {
                if let Err(e) = values::check_slug("machine node", name) {
                    self.error(&given.span(), e);
                }
            }
        }
        Some(name.clone())
    }

    // ---- scalar helpers: report a problem and return a placeholder so validation goes on.

    fn parse_duration(
        &mut self,
        value: &Spanned<DurationText>,
        key: &str,
        allow_zero: bool,
    ) -> Option<Duration> {
        match values::duration(&value.get_ref().0) {
            Err(e) => {
                self.error(&value.span(), format!("{key}: {e}"));
                None
            }
            Ok(d) if d.is_zero() && !allow_zero => {
                self.error(&value.span(), format!("{key} must be greater than 0"));
                None
            }
            Ok(d) => Some(d),
        }
    }

    fn duration(
        &mut self,
        value: &Option<Spanned<DurationText>>,
        key: &str,
        default: Duration,
        allow_zero: bool,
    ) -> Duration {
        value
            .as_ref()
            .and_then(|v| self.parse_duration(v, key, allow_zero))
            .unwrap_or(default)
    }

    /// A size in bytes, at least `min`; `None` when unset or invalid.
    fn size(&mut self, value: &Option<Spanned<SizeValue>>, key: &str, min: u64) -> Option<u64> {
        let v = value.as_ref()?;
        let bytes = match v.get_ref() {
            SizeValue::Bytes(n) => {
                u64::try_from(*n).map_err(|_| format!("{key} must not be negative"))
            }
            SizeValue::Text(t) => values::size(t).map_err(|e| format!("{key}: {e}")),
        };
        match bytes {
            Err(e) => {
                self.error(&v.span(), e);
                None
            }
            Ok(n) if n < min => {
                self.error(&v.span(), format!("{key} must be at least {min} byte(s)"));
                None
            }
            Ok(n) => Some(n),
        }
    }

    /// An integer in `min..=max`, or `default` when unset or invalid.
    fn int(
        &mut self,
        value: &Option<Spanned<i64>>,
        key: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let Some(v) = value else {
            return default;
        };
        let n = *v.get_ref();
        match u64::try_from(n) {
            Ok(u) if (min..=max).contains(&u) => u,
            _ => {
                let msg = if max == u64::MAX {
                    format!("{key} must be at least {min}, got {n}")
                } else {
                    format!("{key} must be between {min} and {max}, got {n}")
                };
                self.error(&v.span(), msg);
                default
            }
        }
    }

    fn count(
        &mut self,
        value: &Option<Spanned<i64>>,
        key: &str,
        default: usize,
        min: usize,
    ) -> usize {
        let n = self.int(value, key, default as u64, min as u64, usize::MAX as u64);
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    fn limit(&mut self, value: &Option<Spanned<i64>>, key: &str, default: u32) -> u32 {
        let n = self.int(value, key, u64::from(default), 1, u64::from(u32::MAX));
        u32::try_from(n).unwrap_or(default)
    }

    fn port_number(&mut self, value: &Spanned<i64>, key: &str) -> Option<u16> {
        let n = *value.get_ref();
        match u16::try_from(n) {
            Ok(p) if p >= 1 => Some(p),
            _ => {
                self.error(
                    &value.span(),
                    format!("{key} {n} is out of range; expected 1..=65535"),
                );
                None
            }
        }
    }

    fn ip(&mut self, value: &Spanned<String>, key: &str) -> IpAddr {
        match value.get_ref().parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                self.error(
                    &value.span(),
                    format!(
                        "{key} \"{}\" is not an IP address; expected e.g. \"127.0.0.1\" or \"::1\"",
                        value.get_ref()
                    ),
                );
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            }
        }
    }
}

/// What a service's port check needs to know about its surroundings.
struct ServiceCtx<'a> {
    app: &'a str,
    index: usize,
    ports: Option<&'a PortCtx<'a>>,
}

/// The node's own listeners, which public ports must not clash with.
struct PortCtx<'a> {
    node: &'a Node,
    admin: &'a Admin,
    admin_span: Option<&'a Range<usize>>,
}

/// Who names a machine's node.
#[derive(Clone, Copy)]
enum Nodes<'a> {
    /// A configuration's own catalog: this node, the only one it describes.
    Inline(&'a str),
    /// A catalog file without `[[node]]`: whichever node reads it.
    Optional,
    /// A catalog file with `[[node]]`: one of these.
    Listed(&'a [FleetNode]),
    /// A catalog for etcd: every machine names its node.
    Required,
}

fn stack_name(h: Handlers) -> String {
    let mut names = Vec::new();
    if h.tls {
        names.push("\"tls\"");
    }
    if h.http {
        names.push("\"http\"");
    }
    if h.proxy_proto.is_some() {
        names.push("\"proxy_proto\"");
    }
    format!("[{}]", names.join(", "))
}

fn kind_name(tls: bool, http: bool) -> &'static str {
    match (tls, http) {
        (true, true) => "TLS+HTTP",
        (true, false) => "TLS (SNI-routed TCP)",
        (false, true) => "plain HTTP",
        (false, false) => "raw TCP",
    }
}
