//! The accept loop of one public port.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tern_catalog::Catalog;
use tern_http::{serve_connection, ConnInfo, Proxy, ServerSettings};
use tern_tls::TlsAcceptor;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;

use crate::plan::PortPlan;
use crate::tcp;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("port {0} terminates TLS but no certificates are configured ([tls] certs_dir)")]
    NoCertificates(u16),
}

/// What every listener shares.
pub struct Shared {
    pub catalog: Arc<dyn Catalog>,
    pub proxy: Arc<Proxy>,
    pub server: ServerSettings,
    /// For TLS ports that speak HTTP: offers h2 and http/1.1.
    pub http_tls: Option<TlsAcceptor>,
    /// For TLS ports carrying raw TCP: no ALPN.
    pub raw_tls: Option<TlsAcceptor>,
    pub connect_timeout: Duration,
    pub connect_attempts: usize,
    pub queue_timeout: Duration,
    pub max_connections: usize,
    /// Every connection task, so shutdown can wait for them to drain.
    pub tracker: TaskTracker,
}

/// A bound public port.
pub struct Listener {
    pub plan: PortPlan,
    tcp: TcpListener,
}

impl Listener {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Binds a public port. Fails early, before anything is served, if the port's TLS
/// has no certificates.
pub fn bind(ip: IpAddr, plan: PortPlan, shared: &Shared) -> Result<Listener, ListenError> {
    if plan.tls && shared.http_tls.is_none() {
        return Err(ListenError::NoCertificates(plan.port));
    }
    let addr = SocketAddr::new(ip, plan.port);
    let bind = || -> io::Result<TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        // A restarted Tern must rebind at once despite old connections in TIME_WAIT.
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    };
    let tcp = bind().map_err(|source| ListenError::Bind { addr, source })?;
    Ok(Listener { plan, tcp })
}

/// Accepts until `shutdown` turns true. Past `max_connections` open connections,
/// new ones wait in the kernel's backlog.
pub async fn run(listener: Listener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let limit = Arc::new(Semaphore::new(shared.max_connections));
    let plan = listener.plan;
    let port = plan.port.to_string();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(port = plan.port, error = %e, "accept failed");
                    metrics::counter!("tern_accept_errors_total", "port" => port.clone()).increment(1);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        metrics::counter!("tern_connections_total", "port" => port.clone()).increment(1);
        let shared2 = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        shared.tracker.spawn(async move {
            let _permit = permit;
            handle(stream, peer, plan, shared2, shutdown).await;
        });
    }
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    plan: PortPlan,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::new(peer.ip(), plan.port));
    if !plan.tls {
        return dispatch(stream, peer, local, plan, None, false, &shared, shutdown).await;
    }
    let acceptor = if plan.http {
        shared.http_tls.as_ref()
    } else {
        shared.raw_tls.as_ref()
    };
    let Some(acceptor) = acceptor else {
        return;
    };
    match acceptor.accept(stream).await {
        Ok(tls) => {
            let info = tern_tls::handshake_info(&tls);
            let h2 = info.is_h2();
            dispatch(tls, peer, local, plan, info.sni, h2, &shared, shutdown).await;
        }
        Err(e) => {
            tracing::debug!(%peer, port = plan.port, error = %e, "TLS handshake failed");
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn dispatch<IO>(
    io: IO,
    peer: SocketAddr,
    local: SocketAddr,
    plan: PortPlan,
    sni: Option<String>,
    h2: bool,
    shared: &Shared,
    shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if plan.http {
        let info = ConnInfo::new(peer, plan.port, plan.tls, sni);
        serve_connection(
            io,
            info,
            h2,
            Arc::clone(&shared.proxy),
            &shared.server,
            shutdown,
        )
        .await;
    } else {
        tcp::serve(io, peer, local, plan, sni, shared).await;
    }
}
