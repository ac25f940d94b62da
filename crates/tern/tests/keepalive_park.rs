//! Idle keep-alive connections give up their HTTP state and take it up again: a
//! real `tern run`, plain and TLS clients that pause between requests longer than
//! Tern's park delay, pipelined requests after a pause, and the idle timer on a parked
//! connection.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than Tern's park delay (`PARK_AFTER` in tern-http, 250 ms) with room for a loaded machine.
const PAUSE: Duration = Duration::from_millis(700);

async fn connect_plain(s: &WebSetup) -> TcpStream {
    TcpStream::connect(("127.0.0.1", s.tern.ports.http))
        .await
        .unwrap()
}

/// A TLS connection to the HTTPS port that offers only HTTP/1.1 (HTTP/2 is never
/// parked).
async fn connect_tls(s: &WebSetup) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", s.tern.ports.https))
        .await
        .unwrap();
    tls_connector(&s.certs.ca_pem, &[b"http/1.1"])
        .connect(ServerName::try_from("web.test").unwrap(), tcp)
        .await
        .unwrap()
}

fn parked_total(tern: &Tern) -> u64 {
    tern.admin_get("/metrics")
        .lines()
        .find_map(|l| {
            l.strip_prefix("tern_client_parked_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Three requests on one connection, with a pause before each of the last two.
async fn three_with_pauses<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(PAUSE).await;
        }
        let req = format!("GET /n{i} HTTP/1.1\r\nHost: web.test\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = read_response(s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        assert!(body.contains(&format!("uri=/n{i}")), "request {i}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_plain_connection_parks_and_serves_again() {
    let setup = web_setup("", "").await;
    let before = parked_total(&setup.tern);
    let mut s = connect_plain(&setup).await;
    three_with_pauses(&mut s).await;
    let parked = parked_total(&setup.tern) - before;
    assert!(parked >= 2, "parked {parked} times, expected one per pause");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_tls_connection_parks_and_serves_again() {
    let setup = web_setup("", "").await;
    let before = parked_total(&setup.tern);
    let mut s = connect_tls(&setup).await;
    three_with_pauses(&mut s).await;
    let parked = parked_total(&setup.tern) - before;
    assert!(parked >= 2, "parked {parked} times, expected one per pause");
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_after_a_pause_are_all_answered() {
    let setup = web_setup("", "").await;
    let mut s = connect_plain(&setup).await;
    s.write_all(b"GET /first HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(PAUSE).await;
    // Three heads in one write: the bytes read while parked must reach the parser
    // together with the rest.
    s.write_all(
        b"GET /a HTTP/1.1\r\nHost: web.test\r\n\r\n\
          GET /b HTTP/1.1\r\nHost: web.test\r\n\r\n\
          GET /c HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for path in ["/a", "/b", "/c"] {
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert!(body.contains(&format!("uri={path}")), "{path}: {body}");
    }
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed after Connection: close")
        .unwrap();
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&rest));
    assert!(parked_total(&setup.tern) >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_connection_still_meets_the_idle_timeout() {
    let setup = web_setup("", "idle_timeout = \"1500ms\"").await;
    let mut s = connect_tls(&setup).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let idle_from = Instant::now();
    let mut rest = Vec::new();
    // A clean TLS close (close_notify), as hyper gives an unparked one.
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("closed by the idle timer")
        .expect("a clean close, with close_notify");
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&rest));
    let after = idle_from.elapsed();
    assert!(
        after >= Duration::from_millis(1200),
        "closed before the idle timeout: {after:?}"
    );
    assert!(
        parked_total(&setup.tern) >= 1,
        "the connection was parked first"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_whose_post_body_was_read_parks_too() {
    let setup = web_setup("", "").await;
    let before = parked_total(&setup.tern);
    let mut s = connect_plain(&setup).await;
    for i in 0..2 {
        if i > 0 {
            tokio::time::sleep(PAUSE).await;
        }
        let req =
            format!("POST /p{i} HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\n\r\nhello");
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        assert!(body.contains(&format!("uri=/p{i}")), "request {i}: {body}");
    }
    let parked = parked_total(&setup.tern) - before;
    assert!(parked >= 1, "the body was read, so the pause should park");
}

/// Requests without a body are answered by Tern's in-task server, the others by
/// hyper's: a pipelined mix must come back whole and in order, both when the
/// in-task server hands the connection over mid-buffer and when a parked
/// connection comes back to it.
#[tokio::test(flavor = "multi_thread")]
async fn requests_with_and_without_bodies_share_a_connection() {
    let setup = web_setup("", "").await;
    let mut s = connect_plain(&setup).await;
    let mix = b"GET /a HTTP/1.1\r\nHost: web.test\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\n\r\nhello\
          GET /c HTTP/1.1\r\nHost: web.test\r\n\r\n";
    for round in 0..2 {
        if round > 0 {
            tokio::time::sleep(PAUSE).await;
        }
        s.write_all(mix).await.unwrap();
        for (path, bytes) in [("/a", 0), ("/b", 5), ("/c", 0)] {
            let (head, body) = read_response(&mut s).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{round} {path}: {head}");
            assert!(
                body.contains(&format!("uri={path}")),
                "{round} {path}: {body}"
            );
            assert!(
                body.contains(&format!("body-bytes={bytes}")),
                "{round} {path}: {body}"
            );
        }
    }
    assert!(
        parked_total(&setup.tern) >= 1,
        "the pause parks the connection"
    );
}

/// The start of a head that came behind a request in the same write (so it was
/// read while that request was in flight) is still under the header timer: the
/// connection is dropped at `header_read_timeout`, not kept until the idle
/// timeout while parking over and over. Both servers: a GET is answered in the
/// task, a POST by hyper.
#[tokio::test(flavor = "multi_thread")]
async fn a_head_begun_behind_a_request_meets_the_header_timeout() {
    let setup = web_setup("", "header_read_timeout = \"1s\"\nidle_timeout = \"30s\"").await;
    for first in [
        "GET /a HTTP/1.1\r\nHost: web.test\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: web.test\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let parked_before = parked_total(&setup.tern);
        let mut s = connect_plain(&setup).await;
        s.write_all(format!("{first}GET /b HTTP/1.1\r\nHo").as_bytes())
            .await
            .unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{first}: {head}");
        let from = Instant::now();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .expect("dropped by the header timer, long before the idle timeout");
        let after = from.elapsed();
        assert!(
            after < Duration::from_secs(4),
            "{first}: the unfinished head held the connection for {after:?}"
        );
        let parks = parked_total(&setup.tern) - parked_before;
        assert!(parks <= 2, "{first}: parked {parks} times while waiting");
    }
}
