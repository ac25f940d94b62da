//! What every phase of a request reads: the proxy's shared parts and settings, and
//! the connection the request arrived on. The phases (`route`, `rewrite`,
//! `connect`, `send`, `respond`, `tunnel`) are `impl Proxy` blocks of their own
//! modules; this one depends on none of them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::HeaderValue;
use tern_backhaul::Backhaul;
use tern_catalog::{AppEntry, Autostart, Catalog, MachineEntry};
use tern_overload::Overload;
use tokio_util::task::TaskTracker;

use crate::activity::Activity;
use crate::binding::ConnBindings;
use crate::headers::ConnValues;
use crate::live_settings::{LiveSettings, ProxySettings};
use crate::noted::Noted;
use crate::request_metrics::RequestMetrics;
use crate::upstream::Upstreams;

/// The connection a request arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The public port the client connected to.
    pub port: u16,
    pub tls: bool,
    pub sni: Option<String>,
    /// For a backhaul connection: the node at the other end, as its certificate
    /// (signed by the fleet CA) names it. Only such a connection's requests may
    /// name a machine, and their `Tern-*` fields are kept.
    pub from_node: Option<String>,
    /// Machines this connection is bound to, for services counting connections.
    pub bindings: ConnBindings,
    /// The connection's spin-watchdog probe, told the app and machine it serves.
    pub probe: Option<pollwatch::Probe>,
    /// Forwarding header values, made once per connection.
    pub(crate) values: ConnValues,
    /// What the probe was last told, so an unchanged app or machine is not re-noted.
    noted_app: Noted<AppEntry>,
    noted_machine: Noted<MachineEntry>,
    /// The server's view of the connection, told when a request body was read to
    /// its end (a connection is parked only then).
    pub(crate) activity: Option<Arc<Activity>>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, port: u16, tls: bool, sni: Option<String>) -> Self {
        ConnInfo {
            peer,
            port,
            tls,
            sni,
            from_node: None,
            bindings: ConnBindings::default(),
            probe: None,
            values: ConnValues::new(peer, port),
            noted_app: Noted::default(),
            noted_machine: Noted::default(),
            activity: None,
        }
    }

    /// Whether the connection carries many requests at once (HTTP/2).
    pub(crate) fn is_multiplexed(&self) -> bool {
        self.activity.as_ref().is_some_and(|a| a.is_multiplexed())
    }

    /// Tells the probe the app, if it changed.
    pub(crate) fn note_app(&self, app: &Arc<AppEntry>) {
        if let Some(p) = &self.probe {
            if self.noted_app.changed(app) {
                p.note("app", &app.name);
            }
        }
    }

    /// Tells the probe the machine, if it changed.
    pub(crate) fn note_machine(&self, machine: &Arc<MachineEntry>) {
        if let Some(p) = &self.probe {
            if self.noted_machine.changed(machine) {
                p.note("machine", &machine.def.id);
            }
        }
    }
}

/// The HTTP proxy: shared by every connection of every HTTP listener.
pub struct Proxy {
    pub(crate) catalog: Arc<dyn Catalog>,
    pub(crate) upstreams: Arc<Upstreams>,
    /// Other nodes' machines are reached through it; `None` on a node alone.
    pub(crate) backhaul: Option<Arc<Backhaul>>,
    /// Changed by a configuration reload.
    pub(crate) settings: LiveSettings,
    /// Test-only: `/__tern_test/spin` (see `ProxySettings::test_hooks`).
    pub(crate) test_hooks: bool,
    /// `settings.region` as a header value, or `None` if it cannot be one.
    pub(crate) region: Option<HeaderValue>,
    pub(crate) metrics: RequestMetrics,
    /// Tunnels (upgrades, CONNECT) run under it, in tasks of their own.
    pub(crate) watchdog: Option<pollwatch::Watchdog>,
    /// Those tasks, for the drain to wait for.
    pub(crate) tasks: TaskTracker,
    /// Past its memory budget, new requests are shed.
    pub(crate) overload: Arc<Overload>,
    /// Set when this process hands its sockets to a new one (an upgrade).
    pub(crate) handover_drain: AtomicBool,
    /// Starts this node's machines on demand; `None` when it runs none.
    pub(crate) autostart: Option<Arc<dyn Autostart>>,
    /// HTTP-01 answers, for a node that orders certificates by ACME.
    pub(crate) acme_challenges: Option<Arc<tern_challenges::Challenges>>,
}

impl Proxy {
    pub fn new(
        catalog: Arc<dyn Catalog>,
        upstreams: Arc<Upstreams>,
        backhaul: Option<Arc<Backhaul>>,
        settings: ProxySettings,
        watchdog: Option<pollwatch::Watchdog>,
        tasks: TaskTracker,
    ) -> Self {
        Proxy {
            catalog,
            upstreams,
            backhaul,
            region: HeaderValue::from_str(&settings.region).ok(),
            settings: LiveSettings::new(&settings),
            test_hooks: settings.test_hooks,
            metrics: RequestMetrics::default(),
            watchdog,
            tasks,
            overload: Overload::unlimited(),
            handover_drain: AtomicBool::new(false),
            autostart: None,
            acme_challenges: None,
        }
    }

    /// What starts this node's machines on demand, for raw TCP to use as well.
    pub fn autostart(&self) -> Option<&Arc<dyn Autostart>> {
        self.autostart.as_ref()
    }

    /// Starts machines on demand through `autostart` (the wake phase).
    pub fn with_autostart(mut self, autostart: Arc<dyn Autostart>) -> Self {
        self.autostart = Some(autostart);
        self
    }

    /// New settings (a configuration reload), for what reads them from now on.
    /// The region and the test hooks belong to the process and stay.
    pub fn reconfigure(&self, settings: &ProxySettings) {
        self.settings.store(settings);
    }

    /// Marks the coming drain as an upgrade's hand-over: no client may see a
    /// connection close under a request it is sending, so HTTP/1.1 responses
    /// carry `Connection: close` from now on and idle HTTP/1.1 connections wait
    /// for their next request (up to the drain deadline) rather than closing.
    /// Call it before the shutdown signal.
    pub fn begin_handover_drain(&self) {
        self.handover_drain.store(true, Ordering::Release);
    }

    /// Answers ACME HTTP-01 validations from `challenges`, if any (the
    /// challenge phase).
    pub fn with_acme_challenges(
        mut self,
        challenges: Option<Arc<tern_challenges::Challenges>>,
    ) -> Self {
        self.acme_challenges = challenges;
        self
    }

    /// Sheds new requests while `overload` is past its memory budget.
    pub fn with_overload(mut self, overload: Arc<Overload>) -> Self {
        self.overload = overload;
        self
    }
}
