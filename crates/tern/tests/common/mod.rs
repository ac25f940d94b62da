//! Test harness: starts the real `tern` binary on a config written to a temp dir,
//! with certificates and backend "machines" on their own loopback addresses.
#![allow(dead_code)]

pub mod browser;
pub mod echo;
pub mod ws;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Loopback addresses for one test's machines: 127.<pid-derived>.<counter>.<n>, so
/// tests in parallel, and test binaries in parallel, never share a machine address.
pub struct Ips {
    base: [u8; 3],
}

impl Ips {
    pub fn new() -> Self {
        static NEXT: AtomicU16 = AtomicU16::new(1);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        Ips {
            base: [127, 1 + (pid % 250) as u8, k as u8],
        }
    }

    pub fn get(&self, n: u8) -> IpAddr {
        IpAddr::from([self.base[0], self.base[1], self.base[2], n])
    }
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough for tests),
/// never one this test process was given before: the kernel may hand the same
/// released port to two calls in a row, and a config listing it twice is invalid.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(port)
        {
            return port;
        }
    }
    panic!("no port not given before in 100 tries");
}

/// Whether something accepts connections on `ip:port`. A connection to an
/// unbound port in the ephemeral range can succeed by connecting to itself (TCP
/// simultaneous open when the kernel picks that same port as the source), so such
/// a connection counts as nothing listening.
pub fn listening(ip: IpAddr, port: u16) -> bool {
    let addr = SocketAddr::new(ip, port);
    match StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        Ok(s) => s.local_addr().map_or(true, |local| local != addr),
        Err(_) => false,
    }
}

/// The local port of each listening TCP socket process `pid` holds (a port
/// twice if it holds two sockets on it), read from
/// /proc: its socket inodes matched against the LISTEN rows of the TCP tables.
/// Unlike a connection probe, this cannot be fooled by another process that
/// happens to listen on a port this test was given.
pub fn ports_listened_by(pid: u32) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: Vec<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            let inode = link.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for row in text.lines().skip(1) {
            let cols: Vec<&str> = row.split_whitespace().collect();
            // Columns: sl local_address rem_address st ... inode (the tenth).
            let (Some(local), Some(&"0A"), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            if !inodes.iter().any(|i| i == inode) {
                continue;
            }
            if let Some(port) = local.rsplit(':').next() {
                ports.extend(u16::from_str_radix(port, 16).ok());
            }
        }
    }
    ports
}

/// Ports one Tern instance uses.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub https: u16,
    pub admin: u16,
}

impl Ports {
    pub fn new() -> Self {
        Ports {
            http: free_port(),
            https: free_port(),
            admin: free_port(),
        }
    }
}

/// Certificates for a test: a CA, and a leaf for the given names signed by it.
pub struct Certs {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub ca_path: PathBuf,
}

pub fn make_certs(dir: &Path, names: &[&str]) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tern test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    std::fs::write(certs.join("site.crt"), leaf.pem()).unwrap();
    std::fs::write(certs.join("site.key"), leaf_key.serialize_pem()).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    Certs {
        dir: certs,
        ca_pem: ca.pem(),
        ca_path,
    }
}

/// A rustls client config trusting the test CA, offering `alpn`.
pub fn client_tls_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A tokio-rustls connector trusting the test CA, offering `alpn`.
pub fn tls_connector(ca_pem: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(client_tls_config(ca_pem, alpn))
}

/// A running `tern` process; killed on drop.
pub struct Tern {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub ports: Ports,
    pub log: PathBuf,
}

impl Tern {
    /// Writes `config` to tern.toml in a fresh dir (with `certs` made there first if
    /// `cert_names` is not empty) and starts `tern run`, waiting for the admin port.
    pub fn start(config: &str, ports: Ports) -> Tern {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config, ports)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str, ports: Ports) -> Tern {
        let path = dir.path().join("tern.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.path().join("tern.log");
        let child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tern");
        let mut tern = Tern {
            child,
            dir,
            ports,
            log,
        };
        tern.wait_ready();
        tern
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tern exited early with {status}:\n{}", self.log_text());
            }
            if let Ok(resp) = http_get_raw(("127.0.0.1", self.ports.admin), "/healthz", "admin") {
                if resp.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("tern did not become ready:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every thread's stack in Tern now, from gdb (for a failure's report).
    pub fn stacks(&self) -> String {
        pollwatch::debugger_stacks_of(self.child.id())
    }

    pub fn http_url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.ports.http)
    }

    pub fn admin_get(&self, path: &str) -> String {
        http_get_raw(("127.0.0.1", self.ports.admin), path, "admin").unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET over a fresh connection; returns the whole response text.
pub fn http_get_raw(
    addr: impl std::net::ToSocketAddrs,
    path: &str,
    host: &str,
) -> std::io::Result<String> {
    http_get_raw_within(addr, path, host, Duration::from_secs(10))
}

/// `http_get_raw`, giving up reading after `read_timeout` of silence.
pub fn http_get_raw_within(
    addr: impl std::net::ToSocketAddrs,
    path: &str,
    host: &str,
    read_timeout: Duration,
) -> std::io::Result<String> {
    let addr = addr.to_socket_addrs()?.next().unwrap();
    let mut s = StdTcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(read_timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Sends raw bytes and returns everything the server sends back until it closes.
pub fn raw_exchange(port: u16, bytes: &[u8]) -> String {
    let mut s = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs curl with `args`; returns (exit ok, stdout, stderr).
pub fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/test installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A test machine: an HTTP server on `ip:port` answering with its id and the
/// request's headers, one per line as `name: value`.
///
/// Paths: `/healthz` answers 200 or 500 as `healthy` says; `/slow?ms=N` waits N ms
/// first; `/status/N` answers status N; `/stream-echo` echoes the request body
/// piece by piece as it arrives; anything else 200.
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    pub healthy: Arc<AtomicBool>,
    pub hits: Arc<AtomicUsize>,
    pub health_hits: Arc<AtomicUsize>,
    /// Connections accepted.
    pub conns: Arc<AtomicUsize>,
    /// The most `/slow` requests it has had in flight at once.
    pub max_in_flight: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(id: &str, ip: IpAddr, port: u16) -> Backend {
        let addr = SocketAddr::new(ip, port);
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let healthy = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicUsize::new(0));
        let health_hits = Arc::new(AtomicUsize::new(0));
        let (h, c, hc) = (healthy.clone(), hits.clone(), health_hits.clone());
        let conns = Arc::new(AtomicUsize::new(0));
        let accepted = conns.clone();
        let slow = Arc::new(SlowCount::default());
        let max_in_flight = Arc::clone(&slow.max);
        let idc = id.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let (h, c, hc, id) = (h.clone(), c.clone(), hc.clone(), idc.clone());
                let slow = Arc::clone(&slow);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (h, c, hc, id) = (h.clone(), c.clone(), hc.clone(), id.clone());
                        let slow = Arc::clone(&slow);
                        async move { Ok::<_, Infallible>(answer(req, &id, &h, &c, &hc, &slow).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            id: id.to_owned(),
            addr,
            healthy,
            hits,
            health_hits,
            conns,
            max_in_flight,
            task,
        }
    }
}

/// `/slow` requests in flight, and the most there have been at once.
#[derive(Default)]
struct SlowCount {
    now: AtomicUsize,
    max: Arc<AtomicUsize>,
}

type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

async fn answer(
    req: Request<Incoming>,
    id: &str,
    healthy: &AtomicBool,
    hits: &AtomicUsize,
    health_hits: &AtomicUsize,
    slow: &SlowCount,
) -> Response<TestBody> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        health_hits.fetch_add(1, Ordering::Relaxed);
        let ok = healthy.load(Ordering::Relaxed);
        let mut r = Response::new(Full::new(Bytes::from_static(b"health\n")).boxed_unsync());
        if !ok {
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        return r;
    }
    hits.fetch_add(1, Ordering::Relaxed);
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if path == "/big" {
        // Streams `bytes` bytes in 64 KiB chunks.
        let total: u64 = query
            .get("bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1 << 20);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(total, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let n = left.min(chunk.len() as u64) as usize;
                Some((
                    Ok::<_, Infallible>(http_body::Frame::data(chunk.slice(..n))),
                    left - n as u64,
                ))
            }
        });
        let mut r = Response::new(http_body_util::StreamBody::new(stream).boxed_unsync());
        r.headers_mut()
            .insert("content-length", http::HeaderValue::from(total));
        return r;
    }
    if path == "/stream-echo" {
        // Answers at once and echoes each piece of the request body as it comes:
        // an interactive stream, as gRPC's bidirectional calls are.
        let frames = futures_util::stream::unfold(req.into_body(), |mut body| async move {
            loop {
                match body.frame().await?.ok()?.into_data() {
                    Ok(data) => {
                        return Some((Ok::<_, Infallible>(http_body::Frame::data(data)), body))
                    }
                    Err(_) => continue,
                }
            }
        });
        return Response::new(http_body_util::StreamBody::new(frames).boxed_unsync());
    }
    if path == "/refuse" {
        // Claims to be a Tern node refusing a request it never passed on: nothing
        // may take a machine's word for that.
        let mut r = Response::new(Full::new(Bytes::from_static(b"refused\n")).boxed_unsync());
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        let h = r.headers_mut();
        h.insert(
            "tern-error",
            http::HeaderValue::from_static("upstream_connect_failed"),
        );
        h.insert("tern-backhaul-refused", http::HeaderValue::from_static("1"));
        h.insert("x-machine-id", http::HeaderValue::from_str(id).unwrap());
        return r;
    }
    if path == "/drip" {
        // `chunks` chunks of 1 KiB, one every `ms` milliseconds: a response that
        // has begun and goes on.
        let chunks: u64 = query
            .get("chunks")
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        let ms: u64 = query.get("ms").and_then(|v| v.parse().ok()).unwrap_or(100);
        let stream = futures_util::stream::unfold(0u64, move |i| async move {
            if i == chunks {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let frame = http_body::Frame::data(Bytes::from(vec![b'd'; 1024]));
            Some((Ok::<_, Infallible>(frame), i + 1))
        });
        let mut r = Response::new(http_body_util::StreamBody::new(stream).boxed_unsync());
        r.headers_mut()
            .insert("content-length", http::HeaderValue::from(chunks * 1024));
        return r;
    }
    if path == "/slow" {
        let ms = query.get("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
        let now = slow.now.fetch_add(1, Ordering::SeqCst) + 1;
        slow.max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        slow.now.fetch_sub(1, Ordering::SeqCst);
    }
    let mut text = format!(
        "machine={id}\nversion={:?}\nuri={}\n",
        req.version(),
        req.uri()
    );
    for (k, v) in req.headers() {
        text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
    }
    let (_, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    text.push_str(&format!("body-bytes={}\n", body.len()));
    let mut r = Response::new(Full::new(Bytes::from(text)).boxed_unsync());
    if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.parse().ok()) {
        *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    }
    r.headers_mut()
        .insert("x-machine-id", http::HeaderValue::from_str(id).unwrap());
    r
}

/// The `[node]`, `[admin]` and `[limits]` head of a test config.
pub fn config_head(ports: Ports, extra_limits: &str) -> String {
    format!(
        r#"[node]
id = "test-1"
region = "ams"
workers = 2
bind = "127.0.0.1"

[admin]
listen = "127.0.0.1:{admin}"

[log]
level = "info"

[limits]
drain_timeout = "5s"
{extra_limits}
"#,
        admin = ports.admin
    )
}

/// App `web` (host `web.test`) with one service on machine port 7000, served over
/// plain HTTP on `http_port`; `service_extra` adds lines to the service (a
/// `concurrency = ...`, say).
pub fn web_app(http_port: u16, service_extra: &str) -> String {
    plain_app("web", http_port, service_extra)
}

/// App `name` (host `NAME.test`) with one service on machine port 7000, served
/// over plain HTTP on `http_port`.
pub fn plain_app(name: &str, http_port: u16, service_extra: &str) -> String {
    format!(
        r#"
[[app]]
name = "{name}"
hostnames = ["{name}.test"]

[[app.service]]
internal_port = 7000
{service_extra}
ports = [{{ port = {http_port}, handlers = ["http"] }}]
"#
    )
}

/// The app `web` (`web.test`, `*.web.test`) with one machine, `m1` on `ips.get(1)`
/// port 7000, served on a TLS port and a plain one; `extra_app` goes into the
/// `[[app]]` table, `extra_service` into `[[app.service]]` and `extra_limits` into
/// `[limits]`.
pub fn web_tls_config(
    ports: Ports,
    ips: &Ips,
    extra_app: &str,
    extra_service: &str,
    extra_limits: &str,
) -> String {
    let mut c = config_head(ports, extra_limits);
    c.push_str(&format!(
        r#"
[tls]
certs_dir = "certs"

[[app]]
name = "web"
hostnames = ["web.test", "*.web.test"]
{extra_app}

[[app.service]]
internal_port = 7000
concurrency = {{ type = "requests", soft_limit = 50, hard_limit = 100 }}
{extra_service}
ports = [
  {{ port = {https}, handlers = ["tls", "http"] }},
  {{ port = {http}, handlers = ["http"] }},
]
"#,
        https = ports.https,
        http = ports.http,
    ));
    c.push_str(&machine("m1", "web", "ams", ips.get(1)));
    c
}

/// A running Tern serving `web_tls_config`, with its certificates and machine.
pub struct WebSetup {
    pub tern: Tern,
    pub certs: Certs,
    pub backend: Backend,
}

pub async fn web_setup(extra_app: &str, extra_limits: &str) -> WebSetup {
    let ips = Ips::new();
    let backend = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["web.test", "*.web.test"]);
    let config = web_tls_config(ports, &ips, extra_app, "", extra_limits);
    let tern = Tern::start_in(dir, &config, ports);
    WebSetup {
        tern,
        certs,
        backend,
    }
}

/// A machine entry for a config.
pub fn machine(id: &str, app: &str, region: &str, ip: IpAddr) -> String {
    format!(
        "\n[[machine]]\nid = \"{id}\"\napp = \"{app}\"\nregion = \"{region}\"\nip = \"{ip}\"\nstate = \"started\"\n"
    )
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns (head, body).
/// It never reads past the response's last byte, so pipelined responses that
/// arrive in one segment are each left for the next call.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (String, String) {
    match tokio::time::timeout(Duration::from_secs(10), try_read_response(s)).await {
        Ok(Ok((head, body))) => (head, String::from_utf8_lossy(&body).into_owned()),
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!("no response within 10 s"),
    }
}

/// `read_response` for clients that count failures: why no response came,
/// rather than a panic. Unbounded in time: the caller bounds it.
pub async fn try_read_response<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> Result<(String, Vec<u8>), String> {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => data.push(byte[0]),
            Ok(_) => {
                return Err(format!(
                    "closed before a full head: {:?}",
                    String::from_utf8_lossy(&data)
                ))
            }
            Err(e) => return Err(format!("reading the head: {e}")),
        }
    }
    let head = String::from_utf8_lossy(&data).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| format!("response without content-length: {head}"))?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok((head, body))
}

/// Starts `tern demo` in `dir` on ports `[http, https, admin, machine]`, with
/// `extra` arguments and `env`; its stdout is piped, for `demo_welcome`.
pub fn spawn_demo(dir: &Path, ports: [u16; 4], extra: &[&str], env: &[(&str, &str)]) -> Child {
    let [http, https, admin, machine] = ports.map(|p| p.to_string());
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["demo", "--dir"])
        .arg(dir)
        .args(["--http-port", &http, "--https-port", &https])
        .args(["--admin-port", &admin, "--machine-port", &machine])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tern demo")
}

/// Ctrl-C to `tern demo`, and its exit, which must come within `within`.
pub fn interrupt_demo(demo: &mut Child, within: Duration) {
    let _ = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status();
    let deadline = Instant::now() + within;
    while demo.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the demo did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What `tern demo` prints until it is up ("Press Ctrl-C"), read from its
/// stdout (bounded: a minute). Panics, with what it printed, if it exits first.
pub fn demo_welcome(demo: &mut Child) -> String {
    use std::io::BufRead;
    let mut out = std::io::BufReader::new(demo.stdout.take().expect("the demo's stdout, piped"));
    let mut printed = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !printed.contains("Press Ctrl-C") {
        assert!(
            Instant::now() < deadline,
            "the demo did not come up:\n{printed}"
        );
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("the demo exited:\n{printed}");
        }
        printed.push_str(&line);
    }
    printed
}
