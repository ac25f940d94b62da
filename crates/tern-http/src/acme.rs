//! The challenge phase: an ACME server's HTTP-01 validation, answered on a
//! plain-HTTP port before routing, so that neither `force_https` nor the app
//! sees it (RFC 8555, 8.3).

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response};
use tern_challenges::Challenges;

use crate::body::{full, Body};
use crate::context::ConnInfo;

/// The key authorization, when `req` is an HTTP-01 validation of an open order.
/// A token this node did not set goes on to the app, which may run its own ACME.
pub(crate) fn http01_answer<B>(
    req: &Request<B>,
    conn: &ConnInfo,
    challenges: &Challenges,
) -> Option<Response<Body>> {
    if conn.tls || conn.from_node.is_some() || !matches!(*req.method(), Method::GET | Method::HEAD)
    {
        return None;
    }
    let answer = challenges.http01_answer(req.uri().path())?;
    tracing::info!(path = req.uri().path(), peer = %conn.peer, "answered an ACME HTTP-01 validation");
    metrics::counter!("tern_acme_challenges_answered_total", "challenge" => "http-01").increment(1);
    let mut resp = Response::new(full(answer));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}
