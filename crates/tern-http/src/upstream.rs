//! Connections to machines: HTTP/1.1 connections pooled per machine address, and
//! one shared h2c connection per machine for services that set `h2_backend`.

use foldhash::{HashMap, HashMapExt};
use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::body::Body;
use pollwatch::{Probe, Watchdog, WatchedIo};
use tokio_util::either::Either;

/// Why no connection to a machine could be made. The request was not sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect to {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("connect to {addr}: no answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// A ready connection to one machine.
pub(crate) enum Sender {
    H1 {
        tx: http1::SendRequest<Body>,
        /// Came from the pool: if it turns out closed, the request may be retried.
        reused: bool,
    },
    H2(http2::SendRequest<Body>),
}

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
}

/// Upstream connections of the whole process.
pub struct Upstreams {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
    connect_timeout: Duration,
    /// A pooled connection unused for this long is closed rather than reused.
    idle_timeout: Duration,
    max_idle_per_machine: usize,
    /// Upstream connections run under the spin watchdog too.
    watchdog: Option<Watchdog>,
}

/// A socket to a machine, watched or not.
type UpstreamIo = TokioIo<Either<WatchedIo<TcpStream>, TcpStream>>;

impl Upstreams {
    pub fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        watchdog: Option<Watchdog>,
    ) -> Self {
        Upstreams {
            idle: Mutex::new(HashMap::new()),
            h2: Mutex::new(HashMap::new()),
            connect_timeout,
            idle_timeout,
            max_idle_per_machine: 256,
            watchdog,
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection for one request: a pooled one when there is one, else new.
    /// `upgrade` asks for a fresh HTTP/1.1 connection that may be taken over.
    pub(crate) async fn checkout(
        &self,
        addr: SocketAddr,
        h2: bool,
        upgrade: bool,
    ) -> Result<Sender, ConnectError> {
        // The paths that connect are boxed: their futures (connect, timer, HTTP
        // handshake) are large, and inline they would be part of every request's
        // future, which is moved into a box of its own per request.
        if h2 && !upgrade {
            if let Some(tx) = self.shared_h2(addr) {
                return Ok(Sender::H2(tx));
            }
            return Box::pin(self.connect_h2(addr)).await;
        }
        if !upgrade {
            while let Some(mut idle) = self.pop_idle(addr) {
                if idle.since.elapsed() > self.idle_timeout || idle.tx.is_closed() {
                    continue;
                }
                if idle.tx.ready().await.is_ok() {
                    return Ok(Sender::H1 {
                        tx: idle.tx,
                        reused: true,
                    });
                }
            }
        }
        Box::pin(self.connect_h1(addr)).await
    }

    async fn connect_h1(&self, addr: SocketAddr) -> Result<Sender, ConnectError> {
        let (io, probe) = self.connect_tcp(addr).await?;
        // Flattened writes, for the reason given in server.rs.
        let (tx, conn) = http1::Builder::new()
            .writev(false)
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        tokio::spawn(watched(probe, addr, conn.with_upgrades()));
        Ok(Sender::H1 { tx, reused: false })
    }

    fn pop_idle(&self, addr: SocketAddr) -> Option<Idle> {
        self.lock_idle().get_mut(&addr)?.pop()
    }

    /// Returns a connection whose last response was read to the end.
    pub(crate) fn checkin(&self, addr: SocketAddr, tx: http1::SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.lock_idle();
        let list = idle.entry(addr).or_default();
        if list.len() < self.max_idle_per_machine {
            list.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// The machine's shared h2c connection, while it is open.
    fn shared_h2(&self, addr: SocketAddr) -> Option<http2::SendRequest<Body>> {
        self.h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&addr)
            .filter(|tx| !tx.is_closed())
            .cloned()
    }

    async fn connect_h2(&self, addr: SocketAddr) -> Result<Sender, ConnectError> {
        let (io, probe) = self.connect_tcp(addr).await?;
        let (tx, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        tokio::spawn(watched(probe, addr, conn));
        self.h2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(addr, tx.clone());
        Ok(Sender::H2(tx))
    }

    async fn connect_tcp(
        &self,
        addr: SocketAddr,
    ) -> Result<(UpstreamIo, Option<Probe>), ConnectError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout {
                addr,
                after: self.connect_timeout,
            })?
            .map_err(|source| ConnectError::Io { addr, source })?;
        // Small requests and responses must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        match self.watchdog.as_ref().map(Watchdog::register) {
            Some(probe) => {
                probe.set("upstream", addr.to_string());
                probe.set("state", "upstream-http");
                Ok((TokioIo::new(Either::Left(probe.io(stream))), Some(probe)))
            }
            None => Ok((TokioIo::new(Either::Right(stream)), None)),
        }
    }
}

/// Drives an upstream connection, under the watchdog when there is one.
async fn watched<F, E>(probe: Option<Probe>, addr: SocketAddr, conn: F)
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let ended = match probe {
        Some(p) => match p.watch(conn).await {
            Ok(r) => r,
            Err(spun) => {
                tracing::debug!(%addr, %spun, "upstream connection cut by the spin watchdog");
                return;
            }
        },
        None => conn.await,
    };
    if let Err(e) = ended {
        tracing::debug!(%addr, error = %e, "upstream connection ended");
    }
}
