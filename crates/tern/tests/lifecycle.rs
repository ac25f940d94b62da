//! The end of a `tern run`: SIGTERM and SIGINT stop the listeners, let in-flight
//! requests finish within `limits.drain_timeout`, cut what outlives it, and exit 0.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, ExitStatus};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

fn config(ports: Ports, ips: &Ips, drain_timeout: &str) -> String {
    let head = config_head(ports, "").replace(
        "drain_timeout = \"5s\"",
        &format!("drain_timeout = \"{drain_timeout}\""),
    );
    assert!(head.contains(&format!("drain_timeout = \"{drain_timeout}\"")));
    let mut c = head;
    c.push_str(&web_app(
        ports.http,
        r#"concurrency = { type = "requests", soft_limit = 50, hard_limit = 100 }"#,
    ));
    c.push_str(&machine("m1", "web", "ams", ips.get(1)));
    c
}

fn signal(tern: &Tern, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &tern.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill -{sig} failed");
}

/// Waits (bounded) for the process to exit.
fn wait_exit(tern: &mut Tern, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(s)) = tern.child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A GET on its own thread; the result is everything read until close, or the error.
fn spawn_get(port: u16, path: &str) -> std::thread::JoinHandle<Result<String, String>> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: web.test\r\nConnection: keep-alive\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        match s.read_to_end(&mut out) {
            Ok(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                Ok(String::from_utf8_lossy(&out).into_owned())
            }
            Err(e) => Err(format!(
                "{e} after {:?}",
                String::from_utf8_lossy(&out).into_owned()
            )),
        }
    })
}

fn connect_refused(port: u16) -> bool {
    match TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)) {
        Err(e) => e.kind() == ErrorKind::ConnectionRefused,
        // A self-connection (simultaneous open on an unbound ephemeral port) is
        // nothing listening.
        Ok(s) => s.local_addr().ok() == s.peer_addr().ok(),
    }
}

/// Polls until `cond` holds or `within` passes.
fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Sends `sig` while a 1.5 s request is in flight: the request completes, new
/// connections are refused at once, and Tern exits 0 within the drain deadline.
async fn drain_case(sig: &str) {
    let ips = Ips::new();
    let backend = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let mut tern = Tern::start(&config(ports, &ips, "5s"), ports);
    let port = ports.http;
    let hits = backend.hits.clone();
    let sig2 = sig.to_owned();

    let (resp, status, refused, elapsed) = tokio::task::spawn_blocking(move || {
        let slow = spawn_get(port, "/slow?ms=1500");
        assert!(
            wait_for(Duration::from_secs(5), || hits.load(Ordering::SeqCst) == 1),
            "the slow request reached the machine"
        );
        let signalled = Instant::now();
        signal(&tern, &sig2);
        // New connections are refused while the old request is still running.
        let refused = wait_for(Duration::from_millis(1000), || connect_refused(port));
        let still_running = tern.child.try_wait().unwrap().is_none();
        assert!(
            still_running,
            "tern must wait for the in-flight request before exiting"
        );
        let status = wait_exit(&mut tern, Duration::from_secs(8));
        let elapsed = signalled.elapsed();
        let resp = slow.join().unwrap();
        let log = tern.log_text();
        (resp, status.map(|s| (s, log)), refused, elapsed)
    })
    .await
    .unwrap();

    let (status, log) = status.expect("tern exits after draining");
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert!(
        elapsed < Duration::from_secs(5) + Duration::from_millis(1500),
        "exited {elapsed:?} after the signal, past the 5 s drain deadline"
    );
    assert!(refused, "new connections must be refused after the signal");
    eprintln!("{sig}: exited {elapsed:?} after the signal");
    let resp = resp.expect("the in-flight request gets an answer");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("uri=/slow?ms=1500"), "{resp}");
    assert!(resp.contains("machine=m1"), "{resp}");
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    drain_case("TERM").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_drains_like_sigterm() {
    drain_case("INT").await;
}

/// HTTP/2 streams run inside their connection's task: on SIGTERM the connection
/// gets GOAWAY, and every stream in flight on it still gets its whole answer.
/// (Over TLS: curl 7.88 cannot reuse an h2c prior-knowledge connection, curl#10634.)
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_http2_streams() {
    let s = web_setup("", "").await;
    let (mut tern, certs, hits) = (s.tern, s.certs, s.backend.hits.clone());
    let port = tern.ports.https;
    let (out, status) = tokio::task::spawn_blocking(move || {
        // Five streams multiplexed on one connection.
        let mut args: Vec<String> = ["-i", "--http2", "--parallel", "--cacert"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        args.push(certs.ca_path.to_str().unwrap().to_owned());
        args.push("--resolve".into());
        args.push(format!("web.test:{port}:127.0.0.1"));
        args.extend((0..5).map(|i| format!("https://web.test:{port}/slow?ms=1500&i={i}")));
        let client = std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&args)
        });
        let reached = wait_for(Duration::from_secs(5), || hits.load(Ordering::SeqCst) == 5);
        if !reached {
            let got = hits.load(Ordering::SeqCst);
            panic!(
                "{got} of 5 streams reached the machine: {:?}",
                client.join()
            );
        }
        signal(&tern, "TERM");
        let status = wait_exit(&mut tern, Duration::from_secs(8));
        (client.join().unwrap(), status.map(|s| (s, tern.log_text())))
    })
    .await
    .unwrap();
    let (status, log) = status.expect("tern exits after draining");
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    let (ok, out, err) = out;
    assert!(ok, "{err}\n{out}");
    assert_eq!(out.matches("HTTP/2 200").count(), 5, "{out}");
    for i in 0..5 {
        assert!(out.contains(&format!("uri=/slow?ms=1500&i={i}")), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_tern_exits_zero_at_once_on_sigterm() {
    let ips = Ips::new();
    let _backend = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let mut tern = Tern::start(&config(ports, &ips, "30s"), ports);
    // An idle keep-alive client must not hold the exit for the 30 s deadline.
    let mut idle = TcpStream::connect(("127.0.0.1", ports.http)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(idle, "GET /ok HTTP/1.1\r\nHost: web.test\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let status = tokio::task::spawn_blocking(move || {
        let s = tern.terminate(Duration::from_secs(5));
        (s, tern.log_text())
    })
    .await
    .unwrap();
    let (status, log) = status;
    let status = status.unwrap_or_else(|| panic!("tern did not exit within 5 s:\n{log}"));
    assert!(status.success(), "{status:?}\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_outliving_drain_timeout_is_cut() {
    let ips = Ips::new();
    let backend = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let mut tern = Tern::start(&config(ports, &ips, "1s"), ports);
    let port = ports.http;
    let hits = backend.hits.clone();

    let (resp, status, elapsed, log) = tokio::task::spawn_blocking(move || {
        let slow = spawn_get(port, "/slow?ms=10000");
        assert!(
            wait_for(Duration::from_secs(5), || hits.load(Ordering::SeqCst) == 1),
            "the slow request reached the machine"
        );
        let signalled = Instant::now();
        let status = tern.terminate(Duration::from_secs(6));
        let elapsed = signalled.elapsed();
        let resp = slow.join().unwrap();
        (resp, status, elapsed, tern.log_text())
    })
    .await
    .unwrap();

    let status = status.unwrap_or_else(|| panic!("tern did not exit within 6 s:\n{log}"));
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert!(
        elapsed < Duration::from_secs(3),
        "exited {elapsed:?} after SIGTERM with drain_timeout = 1s"
    );
    // The client saw the connection end without a response (well before the
    // machine's 10 s answer: the read timeout is 20 s but the thread is done).
    eprintln!("cut: exited {elapsed:?} after SIGTERM; client got {resp:?}");
    let resp = resp.expect("connection ended by close or reset, not a timeout");
    assert!(
        !resp.contains("HTTP/1.1 200"),
        "the cut request must not be answered: {resp}"
    );
}

/// Raw TCP connections keep running through the drain and are cut at the deadline.
#[tokio::test(flavor = "multi_thread")]
async fn raw_tcp_connection_runs_until_the_drain_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let ips = Ips::new();
    // An echo machine on the raw service's internal port.
    let echo = tokio::net::TcpListener::bind((ips.get(1), 7001))
        .await
        .unwrap();
    let echo_task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = echo.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let _backend = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let mut c = config(ports, &ips, "2s");
    c.push_str(&format!(
        "\n[[app]]\nname = \"raw\"\n\n[[app.service]]\ninternal_port = 7001\nports = [{{ port = {raw}, handlers = [] }}]\n",
        raw = ports.https
    ));
    c.push_str(&machine("r1", "raw", "ams", ips.get(1)));
    let mut tern = Tern::start(&c, ports);
    let raw_port = ports.https;

    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", raw_port))
        .await
        .unwrap();
    let t = Duration::from_secs(5);
    let mut buf = [0u8; 6];
    conn.write_all(b"before").await.unwrap();
    tokio::time::timeout(t, conn.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"before");

    signal(&tern, "TERM");
    let signalled = Instant::now();
    assert!(
        tokio::task::spawn_blocking(move || wait_for(Duration::from_secs(2), || connect_refused(
            raw_port
        )))
        .await
        .unwrap(),
        "the raw port stops accepting on SIGTERM"
    );
    // Still passing bytes during the drain.
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.write_all(b"during").await.unwrap();
    tokio::time::timeout(t, conn.read_exact(&mut buf))
        .await
        .expect("echo during the drain")
        .unwrap();
    assert_eq!(&buf, b"during");
    assert!(
        tern.child.try_wait().unwrap().is_none(),
        "tern waits for the raw connection"
    );

    // At the 2 s deadline the connection is cut and tern exits 0.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(6), conn.read_to_end(&mut rest)).await;
    assert!(
        end.is_ok(),
        "the raw connection must be cut at the deadline"
    );
    assert!(rest.is_empty(), "{rest:?}");
    let (status, log) = tokio::task::spawn_blocking(move || {
        let s = wait_exit(&mut tern, Duration::from_secs(5));
        (s, tern.log_text())
    })
    .await
    .unwrap();
    let elapsed = signalled.elapsed();
    let status = status.unwrap_or_else(|| panic!("tern did not exit:\n{log}"));
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(5),
        "exit {elapsed:?} after SIGTERM with drain_timeout = 2s"
    );
    echo_task.abort();
}

/// A request whose head was still arriving when the drain began is answered
/// (its body makes Tern's in-task server hand it to hyper's) with `Connection:
/// close`, and the connection ends with it, not at the drain deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_handed_over_while_draining_closes_its_connection() {
    let ips = Ips::new();
    let _backend = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let mut tern = Tern::start(&config(ports, &ips, "5s"), ports);
    let (resp, closed_after, status) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(("127.0.0.1", ports.http)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "POST /late HTTP/1.1\r\nHost: web.test\r\nContent-Len").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        signal(&tern, "TERM");
        std::thread::sleep(Duration::from_millis(300));
        write!(s, "gth: 5\r\n\r\nhello").unwrap();
        let sent = Instant::now();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let closed_after = sent.elapsed();
        let status = wait_exit(&mut tern, Duration::from_secs(8));
        let resp = String::from_utf8_lossy(&out).into_owned();
        (
            format!("{resp}\n-- tern's log:\n{}", tern.log_text()),
            closed_after,
            status,
        )
    })
    .await
    .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("uri=/late"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    assert!(
        closed_after < Duration::from_secs(3),
        "the connection outlived its answer by {closed_after:?} (drain deadline 5 s)"
    );
    assert!(status.expect("tern exits").success());
}
