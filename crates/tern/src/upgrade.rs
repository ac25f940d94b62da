//! Upgrades without a refused connection, on `[node] upgrade_socket`: a new
//! process started with `tern run --upgrade` takes the running one's listening
//! sockets (`Inherited`), serves on them, and tells it so; the old one then
//! stops accepting and drains as a hand-over (`serve_upgrades`).

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::Context;
use tern_http::Proxy;
use tern_listen::Sockets;
use tern_upgrade::{Handover, Role, Takeover};
use tokio::net::TcpListener;

/// How long each step of the exchange may take; a successor that starts its
/// catalog from etcd may need a while before it serves.
const STEP: Duration = Duration::from_secs(60);

/// The sockets taken from the process this one replaces; empty without
/// `--upgrade`.
pub struct Inherited(Option<Takeover>);

impl Inherited {
    /// With `upgrade`, takes the running process's sockets from its upgrade socket.
    pub async fn take(upgrade_socket: Option<&Path>, upgrade: bool) -> anyhow::Result<Inherited> {
        if !upgrade {
            return Ok(Inherited(None));
        }
        let path = upgrade_socket
            .context("tern run --upgrade needs [node] upgrade_socket: the socket of the running Tern to take over from")?
            .to_owned();
        let shown = path.display().to_string();
        let takeover = tokio::task::spawn_blocking(move || Takeover::connect(&path, STEP))
            .await?
            .with_context(|| format!("taking over from the Tern on {shown}"))?;
        tracing::info!(socket = %shown, "took the running Tern's listening sockets");
        Ok(Inherited(Some(takeover)))
    }

    pub fn public(&mut self) -> Vec<(u16, OwnedFd)> {
        self.0
            .as_mut()
            .map(Takeover::take_public)
            .unwrap_or_default()
    }

    /// The socket for `role` at `addr`: the inherited one if it listens there,
    /// else a new one.
    pub async fn listener(&mut self, role: Role, addr: SocketAddr) -> std::io::Result<TcpListener> {
        if let Some(fd) = self.0.as_mut().and_then(|t| t.take(role)) {
            let std = std::net::TcpListener::from(fd);
            if std.local_addr().is_ok_and(|a| a == addr) {
                std.set_nonblocking(true)?;
                return TcpListener::from_std(std);
            }
        }
        TcpListener::bind(addr).await
    }

    /// Tells the old process that this one serves: it stops accepting and
    /// drains. Its failure (the old process gone) changes nothing here.
    pub async fn serving(self) {
        let Some(takeover) = self.0 else { return };
        match tokio::task::spawn_blocking(move || takeover.ready(STEP)).await {
            Ok(Ok(())) => tracing::info!("the previous Tern released its sockets and drains"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the previous Tern did not confirm the hand-over")
            }
            Err(e) => tracing::warn!(error = %e, "the hand-over's confirmation failed"),
        }
    }
}

/// What this process hands to a successor.
pub struct Handing {
    /// The public ports open at the time of the hand-over.
    pub ports: Sockets,
    pub admin: OwnedFd,
    pub backhaul: Option<OwnedFd>,
}

/// Tells the successor that this process has stopped accepting.
pub fn released(handover: Handover) {
    if let Err(e) = handover.release() {
        tracing::warn!(error = %e, "could not confirm the hand-over to the new Tern");
    }
}

/// The public ports' sockets to hand over, at most `budget`: every port's first
/// one, then the others (per core, one per worker) while they fit. A socket
/// left out closes with this process, and the connections queued on it are
/// lost; a warning says so.
fn public_sockets(
    ports: &std::collections::BTreeMap<u16, Vec<OwnedFd>>,
    budget: usize,
) -> Vec<(Role, std::os::fd::BorrowedFd<'_>)> {
    let mut sockets: Vec<_> = ports
        .iter()
        .filter_map(|(port, fds)| Some((Role::Public(*port), fds.first()?.as_fd())))
        .collect();
    let extra = ports.iter().flat_map(|(port, fds)| {
        fds.iter()
            .skip(1)
            .map(|fd| (Role::Public(*port), fd.as_fd()))
    });
    let room = budget.saturating_sub(sockets.len());
    let total_extra: usize = ports.values().map(|fds| fds.len().saturating_sub(1)).sum();
    sockets.extend(extra.take(room));
    if total_extra > room {
        tracing::warn!(
            left_out = total_extra - room,
            "too many sockets to hand over in one message: some workers' sockets close with this process, with what is queued on them"
        );
    }
    sockets
}

/// Serves the upgrade socket until a successor takes over, then marks the
/// coming drain as a hand-over and returns the exchange; the caller stops
/// accepting, then [`released`], then drains. A successor that fails before it
/// serves leaves this process as it was.
pub async fn serve_upgrades(
    path: PathBuf,
    handing: Handing,
    proxy: Arc<Proxy>,
) -> anyhow::Result<Handover> {
    let listener = tern_upgrade::listen(&path)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    tracing::info!(socket = %path.display(), "upgrades: a new Tern may take over here");
    let handing = Arc::new(handing);
    loop {
        let (stream, _) = listener.accept().await?;
        let stream = stream.into_std()?;
        let handing = Arc::clone(&handing);
        let exchange = tokio::task::spawn_blocking(move || -> anyhow::Result<Handover> {
            let mut handover = Handover::accept(stream, STEP)?;
            let ports = handing.ports.lock().unwrap_or_else(PoisonError::into_inner);
            // Room is kept for the admin and backhaul sockets.
            let mut sockets = public_sockets(&ports, tern_upgrade::MAX_SOCKETS - 2);
            sockets.push((Role::Admin, handing.admin.as_fd()));
            if let Some(b) = &handing.backhaul {
                sockets.push((Role::Backhaul, b.as_fd()));
            }
            handover.send(&sockets)?;
            drop(ports);
            handover.wait_ready(STEP)?;
            Ok(handover)
        });
        match exchange.await? {
            Ok(handover) => {
                proxy.begin_handover_drain();
                tracing::info!("a new Tern serves on this one's sockets: draining");
                return Ok(handover);
            }
            Err(e) => tracing::warn!(error = %e, "an upgrade failed; still serving"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sockets(ports: &[(u16, usize)]) -> std::collections::BTreeMap<u16, Vec<OwnedFd>> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        ports
            .iter()
            .map(|&(port, n)| {
                let fds = (0..n)
                    .map(|_| listener.as_fd().try_clone_to_owned().unwrap())
                    .collect();
                (port, fds)
            })
            .collect()
    }

    fn per_port(handed: &[(Role, std::os::fd::BorrowedFd<'_>)], port: u16) -> usize {
        handed
            .iter()
            .filter(|(r, _)| *r == Role::Public(port))
            .count()
    }

    #[test]
    fn every_socket_is_handed_over_when_they_fit() {
        let ports = sockets(&[(80, 4), (443, 4)]);
        let handed = public_sockets(&ports, 8);
        assert_eq!((per_port(&handed, 80), per_port(&handed, 443)), (4, 4));
    }

    #[test]
    fn past_the_budget_every_port_keeps_its_first_socket() {
        let ports = sockets(&[(80, 4), (443, 4), (8080, 4)]);
        let handed = public_sockets(&ports, 5);
        assert_eq!(handed.len(), 5);
        assert!([80, 443, 8080].iter().all(|p| per_port(&handed, *p) >= 1));
    }
}
