//! Tunnels: connections that stop being HTTP. An upgrade the machine accepted
//! (WebSocket and the like) joins the client and the machine; across the
//! backhaul, an upgrade or a raw TCP connection rides a CONNECT stream, which the
//! machine's node joins to the machine. Each runs in a task of its own under the
//! spin watchdog, holding its load unit for as long as it lasts.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{HeaderMap, HeaderValue, CONNECTION, HOST, UPGRADE};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::TokioIo;
use tern_backhaul::{fields, Tunnel};
use tern_catalog::model::ProxyProto;
use tern_catalog::{Pick, Snapshot};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::binding::Unit;
use crate::body::{full, Body, BoxError, RequestBody};
use crate::connect::admit_error;
use crate::context::{ConnInfo, Proxy};
use crate::error::{ErrorCode, ProxyError};
use crate::headers;
use crate::respond::{Answer, Release};
use crate::rewrite::{strip_backhaul_fields, to_peer, Prepared};
use crate::route::{Route, Target};
use crate::send::{backhaul_error, header_timeout, upstream_error, Relayed};
use crate::upstream::{Sender, Want};
use crate::ws_goodbye::{goodbye_watch, splice_websocket};

impl Proxy {
    /// Joins two ends once both are there, and copies both ways (the machine
    /// first getting `preamble`) until both directions end. `hold` (the load unit,
    /// a connection) lives as long as the tunnel. A WebSocket to this node's own
    /// machine comes with the machine's `leaving`: when the machine is stopped or
    /// suspended, the client gets a Close frame (1001) rather than a reset.
    pub(crate) fn spawn_tunnel<F, A, B, H>(
        &self,
        machine: String,
        ends: F,
        hold: H,
        leaving: Option<watch::Receiver<u64>>,
    ) where
        F: Future<Output = Result<(A, B), hyper::Error>> + Send + 'static,
        A: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        B: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        H: Send + 'static,
    {
        let joined = async move {
            let (a, b) = ends.await.map_err(|e| e.to_string())?;
            Ok::<_, String>((TokioIo::new(a), TokioIo::new(b)))
        };
        self.spawn_splice(machine, joined, Vec::new(), hold, leaving);
    }

    /// Like `spawn_tunnel`, for ends that are tokio streams already.
    pub(crate) fn spawn_splice<F, A, B, H>(
        &self,
        machine: String,
        ends: F,
        preamble: Vec<u8>,
        hold: H,
        leaving: Option<watch::Receiver<u64>>,
    ) where
        F: Future<Output = Result<(A, B), String>> + Send + 'static,
        A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Send + 'static,
    {
        let label = machine.clone();
        self.spawn_watched("tunnel", label, move |counted| async move {
            let _hold = hold;
            let (client, machine_side) = match ends.await {
                Ok(e) => e,
                Err(e) => {
                    tracing::info!(%machine, error = %e, "tunnel failed to open");
                    return;
                }
            };
            let (mut client, mut machine_side) = match &counted {
                Some(p) => (Either::Left(p.io(client)), Either::Left(p.io(machine_side))),
                None => (Either::Right(client), Either::Right(machine_side)),
            };
            let ended = match leaving {
                Some(leaving) => splice_websocket(client, machine_side, leaving).await,
                None => tern_tcp::splice(&mut client, &mut machine_side, &preamble)
                    .await
                    .map(drop),
            };
            if let Err(e) = ended {
                tracing::debug!(%machine, error = %e, "tunnel ended");
            }
        });
    }

    /// Runs a connection's work in a task of its own, as every connection runs:
    /// under the spin watchdog (`work` gets the probe, to count its sockets'
    /// bytes as progress), and tracked, so that a drain waits for it up to its
    /// deadline.
    pub(crate) fn spawn_watched<W, F>(&self, state: &'static str, machine: String, work: W)
    where
        W: FnOnce(Option<pollwatch::Probe>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let probe = self.watchdog.as_ref().map(|d| {
            let p = d.register();
            p.set("state", state);
            p.set("machine", machine);
            p
        });
        let task = work(probe.clone());
        self.tasks.spawn(async move {
            match probe {
                Some(p) => {
                    if let Err(spun) = p.watch(task).await {
                        tracing::warn!(%spun, "{state} cut by the spin watchdog");
                    }
                }
                None => task.await,
            }
        });
    }

    /// At the edge: an upgrade for another node's machine, as a CONNECT stream
    /// that carries the original request's head.
    pub(crate) async fn upgrade_via_peer(
        &self,
        mut prepared: Prepared<'_>,
        conn: &ConnInfo,
        route: &Route,
        pick: &Pick,
        unit: Unit,
        sender: Sender,
    ) -> Result<Answer, ProxyError> {
        let (Sender::Backhaul(ready), Some(req), Some(client_side)) = (
            sender,
            prepared.take_request(),
            prepared.client_upgrade.take(),
        ) else {
            return Err(ProxyError::new(ErrorCode::BadRequest, "not an upgrade"));
        };
        let node = ready.node().to_owned();
        let forwarded = prepared.forwarded(conn, self.region.as_ref());
        let mut connect = upgrade_connect(req, pick, prepared.internal_port(), &route.host)?;
        headers::add_forwarding(connect.headers_mut(), &forwarded);
        let timeout = self.settings.response_header_timeout();
        let tunnel = tokio::time::timeout(timeout, ready.tunnel(connect))
            .await
            .map_err(|_| header_timeout(timeout))?
            .map_err(|e| backhaul_error(&node, e))?;
        let (head, stream) = match tunnel {
            Tunnel::Refused(resp) => {
                let resp = resp.map(Relayed::backhaul);
                return Ok(Answer::Relayed(resp, Release::unit(unit)));
            }
            Tunnel::Open(head, stream) => (head, stream),
        };
        let (mut parts, ()) = head.into_parts();
        let status = parts
            .headers
            .get(&fields::STATUS)
            .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        let protocol = parts.headers.get(&fields::UPGRADE).cloned();
        strip_backhaul_fields(&mut parts.headers);
        parts.status = status;
        parts.version = Version::HTTP_11;
        parts.headers.append(
            http::header::VIA,
            headers::via_value(Version::HTTP_2).clone(),
        );
        if status != StatusCode::SWITCHING_PROTOCOLS {
            // The machine answered without switching: its answer is the stream.
            let body = stream_body(stream, unit);
            return Ok(Answer::Local(Response::from_parts(parts, body)));
        }
        if let Some(p) = protocol {
            parts.headers.insert(UPGRADE, p);
        }
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        let ends = async move {
            let client = client_side.await.map_err(|e| e.to_string())?;
            Ok::<_, String>((TokioIo::new(client), stream))
        };
        // The machine's node says the goodbye, if there is one to say.
        self.spawn_splice(pick.machine.def.id.clone(), ends, Vec::new(), unit, None);
        Ok(Answer::Local(Response::from_parts(
            parts,
            full(Bytes::new()),
        )))
    }

    /// On the machine's node: a peer's CONNECT, for a raw TCP connection or an
    /// upgrade, joined to the machine it names.
    pub(crate) async fn serve_peer_tunnel(
        &self,
        mut req: Request<RequestBody>,
        conn: &ConnInfo,
        snapshot: &Snapshot,
        route: &Route,
    ) -> Result<Answer, ProxyError> {
        let Target::Machine(id) = &route.target else {
            return Err(ProxyError::new(
                ErrorCode::UnknownPeer,
                "a CONNECT must name its machine",
            ));
        };
        let peer_side = hyper::upgrade::on(&mut req);
        let (pick, guard) = snapshot
            .admit_local(
                &route.app,
                &route.service,
                id,
                self.settings.queue_timeout(),
            )
            .await
            .map_err(admit_error)?;
        conn.note_machine(&pick.machine);
        if req.headers().contains_key(&fields::UPGRADE) {
            return self
                .upgrade_for_peer(req, route, &pick, guard, peer_side)
                .await;
        }
        let limit = self.settings.connect_timeout();
        let machine = match tokio::time::timeout(limit, TcpStream::connect(pick.addr())).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(ProxyError::new(
                    ErrorCode::UpstreamConnectFailed,
                    format!("connect to {}: {e}", pick.addr()),
                ))
            }
            Err(_) => {
                return Err(ProxyError::new(
                    ErrorCode::UpstreamConnectTimeout,
                    format!("connect to {}: no answer within {limit:?}", pick.addr()),
                ))
            }
        };
        let _ = machine.set_nodelay(true);
        let preamble = proxy_preamble(req.headers());
        let ends = async move {
            let peer = peer_side.await.map_err(|e| e.to_string())?;
            Ok::<_, String>((TokioIo::new(peer), machine))
        };
        self.spawn_splice(pick.machine.def.id.clone(), ends, preamble, guard, None);
        Ok(Answer::Local(Response::new(full(Bytes::new()))))
    }

    /// A peer's upgrade: the original request goes to the machine, and its answer
    /// comes back in the CONNECT's; if it switched, the two join.
    async fn upgrade_for_peer(
        &self,
        req: Request<RequestBody>,
        route: &Route,
        pick: &Pick,
        guard: tern_balance::LoadGuard,
        peer_side: hyper::upgrade::OnUpgrade,
    ) -> Result<Answer, ProxyError> {
        let (parts, _) = req.into_parts();
        let outgoing = upgrade_request(parts.headers, &route.host)?;
        let sender = self
            .upstreams
            .checkout(pick.addr(), Want::H1 { upgrade: true })
            .await
            .map_err(|e| ProxyError::new(ErrorCode::UpstreamConnectFailed, e.to_string()))?;
        let Sender::H1 { mut tx, .. } = sender else {
            return Err(ProxyError::new(
                ErrorCode::UpstreamConnectFailed,
                "no HTTP/1.1 connection",
            ));
        };
        let timeout = self.settings.response_header_timeout();
        let mut resp = tokio::time::timeout(timeout, tx.send_request(outgoing))
            .await
            .map_err(|_| header_timeout(timeout))?
            .map_err(upstream_error)?;
        let status = resp.status();
        let switched = status == StatusCode::SWITCHING_PROTOCOLS;
        let machine_side = switched.then(|| hyper::upgrade::on(&mut resp));
        let (mut head, body) = resp.into_parts();
        let protocol = head.headers.get(UPGRADE).cloned();
        let leaving = goodbye_watch(pick, protocol.as_ref());
        headers::strip_hop_by_hop(&mut head.headers, false);
        head.headers
            .insert(fields::STATUS.clone(), HeaderValue::from(status.as_u16()));
        if let Some(p) = protocol {
            head.headers.insert(fields::UPGRADE.clone(), p);
        }
        head.status = StatusCode::OK;
        head.version = Version::HTTP_2;
        let machine = pick.machine.def.id.clone();
        match machine_side {
            Some(machine_side) => {
                let ends = async move { tokio::try_join!(peer_side, machine_side) };
                self.spawn_tunnel(machine, ends, (guard, tx), leaving);
            }
            None => {
                // Not switched: the machine's answer is written into the stream.
                self.spawn_watched("tunnel-answer", machine, move |counted| async move {
                    let _hold = (guard, tx);
                    let Ok(peer) = peer_side.await else { return };
                    let mut peer = match &counted {
                        Some(p) => Either::Left(p.io(TokioIo::new(peer))),
                        None => Either::Right(TokioIo::new(peer)),
                    };
                    let mut body = body;
                    while let Some(Ok(frame)) = body.frame().await {
                        if let Ok(data) = frame.into_data() {
                            if peer.write_all(&data).await.is_err() {
                                return;
                            }
                        }
                    }
                    let _ = peer.shutdown().await;
                });
            }
        }
        Ok(Answer::Local(Response::from_parts(
            head,
            full(Bytes::new()),
        )))
    }
}

impl Release {
    /// A release that holds only the load unit.
    pub(crate) fn unit(unit: Unit) -> Self {
        Release::new(unit, None)
    }
}

/// The CONNECT that carries an upgrade to a peer: HTTP/2 forbids `Connection`
/// and `Upgrade`, so the protocol, method and target travel in backhaul fields.
fn upgrade_connect(
    req: Request<Body>,
    pick: &Pick,
    port: u16,
    host: &HeaderValue,
) -> Result<Request<()>, ProxyError> {
    let (parts, _) = req.into_parts();
    let mut h = parts.headers;
    let protocol = h.remove(UPGRADE);
    h.remove(CONNECTION);
    to_peer(&mut h, pick, port)?;
    h.insert(HOST, host.clone());
    if let Some(p) = protocol {
        h.insert(fields::UPGRADE.clone(), p);
    }
    if let Ok(m) = HeaderValue::from_str(parts.method.as_str()) {
        h.insert(fields::METHOD.clone(), m);
    }
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if let Ok(t) = HeaderValue::from_str(target) {
        h.insert(fields::TARGET.clone(), t);
    }
    let authority: Uri = pick
        .addr()
        .to_string()
        .parse()
        .map_err(|_| ProxyError::new(ErrorCode::BadRequest, "bad machine address"))?;
    let mut connect = Request::new(());
    *connect.method_mut() = Method::CONNECT;
    *connect.uri_mut() = authority;
    *connect.version_mut() = Version::HTTP_2;
    *connect.headers_mut() = h;
    Ok(connect)
}

/// The machine's side of a peer's upgrade: the original request, rebuilt.
fn upgrade_request(mut h: HeaderMap, host: &HeaderValue) -> Result<Request<Body>, ProxyError> {
    let field = |h: &HeaderMap, n| {
        h.get(n)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let method = field(&h, &fields::METHOD).unwrap_or_else(|| "GET".into());
    let target = field(&h, &fields::TARGET).unwrap_or_else(|| "/".into());
    let protocol = h.get(&fields::UPGRADE).cloned();
    strip_backhaul_fields(&mut h);
    h.insert(HOST, host.clone());
    if let Some(p) = protocol {
        h.insert(UPGRADE, p);
    }
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    let mut req = Request::new(Body::default());
    *req.method_mut() = Method::from_bytes(method.as_bytes())
        .map_err(|_| ProxyError::new(ErrorCode::BadRequest, "bad upgrade method"))?;
    *req.uri_mut() = target
        .parse()
        .map_err(|_| ProxyError::new(ErrorCode::BadRequest, "bad upgrade target"))?;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = h;
    Ok(req)
}

/// The PROXY protocol header a peer's CONNECT asks the machine to get.
fn proxy_preamble(h: &HeaderMap) -> Vec<u8> {
    let field = |n| h.get(n).and_then(|v: &HeaderValue| v.to_str().ok());
    let version = match field(&fields::PROXY_PROTO) {
        Some("v1") => ProxyProto::V1,
        Some("v2") => ProxyProto::V2,
        _ => return Vec::new(),
    };
    let addr = |n| field(n).and_then(|v| v.parse::<SocketAddr>().ok());
    match (addr(&fields::CLIENT), addr(&fields::LOCAL)) {
        (Some(client), Some(local)) => tern_tcp::proxy_header(version, client, local),
        _ => Vec::new(),
    }
}

/// A response body read from a stream until it ends, holding `unit` till then.
fn stream_body<S>(stream: S, unit: Unit) -> Body
where
    S: AsyncRead + Send + Unpin + 'static,
{
    let frames = tokio_util::io::ReaderStream::new(stream)
        .map_ok(move |data| {
            let _held = &unit;
            http_body::Frame::data(data)
        })
        .map_err(|e| Box::new(e) as BoxError);
    StreamBody::new(frames).boxed_unsync()
}

/// Two kinds of stream as one type.
type Either<A, B> = tokio_util::either::Either<A, B>;
