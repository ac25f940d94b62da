//! The rewrite phase: what of the client's request goes on, what Tern adds, and,
//! once a machine is chosen, how the request is addressed to it (directly, or to
//! its node over the backhaul).

use http::header::{HeaderMap, HeaderValue, HOST};
use http::{Method, Request, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::upgrade::OnUpgrade;
use tern_backhaul::fields;
use tern_catalog::Pick;

use crate::body::{Body, Guarded, OnEnd, RequestBody};
use crate::body_deadline::BodyDeadline;
use crate::context::{ConnInfo, Proxy};
use crate::error::{ErrorCode, ProxyError};
use crate::headers::{self, Forwarded};
use crate::route::Route;
use crate::upstream::{Sender, Want};

/// A request readied for its machine, and what the later phases need to know of it.
pub(crate) struct Prepared<'a> {
    /// Taken by the send phase; put back for a retry.
    req: Option<Request<Body>>,
    /// The client asked to switch protocols; `client_upgrade` yields its side.
    pub upgrade: bool,
    pub client_upgrade: Option<OnUpgrade>,
    /// The machine speaks h2c.
    h2: bool,
    bodyless: bool,
    /// The client's own `X-Forwarded-For` or `Via`, which Tern's entries extend.
    inherited: bool,
    /// Tern adds the forwarding fields: at the edge, not for a peer's request,
    /// whose edge added them.
    forwards: bool,
    request_id: &'a HeaderValue,
    /// The version the client spoke, for `Via`.
    client_version: Version,
    host: HeaderValue,
    internal_port: u16,
}

/// What a replayed request starts from: its head, for a request without a body.
pub(crate) struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Head {
    pub(crate) fn method(&self) -> &Method {
        &self.method
    }
}

/// How many Content-Length fields a request came with, as the admit phase
/// counted them (and refused them if they disagreed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LengthFields {
    AtMostOne,
    Several,
}

impl Proxy {
    /// Readies the client's request: hop-by-hop fields out, spoofed `Tern-*` out
    /// (at the edge), the body under the app's limit.
    pub(crate) fn rewrite<'a>(
        &self,
        mut req: Request<RequestBody>,
        conn: &ConnInfo,
        route: &Route,
        request_id: &'a HeaderValue,
        lengths: LengthFields,
    ) -> Prepared<'a> {
        let upgrade = is_upgrade(&req);
        let client_version = req.version();
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let h2 = route.service.def.h2_backend && !upgrade;
        let bodyless = http_body::Body::is_end_stream(req.body());
        let forwards = conn.from_node.is_none();
        let h = req.headers_mut();
        let inherited = if forwards {
            headers::scrub_request(h, upgrade)
        } else {
            strip_backhaul_fields(h);
            true
        };
        // Content-Length fields that agree (the admit phase refused the others)
        // go on as one.
        if lengths == LengthFields::Several {
            if let Some(one) = h.get(http::header::CONTENT_LENGTH).cloned() {
                h.insert(http::header::CONTENT_LENGTH, one);
            }
        }
        // An absolute-form target (or a peer's HTTP/2 authority) overrides Host
        // (RFC 9112, 3.2.2), so the machine sees the host the request was routed by.
        if route.host_from_uri {
            h.insert(HOST, route.host.clone());
        }
        let (parts, body) = req.into_parts();
        let limit = usize::try_from(route.app.max_request_body).unwrap_or(usize::MAX);
        let body: Body = if bodyless {
            // No body (most GETs): an empty one is a zero-sized box, no allocation.
            Body::default()
        } else {
            let moving = BodyDeadline::new(body, self.settings.body_read_timeout());
            let limited = Limited::new(moving, limit).map_err(|e| e as crate::BoxError);
            match &conn.activity {
                Some(activity) => {
                    Guarded::new(limited, BodyRead(std::sync::Arc::clone(activity))).boxed_unsync()
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
        Prepared {
            req: Some(req),
            upgrade,
            client_upgrade,
            h2,
            bodyless,
            inherited,
            forwards,
            request_id,
            client_version,
            host: route.host.clone(),
            internal_port: route.service.def.internal_port,
        }
    }

    /// Addresses the request to the chosen machine: the forwarding fields, and the
    /// target as the machine (origin-form, or h2c's absolute form) or its node
    /// (the backhaul's fields) expects it.
    pub(crate) fn address(
        &self,
        prepared: &mut Prepared<'_>,
        conn: &ConnInfo,
        route: &Route,
        pick: &Pick,
        sender: &Sender,
    ) -> Result<Request<Body>, ProxyError> {
        let own = prepared.owns_fields(sender);
        let mut req = prepared.req.take().ok_or_else(|| {
            ProxyError::new(ErrorCode::BadRequest, "the request was already sent")
        })?;
        if prepared.forwards && !own {
            let forwarded = prepared.forwarded(conn, self.region.as_ref());
            headers::add_forwarding(req.headers_mut(), &forwarded);
        }
        let uri = std::mem::take(req.uri_mut());
        if sender.is_backhaul() {
            let host = route.host.to_str().unwrap_or_default();
            *req.uri_mut() = backhaul_uri(uri, host)?;
            *req.version_mut() = Version::HTTP_2;
            to_peer(req.headers_mut(), pick, prepared.internal_port)?;
        } else {
            let host = prepared.host.to_str().unwrap_or_default();
            *req.uri_mut() = upstream_uri(uri, host, pick.addr(), prepared.h2)?;
        }
        Ok(req)
    }
}

impl<'a> Prepared<'a> {
    /// The body the buffer phase may read ahead: none for a bodyless request, nor
    /// for an upgrade, whose bytes after the head belong to the new protocol, nor
    /// for a streaming RPC, whose client may wait for an answer before it sends
    /// more.
    pub(crate) fn body_to_buffer(&mut self) -> Option<&mut Body> {
        if self.bodyless || self.upgrade {
            return None;
        }
        let req = self.req.as_mut()?;
        if crate::buffer::is_streaming_rpc(req.headers()) {
            return None;
        }
        Some(req.body_mut())
    }

    /// What kind of connection the request needs.
    pub(crate) fn want<'c>(&self, conn: &'c ConnInfo) -> Want<'c> {
        if self.h2 {
            Want::H2
        } else if self.upgrade || !self.bodyless {
            Want::H1 {
                upgrade: self.upgrade,
            }
        } else {
            // Most requests: no body, no upgrade. They run in this task.
            Want::InTask {
                probe: conn.probe.as_ref(),
            }
        }
    }

    /// Whether `tern-h1` writes the forwarding fields into the head itself: on an
    /// in-task socket, for a request with no `X-Forwarded-For` or `Via` of its own.
    fn owns_fields(&self, sender: &Sender) -> bool {
        self.forwards && !self.inherited && matches!(sender, Sender::InTask { .. })
    }

    pub(crate) fn forwarded<'c>(
        &self,
        conn: &'c ConnInfo,
        region: Option<&'c HeaderValue>,
    ) -> Forwarded<'c>
    where
        'a: 'c,
    {
        Forwarded {
            conn: &conn.values,
            tls: conn.tls,
            region,
            request_id: self.request_id,
            version: self.client_version,
        }
    }

    /// The forwarding fields for `tern-h1` to write into the head, when it does.
    pub(crate) fn own_fields<'c>(
        &self,
        sender: &Sender,
        conn: &'c ConnInfo,
        region: Option<&'c HeaderValue>,
    ) -> Option<Forwarded<'c>>
    where
        'a: 'c,
    {
        self.owns_fields(sender)
            .then(|| self.forwarded(conn, region))
    }

    /// A copy of the head, kept while a request without a body crosses the
    /// backhaul: a peer that refuses it (its machine gone) never passed it on,
    /// and the next machine may take it.
    pub(crate) fn replay_head(&self, sender: &Sender) -> Option<Head> {
        if !self.bodyless || !sender.is_backhaul() {
            return None;
        }
        let req = self.req.as_ref()?;
        Some(Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    /// Puts back a request to send again.
    pub(crate) fn restore(&mut self, head: Head) {
        let mut req = Request::new(Body::default());
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers;
        self.req = Some(req);
    }

    /// The request as readied, for a CONNECT that carries an upgrade.
    pub(crate) fn take_request(&mut self) -> Option<Request<Body>> {
        self.req.take()
    }

    pub(crate) fn internal_port(&self) -> u16 {
        self.internal_port
    }

    /// Whether Tern adds the forwarding fields: at the edge, not for a peer's
    /// request.
    pub(crate) fn forwards(&self) -> bool {
        self.forwards
    }
}

/// Removes the backhaul's own fields from a peer's request: they were for this
/// node, not its machine.
pub(crate) fn strip_backhaul_fields(h: &mut HeaderMap) {
    let ours: Vec<_> = h
        .keys()
        .filter(|n| fields::is_backhaul_field(n))
        .cloned()
        .collect();
    for name in ours {
        h.remove(&name);
    }
}

/// Names the machine for its node, in the fields only a peer may set.
pub(crate) fn to_peer(h: &mut HeaderMap, pick: &Pick, port: u16) -> Result<(), ProxyError> {
    let id = HeaderValue::from_str(&pick.machine.def.id).map_err(|_| {
        ProxyError::new(
            ErrorCode::BackhaulConnectFailed,
            format!("machine id {:?} cannot be sent", pick.machine.def.id),
        )
    })?;
    // HTTP/2 carries the host as the target's authority.
    h.remove(HOST);
    h.insert(fields::MACHINE.clone(), id);
    h.insert(fields::PORT.clone(), HeaderValue::from(port));
    Ok(())
}

/// The target of a request crossing the backhaul: HTTP/2 wants scheme and
/// authority, and the authority is the host it was routed by.
fn backhaul_uri(uri: Uri, host: &str) -> Result<Uri, ProxyError> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = if host.is_empty() {
        "tern.invalid"
    } else {
        host
    };
    format!("https://{authority}{path}")
        .parse::<Uri>()
        .map_err(|e| ProxyError::new(ErrorCode::BadRequest, format!("bad request target: {e}")))
}

/// HTTP/1.1 machines get origin-form; h2c machines need scheme and authority.
fn upstream_uri(
    uri: Uri,
    host: &str,
    addr: std::net::SocketAddr,
    h2: bool,
) -> Result<Uri, ProxyError> {
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

/// Tells the connection's activity that a request body was read to its end.
struct BodyRead(std::sync::Arc<crate::activity::Activity>);

impl OnEnd for BodyRead {
    fn on_end(self, complete: bool) {
        if complete {
            self.0.request_body_read();
        }
    }
}
