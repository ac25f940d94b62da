//! The accept loop of one public port.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pollwatch::{Probe, Watchdog};
use tern_catalog::Catalog;
use tern_http::{serve_connection, ConnInfo, Proxy, ServerSettings};
use tern_overload::Overload;
use tern_tls::TlsAcceptor;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;

use crate::plan::PortPlan;
use crate::tcp;
use crate::thread_yield::ThreadYield;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("port {0} terminates TLS but no certificates are configured ([tls] certs_dir)")]
    NoCertificates(u16),
    #[error("port {0} is still closing: its accept loops have not ended yet")]
    StillClosing(u16),
}

/// What every listener shares.
pub struct Shared {
    pub catalog: Arc<dyn Catalog>,
    pub proxy: Arc<Proxy>,
    /// Other nodes' machines are reached through it; `None` on a node alone.
    pub backhaul: Option<Arc<tern_backhaul::Backhaul>>,
    /// Read by each connection as it starts; a configuration reload swaps them.
    pub limits: ArcSwap<ConnLimits>,
    /// For TLS ports that speak HTTP: offers h2 and http/1.1.
    pub http_tls: Option<TlsAcceptor>,
    /// For TLS ports carrying raw TCP: no ALPN.
    pub raw_tls: Option<TlsAcceptor>,
    pub max_connections: usize,
    /// Every connection task, so shutdown can wait for them to drain.
    pub tracker: TaskTracker,
    /// The spin watchdog every connection runs under; `None` when disabled.
    pub watchdog: Option<Watchdog>,
    /// The process's budgets: past one, accepted connections are closed at once.
    pub overload: Arc<Overload>,
    /// Polls of connections after which a worker yields its CPU (`ThreadYield`); 0: never.
    pub yield_every_polls: u32,
}

/// The limits of a client connection and of what it opens: the HTTP server's
/// timers and sizes, and for raw TCP how machines are tried.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub server: ServerSettings,
    pub connect_timeout: Duration,
    pub connect_attempts: usize,
    pub queue_timeout: Duration,
}

/// A bound public port's socket, not yet registered with any runtime: its
/// accept loop registers it with the runtime it runs on.
pub struct Listener {
    pub plan: PortPlan,
    socket: std::net::TcpListener,
}

impl Listener {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Another descriptor of the listening socket, to hand over in an upgrade.
    pub fn dup(&self) -> io::Result<OwnedFd> {
        self.socket.as_fd().try_clone_to_owned()
    }

    /// A handle on the same socket (and accept queue) for one accept loop,
    /// registered with the runtime the caller is in: the loop must run there.
    pub fn for_accept_loop(&self) -> io::Result<AcceptLoopSocket> {
        let tcp = TcpListener::from_std(self.socket.try_clone()?)?;
        Ok(AcceptLoopSocket {
            plan: self.plan,
            tcp,
        })
    }
}

/// One accept loop's handle on a port's socket.
pub struct AcceptLoopSocket {
    plan: PortPlan,
    tcp: TcpListener,
}

/// Binds a public port; with `reuse_port`, so that other sockets of this
/// process may bind it too, one per worker. Fails early, before anything is
/// served, if the port's TLS has no certificates.
pub fn bind(
    ip: IpAddr,
    plan: PortPlan,
    shared: &Shared,
    reuse_port: bool,
) -> Result<Listener, ListenError> {
    if plan.tls && shared.http_tls.is_none() {
        return Err(ListenError::NoCertificates(plan.port));
    }
    let addr = SocketAddr::new(ip, plan.port);
    let bind = || -> io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        // A restarted Tern must rebind at once despite old connections in TIME_WAIT.
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    };
    let socket = bind().map_err(|source| ListenError::Bind { addr, source })?;
    Ok(Listener { plan, socket })
}

/// Takes a listening socket handed over by the process this one replaces (an
/// upgrade) instead of binding the port anew: the connections waiting in its
/// queue are kept.
pub fn adopt(plan: PortPlan, socket: OwnedFd, shared: &Shared) -> Result<Listener, ListenError> {
    if plan.tls && shared.http_tls.is_none() {
        return Err(ListenError::NoCertificates(plan.port));
    }
    let socket = std::net::TcpListener::from(socket);
    let addr = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], plan.port)));
    socket
        .set_nonblocking(true)
        .map_err(|source| ListenError::Bind { addr, source })?;
    Ok(Listener { plan, socket })
}

/// Accepted connections between two yields of an accept loop.
const ACCEPTS_PER_TURN: u32 = 4;

/// Accepts until `shutdown` turns true, on the runtime `socket` was registered
/// with. Past the port's `limit` of open connections (shared by all its accept
/// loops), new ones wait in the kernel's backlog.
pub async fn run(
    socket: AcceptLoopSocket,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let AcceptLoopSocket { plan, tcp } = socket;
    let port = plan.port.to_string();
    let mut accepted_this_turn = 0;
    loop {
        // Shutdown first: once told to stop, a loop accepts nothing more.
        let permit = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            p = Arc::clone(&limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            accepted = tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(port = plan.port, error = %e, "accept failed");
                    metrics::counter!("tern_accept_errors_total", "port" => port.clone()).increment(1);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        metrics::counter!("tern_connections_total", "port" => port.clone()).increment(1);
        let overload_permit = match shared.overload.admit_connection() {
            Ok(p) => p,
            Err(shed) => {
                refuse(stream, shed);
                continue;
            }
        };
        serve_accepted(
            stream,
            peer,
            plan,
            (permit, overload_permit),
            &shared,
            &shutdown,
        );
        // A few connections per turn, as nginx's `multi_accept off` takes one:
        // the requests of connections already open run before more handshakes
        // start, and a burst still leaves the backlog quickly.
        accepted_this_turn += 1;
        if accepted_this_turn == ACCEPTS_PER_TURN {
            accepted_this_turn = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// Spawns the task that serves one accepted connection, on the current runtime,
/// under the spin watchdog; it holds `permits` for its life.
fn serve_accepted<P: Send + 'static>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    plan: PortPlan,
    permits: P,
    shared: &Arc<Shared>,
    shutdown: &watch::Receiver<bool>,
) {
    let conn_shared = Arc::clone(shared);
    let shutdown = shutdown.clone();
    let every = shared.yield_every_polls;
    shared.tracker.spawn(ThreadYield::new(async move {
        let shared = conn_shared;
        let _permits = permits;
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(peer.ip(), plan.port));
        match shared.watchdog.as_ref().map(Watchdog::register) {
            Some(probe) => {
                probe.set("peer", peer.to_string());
                probe.set("listener", plan.port.to_string());
                probe.set("state", if plan.tls { "tls-handshake" } else { "accepted" });
                let io = probe.io(stream);
                let conn = handle(io, peer, local, plan, &shared, shutdown, Some(probe.clone()));
                if let Err(spun) = probe.watch(conn).await {
                    tracing::debug!(%peer, port = plan.port, %spun, "connection cut by the spin watchdog");
                }
            }
            None => handle(stream, peer, local, plan, &shared, shutdown, None).await,
        }
    }, every));
}

/// Sheds a connection the process has no budget for: closed at once, with a
/// reset rather than a FIN, so that no socket lingers in TIME_WAIT for it and
/// the client learns at once.
fn refuse(stream: tokio::net::TcpStream, shed: tern_overload::Shed) {
    tern_overload::count_shed(shed, "connection");
    tracing::debug!(reason = %shed, "connection shed");
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

async fn handle<IO>(
    stream: IO,
    peer: SocketAddr,
    local: SocketAddr,
    plan: PortPlan,
    shared: &Shared,
    shutdown: watch::Receiver<bool>,
    probe: Option<Probe>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if !plan.tls {
        let conn = Conn {
            peer,
            local,
            plan,
            sni: None,
            h2: false,
            probe,
        };
        return dispatch(stream, conn, shared, shutdown).await;
    }
    let acceptor = if plan.http {
        shared.http_tls.as_ref()
    } else {
        shared.raw_tls.as_ref()
    };
    let Some(acceptor) = acceptor else {
        return;
    };
    // The handshake's state is boxed so that it is freed once the handshake is
    // done, and the TLS stream too: it is large (rustls' connection state, over a
    // kilobyte), and every future it passes through would otherwise keep room for
    // it for the connection's whole life (bench/NOTES.md, scenario 5). The stream
    // is boxed inside the handshake's future, and the match ends before anything
    // else is awaited: a by-value stream bound in a match arm, or the match's
    // scrutinee, keeps its room in this future across every later await.
    let handshake = Box::pin(async move { acceptor.accept(stream).await.map(Box::new) });
    let tls = match handshake.await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::debug!(%peer, port = plan.port, error = %e, "TLS handshake failed");
            return;
        }
    };
    let info = tern_tls::handshake_info(&tls);
    let kind = if info.resumed { "resumed" } else { "full" };
    metrics::counter!("tern_tls_handshakes_total", "kind" => kind).increment(1);
    if let Some(p) = &probe {
        if let Some(sni) = &info.sni {
            p.set("sni", sni.clone());
        }
        if let Some(alpn) = &info.alpn {
            p.set("alpn", String::from_utf8_lossy(alpn).into_owned());
        }
    }
    let conn = Conn {
        peer,
        local,
        plan,
        sni: info.sni.clone(),
        h2: info.is_h2(),
        probe: probe.clone(),
    };
    match probe {
        // The TLS-specific check: Pending while rustls wants neither to read
        // nor to write can never be woken, so it counts as a spin at once.
        Some(p) => {
            let checked = tern_tls::TlsStuckCheck::new(tls, p);
            dispatch(checked, conn, shared, shutdown).await
        }
        None => dispatch(tls, conn, shared, shutdown).await,
    }
}

/// What is known of a client connection once any TLS is done.
pub(crate) struct Conn {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub plan: PortPlan,
    pub sni: Option<String>,
    pub h2: bool,
    pub probe: Option<Probe>,
}

async fn dispatch<IO>(io: IO, conn: Conn, shared: &Shared, shutdown: watch::Receiver<bool>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if conn.plan.http {
        if let Some(p) = &conn.probe {
            p.set("state", "http");
        }
        let mut info = ConnInfo::new(conn.peer, conn.plan.port, conn.plan.tls, conn.sni);
        info.probe = conn.probe;
        // Each branch is boxed: a future holds room for the largest of its
        // branches, and an idle HTTP connection should not carry the TCP relay's
        // state (nor the other way round) for its whole life.
        let limits = shared.limits.load_full();
        Box::pin(serve_connection(
            io,
            info,
            conn.h2,
            Arc::clone(&shared.proxy),
            &limits.server,
            shutdown,
        ))
        .await;
    } else {
        if let Some(p) = &conn.probe {
            p.set("state", "tcp");
        }
        Box::pin(tcp::serve(io, conn, shared)).await;
    }
}
