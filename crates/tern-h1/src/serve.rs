//! The server side: a connection's requests without a body, answered in the task
//! that holds it, until one comes that needs a general server (a body, an
//! upgrade, a malformed or oversized head). That one is handed over unread.

use std::future::{poll_fn, Future};
use std::ops::ControlFlow;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;

use crate::head::put_field;
use crate::server_head::{self, OutFraming, Parsed, RequestHead};
use crate::Error;

/// Room kept free in the read buffer before a read: most request heads are well
/// under it, and pipelined ones arrive together.
const READ_ROOM: usize = 4 * 1024;
/// Body data up to this size is copied behind the head (or the data before it),
/// so that a small response goes out in one write; larger data is written from
/// where it lies.
const COPY_MAX: usize = 16 * 1024;

/// The size limits of a request head this server parses itself.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

/// A client connection and its buffers while this server holds it.
#[derive(Debug)]
pub struct Inbound<IO> {
    io: IO,
    read: BytesMut,
    write: BytesMut,
}

/// How [`serve`] let go of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    /// The client left, asked to close, or `closing` was set between requests.
    /// The caller ends the connection (close_notify, FIN).
    Closed,
    /// A request the general server must answer is at the front of what
    /// [`Inbound::into_parts`] returns.
    HandOver,
}

impl<IO> Inbound<IO> {
    /// Buffers are allocated at the first read, not here.
    pub fn new(io: IO) -> Self {
        Inbound {
            io,
            read: BytesMut::new(),
            write: BytesMut::new(),
        }
    }

    /// The socket and the bytes read from it but not yet answered.
    pub fn into_parts(self) -> (IO, Bytes) {
        (self.io, self.read.freeze())
    }

    pub fn io_mut(&mut self) -> &mut IO {
        &mut self.io
    }
}

/// Answers requests on `conn` with `service` until the connection closes or a
/// request needs the general server. `closing` (set by whoever runs the timers)
/// asks for the connection to end: at once if it waits for a request, after the
/// response (with `Connection: close`) if one is in flight.
pub async fn serve<IO, S, F, B>(
    conn: &mut Inbound<IO>,
    limits: Limits,
    closing: &AtomicBool,
    mut service: S,
) -> Result<Served, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: FnMut(Request<()>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let head = match next_request(conn, limits, closing).await? {
            ControlFlow::Continue(head) => head,
            ControlFlow::Break(served) => return Ok(served),
        };
        let version = head.request.version();
        let head_request = head.request.method() == Method::HEAD;
        let response = service(head.request).await;
        let keep_alive = head.keep_alive && !closing.load(Ordering::Acquire);
        let out = Out {
            version,
            head_request,
            trailers: head.trailers,
            keep_alive,
        };
        if !write_response(conn, response, out).await? {
            return Ok(Served::Closed);
        }
    }
}

/// Reads until the buffer holds a complete request head to answer, or the
/// connection is to be let go (closed, or handed over).
async fn next_request<IO: AsyncRead + Unpin>(
    conn: &mut Inbound<IO>,
    limits: Limits,
    closing: &AtomicBool,
) -> Result<ControlFlow<Served, RequestHead>, Error> {
    loop {
        if !conn.read.is_empty() {
            match server_head::parse_request(
                &mut conn.read,
                limits.max_head_bytes,
                limits.max_headers,
            ) {
                Parsed::Request(head) => return Ok(ControlFlow::Continue(head)),
                Parsed::Other => return Ok(ControlFlow::Break(Served::HandOver)),
                Parsed::Partial => {}
            }
        }
        if conn.read.capacity() - conn.read.len() < READ_ROOM / 4 {
            conn.read.reserve(READ_ROOM);
        }
        let Inbound { io, read, .. } = conn;
        let polled = poll_fn(|cx| {
            // Between requests, a close is taken at once; a head that has begun
            // is read to its end and answered.
            if read.is_empty() && closing.load(Ordering::Acquire) {
                return Poll::Ready(None);
            }
            poll_read_buf(std::pin::Pin::new(&mut *io), cx, read).map(Some)
        })
        .await;
        match polled {
            None => return Ok(ControlFlow::Break(Served::Closed)),
            Some(Ok(0)) if conn.read.is_empty() => return Ok(ControlFlow::Break(Served::Closed)),
            // A head cut short: the general server answers it as it would.
            Some(Ok(0)) => return Ok(ControlFlow::Break(Served::HandOver)),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Error::Io(e)),
        }
    }
}

/// What the request decided about its response.
#[derive(Clone, Copy)]
struct Out {
    version: http::Version,
    head_request: bool,
    trailers: bool,
    keep_alive: bool,
}

/// Writes a response, head and body, and flushes it. Returns whether the
/// connection may carry another request.
async fn write_response<IO, B>(
    conn: &mut Inbound<IO>,
    response: Response<B>,
    out: Out,
) -> Result<bool, Error>
where
    IO: AsyncWrite + Unpin,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = response.into_parts();
    let mut body = pin!(body);
    conn.write.clear();
    let frame = server_head::encode_response(
        &parts,
        out.version,
        out.head_request,
        body.size_hint().exact(),
        out.keep_alive,
        &mut conn.write,
    );
    crate::header_maps::recycle(parts.headers);

    let mut written: u64 = 0;
    let mut trailers: Option<HeaderMap> = None;
    if frame.framing != OutFraming::None {
        while !body.is_end_stream() {
            // Polled once first: a body that is ready (a small response read
            // with its head) goes out with the head in one write; one that is
            // not gets the head sent before the wait.
            let polled = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    send_buffered(conn).await?;
                    conn.io.flush().await.map_err(Error::Io)?;
                    poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                }
            };
            let Some(polled) = polled else { break };
            let data = match polled.map_err(|e| Error::Body(e.into()))?.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            written += data.len() as u64;
            match frame.framing {
                OutFraming::Length(n) if written > n => return cut_short(conn).await,
                OutFraming::Chunked => server_head::put_chunk_size(&mut conn.write, data.len()),
                _ => {}
            }
            if data.len() <= COPY_MAX {
                conn.write.put_slice(&data);
            } else {
                let mut both = (&conn.write[..]).chain(&data[..]);
                conn.io.write_all_buf(&mut both).await.map_err(Error::Io)?;
                conn.write.clear();
            }
            if frame.framing == OutFraming::Chunked {
                conn.write.put_slice(b"\r\n");
            }
            if conn.write.len() >= COPY_MAX {
                send_buffered(conn).await?;
            }
        }
        match frame.framing {
            OutFraming::Length(n) if written != n => return cut_short(conn).await,
            OutFraming::Chunked => {
                conn.write.put_slice(b"0\r\n");
                if let (Some(trailers), true) = (trailers, out.trailers) {
                    for (name, value) in &trailers {
                        put_field(&mut conn.write, name, value);
                    }
                }
                conn.write.put_slice(b"\r\n");
            }
            _ => {}
        }
    }
    send_buffered(conn).await?;
    conn.io.flush().await.map_err(Error::Io)?;
    Ok(frame.keep_alive)
}

/// A body that breaks its own length: what is buffered goes out (the client sees
/// a response cut short, as it would if the body had failed), and the connection
/// ends, since its framing can no longer be trusted.
async fn cut_short<IO: AsyncWrite + Unpin>(conn: &mut Inbound<IO>) -> Result<bool, Error> {
    let _ = send_buffered(conn).await;
    let _ = conn.io.flush().await;
    Err(Error::BodyLength)
}

async fn send_buffered<IO: AsyncWrite + Unpin>(conn: &mut Inbound<IO>) -> Result<(), Error> {
    if !conn.write.is_empty() {
        conn.io.write_all(&conn.write).await.map_err(Error::Io)?;
        conn.write.clear();
    }
    Ok(())
}
