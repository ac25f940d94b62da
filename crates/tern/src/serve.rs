//! Wiring a configuration into a running node: runtime, catalog, TLS, listeners,
//! health checks and admin, then a graceful drain on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use tern_admin::AdminState;
use tern_backhaul::{Backhaul, FleetTls};
use tern_catalog::{settings_from, Catalog, Fleet, RemoteStatus, SourceStatus};
use tern_challenges::{Challenges, OnDemand};
use tern_config::{CatalogSource, Config, Scheduler};
use tern_health::HealthChecker;
use tern_http::{Proxy, Upstreams};
use tern_machine::{AutostopSettings, Machines, ProcessDriver, Timing};

use crate::reload::{Reloadable, Reloader};
use crate::upgrade::{serve_upgrades, Handing, Inherited};
use std::os::fd::AsFd;
use tern_listen::{Acceptors, Ports, Shared};
use tern_tls::{CertStore, TlsAcceptor};
use tern_upgrade::Role;
use tokio::sync::{oneshot, watch};
use tokio_util::task::TaskTracker;

/// Where a started node listens, reported once everything is bound.
#[derive(Debug, Clone)]
pub struct Bound {
    pub admin: SocketAddr,
    pub ports: Vec<SocketAddr>,
    pub backhaul: Option<SocketAddr>,
}

/// Refuses a configuration whose TLS ports cannot be served, before anything starts.
pub fn check_certificates(config: &Config) -> anyhow::Result<Option<Arc<CertStore>>> {
    match &config.tls.certs_dir {
        Some(dir) => {
            let store = CertStore::load(dir, config.tls.unknown_sni.clone())
                .with_context(|| format!("loading certificates from {}", dir.display()))?;
            Ok(Some(store))
        }
        None if needs_tls(config) => {
            anyhow::bail!("a port has the tls handler but [tls] certs_dir is not set")
        }
        None => Ok(None),
    }
}

/// Whether the catalog of `config` has a port that terminates TLS.
pub fn needs_tls(config: &Config) -> bool {
    let fleet = Fleet::from_config(config);
    tern_listen::plan(&fleet.snapshot()).iter().any(|p| p.tls)
}

/// Test-only hooks (a spinning request, a blocked runtime), never for production.
fn test_hooks() -> bool {
    std::env::var("TERN_TEST_HOOKS").is_ok_and(|v| v == "1")
}

/// Exit status when the runtime watchdog finds the runtime stalled, so that a
/// supervisor can tell it from a crash and restart.
pub const EXIT_RUNTIME_STALLED: i32 = 70;

/// The runtime watchdog: a thread outside the runtime that pings it.
fn stall_watchdog(
    w: &tern_config::Watchdog,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<pollwatch::StallWatchdog> {
    let action = w.runtime_action;
    let config = pollwatch::StallConfig {
        interval: w.runtime_interval,
        deadline: w.runtime_deadline,
    };
    let dog = pollwatch::StallWatchdog::spawn(runtime, config, move |r| {
        tracing::error!(
            waited = ?r.waited,
            runtime = %r.runtime,
            "runtime stalled: a ping went unanswered; threads:\n{}",
            r.threads
        );
        tracing::error!(
            "stacks of the stalled process:\n{}",
            pollwatch::debugger_stacks()
        );
        if action == tern_config::RuntimeAction::Exit {
            eprintln!(
                "tern: runtime stalled for {:?}; exiting with status {EXIT_RUNTIME_STALLED}",
                r.waited
            );
            std::process::exit(EXIT_RUNTIME_STALLED);
        }
    })
    .context("starting the runtime watchdog")?;
    Ok(dog)
}

/// Who may use the admin listener. A token made at start is printed, since the
/// operator has no other way to learn it.
fn admin_access(admin: &tern_config::Admin) -> anyhow::Result<tern_admin::Access> {
    let access = tern_admin::Access::for_listener(admin.listen, admin.token.as_deref())?;
    if let (tern_admin::Access::Token(token), None) = (&access, &admin.token) {
        eprintln!(
            "tern: admin.listen {} is not loopback and sets no admin.token; this start's token is {token}\n\
             tern: the dashboard: http://{}/?token={token}",
            admin.listen, admin.listen
        );
    }
    Ok(access)
}

/// The spin watchdog as configured; `None` when disabled, so nothing is wrapped.
fn spin_watchdog(w: &tern_config::Watchdog) -> Option<pollwatch::Watchdog> {
    if !w.enabled {
        return None;
    }
    let action = match w.action {
        tern_config::SpinAction::Close => pollwatch::SpinAction::Close,
        tern_config::SpinAction::Log => pollwatch::SpinAction::Log,
        tern_config::SpinAction::Backoff => pollwatch::SpinAction::Backoff {
            initial: w.backoff_initial,
            max: w.backoff_max,
        },
    };
    Some(pollwatch::Watchdog::new(pollwatch::SpinConfig {
        polls: w.spin_polls,
        window: w.spin_window,
        action,
    }))
}

/// Runs the node until a signal, or until a successor takes over; `ready`
/// learns the bound addresses.
pub fn run(
    config: Config,
    start: Start,
    ready: Option<oneshot::Sender<Bound>>,
) -> anyhow::Result<()> {
    let runtime = build_runtime(&config.node)?;
    runtime.block_on(serve(config, start, ready, shutdown_signal()))
}

/// The main runtime: with one worker, tokio's current-thread scheduler, which
/// skips the work-stealing machinery that a single worker cannot use; likewise
/// per core, where it runs only what is not a client's connection (the
/// workers run those); otherwise the multi-thread scheduler with `workers`
/// threads.
pub fn build_runtime(node: &tern_config::Node) -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = node.workers;
    let mut builder = if workers <= 1 || node.scheduler == Scheduler::PerCore {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .thread_name("tern-worker")
        .build()
        .context("starting the runtime")
}

/// The threads that run client connections, and so pool upstream connections:
/// each gets a shard of the idle pools, and a shard holds its share of their
/// limit. One worker runs everything on the main thread; work stealing runs
/// connections on its workers only; per core, the main thread also serves the
/// backhaul.
fn pooling_threads(node: &tern_config::Node) -> usize {
    match node.scheduler {
        Scheduler::PerCore => node.workers + 1,
        Scheduler::WorkStealing => node.workers.max(1),
    }
}

/// The ACME hostnames that cannot get a certificate, as `/healthz` lines.
struct AcmeHealth(Arc<tern_acme::Status>);

impl tern_admin::CertificateHealth for AcmeHealth {
    fn health_lines(&self) -> Vec<String> {
        self.0.health_lines()
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
}

/// How a node starts: where its configuration came from (for reloads), and
/// whether it takes over from a running Tern (`tern run --upgrade`).
#[derive(Debug, Default)]
pub struct Start {
    pub file: Option<PathBuf>,
    pub upgrade: bool,
}

pub async fn serve(
    config: Config,
    start: Start,
    ready: Option<oneshot::Sender<Bound>>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = tern_admin::install_recorder()?;
    let started = std::time::Instant::now();
    let stall = stall_watchdog(&config.watchdog, tokio::runtime::Handle::current())?;
    let (workers, acceptors, worker_stalls) = start_workers(&config)?;
    let runtimes = std::iter::once(&stall)
        .chain(&worker_stalls)
        .map(pollwatch::StallWatchdog::state)
        .collect();
    let access = admin_access(&config.admin)?;
    let mut inherited =
        Inherited::take(config.node.upgrade_socket.as_deref(), start.upgrade).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (fleet, source) = start_catalog(&config, &shutdown_rx).await;
    let catalog: Arc<dyn Catalog> = Arc::clone(&fleet) as Arc<dyn Catalog>;
    let watchdog = spin_watchdog(&config.watchdog);
    let (backhaul, fleet_tls) = start_backhaul(&config, &catalog, watchdog.clone())?;
    let tracker = TaskTracker::new();
    let overload = start_overload(&config, &shutdown_rx)?;
    let machines = start_machines(&config, &fleet)?;
    let (shared, reloadable) = shared(
        &config,
        &catalog,
        backhaul,
        watchdog.clone(),
        tracker.clone(),
        overload,
        Arc::clone(&machines.manager),
    )?;
    let (listening, handing) = listen(
        &config,
        &shared,
        acceptors,
        &mut inherited,
        fleet_tls.as_ref(),
        &shutdown_rx,
    )
    .await?;
    let certificates = reloadable
        .acme
        .clone()
        .map(|s| Arc::new(AcmeHealth(s)) as Arc<dyn tern_admin::CertificateHealth>);
    let reloader = Arc::new(Reloader::new(
        start.file,
        config.clone(),
        fleet,
        reloadable,
        test_hooks(),
    ));
    let on_hup = tokio::spawn(crate::reload::on_sighup(Arc::clone(&reloader)));
    let admin_state = Arc::new(AdminState {
        catalog: Arc::clone(&catalog),
        source,
        metrics,
        watchdog: watchdog.clone(),
        busy: Default::default(),
        test_hooks: test_hooks(),
        reload: Some(reloader),
        machines: Some(Arc::new(crate::machine_admin::AdminMachines(Arc::clone(
            &machines.manager,
        )))),
        certificates,
        access,
        runtimes,
        started,
    });
    tokio::spawn(tern_admin::serve(
        listening.admin,
        admin_state,
        shutdown_rx.clone(),
    ));
    let mut health_stop = shutdown_rx.clone();
    let checks = HealthChecker::new(Arc::clone(&catalog)).with_watchdog(watchdog);
    let health = tokio::spawn(checks.run(async move {
        let _ = health_stop.wait_for(|s| *s).await;
    }));

    let bound = listening.bound;
    tracing::info!(
        node = %config.node.id,
        region = %config.node.region,
        admin = %bound.admin,
        ports = ?bound.ports,
        backhaul = ?bound.backhaul,
        "tern is serving"
    );
    inherited.serving().await;
    let handed_over = hand_over_when_asked(&config, handing, &shared);
    if let Some(ready) = ready {
        let _ = ready.send(bound);
    }
    let handover = tokio::select! {
        () = stop => None,
        h = handed_over => Some(h),
    };
    let _ = shutdown_tx.send(true);
    on_hup.abort();
    // Nothing is accepted once the drain has begun: a connection accepted after
    // the tracker emptied would be cut when the workers stop. A successor
    // learns that this process has stopped accepting only then.
    let _ = listening.ports_closed.await;
    if let Some(handover) = handover {
        crate::upgrade::released(handover);
    }
    drain(&tracker, config.limits.drain_timeout).await;
    health.abort();
    // The machines stop after the drain: its requests were still on them.
    machines.stop().await;
    // The workers last: what a request started on one (a machine's start) ran there.
    if let Some(workers) = workers {
        workers.stop().await;
    }
    Ok(())
}

/// Per core, the workers (each watched by a runtime watchdog of its own) and
/// accept loops on each; with work stealing, none, and accept loops on the
/// main runtime.
fn start_workers(
    config: &Config,
) -> anyhow::Result<(
    Option<crate::per_core::Workers>,
    Acceptors,
    Vec<pollwatch::StallWatchdog>,
)> {
    if config.node.scheduler == Scheduler::WorkStealing {
        return Ok((None, Acceptors::Shared, Vec::new()));
    }
    let workers = crate::per_core::Workers::start(config.node.workers)?;
    let handles = workers.handles();
    let stalls = handles
        .iter()
        .map(|h| stall_watchdog(&config.watchdog, h.clone()))
        .collect::<anyhow::Result<_>>()?;
    Ok((Some(workers), Acceptors::PerCore(handles), stalls))
}

/// The lifecycle manager of this node's machines, following the catalog, and
/// the way to stop them all.
struct Lifecycle {
    manager: Arc<Machines>,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl Lifecycle {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.done.await;
    }
}

fn start_machines(config: &Config, fleet: &Arc<Fleet>) -> anyhow::Result<Lifecycle> {
    let driver = ProcessDriver::new().context("starting the machine driver")?;
    let timing = Timing {
        start_timeout: config.lifecycle.start_timeout,
        stop_timeout: config.lifecycle.stop_timeout,
        drain_timeout: config.limits.drain_timeout,
    };
    let autostop = AutostopSettings {
        interval: config.lifecycle.autostop_interval,
        idle_timeout: config.lifecycle.idle_timeout,
    };
    let manager = Machines::new(Arc::clone(fleet), Arc::new(driver), timing, autostop);
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(Arc::clone(&manager).run(async move {
        let _ = stopped.await;
    }));
    Ok(Lifecycle {
        manager,
        stop,
        done,
    })
}

/// The overload manager, its memory sampler running until shutdown.
fn start_overload(
    config: &Config,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Arc<tern_overload::Overload>> {
    let overload = tern_overload::Overload::new(tern_overload::Budgets {
        max_connections: config.overload.max_connections,
        max_memory: config.overload.max_memory,
    })?;
    let mut stop = shutdown.clone();
    tokio::spawn(Arc::clone(&overload).watch_memory(async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    Ok(overload)
}

/// The listeners a node serves on, bound (or inherited) and accepting.
struct Listening {
    admin: tokio::net::TcpListener,
    bound: Bound,
    /// Ends once shutdown has closed every public port's accept loops.
    ports_closed: tokio::task::JoinHandle<()>,
}

/// Binds everything the catalog asks for before serving anything (a port in
/// use is a startup error, unless per core another per-core Tern holds it:
/// `SO_REUSEPORT` lets them share; ports that apps ask for later are opened as
/// they come), or takes the sockets inherited from the Tern this one replaces. Also
/// returns what this process would hand to its own successor.
async fn listen(
    config: &Config,
    shared: &Arc<Shared>,
    acceptors: Acceptors,
    inherited: &mut Inherited,
    fleet_tls: Option<&FleetTls>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<(Listening, Handing)> {
    let mut ports = Ports::new(config.node.bind, Arc::clone(shared), acceptors);
    ports.inherit(inherited.public());
    let snapshot = shared.catalog.snapshot();
    if let Some(e) = ports.reconcile(&snapshot).await.into_iter().next() {
        return Err(e.into());
    }
    let admin = inherited
        .listener(Role::Admin, config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on the admin address {}", config.admin.listen))?;
    let mut bound = Bound {
        admin: admin.local_addr()?,
        ports: ports.addrs(),
        backhaul: None,
    };
    let mut handing = Handing {
        ports: ports.sockets(),
        admin: admin.as_fd().try_clone_to_owned()?,
        backhaul: None,
    };
    let ports_closed = ports.follow(Arc::clone(&shared.catalog), shutdown.clone());
    if let (Some(b), Some(tls)) = (&config.backhaul, fleet_tls) {
        let listener = inherited
            .listener(Role::Backhaul, b.listen)
            .await
            .map_err(|source| tern_listen::ListenError::Bind {
                addr: b.listen,
                source,
            })?;
        bound.backhaul = Some(listener.local_addr()?);
        handing.backhaul = Some(listener.as_fd().try_clone_to_owned()?);
        let acceptor = tern_backhaul::BackhaulAcceptor::new(
            Arc::clone(&tls.server),
            config.tls.handshake_timeout,
        );
        let run =
            tern_listen::run_backhaul(listener, acceptor, Arc::clone(shared), shutdown.clone());
        tokio::spawn(run);
    }
    Ok((
        Listening {
            admin,
            bound,
            ports_closed,
        },
        handing,
    ))
}

/// Completes once a successor has taken this node's sockets (never without
/// `[node] upgrade_socket`, or when that socket cannot be served).
async fn hand_over_when_asked(
    config: &Config,
    handing: Handing,
    shared: &Arc<Shared>,
) -> tern_upgrade::Handover {
    let Some(path) = config.node.upgrade_socket.clone() else {
        return std::future::pending().await;
    };
    let proxy = Arc::clone(&shared.proxy);
    match serve_upgrades(path, handing, proxy).await {
        Ok(handover) => handover,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the upgrade socket: upgrades are off");
            std::future::pending().await
        }
    }
}

/// Waits for the connections to finish, up to the drain deadline.
async fn drain(tracker: &TaskTracker, within: std::time::Duration) {
    tracker.close();
    match tokio::time::timeout(within, tracker.wait()).await {
        Ok(()) => tracing::info!("drained; exiting"),
        Err(_) => tracing::warn!(
            left = tracker.len(),
            "drain deadline passed; closing the remaining connections"
        ),
    }
}

/// The catalog: the configuration's own fleet, or etcd's, which a session keeps
/// in step from then on. With etcd, this waits (bounded) for the first read, so
/// that the ports its apps use are opened at once.
async fn start_catalog(
    config: &Config,
    shutdown: &watch::Receiver<bool>,
) -> (Arc<Fleet>, Option<Arc<dyn SourceStatus>>) {
    let CatalogSource::Etcd(e) = &config.catalog else {
        return (Arc::new(Fleet::from_config(config)), None);
    };
    let fleet = Arc::new(Fleet::new(settings_from(config, RemoteStatus::Published)));
    let settings = tern_etcd::EtcdSettings {
        endpoints: e.endpoints.clone(),
        prefix: e.prefix.clone(),
        lease_ttl: e.lease_ttl,
        dial_timeout: e.dial_timeout,
    };
    let source = tern_etcd::EtcdSource::new(Arc::clone(&fleet), settings);
    let report = source.report();
    tokio::spawn(source.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + e.dial_timeout * 2;
    while !report.in_step() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if !report.in_step() {
        tracing::warn!(endpoints = ?e.endpoints, "etcd not reachable yet: serving with an empty catalog until it is");
    }
    (fleet, Some(report))
}

/// The backhaul's client side, following the catalog's nodes, and the fleet TLS
/// its listener needs too.
fn start_backhaul(
    config: &Config,
    catalog: &Arc<dyn Catalog>,
    watchdog: Option<pollwatch::Watchdog>,
) -> anyhow::Result<(Option<Arc<Backhaul>>, Option<FleetTls>)> {
    let Some(b) = &config.backhaul else {
        return Ok((None, None));
    };
    let tls =
        FleetTls::load(&b.ca, &b.cert, &b.key).context("loading the backhaul's certificates")?;
    let settings = tern_backhaul::Settings::new(
        tls.clone(),
        config.limits.connect_timeout,
        b.ping_interval,
        watchdog,
    );
    let backhaul = Backhaul::new(settings);
    backhaul.follow(Arc::clone(catalog));
    Ok((Some(backhaul), Some(tls)))
}

/// What every listener shares: the proxy, TLS, limits, the task tracker.
fn shared(
    config: &Config,
    catalog: &Arc<dyn Catalog>,
    backhaul: Option<Arc<Backhaul>>,
    watchdog: Option<pollwatch::Watchdog>,
    tracker: TaskTracker,
    overload: Arc<tern_overload::Overload>,
    machines: Arc<Machines>,
) -> anyhow::Result<(Arc<Shared>, Reloadable)> {
    let answering = config.acme.as_ref().map(|acme| tern_acme::Answering {
        challenges: Challenges::new(),
        on_demand: acme.on_demand.map(|wait| Arc::new(OnDemand::new(wait))),
    });
    let (certs, http_tls, raw_tls) = tls_acceptors(config, answering.as_ref())?;
    let challenges = answering.as_ref().map(|a| Arc::clone(&a.challenges));
    let acme = match (&config.acme, &certs, answering) {
        (Some(acme), Some(store), Some(answering)) => Some(tern_acme::spawn(
            acme.clone(),
            Arc::clone(store),
            answering,
            Arc::clone(catalog),
            acme_fleet(config)?,
        )),
        _ => None,
    };
    let limits = &config.limits;
    let upstreams = Arc::new(Upstreams::new(
        limits.connect_timeout,
        limits.idle_timeout,
        watchdog.clone(),
        pooling_threads(&config.node),
    ));
    upstreams.spawn_sweeper();
    let proxy = Arc::new(
        Proxy::new(
            Arc::clone(catalog),
            Arc::clone(&upstreams),
            backhaul.clone(),
            crate::limits::proxy_settings(config, test_hooks()),
            watchdog.clone(),
            tracker.clone(),
        )
        .with_overload(Arc::clone(&overload))
        .with_autostart(machines)
        .with_acme_challenges(challenges),
    );
    let shared = Arc::new(Shared {
        catalog: Arc::clone(catalog),
        proxy,
        backhaul,
        limits: ArcSwap::new(crate::limits::conn_limits(config)),
        http_tls,
        raw_tls,
        max_connections: limits.max_connections_per_listener,
        tracker,
        watchdog,
        overload,
        yield_every_polls: config.node.yield_every_polls,
    });
    Ok((
        shared.clone(),
        Reloadable {
            shared,
            upstreams,
            certs,
            acme,
        },
    ))
}

/// Where the nodes of an etcd catalog share ACME, with the fleet key read.
fn acme_fleet(config: &Config) -> anyhow::Result<Option<tern_acme::FleetShare>> {
    let (Some(acme), CatalogSource::Etcd(e)) = (&config.acme, &config.catalog) else {
        return Ok(None);
    };
    let Some(path) = &acme.fleet_key else {
        // The config refuses [acme] on an etcd catalog without a fleet key.
        anyhow::bail!("[acme] on an etcd catalog needs acme.fleet_key");
    };
    Ok(Some(tern_acme::FleetShare {
        endpoints: e.endpoints.clone(),
        prefix: e.prefix.clone(),
        timeout: e.dial_timeout,
        node: config.node.id.clone(),
        key: Arc::new(tern_acme::FleetKey::load(path)?),
    }))
}

/// The TLS acceptors of HTTP and of raw TCP ports, and their certificates, when
/// certificates are set.
type TlsAcceptors = (
    Option<Arc<CertStore>>,
    Option<TlsAcceptor>,
    Option<TlsAcceptor>,
);

/// The certificate store and the TLS acceptors of HTTP and raw-TCP ports; with
/// ACME, both answer TLS-ALPN-01 validations, and ask for certificates on demand.
fn tls_acceptors(
    config: &Config,
    acme: Option<&tern_acme::Answering>,
) -> anyhow::Result<TlsAcceptors> {
    let Some(store) = check_certificates(config)? else {
        return Ok((None, None, None));
    };
    tern_tls::spawn_reloader(Arc::clone(&store), config.tls.reload_interval);
    let acceptor = |alpn| {
        TlsAcceptor::new(
            tern_tls::server_configs(Arc::clone(&store), alpn),
            config.tls.handshake_timeout,
        )
        .with_acme_challenges(acme.map(|a| Arc::clone(&a.challenges)))
        .with_on_demand(acme.and_then(|a| a.on_demand.clone()))
    };
    let http = acceptor(tern_tls::http_alpn());
    let raw = acceptor(Vec::new());
    Ok((Some(store), Some(http), Some(raw)))
}
