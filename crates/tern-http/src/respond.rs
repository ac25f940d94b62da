//! The respond phase: the machine's response head is relayed, and the load unit
//! (and a pooled connection) is held until its body is done; a switched protocol
//! becomes a tunnel.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::{Response, StatusCode};
use tern_catalog::{Peer, Pick};

use crate::binding::Unit;
use crate::body::{full, Body, OnEnd};
use crate::context::Proxy;
use crate::error::{ErrorCode, ProxyError};
use crate::headers;
use crate::rewrite::{strip_backhaul_fields, Prepared};
use crate::send::Relayed;
use crate::upstream::{Sender, Upstreams};
use crate::ws_goodbye::goodbye_watch;

/// How long the respond phase waits for a body's first frame before it relays
/// the head without it. A machine that closes right after its head is found out
/// within it, while nothing has reached the client and a coded 502 can still be
/// told; a body that takes longer (a stream of events) gets its head now.
const FIRST_FRAME_WAIT: Duration = Duration::from_millis(100);

/// Reads ahead the first frame of the machine's body, waiting up to
/// `FIRST_FRAME_WAIT`: a body that breaks before its first byte is the
/// machine's failure, answered with a coded 502 (`upstream_reset`, or
/// `upstream_bad_response` for bad framing) rather than a head with nothing
/// behind it.
pub(crate) async fn first_frame(body: &mut Relayed) -> Result<(), ProxyError> {
    let mut body = Pin::new(body);
    // Most bodies come with their head: no timer is set for them.
    let at_once = poll_fn(|cx| Poll::Ready(body.as_mut().poll_first(cx))).await;
    let read = match at_once {
        Poll::Ready(read) => read,
        Poll::Pending => {
            let waited = poll_fn(|cx| body.as_mut().poll_first(cx));
            match tokio::time::timeout(FIRST_FRAME_WAIT, waited).await {
                Ok(read) => read,
                Err(_) => return Ok(()),
            }
        }
    };
    read.map_err(|e| crate::send::response_body_error(&e))
}

/// What `proxy` answers with.
// Made once per request and unpacked at once: boxing the larger variant would
// cost an allocation per relayed response to save a move.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Answer {
    /// The machine's response; its body still has to be relayed.
    Relayed(Response<Relayed>, Release),
    /// An answer made by Tern itself (a redirect, a switched protocol).
    Local(Response<Body>),
}

/// Gives the load unit back and the connection to the pool when the body is done.
pub(crate) struct Release {
    _guard: Unit,
    pool: Option<(
        Arc<Upstreams>,
        SocketAddr,
        hyper::client::conn::http1::SendRequest<Body>,
    )>,
}

impl Release {
    pub(crate) fn new(
        unit: Unit,
        pool: Option<(
            Arc<Upstreams>,
            SocketAddr,
            hyper::client::conn::http1::SendRequest<Body>,
        )>,
    ) -> Self {
        Release { _guard: unit, pool }
    }
}

impl OnEnd for Release {
    fn on_end(self, complete: bool) {
        if let (true, Some((pool, addr, tx))) = (complete, self.pool) {
            pool.checkin(addr, tx);
        }
    }
}

impl Proxy {
    /// Relays the head; the body is relayed by whoever polls it.
    pub(crate) fn respond(
        &self,
        mut resp: Response<Relayed>,
        sender: Option<Sender>,
        pick: &Pick,
        unit: Unit,
        prepared: &mut Prepared<'_>,
    ) -> Result<Answer, ProxyError> {
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(resp.headers_mut(), switching && prepared.upgrade);
        // The backhaul's fields end where they were meant to: a machine's answer
        // to a peer's request never carries them, nor does a peer's to a client.
        if !prepared.forwards() || matches!(pick.peer, Peer::Backhaul { .. }) {
            strip_backhaul_fields(resp.headers_mut());
        }
        let via = headers::via_value(resp.version()).clone();
        resp.headers_mut().append(http::header::VIA, via);

        if switching {
            let Some(client_upgrade) = prepared.client_upgrade.take() else {
                return Err(ProxyError::new(
                    ErrorCode::UpstreamBadResponse,
                    "the machine switched protocols without being asked to",
                ));
            };
            let machine_upgrade = hyper::upgrade::on(&mut resp);
            let machine = pick.machine.def.id.clone();
            let leaving = goodbye_watch(pick, resp.headers().get(http::header::UPGRADE));
            self.spawn_tunnel(
                machine,
                async move {
                    let (c, m) = tokio::try_join!(client_upgrade, machine_upgrade)?;
                    Ok((c, m))
                },
                (unit, sender),
                leaving,
            );
            let (parts, _) = resp.into_parts();
            return Ok(Answer::Local(Response::from_parts(
                parts,
                full(bytes::Bytes::new()),
            )));
        }

        let pool = match sender {
            Some(Sender::H1 { tx, .. }) => Some((Arc::clone(&self.upstreams), pick.addr(), tx)),
            // An in-task response body hands its socket back itself.
            _ => None,
        };
        let hook = Release::new(unit, pool);
        Ok(Answer::Relayed(resp, hook))
    }
}
