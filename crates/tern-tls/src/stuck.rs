//! A TLS-specific busy-loop check: a server TLS stream that returns `Pending` while
//! rustls wants neither to read nor to write can never be woken by its socket.
//!
//! That is the state of the February 2025 incident (rustls <= 0.23.5: a close_notify
//! followed by a partial record in the same read): tokio-rustls does not read the
//! socket because rustls does not want to read, gets `WouldBlock` from the reader,
//! wakes its own task and returns `Pending`, forever. `pollwatch` would find the
//! resulting spin after its poll threshold; this check reports it on the very first
//! such `Pending`, with the reason, through [`pollwatch::Probe::stuck`].
//!
//! This file is also compiled by `tests/rustls-busy-loop` against rustls 0.23.5, so
//! it must stay self-contained: no `crate::` paths, only `pollwatch`, `tokio`,
//! `tokio-rustls`, `metrics` and (in tests) `rustls` and `rcgen`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use pollwatch::Probe;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

/// The reason given to [`Probe::stuck`].
pub const STUCK_REASON: &str = "tls: Pending while rustls wants neither to read nor to write";

/// A server TLS stream that reports the stuck state (see the module docs) to its
/// connection's probe. Reads and writes are delegated unchanged.
///
/// Counts `tern_tls_stuck_total` once per connection found stuck; the probe is told
/// at every such `Pending`, so each following poll is treated as a spin too.
///
/// The stream is kept boxed (rustls' state is over a kilobyte), so that the futures
/// a connection passes through carry a pointer rather than room for the state.
pub struct TlsStuckCheck<IO> {
    inner: Box<TlsStream<IO>>,
    probe: Probe,
    counted: bool,
}

impl<IO> TlsStuckCheck<IO> {
    /// Takes the stream by value or, without moving it again, already boxed.
    pub fn new(inner: impl Into<Box<TlsStream<IO>>>, probe: Probe) -> Self {
        TlsStuckCheck {
            inner: inner.into(),
            probe,
            counted: false,
        }
    }

    pub fn get_ref(&self) -> &TlsStream<IO> {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut TlsStream<IO> {
        &mut self.inner
    }

    pub fn into_inner(self) -> TlsStream<IO> {
        *self.inner
    }

    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    /// After a `Pending` from the TLS stream: can the socket still wake us?
    fn check_pending(&mut self) {
        let (_, conn) = self.inner.get_ref();
        if conn.wants_read() || conn.wants_write() {
            return;
        }
        if !self.counted {
            self.counted = true;
            metrics::counter!("tern_tls_stuck_total").increment(1);
        }
        self.probe.stuck(STUCK_REASON);
    }
}

impl<IO> std::fmt::Debug for TlsStuckCheck<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStuckCheck")
            .field("conn", &self.probe.id())
            .field("counted", &self.counted)
            .finish_non_exhaustive()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStuckCheck<IO> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if polled.is_pending() {
            this.check_pending();
        }
        polled
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStuckCheck<IO> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::time::Duration;

    use pollwatch::{SpinAction, SpinConfig, Watchdog};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, RootCertStore, ServerConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    type Client = tokio_rustls::client::TlsStream<DuplexStream>;

    /// A TLS pair over an in-memory pipe: the server's stream checked and watched
    /// (cut at the first spin or stuck report), the client's plain.
    async fn pair(probe: &Probe) -> (TlsStuckCheck<pollwatch::WatchedIo<DuplexStream>>, Client) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&versions)
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .expect("server config");
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();

        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from("localhost").expect("name");
        let (server, client) =
            tokio::join!(acceptor.accept(probe.io(a)), connector.connect(name, b));
        (
            TlsStuckCheck::new(server.expect("accept"), probe.clone()),
            client.expect("connect"),
        )
    }

    fn watchdog() -> Watchdog {
        Watchdog::new(SpinConfig {
            polls: 1000,
            window: Duration::from_millis(100),
            action: SpinAction::Close,
        })
    }

    #[tokio::test]
    async fn quiet_on_an_echo_with_pauses_and_a_clean_close() {
        let dog = watchdog();
        let probe = dog.register();
        let (mut server, mut client) = pair(&probe).await;
        let served = tokio::spawn(probe.watch(async move {
            let mut buf = vec![0u8; 4096];
            let mut total = 0;
            loop {
                let n = server.read(&mut buf).await?;
                if n == 0 {
                    server.shutdown().await?;
                    return Ok::<_, io::Error>(total);
                }
                total += n;
                server.write_all(&buf[..n]).await?;
                server.flush().await?;
            }
        }));

        let mut sent = 0;
        for (i, size) in [1, 100, 4096, 20_000, 3].into_iter().enumerate() {
            let msg = vec![i as u8; size];
            client.write_all(&msg).await.expect("write");
            client.flush().await.expect("flush");
            let mut back = vec![0u8; size];
            client.read_exact(&mut back).await.expect("echo");
            assert_eq!(back, msg);
            sent += size;
            // Idle: the server's read is Pending on an empty pipe meanwhile.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client.shutdown().await.expect("close_notify and FIN");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("server's close");
        assert!(rest.is_empty());

        let out = served.await.expect("server task");
        assert_eq!(out.expect("not cut").expect("io"), sent);
        let snap = probe.snapshot();
        assert_eq!(snap.spins, 0, "{snap:?}");
        assert_eq!(snap.self_wakes, 0, "{snap:?}");
    }

    #[tokio::test]
    async fn quiet_on_close_notify_without_fin() {
        let dog = watchdog();
        let probe = dog.register();
        let (mut server, mut client) = pair(&probe).await;
        let served = tokio::spawn(probe.watch(async move {
            let mut buf = Vec::new();
            server.read_to_end(&mut buf).await.map(|_| buf)
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
        client.write_all(b"last words").await.expect("write");
        // close_notify only: the pipe (TCP, in real life) stays open.
        client.get_mut().1.send_close_notify();
        client.flush().await.expect("flush");

        let out = tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("server reached EOF in time")
            .expect("server task");
        assert_eq!(out.expect("not cut").expect("io"), b"last words");
        let snap = probe.snapshot();
        assert_eq!(snap.spins, 0, "{snap:?}");
        assert!(snap.polls < 20, "{snap:?}");
        drop(client);
    }
}
