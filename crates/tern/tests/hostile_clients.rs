//! Malformed and hostile clients against a real `tern run` on a plain HTTP port:
//! garbage, oversized and invalid heads, smuggling-shaped framing, slow and idle
//! connections, a storm of junk connections, and the per-listener connection cap.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

struct Setup {
    tern: Tern,
    backend: Backend,
}

async fn setup(extra_limits: &str) -> Setup {
    let ips = Ips::new();
    let backend = Backend::start("m1", ips.get(1), 7000).await;
    let ports = Ports::new();
    let mut c = config_head(ports, extra_limits);
    c.push_str(&web_app(
        ports.http,
        r#"concurrency = { type = "requests", soft_limit = 500, hard_limit = 1000 }"#,
    ));
    c.push_str(&machine("m1", "web", "ams", ips.get(1)));
    let tern = Tern::start(&c, ports);
    Setup { tern, backend }
}

async fn connect(port: u16) -> TcpStream {
    timeout(T, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect in time")
        .expect("connect to tern")
}

/// What came back on a connection, and whether the server ended it.
#[derive(Debug)]
struct Outcome {
    text: String,
    /// The server closed (EOF or reset) within the wait.
    closed: bool,
    elapsed: Duration,
}

/// Reads until the server closes the connection or `within` passes.
async fn read_until_close(s: &mut TcpStream, within: Duration) -> Outcome {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + within;
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    Outcome {
        text: String::from_utf8_lossy(&out).into_owned(),
        closed,
        elapsed: start.elapsed(),
    }
}

/// Sends `bytes` on a fresh connection and reads until the server closes it.
async fn exchange(port: u16, bytes: &[u8]) -> Outcome {
    let mut s = connect(port).await;
    // The server may answer and close before reading everything; that is fine.
    let _ = s.write_all(bytes).await;
    read_until_close(&mut s, T).await
}

/// Asserts Tern answered `status` by itself (no request formed) and closed.
fn assert_rejected(o: &Outcome, statuses: &[u16], what: &str) {
    let ok = statuses
        .iter()
        .any(|s| o.text.starts_with(&format!("HTTP/1.1 {s} ")));
    assert!(ok, "{what}: expected one of {statuses:?}, got {:?}", o.text);
    assert!(
        o.closed,
        "{what}: connection must be closed; got {:?}",
        o.text
    );
    assert_eq!(
        o.text.matches("HTTP/1.1 ").count(),
        1,
        "{what}: exactly one response expected: {:?}",
        o.text
    );
    assert!(
        !o.text.contains("machine=m1"),
        "{what}: must not reach the machine: {:?}",
        o.text
    );
}

const GET: &[u8] = b"GET /ok HTTP/1.1\r\nHost: web.test\r\n\r\n";

/// A normal request on a fresh connection still gets the machine's 200.
async fn assert_serves(port: u16) {
    let o = exchange(
        port,
        b"GET /ok HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(o.text.starts_with("HTTP/1.1 200"), "{:?}", o.text);
    assert!(o.text.contains("machine=m1"), "{:?}", o.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_request_line_gets_400_and_close() {
    let s = setup("").await;
    let port = s.tern.ports.http;
    for junk in [
        &b"HELLO\x01\x02 there\r\n\r\n"[..],
        b"this is not http\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: web.test\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: web.test\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage-tls-hello\r\n\r\n",
    ] {
        let o = exchange(port, junk).await;
        assert_rejected(&o, &[400], &format!("{junk:?}"));
        assert!(
            !o.text.to_ascii_lowercase().contains("tern-error"),
            "parser errors carry no Tern-Error: {:?}",
            o.text
        );
    }
    assert_eq!(s.backend.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_serves(port).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_head_and_too_many_headers() {
    let s = setup("max_header_bytes = \"16KiB\"\nmax_headers = 20").await;
    let port = s.tern.ports.http;

    // Under the byte limit: served.
    let fine = format!(
        "GET /ok HTTP/1.1\r\nHost: web.test\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    let o = exchange(port, fine.as_bytes()).await;
    assert!(o.text.starts_with("HTTP/1.1 200"), "{:?}", o.text);

    // One header alone larger than the whole allowance.
    let big = format!(
        "GET /ok HTTP/1.1\r\nHost: web.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let o = exchange(port, big.as_bytes()).await;
    assert_rejected(&o, &[431, 400], "20 KiB header");

    // Many small headers adding up past the limit.
    let mut many = String::from("GET /ok HTTP/1.1\r\nHost: web.test\r\n");
    for i in 0..19 {
        many.push_str(&format!("X-H{i}: {}\r\n", "b".repeat(1000)));
    }
    many.push_str("\r\n");
    let o = exchange(port, many.as_bytes()).await;
    assert_rejected(&o, &[431, 400], "19 KB of headers");

    // Under the count limit: served.
    let mut few = String::from("GET /ok HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n");
    for i in 0..10 {
        few.push_str(&format!("X-H{i}: v\r\n"));
    }
    few.push_str("\r\n");
    let o = exchange(port, few.as_bytes()).await;
    assert!(o.text.starts_with("HTTP/1.1 200"), "{:?}", o.text);

    // Over the count limit (21+ headers), though tiny in bytes.
    let mut lots = String::from("GET /ok HTTP/1.1\r\nHost: web.test\r\n");
    for i in 0..30 {
        lots.push_str(&format!("X-H{i}: v\r\n"));
    }
    lots.push_str("\r\n");
    let o = exchange(port, lots.as_bytes()).await;
    assert_rejected(&o, &[431, 400], "30 headers");
    eprintln!("30 headers answered: {:?}", o.text.lines().next());

    assert_serves(port).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_headers_and_framing_get_400() {
    let s = setup("").await;
    let port = s.tern.ports.http;
    let cases: &[(&str, &[u8])] = &[
        (
            "control byte in a header value",
            b"GET /ok HTTP/1.1\r\nHost: web.test\r\nX-Bad: a\x01b\r\n\r\n",
        ),
        (
            "space in a header name",
            b"GET /ok HTTP/1.1\r\nHost: web.test\r\nBad Name: x\r\n\r\n",
        ),
        (
            "header line without a colon",
            b"GET /ok HTTP/1.1\r\nHost: web.test\r\nNoColonHere\r\n\r\n",
        ),
        (
            "two different Content-Length values",
            b"POST /ok HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "non-numeric Content-Length",
            b"POST /ok HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5x\r\n\r\nhello",
        ),
        (
            "negative Content-Length",
            b"POST /ok HTTP/1.1\r\nHost: web.test\r\nContent-Length: -1\r\n\r\n",
        ),
        (
            "Transfer-Encoding that does not end in chunked",
            b"POST /ok HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: gzip\r\n\r\nxx",
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            b"POST /ok HTTP/1.0\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let o = exchange(port, bytes).await;
        assert_rejected(&o, &[400], what);
    }
    assert_eq!(
        s.backend.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no malformed request may reach the machine"
    );
    assert_serves(port).await;
}

/// Content-Length together with Transfer-Encoding is the classic smuggling shape.
/// Tern must either refuse it (400) or, as RFC 9112 §6.3 allows, frame the body by
/// Transfer-Encoding alone, forward no Content-Length, and close the connection
/// afterwards; in no case may bytes after the chunked body become a second request.
#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    let s = setup("").await;
    let port = s.tern.ports.http;
    for order in [
        &b"Content-Length: 44\r\nTransfer-Encoding: chunked\r\n"[..],
        b"Transfer-Encoding: chunked\r\nContent-Length: 44\r\n",
    ] {
        let mut req = b"POST /first HTTP/1.1\r\nHost: web.test\r\n".to_vec();
        req.extend_from_slice(order);
        req.extend_from_slice(b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: web.test\r\n\r\n");
        let o = exchange(port, &req).await;
        assert!(o.closed, "connection must be closed: {:?}", o.text);
        assert_eq!(
            o.text.matches("HTTP/1.1 ").count(),
            1,
            "exactly one response: {:?}",
            o.text
        );
        assert!(!o.text.contains("/smuggled"), "{:?}", o.text);
        eprintln!("CL + TE answered: {:?}", o.text.lines().next());
        if o.text.starts_with("HTTP/1.1 200") {
            let lower = o.text.to_ascii_lowercase();
            assert!(lower.contains("uri=/first"), "{:?}", o.text);
            assert!(
                !lower.contains("\ncontent-length: 44"),
                "Content-Length must not be forwarded with Transfer-Encoding: {:?}",
                o.text
            );
            assert!(lower.contains("body-bytes=0"), "{:?}", o.text);
        } else {
            assert_rejected(&o, &[400], "CL + TE");
        }
    }
    // Give a smuggled request, had it been sent, time to land, then check.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.backend.hits.load(std::sync::atomic::Ordering::SeqCst) <= 2,
        "the smuggled request must never reach the machine"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn header_read_timeout_closes_a_half_sent_head() {
    let s = setup("header_read_timeout = \"500ms\"").await;
    let port = s.tern.ports.http;
    let mut c = connect(port).await;
    c.write_all(b"GET /ok HTTP/1.1\r\nHost: web.test\r\nX-Partial: ")
        .await
        .unwrap();
    let o = read_until_close(&mut c, Duration::from_secs(5)).await;
    assert!(o.closed, "a stalled head must be closed within 5 s");
    assert!(
        o.elapsed >= Duration::from_millis(400),
        "closed before the header timeout: {:?}",
        o.elapsed
    );
    assert!(
        o.text.is_empty() || o.text.starts_with("HTTP/1.1 408"),
        "no response other than 408 expected: {:?}",
        o.text
    );
    // Others are served meanwhile and afterwards.
    assert_serves(port).await;
    assert_eq!(s.backend.hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The timer also guards the second head of a keep-alive connection.
    let mut c = connect(port).await;
    c.write_all(GET).await.unwrap();
    let (head, _) = read_response(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    c.write_all(b"GET /second HTTP/1.1\r\nHost: web")
        .await
        .unwrap();
    let o = read_until_close(&mut c, Duration::from_secs(5)).await;
    assert!(o.closed, "a stalled second head must be closed within 5 s");
    assert!(
        o.text.is_empty() || o.text.starts_with("HTTP/1.1 408"),
        "{:?}",
        o.text
    );
    assert_eq!(s.backend.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connection_is_closed() {
    let s = setup("idle_timeout = \"500ms\"").await;
    let port = s.tern.ports.http;
    let mut c = connect(port).await;
    c.write_all(GET).await.unwrap();
    let (head, body) = read_response(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("machine=m1"), "{body}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "the first response keeps the connection alive: {head}"
    );
    let o = read_until_close(&mut c, Duration::from_secs(5)).await;
    assert!(o.closed, "idle connection must be closed within 5 s");
    assert!(o.text.is_empty(), "nothing more expected: {:?}", o.text);
    assert!(
        o.elapsed >= Duration::from_millis(300),
        "closed before the idle timeout: {:?}",
        o.elapsed
    );

    // A connection that never sends a byte is idle from the start.
    let mut silent = connect(port).await;
    let o = read_until_close(&mut silent, Duration::from_secs(5)).await;
    assert!(o.closed, "a silent connection must be closed within 5 s");
    assert!(o.text.is_empty(), "{:?}", o.text);
    assert_serves(port).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_but_steady_head_is_governed_by_the_header_timer_not_idle() {
    // Idle at 1 s rather than 500 ms leaves slack for a loaded test machine.
    let s = setup("idle_timeout = \"1s\"\nheader_read_timeout = \"3s\"").await;
    let port = s.tern.ports.http;

    // ~2 s of one byte every 150 ms (twice the 1 s idle timeout, within the 3 s
    // header timeout), then the rest: the request is served.
    let mut c = connect(port).await;
    let head = b"GET /ok HTTP/1.1\r\nHost: web.test\r\n\r\n";
    let split = 13;
    for b in &head[..split] {
        c.write_all(&[*b])
            .await
            .expect("still open while trickling");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    c.write_all(&head[split..]).await.unwrap();
    let (resp, body) = read_response(&mut c).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(body.contains("uri=/ok"), "{body}");

    // Trickling forever: the header timer (3 s) ends it, well before 10 s.
    let mut c = connect(port).await;
    let start = Instant::now();
    let trickle = b"GET /ok HTTP/1.1\r\nHost: web.test\r\nX-Slow: ";
    let mut closed_at = None;
    for i in 0..200usize {
        let b = if i < trickle.len() { trickle[i] } else { b'z' };
        if c.write_all(&[b]).await.is_err() {
            closed_at = Some(start.elapsed());
            break;
        }
        let mut probe = [0u8; 256];
        match timeout(Duration::from_millis(150), c.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed_at = Some(start.elapsed());
                break;
            }
            Ok(Ok(_)) => {
                // A 408 is acceptable; anything after it must be the close.
                let o = read_until_close(&mut c, Duration::from_secs(3)).await;
                assert!(o.closed);
                closed_at = Some(start.elapsed());
                break;
            }
            Err(_) => {}
        }
        if start.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let t = closed_at.expect("a trickled head must be cut by the header timer within 10 s");
    assert!(
        t >= Duration::from_millis(2500),
        "cut after {t:?}: the idle timer must not end a connection that is sending"
    );
}

/// Deterministic junk bytes.
fn junk(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// RSS bound after the storm: generous, it only catches runaway buffering.
const RSS_LIMIT_KIB: u64 = 200 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn garbage_storm_leaves_tern_serving_and_bounded() {
    let mut s = setup("header_read_timeout = \"2s\"").await;
    let port = s.tern.ports.http;
    let started = Instant::now();

    // Slowloris: partial heads held open across the storm.
    let mut slow = Vec::new();
    for i in 0..50 {
        if let Ok(Ok(mut c)) = timeout(
            Duration::from_secs(2),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            let _ = c
                .write_all(format!("GET /slow{i} HTTP/1.1\r\nHost: web.test\r\nX-A: ").as_bytes())
                .await;
            slow.push(c);
        }
    }

    // 300 junk connections, 50 at a time.
    let mut answered_400 = 0usize;
    for batch in 0..6u64 {
        let mut tasks = Vec::new();
        for i in 0..50u64 {
            let seed = batch * 1000 + i;
            tasks.push(tokio::spawn(async move {
                let Ok(Ok(mut c)) = timeout(
                    Duration::from_secs(2),
                    TcpStream::connect(("127.0.0.1", port)),
                )
                .await
                else {
                    return false;
                };
                let len = 64 + (seed as usize * 977) % 4096;
                let _ = c.write_all(&junk(len, seed)).await;
                let mut buf = [0u8; 512];
                matches!(
                    timeout(Duration::from_millis(1500), c.read(&mut buf)).await,
                    Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 400")
                )
            }));
        }
        for t in tasks {
            if timeout(Duration::from_secs(5), t)
                .await
                .expect("junk connection bounded")
                .unwrap()
            {
                answered_400 += 1;
            }
        }
        // Slowloris keep trickling so they stay "active".
        for c in slow.iter_mut() {
            let _ = c.write_all(b"a").await;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "storm took {:?}",
        started.elapsed()
    );
    assert!(
        answered_400 > 250,
        "junk should mostly be answered 400 at once; {answered_400} of 300 were"
    );

    assert!(
        s.tern.child.try_wait().unwrap().is_none(),
        "tern died:\n{}",
        s.tern.log_text()
    );
    assert_serves(port).await;

    // The slowloris connections are cut by the header timer.
    for c in slow.iter_mut() {
        let o = read_until_close(c, Duration::from_secs(5)).await;
        assert!(
            o.closed,
            "slowloris connection must be cut by the header timer"
        );
    }
    drop(slow);

    let rss = rss_kib(s.tern.child.id());
    eprintln!("storm: {answered_400}/300 answered 400; tern RSS {rss} KiB");
    assert!(
        rss < RSS_LIMIT_KIB,
        "tern RSS {rss} KiB after the storm exceeds {RSS_LIMIT_KIB} KiB"
    );
    assert_serves(port).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_per_listener_holds_the_next_connection() {
    let s = setup("max_connections_per_listener = 5").await;
    let port = s.tern.ports.http;

    // Five keep-alive connections, each proven accepted by one exchange, then idle.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut c = connect(port).await;
        c.write_all(GET).await.unwrap();
        let (head, _) = read_response(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(c);
    }

    // The sixth completes the TCP handshake (kernel backlog) but is not served.
    let mut sixth = connect(port).await;
    sixth
        .write_all(b"GET /sixth HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let early = timeout(Duration::from_millis(1500), sixth.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the sixth connection must wait while five are open, got {early:?}"
    );

    // Closing one of the five lets the sixth through.
    drop(held.pop());
    let o = read_until_close(&mut sixth, T).await;
    assert!(o.text.starts_with("HTTP/1.1 200"), "{:?}", o.text);
    assert!(o.text.contains("uri=/sixth"), "{:?}", o.text);
}
