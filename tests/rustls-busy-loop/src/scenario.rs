//! The February 2025 busy loop, as a scenario over real sockets on 127.0.0.1.
//!
//! A client sends a few bytes of application data, its close_notify alert and the
//! start of another record, all in ONE TCP write, and keeps TCP open. A server task
//! reads that connection to EOF under a `pollwatch` probe. With rustls <= 0.23.5 the
//! fragment after close_notify stays buffered forever: the reader says WouldBlock
//! while `wants_read()` is false, so tokio-rustls never reads the socket again,
//! wakes its own task and returns Pending, and the task is polled in a tight loop.
//! With rustls >= 0.23.7 the server reaches EOF after a few polls.
//!
//! This file is compiled twice: by `tests/rustls-busy-loop` (rustls 0.23.5,
//! tokio-rustls 0.26.0) and by `crates/tern-tls/tests/busy_loop.rs` (the
//! workspace's rustls). Use only APIs both have. It expects a sibling module
//! `stuck` that provides `TlsStuckCheck` (tern-tls's TLS stuck check).

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollwatch::{Probe, SpinAction, SpinConfig, Spun, Watchdog};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, SignatureScheme,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::stuck::TlsStuckCheck;

/// The application data the client sends before its close_notify.
pub const PAYLOAD: &[u8] = b"hello, then goodbye";

/// What follows the close_notify alert in the client's one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// `17 03 03 01`: four bytes of a record header, never completed.
    PartialHeader,
    /// A whole, valid application-data record of about 5 KiB: the server's 4 KiB
    /// read takes the close_notify and cuts this record.
    CutRecord,
}

/// How to run the scenario.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// What pollwatch does when the server task spins (1000 polls within 100 ms).
    pub action: SpinAction,
    /// How long to let the server task run after the client's write.
    pub wait: Duration,
    pub tail: Tail,
    /// Wrap the server's TLS stream in tern-tls's `TlsStuckCheck`.
    pub stuck_check: bool,
}

impl Options {
    pub fn new(action: SpinAction, wait: Duration) -> Options {
        Options {
            action,
            wait,
            tail: Tail::PartialHeader,
            stuck_check: false,
        }
    }
}

/// What the server task did after the client's write.
#[derive(Debug)]
pub struct Outcome {
    /// Set when pollwatch cut the server task.
    pub spun: Option<Spun>,
    /// The server's `read_to_end` returned `Ok`.
    pub reached_eof: bool,
    /// What the server read, when it reached EOF.
    pub received: Vec<u8>,
    /// An I/O error the server task ended with, if any.
    pub error: Option<String>,
    /// The server task ended (EOF, error or cut) within `wait`.
    pub finished: bool,
    /// From the client's write to the end of the server task, or to `wait`.
    pub elapsed: Duration,
    /// Polls of the server task after the client's write.
    pub polls: u64,
    /// Of those, polls during which the task woke itself.
    pub self_wakes: u64,
    /// Spins pollwatch found on this connection (since it was opened).
    pub spins: u64,
}

impl Outcome {
    /// Polls per second after the client's write.
    pub fn poll_rate(&self) -> f64 {
        self.polls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs the scenario with the given spin action, letting the server run for up to
/// `wait` after the client's write; the tail is a partial record header.
pub async fn run(action: SpinAction, wait: Duration) -> Outcome {
    run_with(Options::new(action, wait)).await
}

type Served = Result<io::Result<Vec<u8>>, Spun>;

pub async fn run_with(opts: Options) -> Outcome {
    let (cert, key) = self_signed();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let server_config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let dog = Watchdog::new(SpinConfig {
        polls: 1000,
        window: Duration::from_millis(100),
        action: opts.action,
    });
    let probe = dog.register();
    let (accepted_tx, accepted_rx) = oneshot::channel::<()>();
    let (probe_tx, probe_rx) = oneshot::channel::<Probe>();
    let server = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.expect("accept");
        probe.set("peer", peer.to_string());
        let _ = probe_tx.send(probe.clone());
        let io = probe.io(tcp);
        let check = probe.clone();
        probe
            .watch(async move {
                let tls = acceptor.accept(io).await?;
                let _ = accepted_tx.send(());
                let mut buf = Vec::new();
                if opts.stuck_check {
                    TlsStuckCheck::new(tls, check).read_to_end(&mut buf).await?;
                } else {
                    let mut tls = tls;
                    tls.read_to_end(&mut buf).await?;
                }
                Ok(buf)
            })
            .await
    });

    let client_provider = Arc::clone(&provider);
    let client = tokio::task::spawn_blocking(move || client(addr, client_provider, opts.tail));
    let (mut sock, wire) = client.await.expect("client task").expect("client");
    let probe = probe_rx.await.expect("server accepted TCP");
    accepted_rx.await.expect("server finished the handshake");
    // Let the server settle into its first read (Pending, socket empty).
    tokio::time::sleep(Duration::from_millis(20)).await;

    let before = probe.snapshot();
    let sent = Instant::now();
    // One write, small enough never to block on loopback; TCP stays open below.
    sock.write_all(&wire).expect("client write");

    let mut server = server;
    let ended: Option<Served> = match tokio::time::timeout(opts.wait, &mut server).await {
        Ok(joined) => Some(joined.expect("server task")),
        Err(_) => None,
    };
    let elapsed = sent.elapsed().min(opts.wait);
    let after = probe.snapshot();
    if ended.is_none() {
        server.abort();
        let _ = server.await;
    }
    drop(sock);

    let mut outcome = Outcome {
        spun: None,
        reached_eof: false,
        received: Vec::new(),
        error: None,
        finished: ended.is_some(),
        elapsed,
        polls: after.polls - before.polls,
        self_wakes: after.self_wakes - before.self_wakes,
        spins: after.spins,
    };
    match ended {
        Some(Ok(Ok(buf))) => {
            outcome.reached_eof = true;
            outcome.received = buf;
        }
        Some(Ok(Err(e))) => outcome.error = Some(e.to_string()),
        Some(Err(spun)) => outcome.spun = Some(spun),
        None => {}
    }
    outcome
}

/// The client, with a raw `rustls::ClientConnection` over a blocking socket: runs the
/// handshake, then prepares (but does not send) application data, close_notify and
/// the tail, returning the socket and the bytes for the one write.
fn client(
    addr: SocketAddr,
    provider: Arc<CryptoProvider>,
    tail: Tail,
) -> io::Result<(std::net::TcpStream, Vec<u8>)> {
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("server name");
    let mut conn = ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
    let mut sock = std::net::TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    // The client's Finished may still be queued.
    while conn.wants_write() {
        conn.write_tls(&mut sock)?;
    }
    sock.flush()?;

    let mut wire = Vec::new();
    conn.writer().write_all(PAYLOAD)?;
    while conn.wants_write() {
        conn.write_tls(&mut wire)?;
    }
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(&mut wire)?;
    }
    match tail {
        Tail::PartialHeader => wire.extend_from_slice(&[0x17, 0x03, 0x03, 0x01]),
        Tail::CutRecord => {
            // rustls still encrypts after close_notify: a record that is valid in
            // sequence, and too big for the server's first 4 KiB read.
            conn.writer().write_all(&[0x42; 5000])?;
            let start = wire.len();
            while conn.wants_write() {
                conn.write_tls(&mut wire)?;
            }
            assert!(
                wire.len() - start > 4096,
                "record of {} bytes",
                wire.len() - start
            );
        }
    }
    Ok((sock, wire))
}

fn self_signed() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate().expect("key pair");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (cert.der().clone(), key)
}

/// The scenario is about reading, not about trust: accept the server's certificate.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
