//! The admin HTTP server.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use tern_catalog::Catalog;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::Access;
use crate::catalog_json;
use crate::connections::connections_json;
use crate::dashboard::{DashboardParts, PAGE};
use crate::machines::{parse_path, MachineAction, MachineAdmin};
use crate::profile::{profile, ProfileError, ProfileFormat};
use crate::query::query_u64;
use crate::runtime_metrics::BusyTracker;
use pollwatch::Watchdog;
use std::time::Duration;
use tern_balance::Band;

/// What the admin endpoints read.
pub struct AdminState {
    pub catalog: Arc<dyn Catalog>,
    /// How the catalog's source is doing (etcd); `None` for a file.
    pub source: Option<Arc<dyn tern_catalog::SourceStatus>>,
    pub metrics: PrometheusHandle,
    /// The spin watchdog, for `/debug/connections`; admin connections run under it.
    pub watchdog: Option<Watchdog>,
    pub busy: BusyTracker,
    /// Test-only endpoints under /debug/test/ (TERN_TEST_HOOKS=1).
    pub test_hooks: bool,
    /// What `POST /reload` runs.
    pub reload: Option<Arc<dyn Reload>>,
    /// What `POST /machines/ID/ACTION` asks, and `/catalog` shows of lifecycles.
    pub machines: Option<Arc<dyn MachineAdmin>>,
    /// Certificates that cannot be obtained (ACME), for `/healthz`.
    pub certificates: Option<Arc<dyn CertificateHealth>>,
    /// Who may read what (a token off loopback).
    pub access: Access,
    /// The runtime watchdogs' readings, for the dashboard.
    pub runtimes: Vec<pollwatch::StallState>,
    /// When the node started serving, for the dashboard's uptime.
    pub started: std::time::Instant,
}

/// What `/healthz` says of certificates: a line per problem, none when all is well.
pub trait CertificateHealth: Send + Sync + 'static {
    fn health_lines(&self) -> Vec<String>;
}

/// Reloads the node's configuration: a summary of what changed, or why nothing
/// did. Blocking; the admin server runs it off the runtime's workers.
pub trait Reload: Send + Sync + 'static {
    fn reload(&self) -> Result<String, String>;
}

/// Serves the admin endpoints on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let state = Arc::clone(&state);
        let probe = state.watchdog.as_ref().map(|d| {
            let p = d.register();
            p.set("listener", "admin");
            p.set("peer", peer.to_string());
            p
        });
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let ended = match probe {
                Some(p) => {
                    let io = TokioIo::new(p.io(stream));
                    match p.watch(builder.serve_connection(io, svc)).await {
                        Ok(r) => r,
                        Err(spun) => {
                            tracing::debug!(%spun, "admin connection cut by the spin watchdog");
                            return;
                        }
                    }
                }
                None => builder.serve_connection(TokioIo::new(stream), svc).await,
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

async fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if !state.access.allows(&req) {
        let mut resp = text(
            StatusCode::UNAUTHORIZED,
            "this admin listener asks for its access token: Authorization: Bearer TOKEN, or ?token=TOKEN\n".into(),
            "text/plain",
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    if req.uri().path() == "/reload" {
        return reload(state, req.method()).await;
    }
    if let Some((id, action)) = parse_path(req.uri().path()) {
        return machine_action(state, req.method(), id, action).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET\n".into(),
            "text/plain",
        );
    }
    match req.uri().path() {
        "/" => text(StatusCode::OK, PAGE.to_owned(), "text/html; charset=utf-8"),
        "/dashboard.json" => text(StatusCode::OK, dashboard_json(state), "application/json"),
        "/healthz" => text(StatusCode::OK, healthz(state), "text/plain"),
        "/debug/catalog" => text(StatusCode::OK, catalog_detail(state), "application/json"),
        "/debug/test/block-runtime" if state.test_hooks => {
            // Blocks every worker thread, as a stuck poll or a blocking call would.
            let ms = query_u64(&req, "ms").unwrap_or(5000);
            let workers = tokio::runtime::Handle::current().metrics().num_workers();
            for _ in 0..workers {
                tokio::spawn(async move { std::thread::sleep(Duration::from_millis(ms)) });
            }
            text(
                StatusCode::OK,
                format!("blocking {workers} workers for {ms} ms\n"),
                "text/plain",
            )
        }
        "/metrics" => {
            publish_gauges(state);
            state.busy.publish();
            text(
                StatusCode::OK,
                state.metrics.render(),
                "text/plain; version=0.0.4",
            )
        }
        "/debug/connections" => match &state.watchdog {
            Some(dog) => {
                let ms = query_u64(&req, "sample_ms").unwrap_or(200).clamp(10, 5000);
                text(
                    StatusCode::OK,
                    connections_json(dog, Duration::from_millis(ms)).await,
                    "application/json",
                )
            }
            None => text(
                StatusCode::NOT_FOUND,
                "the spin watchdog is disabled ([watchdog] enabled = false)\n".into(),
                "text/plain",
            ),
        },
        "/debug/pprof/flamegraph" | "/debug/pprof/profile" => {
            let format = if req.uri().path().ends_with("flamegraph") {
                ProfileFormat::FlamegraphSvg
            } else {
                ProfileFormat::PprofProtobuf
            };
            let seconds = query_u64(&req, "seconds").unwrap_or(5);
            match profile(seconds, format).await {
                Ok(body) => {
                    let ctype = match format {
                        ProfileFormat::FlamegraphSvg => "image/svg+xml",
                        ProfileFormat::PprofProtobuf => "application/octet-stream",
                    };
                    bytes_response(StatusCode::OK, body, ctype)
                }
                Err(e @ ProfileError::Busy) => {
                    text(StatusCode::CONFLICT, format!("{e}\n"), "text/plain")
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{e}\n"),
                    "text/plain",
                ),
            }
        }
        "/catalog" => {
            let lifecycle = |id: &str| state.machines.as_ref()?.lifecycle(id);
            text(
                StatusCode::OK,
                catalog_json(&state.catalog.snapshot(), &lifecycle),
                "application/json",
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try / (the dashboard), /metrics, /healthz, /catalog, POST /reload, POST /machines/ID/start|stop|suspend, /debug/connections, /debug/pprof/flamegraph?seconds=5 or /debug/pprof/profile?seconds=5\n".into(),
            "text/plain",
        ),
    }
}

/// `POST /machines/ID/ACTION`: 200 with the state the machine ended in once the
/// action is done; an error status and why otherwise.
async fn machine_action(
    state: &AdminState,
    method: &Method,
    id: &str,
    action: Option<MachineAction>,
) -> Response<Full<Bytes>> {
    let plain = |status, message: String| text(status, message, "text/plain");
    let Some(action) = action else {
        return plain(
            StatusCode::NOT_FOUND,
            "the actions are start, stop and suspend: POST /machines/ID/start\n".into(),
        );
    };
    if method != Method::POST {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST /machines/ID/ACTION acts on a machine\n".into(),
        );
    }
    let Some(machines) = &state.machines else {
        return plain(StatusCode::CONFLICT, "this node runs no machines\n".into());
    };
    match machines.act(id, action).await {
        Ok(ended) => plain(StatusCode::OK, format!("machine {id} is {ended}\n")),
        Err(e) => plain(e.status, format!("{}\n", e.message)),
    }
}

/// `POST /reload`: 200 with what changed, 400 with why nothing did.
async fn reload(state: &AdminState, method: &Method) -> Response<Full<Bytes>> {
    if method != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST /reload reloads the configuration file\n".into(),
            "text/plain",
        );
    }
    let Some(reloader) = state.reload.clone() else {
        return text(
            StatusCode::CONFLICT,
            "this node cannot reload its configuration\n".into(),
            "text/plain",
        );
    };
    match tokio::task::spawn_blocking(move || reloader.reload()).await {
        Ok(Ok(summary)) => text(StatusCode::OK, format!("{summary}\n"), "text/plain"),
        Ok(Err(why)) => text(StatusCode::BAD_REQUEST, format!("{why}\n"), "text/plain"),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload failed: {e}\n"),
            "text/plain",
        ),
    }
}

/// `ok`, and how the catalog's source is doing. A node whose store is away still
/// routes (on the catalog it last read), so it stays healthy: the line says so.
fn healthz(state: &AdminState) -> String {
    let mut text = String::from("ok\n");
    if let Some(s) = &state.source {
        text.push_str(&s.health_line());
        text.push('\n');
    }
    for line in state.certificates.iter().flat_map(|c| c.health_lines()) {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

fn dashboard_json(state: &AdminState) -> String {
    // The traffic numbers are counters and a histogram that the data path keeps
    // current: no gauges to publish first, as `/metrics` does.
    let metrics_text = state.metrics.render();
    let snap = state.catalog.snapshot();
    let view = DashboardParts {
        node: &snap.node.id,
        region: &snap.node.region,
        started: state.started,
        catalog: catalog_source(state),
        metrics_text: &metrics_text,
        watchdog: state.watchdog.as_ref(),
        runtimes: &state.runtimes,
    }
    .view();
    serde_json::to_string(&view).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn catalog_source(state: &AdminState) -> serde_json::Value {
    match &state.source {
        None => serde_json::json!({ "source": "file" }),
        Some(s) => s.detail(),
    }
}

fn catalog_detail(state: &AdminState) -> String {
    serde_json::to_string_pretty(&catalog_source(state)).unwrap_or_default()
}

/// Per-machine load, band and health are read from the live catalog at scrape time.
fn publish_gauges(state: &AdminState) {
    let snap = state.catalog.snapshot();
    for app in snap.apps.values() {
        for m in &app.machines {
            for (port, slot) in m.live.slots() {
                let labels = [
                    ("app", app.name.clone()),
                    ("machine", m.def.id.clone()),
                    ("port", port.to_string()),
                ];
                metrics::gauge!("tern_machine_load", &labels).set(f64::from(slot.load.active()));
                let current = slot.band();
                for band in Band::ALL {
                    let mut l = labels.to_vec();
                    l.push(("band", band.as_str().to_owned()));
                    let v = if current == band { 1.0 } else { 0.0 };
                    metrics::gauge!("tern_machine_band", &l).set(v);
                }
                metrics::gauge!("tern_machine_healthy", &labels).set(if slot.healthy() {
                    1.0
                } else {
                    0.0
                });
            }
        }
        for s in &app.services {
            metrics::gauge!("tern_queue_waiting", "app" => app.name.clone(), "port" => s.def.internal_port.to_string())
                .set(s.queue.waiting() as f64);
        }
    }
}

fn bytes_response(status: StatusCode, body: Vec<u8>, ctype: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    resp
}

pub(crate) fn text(status: StatusCode, body: String, ctype: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    resp
}
