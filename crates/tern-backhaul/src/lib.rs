//! The backhaul: how Tern nodes reach each other's machines.
//!
//! Between two nodes there is one HTTP/2 connection over mutual TLS, made once
//! by the node that needs it and shared by all its requests to that peer (a
//! [`link`](PeerLink)). Both ends present certificates signed by the fleet CA
//! ([`identity`]); a node's certificate names it, so each end knows which node is
//! on the other side. HTTP requests cross as streams, raw TCP and upgraded
//! connections as CONNECT streams ([`H2Stream`]); the request's target machine and
//! the client's facts travel in [`fields`]. HTTP/2 PINGs keep each link warm and
//! measure its round trip, which the balancer uses as the distance to the peer.
#![forbid(unsafe_code)]

mod accept;
mod body;
mod error;
pub mod fields;
pub mod identity;
mod link;
mod pool;
mod tls;
mod tunnel;

use std::time::Duration;

pub use accept::{AcceptError, BackhaulAcceptor};
pub use body::RecvBody;
pub use error::BackhaulError;

/// Why a request body broke, as its own error says.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
pub use link::PeerLink;
pub use pool::{Backhaul, Ready, Tunnel};
pub use tls::{FleetTls, ALPN};
pub use tunnel::H2Stream;

/// How the backhaul's client side behaves.
pub struct Settings {
    pub tls: FleetTls,
    pub connect_timeout: Duration,
    /// How often each link is PINGed.
    pub ping_interval: Duration,
    /// A PING unanswered this long means the link is dead.
    pub ping_timeout: Duration,
    /// HTTP/2 flow-control windows: how much a stream, and the whole connection,
    /// may have in flight before the receiver reads. A cross-region link needs
    /// room for its bandwidth-delay product.
    pub stream_window: u32,
    pub connection_window: u32,
    /// Backhaul connections and request-body pumps run under it.
    pub watchdog: Option<pollwatch::Watchdog>,
}

impl Settings {
    /// Defaults for a link: windows of 1 MiB per stream and 8 MiB per connection,
    /// a PING every `ping_interval`, a link dead after three missed ones.
    pub fn new(
        tls: FleetTls,
        connect_timeout: Duration,
        ping_interval: Duration,
        watchdog: Option<pollwatch::Watchdog>,
    ) -> Self {
        Settings {
            tls,
            connect_timeout,
            ping_interval,
            ping_timeout: (ping_interval * 3).max(Duration::from_secs(1)),
            stream_window: 1 << 20,
            connection_window: 8 << 20,
            watchdog,
        }
    }
}

/// A socket counted by the watchdog when there is one.
pub(crate) type WatchedTcp =
    tokio_util_either::Either<pollwatch::WatchedIo<tokio::net::TcpStream>, tokio::net::TcpStream>;

pub(crate) fn watched_io(
    probe: Option<&pollwatch::Probe>,
    tcp: tokio::net::TcpStream,
) -> WatchedTcp {
    match probe {
        Some(p) => tokio_util_either::Either::Left(p.io(tcp)),
        None => tokio_util_either::Either::Right(tcp),
    }
}

use tokio_util::either as tokio_util_either;
