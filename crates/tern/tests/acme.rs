//! Certificates by ACME against a real ACME server: Let's Encrypt's test server
//! pebble (Debian's `pebble` package), with `pebble-challtestsrv` as its DNS so
//! that every name resolves to 127.0.0.1, where `tern run` answers the
//! validations on its own listeners.

mod common;
mod fleet;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fleet::{tern, Etcd};
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
    more_acme: &str,
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
{more_acme}
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

async fn acme_setup(
    challenge: &str,
    force_https: bool,
    validity: u64,
    more_acme: &str,
) -> AcmeSetup {
    let ips = Ips::new();
    let backend = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let scratch = tempfile::tempdir().unwrap();
    let pebble = Pebble::start(scratch.path(), ports.http, ports.https, validity);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    let config = acme_config(ports, &ips, &pebble, challenge, force_https, more_acme);
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
    // Room for an on-demand order, which the handshake waits for.
    let mut tls = tokio::time::timeout(Duration::from_secs(40), connector.connect(name, tcp))
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
    } = acme_setup("tls-alpn-01", false, 3600, "").await;
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
    assert_metric(&tern, "tern_acme_orders_total{result=\"issued\"} 1");

    // A handshake that offers acme-tls/1 for a name with no open order gets no
    // certificate at all: refused by the ACME path, which counts it as such
    // (rustls alone would also fail it, for want of a common ALPN protocol).
    let connector = tls_connector(&root, &[b"acme-tls/1"]);
    let tcp = TcpStream::connect(("127.0.0.1", tern.ports.https))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("web.test").unwrap();
    assert!(connector.connect(name, tcp).await.is_err());
    assert_metric(
        &tern,
        "tern_tls_handshake_errors_total{reason=\"acme_no_challenge\"} 1",
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
    } = acme_setup("http-01", true, 3600, "").await;
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
    } = acme_setup("tls-alpn-01", false, 30, "").await;
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
    assert_metric(&tern, "tern_acme_renewal_failing{hostname=\"web.test\"} 1");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_orders_at_the_first_handshake_and_never_for_an_unclaimed_name() {
    let AcmeSetup {
        pebble,
        tern,
        root,
        _backend,
        _scratch,
    } = acme_setup(
        "tls-alpn-01",
        false,
        3600,
        "on_demand = true\non_demand_wait = \"30s\"\n",
    )
    .await;
    // Up and serving, and nothing ordered: no handshake has asked yet (an
    // eager node logs its first order as it starts).
    let metrics = tern.admin_get("/metrics");
    assert!(!metrics.contains("tern_acme_orders_total"), "{metrics}");
    assert!(
        !tern.log_text().contains("ACME: ordering a certificate"),
        "{}",
        tern.log_text()
    );

    // A name that no app claims orders nothing, and its handshake is refused
    // without waiting.
    let connector = tls_connector(&root, &[b"http/1.1"]);
    let tcp = TcpStream::connect(("127.0.0.1", tern.ports.https))
        .await
        .unwrap();
    let stranger = rustls_pki_types::ServerName::try_from("stranger.test").unwrap();
    let started = Instant::now();
    assert!(connector.connect(stranger, tcp).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refused without waiting out the order's 30 s"
    );
    assert_metric(
        &tern,
        "tern_acme_on_demand_handshakes_total{result=\"unclaimed\"} 1",
    );
    let metrics = tern.admin_get("/metrics");
    assert!(!metrics.contains("tern_acme_orders_total"), "{metrics}");

    // The first handshake for web.test waits for its order and gets a
    // certificate that chains to pebble's root.
    let served = served_certificate(tern.ports.https, &root).await;
    assert!(
        served.is_some(),
        "the first handshake gets the certificate it asked for\n--- tern ---\n{}\n--- pebble ---\n{}",
        tern.log_text(),
        pebble.log_text()
    );
    assert_metric(
        &tern,
        "tern_acme_on_demand_handshakes_total{result=\"served\"} 1",
    );
    assert_metric(&tern, "tern_acme_orders_total{result=\"issued\"} 1");
    // The next handshake finds it in the store and asks for nothing.
    assert!(served_certificate(tern.ports.https, &root).await.is_some());
    assert_metric(
        &tern,
        "tern_acme_on_demand_handshakes_total{result=\"served\"} 1",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_fails_a_handshake_cleanly_when_its_order_fails_and_holds_the_name_off() {
    let AcmeSetup {
        pebble,
        tern,
        root,
        _backend,
        _scratch,
    } = acme_setup(
        "tls-alpn-01",
        false,
        3600,
        "on_demand = true\non_demand_wait = \"30s\"\n",
    )
    .await;
    // The validator reaches nothing: the order fails.
    pebble.resolve("web.test", "127.0.0.2");
    let handshake = || async {
        let connector = tls_connector(&root, &[b"http/1.1"]);
        let tcp = TcpStream::connect(("127.0.0.1", tern.ports.https))
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("web.test").unwrap();
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(60), connector.connect(name, tcp))
            .await
            .expect("the handshake ends within its bounds");
        (result.is_ok(), started.elapsed())
    };
    let (ok, _) = handshake().await;
    assert!(!ok, "no certificate to serve\n{}", tern.log_text());
    assert_metric(
        &tern,
        "tern_acme_on_demand_handshakes_total{result=\"failed\"} 1",
    );
    assert_metric(&tern, "tern_acme_orders_total{result=\"failed\"} 1");
    // Until its retry the name is held off: refused at once, nothing ordered.
    let (ok, took) = handshake().await;
    assert!(!ok);
    assert!(
        took < Duration::from_secs(10),
        "held off, not waited: {took:?}"
    );
    assert_metric(
        &tern,
        "tern_acme_on_demand_handshakes_total{result=\"held_off\"} 1",
    );
    assert_metric(
        &tern,
        "tern_acme_on_demand_handshakes_total{result=\"failed\"} 1",
    );
    assert_metric(&tern, "tern_acme_orders_total{result=\"failed\"} 1");
}

/// Two nodes, `acme-a` and `acme-b`, on one etcd catalog that asks ACME for
/// `web.test`, each with a certificate directory of its own and the same fleet
/// key; pebble's DNS sends validations to `acme-b` alone.
struct FleetSetup {
    _backend: Backend,
    _scratch: tempfile::TempDir,
    pebble: Pebble,
    etcd: Etcd,
    a: Tern,
    b: Tern,
    ips: Ips,
    root: String,
}

const FLEET_PREFIX: &str = "/tern-acme";

async fn fleet_setup(challenge: &str, more_acme: &str) -> FleetSetup {
    let ips = Ips::new();
    let backend = Backend::start("m1", ips.get(1), 7000).await;
    let scratch = tempfile::tempdir().unwrap();
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(scratch.path(), http, https, 3600);
    pebble.resolve("web.test", &ips.get(3).to_string());
    let etcd = Etcd::start(scratch.path());
    let catalog = scratch.path().join("catalog.toml");
    std::fs::write(
        &catalog,
        format!(
            r#"
[[app]]
name = "web"
hostnames = ["web.test"]
[app.certificates]
acme = true

[[app.service]]
internal_port = 7000
ports = [
  {{ port = {https}, handlers = ["tls", "http"] }},
  {{ port = {http}, handlers = ["http"] }},
]

[[machine]]
id = "m1"
app = "web"
region = "ams"
node = "acme-b"
ip = "{ip}"
"#,
            ip = ips.get(1)
        ),
    )
    .unwrap();
    tern(&[
        "catalog",
        "push",
        catalog.to_str().unwrap(),
        "--etcd",
        &etcd.url(),
        "--prefix",
        FLEET_PREFIX,
    ]);
    let key = scratch.path().join("fleet.key");
    std::fs::write(
        &key,
        "8f1e0c2a4b6d8e0f1a3c5e7f9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d\n",
    )
    .unwrap();
    let node = |id: &str, ip: IpAddr| {
        let ports = Ports {
            http,
            https,
            admin: free_port(),
        };
        let config = format!(
            r#"[node]
id = "{id}"
region = "ams"
workers = 2
bind = "{ip}"

[admin]
listen = "127.0.0.1:{admin}"

[log]
level = "info"

[tls]
certs_dir = "certs"

[acme]
directory = "{directory}"
ca_root = "{ca_root}"
challenge = "{challenge}"
fleet_key = "{key}"
{more_acme}

[catalog]
source = "etcd"
endpoints = ["{etcd}"]
prefix = "{FLEET_PREFIX}"
lease_ttl = "2s"
"#,
            admin = ports.admin,
            directory = pebble.directory,
            ca_root = pebble.listener_ca.display(),
            key = key.display(),
            etcd = etcd.url(),
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("certs")).unwrap();
        Tern::start_in(dir, &config, ports)
    };
    let a = node("acme-a", ips.get(2));
    let b = node("acme-b", ips.get(3));
    let root = pebble.issuing_root();
    FleetSetup {
        _backend: backend,
        _scratch: scratch,
        pebble,
        etcd,
        a,
        b,
        ips,
        root,
    }
}

impl FleetSetup {
    fn logs(&self) -> String {
        format!(
            "--- acme-a ---\n{}\n--- acme-b ---\n{}\n--- pebble ---\n{}",
            self.a.log_text(),
            self.b.log_text(),
            self.pebble.log_text()
        )
    }

    /// The certificate node `n` (2: acme-a, 3: acme-b) serves, once a client
    /// that trusts pebble's root accepts it. (Only acme-b reaches the machine,
    /// which runs there: these nodes have no backhaul.)
    async fn wait_served(&self, n: u8) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) =
                handshake_certificate(self.ips.get(n), self.a.ports.https, &self.root).await
            {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "no certificate served\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The certificate as etcd holds it, and the keys of open orders (locks
    /// and shared answers).
    fn in_etcd(&self) -> (String, String) {
        let cert = self.etcd.ctl(&[
            "get",
            &format!("{FLEET_PREFIX}/acme/certs/web.test"),
            "--print-value-only",
        ]);
        let keys = self.etcd.ctl(&[
            "get",
            "--prefix",
            "--keys-only",
            &format!("{FLEET_PREFIX}/acme/"),
        ]);
        let open = keys
            .lines()
            .filter(|k| !k.is_empty() && !k.contains("/acme/certs/"))
            .collect::<Vec<_>>()
            .join("\n");
        (cert, open)
    }
}

/// The certificate of a handshake for `web.test`, if a client trusting only
/// `root` accepts it.
async fn handshake_certificate(ip: IpAddr, port: u16, root: &str) -> Option<Vec<u8>> {
    let connector = tls_connector(root, &[b"http/1.1"]);
    let tcp = TcpStream::connect((ip, port)).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from("web.test").unwrap();
    // Room for an on-demand order, which the handshake waits for.
    let tls = tokio::time::timeout(Duration::from_secs(40), connector.connect(name, tcp))
        .await
        .ok()?
        .ok()?;
    let leaf = tls.get_ref().1.peer_certificates()?.first()?.clone();
    Some(leaf.as_ref().to_vec())
}

/// Asserts that `tern`'s metrics have `line` (a series and its value).
fn assert_metric(tern: &Tern, line: &str) {
    let metrics = tern.admin_get("/metrics");
    assert!(metrics.contains(line), "no {line:?} in:\n{metrics}");
}

/// A counter of `tern`'s, by its name and labels; 0 if it has none yet.
fn counter(tern: &Tern, series: &str) -> u64 {
    let metrics = tern.admin_get("/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |n| n.trim().parse().unwrap())
}

fn issued(tern: &Tern) -> u64 {
    counter(tern, "tern_acme_orders_total{result=\"issued\"}")
}

/// On demand, so that the test picks the node that orders: acme-a, at the
/// first handshake there. The validation, by `challenge`, goes to acme-b.
async fn one_order_answered_by_the_other_node(challenge: &str) {
    let f = fleet_setup(challenge, "on_demand = true\non_demand_wait = \"30s\"").await;
    let from_a = f.wait_served(2).await;
    assert_eq!(issued(&f.a), 1, "{}", f.logs());
    // pebble validates from several perspectives, each a request.
    let answered = counter(
        &f.b,
        &format!("tern_acme_challenges_answered_total{{challenge=\"{challenge}\"}}"),
    );
    assert!(
        answered >= 1,
        "acme-b answered acme-a's validation\n{}",
        f.logs()
    );
    // acme-b serves the same certificate, from etcd, without an order of its own.
    let from_b = f.wait_served(3).await;
    assert_eq!(from_a, from_b, "{}", f.logs());
    assert_eq!(issued(&f.b), 0, "{}", f.logs());
    // acme-a let the CA validate only once acme-b said it held the answer.
    assert!(
        !f.logs().contains("not every node says it holds"),
        "{}",
        f.logs()
    );

    // etcd holds it sealed, and the order's lock and shared answers went with
    // its lease.
    // (acme-a revokes the lease just after it shares the certificate.)
    let deadline = Instant::now() + Duration::from_secs(20);
    let (cert, open) = loop {
        let (cert, open) = f.in_etcd();
        if open.is_empty() || Instant::now() > deadline {
            break (cert, open);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(cert.len() > 100, "{cert:?}");
    assert!(!cert.contains("BEGIN"), "sealed, not in the clear: {cert}");
    assert!(open.is_empty(), "{open}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_orders_once_answers_tls_alpn_01_on_any_node_and_shares_the_certificate_sealed() {
    one_order_answered_by_the_other_node("tls-alpn-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_answers_http_01_on_any_node_too() {
    one_order_answered_by_the_other_node("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_that_both_want_a_name_order_it_once() {
    let f = fleet_setup("tls-alpn-01", "").await;
    let from_a = f.wait_served(2).await;
    let from_b = f.wait_served(3).await;
    assert_eq!(from_a, from_b, "{}", f.logs());
    // Counted once the order's lock is released, just after the other node
    // may already serve the certificate.
    let deadline = Instant::now() + Duration::from_secs(20);
    while issued(&f.a) + issued(&f.b) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(issued(&f.a) + issued(&f.b), 1, "{}", f.logs());
    let installed = [&f.a, &f.b]
        .iter()
        .filter(|t| {
            t.log_text()
                .contains("installed the certificate another node obtained")
        })
        .count();
    assert_eq!(installed, 1, "{}", f.logs());

    // etcd goes away: both nodes keep serving what they hold, and say why
    // they lost the fleet's state.
    let mut f = f;
    f.etcd.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(f
        .a
        .log_text()
        .contains("ACME: lost the fleet's shared state in etcd")
        && f.b
            .log_text()
            .contains("ACME: lost the fleet's shared state in etcd"))
    {
        assert!(Instant::now() < deadline, "{}", f.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(f.wait_served(2).await, from_a, "{}", f.logs());
    assert_eq!(f.wait_served(3).await, from_a, "{}", f.logs());
    for t in [&mut f.a, &mut f.b] {
        assert!(t.child.try_wait().unwrap().is_none(), "still running");
    }
}
