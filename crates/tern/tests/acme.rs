//! Certificates by ACME against a real ACME server: Let's Encrypt's test server
//! pebble (Debian's `pebble` package), with `pebble-challtestsrv` as its DNS so
//! that every name resolves to 127.0.0.1, where `tern run` answers the
//! validations on its own listeners.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// pebble and its DNS server, killed on drop.
struct Pebble {
    children: Vec<Child>,
    /// The ACME directory URL.
    directory: String,
    /// The CA of pebble's own HTTPS listener, for `acme.ca_root`.
    listener_ca: PathBuf,
    /// The management API (issuing roots) and the DNS server's.
    management: SocketAddr,
    dns_management: SocketAddr,
    log: PathBuf,
}

impl Pebble {
    /// Validates on Tern's `http_port` and `tls_port`; certificates last
    /// `validity` seconds.
    fn start(dir: &Path, http_port: u16, tls_port: u16, validity: u64) -> Pebble {
        let dir = dir.join("pebble");
        std::fs::create_dir_all(&dir).unwrap();
        let certs = make_certs(&dir, &["127.0.0.1", "localhost"]);
        let (acme, management) = (free_port(), free_port());
        let (dns, dns_management) = (free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": certs.dir.join("site.crt"),
                "privateKey": certs.dir.join("site.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity,
            }
        });
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = dir.join("pebble.log");
        let out = || {
            Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
        };
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .stdout(out())
            .stderr(out())
            .spawn()
            .expect("start pebble-challtestsrv (Debian package pebble)");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random sleep before validating, no nonces refused on purpose,
            // and no authorization reused: each order is validated anew.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(out())
            .stderr(out())
            .spawn()
            .expect("start pebble (Debian package pebble)");
        let p = Pebble {
            children: vec![dns_server, pebble],
            directory: format!("https://127.0.0.1:{acme}/dir"),
            listener_ca: certs.ca_path,
            management: ([127, 0, 0, 1], management).into(),
            dns_management: ([127, 0, 0, 1], dns_management).into(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(listening([127, 0, 0, 1].into(), acme)
            && listening([127, 0, 0, 1].into(), dns_management))
        {
            assert!(
                Instant::now() < deadline,
                "pebble did not start:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The root that pebble issues under (made afresh each time it starts).
    fn issuing_root(&self) -> String {
        let (ok, body, err) = curl(&[
            "-sS",
            "--cacert",
            self.listener_ca.to_str().unwrap(),
            &format!("https://{}/roots/0", self.management),
        ]);
        assert!(ok, "fetching pebble's root: {err}");
        body
    }

    /// Makes pebble's DNS answer `host` with `ip`.
    fn resolve(&self, host: &str, ip: &str) {
        let (ok, _, err) = curl(&[
            "-sS",
            "-X",
            "POST",
            "--data",
            &format!(r#"{{"host":"{host}.","addresses":["{ip}"]}}"#),
            &format!("http://{}/add-a", self.dns_management),
        ]);
        assert!(ok, "pebble-challtestsrv add-a: {err}");
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A node serving app `web` at `web.test` on a TLS port and a plain one (with
/// `force_https` there when asked), getting its certificate from `pebble`.
fn acme_config(
    ports: Ports,
    ips: &Ips,
    pebble: &Pebble,
    challenge: &str,
    force_https: bool,
) -> String {
    let mut c = config_head(ports, "");
    c.push_str(&format!(
        r#"
[tls]
certs_dir = "certs"

[acme]
directory = "{directory}"
ca_root = "{ca_root}"
contact = ["mailto:ops@web.test"]
challenge = "{challenge}"

[[app]]
name = "web"
hostnames = ["web.test"]
[app.certificates]
acme = true

[[app.service]]
internal_port = 7000
ports = [
  {{ port = {https}, handlers = ["tls", "http"] }},
  {{ port = {http}, handlers = ["http"], force_https = {force_https} }},
]
"#,
        directory = pebble.directory,
        ca_root = pebble.listener_ca.display(),
        https = ports.https,
        http = ports.http,
    ));
    c.push_str(&machine("m1", "web", "ams", ips.get(1)));
    c
}

/// A machine, pebble (issuing certificates valid for `validity` seconds), and
/// Tern ordering from it by `challenge`, started with an empty certificate
/// directory: until ACME has issued, it has nothing to serve for `web.test`.
/// Bind every field, `_backend` and `_scratch` by name too: a field left to `..`
/// is dropped at once, and with it the machine or pebble's files.
struct AcmeSetup {
    _backend: Backend,
    _scratch: tempfile::TempDir,
    pebble: Pebble,
    tern: Tern,
    /// Pebble's issuing root.
    root: String,
}

async fn acme_setup(challenge: &str, force_https: bool, validity: u64) -> AcmeSetup {
    let ips = Ips::new();
    let backend = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let scratch = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(scratch.path(), ports.http, ports.https, validity);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    let config = acme_config(ports, &ips, &pebble, challenge, force_https);
    let tern = Tern::start_in(dir, &config, ports);
    let root = pebble.issuing_root();
    AcmeSetup {
        _backend: backend,
        _scratch: scratch,
        pebble,
        tern,
        root,
    }
}

/// The certificate served for `web.test` (DER), if a client trusting only
/// `root` accepts it and an HTTPS request through it reaches the machine.
async fn served_certificate(port: u16, root: &str) -> Option<Vec<u8>> {
    let connector = tls_connector(root, &[b"http/1.1"]);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from("web.test").unwrap();
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .ok()?
        .ok()?;
    let leaf = tls.get_ref().1.peer_certificates()?.first()?.clone();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut resp)).await;
    if !resp.starts_with(b"HTTP/1.1 200") {
        return None;
    }
    Some(leaf.as_ref().to_vec())
}

async fn wait_for_certificate(
    tern: &Tern,
    pebble: &Pebble,
    root: &str,
    within: Duration,
) -> Vec<u8> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(cert) = served_certificate(tern.ports.https, root).await {
            return cert;
        }
        assert!(
            Instant::now() < deadline,
            "no valid certificate for web.test within {within:?}\n--- tern ---\n{}\n--- pebble ---\n{}",
            tern.log_text(),
            pebble.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_by_tls_alpn_01_and_serves_the_certificate_at_once() {
    let AcmeSetup {
        pebble,
        tern,
        root,
        _backend,
        _scratch,
    } = acme_setup("tls-alpn-01", false, 3600).await;
    wait_for_certificate(&tern, &pebble, &root, Duration::from_secs(60)).await;

    let log = tern.log_text();
    assert!(
        log.contains("answered an ACME TLS-ALPN-01 validation"),
        "{log}"
    );
    let file = tern.dir.path().join("certs").join("acme-web.test.pem");
    assert_eq!(mode(&file), 0o600, "the key is the owner's alone");
    let accounts: Vec<PathBuf> = std::fs::read_dir(tern.dir.path().join("acme"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(mode(&accounts[0]), 0o600);
    assert_eq!(mode(&tern.dir.path().join("acme")), 0o700);
    let metrics = tern.admin_get("/metrics");
    assert!(
        metrics.contains("tern_acme_orders_total{result=\"issued\"} 1"),
        "{metrics}"
    );

    // A handshake that offers acme-tls/1 for a name with no open order gets no
    // certificate at all: refused by the ACME path, which counts it as such
    // (rustls alone would also fail it, for want of a common ALPN protocol).
    let connector = tls_connector(&root, &[b"acme-tls/1"]);
    let tcp = TcpStream::connect(("127.0.0.1", tern.ports.https))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("web.test").unwrap();
    assert!(connector.connect(name, tcp).await.is_err());
    let metrics = tern.admin_get("/metrics");
    assert!(
        metrics.contains("tern_tls_handshake_errors_total{reason=\"acme_no_challenge\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_by_http_01_on_a_port_that_forces_https() {
    let AcmeSetup {
        pebble,
        tern,
        root,
        _backend,
        _scratch,
    } = acme_setup("http-01", true, 3600).await;
    let ports = tern.ports;
    wait_for_certificate(&tern, &pebble, &root, Duration::from_secs(60)).await;
    let log = tern.log_text();
    assert!(log.contains("answered an ACME HTTP-01 validation"), "{log}");
    // Everything else on the plain port is still redirected.
    let resp = http_get_raw(
        ("127.0.0.1", ports.http),
        "/.well-known/acme-challenge/unknown",
        "web.test",
    )
    .unwrap();
    assert!(resp.starts_with("HTTP/1.1 301"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_before_expiry_and_keeps_serving_when_renewal_fails() {
    // Renewal is due two thirds in: 20 s after issuance.
    let AcmeSetup {
        pebble,
        tern,
        root,
        _backend,
        _scratch,
    } = acme_setup("tls-alpn-01", false, 30).await;
    let ports = tern.ports;
    let first = wait_for_certificate(&tern, &pebble, &root, Duration::from_secs(60)).await;

    // Renewed: a different certificate, before the first one expires.
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        let now = wait_for_certificate(&tern, &pebble, &root, Duration::from_secs(30)).await;
        if now != first {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "not renewed:\n{}",
            tern.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Now the validator reaches nothing: the next renewal fails, says why and
    // for which name, and the certificate in hand stays served.
    pebble.resolve("web.test", "127.0.0.2");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tern
        .log_text()
        .contains("ACME: could not obtain a certificate")
    {
        assert!(
            Instant::now() < deadline,
            "no failed renewal:\n{}",
            tern.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = tern.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("ACME: could not obtain a certificate"))
        .unwrap();
    assert!(line.contains("web.test"), "{line}");
    assert!(
        line.contains("urn:ietf:params:acme:error:"),
        "the problem document's type: {line}"
    );
    assert_eq!(
        served_certificate(ports.https, &root).await.as_deref(),
        Some(second.as_slice()),
        "the renewed certificate is still served"
    );
    let metrics = tern.admin_get("/metrics");
    assert!(
        metrics.contains("tern_acme_renewal_failing{hostname=\"web.test\"} 1"),
        "{metrics}"
    );
    let health = tern.admin_get("/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200"),
        "a certificate in hand keeps the node up: {health}"
    );
    assert!(
        health.contains("acme web.test: 1 failed order(s) in a row")
            && health.contains("the certificate in hand expires in"),
        "{health}"
    );
}
