//! The in-task server over real loopback sockets: a client writes raw bytes (in
//! small pieces, to exercise partial heads) and reads what comes back.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use tern_h1::{serve, Error, Inbound, Limits, Served};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMITS: Limits = Limits {
    max_head_bytes: 8192,
    max_headers: 100,
};
const DATE: &str = "Sat, 28 Nov 2026 18:00:00 GMT";

/// Frames handed out one by one, of unknown total size unless `exact` is set.
struct Frames {
    frames: VecDeque<Frame<Bytes>>,
    exact: Option<u64>,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.frames.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.exact.map_or_else(
            http_body::SizeHint::default,
            http_body::SizeHint::with_exact,
        )
    }
}

fn data(parts: &[&'static str]) -> VecDeque<Frame<Bytes>> {
    parts
        .iter()
        .map(|p| Frame::data(Bytes::from_static(p.as_bytes())))
        .collect()
}

/// Answers by path: `/len` a body of known length, `/stream` chunks of unknown
/// length with a trailer, `/big` 100 KiB in two pieces, `/short` a body shorter
/// than its Content-Length, `/close` a response that asks to close. Sets
/// `closing` when the path is `/last`.
async fn answer(req: Request<()>, closing: &AtomicBool) -> Response<Frames> {
    let mut resp = Response::builder().header("date", DATE);
    let body = match req.uri().path() {
        "/len" | "/last" => {
            if req.uri().path() == "/last" {
                closing.store(true, Ordering::Release);
            }
            Frames {
                frames: data(&["hello"]),
                exact: Some(5),
            }
        }
        "/stream" => {
            let mut frames = data(&["ab", "", "cde"]);
            let mut trailers = HeaderMap::new();
            trailers.insert("x-sum", HeaderValue::from_static("5"));
            frames.push_back(Frame::trailers(trailers));
            Frames {
                frames,
                exact: None,
            }
        }
        "/big" => {
            let half = Bytes::from(vec![b'x'; 50 * 1024]);
            Frames {
                frames: [Frame::data(half.clone()), Frame::data(half)].into(),
                exact: None,
            }
        }
        "/short" => {
            resp = resp.header("content-length", "10");
            Frames {
                frames: data(&["abc"]),
                exact: None,
            }
        }
        "/close" => {
            resp = resp.header("connection", "close");
            Frames {
                frames: data(&["bye"]),
                exact: Some(3),
            }
        }
        _ => {
            resp = resp.status(404);
            Frames {
                frames: VecDeque::new(),
                exact: Some(0),
            }
        }
    };
    resp.body(body).unwrap()
}

/// Serves one connection; returns how it ended and the bytes left unanswered.
async fn server(listener: TcpListener, closing_at_start: bool) -> (Result<Served, Error>, Bytes) {
    let (sock, _) = listener.accept().await.unwrap();
    let mut inbound = Inbound::new(sock);
    let closing = AtomicBool::new(closing_at_start);
    let served = serve(&mut inbound, LIMITS, &closing, |req| answer(req, &closing)).await;
    let (mut sock, unread) = inbound.into_parts();
    // As the caller does: end the connection once the server lets go.
    let _ = sock.shutdown().await;
    (served, unread)
}

/// Sends `raw` in 3-byte pieces and ends its side (the server then finds the
/// client gone when it next waits for a request), then reads until the server
/// closes; returns what was read and how the server ended.
async fn exchange(raw: &[u8], closing_at_start: bool) -> (String, Result<Served, Error>, Bytes) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(server(listener, closing_at_start));
    let mut client = TcpStream::connect(addr).await.unwrap();
    // Writes may fail once a server that stopped early has closed.
    for piece in raw.chunks(3) {
        let _ = client.write_all(piece).await;
        tokio::task::yield_now().await;
    }
    let _ = client.shutdown().await;
    let mut got = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.read_to_end(&mut got),
    )
    .await
    .expect("the server ends the connection")
    .unwrap_or_default();
    let (served, unread) = server.await.unwrap();
    (String::from_utf8(got).unwrap(), served, unread)
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ndate: {DATE}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let raw = b"GET /len HTTP/1.1\r\nhost: a\r\n\r\n\
        GET /stream HTTP/1.1\r\nhost: a\r\nte: trailers\r\n\r\n\
        HEAD /len HTTP/1.1\r\nhost: a\r\n\r\n\
        GET /nothing HTTP/1.1\r\nhost: a\r\n\r\n\
        GET /len HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    let (got, served, unread) = exchange(raw, false).await;
    let expected = [
        ok("hello"),
        format!(
            "HTTP/1.1 200 OK\r\ndate: {DATE}\r\ntransfer-encoding: chunked\r\n\r\n\
             2\r\nab\r\n3\r\ncde\r\n0\r\nx-sum: 5\r\n\r\n"
        ),
        format!("HTTP/1.1 200 OK\r\ndate: {DATE}\r\ncontent-length: 5\r\n\r\n"),
        format!("HTTP/1.1 404 Not Found\r\ndate: {DATE}\r\ncontent-length: 0\r\n\r\n"),
        format!(
            "HTTP/1.1 200 OK\r\ndate: {DATE}\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
        ),
    ]
    .concat();
    assert_eq!(got, expected);
    assert_eq!(served.unwrap(), Served::Closed);
    assert!(unread.is_empty());
}

#[tokio::test]
async fn trailers_go_only_to_a_client_that_accepts_them() {
    let raw = b"GET /stream HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    let (got, _, _) = exchange(raw, false).await;
    assert!(got.ends_with("2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"), "{got}");
}

#[tokio::test]
async fn a_request_with_a_body_is_handed_over_with_every_byte() {
    let post = "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhel";
    let raw = format!("GET /len HTTP/1.1\r\nhost: a\r\n\r\n{post}");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(server(listener, false));
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(raw.as_bytes()).await.unwrap();
    let (served, unread) = server.await.unwrap();
    assert_eq!(served.unwrap(), Served::HandOver);
    assert_eq!(&unread[..], post.as_bytes());
    let mut got = String::new();
    client.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, ok("hello"));
}

#[tokio::test]
async fn upgrades_and_bad_heads_are_handed_over() {
    for raw in [
        "GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        // Cut short by the client's end.
        "GET /len HTTP/1.1\r\nhost: a\r\n",
    ] {
        let (got, served, unread) = exchange(raw.as_bytes(), false).await;
        assert_eq!(got, "", "{raw:?}");
        assert_eq!(served.unwrap(), Served::HandOver, "{raw:?}");
        assert_eq!(&unread[..], raw.as_bytes());
    }
    // Handed over as soon as the bad line is seen, with all that was read.
    let raw = "GET / HTTP/1.1\r\nbad header\r\n\r\n";
    let (got, served, unread) = exchange(raw.as_bytes(), false).await;
    assert_eq!(got, "");
    assert_eq!(served.unwrap(), Served::HandOver);
    assert!(raw.as_bytes().starts_with(&unread), "{unread:?}");
    assert!(
        unread.len() >= "GET / HTTP/1.1\r\nbad h".len(),
        "{unread:?}"
    );
}

#[tokio::test]
async fn http_1_0_keeps_alive_only_when_asked_and_frames_by_close() {
    let raw = b"GET /len HTTP/1.0\r\nconnection: keep-alive\r\n\r\nGET /stream HTTP/1.0\r\n\r\n";
    let (got, served, _) = exchange(raw, false).await;
    let expected = format!(
        "HTTP/1.0 200 OK\r\ndate: {DATE}\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\nhello\
         HTTP/1.0 200 OK\r\ndate: {DATE}\r\nconnection: close\r\n\r\nabcde"
    );
    assert_eq!(got, expected);
    assert_eq!(served.unwrap(), Served::Closed);
}

#[tokio::test]
async fn a_large_body_arrives_whole() {
    let (got, served, _) = exchange(
        b"GET /big HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(served.unwrap(), Served::Closed);
    let (head, body) = got.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let chunk = format!("c800\r\n{}\r\n", "x".repeat(50 * 1024));
    assert_eq!(body, format!("{chunk}{chunk}0\r\n\r\n"));
}

#[tokio::test]
async fn closing_ends_an_idle_connection_and_the_response_in_flight() {
    // Set before anything was read: nothing is answered.
    let (got, served, _) = exchange(b"GET /len HTTP/1.1\r\nhost: a\r\n\r\n", true).await;
    assert_eq!(served.unwrap(), Served::Closed);
    assert_eq!(got, "");
    // Set while a request is in flight: its response says so, and the one
    // pipelined behind it is not answered.
    let raw = b"GET /last HTTP/1.1\r\nhost: a\r\n\r\nGET /len HTTP/1.1\r\nhost: a\r\n\r\n";
    let (got, served, _) = exchange(raw, false).await;
    assert_eq!(served.unwrap(), Served::Closed);
    assert_eq!(
        got,
        format!("HTTP/1.1 200 OK\r\ndate: {DATE}\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
    );
}

#[tokio::test]
async fn a_response_that_asks_to_close_ends_the_connection() {
    let raw = b"GET /close HTTP/1.1\r\nhost: a\r\n\r\nGET /len HTTP/1.1\r\nhost: a\r\n\r\n";
    let (got, served, _) = exchange(raw, false).await;
    assert_eq!(served.unwrap(), Served::Closed);
    assert_eq!(
        got,
        format!(
            "HTTP/1.1 200 OK\r\ndate: {DATE}\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye"
        )
    );
}

#[tokio::test]
async fn a_body_shorter_than_its_length_is_an_error() {
    let (got, served, _) = exchange(b"GET /short HTTP/1.1\r\nhost: a\r\n\r\n", false).await;
    assert!(matches!(served, Err(Error::BodyLength)), "{served:?}");
    // What there was went out, and the connection ended short of the length.
    assert_eq!(
        got,
        format!("HTTP/1.1 200 OK\r\ndate: {DATE}\r\ncontent-length: 10\r\n\r\nabc")
    );
}
