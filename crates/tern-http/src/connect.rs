//! The choose and connect phases, and the retry step: which machine takes the
//! request, a connection to it (directly, or to its node over the backhaul), and
//! whether a failed attempt may go to the next machine. A request moves on only
//! when it reached no machine: its connect failed, or a peer refused it before
//! passing it on.

use std::sync::Arc;

use tern_catalog::model::ConcurrencyKind;
use tern_catalog::{AdmitError, AttemptError, Peer, Pick, Snapshot};

use crate::binding::Unit;
use crate::context::{ConnInfo, Proxy};
use crate::error::{ErrorCode, ProxyError};
use crate::route::{Route, Target};
use crate::send::Relayed;
use crate::upstream::{ConnectError, Sender, Want};
use tern_backhaul::fields;

/// A node's own answers to a peer that mean the request reached no machine: the
/// node marks them (`Tern-Backhaul-Refused`) so that the edge may try another.
/// A machine's answer never carries the mark (its node removes it), so a machine
/// cannot make an edge replay a request.
pub(crate) const REFUSED_BY_PEER: [ErrorCode; 4] = [
    ErrorCode::MachineUnavailable,
    ErrorCode::Overloaded,
    ErrorCode::UpstreamConnectFailed,
    ErrorCode::UpstreamConnectTimeout,
];

impl Proxy {
    /// Takes a load unit on the best machine not yet in `tried` and connects to it;
    /// a failed connect moves on, up to `connect_attempts` machines in all.
    pub(crate) async fn connect(
        &self,
        snapshot: &Snapshot,
        route: &Route,
        conn: &ConnInfo,
        want: Want<'_>,
        tried: &mut Vec<String>,
    ) -> Result<(Pick, Unit, Sender), ProxyError> {
        if let Target::Machine(id) = &route.target {
            return self.connect_named(snapshot, route, id, want).await;
        }
        let (app, service) = (&route.app, &route.service);
        let port = service.def.internal_port;
        // Under `connections`, a unit is a connection the machine carries. An
        // HTTP/1.1 client's requests take turns on one, so the client connection
        // holds one unit for its life; an HTTP/2 client's streams each need their
        // own, so each stream takes a unit as a request would.
        let per_connection =
            service.def.concurrency.kind == ConcurrencyKind::Connections && !conn.is_multiplexed();
        let mut last_error: Option<ConnectError> = None;

        if per_connection {
            if let Some((pick, unit)) = conn.bindings.get(&app.name, port) {
                let id = &pick.machine.def.id;
                let still_eligible = !tried.contains(id)
                    && snapshot
                        .eligible(app, service)
                        .iter()
                        .any(|p| &p.machine.def.id == id);
                if still_eligible {
                    match self.open(&pick, want).await {
                        Ok(sender) => return Ok((pick, unit, sender)),
                        Err(e) => {
                            self.count_connect_error(&app.name, &pick, &e);
                            tried.push(id.clone());
                            last_error = Some(e);
                        }
                    }
                }
                conn.bindings.unbind(&app.name, port);
            }
        }

        let attempts = self.settings.connect_attempts();
        let opened = snapshot
            .connect_best(
                app,
                service,
                tried,
                attempts,
                self.settings.queue_timeout(),
                |pick| async move {
                    let opened = self.open(&pick, want).await;
                    if let Err(e) = &opened {
                        self.count_connect_error(&app.name, &pick, e);
                    }
                    opened
                },
            )
            .await;
        match opened {
            Ok((pick, guard, sender)) => {
                let unit = Arc::new(guard);
                if per_connection {
                    conn.bindings
                        .bind(&app.name, port, pick.clone(), Arc::clone(&unit));
                }
                Ok((pick, unit, sender))
            }
            Err(AttemptError::Admit(AdmitError::NoHealthyMachine { .. }))
                if last_error.is_some() =>
            {
                Err(connect_failed(last_error, tried))
            }
            Err(AttemptError::Admit(e)) => Err(admit_error(e)),
            Err(AttemptError::Connect(e)) => Err(connect_failed(Some(e), tried)),
        }
    }

    /// A peer's request: this node's own machine that it named, under the
    /// machine's hard limit, which holds for traffic from every edge.
    async fn connect_named(
        &self,
        snapshot: &Snapshot,
        route: &Route,
        id: &str,
        want: Want<'_>,
    ) -> Result<(Pick, Unit, Sender), ProxyError> {
        let (pick, guard) = snapshot
            .admit_local(
                &route.app,
                &route.service,
                id,
                self.settings.queue_timeout(),
            )
            .await
            .map_err(admit_error)?;
        match self.open(&pick, want).await {
            Ok(sender) => Ok((pick, Arc::new(guard), sender)),
            Err(e) => {
                self.count_connect_error(&route.app.name, &pick, &e);
                Err(connect_failed(Some(e), &[id.to_owned()]))
            }
        }
    }

    /// The wake phase's choice: another node's machine that is not up, which its
    /// node starts when the request reaches it.
    pub(crate) async fn connect_via(
        &self,
        pick: Pick,
        want: Want<'_>,
    ) -> Result<(Pick, Unit, Sender), ProxyError> {
        let app = pick.machine.def.app.clone();
        let Some(guard) = pick.slot.load.try_acquire(pick.slot.limits.hard) else {
            return Err(admit_error(AdmitError::MachineUnavailable {
                app,
                machine: pick.machine.def.id.clone(),
            }));
        };
        match self.open(&pick, want).await {
            Ok(sender) => Ok((pick, Arc::new(guard), sender)),
            Err(e) => {
                self.count_connect_error(&app, &pick, &e);
                let id = pick.machine.def.id.clone();
                Err(connect_failed(Some(e), &[id]))
            }
        }
    }

    /// A connection for `want` to the chosen machine: pooled or new, to the
    /// machine itself or to its node's backhaul.
    pub(crate) async fn open(&self, pick: &Pick, want: Want<'_>) -> Result<Sender, ConnectError> {
        match &pick.peer {
            Peer::Local(addr) => self.upstreams.checkout(*addr, want).await,
            Peer::Backhaul { node, .. } => {
                let Some(backhaul) = &self.backhaul else {
                    return Err(ConnectError::NoBackhaul(node.def.id.clone()));
                };
                // Boxed: rare next to local requests, and its future is large.
                Box::pin(backhaul.ready(node))
                    .await
                    .map(Sender::Backhaul)
                    .map_err(ConnectError::Backhaul)
            }
        }
    }

    /// The retry step, for a request without a body that crossed the backhaul:
    /// it goes to the next best machine if it reached none (the peer could not
    /// take the stream, or refused it before passing it on) or, for an
    /// idempotent method, if the backhaul broke before any answer came (RFC 9110,
    /// 9.2.2; nginx's `proxy_next_upstream error`) — as when the peer dies with
    /// the request on its way. An attempt must be left, and another machine able
    /// to take it; otherwise the answer stands.
    pub(crate) fn retry(
        &self,
        sent: &Result<(http::Response<Relayed>, Option<Sender>), ProxyError>,
        method: &http::Method,
        pick: &Pick,
        tried: &mut Vec<String>,
        snapshot: &Snapshot,
        route: &Route,
    ) -> bool {
        let may_resend = match sent {
            Ok((resp, _)) => resp.headers().contains_key(&fields::REFUSED),
            Err(e) => {
                e.code == ErrorCode::BackhaulConnectFailed
                    || (e.code == ErrorCode::BackhaulReset && method.is_idempotent())
            }
        };
        if !may_resend {
            return false;
        }
        tried.push(pick.machine.def.id.clone());
        let again = tried.len() < self.settings.connect_attempts().max(1)
            && snapshot.any_eligible(&route.app, &route.service, tried);
        if again {
            tracing::info!(machine = %pick.machine.def.id, "the request got no answer through its node; trying the next machine");
        }
        again
    }

    #[cold]
    fn count_connect_error(&self, app: &str, pick: &Pick, e: &ConnectError) {
        tracing::info!(machine = %pick.machine.def.id, error = %e, "connect failed, trying the next machine");
        metrics::counter!("tern_upstream_connect_errors_total", "app" => app.to_owned(), "machine" => pick.machine.def.id.clone())
            .increment(1);
    }
}

#[cold]
pub(crate) fn admit_error(e: AdmitError) -> ProxyError {
    let code = match e {
        AdmitError::NoHealthyMachine { .. } => ErrorCode::NoHealthyMachine,
        AdmitError::QueueFull { .. } => ErrorCode::QueueFull,
        AdmitError::QueueTimeout { .. } => ErrorCode::QueueTimeout,
        AdmitError::MachineUnavailable { .. } => ErrorCode::MachineUnavailable,
    };
    ProxyError::new(code, e.to_string())
}

#[cold]
fn connect_failed(last: Option<ConnectError>, tried: &[String]) -> ProxyError {
    let code = match &last {
        Some(ConnectError::Timeout { .. }) => ErrorCode::UpstreamConnectTimeout,
        Some(ConnectError::Backhaul(_) | ConnectError::NoBackhaul(_)) => {
            ErrorCode::BackhaulConnectFailed
        }
        _ => ErrorCode::UpstreamConnectFailed,
    };
    let detail = match last {
        Some(e) => format!("tried {}: {e}", tried.join(", ")),
        None => "no machine could be reached".to_owned(),
    };
    ProxyError::new(code, detail)
}
