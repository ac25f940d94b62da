//! The server side of the backhaul: the mutual-TLS handshake, bounded in time,
//! which only a certificate signed by the fleet CA passes; failures are counted.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use crate::identity::peer_node_id;

/// Accepts backhaul connections.
#[derive(Clone)]
pub struct BackhaulAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("backhaul handshake: {0}")]
    Handshake(std::io::Error),
    #[error("backhaul handshake: no answer within {0:?}")]
    Timeout(Duration),
    #[error("backhaul peer certificate names no node")]
    NoNodeName,
}

impl BackhaulAcceptor {
    pub fn new(config: Arc<ServerConfig>, timeout: Duration) -> Self {
        BackhaulAcceptor {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            timeout,
        }
    }

    /// Runs the handshake; on success, the stream and the peer's node id.
    pub async fn accept<IO>(&self, io: IO) -> Result<(TlsStream<IO>, String), AcceptError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let result = match tokio::time::timeout(self.timeout, self.acceptor.accept(io)).await {
            Err(_) => Err(AcceptError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(AcceptError::Handshake(e)),
            Ok(Ok(tls)) => {
                let id = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| peer_node_id(leaf));
                match id {
                    Some(id) => Ok((tls, id)),
                    None => Err(AcceptError::NoNodeName),
                }
            }
        };
        if let Err(e) = &result {
            let reason = match e {
                AcceptError::Timeout(_) => "timeout",
                AcceptError::NoNodeName => "no_node_name",
                AcceptError::Handshake(io) => classify(io),
            };
            metrics::counter!("tern_backhaul_handshake_failures_total", "reason" => reason)
                .increment(1);
            tracing::info!(error = %e, reason, "backhaul handshake refused");
        }
        result
    }
}

/// A short reason for a failed handshake, for the metric's label.
fn classify(e: &std::io::Error) -> &'static str {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return "io";
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(_) => "untrusted_certificate",
        rustls::Error::NoApplicationProtocol => "no_h2",
        _ => "tls",
    }
}
