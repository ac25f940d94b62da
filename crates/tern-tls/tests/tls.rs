//! End-to-end TLS over real sockets on 127.0.0.1, with certificates generated into a temp dir.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CipherSuite, ClientConfig, DigitallySignedStruct, ProtocolVersion, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tern_tls::{
    generate_self_signed, handshake_info, http_alpn, server_configs, spawn_reloader, CertStore,
    HandshakeInfo, TlsAcceptor, TlsError, UnknownSni,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The tests check which certificate was served, not whether a CA vouches for it.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

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

struct Client {
    versions: Vec<&'static rustls::SupportedProtocolVersion>,
    alpn: Vec<Vec<u8>>,
    sni: Option<&'static str>,
    /// The cipher suites offered, in order; `None` offers ring's default list.
    suites: Option<Vec<CipherSuite>>,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            alpn: Vec::new(),
            sni: None,
            suites: None,
        }
    }
}

type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

impl Client {
    fn sni(name: &'static str) -> Client {
        Client {
            sni: Some(name),
            ..Client::default()
        }
    }

    async fn connect(&self, addr: std::net::SocketAddr) -> std::io::Result<ClientStream> {
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(order) = &self.suites {
            let all = provider.cipher_suites;
            provider.cipher_suites = order
                .iter()
                .filter_map(|c| all.iter().find(|s| s.suite() == *c).copied())
                .collect();
        }
        let provider = Arc::new(provider);
        let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&self.versions)
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth();
        config.alpn_protocols = self.alpn.clone();
        // rustls always needs a name to check against; with SNI off it is simply not sent.
        config.enable_sni = self.sni.is_some();
        let name = ServerName::try_from(self.sni.unwrap_or("no-sni.invalid"))
            .expect("name")
            .to_owned();
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }
}

fn leaf(stream: &ClientStream) -> Vec<u8> {
    let (_, conn) = stream.get_ref();
    conn.peer_certificates().expect("peer certificates")[0].to_vec()
}

fn file_leaf(dir: &Path, stem: &str) -> Vec<u8> {
    CertificateDer::from_pem_file(dir.join(format!("{stem}.crt")))
        .expect("cert file")
        .to_vec()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Accepts forever, echoing on each connection, and reports every handshake's outcome.
struct Server {
    addr: std::net::SocketAddr,
    results: mpsc::UnboundedReceiver<Result<HandshakeInfo, TlsError>>,
}

async fn serve(acceptor: TlsAcceptor) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, results) = mpsc::unbounded_channel();
    // The accept loop lives until the test's runtime ends.
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let _ = tx.send(Ok(handshake_info(&tls)));
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = tls.read(&mut buf).await {
                            if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            let _ = tls.flush().await;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        }
    });
    Server { addr, results }
}

impl Server {
    async fn next(&mut self) -> Result<HandshakeInfo, TlsError> {
        tokio::time::timeout(Duration::from_secs(5), self.results.recv())
            .await
            .expect("server result in time")
            .expect("server alive")
    }
}

async fn echo(stream: &mut ClientStream, msg: &[u8]) {
    stream.write_all(msg).await.expect("write");
    stream.flush().await.expect("flush");
    let mut buf = vec![0u8; msg.len()];
    stream.read_exact(&mut buf).await.expect("read");
    assert_eq!(buf, msg);
}

/// exact.test (exact), *.wild.test (wildcard), a.wild.test (a more specific exact one), default.
fn sni_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    generate_self_signed(dir.path(), "default", &names(&["default.test"])).expect("gen");
    generate_self_signed(dir.path(), "exact", &names(&["exact.test"])).expect("gen");
    generate_self_signed(dir.path(), "wild", &names(&["*.wild.test"])).expect("gen");
    generate_self_signed(dir.path(), "a-wild", &names(&["a.wild.test"])).expect("gen");
    dir
}

async fn server_for(
    dir: &Path,
    unknown: UnknownSni,
    alpn: Vec<Vec<u8>>,
) -> (Arc<CertStore>, Server) {
    let store = CertStore::load(dir, unknown).expect("load");
    let acceptor = TlsAcceptor::new(
        server_configs(Arc::clone(&store), alpn),
        Duration::from_secs(5),
    );
    (store, serve(acceptor).await)
}

#[tokio::test]
async fn sni_exact_and_wildcard_pick_the_right_certificate() {
    let dir = sni_dir();
    let d = dir.path();
    let (_store, mut server) =
        server_for(d, UnknownSni::DefaultCert("default".into()), Vec::new()).await;

    for (sni, stem) in [
        ("exact.test", "exact"),
        ("EXACT.Test", "exact"),
        ("b.wild.test", "wild"),
        ("a.wild.test", "a-wild"),
        // A wildcard covers one label only, and not the bare parent.
        ("x.y.wild.test", "default"),
        ("wild.test", "default"),
        ("nothing.test", "default"),
    ] {
        let mut stream = Client::sni(sni).connect(server.addr).await.expect(sni);
        assert_eq!(
            leaf(&stream),
            file_leaf(d, stem),
            "SNI {sni} should get {stem}"
        );
        let info = server.next().await.expect("server handshake");
        assert_eq!(info.sni.as_deref(), Some(sni.to_ascii_lowercase().as_str()));
        echo(&mut stream, b"ping").await;
    }

    let stream = Client::default()
        .connect(server.addr)
        .await
        .expect("no SNI");
    assert_eq!(leaf(&stream), file_leaf(d, "default"));
    assert_eq!(server.next().await.expect("ok").sni, None);
}

#[tokio::test]
async fn unknown_sni_is_rejected_when_configured() {
    let dir = sni_dir();
    let (store, mut server) = server_for(dir.path(), UnknownSni::Reject, Vec::new()).await;
    assert!(store.lookup(Some("nothing.test")).is_none());

    assert!(Client::sni("nothing.test")
        .connect(server.addr)
        .await
        .is_err());
    assert!(matches!(server.next().await, Err(TlsError::UnknownSni)));
    assert!(Client::default().connect(server.addr).await.is_err());
    assert!(matches!(server.next().await, Err(TlsError::UnknownSni)));
    // Known names still work.
    Client::sni("b.wild.test")
        .connect(server.addr)
        .await
        .expect("known");
    server.next().await.expect("ok");
}

#[test]
fn missing_default_cert_fails_load() {
    let dir = sni_dir();
    let err = CertStore::load(dir.path(), UnknownSni::DefaultCert("nope".into())).unwrap_err();
    assert!(
        matches!(err, TlsError::DefaultCertMissing { ref name, .. } if name == "nope"),
        "{err}"
    );
}

#[test]
fn bad_files_are_reported_with_their_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    generate_self_signed(dir.path(), "good", &names(&["good.test"])).expect("gen");
    std::fs::write(dir.path().join("broken.pem"), "not pem at all").expect("write");
    let err = CertStore::load(dir.path(), UnknownSni::Reject).unwrap_err();
    assert!(
        matches!(err, TlsError::BadPem { ref path, .. } if path.ends_with("broken.pem")),
        "{err}"
    );
    assert!(err.to_string().contains("broken.pem"), "{err}");

    std::fs::remove_file(dir.path().join("broken.pem")).expect("rm");
    std::fs::write(dir.path().join("lonely.crt"), "x").expect("write");
    let err = CertStore::load(dir.path(), UnknownSni::Reject).unwrap_err();
    assert!(matches!(err, TlsError::MissingKey { .. }), "{err}");

    // A key that is not the certificate's.
    std::fs::remove_file(dir.path().join("lonely.crt")).expect("rm");
    generate_self_signed(dir.path(), "other", &names(&["other.test"])).expect("gen");
    std::fs::copy(dir.path().join("other.key"), dir.path().join("good.key")).expect("cp");
    let err = CertStore::load(dir.path(), UnknownSni::Reject).unwrap_err();
    assert!(
        matches!(err, TlsError::BadKey { ref path, .. } if path.ends_with("good.key")),
        "{err}"
    );
}

#[tokio::test]
async fn single_pem_file_holding_chain_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gen = tempfile::tempdir().expect("tempdir");
    generate_self_signed(gen.path(), "combo", &names(&["combo.test"])).expect("gen");
    let crt = std::fs::read_to_string(gen.path().join("combo.crt")).expect("crt");
    let key = std::fs::read_to_string(gen.path().join("combo.key")).expect("key");
    std::fs::write(dir.path().join("combo.pem"), format!("{crt}{key}")).expect("write");
    let (store, server) = server_for(dir.path(), UnknownSni::Reject, Vec::new()).await;
    assert_eq!(
        store.certificates()[0].names,
        vec!["combo.test".to_string()]
    );
    let stream = Client::sni("combo.test")
        .connect(server.addr)
        .await
        .expect("tls");
    assert_eq!(leaf(&stream), file_leaf(gen.path(), "combo"));
}

#[tokio::test]
async fn tls12_and_tls13_complete_and_alpn_h2_is_negotiated() {
    let dir = sni_dir();
    let (_store, mut server) = server_for(dir.path(), UnknownSni::Reject, http_alpn()).await;
    for (version, expected) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let client = Client {
            versions: vec![version],
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            ..Client::sni("exact.test")
        };
        let mut stream = client.connect(server.addr).await.expect("handshake");
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let info = server.next().await.expect("ok");
        assert_eq!(info.version, Some(expected));
        assert!(info.is_h2());
        echo(&mut stream, b"hello").await;
    }
    // A client offering only HTTP/1.1 gets it; one offering nothing gets no ALPN.
    let client = Client {
        alpn: vec![b"http/1.1".to_vec()],
        ..Client::sni("exact.test")
    };
    client.connect(server.addr).await.expect("h1");
    assert_eq!(
        server.next().await.expect("ok").alpn.as_deref(),
        Some(&b"http/1.1"[..])
    );
    Client::sni("exact.test")
        .connect(server.addr)
        .await
        .expect("none");
    assert_eq!(server.next().await.expect("ok").alpn, None);
}

#[tokio::test]
async fn raw_tls_listener_offers_no_alpn() {
    let dir = sni_dir();
    let (_store, mut server) = server_for(dir.path(), UnknownSni::Reject, Vec::new()).await;
    let client = Client {
        alpn: vec![b"h2".to_vec()],
        ..Client::sni("exact.test")
    };
    let stream = client.connect(server.addr).await.expect("tls");
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    assert_eq!(server.next().await.expect("ok").alpn, None);
}

/// Replaces STEM's pair the way a deploy would: new files renamed into place.
fn replace_cert(dir: &Path, stem: &str, names_: &[&str]) {
    let staging = tempfile::tempdir_in(dir).expect("staging");
    generate_self_signed(staging.path(), stem, &names(names_)).expect("gen");
    for ext in ["key", "crt"] {
        let file = format!("{stem}.{ext}");
        std::fs::rename(staging.path().join(&file), dir.join(&file)).expect("rename");
    }
}

#[tokio::test]
async fn reloader_serves_new_certificate_and_keeps_old_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    generate_self_signed(d, "site", &names(&["site.test"])).expect("gen");
    let old = file_leaf(d, "site");
    let (store, mut server) = server_for(d, UnknownSni::Reject, Vec::new()).await;
    let reloader = spawn_reloader(Arc::clone(&store), Duration::from_millis(50));

    let mut before = Client::sni("site.test")
        .connect(server.addr)
        .await
        .expect("tls");
    assert_eq!(leaf(&before), old);
    server.next().await.expect("ok");
    echo(&mut before, b"before reload").await;

    replace_cert(d, "site", &["site.test", "new.site.test"]);
    let new = file_leaf(d, "site");
    assert_ne!(old, new);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stream = Client::sni("site.test")
            .connect(server.addr)
            .await
            .expect("tls");
        server.next().await.expect("ok");
        if leaf(&stream) == new {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reloader never picked up the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Client::sni("new.site.test")
        .connect(server.addr)
        .await
        .expect("new name served");
    server.next().await.expect("ok");

    // The connection made before the reload still carries data.
    echo(&mut before, b"after reload").await;
    assert_eq!(leaf(&before), old);
    reloader.abort();
}

#[tokio::test]
async fn bad_pem_on_reload_keeps_the_old_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    generate_self_signed(d, "site", &names(&["site.test"])).expect("gen");
    let good = file_leaf(d, "site");
    let (store, mut server) = server_for(d, UnknownSni::Reject, Vec::new()).await;
    let reloader = spawn_reloader(Arc::clone(&store), Duration::from_millis(20));

    std::fs::write(d.join("site.crt"), "-----BEGIN CERTIFICATE-----\ngarbage\n").expect("write");
    let err = store.reload().unwrap_err();
    assert!(err.to_string().contains("site.crt"), "{err}");
    assert!(matches!(err, TlsError::BadPem { .. }), "{err}");
    // Give the poller several chances to make things worse.
    tokio::time::sleep(Duration::from_millis(150)).await;

    let stream = Client::sni("site.test")
        .connect(server.addr)
        .await
        .expect("still served");
    assert_eq!(leaf(&stream), good);
    server.next().await.expect("ok");
    assert_eq!(store.certificates().len(), 1);

    // Fixing the file is picked up again.
    replace_cert(d, "site", &["site.test"]);
    let fixed = file_leaf(d, "site");
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.lookup(Some("site.test")).map(|k| k.cert[0].to_vec()) != Some(fixed.clone()) {
        assert!(Instant::now() < deadline, "fixed certificate never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reloader.abort();
}

#[tokio::test]
async fn silent_client_is_dropped_after_the_handshake_timeout() {
    let dir = sni_dir();
    let store = CertStore::load(dir.path(), UnknownSni::Reject).expect("load");
    let timeout = Duration::from_millis(200);
    let acceptor = TlsAcceptor::new(server_configs(store, Vec::new()), timeout);
    let mut server = serve(acceptor).await;

    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buf))
        .await
        .expect("server closed the connection in time");
    // EOF or reset: either way the server let go.
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= timeout);
    assert!(matches!(server.next().await, Err(TlsError::HandshakeTimeout(t)) if t == timeout));
}

#[tokio::test]
async fn garbage_instead_of_client_hello_is_a_protocol_error() {
    let dir = sni_dir();
    let (_store, mut server) = server_for(dir.path(), UnknownSni::Reject, Vec::new()).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let err = server.next().await.unwrap_err();
    assert_eq!(err.handshake_reason(), Some("protocol"), "{err}");
}

#[tokio::test]
async fn openssl_tls11_is_refused() {
    let openssl = Path::new("/usr/bin/openssl");
    if !openssl.exists() {
        println!("note: /usr/bin/openssl missing; skipping the TLS 1.1 refusal test");
        return;
    }
    let dir = sni_dir();
    let (_store, mut server) = server_for(dir.path(), UnknownSni::Reject, Vec::new()).await;
    let addr = server.addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(openssl)
            .args([
                "s_client",
                "-connect",
                &addr,
                "-servername",
                "exact.test",
                "-tls1_1",
            ])
            // Lets OpenSSL 3 actually send a TLS 1.1 hello instead of refusing locally.
            .args(["-cipher", "DEFAULT:@SECLEVEL=0"])
            .stdin(std::process::Stdio::null())
            .output()
    })
    .await
    .expect("join")
    .expect("run openssl");
    assert!(
        !output.status.success(),
        "openssl negotiated TLS 1.1: {output:?}"
    );
    // The server saw a hello and refused it, rather than openssl giving up before sending one.
    let err = server.next().await.unwrap_err();
    assert_eq!(err.handshake_reason(), Some("protocol"), "{err}");
}

#[cfg(unix)]
#[test]
fn self_signed_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    generate_self_signed(dir.path(), "demo", &names(&["*.localhost", "localhost"])).expect("gen");
    let mode = std::fs::metadata(dir.path().join("demo.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let store = CertStore::load(dir.path(), UnknownSni::DefaultCert("demo".into())).expect("load");
    assert!(store.lookup(Some("app.localhost")).is_some());
    assert_eq!(
        store.certificates()[0].names,
        names(&["*.localhost", "localhost"])
    );
    assert!(generate_self_signed(dir.path(), "none", &[]).is_err());
}

/// AES-128-GCM wins over the client's AES-256-GCM (OpenSSL's default order), in both
/// versions; a client leading with ChaCha20-Poly1305 keeps it; a client offering only
/// AES-256-GCM still gets through.
#[tokio::test]
async fn the_cipher_suite_is_aes128_gcm_unless_the_client_leads_with_chacha20() {
    use CipherSuite as C;
    let dir = sni_dir();
    let (_store, mut server) = server_for(
        dir.path(),
        UnknownSni::DefaultCert("default".into()),
        Vec::new(),
    )
    .await;
    let v13 = vec![&rustls::version::TLS13];
    let v12 = vec![&rustls::version::TLS12];
    for (versions, offered, expected) in [
        (
            &v13,
            vec![
                C::TLS13_AES_256_GCM_SHA384,
                C::TLS13_CHACHA20_POLY1305_SHA256,
                C::TLS13_AES_128_GCM_SHA256,
            ],
            C::TLS13_AES_128_GCM_SHA256,
        ),
        (
            &v13,
            vec![
                C::TLS13_CHACHA20_POLY1305_SHA256,
                C::TLS13_AES_256_GCM_SHA384,
                C::TLS13_AES_128_GCM_SHA256,
            ],
            C::TLS13_CHACHA20_POLY1305_SHA256,
        ),
        (
            &v13,
            vec![C::TLS13_AES_256_GCM_SHA384],
            C::TLS13_AES_256_GCM_SHA384,
        ),
        (
            &v12,
            vec![
                C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ],
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            &v12,
            vec![
                C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ],
            C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ] {
        let client = Client {
            versions: versions.clone(),
            suites: Some(offered.clone()),
            ..Client::sni("default.test")
        };
        let mut stream = client.connect(server.addr).await.expect("handshake");
        let (_, conn) = stream.get_ref();
        let agreed = conn.negotiated_cipher_suite().expect("a suite").suite();
        assert_eq!(agreed, expected, "offered {offered:?}");
        server.next().await.expect("server handshake");
        echo(&mut stream, b"ping").await;
    }
}
