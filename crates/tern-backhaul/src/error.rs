//! What can go wrong on the backhaul.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BackhaulError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} already exists; a new fleet CA would orphan every node certificate it signed", .0.display())]
    Exists(PathBuf),
    #[error("generating a certificate: {0}")]
    Generate(String),
    #[error("{}: {reason}", path.display())]
    BadPem { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    /// The request was not sent: the peer could not be reached.
    #[error("backhaul to node {node} at {addr}: {reason}")]
    Connect {
        node: String,
        addr: SocketAddr,
        reason: String,
    },
    #[error("backhaul to node {node} at {addr}: no connection within {after:?}")]
    ConnectTimeout {
        node: String,
        addr: SocketAddr,
        after: Duration,
    },
    /// The stream or its connection broke once the request was on its way.
    #[error("backhaul stream: {0}")]
    Stream(#[from] h2::Error),
    /// The client's request body broke as it was streamed to the peer.
    #[error("request body: {0}")]
    RequestBody(#[source] crate::BodyError),
}

impl BackhaulError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        BackhaulError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn generate(e: rcgen::Error) -> Self {
        BackhaulError::Generate(e.to_string())
    }

    /// Whether the request never left this node, so another machine may take it.
    pub fn not_sent(&self) -> bool {
        matches!(
            self,
            BackhaulError::Connect { .. } | BackhaulError::ConnectTimeout { .. }
        )
    }
}
