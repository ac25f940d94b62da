//! Reloading the configuration of a real `tern run` under load, by `POST
//! /reload` and by SIGHUP: apps, ports, limits and certificates change while
//! keep-alive clients and a request in flight go on without a single failure; a
//! bad file, or one that changes what needs a restart, changes nothing and says
//! where and why.

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The head and body of one response on a keep-alive connection, or why not.
async fn exchange(c: &mut TcpStream, request: &[u8]) -> Result<(String, Vec<u8>), String> {
    c.write_all(request).await.map_err(|e| e.to_string())?;
    try_read_response(c).await
}

/// Keep-alive clients sending GETs until `stop` (bounded by a count and a
/// deadline), counting answers that are not 200 or never come.
struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let (ok, failed, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let clients = (0..clients)
            .map(|_| {
                let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut errors = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(120);
                    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                    for _ in 0..200_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        let get = b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n";
                        match exchange(&mut c, get).await {
                            Ok((head, _)) if head.starts_with("HTTP/1.1 200") => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((head, _)) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(head);
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(e);
                                break;
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        Load {
            ok,
            failed,
            stop,
            clients,
        }
    }

    /// Waits until the clients have had `n` more answers.
    async fn progress(&self, n: u64) {
        let start = self.ok.load(Ordering::Relaxed);
        let ok = Arc::clone(&self.ok);
        assert!(
            eventually(Duration::from_secs(20), || ok.load(Ordering::Relaxed)
                >= start + n)
            .await,
            "the load stalled"
        );
    }

    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for c in self.clients {
            errors.extend(c.await.unwrap());
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

fn post_reload(tern: &Tern) -> (u16, String) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], tern.ports.admin));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    use std::io::{Read, Write};
    s.write_all(
        b"POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// The base config with `[tls]` reloaded only when asked, and `extra` after it.
fn config(ports: Ports, ips: &Ips, limits: &str, extra: &str) -> String {
    web_tls_config(ports, ips, "", "", limits).replace(
        "certs_dir = \"certs\"",
        "certs_dir = \"certs\"\nreload_interval = \"1h\"",
    ) + extra
}

/// App `api` on its own plain port, served by machine `m2`.
fn api_app(port: u16, ip: IpAddr) -> String {
    plain_app("api", port, "") + &machine("m2", "api", "ams", ip)
}

async fn tls_handshake(port: u16, ca_pem: &str, name: &'static str) -> bool {
    let connector = tls_connector(ca_pem, &[b"http/1.1"]);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let server = rustls_pki_types::ServerName::try_from(name).unwrap();
    connector.connect(server, tcp).await.is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_changes_apps_ports_limits_and_certificates_without_dropping_anything() {
    let ips = Ips::new();
    let _m1 = Backend::start("m1", ips.get(1), 7000).await;
    let _m2 = Backend::start("m2", ips.get(2), 7000).await;
    let ports = Ports::new();
    let api_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["web.test"]);
    let tern = Tern::start_in(dir, &config(ports, &ips, "", ""), ports);
    let file = tern.dir.path().join("tern.toml");
    let load = Load::start(ports.http, 4);
    load.progress(100).await;

    // A request in flight across every reload below.
    let mut slow = TcpStream::connect(("127.0.0.1", ports.http)).await.unwrap();
    let in_flight = tokio::spawn(async move {
        exchange(
            &mut slow,
            b"GET /slow?ms=3000 HTTP/1.1\r\nHost: web.test\r\n\r\n",
        )
        .await
    });

    // Before: a 2 KiB body and an 8 KiB head pass, api.test has no port, and no
    // certificate answers for new.test.
    let post = format!(
        "POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 2048\r\n\r\n{}",
        "x".repeat(2048)
    );
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: web.test\r\nX-Big: {}\r\n\r\n",
        "y".repeat(8 << 10)
    );
    let mut c = TcpStream::connect(("127.0.0.1", ports.http)).await.unwrap();
    let (head, _) = exchange(&mut c, post.as_bytes()).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, _) = exchange(&mut c, big_head.as_bytes()).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(TcpStream::connect(("127.0.0.1", api_port)).await.is_err());
    let new_dir = tempfile::tempdir().unwrap();
    let new_certs = make_certs(new_dir.path(), &["new.test"]);
    assert!(!tls_handshake(ports.https, &new_certs.ca_pem, "new.test").await);

    // The reload: a new app on a new port, tighter limits, a new certificate.
    for (from, to) in [("site.crt", "new.crt"), ("site.key", "new.key")] {
        std::fs::copy(new_certs.dir.join(from), certs.dir.join(to)).unwrap();
    }
    let limits = "max_request_body = \"1KiB\"\nmax_header_bytes = \"4KiB\"";
    std::fs::write(
        &file,
        config(ports, &ips, limits, &api_app(api_port, ips.get(2))),
    )
    .unwrap();
    let (status, body) = post_reload(&tern);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("2 apps, 2 machines, catalog changed"),
        "{body}"
    );
    assert!(body.contains("2 certificates"), "{body}");

    let port_open = || std::net::TcpStream::connect(("127.0.0.1", api_port)).is_ok();
    assert!(
        eventually(Duration::from_secs(10), port_open).await,
        "the new port opened"
    );
    let mut api = TcpStream::connect(("127.0.0.1", api_port)).await.unwrap();
    let (head, body) = exchange(&mut api, b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("machine=m2"));
    assert!(tls_handshake(ports.https, &new_certs.ca_pem, "new.test").await);
    let mut c = TcpStream::connect(("127.0.0.1", ports.http)).await.unwrap();
    let (head, _) = exchange(&mut c, post.as_bytes()).await.unwrap();
    assert!(
        head.starts_with("HTTP/1.1 413"),
        "the new body limit: {head}"
    );
    let mut c = TcpStream::connect(("127.0.0.1", ports.http)).await.unwrap();
    let (head, _) = exchange(&mut c, big_head.as_bytes()).await.unwrap();
    assert!(
        head.starts_with("HTTP/1.1 431"),
        "the new head limit: {head}"
    );
    load.progress(100).await;

    // A bad file changes nothing and says where, to the caller and in the log.
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{good}\n[[app]]\nname = \n")).unwrap();
    let bad_line = good.lines().count() + 3;
    let (status, body) = post_reload(&tern);
    assert_eq!(status, 400, "{body}");
    let at = format!("tern.toml:{bad_line}:8");
    assert!(body.contains(&at), "{at} in {body}");
    assert!(body.contains("nothing changed"), "{body}");
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &tern.child.id().to_string()])
        .status();
    assert!(
        eventually(Duration::from_secs(10), || tern
            .log_text()
            .matches(&at)
            .count()
            >= 2)
        .await,
        "SIGHUP's refusal logged with {at}:\n{}",
        tern.log_text()
    );
    let mut api = TcpStream::connect(("127.0.0.1", api_port)).await.unwrap();
    let (head, _) = exchange(&mut api, b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "still served: {head}");

    // What only a restart can change is refused, and named.
    let admin = format!("listen = \"127.0.0.1:{}\"", ports.admin);
    std::fs::write(&file, good.replace(&admin, "listen = \"127.0.0.1:1\"")).unwrap();
    let (status, body) = post_reload(&tern);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("[admin] can only change with a restart"),
        "{body}"
    );

    // By SIGHUP: the app goes, and its port closes.
    std::fs::write(&file, config(ports, &ips, "", "")).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &tern.child.id().to_string()])
        .status();
    assert!(
        eventually(Duration::from_secs(10), || !port_open()).await,
        "the port of the removed app closed:\n{}",
        tern.log_text()
    );
    let mut c = TcpStream::connect(("127.0.0.1", ports.http)).await.unwrap();
    let (head, _) = exchange(&mut c, post.as_bytes()).await.unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "the limit is back: {head}"
    );
    load.progress(100).await;

    let (head, _) = in_flight
        .await
        .unwrap()
        .expect("the slow request completed");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (ok, failed, errors) = load.finish().await;
    assert_eq!(failed, 0, "{errors:?}");
    assert!(ok >= 400, "{ok}");
}
