//! A raw TCP connection (plain or after TLS): pick the app by port or SNI, admit it
//! to a machine, then splice: to the machine itself (after the PROXY header, if
//! asked), or through a CONNECT stream to the machine's node, which sends it.

use std::net::SocketAddr;

use http::{HeaderValue, Method, Request, Uri, Version};
use tern_backhaul::{fields, Ready, Tunnel};
use tern_catalog::model::ProxyProto;
use tern_catalog::{AttemptError, Peer, Pick};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::listener::{Conn, Shared};

/// How a machine was reached.
enum Opened {
    Direct(TcpStream),
    /// Through its node: the stream, and the machine's node sends the PROXY header.
    ViaPeer(tern_backhaul::H2Stream),
}

pub(crate) async fn serve<IO>(mut io: IO, conn: Conn, shared: &Shared)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let Conn {
        peer,
        local,
        plan,
        sni,
        probe,
        ..
    } = conn;
    let snap = shared.catalog.snapshot();
    let app = if plan.tls {
        sni.as_deref().and_then(|s| snap.hosts.lookup(s))
    } else {
        snap.tcp_owner(plan.port)
    };
    if let (Some(p), Some(app)) = (&probe, app) {
        p.note("app", &app.name);
    }
    let Some(app) = app.cloned() else {
        tracing::info!(%peer, port = plan.port, sni = ?sni, "no app for this TCP connection");
        count("-", "no_app");
        return;
    };
    let Some(service) = app.service_for_port(plan.port).cloned() else {
        tracing::info!(%peer, port = plan.port, app = %app.name, "app has no service on this port");
        count(&app.name, "no_service_for_port");
        return;
    };
    let proxy_proto = service
        .def
        .ports
        .iter()
        .find(|p| p.port == plan.port)
        .and_then(|p| p.handlers.proxy_proto);

    let open = |pick: Pick| async move {
        let opened = open(shared, &pick, peer, local, proxy_proto).await;
        if let Err(e) = &opened {
            tracing::info!(machine = %pick.machine.def.id, error = %e, "connect failed, trying the next machine");
        }
        opened
    };
    if let Some(autostart) = shared.proxy.autostart() {
        if let Some(wait) = snap.start_need(&app, &service).wait() {
            if let Err(e) = autostart.wake(&snap, &app, wait).await {
                tracing::info!(%peer, app = %app.name, error = %e, "TCP connection refused");
                count(&app.name, "machine_start");
                return;
            }
        }
    }
    let mut tried = Vec::new();
    let limits = shared.limits.load_full();
    let opened = snap
        .connect_best(
            &app,
            &service,
            &mut tried,
            limits.connect_attempts,
            limits.queue_timeout,
            open,
        )
        .await;
    let (pick, _guard, machine) = match opened {
        Ok(o) => o,
        Err(AttemptError::Admit(e)) => {
            tracing::info!(%peer, app = %app.name, error = %e, "TCP connection refused");
            count(&app.name, "no_machine");
            return;
        }
        Err(AttemptError::Connect(_)) => {
            count(&app.name, "connect_failed");
            return;
        }
    };
    if let Some(p) = &probe {
        p.note("machine", &pick.machine.def.id);
    }
    let spliced = match machine {
        Opened::Direct(machine) => {
            // The machine side is this connection's I/O too: bytes there are progress.
            let mut machine = match &probe {
                Some(p) => tokio_util::either::Either::Left(p.io(machine)),
                None => tokio_util::either::Either::Right(machine),
            };
            let header = proxy_proto
                .map(|v| tern_tcp::proxy_header(v, peer, local))
                .unwrap_or_default();
            tern_tcp::splice(&mut io, &mut machine, &header).await
        }
        Opened::ViaPeer(mut stream) => tern_tcp::splice(&mut io, &mut stream, &[]).await,
    };
    match spliced {
        Ok(t) => {
            tracing::debug!(%peer, machine = %pick.machine.def.id, up = t.client_to_machine, down = t.machine_to_client, "TCP connection done");
            count(&app.name, "ok");
        }
        Err(e) => {
            tracing::debug!(%peer, machine = %pick.machine.def.id, error = %e, "TCP connection ended with an error");
            count(&app.name, "reset");
        }
    }
}

/// A connection to the chosen machine, or to its node for it.
async fn open(
    shared: &Shared,
    pick: &Pick,
    client: SocketAddr,
    local: SocketAddr,
    proxy_proto: Option<ProxyProto>,
) -> Result<Opened, String> {
    match &pick.peer {
        Peer::Local(addr) => {
            let limit = shared.limits.load().connect_timeout;
            let connect = tokio::time::timeout(limit, TcpStream::connect(addr));
            match connect.await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(Opened::Direct(s))
                }
                Ok(Err(e)) => Err(format!("connect to {addr}: {e}")),
                Err(_) => Err(format!("connect to {addr}: timed out")),
            }
        }
        Peer::Backhaul { node, machine } => {
            let backhaul = shared.backhaul.as_ref().ok_or_else(|| {
                format!(
                    "node {} runs the machine; no [backhaul] to reach it",
                    node.def.id
                )
            })?;
            let ready = backhaul.ready(node).await.map_err(|e| e.to_string())?;
            let connect = tunnel_request(pick, *machine, client, local, proxy_proto)?;
            // The peer answers once it has connected to the machine (bounded by
            // its own connect timeout) or refused.
            let limit = shared.limits.load().connect_timeout * 2;
            tokio::time::timeout(limit, via_peer(ready, connect))
                .await
                .map_err(|_| {
                    format!(
                        "node {}: no answer to the CONNECT within {limit:?}",
                        node.def.id
                    )
                })?
        }
    }
}

/// Opens the CONNECT; a refusal by the peer (its machine gone or unreachable)
/// counts as a failed connect, since no byte reached a machine.
async fn via_peer(ready: Ready, connect: Request<()>) -> Result<Opened, String> {
    match ready.tunnel(connect).await {
        Ok(Tunnel::Open(_, stream)) => Ok(Opened::ViaPeer(stream)),
        Ok(Tunnel::Refused(resp)) => {
            let code = resp
                .headers()
                .get("tern-error")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("unknown")
                .to_owned();
            Err(format!(
                "the machine's node refused: {} {code}",
                resp.status()
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

fn tunnel_request(
    pick: &Pick,
    machine: SocketAddr,
    client: SocketAddr,
    local: SocketAddr,
    proxy_proto: Option<ProxyProto>,
) -> Result<Request<()>, String> {
    let value = |s: String| HeaderValue::try_from(s).map_err(|e| e.to_string());
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.version_mut() = Version::HTTP_2;
    *req.uri_mut() = machine
        .to_string()
        .parse::<Uri>()
        .map_err(|e| e.to_string())?;
    let h = req.headers_mut();
    h.insert(fields::MACHINE.clone(), value(pick.machine.def.id.clone())?);
    h.insert(fields::PORT.clone(), HeaderValue::from(machine.port()));
    h.insert(fields::CLIENT.clone(), value(client.to_string())?);
    h.insert(fields::LOCAL.clone(), value(local.to_string())?);
    if let Some(v) = proxy_proto {
        let v = match v {
            ProxyProto::V1 => "v1",
            ProxyProto::V2 => "v2",
        };
        h.insert(fields::PROXY_PROTO.clone(), HeaderValue::from_static(v));
    }
    Ok(req)
}

fn count(app: &str, result: &'static str) {
    metrics::counter!("tern_tcp_connections_total", "app" => app.to_owned(), "result" => result)
        .increment(1);
}
