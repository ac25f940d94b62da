//! TLS for Tern: certificates picked by SNI from a directory, reloaded on change, and the acceptor.
//!
//! Wiring: [`CertStore::load`] the directory, [`spawn_reloader`] on it, build
//! [`server_configs`] for each ALPN set and wrap them in a [`TlsAcceptor`].
#![forbid(unsafe_code)]

mod acceptor;
mod error;
mod reload;
mod resolve;
mod selfsigned;
mod store;
mod stuck;
mod suites;
mod unvectored;

pub use acceptor::{
    handshake_info, http_alpn, server_configs, HandshakeInfo, ServerConfigs, TlsAcceptor, ALPN_H2,
    ALPN_HTTP11,
};
pub use error::TlsError;
pub use reload::{spawn_reloader, ReloadSummary};
pub use resolve::CertInfo;
pub use selfsigned::generate_self_signed;
pub use store::CertStore;
pub use stuck::{TlsStuckCheck, STUCK_REASON};
pub use tern_config::UnknownSni;
pub use tokio_rustls::server::TlsStream;
pub use unvectored::Unvectored;
