//! The send phase: the request goes out on the connection the connect phase
//! made, and the response head must come back within the response-header
//! timeout. Also the body a machine's response arrives in, whichever way it came.

use std::error::Error as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

use crate::body::{Body, BoxError};
use crate::context::Proxy;
use crate::error::{ErrorCode, ProxyError};
use crate::header_deadline::HeaderDeadline;
use crate::headers::{self, Forwarded};
use crate::upstream::{MachineIo, Sender, Upstreams, Want};

pin_project_lite::pin_project! {
    /// A machine's response body, with its first frame if the respond phase has
    /// already read it.
    pub(crate) struct Relayed {
        #[pin]
        from: Source,
        first: First,
    }
}

/// The frame read ahead, kept small: the response is moved whole between the
/// phases, and a frame of trailers (a `HeaderMap`) is three times a `Bytes`.
enum First {
    None,
    Data(Bytes),
    Trailers(Box<http::HeaderMap>),
}

impl First {
    fn take(&mut self) -> Option<Frame<Bytes>> {
        match std::mem::replace(self, First::None) {
            First::None => None,
            First::Data(d) => Some(Frame::data(d)),
            First::Trailers(t) => Some(Frame::trailers(*t)),
        }
    }

    fn is_none(&self) -> bool {
        matches!(self, First::None)
    }
}

pin_project_lite::pin_project! {
    /// Where a response body comes from: hyper's client, a socket read in this
    /// task, or the machine's node over the backhaul.
    #[project = SourceProj]
    enum Source {
        Hyper { #[pin] body: Incoming },
        InTask { #[pin] body: tern_h1::ResponseBody<MachineIo, PoolReturn> },
        Backhaul { #[pin] body: tern_backhaul::RecvBody },
    }
}

impl Relayed {
    fn new(from: Source) -> Self {
        Relayed {
            from,
            first: First::None,
        }
    }

    pub(crate) fn backhaul(body: tern_backhaul::RecvBody) -> Self {
        Relayed::new(Source::Backhaul { body })
    }

    /// Reads the first frame ahead, keeping it to be yielded first: the respond
    /// phase learns whether the body broke before any of it came.
    pub(crate) fn poll_first(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BoxError>> {
        if !self.first.is_none() || HttpBody::is_end_stream(&*self) {
            return Poll::Ready(Ok(()));
        }
        match std::task::ready!(self.as_mut().project().from.poll_frame(cx)) {
            Some(Ok(frame)) => {
                *self.project().first = match frame.into_data() {
                    Ok(data) => First::Data(data),
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => First::Trailers(Box::new(trailers)),
                        // A kind of frame http-body may add later: nothing to keep.
                        Err(_) => First::None,
                    },
                };
                Poll::Ready(Ok(()))
            }
            Some(Err(e)) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl HttpBody for Source {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            SourceProj::Hyper { body } => body.poll_frame(cx).map_err(Into::into),
            SourceProj::InTask { body } => body.poll_frame(cx).map_err(Into::into),
            SourceProj::Backhaul { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Hyper { body } => body.is_end_stream(),
            Source::InTask { body } => body.is_end_stream(),
            Source::Backhaul { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Hyper { body } => body.size_hint(),
            Source::InTask { body } => body.size_hint(),
            Source::Backhaul { body } => body.size_hint(),
        }
    }
}

impl HttpBody for Relayed {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(frame) = this.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        this.from.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.from.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.from.size_hint();
        let held = match &self.first {
            First::Data(d) => d.len() as u64,
            _ => 0,
        };
        if held == 0 {
            return rest;
        }
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + held);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

fn hyper_body(body: Incoming) -> Relayed {
    Relayed::new(Source::Hyper { body })
}

impl Proxy {
    /// Sends the request and waits for the response head. The connection comes
    /// back with it while the caller still needs it: a hyper HTTP/1.1 one to pool
    /// or take over, an h2c one to hold; an in-task socket is owned by the body.
    /// `fields`, when given, are the forwarding fields an in-task request's map
    /// lacks, for `tern-h1` to write into its head.
    pub(crate) async fn send(
        &self,
        req: Request<Body>,
        sender: Sender,
        addr: SocketAddr,
        want: Want<'_>,
        fields: Option<&Forwarded<'_>>,
        ticked: bool,
    ) -> Result<(Response<Relayed>, Option<Sender>), ProxyError> {
        let timeout = self.settings.response_header_timeout();
        match sender {
            Sender::H2(mut tx) => {
                let resp = tokio::time::timeout(timeout, tx.send_request(req))
                    .await
                    .map_err(|_| header_timeout(timeout))?
                    .map_err(upstream_error)?;
                Ok((resp.map(hyper_body), Some(Sender::H2(tx))))
            }
            Sender::H1 { mut tx, reused } => {
                let sent = tokio::time::timeout(timeout, tx.try_send_request(req))
                    .await
                    .map_err(|_| header_timeout(timeout))?;
                match sent {
                    Ok(resp) => Ok((resp.map(hyper_body), Some(Sender::H1 { tx, reused }))),
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
                        Ok((resp.map(|body| Relayed::new(Source::InTask { body })), None))
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
            Sender::Backhaul(ready) => Box::pin(self.send_to_peer(req, ready, timeout)).await,
        }
    }

    /// Sends a request to a machine's node: one stream on the shared connection.
    async fn send_to_peer(
        &self,
        req: Request<Body>,
        ready: tern_backhaul::Ready,
        timeout: Duration,
    ) -> Result<(Response<Relayed>, Option<Sender>), ProxyError> {
        let node = ready.node().to_owned();
        let resp = tokio::time::timeout(timeout, ready.send(req))
            .await
            .map_err(|_| header_timeout(timeout))?
            .map_err(|e| backhaul_error(&node, e))?;
        Ok((resp.map(Relayed::backhaul), None))
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

/// Hands an in-task socket back to the pool when its response has been read.
pub(crate) struct PoolReturn {
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

/// A machine's response body that broke before its first byte: malformed
/// (bad chunked framing), or cut short.
#[cold]
pub(crate) fn response_body_error(e: &BoxError) -> ProxyError {
    let malformed = find_cause::<tern_h1::Error>(&**e).is_some_and(tern_h1::Error::is_malformed)
        || find_cause::<hyper::Error>(&**e).is_some_and(hyper::Error::is_parse);
    let code = if malformed {
        ErrorCode::UpstreamBadResponse
    } else {
        ErrorCode::UpstreamReset
    };
    ProxyError::new(
        code,
        format!("the machine's body broke before its first byte: {e}"),
    )
}

#[cold]
pub(crate) fn header_timeout(after: Duration) -> ProxyError {
    ProxyError::new(
        ErrorCode::UpstreamTimeout,
        format!("the machine sent no response head within {after:?}"),
    )
}

#[cold]
pub(crate) fn backhaul_error(node: &str, e: tern_backhaul::BackhaulError) -> ProxyError {
    if let tern_backhaul::BackhaulError::RequestBody(cause) = &e {
        return client_body_error(&**cause);
    }
    let code = if e.not_sent() {
        ErrorCode::BackhaulConnectFailed
    } else {
        ErrorCode::BackhaulReset
    };
    ProxyError::new(code, format!("node {node}: {e}"))
}

/// A client's request body that broke on its way: over the limit, stalled, or
/// (anything else) malformed or cut short. Each is the client's fault.
#[cold]
pub(crate) fn client_body_error(cause: &(dyn std::error::Error + 'static)) -> ProxyError {
    if let Some(limit) = find_cause::<http_body_util::LengthLimitError>(cause) {
        return ProxyError::new(ErrorCode::RequestBodyTooLarge, limit.to_string());
    }
    if let Some(stalled) = find_cause::<crate::body_deadline::BodyTimedOut>(cause) {
        return ProxyError::new(ErrorCode::RequestBodyTimeout, stalled.to_string());
    }
    ProxyError::new(ErrorCode::BadRequestBody, cause.to_string())
}

#[cold]
pub(crate) fn upstream_error(e: hyper::Error) -> ProxyError {
    if find_cause::<http_body_util::LengthLimitError>(&e).is_some()
        || find_cause::<crate::body_deadline::BodyTimedOut>(&e).is_some()
    {
        return client_body_error(&e);
    }
    // The request's body failed as hyper's client read it: the client's body
    // broke (bad chunked framing, cut short), which is the client's fault. The
    // machine saw an unfinished request, which it must not act on.
    let client_body = e
        .source()
        .and_then(|cause| find_cause::<hyper::Error>(cause));
    if let (true, Some(broken)) = (e.is_user(), client_body) {
        return ProxyError::new(ErrorCode::BadRequestBody, broken.to_string());
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
