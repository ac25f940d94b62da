//! End-to-end: a checker over a file-fed Fleet, probing real sockets on 127.0.0.1.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tern_catalog::{Catalog, Definitions, Fleet, ServiceSlot};
use tern_config::{
    App, AutoStop, Concurrency, ConcurrencyKind, Config, Driver, HttpCheck, Machine, MachineState,
    Service, TcpCheck,
};
use tern_health::HealthChecker;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const INTERVAL: Duration = Duration::from_millis(50);

// ---- fleet -------------------------------------------------------------------

fn config(apps: Vec<App>, machines: Vec<Machine>) -> Config {
    // Defaults come from the real parser; the fleet is built in code.
    let mut c = tern_config::parse(
        "[node]\nid = \"test-1\"\nregion = \"ams\"\nworkers = 1\nbind = \"127.0.0.1\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        std::path::Path::new("test.toml"),
    )
    .expect("minimal config parses");
    c.apps = apps;
    c.machines = machines;
    c
}

fn app(port: u16, tcp_checks: Vec<TcpCheck>, http_checks: Vec<HttpCheck>) -> App {
    App {
        name: "demo".into(),
        hostnames: vec!["*.demo.localhost".into(), "demo.localhost".into()],
        max_request_body: None,
        acme_hostnames: Vec::new(),
        services: vec![Service {
            internal_port: port,
            h2_backend: false,
            concurrency: Concurrency {
                kind: ConcurrencyKind::Requests,
                soft_limit: 20,
                hard_limit: 25,
            },
            ports: Vec::new(),
            tcp_checks,
            http_checks,
            autostart: true,
            autostop: AutoStop::Off,
            min_machines_running: 0,
        }],
    }
}

fn machine(id: &str) -> Machine {
    Machine {
        id: id.into(),
        app: "demo".into(),
        region: "ams".into(),
        node: None,
        ip: LOCALHOST,
        state: MachineState::Started,
        driver: Driver::External,
    }
}

fn tcp_check() -> TcpCheck {
    TcpCheck {
        interval: INTERVAL,
        timeout: Duration::from_millis(500),
        grace_period: Duration::ZERO,
    }
}

fn http_check(grace_period: Duration) -> HttpCheck {
    HttpCheck {
        interval: INTERVAL,
        timeout: Duration::from_millis(500),
        grace_period,
        path: "/healthz".into(),
        method: "GET".into(),
    }
}

fn slot(catalog: &Fleet, machine: &str, port: u16) -> Arc<ServiceSlot> {
    let snap = catalog.snapshot();
    let m = snap.machines.get(machine).expect("machine in snapshot");
    Arc::clone(m.live.slot(port).expect("slot for port"))
}

/// Starts a checker that stops (and aborts its tasks) when the test drops the guard.
struct Checker {
    _stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

fn start(catalog: &Arc<Fleet>) -> Checker {
    let (stop, mut rx) = watch::channel(false);
    let shutdown = async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let catalog: Arc<dyn Catalog> = Arc::clone(catalog) as Arc<dyn Catalog>;
    Checker {
        _stop: stop,
        handle: HealthChecker::spawn(catalog, shutdown),
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Asserts `cond` holds throughout `span`.
async fn always(what: &str, span: Duration, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + span;
    while tokio::time::Instant::now() < end {
        assert!(cond(), "did not hold: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---- backends ----------------------------------------------------------------

/// An HTTP backend whose answer flips between 200 and 500, counting requests and
/// keeping the last request's Host and User-Agent.
struct HttpBackend {
    port: u16,
    ok: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    last_headers: Arc<Mutex<Option<(String, String)>>>,
    _task: AbortOnDrop,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn http_backend() -> HttpBackend {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let ok = Arc::new(AtomicBool::new(true));
    let requests = Arc::new(AtomicUsize::new(0));
    let last_headers = Arc::new(Mutex::new(None));
    let (ok2, requests2, last2) = (ok.clone(), requests.clone(), last_headers.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (ok, requests, last) = (ok2.clone(), requests2.clone(), last2.clone());
            let svc = service_fn(move |req: Request<Incoming>| {
                requests.fetch_add(1, Ordering::SeqCst);
                let header = |name| {
                    req.headers()
                        .get(name)
                        .and_then(|v: &http::HeaderValue| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                *last.lock().unwrap() = Some((header("host"), header("user-agent")));
                let status = if ok.load(Ordering::SeqCst) {
                    StatusCode::OK
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .body(Empty::<Bytes>::new())
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    HttpBackend {
        port,
        ok,
        requests,
        last_headers,
        _task: AbortOnDrop(task),
    }
}

/// Accepts and drops connections on `listener` until aborted.
fn tcp_backend(listener: TcpListener) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    }))
}

fn with_timeout<F: Future>(f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(Duration::from_secs(10), f)
}

// ---- tests -------------------------------------------------------------------

#[tokio::test]
async fn http_check_takes_machine_out_and_back() {
    let backend = http_backend().await;
    let cfg = config(
        vec![app(backend.port, vec![], vec![http_check(Duration::ZERO)])],
        vec![machine("m1")],
    );
    let catalog = Arc::new(Fleet::from_config(&cfg));
    let slot = slot(&catalog, "m1", backend.port);
    let _checker = start(&catalog);

    let requests = &backend.requests;
    eventually("first check", || requests.load(Ordering::SeqCst) >= 2).await;
    assert!(slot.healthy());
    let (host, agent) = backend.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(host, "demo.localhost", "first non-wildcard hostname");
    assert_eq!(agent, "tern-health");

    backend.ok.store(false, Ordering::SeqCst);
    eventually("unhealthy on 500", || !slot.healthy()).await;

    backend.ok.store(true, Ordering::SeqCst);
    eventually("healthy again on 200", || slot.healthy()).await;
}

#[tokio::test]
async fn tcp_check_follows_the_listener() {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = tcp_backend(listener);
    let cfg = config(
        vec![app(port, vec![tcp_check()], vec![])],
        vec![machine("m1")],
    );
    let catalog = Arc::new(Fleet::from_config(&cfg));
    let slot = slot(&catalog, "m1", port);
    let _checker = start(&catalog);

    always("healthy while listening", INTERVAL * 4, || slot.healthy()).await;

    drop(backend);
    eventually("unhealthy when refused", || !slot.healthy()).await;

    let listener = with_timeout(TcpListener::bind((LOCALHOST, port)))
        .await
        .unwrap()
        .unwrap();
    let _backend = tcp_backend(listener);
    eventually("healthy after rebind", || slot.healthy()).await;
}

#[tokio::test]
async fn all_checks_must_pass() {
    // The tcp check passes throughout; the http check alone takes the machine out.
    let backend = http_backend().await;
    let cfg = config(
        vec![app(
            backend.port,
            vec![tcp_check()],
            vec![http_check(Duration::ZERO)],
        )],
        vec![machine("m1")],
    );
    let catalog = Arc::new(Fleet::from_config(&cfg));
    let slot = slot(&catalog, "m1", backend.port);
    let _checker = start(&catalog);

    backend.ok.store(false, Ordering::SeqCst);
    eventually("unhealthy on 500", || !slot.healthy()).await;
    always("stays out while http fails", INTERVAL * 4, || {
        !slot.healthy()
    })
    .await;
    backend.ok.store(true, Ordering::SeqCst);
    eventually("healthy again", || slot.healthy()).await;
}

#[tokio::test]
async fn nothing_runs_during_grace_period() {
    let backend = http_backend().await;
    let grace = Duration::from_millis(400);
    let cfg = config(
        vec![app(backend.port, vec![], vec![http_check(grace)])],
        vec![machine("m1")],
    );
    let catalog = Arc::new(Fleet::from_config(&cfg));
    let started = tokio::time::Instant::now();
    let _checker = start(&catalog);

    let requests = &backend.requests;
    always(
        "no request in grace period",
        grace - Duration::from_millis(100),
        || requests.load(Ordering::SeqCst) == 0,
    )
    .await;
    eventually("checks after grace period", || {
        requests.load(Ordering::SeqCst) > 0
    })
    .await;
    assert!(started.elapsed() >= grace);
}

#[tokio::test]
async fn removed_machine_is_no_longer_checked() {
    let backend = http_backend().await;
    let with = config(
        vec![app(backend.port, vec![], vec![http_check(Duration::ZERO)])],
        vec![machine("m1")],
    );
    let catalog = Arc::new(Fleet::from_config(&with));
    let _checker = start(&catalog);

    let requests = &backend.requests;
    eventually("checks running", || requests.load(Ordering::SeqCst) >= 2).await;

    let without = config(with.apps.clone(), vec![]);
    catalog.replace(Definitions::from_config(&without));
    // Let an in-flight probe finish or be cut, then expect silence.
    tokio::time::sleep(INTERVAL * 2).await;
    let seen = requests.load(Ordering::SeqCst);
    always("no more checks", INTERVAL * 6, || {
        requests.load(Ordering::SeqCst) == seen
    })
    .await;
}

#[tokio::test]
async fn stopped_machine_is_not_checked_and_released() {
    let backend = http_backend().await;
    let cfg = config(
        vec![app(backend.port, vec![], vec![http_check(Duration::ZERO)])],
        vec![machine("m1")],
    );
    let catalog = Arc::new(Fleet::from_config(&cfg));
    let slot = slot(&catalog, "m1", backend.port);
    let _checker = start(&catalog);

    backend.ok.store(false, Ordering::SeqCst);
    eventually("unhealthy on 500", || !slot.healthy()).await;

    catalog
        .set_state("m1", tern_catalog::model::MachineState::Stopped)
        .unwrap();
    // With no checks left nothing holds the slot out: it is back to the optimistic
    // default for when the machine starts again.
    eventually("released when stopped", || slot.healthy()).await;
    tokio::time::sleep(INTERVAL * 2).await;
    let requests = &backend.requests;
    let seen = requests.load(Ordering::SeqCst);
    always("no more checks", INTERVAL * 6, || {
        requests.load(Ordering::SeqCst) == seen
    })
    .await;
}

#[tokio::test]
async fn unchanged_checks_survive_a_swap() {
    let backend = http_backend().await;
    let grace = Duration::from_millis(300);
    let cfg = config(
        vec![app(backend.port, vec![], vec![http_check(grace)])],
        vec![machine("m1")],
    );
    let catalog = Arc::new(Fleet::from_config(&cfg));
    let slot = slot(&catalog, "m1", backend.port);
    let _checker = start(&catalog);

    backend.ok.store(false, Ordering::SeqCst);
    eventually("unhealthy on 500", || !slot.healthy()).await;

    // An unrelated change: a restarted check would sit in its grace period (no
    // requests) and a dropped result would let the machine back in.
    let mut other = machine("m2");
    other.state = MachineState::Stopped;
    catalog.replace(Definitions::from_config(&config(
        cfg.apps.clone(),
        vec![machine("m1"), other],
    )));
    let requests = &backend.requests;
    let before = requests.load(Ordering::SeqCst);
    always("stays out across the swap", grace, || !slot.healthy()).await;
    assert!(
        requests.load(Ordering::SeqCst) >= before + 2,
        "checks kept running through the swap"
    );
}

#[tokio::test]
async fn dropping_a_failing_check_releases_the_machine() {
    let backend = http_backend().await;
    let cfg = config(
        vec![app(
            backend.port,
            vec![tcp_check()],
            vec![http_check(Duration::ZERO)],
        )],
        vec![machine("m1")],
    );
    let catalog = Arc::new(Fleet::from_config(&cfg));
    let slot = slot(&catalog, "m1", backend.port);
    let _checker = start(&catalog);

    backend.ok.store(false, Ordering::SeqCst);
    eventually("unhealthy on 500", || !slot.healthy()).await;

    catalog.replace(Definitions::from_config(&config(
        vec![app(backend.port, vec![tcp_check()], vec![])],
        vec![machine("m1")],
    )));
    eventually("healthy once the http check is gone", || slot.healthy()).await;
}

#[tokio::test]
async fn shutdown_stops_all_checks() {
    let backend = http_backend().await;
    let cfg = config(
        vec![app(backend.port, vec![], vec![http_check(Duration::ZERO)])],
        vec![machine("m1")],
    );
    let catalog = Arc::new(Fleet::from_config(&cfg));
    let (stop, mut rx) = watch::channel(false);
    let handle = HealthChecker::spawn(Arc::clone(&catalog) as Arc<dyn Catalog>, async move {
        let _ = rx.wait_for(|s| *s).await;
    });

    let requests = &backend.requests;
    eventually("checks running", || requests.load(Ordering::SeqCst) >= 2).await;
    stop.send_replace(true);
    with_timeout(handle).await.unwrap().unwrap();
    tokio::time::sleep(INTERVAL * 2).await;
    let seen = requests.load(Ordering::SeqCst);
    always("no more checks", INTERVAL * 6, || {
        requests.load(Ordering::SeqCst) == seen
    })
    .await;
}
