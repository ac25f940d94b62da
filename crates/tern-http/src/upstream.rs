//! Connections to machines: HTTP/1.1 connections pooled per machine address (for
//! hyper's client, and bare sockets for the in-task client of `tern-h1`), and one
//! shared h2c connection per machine for services that set `h2_backend`.

use foldhash::{HashMap, HashMapExt};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::live_settings::nanos;
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::body::Body;
use crate::idle_pool::{Idle, IdlePool};
use pollwatch::{Probe, Watchdog, WatchedIo};
use tern_h1::Connection;
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
    #[error(transparent)]
    Backhaul(tern_backhaul::BackhaulError),
    #[error("node {0} runs the machine, and this node has no [backhaul] to reach it")]
    NoBackhaul(String),
}

/// A ready connection to one machine.
pub(crate) enum Sender {
    H1 {
        tx: http1::SendRequest<Body>,
        /// Came from the pool: if it turns out closed, the request may be retried.
        reused: bool,
    },
    H2(http2::SendRequest<Body>),
    /// A socket that the asking connection's task uses itself (`tern-h1`).
    InTask {
        conn: Connection<MachineIo>,
        reused: bool,
    },
    /// The machine's node, over the backhaul.
    Backhaul(tern_backhaul::Ready),
}

impl Sender {
    pub(crate) fn is_backhaul(&self) -> bool {
        matches!(self, Sender::Backhaul(_))
    }
}

/// What kind of connection a request needs.
#[derive(Clone, Copy)]
pub(crate) enum Want<'a> {
    /// The machine's shared h2c connection.
    H2,
    /// A hyper HTTP/1.1 connection: requests with bodies, and upgrades (`upgrade`
    /// asks for a fresh connection that may be taken over).
    H1 { upgrade: bool },
    /// A bare socket for a request without a body, run in the asking connection's
    /// task and counted as its I/O by `probe`.
    InTask { probe: Option<&'a Probe> },
}

/// A socket to a machine, under a watchdog probe when the watchdog is on: its own
/// for hyper's connections, which run in tasks of their own; the asking client
/// connection's for an in-task socket, so that relaying counts as its progress.
pub(crate) type MachineIo = Either<WatchedIo<TcpStream>, TcpStream>;

/// Idle connections kept per machine, in each shard of a pool.
const MAX_IDLE_PER_MACHINE: usize = 256;

/// How often pooled in-task sockets are checked for a close by the machine.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Upstream connections of the whole process.
pub struct Upstreams {
    idle: IdlePool<http1::SendRequest<Body>>,
    in_task_idle: IdlePool<Connection<TcpStream>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
    /// Both timeouts in nanoseconds, changed by a reload.
    connect_timeout: AtomicU64,
    /// A pooled connection unused for this long is closed rather than reused.
    idle_timeout: AtomicU64,
    /// Upstream connections run under the spin watchdog too.
    watchdog: Option<Watchdog>,
}

impl Upstreams {
    /// `threads`: how many threads use the pools (the workers, and the main
    /// thread that serves the backhaul per core), each given a shard of its own.
    pub fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        watchdog: Option<Watchdog>,
        threads: usize,
    ) -> Self {
        Upstreams {
            idle: IdlePool::new(MAX_IDLE_PER_MACHINE, threads),
            in_task_idle: IdlePool::new(MAX_IDLE_PER_MACHINE, threads),
            h2: Mutex::new(HashMap::new()),
            connect_timeout: AtomicU64::new(nanos(connect_timeout)),
            idle_timeout: AtomicU64::new(nanos(idle_timeout)),
            watchdog,
        }
    }

    /// New timeouts (a configuration reload), for the connections made and
    /// checked out from now on.
    pub fn set_timeouts(&self, connect_timeout: Duration, idle_timeout: Duration) {
        self.connect_timeout
            .store(nanos(connect_timeout), Ordering::Relaxed);
        self.idle_timeout
            .store(nanos(idle_timeout), Ordering::Relaxed);
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_nanos(self.connect_timeout.load(Ordering::Relaxed))
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_nanos(self.idle_timeout.load(Ordering::Relaxed))
    }

    /// A connection for one request: a pooled one when there is one, else new.
    pub(crate) async fn checkout(
        &self,
        addr: SocketAddr,
        want: Want<'_>,
    ) -> Result<Sender, ConnectError> {
        // The paths that connect are boxed: their futures (connect, timer, HTTP
        // handshake) are large, and inline they would be part of every request's
        // future, which is moved into hyper's connection state per request.
        match want {
            Want::H2 => {
                if let Some(tx) = self.shared_h2(addr) {
                    return Ok(Sender::H2(tx));
                }
                Box::pin(self.connect_h2(addr)).await
            }
            Want::H1 { upgrade } => {
                if !upgrade {
                    while let Some(mut idle) = self.idle.pop(addr) {
                        if idle.since.elapsed() > self.idle_timeout() || idle.conn.is_closed() {
                            continue;
                        }
                        if idle.conn.ready().await.is_ok() {
                            return Ok(Sender::H1 {
                                tx: idle.conn,
                                reused: true,
                            });
                        }
                    }
                }
                Box::pin(self.connect_h1(addr)).await
            }
            Want::InTask { probe } => {
                while let Some(idle) = self.in_task_idle.pop(addr) {
                    if self.reusable(&idle) {
                        return Ok(Sender::InTask {
                            conn: idle.conn.map(|s| watched_by(probe, s)),
                            reused: true,
                        });
                    }
                }
                Box::pin(self.connect_in_task(addr, probe)).await
            }
        }
    }

    /// A fresh in-task socket.
    pub(crate) async fn connect_in_task(
        &self,
        addr: SocketAddr,
        probe: Option<&Probe>,
    ) -> Result<Sender, ConnectError> {
        let stream = self.connect_stream(addr).await?;
        Ok(Sender::InTask {
            conn: Connection::new(watched_by(probe, stream)),
            reused: false,
        })
    }

    /// Starts closing, once a second, pooled in-task sockets that the machine has
    /// closed or that have been idle past the timeout. hyper's pooled connections
    /// each have a task that sees the machine close them; a bare socket waiting in
    /// the pool has none, and would otherwise hold its descriptor until it is next
    /// taken. The task ends with the last reference to the pool.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep_in_task();
            }
        })
    }

    /// Closes the pooled in-task sockets that may not be used again; returns how
    /// many.
    fn sweep_in_task(&self) -> usize {
        self.in_task_idle.retain(|idle| self.reusable(idle))
    }

    /// Whether a pooled in-task socket may carry another request: not idle past
    /// the timeout, and nothing to read. An end of stream means the machine
    /// closed it; bytes mean it broke the framing of the last response. The check
    /// costs no syscall unless the runtime has seen the socket become readable
    /// since its last read (a read that leaves the socket empty clears that), so
    /// it is made on every reuse, whatever the method.
    fn reusable(&self, idle: &Idle<Connection<TcpStream>>) -> bool {
        idle.since.elapsed() <= self.idle_timeout()
            && matches!(idle.conn.io.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Pools an in-task socket whose last response was read to the end.
    pub(crate) fn checkin_in_task(&self, addr: SocketAddr, conn: Connection<MachineIo>) {
        let conn = conn.map(|io| match io {
            Either::Left(watched) => watched.into_inner(),
            Either::Right(s) => s,
        });
        self.in_task_idle.push(addr, conn);
    }

    async fn connect_h1(&self, addr: SocketAddr) -> Result<Sender, ConnectError> {
        let (io, probe) = self.connect_tcp(addr).await?;
        // Flattened writes, for the reason given in server.rs. The same limits on
        // a response head as the in-task client's.
        let (tx, conn) = http1::Builder::new()
            .writev(false)
            .max_header_size(tern_h1::MAX_HEAD_BYTES)
            .max_headers(tern_h1::MAX_HEADERS)
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        tokio::spawn(watched(probe, addr, conn.with_upgrades()));
        Ok(Sender::H1 { tx, reused: false })
    }

    /// Returns a connection whose last response was read to the end.
    pub(crate) fn checkin(&self, addr: SocketAddr, tx: http1::SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        self.idle.push(addr, tx);
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

    async fn connect_stream(&self, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
        let stream = tokio::time::timeout(self.connect_timeout(), TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout {
                addr,
                after: self.connect_timeout(),
            })?
            .map_err(|source| ConnectError::Io { addr, source })?;
        // Small requests and responses must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// A socket for hyper's client, which drives it from a task of its own: under
    /// a probe of its own when the watchdog is on.
    async fn connect_tcp(
        &self,
        addr: SocketAddr,
    ) -> Result<(TokioIo<MachineIo>, Option<Probe>), ConnectError> {
        let stream = self.connect_stream(addr).await?;
        let probe = self.watchdog.as_ref().map(Watchdog::register);
        if let Some(p) = &probe {
            p.set("upstream", addr.to_string());
            p.set("state", "upstream-http");
        }
        Ok((TokioIo::new(watched_by(probe.as_ref(), stream)), probe))
    }
}

fn watched_by(probe: Option<&Probe>, stream: TcpStream) -> MachineIo {
    match probe {
        Some(p) => Either::Left(p.io(stream)),
        None => Either::Right(stream),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    fn pooled(up: &Upstreams, addr: SocketAddr) -> usize {
        up.in_task_idle.len(addr)
    }

    #[tokio::test]
    async fn the_sweep_closes_pooled_sockets_the_machine_closed_and_keeps_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Upstreams::new(Duration::from_secs(1), Duration::from_secs(60), None, 1);
        let want = Want::InTask { probe: None };
        let mut accepted = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..2 {
            let Sender::InTask { conn, reused } = up.checkout(addr, want).await.unwrap() else {
                panic!("an in-task socket");
            };
            assert!(!reused);
            accepted.push(listener.accept().await.unwrap().0);
            conns.push(conn);
        }
        for conn in conns {
            up.checkin_in_task(addr, conn);
        }
        assert_eq!(pooled(&up, addr), 2);
        assert_eq!(up.sweep_in_task(), 0, "both are open");

        // The machine closes one of them.
        let mut gone = accepted.pop().unwrap();
        gone.shutdown().await.unwrap();
        drop(gone);
        let mut swept = 0;
        for _ in 0..100 {
            // The runtime has to see the socket become readable first.
            tokio::time::sleep(Duration::from_millis(10)).await;
            swept += up.sweep_in_task();
            if swept > 0 {
                break;
            }
        }
        assert_eq!(swept, 1);
        assert_eq!(pooled(&up, addr), 1);
    }

    #[tokio::test]
    async fn the_sweep_closes_sockets_idle_past_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Upstreams::new(Duration::from_secs(1), Duration::from_millis(50), None, 1);
        let want = Want::InTask { probe: None };
        let Sender::InTask { conn, .. } = up.checkout(addr, want).await.unwrap() else {
            panic!("an in-task socket");
        };
        let _peer = listener.accept().await.unwrap();
        up.checkin_in_task(addr, conn);
        assert_eq!(up.sweep_in_task(), 0);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(up.sweep_in_task(), 1);
        assert_eq!(pooled(&up, addr), 0);
    }
}
