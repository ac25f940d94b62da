//! The backhaul listener: peers' connections, mutual TLS first (only a node the
//! fleet CA vouched for gets further), then HTTP/2, whose requests name this
//! node's machines. Each connection runs under the spin watchdog, and its streams
//! in its task, like a client's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_backhaul::BackhaulAcceptor;
use tern_http::{serve_connection, ConnInfo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::listener::{ListenError, Shared};

/// Binds the backhaul's address.
pub async fn bind_backhaul(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind { addr, source })
}

/// Accepts peers until `shutdown` turns true.
pub async fn run_backhaul(
    listener: TcpListener,
    acceptor: BackhaulAcceptor,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "backhaul accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let shared2 = Arc::clone(&shared);
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        shared.tracker.spawn(async move {
            match shared2.watchdog.as_ref().map(pollwatch::Watchdog::register) {
                Some(probe) => {
                    probe.set("peer", peer.to_string());
                    probe.set("listener", "backhaul");
                    let io = probe.io(stream);
                    let served = serve_peer(io, peer, port, &acceptor, &shared2, shutdown, Some(probe.clone()));
                    if let Err(spun) = probe.watch(served).await {
                        tracing::warn!(%peer, %spun, "backhaul connection cut by the spin watchdog");
                    }
                }
                None => serve_peer(stream, peer, port, &acceptor, &shared2, shutdown, None).await,
            }
        });
    }
}

async fn serve_peer<IO>(
    io: IO,
    peer: SocketAddr,
    port: u16,
    acceptor: &BackhaulAcceptor,
    shared: &Shared,
    shutdown: watch::Receiver<bool>,
    probe: Option<pollwatch::Probe>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let accepted = Box::pin(acceptor.accept(io)).await;
    let Ok((tls, node)) = accepted else {
        return;
    };
    tracing::debug!(%peer, %node, "backhaul peer connected");
    if let Some(p) = &probe {
        p.set("node", node.clone());
        p.set("state", "backhaul-server");
    }
    let mut info = ConnInfo::new(peer, port, true, None);
    info.from_node = Some(node);
    info.probe = probe;
    let limits = shared.limits.load_full();
    Box::pin(serve_connection(
        tls,
        info,
        true,
        Arc::clone(&shared.proxy),
        &limits.server,
        shutdown,
    ))
    .await;
}
