//! The spin watchdog in a live `tern run`: a synthetic spin under each action, the
//! close_notify storm on the fixed rustls, no false positives on slow, big, idle
//! and upgraded connections, and the runtime watchdog on a blocked runtime.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;

fn config(ports: Ports, ips: &Ips, watchdog: &str, limits: &str) -> String {
    let mut c = config_head(ports, limits);
    c.push_str(&format!(
        r#"
[watchdog]
{watchdog}

[tls]
certs_dir = "certs"

[[app]]
name = "web"
hostnames = ["web.test"]

[[app.service]]
internal_port = 7000
concurrency = {{ type = "requests", soft_limit = 500, hard_limit = 1000 }}
ports = [
  {{ port = {https}, handlers = ["tls", "http"] }},
  {{ port = {http}, handlers = ["http"] }},
]
"#,
        https = ports.https,
        http = ports.http
    ));
    c.push_str(&machine("m1", "web", "ams", ips.get(1)));
    c
}

/// Starts Tern with the test hooks on, in front of whatever listens on the
/// machine address `ips.get(1)`, port 7000.
fn start_tern(
    ports: Ports,
    ips: &Ips,
    watchdog: &str,
    limits: &str,
    workers: usize,
) -> (Tern, Certs) {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["web.test"]);
    std::env::set_var("TERN_TEST_HOOKS", "1");
    let config = config(ports, ips, watchdog, limits)
        .replace("workers = 2", &format!("workers = {workers}"));
    let tern = Tern::start_in(dir, &config, ports);
    (tern, certs)
}

/// Starts the test machine, then Tern in front of it. The machine runs until the
/// returned `Backend` is dropped; bound first, it outlives Tern.
async fn start(watchdog: &str, limits: &str, workers: usize) -> (Backend, Tern, Certs, Ports) {
    let ips = Ips::new();
    let machine = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let (tern, certs) = start_tern(ports, &ips, watchdog, limits, workers);
    (machine, tern, certs, ports)
}

/// Tern's CPU time so far (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after ')'.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn metric(tern: &Tern, prefix: &str) -> f64 {
    tern.admin_get("/metrics")
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn get(port: u16, path: &str) -> String {
    http_get_raw(("127.0.0.1", port), path, "web.test").unwrap_or_else(|e| format!("io error: {e}"))
}

/// Sends the spin request and returns how the connection ended, bounded by `wait`.
fn spin_request(port: u16, wait: Duration) -> (Duration, std::io::Result<usize>) {
    let mut s = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let started = Instant::now();
    s.write_all(b"GET /__tern_test/spin HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let r = s.read(&mut buf);
    (started.elapsed(), r)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_synthetic_spin_is_cut_and_others_are_served() {
    let (_machine, tern, _c, ports) = start(r#"action = "close""#, "", 2).await;
    let (took, read) =
        tokio::task::spawn_blocking(move || spin_request(ports.http, Duration::from_secs(5)))
            .await
            .unwrap();
    // Cut: the connection is closed with no answer, well within the 100 ms window
    // plus scheduling.
    assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?}");
    assert!(took < Duration::from_secs(1), "cut after {took:?}");
    assert_eq!(metric(&tern, "pollwatch_spins_total"), 1.0);
    let log = tern.log_text();
    assert_eq!(log.matches("spinning connection").count(), 1, "{log}");
    assert!(log.contains("listener="), "{log}");
    // The rest of the proxy never noticed.
    let ok = tokio::task::spawn_blocking(move || get(ports.http, "/after"))
        .await
        .unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

/// Over HTTP/2 a request runs as a stream that hyper hands to an executor; the
/// streams run in their connection's task, so its watchdog sees them too.
#[tokio::test(flavor = "multi_thread")]
async fn a_spin_in_an_http2_stream_is_cut_with_its_connection() {
    let (_machine, tern, certs, ports) = start(r#"action = "close""#, "", 2).await;
    let pid = tern.child.id();
    let before = cpu_time(pid);
    let ca = certs.ca_path.to_str().unwrap().to_owned();
    let resolve = format!("web.test:{}:127.0.0.1", ports.https);
    let h2 = move |path: &str| {
        let url = format!("https://web.test:{}{path}", ports.https);
        let started = Instant::now();
        let out = curl(&[
            "-i",
            "--http2",
            "--max-time",
            "5",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            &url,
        ]);
        (started.elapsed(), out)
    };
    let h2b = h2.clone();
    let (took, (ok, out, err)) = tokio::task::spawn_blocking(move || h2b("/__tern_test/spin"))
        .await
        .unwrap();
    // The connection is closed under the stream: no answer, and well before curl's
    // own 5 s limit.
    assert!(!ok, "{out}");
    assert!(took < Duration::from_secs(2), "cut after {took:?}: {err}");
    assert_eq!(metric(&tern, "pollwatch_spins_total"), 1.0);
    let log = tern.log_text();
    assert_eq!(log.matches("spinning connection").count(), 1, "{log}");
    // Nothing keeps burning: a stream spinning in a task of its own would hold a
    // core for as long as Tern runs.
    let settled = cpu_time(pid);
    std::thread::sleep(Duration::from_millis(500));
    let idle = cpu_time(pid) - settled;
    assert!(
        idle < Duration::from_millis(200),
        "{idle:?} of CPU in 500 ms"
    );
    assert!(settled - before < Duration::from_secs(2));
    let (_, (ok, out, err)) = tokio::task::spawn_blocking(move || h2("/after"))
        .await
        .unwrap();
    assert!(ok && out.starts_with("HTTP/2 200"), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn backoff_parks_a_spinning_connection_and_keeps_the_cpu_cool() {
    let (_machine, tern, _c, ports) = start(
        "action = \"backoff\"\nbackoff_initial = \"10ms\"\nbackoff_max = \"200ms\"",
        "",
        2,
    )
    .await;
    let pid = tern.child.id();
    let spinner = std::thread::spawn(move || spin_request(ports.http, Duration::from_secs(3)));
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = cpu_time(pid);
    let t0 = Instant::now();
    // Others are served while it is parked.
    for _ in 0..5 {
        assert!(get(ports.http, "/").starts_with("HTTP/1.1 200"));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let cpu = cpu_time(pid) - cpu0;
    let wall = t0.elapsed();
    // Unchecked, the spin would burn a whole core (≈ wall). Parked, it is a sliver.
    assert!(cpu < wall / 4, "{cpu:?} of CPU in {wall:?}");
    let conns = tern.admin_get("/debug/connections");
    assert!(conns.contains("\"spins\": "), "{conns}");
    assert!(metric(&tern, "pollwatch_spins_total") >= 3.0, "{conns}");
    let (_, read) = spinner.join().unwrap();
    // Backoff never closes it: the client's own read timeout ends the wait.
    assert!(read.is_err(), "{read:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn log_only_counts_and_logs_once() {
    let (_machine, tern, _c, ports) = start(r#"action = "log""#, "", 2).await;
    let spinner = std::thread::spawn(move || spin_request(ports.http, Duration::from_millis(800)));
    std::thread::sleep(Duration::from_millis(400));
    // With a core spinning, the other worker still serves.
    assert!(get(ports.http, "/").starts_with("HTTP/1.1 200"));
    let spins = metric(&tern, "pollwatch_spins_total");
    assert!(spins >= 2.0, "{spins}");
    let log = tern.log_text();
    assert_eq!(log.matches("spinning connection").count(), 1, "{log}");
    let _ = spinner.join();
    // Tern is dropped (killed) here: a logged spin never ends by itself.
}

/// One storm client: handshake, then a small POST, close_notify and the first four
/// bytes of another record, all in one TCP write; TCP stays open. Returns, once
/// Tern has answered and closed the connection, the time that took; `None` if it
/// did not answer or did not close within `wait`.
fn storm_client(
    port: u16,
    cfg: Arc<rustls::ClientConfig>,
    go: Arc<Barrier>,
    wait: Duration,
) -> Option<Duration> {
    let mut sock = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, "web.test".try_into().unwrap()).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    go.wait();
    conn.writer()
        .write_all(b"POST /storm HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    conn.send_close_notify();
    let mut wire = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut wire).unwrap();
    }
    wire.extend_from_slice(&[0x17, 0x03, 0x03, 0x01]);
    let sent = Instant::now();
    sock.write_all(&wire).unwrap();
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut wire_in = Vec::new();
    let closed = loop {
        let mut buf = [0u8; 4096];
        match sock.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => wire_in.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    let took = sent.elapsed();
    // Decrypt what came back: it must hold Tern's answer to the POST.
    let mut rd = &wire_in[..];
    while !rd.is_empty() {
        if conn.read_tls(&mut rd).is_err() || conn.process_new_packets().is_err() {
            break;
        }
    }
    let mut plain = Vec::new();
    let _ = conn.reader().read_to_end(&mut plain);
    let answered = plain.starts_with(b"HTTP/1.1 200");
    (closed && answered).then_some(took)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_close_notify_storm_ends_every_connection_without_a_spin() {
    const CLIENTS: usize = 200;
    let (_machine, tern, certs, ports) = start(r#"action = "close""#, "", 2).await;
    let pid = tern.child.id();
    let cfg = client_tls_config(&certs.ca_pem, &[b"http/1.1"]);
    let go = Arc::new(Barrier::new(CLIENTS));
    let cpu0 = cpu_time(pid);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (cfg, go) = (Arc::clone(&cfg), Arc::clone(&go));
            std::thread::spawn(move || storm_client(ports.https, cfg, go, Duration::from_secs(5)))
        })
        .collect();
    let ended: Vec<Option<Duration>> = tokio::task::spawn_blocking(move || {
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    })
    .await
    .unwrap();
    let storm_cpu = cpu_time(pid) - cpu0;
    eprintln!(
        "storm: {CLIENTS} clients, tern CPU {storm_cpu:?}, slowest close {:?}",
        ended.iter().flatten().max()
    );

    // Every proxy connection ended within 1 s of its client's last write.
    let slowest = ended
        .iter()
        .map(|e| e.expect("a connection never ended"))
        .max()
        .unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "slowest close after {slowest:?}"
    );
    // Nothing was flagged: the fixed rustls reaches EOF instead of spinning.
    assert_eq!(metric(&tern, "pollwatch_spins_total"), 0.0);
    assert_eq!(metric(&tern, "tern_tls_stuck_total"), 0.0);
    // Bound on Tern's CPU for 200 handshakes and requests in a debug build, and
    // no core left pegged afterwards.
    assert!(
        storm_cpu < Duration::from_secs(10),
        "storm took {storm_cpu:?} of CPU"
    );
    let cpu1 = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(1));
    let idle_cpu = cpu_time(pid) - cpu1;
    assert!(
        idle_cpu < Duration::from_millis(200),
        "{idle_cpu:?} of CPU in an idle second"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_false_positives_on_slow_big_and_idle_connections() {
    let (_machine, tern, _c, ports) =
        start(r#"action = "close""#, "idle_timeout = \"30s\"", 2).await;

    // A client trickling one byte a second (the header timer allows 10 s).
    let trickle = std::thread::spawn(move || {
        let mut s = StdTcpStream::connect(("127.0.0.1", ports.http)).unwrap();
        let head = b"GET /trickle HTTP/1.1\r\nHost: web.test\r\nX-Pad: ab\r\n\r\n";
        let (slow, rest) = head.split_at(5);
        for b in slow {
            s.write_all(&[*b]).unwrap();
            std::thread::sleep(Duration::from_secs(1));
        }
        s.write_all(rest).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });

    // An idle keep-alive connection.
    let mut idle = StdTcpStream::connect(("127.0.0.1", ports.http)).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 8192];
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(idle.read(&mut buf).unwrap() > 0);

    // A 100 MB download.
    let download = std::thread::spawn(move || {
        let mut s = StdTcpStream::connect(("127.0.0.1", ports.http)).unwrap();
        s.write_all(
            b"GET /big?bytes=100000000 HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut total = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return total,
                Ok(n) => total += n,
                Err(e) => panic!("download broke after {total} bytes: {e}"),
            }
        }
    });
    let got = download.join().unwrap();
    assert!(got > 100_000_000, "{got} bytes");

    let reply = trickle.join().unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // The idle keep-alive connection is still usable.
    idle.write_all(b"GET /again HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .unwrap();
    assert!(idle.read(&mut buf).unwrap() > 0);
    assert_eq!(metric(&tern, "pollwatch_spins_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_websocket_is_not_flagged() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ips = Ips::new();
    // The machine: a WebSocket echo server.
    let listener = tokio::net::TcpListener::bind((ips.get(1), 7000))
        .await
        .unwrap();
    let machine = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let ports = Ports::new();
    let (tern, _c) = start_tern(
        ports,
        &ips,
        r#"action = "close""#,
        "idle_timeout = \"60s\"",
        2,
    );
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", ports.http))
        .await
        .unwrap();
    let url = format!("ws://web.test:{}/ws", ports.http);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));
    // Idle for a while (a minute in production terms; shortened here).
    tokio::time::sleep(Duration::from_secs(5)).await;
    ws.send(Message::text("after")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert_eq!(echoed.unwrap().unwrap(), Message::text("after"));
    assert_eq!(metric(&tern, "pollwatch_spins_total"), 0.0);
    machine.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runtime_watchdog_exits_70_on_a_blocked_runtime() {
    // One worker, so blocking it blocks the whole runtime.
    let (_machine, mut tern, _c, _ports) = start(
        "runtime_interval = \"100ms\"\nruntime_deadline = \"500ms\"",
        "",
        1,
    )
    .await;
    let reply = tern.admin_get("/debug/test/block-runtime?ms=4000");
    assert!(reply.contains("blocking"), "{reply}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = tern.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "tern did not exit:\n{}",
            tern.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(70), "{}", tern.log_text());
    let log = tern.log_text();
    assert!(log.contains("runtime stalled"), "{log}");
    // The thread list names the watchdog thread itself, whatever the runtime.
    assert!(log.contains("pollwatch-stall"), "no thread list in:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runtime_watchdog_can_log_only_and_stays_quiet_under_load() {
    let (_machine, mut tern, _c, ports) = start(
        "runtime_interval = \"100ms\"\nruntime_deadline = \"1s\"\nruntime_action = \"log\"",
        "",
        1,
    )
    .await;
    // Normal load first: 400 requests from 8 threads, no stall reported.
    let load: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..50 {
                    assert!(get(ports.http, "/").starts_with("HTTP/1.1 200"));
                }
            })
        })
        .collect();
    for l in load {
        l.join().unwrap();
    }
    assert!(!tern.log_text().contains("runtime stalled"));

    // Then a blocked runtime: logged, and the process lives on.
    tern.admin_get("/debug/test/block-runtime?ms=2500");
    let mut logged = false;
    for _ in 0..600 {
        if tern.log_text().contains("runtime stalled") {
            logged = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(logged, "{}", tern.log_text());
    assert!(tern.child.try_wait().unwrap().is_none(), "tern exited");
    let mut ok = String::new();
    for _ in 0..100 {
        ok = get(ports.http, "/");
        if ok.starts_with("HTTP/1.1 200") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test(flavor = "multi_thread")]
async fn live_profiles_and_the_connection_list_come_from_the_admin_port() {
    let (_machine, tern, _c, ports) = start(r#"action = "close""#, "", 2).await;

    // A held-open client connection shows up with its context. A request with a
    // body goes through hyper's client, whose machine connection runs in a task
    // of its own and is listed too (a bodyless one runs in the client's task).
    let mut held = StdTcpStream::connect(("127.0.0.1", ports.http)).unwrap();
    held.write_all(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 1\r\n\r\nx")
        .unwrap();
    let mut buf = [0u8; 4096];
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(held.read(&mut buf).unwrap() > 0);
    let conns: serde_json::Value =
        serde_json::from_str(body(&tern.admin_get("/debug/connections?sample_ms=50"))).unwrap();
    let list = conns["connections"].as_array().unwrap();
    let client = list
        .iter()
        .find(|c| c["context"]["listener"].as_str() == Some(ports.http.to_string().as_str()))
        .unwrap_or_else(|| panic!("no client connection in {conns}"));
    assert_eq!(client["context"]["app"], "web");
    assert_eq!(client["context"]["machine"], "m1");
    assert!(client["bytes_in"].as_u64().unwrap() > 0);
    assert!(
        list.iter()
            .any(|c| c["context"]["state"] == "upstream-http"),
        "{conns}"
    );

    // Load while profiling, so there is something to sample.
    let load = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_millis(1500);
        let mut n = 0;
        while Instant::now() < until {
            let _ = get(ports.http, "/");
            n += 1;
        }
        n
    });
    let admin = tern.ports.admin;
    let svg = std::thread::spawn(move || {
        http_get_raw(
            ("127.0.0.1", admin),
            "/debug/pprof/flamegraph?seconds=1",
            "admin",
        )
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(200));
    // One profile at a time.
    let busy = tern.admin_get("/debug/pprof/profile?seconds=1");
    assert!(busy.starts_with("HTTP/1.1 409"), "{busy}");
    let svg = svg.join().unwrap();
    let requests = load.join().unwrap();
    eprintln!("{requests} requests during the profile");
    assert!(
        svg.starts_with("HTTP/1.1 200"),
        "{}",
        &svg[..svg.len().min(300)]
    );
    assert!(svg.contains("image/svg+xml"));
    let svg_body = body(&svg);
    assert!(
        svg_body.starts_with("<?xml"),
        "{}",
        &svg_body[..svg_body.len().min(300)]
    );
    assert!(svg_body.trim_end().ends_with("</svg>"));
    // What the samples show is checked under a real spin below: under light load
    // most samples land in system calls.

    // The protobuf is binary: read it as bytes.
    let mut s = StdTcpStream::connect(("127.0.0.1", tern.ports.admin)).unwrap();
    s.write_all(
        b"GET /debug/pprof/profile?seconds=1 HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut pb = Vec::new();
    s.read_to_end(&mut pb).unwrap();
    let head = String::from_utf8_lossy(&pb[..pb.len().min(200)]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/octet-stream"), "{head}");
    let split = pb.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    // A pprof Profile always carries its sample types and string table.
    assert!(pb.len() - split - 4 > 10, "empty profile");

    // A client that gives up on a long profile frees the profiler for the next.
    let mut quitter = StdTcpStream::connect(("127.0.0.1", tern.ports.admin)).unwrap();
    quitter
        .write_all(b"GET /debug/pprof/flamegraph?seconds=60 HTTP/1.1\r\nHost: admin\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(tern
        .admin_get("/debug/pprof/profile?seconds=1")
        .starts_with("HTTP/1.1 409"));
    drop(quitter);
    // (The flamegraph: text, which admin_get reads; the protobuf is binary.)
    let freed = eventually(Duration::from_secs(10), || {
        tern.admin_get("/debug/pprof/flamegraph?seconds=1")
            .starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(freed, "the profiler stayed busy after its client left");
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flamegraph_of_a_spinning_proxy_shows_the_spin() {
    let (_machine, tern, _c, ports) = start(r#"action = "log""#, "", 2).await;
    let spinner = std::thread::spawn(move || spin_request(ports.http, Duration::from_secs(3)));
    std::thread::sleep(Duration::from_millis(300));
    let svg = tern.admin_get("/debug/pprof/flamegraph?seconds=1");
    let _ = spinner.join();
    let samples: u64 = svg
        .split(" samples;")
        .next()
        .and_then(|s| s.rsplit('>').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    eprintln!("{samples} samples of a spinning core");
    assert!(samples >= 20, "{}", &svg[..svg.len().min(2000)]);
    assert!(svg.contains("Watched"), "the spin's frames are missing");
}

/// Anonymous resident memory (heap and stacks), from /proc.
fn anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_profile_costs_memory_while_it_runs_and_gives_it_back() {
    let (_machine, tern, _c, ports) = start("", "", 2).await;
    let pid = tern.child.id();
    let load = |for_ms: u64| {
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_millis(for_ms);
            while Instant::now() < until {
                let _ = get(ports.http, "/");
            }
        })
    };
    // Warm: the connections, buffers and pools that load brings are there before
    // the measure starts.
    load(1000).join().unwrap();
    let before = anon_kib(pid);
    for round in 0..2 {
        let during = load(1500);
        let svg = tern.admin_get("/debug/pprof/flamegraph?seconds=1");
        during.join().unwrap();
        assert!(
            svg.starts_with("HTTP/1.1 200"),
            "{}",
            &svg[..svg.len().min(300)]
        );
        let after = anon_kib(pid);
        eprintln!("round {round}: {before} KiB anonymous before a profile, {after} KiB after");
        // Reading the debug build's symbols takes tens of MiB; they are handed
        // back before the profile is answered.
        assert!(
            after < before + 16 * 1024,
            "round {round}: {before} KiB before a profile, {after} KiB after"
        );
    }
}
