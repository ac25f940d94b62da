//! Zero-downtime upgrades of a real `tern run`: five times in a row, a new
//! process started with `--upgrade` takes the running one's sockets while
//! HTTP/1.1 keep-alive clients, an HTTP/2 client and WebSocket clients keep
//! going, and no client sees a failed request or a connection error.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ws::ws_machine;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// What the clients saw, by kind of client.
#[derive(Default)]
struct Seen {
    ok: [AtomicU64; 3],
    /// HTTP/2 requests sent again after a graceful GOAWAY refused them.
    retried: AtomicU64,
    errors: Mutex<Vec<String>>,
}

const H1: usize = 0;
const H2: usize = 1;
const WS: usize = 2;

impl Seen {
    fn ok(&self, kind: usize) {
        self.ok[kind].fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self, what: String) {
        self.errors.lock().unwrap().push(what);
    }

    fn counts(&self) -> [u64; 3] {
        [0, 1, 2].map(|k| self.ok[k].load(Ordering::Relaxed))
    }
}

/// One HTTP/1.1 response on a keep-alive connection: its head, or why none came.
async fn h1_exchange(c: &mut TcpStream) -> Result<String, String> {
    c.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    try_read_response(c).await.map(|(head, _)| head)
}

/// A keep-alive client that reconnects when told `Connection: close`, as
/// clients do; anything else that ends a connection is an error.
async fn h1_client(port: u16, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut conn: Option<TcpStream> = None;
    for _ in 0..1_000_000 {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return;
        }
        let c = match &mut conn {
            Some(c) => c,
            None => match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    seen.failed(format!("h1 connect: {e}"));
                    return;
                }
            },
        };
        match h1_exchange(c).await {
            Ok(head) if head.starts_with("HTTP/1.1 200") => {
                seen.ok(H1);
                if head.to_ascii_lowercase().contains("connection: close") {
                    conn = None;
                }
            }
            Ok(head) => {
                seen.failed(format!("h1: {head}"));
                conn = None;
            }
            Err(e) => {
                seen.failed(format!("h1: {e}"));
                return;
            }
        }
    }
}

/// Every name resolves to the loopback address: `web.test` is Tern.
#[derive(Clone)]
struct Loopback;

impl tower_service::Service<Name> for Loopback {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Name) -> Self::Future {
        std::future::ready(Ok(
            vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))].into_iter()
        ))
    }
}

/// hyper's pooling HTTP/2 client (h2c), which follows GOAWAY to a new connection.
async fn h2_client(port: u16, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build::<_, Empty<bytes::Bytes>>(HttpConnector::new_with_resolver(Loopback));
    let deadline = Instant::now() + Duration::from_secs(240);
    for _ in 0..1_000_000 {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return;
        }
        let req = http::Request::get(format!("http://web.test:{port}/"))
            .body(Empty::new())
            .unwrap();
        let mut answer = client.request(req.clone()).await;
        // A request that met the old process's GOAWAY before it was sent is
        // sent again, as browsers, curl and Go's client do (RFC 9113, 6.8:
        // it was not processed); hyper's pool leaves that to its caller.
        for _ in 0..3 {
            match &answer {
                Err(e) if refused_by_goaway(e) => {
                    seen.retried.fetch_add(1, Ordering::Relaxed);
                    answer = client.request(req.clone()).await;
                }
                _ => break,
            }
        }
        match answer {
            Ok(resp) if resp.status() == 200 => match resp.into_body().collect().await {
                Ok(_) => seen.ok(H2),
                Err(e) => seen.failed(format!("h2 body: {e}")),
            },
            Ok(resp) => seen.failed(format!("h2: {}", resp.status())),
            Err(e) => seen.failed(format!("h2: {e:?}")),
        }
    }
}

/// Whether an HTTP/2 request was refused by a graceful GOAWAY (NO_ERROR) from
/// the server: never processed, so safe to send again.
fn refused_by_goaway(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        cause = err.source();
    }
    false
}

/// WebSocket sessions, one after another: connect, five echoes, close.
async fn ws_client(port: u16, seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let deadline = Instant::now() + Duration::from_secs(240);
    for _ in 0..100_000 {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return;
        }
        if let Err(e) = ws_session(port).await {
            seen.failed(format!("ws: {e}"));
            return;
        }
        seen.ok(WS);
    }
}

async fn ws_session(port: u16) -> Result<(), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let url = format!("ws://ws.test:{port}/chat");
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}")))
            .await
            .map_err(|e| format!("send: {e}"))?;
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(m))) if m == Message::text(format!("HELLO {i}")) => {}
            other => return Err(format!("echo {i}: {other:?}")),
        }
    }
    ws.close(None).await.map_err(|e| format!("close: {e}"))?;
    Ok(())
}

fn config(ports: Ports, ips: &Ips, scheduler: &str) -> String {
    let mut c = config_head(ports, "").replace(
        "bind = \"127.0.0.1\"",
        &format!(
            "bind = \"127.0.0.1\"\nupgrade_socket = \"tern.sock\"\nscheduler = \"{scheduler}\""
        ),
    );
    c.push_str(&web_app(ports.http, ""));
    c.push_str(&machine("m1", "web", "ams", ips.get(1)));
    c.push_str(&plain_app("ws", ports.http, ""));
    c.push_str(&machine("m2", "ws", "ams", ips.get(2)));
    c
}

/// A successor process; killed on drop, so that a failed test leaves none behind.
struct Successor(Child);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tern run --upgrade` on the same configuration.
fn successor(tern: &Tern, n: usize) -> Successor {
    let log = tern.dir.path().join(format!("tern-{n}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["run", "--upgrade", "--config"])
        .arg(tern.dir.path().join("tern.toml"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start the successor");
    Successor(child)
}

/// Waits (bounded) for `child` to exit, and returns its status.
fn exit_of(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

async fn progress(seen: &Seen, n: u64) {
    let start = seen.counts();
    let grew = eventually(Duration::from_secs(30), || {
        let now = seen.counts();
        (0..3).all(|k| now[k] >= start[k] + n)
    })
    .await;
    assert!(
        grew,
        "the load stalled: {:?} -> {:?}; errors: {:?}",
        start,
        seen.counts(),
        seen.errors.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn five_upgrades_under_http1_http2_and_websocket_load_fail_nothing() {
    upgrades_under_load(&["work-stealing"; 6]).await;
}

/// Per core, each worker has a socket of its own on a port, and all of them
/// change hands; a successor adds none beside those it inherits, so a
/// per-core successor of a work-stealing node shares the one socket among its
/// workers.
#[tokio::test(flavor = "multi_thread")]
async fn upgrades_between_the_schedulers_under_load_fail_nothing() {
    upgrades_under_load(&["per-core", "per-core", "work-stealing", "per-core"]).await;
    upgrades_under_load(&["work-stealing", "per-core", "work-stealing"]).await;
}

/// Starts Tern with `schedulers[0]`, loads it with HTTP/1.1, HTTP/2 and
/// WebSocket clients, and upgrades it once for each further entry, to that
/// scheduler: no request may fail.
async fn upgrades_under_load(schedulers: &[&str]) {
    let ips = Ips::new();
    let _m1 = Backend::start("m1", ips.get(1), 7000).await;
    let _m2 = ws_machine(ips.get(2)).await;
    let ports = Ports::new();
    let mut tern = Tern::start(&config(ports, &ips, schedulers[0]), ports);
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(tokio::spawn(h1_client(
            ports.http,
            seen.clone(),
            stop.clone(),
        )));
    }
    clients.push(tokio::spawn(h2_client(
        ports.http,
        seen.clone(),
        stop.clone(),
    )));
    for _ in 0..2 {
        clients.push(tokio::spawn(ws_client(
            ports.http,
            seen.clone(),
            stop.clone(),
        )));
    }
    progress(&seen, 20).await;

    let mut current: Option<Successor> = None;
    for (n, scheduler) in schedulers.iter().enumerate().skip(1) {
        std::fs::write(
            tern.dir.path().join("tern.toml"),
            config(ports, &ips, scheduler),
        )
        .unwrap();
        let next = successor(&tern, n);
        let old = match current.as_mut() {
            Some(s) => &mut s.0,
            None => &mut tern.child,
        };
        let status = tokio::task::block_in_place(|| exit_of(old, Duration::from_secs(60)));
        let log = |i: usize| {
            let name = if i == 0 {
                "tern.log".into()
            } else {
                format!("tern-{i}.log")
            };
            std::fs::read_to_string(tern.dir.path().join(name)).unwrap_or_default()
        };
        assert!(
            status.is_some_and(|s| s.success()),
            "upgrade {n}: the old process did not hand over and exit ({status:?})\nold:\n{}\nnew:\n{}",
            log(n - 1),
            log(n)
        );
        assert!(log(n - 1).contains("draining"), "{}", log(n - 1));
        // Sockets change hands as they are: as many as the first process bound.
        let sockets = ports_listened_by(next.0.id());
        let held = sockets.iter().filter(|p| **p == ports.http).count();
        let bound = if schedulers[0] == "per-core" { 2 } else { 1 };
        assert_eq!(held, bound, "upgrade {n}: sockets on the port: {sockets:?}");
        // The old one has exited; dropping it reaps it.
        drop(current.replace(next));
        progress(&seen, 20).await;
    }

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    drop(current);
    let errors = seen.errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} failures: {:?}",
        errors.len(),
        &errors[..errors.len().min(20)]
    );
    // That each process served some of each is `progress`'s check, above.
    let [h1, h2, ws] = seen.counts();
    eprintln!(
        "answered: {h1} HTTP/1.1, {h2} HTTP/2 ({} sent again after GOAWAY), {ws} WebSocket sessions",
        seen.retried.load(Ordering::Relaxed)
    );
}
