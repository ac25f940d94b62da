//! One peer's link: a single multiplexed HTTP/2 connection over mutual TLS, made
//! once and shared by every request to that peer, kept warm by PINGs that also
//! measure its round trip, and replaced when it fails.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, PingPong};
use rustls_pki_types::ServerName;
use tern_catalog::NodeLive;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::BackhaulError;
use crate::identity::node_dns_name;
use crate::Settings;

/// The link to one peer node.
pub struct PeerLink {
    pub node: String,
    pub addr: SocketAddr,
    /// Reachability and RTT, which the balancer reads.
    pub live: Arc<NodeLive>,
    settings: Arc<Settings>,
    current: Mutex<Option<Current>>,
    /// Held while connecting, so that requests arriving meanwhile wait for that
    /// one connection instead of each making their own.
    connecting: tokio::sync::Mutex<()>,
    generation: std::sync::atomic::AtomicU64,
}

struct Current {
    send: SendRequest<Bytes>,
    generation: u64,
    /// Taken by the keeper, which alone pings.
    ping: Option<PingPong>,
    /// The task that drives the connection: aborting it ends the connection,
    /// and every stream on it fails at once.
    driver: tokio::task::AbortHandle,
}

impl std::fmt::Debug for PeerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLink")
            .field("node", &self.node)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl PeerLink {
    pub(crate) fn new(
        node: String,
        addr: SocketAddr,
        live: Arc<NodeLive>,
        settings: Arc<Settings>,
    ) -> Self {
        PeerLink {
            node,
            addr,
            live,
            settings,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A handle on the shared connection, and which connection it is, connecting
    /// first if there is none.
    pub async fn sender(self: &Arc<Self>) -> Result<(SendRequest<Bytes>, u64), BackhaulError> {
        if let Some(c) = self.current().as_ref() {
            return Ok((c.send.clone(), c.generation));
        }
        let _connecting = self.connecting.lock().await;
        if let Some(c) = self.current().as_ref() {
            return Ok((c.send.clone(), c.generation));
        }
        let current = self.connect().await?;
        let handle = (current.send.clone(), current.generation);
        *self.current() = Some(current);
        Ok(handle)
    }

    /// Ends the connection of `generation` (it failed, or was found unusable),
    /// so the next request makes a new one. A newer connection is left alone.
    pub fn drop_connection(&self, generation: u64) {
        let mut current = self.current();
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            if let Some(c) = current.take() {
                c.driver.abort();
            }
        }
    }

    async fn connect(self: &Arc<Self>) -> Result<Current, BackhaulError> {
        let limit = self.settings.connect_timeout;
        let result = tokio::time::timeout(limit, self.handshake()).await;
        let outcome = match result {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "error",
            Err(_) => "timeout",
        };
        metrics::counter!("tern_backhaul_connects_total", "peer" => self.node.clone(), "result" => outcome)
            .increment(1);
        match result {
            Ok(r) => r,
            Err(_) => Err(BackhaulError::ConnectTimeout {
                node: self.node.clone(),
                addr: self.addr,
                after: limit,
            }),
        }
    }

    async fn handshake(self: &Arc<Self>) -> Result<Current, BackhaulError> {
        let fail = |reason: String| BackhaulError::Connect {
            node: self.node.clone(),
            addr: self.addr,
            reason,
        };
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| fail(format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(node_dns_name(&self.node))
            .map_err(|e| fail(format!("node id is not a DNS label: {e}")))?;
        let probe = self
            .settings
            .watchdog
            .as_ref()
            .map(pollwatch::Watchdog::register);
        if let Some(p) = &probe {
            p.set("peer", self.addr.to_string());
            p.set("node", self.node.clone());
            p.set("state", "backhaul-client");
        }
        let io = crate::watched_io(probe.as_ref(), tcp);
        let tls = TlsConnector::from(Arc::clone(&self.settings.tls.client))
            .connect(name, io)
            .await
            .map_err(|e| fail(format!("TLS: {e}")))?;
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(self.settings.stream_window)
            .initial_connection_window_size(self.settings.connection_window)
            .max_concurrent_reset_streams(1024)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| fail(format!("HTTP/2: {e}")))?;
        let ping = conn
            .ping_pong()
            .ok_or_else(|| fail("HTTP/2: no PING handle".into()))?;
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let node = self.node.clone();
        let driven = async move {
            if let Err(e) = conn.await {
                tracing::info!(peer = %node, error = %e, "backhaul connection ended");
            }
        };
        // The link may be gone by the time its connection ends (its peer left the
        // catalog): held weakly.
        let link = Arc::downgrade(self);
        let driver = tokio::spawn(async move {
            match probe {
                Some(p) => {
                    if let Err(spun) = p.watch(driven).await {
                        tracing::warn!(%spun, "backhaul connection cut by the spin watchdog");
                    }
                }
                None => driven.await,
            }
            if let Some(link) = link.upgrade() {
                link.drop_connection(generation);
            }
        });
        Ok(Current {
            send,
            generation,
            ping: Some(ping),
            driver: driver.abort_handle(),
        })
    }

    /// Keeps the link up while the peer is in the catalog: connects (with backoff
    /// while it cannot), PINGs it every `ping_interval` to measure its round trip,
    /// and marks the peer reachable once a PING comes back and unreachable when
    /// the link fails. A connection that fails before its first PONG (the peer
    /// refused our certificate after the handshake, say) counts as a failure to
    /// connect: the backoff goes on growing. Never returns; abort it.
    pub(crate) async fn keep(self: Arc<Self>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let answered = match self.sender().await {
                Ok((_, generation)) => self.ping_until_broken(generation).await,
                Err(e) => {
                    self.down(&e.to_string());
                    false
                }
            };
            if answered {
                backoff = BACKOFF_MIN;
            } else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    fn up(&self) {
        if !self.live.set_reachable(true) {
            tracing::info!(peer = %self.node, addr = %self.addr, "backhaul up");
        }
        metrics::gauge!("tern_backhaul_up", "peer" => self.node.clone()).set(1.0);
    }

    fn down(&self, why: &str) {
        if self.live.set_reachable(false) {
            tracing::warn!(peer = %self.node, error = %why, "backhaul down: its machines leave rotation");
        }
        metrics::gauge!("tern_backhaul_up", "peer" => self.node.clone()).set(0.0);
    }

    /// PINGs the connection of `generation` until a PING fails or goes
    /// unanswered, then ends it; returns whether any PING came back.
    async fn ping_until_broken(&self, generation: u64) -> bool {
        let taken = {
            let mut current = self.current();
            current
                .as_mut()
                .filter(|c| c.generation == generation)
                .and_then(|c| c.ping.take())
        };
        let Some(mut ping) = taken else {
            return false;
        };
        let interval = self.settings.ping_interval;
        let mut smoothed: Option<Duration> = None;
        let why = loop {
            let started = Instant::now();
            let wait = self.settings.ping_timeout;
            match tokio::time::timeout(wait, ping.ping(Ping::opaque())).await {
                Ok(Ok(_)) => {
                    let rtt = started.elapsed();
                    let next = smooth(smoothed, rtt);
                    if smoothed.is_none() {
                        self.up();
                    }
                    smoothed = Some(next);
                    self.live.set_rtt(next);
                    metrics::gauge!("tern_backhaul_rtt_seconds", "peer" => self.node.clone())
                        .set(next.as_secs_f64());
                }
                Ok(Err(e)) => break format!("PING failed: {e}"),
                Err(_) => break format!("PING unanswered for {wait:?}"),
            }
            if self
                .current()
                .as_ref()
                .is_none_or(|c| c.generation != generation)
            {
                break "the connection ended".to_owned();
            }
            tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
        };
        // Ends the connection too: its streams fail now, not at TCP's timeout.
        self.drop_connection(generation);
        self.down(&why);
        smoothed.is_some()
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// An exponentially weighted moving average, as TCP smooths its RTT (RFC 6298:
/// an eighth of each new sample).
fn smooth(previous: Option<Duration>, sample: Duration) -> Duration {
    match previous {
        None => sample,
        Some(p) => p.mul_f64(0.875) + sample.mul_f64(0.125),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_round_trip_is_smoothed_like_tcps() {
        let ms = Duration::from_millis;
        assert_eq!(smooth(None, ms(40)), ms(40));
        let s = smooth(Some(ms(40)), ms(80));
        assert_eq!(s, ms(45));
    }
}
