//! Exchanges over real loopback sockets with a server that answers scripted bytes.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::BodyExt;
use tern_h1::{send, Connection, Error, Recycle, ResponseBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Collects recycled connections, as a pool would.
#[derive(Clone, Default, Debug)]
struct Pool(Arc<Mutex<Vec<Connection<TcpStream>>>>);

impl Recycle<TcpStream> for Pool {
    fn recycle(self, conn: Connection<TcpStream>) {
        self.0.lock().unwrap().push(conn);
    }
}

impl Pool {
    fn take(&self) -> Option<Connection<TcpStream>> {
        self.0.lock().unwrap().pop()
    }
}

/// A server that, for each request head it reads, writes the next answer; after
/// the answers it closes the connection. Returns its address and what it read.
async fn scripted(answers: Vec<&'static [u8]>) -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        for answer in answers {
            // Read one head.
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            log.lock().unwrap().extend(buf.drain(..end));
            // Write the answer in small pieces, to exercise partial reads.
            for piece in answer.chunks(7) {
                s.write_all(piece).await.unwrap();
                s.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        }
    });
    (addr, seen)
}

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("web.test"));
    h
}

async fn body_of(body: ResponseBody<TcpStream, Pool>) -> Result<Bytes, Error> {
    Ok(body.collect().await?.to_bytes())
}

#[tokio::test]
async fn keep_alive_responses_return_the_connection_for_the_next_request() {
    let (addr, seen) = scripted(vec![
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n",
    ])
    .await;
    let pool = Pool::default();
    let conn = Connection::new(TcpStream::connect(addr).await.unwrap());

    let resp = send(conn, &Method::GET, "/one", &headers(), &[], pool.clone())
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-length"], "5");
    assert_eq!(body_of(resp.into_body()).await.unwrap(), "hello");

    let conn = pool.take().expect("recycled after a length-delimited body");
    let resp = send(conn, &Method::GET, "/two", &headers(), &[], pool.clone())
        .await
        .unwrap();
    assert_eq!(body_of(resp.into_body()).await.unwrap(), "abcde");

    let conn = pool.take().expect("recycled after a chunked body");
    let resp = send(conn, &Method::GET, "/three", &headers(), &[], pool.clone())
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "the 103 is passed over");
    assert!(http_body::Body::is_end_stream(resp.body()));
    drop(resp);

    let conn = pool.take().expect("recycled after a 204, unpolled");
    let resp = send(conn, &Method::HEAD, "/four", &headers(), &[], pool.clone())
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-length"], "3");
    assert_eq!(body_of(resp.into_body()).await.unwrap(), "");
    assert!(pool.take().is_some(), "recycled after a HEAD");

    let seen = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
    assert!(
        seen.starts_with("GET /one HTTP/1.1\r\nhost: web.test\r\n\r\n"),
        "{seen}"
    );
    assert!(seen.contains("HEAD /four HTTP/1.1\r\n"), "{seen}");
}

#[tokio::test]
async fn a_body_until_close_is_read_to_the_end_and_the_connection_not_kept() {
    let (addr, _) = scripted(vec![b"HTTP/1.1 200 OK\r\n\r\nall of it"]).await;
    let pool = Pool::default();
    let conn = Connection::new(TcpStream::connect(addr).await.unwrap());
    let resp = send(conn, &Method::GET, "/", &headers(), &[], pool.clone())
        .await
        .unwrap();
    assert_eq!(body_of(resp.into_body()).await.unwrap(), "all of it");
    assert!(pool.take().is_none());
}

#[tokio::test]
async fn broken_answers_are_errors_and_their_connections_are_not_kept() {
    type Case = (&'static [u8], fn(&Error) -> bool);
    let cases: [Case; 5] = [
        (b"", |e| matches!(e, Error::ClosedBeforeResponse)),
        (b"HTTP/1.1 200 OK\r\ncontent-le", |e| {
            matches!(e, Error::ClosedInHead)
        }),
        (b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", |e| {
            matches!(e, Error::BadContentLength) && e.is_malformed()
        }),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", |e| {
            matches!(e, Error::UnaskedSwitch)
        }),
        (b"NOT HTTP AT ALL\r\n\r\n", |e| e.is_malformed()),
    ];
    for (answer, expected) in cases {
        let (addr, _) = scripted(vec![answer]).await;
        let conn = Connection::new(TcpStream::connect(addr).await.unwrap());
        let e = send(conn, &Method::GET, "/", &headers(), &[], Pool::default())
            .await
            .expect_err("a broken answer");
        assert!(expected(&e), "{answer:?}: {e:?}");
    }
}

#[tokio::test]
async fn a_body_cut_short_is_an_error() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let (addr, _) = scripted(vec![answer]).await;
        let pool = Pool::default();
        let conn = Connection::new(TcpStream::connect(addr).await.unwrap());
        let resp = send(conn, &Method::GET, "/", &headers(), &[], pool.clone())
            .await
            .unwrap();
        assert!(body_of(resp.into_body()).await.is_err(), "{answer:?}");
        assert!(pool.take().is_none());
    }
}

#[tokio::test]
async fn a_connection_is_not_kept_after_bytes_beyond_the_body_or_a_dropped_body() {
    let (addr, _) = scripted(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiEXTRA"]).await;
    let pool = Pool::default();
    let conn = Connection::new(TcpStream::connect(addr).await.unwrap());
    let resp = send(conn, &Method::GET, "/", &headers(), &[], pool.clone())
        .await
        .unwrap();
    // The server writes 7-byte pieces, so "hi" arrives with "EX" behind it.
    let body = body_of(resp.into_body()).await.unwrap();
    assert_eq!(body, "hi");
    assert!(pool.take().is_none());

    let (addr, _) = scripted(vec![
        b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nabc",
    ])
    .await;
    let conn = Connection::new(TcpStream::connect(addr).await.unwrap());
    let resp = send(conn, &Method::GET, "/", &headers(), &[], pool.clone())
        .await
        .unwrap();
    drop(resp);
    assert!(pool.take().is_none());
}
