//! A raw TCP connection (plain or after TLS): pick the app by port or SNI, admit it
//! to a machine, send the PROXY header if asked, then splice.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::listener::{Conn, Shared};

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

    let mut tried = Vec::new();
    for _ in 0..shared.connect_attempts.max(1) {
        let (pick, _guard) = match snap
            .admit(&app, &service, &tried, shared.queue_timeout)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(%peer, app = %app.name, error = %e, "TCP connection refused");
                count(&app.name, "no_machine");
                return;
            }
        };
        let connect = tokio::time::timeout(shared.connect_timeout, TcpStream::connect(pick.addr()));
        let machine = match connect.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(machine = %pick.machine.def.id, error = %e, "connect failed, trying the next machine");
                tried.push(pick.machine.def.id.clone());
                continue;
            }
            Err(_) => {
                tracing::info!(machine = %pick.machine.def.id, "connect timed out, trying the next machine");
                tried.push(pick.machine.def.id.clone());
                continue;
            }
        };
        let _ = machine.set_nodelay(true);
        if let Some(p) = &probe {
            p.note("machine", &pick.machine.def.id);
        }
        // The machine side is this connection's I/O too: bytes there are progress.
        let mut machine = match &probe {
            Some(p) => tokio_util::either::Either::Left(p.io(machine)),
            None => tokio_util::either::Either::Right(machine),
        };
        let header = proxy_proto
            .map(|v| tern_tcp::proxy_header(v, peer, local))
            .unwrap_or_default();
        match tern_tcp::splice(&mut io, &mut machine, &header).await {
            Ok(t) => {
                tracing::debug!(%peer, machine = %pick.machine.def.id, up = t.client_to_machine, down = t.machine_to_client, "TCP connection done");
                count(&app.name, "ok");
            }
            Err(e) => {
                tracing::debug!(%peer, machine = %pick.machine.def.id, error = %e, "TCP connection ended with an error");
                count(&app.name, "reset");
            }
        }
        return;
    }
    count(&app.name, "connect_failed");
}

fn count(app: &str, result: &'static str) {
    metrics::counter!("tern_tcp_connections_total", "app" => app.to_owned(), "result" => result)
        .increment(1);
}
