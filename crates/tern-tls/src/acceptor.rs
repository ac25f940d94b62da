//! The server side of a TLS connection: the rustls config every TLS listener shares and a time-bounded, counted handshake.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::SingleCertAndKey;
use rustls::version::{TLS12, TLS13};
use rustls::{CipherSuite, ProtocolVersion, ServerConfig};
use tern_challenges::{Asked, Challenges, OnDemand, ALPN_ACME_TLS};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::server::{StartHandshake, TlsStream};
use tokio_rustls::LazyConfigAcceptor;

use crate::error::TlsError;
use crate::store::CertStore;
use crate::suites;
use crate::unvectored::Unvectored;

pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The ALPN list for HTTP listeners: h2 preferred, then HTTP/1.1.
pub fn http_alpn() -> Vec<Vec<u8>> {
    vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()]
}

/// The message rustls gives when the certificate resolver returns nothing; it is the
/// only way to tell a rejected SNI from other failures after the fact.
const NO_CERT_RESOLVED: &str = "no server certificate chain resolved";

/// The two configs a TLS listener picks between for each ClientHello (see
/// [`crate::suites`]): the same certificates, versions and ALPN, AES-128-GCM first in
/// both, but only one follows the client's order.
#[derive(Clone)]
pub struct ServerConfigs {
    ours: Arc<ServerConfig>,
    clients: Arc<ServerConfig>,
    /// What both resolve certificates from.
    store: Arc<CertStore>,
}

impl ServerConfigs {
    /// The config for a handshake that offers `offered`.
    fn for_offer(&self, offered: &[CipherSuite]) -> &Arc<ServerConfig> {
        if suites::follows_client(offered, &self.ours.crypto_provider().cipher_suites) {
            &self.clients
        } else {
            &self.ours
        }
    }
}

impl std::fmt::Debug for ServerConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfigs")
            .field("alpn", &self.ours.alpn_protocols)
            .finish_non_exhaustive()
    }
}

/// Server configs picking certificates from `store`, TLS 1.2 and 1.3 only, offering
/// `alpn` (empty for raw TLS listeners).
pub fn server_configs(store: Arc<CertStore>, alpn: Vec<Vec<u8>>) -> ServerConfigs {
    let mut config = config_with(Arc::clone(&store) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = alpn;
    let clients = Arc::new(config.clone());
    config.ignore_client_order = true;
    ServerConfigs {
        ours: Arc::new(config),
        clients,
        store,
    }
}

/// TLS 1.2 and 1.3 on ring, AES-128-GCM first, certificates from `resolver`.
fn config_with(resolver: Arc<dyn ResolvesServerCert>) -> ServerConfig {
    let mut provider = rustls::crypto::ring::default_provider();
    suites::aes128_first(&mut provider);
    ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&TLS13, &TLS12])
        // Only fails if the provider lacks suites for both versions, which ring's
        // default provider never does; the tests exercise this path.
        .expect("ring's default provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver)
}

/// Accepts TLS on any stream, giving up after `handshake_timeout`.
#[derive(Clone)]
pub struct TlsAcceptor {
    configs: ServerConfigs,
    handshake_timeout: Duration,
    /// TLS-ALPN-01 answers, for a node that orders certificates by ACME.
    challenges: Option<Arc<Challenges>>,
    /// Where a handshake for a name with no certificate asks for one (ACME on demand).
    on_demand: Option<Arc<OnDemand>>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    pub fn new(configs: ServerConfigs, handshake_timeout: Duration) -> TlsAcceptor {
        TlsAcceptor {
            configs,
            handshake_timeout,
            challenges: None,
            on_demand: None,
        }
    }

    /// Answers ACME TLS-ALPN-01 validations from `challenges` (RFC 8737), if
    /// any: a ClientHello offering `acme-tls/1` gets the challenge's certificate
    /// for its SNI, and nothing else; every other handshake is unchanged.
    pub fn with_acme_challenges(mut self, challenges: Option<Arc<Challenges>>) -> Self {
        self.challenges = challenges;
        self
    }

    /// Asks `on_demand`, if any, for a certificate when a ClientHello names a
    /// host that no certificate names, and holds the handshake until it is
    /// served or the order's wait is over; a name that no app claims orders
    /// nothing and goes on at once (to the fallback or the refusal).
    pub fn with_on_demand(mut self, on_demand: Option<Arc<OnDemand>>) -> Self {
        self.on_demand = on_demand;
        self
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Runs the handshake. On timeout the stream is dropped, which closes the connection,
    /// so a client that sends nothing cannot hold a socket open.
    pub async fn accept<IO>(&self, io: IO) -> Result<TlsStream<Unvectored<IO>>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let result = self.handshake(io).await;
        match &result {
            Ok(_) => metrics::counter!("tern_tls_handshakes_total").increment(1),
            // Counted as tern_acme_challenges_answered_total instead.
            Err(TlsError::AcmeChallenge { answered: true }) => {}
            Err(e) => {
                let reason = e.handshake_reason().unwrap_or("io");
                metrics::counter!("tern_tls_handshake_errors_total", "reason" => reason)
                    .increment(1);
                tracing::debug!(error = %e, reason, "TLS handshake failed");
            }
        }
        result
    }

    /// The ClientHello is read first, so that its cipher suites can pick the
    /// config. The whole handshake has the handshake timeout, plus the time it
    /// waited for an on-demand order (itself bounded).
    async fn handshake<IO>(&self, io: IO) -> Result<TlsStream<Unvectored<IO>>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut deadline = tokio::time::Instant::now() + self.handshake_timeout;
        let hello = LazyConfigAcceptor::new(Acceptor::default(), Unvectored::new(io));
        let start = self.by(deadline, hello).await?;
        if let Some(challenges) = &self.challenges {
            if offers_acme_tls(&start.client_hello()) {
                // An ACME validation's handshake ends there, answered or refused.
                return Err(self
                    .by(deadline, answer_tls_alpn01(start, challenges))
                    .await?);
            }
        }
        if let Some(on_demand) = &self.on_demand {
            let sni = start.client_hello().server_name().map(str::to_owned);
            if let Some(sni) = sni.filter(|s| !self.configs.store.names(s)) {
                let waiting = tokio::time::Instant::now();
                wait_for_order(on_demand, &sni).await;
                deadline += waiting.elapsed();
            }
        }
        let config = self.configs.for_offer(start.client_hello().cipher_suites());
        self.by(deadline, start.into_stream(Arc::clone(config)))
            .await
    }

    async fn by<T>(
        &self,
        deadline: tokio::time::Instant,
        step: impl Future<Output = io::Result<T>>,
    ) -> Result<T, TlsError> {
        match tokio::time::timeout_at(deadline, step).await {
            Ok(done) => done.map_err(classify),
            Err(_) => Err(TlsError::HandshakeTimeout(self.handshake_timeout)),
        }
    }
}

/// Asks for a certificate for `sni` and waits, at most the on-demand wait, for
/// the order to end; counted per handshake by how it ended.
async fn wait_for_order(on_demand: &OnDemand, sni: &str) {
    let result = match on_demand.ask(sni) {
        Asked::Unclaimed => "unclaimed",
        Asked::HeldOff => "held_off",
        Asked::Ordering(mut outcome) => {
            let ended = outcome.wait_for(Option::is_some);
            match tokio::time::timeout(on_demand.wait(), ended).await {
                Ok(Ok(served)) if *served == Some(true) => "served",
                Ok(_) => "failed",
                Err(_) => "timed_out",
            }
        }
    };
    if result != "served" {
        tracing::info!(
            sni,
            result,
            "ACME on demand: no certificate for this handshake"
        );
    }
    metrics::counter!("tern_acme_on_demand_handshakes_total", "result" => result).increment(1);
}

fn offers_acme_tls(hello: &ClientHello<'_>) -> bool {
    hello
        .alpn()
        .is_some_and(|mut offered| offered.any(|p| p == ALPN_ACME_TLS))
}

/// Completes a TLS-ALPN-01 validation's handshake with the challenge's
/// certificate for its SNI and closes it; with no challenge open for that name,
/// refuses it (the RFC forbids answering with an ordinary certificate).
async fn answer_tls_alpn01<IO>(
    start: StartHandshake<Unvectored<IO>>,
    challenges: &Challenges,
) -> io::Result<TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let sni = start.client_hello().server_name().map(str::to_owned);
    let Some(cert) = sni.as_deref().and_then(|s| challenges.tls_alpn01_cert(s)) else {
        tracing::info!(sni = ?sni, "ACME TLS-ALPN-01 handshake for a name with no open challenge; refused");
        return Ok(TlsError::AcmeChallenge { answered: false });
    };
    let mut config = config_with(Arc::new(SingleCertAndKey::from(cert)));
    config.alpn_protocols = vec![ALPN_ACME_TLS.to_vec()];
    let mut stream = start.into_stream(Arc::new(config)).await?;
    // The validator only needs the handshake; nothing is served after it.
    let _ = stream.shutdown().await;
    tracing::info!(sni = ?sni, "answered an ACME TLS-ALPN-01 validation");
    metrics::counter!("tern_acme_challenges_answered_total", "challenge" => "tls-alpn-01")
        .increment(1);
    Ok(TlsError::AcmeChallenge { answered: true })
}

/// tokio-rustls wraps rustls errors as `InvalidData` I/O errors; anything else came from
/// the socket itself.
fn classify(err: io::Error) -> TlsError {
    let rustls_err = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_err {
        Some(rustls::Error::General(msg)) if msg == NO_CERT_RESOLVED => TlsError::UnknownSni,
        Some(_) => TlsError::Protocol(err),
        None if err.kind() == io::ErrorKind::InvalidData => TlsError::Protocol(err),
        None => TlsError::HandshakeIo(err),
    }
}

/// What the handshake settled, for routing (SNI) and picking the HTTP version (ALPN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeInfo {
    /// The server name the client asked for, lowercased by rustls; `None` if it sent none.
    pub sni: Option<String>,
    /// The agreed ALPN protocol, e.g. `b"h2"`; `None` if none was agreed.
    pub alpn: Option<Vec<u8>>,
    pub version: Option<ProtocolVersion>,
    /// Whether the client resumed an earlier session (no certificate sent, no
    /// key exchange signed) rather than making a full handshake.
    pub resumed: bool,
}

impl HandshakeInfo {
    pub fn is_h2(&self) -> bool {
        self.alpn.as_deref() == Some(ALPN_H2)
    }
}

pub fn handshake_info<IO>(stream: &TlsStream<IO>) -> HandshakeInfo {
    let (_, conn) = stream.get_ref();
    HandshakeInfo {
        sni: conn.server_name().map(str::to_owned),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version(),
        resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
    }
}
