//! One request's way through Tern, in the named phases of LIFECYCLE.md:
//! shed → challenge → route → redirect → admit → rewrite → buffer → wake → choose → connect →
//! send → respond, with the retry step deciding, in one place, whether a failed attempt
//! may go to the next machine. The phases live in their own modules (`route`,
//! `rewrite`, `buffer`, `connect`, `send`, `respond`, `tunnel`); this one runs
//! them in order.

use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use tern_catalog::{AppEntry, Pick, Snapshot, Woken};

use crate::acme;
use crate::body::{Body, Guarded, OnEnd, RequestBody};
use crate::buffer;
use crate::connect::REFUSED_BY_PEER;
use crate::context::{ConnInfo, Proxy};
use crate::error::{ErrorCode, ProxyError};
use crate::headers;
use crate::respond::{self, Answer};
use crate::rewrite::{LengthFields, Prepared};
use crate::route::{self, Route};
use crate::wake::{self, Wake};

/// What a finished request is labelled with in metrics and logs.
struct Outcome {
    /// The app the request was routed to, once known.
    app: Option<Arc<AppEntry>>,
    code: &'static str,
    /// The machine start this request waited for, if any.
    woken: Option<Woken>,
}

impl Outcome {
    fn app_name(&self) -> &str {
        self.app.as_deref().map_or("", |a| a.name.as_str())
    }
}

impl Proxy {
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
        if self.test_hooks && req.uri().path() == "/__tern_test/spin" {
            std::future::poll_fn(|cx| {
                cx.waker().wake_by_ref();
                std::task::Poll::<()>::Pending
            })
            .await;
        }
        let started = Instant::now();
        let request_id = match &conn.from_node {
            // The edge's id, which the machine and both nodes' logs share.
            Some(_) => peer_request_id(&req),
            None => headers::request_id(),
        };
        let method = req.method().clone();
        let mut outcome = Outcome {
            app: None,
            code: "ok",
            woken: None,
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
                let refusal = conn.from_node.is_some() && REFUSED_BY_PEER.contains(&e.code);
                // An overloaded node sheds the connection's next requests too.
                let close = e.code == ErrorCode::Overloaded && !conn.is_multiplexed();
                let mut resp = e.into_response();
                if close {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                if refusal {
                    resp.headers_mut().insert(
                        tern_backhaul::fields::REFUSED.clone(),
                        HeaderValue::from_static("1"),
                    );
                }
                resp.map(|b| Guarded::new(b, on_end).boxed_unsync())
            }
        };
        resp.headers_mut()
            .insert(headers::TERN_REQUEST_ID.clone(), request_id.clone());
        if let Some(start) = outcome.woken.as_ref().and_then(wake::start_header) {
            resp.headers_mut()
                .insert(headers::TERN_MACHINE_START.clone(), start);
        }
        if self
            .handover_drain
            .load(std::sync::atomic::Ordering::Relaxed)
            && !conn.is_multiplexed()
            && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
        {
            // An upgrade's drain: the client reconnects, to the new process.
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
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
        req: Request<RequestBody>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
        outcome: &mut Outcome,
    ) -> Result<Answer, ProxyError> {
        // shed: past the memory budget, no new work at all.
        if let Err(shed) = self.overload.admit_request() {
            tern_overload::count_shed(shed, "request");
            return Err(ProxyError::new(ErrorCode::Overloaded, shed.to_string()));
        }
        // challenge: an ACME server validating a name this node is ordering.
        if let Some(answer) = self
            .acme_challenges
            .as_deref()
            .and_then(|c| acme::http01_answer(&req, conn, c))
        {
            return Ok(Answer::Local(answer));
        }
        let snapshot = self.catalog.snapshot();
        // route: the client's host names the app (at the edge), or a peer names
        // the machine (over the backhaul).
        let route = match &conn.from_node {
            None => route::at_edge(&snapshot, &req, conn)?,
            Some(node) => route::from_peer(&snapshot, &req, node)?,
        };
        outcome.app = Some(Arc::clone(&route.app));
        conn.note_app(&route.app);

        // redirect: force_https answers before anything reaches a machine.
        if let Some(redirect) = route::redirect(&req, conn, &route) {
            return Ok(Answer::Local(redirect));
        }
        // admit: refuse a body that is declared too large before reading any of it.
        let lengths = admit_length(&req, &route.app)?;
        if conn.from_node.is_some() && req.method() == Method::CONNECT {
            // A raw TCP connection or an upgrade, which a peer hands over whole,
            // to a machine that may need starting first.
            if let Wake::Waited(w) = self.wake(&snapshot, &route).await? {
                outcome.woken = Some(w);
            }
            return Box::pin(self.serve_peer_tunnel(req, conn, &snapshot, &route)).await;
        }
        // rewrite: hop-by-hop out, spoofed Tern-* out, forwarding fields in.
        let mut prepared = self.rewrite(req, conn, &route, request_id, lengths);
        // buffer: the body's start is read before any machine is asked for.
        let limit = self.settings.request_buffer();
        if let (Some(body), 1..) = (prepared.body_to_buffer(), limit) {
            *body = buffer::buffer(std::mem::take(body), limit, &self.metrics.buffering).await?;
        }
        // wake: an app with no started machine that has room gets one started.
        let via = match self.wake(&snapshot, &route).await? {
            Wake::Nothing => None,
            Wake::Waited(w) => {
                outcome.woken = Some(w);
                None
            }
            Wake::Via(pick) => Some(pick),
        };
        self.forward(prepared, conn, &snapshot, &route, via).await
    }

    /// choose, connect, send and respond, with the retry step between them: a
    /// request that reached no machine may go to the next best one.
    async fn forward(
        &self,
        mut prepared: Prepared<'_>,
        conn: &ConnInfo,
        snapshot: &Snapshot,
        route: &Route,
        mut via: Option<Pick>,
    ) -> Result<Answer, ProxyError> {
        let mut tried: Vec<String> = Vec::new();
        loop {
            let want = prepared.want(conn);
            let (pick, unit, sender) = match via.take() {
                Some(pick) => self.connect_via(pick, want).await?,
                None => {
                    self.connect(snapshot, route, conn, want, &mut tried)
                        .await?
                }
            };
            conn.note_machine(&pick.machine);
            if prepared.client_upgrade.is_some() && sender.is_backhaul() {
                return Box::pin(self.upgrade_via_peer(prepared, conn, route, &pick, unit, sender))
                    .await;
            }
            let replay = prepared.replay_head(&sender);
            let req = self.address(&mut prepared, conn, route, &pick, &sender)?;
            let fields = prepared.own_fields(&sender, conn, self.region.as_ref());
            let ticked = conn.activity.is_some() && !conn.is_multiplexed();
            let want = prepared.want(conn);
            let sent = self
                .send(req, sender, pick.addr(), want, fields.as_ref(), ticked)
                .await;
            // retry: a bodyless request that crossed the backhaul and reached no
            // machine, or (idempotent) got no answer.
            if let Some(head) = replay {
                if self.retry(&sent, head.method(), &pick, &mut tried, snapshot, route) {
                    prepared.restore(head);
                    continue;
                }
            }
            let (mut resp, sender) = sent?;
            respond::first_frame(resp.body_mut()).await?;
            return self.respond(resp, sender, &pick, unit, &mut prepared);
        }
    }
}

/// For a request from a peer: the edge's request id, so that the machine and both
/// nodes' logs name it alike.
fn peer_request_id<B>(req: &Request<B>) -> HeaderValue {
    req.headers()
        .get(&headers::TERN_REQUEST_ID)
        .cloned()
        .unwrap_or_else(headers::request_id)
}

/// The admit phase for the body: Content-Length fields that disagree are
/// refused (RFC 9110, 8.6; those that agree become one in the rewrite), and a
/// declared length over the app's limit is refused before a byte is read.
fn admit_length<B>(req: &Request<B>, app: &AppEntry) -> Result<LengthFields, ProxyError> {
    let limit = app.max_request_body;
    // Most requests have no length at all: one lookup tells, before a walk.
    if !req.headers().contains_key(CONTENT_LENGTH) {
        return Ok(LengthFields::AtMostOne);
    }
    let mut lengths = req.headers().get_all(CONTENT_LENGTH).iter();
    let declared = lengths.next().map(length);
    let mut fields = LengthFields::AtMostOne;
    for other in lengths {
        if length(other) != declared.flatten() || declared.flatten().is_none() {
            return Err(ProxyError::new(
                ErrorCode::BadRequest,
                "the request's Content-Length fields disagree",
            ));
        }
        fields = LengthFields::Several;
    }
    match declared.flatten() {
        Some(len) if len > limit => Err(ProxyError::new(
            ErrorCode::RequestBodyTooLarge,
            format!("body of {len} bytes exceeds the limit of {limit}"),
        )),
        _ => Ok(fields),
    }
}

fn length(v: &HeaderValue) -> Option<u64> {
    v.to_str().ok()?.parse().ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering};

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
