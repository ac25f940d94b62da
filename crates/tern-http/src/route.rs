//! The route phase: which app, service and machine a request is for. At the edge
//! the client's host names the app and the public port its service; a request
//! from a peer over the backhaul names the machine itself. Also the redirect
//! phase, which answers before anything reaches a machine.

use std::sync::Arc;

use http::header::{HeaderValue, HOST, LOCATION};
use http::{Request, Response, StatusCode};
use tern_backhaul::fields;
use tern_catalog::{AppEntry, ServiceEntry, Snapshot};

use crate::body::{full, Body};
use crate::context::ConnInfo;
use crate::error::{ErrorCode, ProxyError};

/// Where a request goes.
pub(crate) struct Route {
    pub app: Arc<AppEntry>,
    pub service: Arc<ServiceEntry>,
    /// The host the request was routed by (or, from a peer, names).
    pub host: HeaderValue,
    /// Whether the host came from the request target rather than `Host`.
    pub host_from_uri: bool,
    pub target: Target,
}

/// Which machine may take it.
pub(crate) enum Target {
    /// The best of the service's machines anywhere in the fleet.
    Balance,
    /// This node's own machine, which a peer chose.
    Machine(String),
}

/// Finds the app by host and its service by the public port.
pub(crate) fn at_edge<B>(
    snap: &Snapshot,
    req: &Request<B>,
    conn: &ConnInfo,
) -> Result<Route, ProxyError> {
    let host = request_host(req).map_err(|why| ProxyError::new(ErrorCode::BadRequest, why))?;
    let name = host.to_str().unwrap_or_default();
    let app = snap.hosts.lookup(name).cloned().ok_or_else(|| {
        ProxyError::new(
            ErrorCode::NoAppForHost,
            format!("no app serves host {name:?}"),
        )
    })?;
    let service = app.service_for_port(conn.port).cloned().ok_or_else(|| {
        ProxyError::new(
            ErrorCode::NoServiceForPort,
            format!("app {} has no service on port {}", app.name, conn.port),
        )
    })?;
    Ok(Route {
        app,
        service,
        host,
        host_from_uri: req.uri().authority().is_some(),
        target: Target::Balance,
    })
}

/// Finds the machine a peer's request names: one of this node's own, by id, and
/// its service by internal port. Only a node the catalog lists may ask.
#[cold]
pub(crate) fn from_peer<B>(
    snap: &Snapshot,
    req: &Request<B>,
    node: &str,
) -> Result<Route, ProxyError> {
    if !snap.nodes.contains_key(node) {
        return Err(ProxyError::new(
            ErrorCode::UnknownPeer,
            format!("node {node:?} is not in this node's catalog"),
        ));
    }
    let field = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let (Some(machine), Some(port)) = (field(&fields::MACHINE), field(&fields::PORT)) else {
        return Err(ProxyError::new(
            ErrorCode::UnknownPeer,
            "a backhaul request must name its machine and port",
        ));
    };
    let unavailable = |why: &str| {
        ProxyError::new(
            ErrorCode::MachineUnavailable,
            format!("machine {machine:?} {why} on node {}", snap.node.id),
        )
    };
    let m = snap
        .machines
        .get(machine)
        .filter(|m| m.is_local())
        .ok_or_else(|| unavailable("does not run"))?;
    let app = snap
        .apps
        .get(&m.def.app)
        .cloned()
        .ok_or_else(|| unavailable("has no app"))?;
    let service = port
        .parse()
        .ok()
        .and_then(|p| app.service_for_internal_port(p).cloned())
        .ok_or_else(|| unavailable("has no such service"))?;
    // A CONNECT names the machine's address as its target; the host is in Host.
    let from_uri = req.method() != http::Method::CONNECT && req.uri().authority().is_some();
    let host = if from_uri {
        request_host(req).ok()
    } else {
        req.headers().get(HOST).cloned()
    };
    Ok(Route {
        host: host.unwrap_or_else(|| HeaderValue::from_static("")),
        host_from_uri: from_uri,
        target: Target::Machine(machine.to_owned()),
        app,
        service,
    })
}

/// The redirect phase: `force_https` answers a plaintext request with a 301
/// before anything reaches a machine.
pub(crate) fn redirect<B>(
    req: &Request<B>,
    conn: &ConnInfo,
    route: &Route,
) -> Option<Response<Body>> {
    let forced = !conn.tls
        && conn.from_node.is_none()
        && route
            .service
            .def
            .ports
            .iter()
            .any(|p| p.port == conn.port && p.force_https);
    forced.then(|| redirect_to_https(req, route.host.to_str().unwrap_or_default(), &route.app))
}

/// The host the client asked for: the URI's authority (HTTP/2, absolute-form) or
/// Host. A Host header's value is shared with the request, not copied. Two Host
/// fields are refused (RFC 9112, 3.2), whichever wins: a cache or a machine
/// behind Tern might take the other one.
pub(crate) fn request_host<B>(req: &Request<B>) -> Result<HeaderValue, &'static str> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
