//! How Tern relays what a machine answers to a request without a body (the in-task
//! client): chunked and close-delimited bodies, malformed answers, and pooled
//! connections the machine has closed. The machine is a raw socket that writes
//! scripted bytes, so that it can answer what no well-behaved server would.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A machine on port 7000 that answers each request head by its path:
/// `/chunked`, `/close` (body until it closes), `/bad` (not HTTP), `/silent` (no
/// answer at all), `/head-only` and `/head-then-close` (a head, then the
/// connection ends with none of the body it announced), and anything
/// else a 200 with `content-length`. After `/then-drop` it closes the connection
/// on the next request without answering it; otherwise it closes a connection
/// idle for 100 ms. Counts the connections it accepts.
async fn scripted_machine(ips: &Ips) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind((ips.get(1), 7000)).await.unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut drop_next = false;
                loop {
                    let read = tokio::time::timeout(Duration::from_millis(100), async {
                        let mut chunk = [0u8; 4096];
                        s.read(&mut chunk).await.map(|n| chunk[..n].to_vec())
                    })
                    .await;
                    let chunk = match read {
                        Ok(Ok(c)) if !c.is_empty() => c,
                        // Idle for 100 ms, or the peer left: close, as a server
                        // with a short keep-alive timeout does.
                        _ => return,
                    };
                    buf.extend_from_slice(&chunk);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                        if drop_next {
                            // The request has arrived; it gets no answer.
                            return;
                        }
                        drop_next = path == "/then-drop";
                        let answer: Vec<u8> = match path.as_str() {
                            "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                                6\r\nhello \r\n6;x=y\r\nworld!\r\n0\r\nx-trailer: 1\r\n\r\n"
                                .to_vec(),
                            "/close" => {
                                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await;
                                return;
                            }
                            "/bad" => b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec(),
                            "/head-only" | "/head-then-close" => {
                                // A head that promises a body, then the end of
                                // the connection: at once, or a moment later.
                                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n";
                                let _ = s.write_all(head).await;
                                if path == "/head-then-close" {
                                    tokio::time::sleep(Duration::from_millis(30)).await;
                                }
                                return;
                            }
                            "/bighead" => {
                                let field = "x".repeat(80 * 1024);
                                format!("HTTP/1.1 200 OK\r\nx-big: {field}\r\ncontent-length: 2\r\n\r\nok")
                                    .into_bytes()
                            }
                            "/silent" => {
                                // Takes the request and never answers.
                                tokio::time::sleep(Duration::from_secs(30)).await;
                                return;
                            }
                            _ => {
                                let body = format!("path={path}\n");
                                format!(
                                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                    body.len()
                                )
                                .into_bytes()
                            }
                        };
                        if s.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    accepted
}

async fn start() -> (Tern, Arc<AtomicUsize>, Ips) {
    start_with("", "").await
}

/// `limits` go into `[limits]`; `tail` ends the configuration.
async fn start_with(limits: &str, tail: &str) -> (Tern, Arc<AtomicUsize>, Ips) {
    let ips = Ips::new();
    let ports = Ports::new();
    let accepted = scripted_machine(&ips).await;
    let mut c = config_head(ports, limits);
    c.push_str(&web_app(ports.http, ""));
    c.push_str(&machine("m1", "web", "ams", ips.get(1)));
    c.push_str(tail);
    (Tern::start(&c, ports), accepted, ips)
}

/// The spin watchdog off: its probes wake connection tasks on their own, and the
/// deadline tests must see only the wakes Tern's connection driver guarantees.
const NO_WATCHDOG: &str = "\n[watchdog]\nenabled = false\n";

/// One request on a fresh client connection, read until Tern closes it.
fn get(port: u16, method: &str, path: &str) -> String {
    let head = format!("{method} {path} HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n");
    raw_exchange(port, head.as_bytes())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_and_close_delimited_bodies_are_relayed_whole() {
    let (tern, _, _ips) = start().await;
    let port = tern.ports.http;
    let out = blocking(move || get(port, "GET", "/chunked")).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // Re-chunked by Tern toward the client: the data is whole, the extension gone.
    assert!(out.contains("hello "), "{out}");
    assert!(out.contains("world!"), "{out}");
    assert!(!out.contains("x=y"), "{out}");

    let out = blocking(move || get(port, "GET", "/close")).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.ends_with("until the end") || out.contains("until the end\r\n"),
        "{out}"
    );

    // curl reads the chunked body back whole.
    let url = tern.http_url("web.test", "/chunked");
    let resolve = format!("web.test:{port}:127.0.0.1");
    let (ok, body, err) = blocking(move || curl(&["-s", "--resolve", &resolve, &url])).await;
    assert!(ok, "{err}");
    assert_eq!(body, "hello world!");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_answer_gives_upstream_bad_response() {
    let (tern, _, _ips) = start().await;
    let port = tern.ports.http;
    let out = blocking(move || get(port, "GET", "/bad")).await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("tern-error: upstream_bad_response"),
        "{out}"
    );
    // Tern goes on serving.
    let out = blocking(move || get(port, "GET", "/fine")).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// A response head over 64 KiB is a bad response whichever client of Tern's
/// reads it: the in-task one (a GET) and hyper's (a POST with a body).
#[tokio::test(flavor = "multi_thread")]
async fn a_response_head_over_64_kib_is_refused_on_every_path() {
    let (tern, _, _ips) = start().await;
    let port = tern.ports.http;
    let get_out = blocking(move || get(port, "GET", "/bighead")).await;
    let post_out = blocking(move || {
        raw_exchange(
            port,
            b"POST /bighead HTTP/1.1\r\nHost: web.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        )
    })
    .await;
    for (what, out) in [("GET", get_out), ("POST", post_out)] {
        assert!(
            out.starts_with("HTTP/1.1 502"),
            "{what}: {}",
            &out[..out.len().min(200)]
        );
        assert!(
            out.to_ascii_lowercase()
                .contains("tern-error: upstream_bad_response"),
            "{}",
            &out[..out.len().min(300)]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_the_machine_closed_is_replaced() {
    let (tern, accepted, _ips) = start().await;
    let port = tern.ports.http;
    let out = blocking(move || get(port, "GET", "/first")).await;
    assert!(out.contains("path=/first"), "{out}");
    assert_eq!(accepted.load(Ordering::Relaxed), 1);

    // The machine closes its idle connection after 100 ms; Tern's pool still
    // holds it. The check on reuse finds it closed, for a GET as for a POST, and
    // a fresh connection carries the request.
    std::thread::sleep(Duration::from_millis(300));
    let out = blocking(move || get(port, "GET", "/second")).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("path=/second"), "{out}");
    assert_eq!(accepted.load(Ordering::Relaxed), 2);

    std::thread::sleep(Duration::from_millis(300));
    let out = blocking(move || get(port, "POST", "/third")).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("path=/third"), "{out}");
    assert_eq!(accepted.load(Ordering::Relaxed), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_lost_on_a_reused_connection_goes_again_only_if_idempotent() {
    let (tern, accepted, _ips) = start().await;
    let port = tern.ports.http;
    // The machine takes the next request on this connection and closes it
    // unanswered, after Tern's check of the pooled socket found it open.
    let out = blocking(move || get(port, "GET", "/then-drop")).await;
    assert!(out.contains("path=/then-drop"), "{out}");
    let out = blocking(move || get(port, "GET", "/again")).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("path=/again"), "{out}");
    assert_eq!(accepted.load(Ordering::Relaxed), 2);

    // A POST may have been acted on: it is not sent twice.
    let out = blocking(move || get(port, "GET", "/then-drop")).await;
    assert!(out.contains("path=/then-drop"), "{out}");
    let out = blocking(move || get(port, "POST", "/once")).await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("tern-error: upstream_reset"),
        "{out}"
    );
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_requests_share_one_machine_connection() {
    let (tern, accepted, _ips) = start().await;
    let port = tern.ports.http;
    let n = blocking(move || {
        let mut s = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut seen = 0;
        for i in 0..5 {
            write!(s, "GET /k{i} HTTP/1.1\r\nHost: web.test\r\n\r\n").unwrap();
            let mut buf = [0u8; 4096];
            let mut got = String::new();
            while !got.contains(&format!("path=/k{i}\n")) {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "{got}");
                got.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            seen += 1;
        }
        seen
    })
    .await;
    assert_eq!(n, 5);
    assert_eq!(accepted.load(Ordering::Relaxed), 1);
}

/// A machine that never starts its answer gets 504 at the response-header
/// timeout: a short one (its timer armed at once) and one longer than the
/// connection's one-second wake, whose timer is armed only when it is near.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_machine_gives_upstream_timeout_at_the_deadline() {
    for (timeout_ms, lazily_armed) in [(600u64, false), (2600, true)] {
        let limits = format!("response_header_timeout = \"{timeout_ms}ms\"");
        let (tern, _, _ips) = start_with(&limits, NO_WATCHDOG).await;
        let port = tern.ports.http;
        let started = std::time::Instant::now();
        let out = blocking(move || get(port, "GET", "/silent")).await;
        let took = started.elapsed();
        assert!(out.starts_with("HTTP/1.1 504"), "{out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("tern-error: upstream_timeout"),
            "{out}"
        );
        let at = Duration::from_millis(timeout_ms);
        assert!(
            took >= at - Duration::from_millis(150),
            "lazily armed: {lazily_armed}, answered after {took:?}"
        );
        assert!(
            took < at + Duration::from_millis(1500),
            "lazily armed: {lazily_armed}, answered after {took:?}"
        );
        // The same over HTTP/2 (a real timer from the start): curl's h2c.
        let url = tern.http_url("web.test", "/silent");
        let resolve = format!("web.test:{port}:127.0.0.1");
        let (_, out, err) = blocking(move || {
            curl(&[
                "-s",
                "-i",
                "--http2-prior-knowledge",
                "--resolve",
                &resolve,
                &url,
            ])
        })
        .await;
        assert!(out.starts_with("HTTP/2 504"), "{out} {err}");
    }
}

/// While Tern drains, a request in flight still gets its 504 at the
/// response-header deadline (its timer armed lazily, as the deadline nears),
/// not a dropped connection at the end of the drain. (That the driver keeps
/// waking the task while draining is tested deterministically in
/// tern-http's `server.rs`.)
#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_is_kept_while_draining() {
    // The tests' drain_timeout is 5 s (common::config_head).
    let limits = "response_header_timeout = \"2600ms\"";
    let (mut tern, _, _ips) = start_with(limits, NO_WATCHDOG).await;
    let port = tern.ports.http;
    let started = std::time::Instant::now();
    let asking = tokio::task::spawn_blocking(move || get(port, "GET", "/silent"));
    // The request is in flight before the drain begins.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exit = blocking(move || {
        let status = tern.terminate(Duration::from_secs(20));
        (status, tern)
    });
    let out = asking.await.unwrap();
    let took = started.elapsed();
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    assert!(
        took < Duration::from_millis(2600 + 1500),
        "answered after {took:?}"
    );
    let (status, _tern) = exit.await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// A machine that sends a head and closes before its body: nothing has reached
/// the client yet, so it gets the coded 502, never an empty reply, on every
/// path (the in-task client for a GET, hyper's for a POST, and HTTP/2).
#[tokio::test(flavor = "multi_thread")]
async fn a_machine_closing_after_its_head_gives_a_coded_502() {
    let (tern, _, _ips) = start().await;
    let port = tern.ports.http;
    for path in ["/head-only", "/head-then-close"] {
        let get_out = blocking(move || get(port, "GET", path)).await;
        let post_out = blocking(move || {
            let req = format!("POST {path} HTTP/1.1\r\nHost: web.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
            raw_exchange(port, req.as_bytes())
        })
        .await;
        let url = tern.http_url("web.test", path);
        let resolve = format!("web.test:{port}:127.0.0.1");
        let (_, h2_out, err) = blocking(move || {
            curl(&[
                "-si",
                "--http2-prior-knowledge",
                "--resolve",
                &resolve,
                &url,
            ])
        })
        .await;
        for (what, out, status) in [
            ("GET", get_out, "HTTP/1.1 502"),
            ("POST", post_out, "HTTP/1.1 502"),
            ("HTTP/2", h2_out, "HTTP/2 502"),
        ] {
            assert!(out.starts_with(status), "{path} {what}: {out:?} {err}");
            assert!(
                out.to_ascii_lowercase()
                    .contains("tern-error: upstream_reset"),
                "{path} {what}: {out}"
            );
        }
    }
}
