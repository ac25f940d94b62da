//! One request's way through Tern, in the named phases of LIFECYCLE.md:
//! route → redirect → admit → rewrite → choose → connect → send → respond.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, CONTENT_LENGTH, HOST, LOCATION};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tern_balance::LoadGuard;
use tern_catalog::model::ConcurrencyKind;
use tern_catalog::{AdmitError, AppEntry, Catalog, MachineEntry, Pick, ServiceEntry, Snapshot};

use crate::activity::Activity;
use crate::binding::{ConnBindings, Unit};
use crate::body::{full, Body, Guarded, OnEnd, RequestBody};
use crate::error::{ErrorCode, ProxyError};
use crate::header_deadline::HeaderDeadline;
use crate::headers::{self, ConnValues, Forwarded};
use crate::noted::Noted;
use crate::request_metrics::RequestMetrics;
use crate::upstream::{ConnectError, MachineIo, Sender, Upstreams, Want};

/// What the proxy needs from the configuration.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// This node's region, sent as `Tern-Region`.
    pub region: String,
    pub connect_attempts: usize,
    pub response_header_timeout: Duration,
    pub queue_timeout: Duration,
    /// Test-only: `/__tern_test/spin` never completes and wakes itself forever,
    /// the shape of the close_notify busy loop, for testing the spin watchdog.
    pub test_hooks: bool,
}

/// The connection a request arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The public port the client connected to.
    pub port: u16,
    pub tls: bool,
    pub sni: Option<String>,
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
            bindings: ConnBindings::default(),
            probe: None,
            values: ConnValues::new(peer, port),
            noted_app: Noted::default(),
            noted_machine: Noted::default(),
            activity: None,
        }
    }
}

/// The HTTP proxy: shared by every connection of every HTTP listener.
pub struct Proxy {
    catalog: Arc<dyn Catalog>,
    upstreams: Arc<Upstreams>,
    settings: ProxySettings,
    /// `settings.region` as a header value, or `None` if it cannot be one.
    region: Option<HeaderValue>,
    metrics: RequestMetrics,
}

/// What a finished request is labelled with in metrics and logs.
struct Outcome {
    /// The app the request was routed to, once known.
    app: Option<Arc<AppEntry>>,
    code: &'static str,
}

impl Outcome {
    fn app_name(&self) -> &str {
        self.app.as_deref().map_or("", |a| a.name.as_str())
    }
}

impl Proxy {
    pub fn new(
        catalog: Arc<dyn Catalog>,
        upstreams: Arc<Upstreams>,
        settings: ProxySettings,
    ) -> Self {
        Proxy {
            catalog,
            upstreams,
            region: HeaderValue::from_str(&settings.region).ok(),
            settings,
            metrics: RequestMetrics::default(),
        }
    }

    /// Serves one request. Never fails: Tern's own errors become coded responses.
    /// `on_end` runs once: when the response body is done or dropped, or when this
    /// future is dropped before it answers (an HTTP/2 client resetting its stream).
    /// It shares a relayed body's wrapper, so a relayed response costs one boxed
    /// body, not two.
    pub(crate) async fn handle<H: OnEnd>(
        &self,
        req: Request<RequestBody>,
        conn: &ConnInfo,
        on_end: H,
    ) -> Response<Body> {
        // Held until the response body takes it over.
        let on_end = Unanswered(Some(on_end));
        if self.settings.test_hooks && req.uri().path() == "/__tern_test/spin" {
            std::future::poll_fn(|cx| {
                cx.waker().wake_by_ref();
                std::task::Poll::<()>::Pending
            })
            .await;
        }
        let started = Instant::now();
        let request_id = headers::request_id();
        let method = req.method().clone();
        let mut outcome = Outcome {
            app: None,
            code: "ok",
        };
        let mut resp = match self.proxy(req, conn, &request_id, &mut outcome).await {
            Ok(Answer::Relayed(resp, release)) => {
                let (parts, body) = resp.into_parts();
                Response::from_parts(parts, Guarded::new(body, (release, on_end)).boxed_unsync())
            }
            Ok(Answer::Local(resp)) => resp.map(|b| Guarded::new(b, on_end).boxed_unsync()),
            Err(e) => {
                outcome.code = e.code.as_str();
                tracing::info!(
                    request_id = request_id.to_str().unwrap_or_default(),
                    app = %outcome.app_name(),
                    peer = %conn.peer,
                    code = e.code.as_str(),
                    detail = %e.detail,
                    "request failed"
                );
                e.into_response()
                    .map(|b| Guarded::new(b, on_end).boxed_unsync())
            }
        };
        resp.headers_mut()
            .insert(headers::TERN_REQUEST_ID.clone(), request_id.clone());
        self.metrics.record(
            outcome.app_name(),
            outcome.code,
            resp.status().as_u16(),
            started.elapsed(),
        );
        tracing::debug!(request_id = request_id.to_str().unwrap_or_default(), %method, status = resp.status().as_u16(), "request done");
        resp
    }

    async fn proxy(
        &self,
        mut req: Request<RequestBody>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
        outcome: &mut Outcome,
    ) -> Result<Answer, ProxyError> {
        let snapshot = self.catalog.snapshot();

        // route: Host (or :authority) names the app; the public port names its service.
        let host_value =
            request_host(&req).map_err(|why| ProxyError::new(ErrorCode::BadRequest, why))?;
        let host = host_value.to_str().unwrap_or_default();
        let app = snapshot.hosts.lookup(host).cloned().ok_or_else(|| {
            ProxyError::new(
                ErrorCode::NoAppForHost,
                format!("no app serves host {host:?}"),
            )
        })?;
        outcome.app = Some(Arc::clone(&app));
        if let Some(p) = &conn.probe {
            if conn.noted_app.changed(&app) {
                p.note("app", &app.name);
            }
        }
        let service = app.service_for_port(conn.port).cloned().ok_or_else(|| {
            ProxyError::new(
                ErrorCode::NoServiceForPort,
                format!("app {} has no service on port {}", app.name, conn.port),
            )
        })?;

        // redirect: force_https answers before anything reaches a machine.
        if !conn.tls && forces_https(&service, conn.port) {
            return Ok(Answer::Local(redirect_to_https(&req, host, &app)));
        }

        // admit: refuse a body that is declared too large before reading any of it.
        let limit = app.max_request_body;
        if let Some(len) = declared_length(&req) {
            if len > limit {
                return Err(ProxyError::new(
                    ErrorCode::RequestBodyTooLarge,
                    format!("body of {len} bytes exceeds the limit of {limit}"),
                ));
            }
        }

        // rewrite: hop-by-hop out, spoofed Tern-* out, forwarding headers in.
        let upgrade = is_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let h2 = service.def.h2_backend && !upgrade;
        let bodyless = http_body::Body::is_end_stream(req.body());
        let want = if h2 {
            Want::H2
        } else if upgrade || !bodyless {
            Want::H1 { upgrade }
        } else {
            // Most requests: no body, no upgrade. They run in this task.
            Want::InTask {
                probe: conn.probe.as_ref(),
            }
        };
        let forwarded = Forwarded {
            conn: &conn.values,
            tls: conn.tls,
            region: self.region.as_ref(),
            request_id,
            version: req.version(),
        };
        let host_from_uri = req.uri().authority().is_some();
        let h = req.headers_mut();
        let inherited = headers::scrub_request(h, upgrade);
        // An absolute-form target overrides Host (RFC 9112, 3.2.2), so the machine
        // sees the host the request was routed by.
        if host_from_uri {
            h.insert(HOST, host_value.clone());
        }
        let (parts, body) = req.into_parts();
        let body: Body = if bodyless {
            // No body (most GETs): an empty one is a zero-sized box, no allocation.
            Body::default()
        } else {
            let limited = Limited::new(body, limit_usize(limit)).map_err(|e| e as crate::BoxError);
            match &conn.activity {
                Some(activity) => {
                    Guarded::new(limited, BodyRead(Arc::clone(activity))).boxed_unsync()
                }
                None => limited.boxed_unsync(),
            }
        };
        let mut req = Request::from_parts(parts, body);
        *req.version_mut() = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };

        // choose + connect: the best machine with room; a failed connect moves on.
        let (pick, guard, sender) = self.connect(&snapshot, &app, &service, conn, want).await?;
        // A head Tern encodes itself (on an in-task socket) takes the forwarding
        // fields as they are, unless the client's own X-Forwarded-For or Via must
        // be extended in the map.
        let own_fields = matches!(sender, Sender::InTask { .. }) && !inherited;
        if !own_fields {
            headers::add_forwarding(req.headers_mut(), &forwarded);
        }
        let uri = std::mem::take(req.uri_mut());
        *req.uri_mut() = upstream_uri(uri, host, pick.addr(), h2)?;
        if let Some(p) = &conn.probe {
            if conn.noted_machine.changed(&pick.machine) {
                p.note("machine", &pick.machine.def.id);
            }
        }

        // send: the head must come back within the response-header timeout.
        let fields = own_fields.then_some(&forwarded);
        // On an HTTP/1.1 client connection the driver polls the request at least
        // once a second, so its deadline needs no timer until it is near.
        let ticked = conn.activity.as_ref().is_some_and(|a| !a.is_multiplexed());
        let (resp, sender) = self
            .send(req, sender, pick.addr(), want, fields, ticked)
            .await?;

        // respond: relay the head, and hold the load until the body is done.
        let mut resp = resp;
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(resp.headers_mut(), switching && upgrade);
        let via = headers::via_value(resp.version()).clone();
        resp.headers_mut().append(http::header::VIA, via);

        if switching {
            let Some(client_upgrade) = client_upgrade else {
                return Err(ProxyError::new(
                    ErrorCode::UpstreamBadResponse,
                    "the machine switched protocols without being asked to",
                ));
            };
            let machine_upgrade = hyper::upgrade::on(&mut resp);
            let machine = pick.machine.def.id.clone();
            tokio::spawn(async move {
                // The load unit stays taken while the tunnel is open.
                let _guard = guard;
                let _sender = sender;
                match tokio::try_join!(client_upgrade, machine_upgrade) {
                    Ok((c, m)) => {
                        let mut c = TokioIo::new(c);
                        let mut m = TokioIo::new(m);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut m).await {
                            tracing::debug!(%machine, error = %e, "upgraded tunnel ended");
                        }
                    }
                    Err(e) => tracing::info!(%machine, error = %e, "upgrade failed"),
                }
            });
            let (parts, _) = resp.into_parts();
            return Ok(Answer::Local(Response::from_parts(
                parts,
                full(bytes::Bytes::new()),
            )));
        }

        let hook = Release {
            _guard: guard,
            pool: match sender {
                Some(Sender::H1 { tx, .. }) => Some((Arc::clone(&self.upstreams), pick.addr(), tx)),
                // An in-task response body hands its socket back itself.
                _ => None,
            },
        };
        Ok(Answer::Relayed(resp, hook))
    }

    async fn connect(
        &self,
        snapshot: &Snapshot,
        app: &AppEntry,
        service: &ServiceEntry,
        conn: &ConnInfo,
        want: Want<'_>,
    ) -> Result<(Pick, Unit, Sender), ProxyError> {
        let port = service.def.internal_port;
        let per_connection = service.def.concurrency.kind == ConcurrencyKind::Connections;
        let mut tried: Vec<String> = Vec::new();
        let mut last_error: Option<ConnectError> = None;

        if per_connection {
            if let Some((pick, unit)) = conn.bindings.get(&app.name, port) {
                let id = &pick.machine.def.id;
                let still_eligible = snapshot
                    .eligible(app, service)
                    .iter()
                    .any(|p| &p.machine.def.id == id);
                if still_eligible {
                    match self.upstreams.checkout(pick.addr(), want).await {
                        Ok(sender) => return Ok((pick, unit, sender)),
                        Err(e) => {
                            self.count_connect_error(app, &pick, &e);
                            tried.push(id.clone());
                            last_error = Some(e);
                        }
                    }
                }
                conn.bindings.unbind(&app.name, port);
            }
        }

        for _ in 0..self.settings.connect_attempts.max(1) {
            let (pick, guard) = match self.admit(snapshot, app, service, &tried).await {
                Ok(p) => p,
                Err(e) if last_error.is_some() && e.code == ErrorCode::NoHealthyMachine => break,
                Err(e) => return Err(e),
            };
            let unit = Arc::new(guard);
            match self.upstreams.checkout(pick.addr(), want).await {
                Ok(sender) => {
                    if per_connection {
                        conn.bindings
                            .bind(&app.name, port, pick.clone(), Arc::clone(&unit));
                    }
                    return Ok((pick, unit, sender));
                }
                Err(e) => {
                    self.count_connect_error(app, &pick, &e);
                    tried.push(pick.machine.def.id.clone());
                    last_error = Some(e);
                }
            }
        }
        let code = match last_error {
            Some(ConnectError::Timeout { .. }) => ErrorCode::UpstreamConnectTimeout,
            _ => ErrorCode::UpstreamConnectFailed,
        };
        let detail = match last_error {
            Some(e) => format!("tried {}: {e}", tried.join(", ")),
            None => "no machine could be reached".to_owned(),
        };
        Err(ProxyError::new(code, detail))
    }

    #[cold]
    fn count_connect_error(&self, app: &AppEntry, pick: &Pick, e: &ConnectError) {
        tracing::info!(machine = %pick.machine.def.id, error = %e, "connect failed, trying the next machine");
        metrics::counter!("tern_upstream_connect_errors_total", "app" => app.name.clone(), "machine" => pick.machine.def.id.clone())
            .increment(1);
    }

    /// Takes a load unit on the best machine not yet tried (see `Snapshot::admit`).
    async fn admit(
        &self,
        snapshot: &Snapshot,
        app: &AppEntry,
        service: &ServiceEntry,
        tried: &[String],
    ) -> Result<(Pick, LoadGuard), ProxyError> {
        snapshot
            .admit(app, service, tried, self.settings.queue_timeout)
            .await
            .map_err(|e| {
                let code = match e {
                    AdmitError::NoHealthyMachine { .. } => ErrorCode::NoHealthyMachine,
                    AdmitError::QueueFull { .. } => ErrorCode::QueueFull,
                    AdmitError::QueueTimeout { .. } => ErrorCode::QueueTimeout,
                    AdmitError::MachineUnavailable { .. } => ErrorCode::MachineUnavailable,
                };
                ProxyError::new(code, e.to_string())
            })
    }

    /// Sends the request and waits for the response head. The connection comes
    /// back with it while the caller still needs it: a hyper HTTP/1.1 one to pool
    /// or take over, an h2c one to hold; an in-task socket is owned by the body.
    /// `fields`, when given, are the forwarding fields an in-task request's map
    /// lacks, for `tern-h1` to write into its head.
    async fn send(
        &self,
        req: Request<Body>,
        sender: Sender,
        addr: SocketAddr,
        want: Want<'_>,
        fields: Option<&Forwarded<'_>>,
        ticked: bool,
    ) -> Result<(Response<Relayed>, Option<Sender>), ProxyError> {
        let timeout = self.settings.response_header_timeout;
        match sender {
            Sender::H2(mut tx) => {
                let resp = tokio::time::timeout(timeout, tx.send_request(req))
                    .await
                    .map_err(|_| header_timeout(timeout))?
                    .map_err(upstream_error)?;
                Ok((resp.map(Relayed::Left), Some(Sender::H2(tx))))
            }
            Sender::H1 { mut tx, reused } => {
                let sent = tokio::time::timeout(timeout, tx.try_send_request(req))
                    .await
                    .map_err(|_| header_timeout(timeout))?;
                match sent {
                    Ok(resp) => Ok((resp.map(Relayed::Left), Some(Sender::H1 { tx, reused }))),
                    Err(mut e) => {
                        // A pooled connection the machine had closed: the request
                        // never left, so it goes again on a fresh connection.
                        match e.take_message() {
                            Some(req) if reused => {
                                Box::pin(self.resend(req, addr, want, None, ticked)).await
                            }
                            _ => Err(upstream_error(e.into_error())),
                        }
                    }
                }
            }
            Sender::InTask { conn, reused } => {
                let recycle = PoolReturn {
                    pool: Arc::clone(&self.upstreams),
                    addr,
                };
                let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let extra = fields.map(headers::forwarding_fields);
                let extra = extra.as_ref().map_or(&[][..], |f| f.as_slice());
                let exchange =
                    tern_h1::send(conn, req.method(), target, req.headers(), extra, recycle);
                let sent = if ticked {
                    HeaderDeadline::new(exchange, timeout)
                        .await
                        .map_err(|_| header_timeout(timeout))?
                } else {
                    tokio::time::timeout(timeout, exchange)
                        .await
                        .map_err(|_| header_timeout(timeout))?
                };
                match sent {
                    Ok(resp) => {
                        // The request's map is done with: the next message on this
                        // thread reuses it (tern-h1 keeps a few).
                        tern_h1::recycle_header_map(req.into_parts().0.headers);
                        Ok((resp.map(Relayed::Right), None))
                    }
                    // A pooled socket the machine closed after it was checked: the
                    // request may have reached the machine, so only a request that
                    // may be repeated goes again.
                    Err(tern_h1::Error::ClosedBeforeResponse)
                        if reused && req.method().is_idempotent() =>
                    {
                        Box::pin(self.resend(req, addr, want, fields, ticked)).await
                    }
                    Err(e) => Err(in_task_error(e)),
                }
            }
        }
    }

    /// Sends again, on a fresh connection, a request that a pooled connection
    /// failed to carry. Boxed by its caller: rare, and its future is large.
    async fn resend(
        &self,
        req: Request<Body>,
        addr: SocketAddr,
        want: Want<'_>,
        fields: Option<&Forwarded<'_>>,
        ticked: bool,
    ) -> Result<(Response<Relayed>, Option<Sender>), ProxyError> {
        let fresh = match want {
            Want::InTask { probe } => self.upstreams.connect_in_task(addr, probe).await,
            _ => {
                self.upstreams
                    .checkout(addr, Want::H1 { upgrade: false })
                    .await
            }
        }
        .map_err(|e| ProxyError::new(ErrorCode::UpstreamConnectFailed, e.to_string()))?;
        self.send(req, fresh, addr, want, fields, ticked).await
    }
}

/// A request's hook, run once: by the response body it is handed to, or (as
/// incomplete) when dropped unrun, as when the request's future is dropped before
/// it answers.
struct Unanswered<H: OnEnd>(Option<H>);

impl<H: OnEnd> OnEnd for Unanswered<H> {
    fn on_end(mut self, complete: bool) {
        if let Some(hook) = self.0.take() {
            hook.on_end(complete);
        }
    }
}

impl<H: OnEnd> Drop for Unanswered<H> {
    fn drop(&mut self) {
        if let Some(hook) = self.0.take() {
            hook.on_end(false);
        }
    }
}

/// What `proxy` answers with.
// Made once per request and unpacked at once: boxing the larger variant would
// cost an allocation per relayed response to save a move.
#[allow(clippy::large_enum_variant)]
enum Answer {
    /// The machine's response; its body still has to be relayed.
    Relayed(Response<Relayed>, Release),
    /// An answer made by Tern itself (a redirect, a switched protocol).
    Local(Response<Body>),
}

/// Gives the load unit back and the connection to the pool when the body is done.
struct Release {
    _guard: Unit,
    pool: Option<(
        Arc<Upstreams>,
        SocketAddr,
        hyper::client::conn::http1::SendRequest<Body>,
    )>,
}

impl OnEnd for Release {
    fn on_end(self, complete: bool) {
        if let (true, Some((pool, addr, tx))) = (complete, self.pool) {
            pool.checkin(addr, tx);
        }
    }
}

/// A machine's response body: from hyper's client, or read in this task.
type Relayed = http_body_util::Either<Incoming, tern_h1::ResponseBody<MachineIo, PoolReturn>>;

/// Hands an in-task socket back to the pool when its response has been read.
struct PoolReturn {
    pool: Arc<Upstreams>,
    addr: SocketAddr,
}

impl tern_h1::Recycle<MachineIo> for PoolReturn {
    fn recycle(self, conn: tern_h1::Connection<MachineIo>) {
        self.pool.checkin_in_task(self.addr, conn);
    }
}

// Cold: error paths are laid out away from the request's hot code.
#[cold]
fn in_task_error(e: tern_h1::Error) -> ProxyError {
    let code = if e.is_malformed() {
        ErrorCode::UpstreamBadResponse
    } else {
        ErrorCode::UpstreamReset
    };
    ProxyError::new(code, e.to_string())
}

// Cold: error paths are laid out away from the request's hot code.
#[cold]
fn header_timeout(after: Duration) -> ProxyError {
    ProxyError::new(
        ErrorCode::UpstreamTimeout,
        format!("the machine sent no response head within {after:?}"),
    )
}

// Cold: error paths are laid out away from the request's hot code.
#[cold]
fn upstream_error(e: hyper::Error) -> ProxyError {
    if let Some(limit) = find_cause::<http_body_util::LengthLimitError>(&e) {
        return ProxyError::new(ErrorCode::RequestBodyTooLarge, limit.to_string());
    }
    if e.is_parse() {
        return ProxyError::new(ErrorCode::UpstreamBadResponse, e.to_string());
    }
    ProxyError::new(ErrorCode::UpstreamReset, e.to_string())
}

fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// The host the client asked for: the URI's authority (HTTP/2, absolute-form) or
/// Host. A Host header's value is shared with the request, not copied. Two Host
/// fields are refused (RFC 9112, 3.2), whichever wins: a cache or a machine
/// behind Tern might take the other one.
fn request_host<B>(req: &Request<B>) -> Result<HeaderValue, &'static str> {
    const NO_HOST: &str = "the request names no host";
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("the request has more than one Host field");
    }
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).map_err(|_| NO_HOST);
    }
    host.filter(|h| h.to_str().is_ok_and(|h| !h.is_empty()))
        .cloned()
        .ok_or(NO_HOST)
}

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn limit_usize(limit: u64) -> usize {
    usize::try_from(limit).unwrap_or(usize::MAX)
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(http::header::UPGRADE)
        && req
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

fn forces_https(service: &ServiceEntry, port: u16) -> bool {
    service
        .def
        .ports
        .iter()
        .any(|p| p.port == port && p.force_https)
}

fn redirect_to_https<B>(req: &Request<B>, host: &str, app: &AppEntry) -> Response<Body> {
    let bare = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let https_port = app
        .services
        .iter()
        .flat_map(|s| s.def.ports.iter())
        .find(|p| p.handlers.tls && p.handlers.http)
        .map_or(443, |p| p.port);
    let authority = if https_port == 443 {
        bare.to_owned()
    } else {
        format!("{bare}:{https_port}")
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{authority}{path}");
    let mut resp = Response::new(full(format!("redirecting to {location}\n")));
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

/// HTTP/1.1 machines get origin-form; h2c machines need scheme and authority.
fn upstream_uri(uri: Uri, host: &str, addr: SocketAddr, h2: bool) -> Result<Uri, ProxyError> {
    if !h2 && uri.scheme().is_none() && uri.authority().is_none() {
        // Already origin-form (the usual HTTP/1.1 request): nothing to rebuild.
        return Ok(uri);
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let built = if h2 {
        let authority = if host.is_empty() {
            addr.to_string()
        } else {
            host.to_owned()
        };
        format!("http://{authority}{path}").parse::<Uri>()
    } else {
        path.parse::<Uri>()
    };
    built.map_err(|e| ProxyError::new(ErrorCode::BadRequest, format!("bad request target: {e}")))
}

/// Tells the connection's activity that a request body was read to its end.
struct BodyRead(Arc<Activity>);

impl OnEnd for BodyRead {
    fn on_end(self, complete: bool) {
        if complete {
            self.0.request_body_read();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering};

    fn with_host(host: &'static [u8]) -> Request<()> {
        let mut req = Request::new(());
        req.headers_mut()
            .insert(HOST, HeaderValue::from_bytes(host).unwrap());
        req
    }

    #[test]
    fn the_host_comes_from_the_authority_or_a_visible_host_header() {
        let req = Request::get("http://a.example:8080/x").body(()).unwrap();
        assert_eq!(request_host(&req).unwrap(), "a.example:8080");
        let mut other = Request::get("http://a.example/x").body(()).unwrap();
        other
            .headers_mut()
            .insert(HOST, HeaderValue::from_static("b.example"));
        assert_eq!(request_host(&other).unwrap(), "a.example");
        assert_eq!(request_host(&with_host(b"web.test")).unwrap(), "web.test");
        assert!(request_host(&with_host(b"")).is_err());
        assert!(request_host(&with_host(b"caf\xc3\xa9.test")).is_err());
        assert!(request_host(&Request::new(())).is_err());
        let mut two = with_host(b"web.test");
        two.headers_mut()
            .append(HOST, HeaderValue::from_static("web.test"));
        assert!(request_host(&two).is_err());
        other
            .headers_mut()
            .append(HOST, HeaderValue::from_static("c.example"));
        assert!(request_host(&other).is_err());
    }

    /// 1 = complete, 2 = incomplete.
    struct Seen(Arc<AtomicU8>);

    impl OnEnd for Seen {
        fn on_end(self, complete: bool) {
            self.0
                .store(if complete { 1 } else { 2 }, Ordering::Relaxed);
        }
    }

    #[test]
    fn an_unanswered_request_runs_its_hook_as_incomplete_once() {
        let seen = Arc::new(AtomicU8::new(0));
        drop(Unanswered(Some(Seen(Arc::clone(&seen)))));
        assert_eq!(seen.load(Ordering::Relaxed), 2);

        // Run by its body: once, with the body's verdict, and not again on drop.
        let seen = Arc::new(AtomicU8::new(0));
        Unanswered(Some(Seen(Arc::clone(&seen)))).on_end(true);
        assert_eq!(seen.load(Ordering::Relaxed), 1);
    }
}
