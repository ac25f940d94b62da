//! One request and its response head on a connection.

use std::io;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::body::{Recycle, ResponseBody};
use crate::{head, Error};

/// Room kept free in the read buffer before a read: a small response's head and
/// body usually arrive in one segment.
const READ_ROOM: usize = 8 * 1024;

/// A connection to a machine between requests: the socket and its read buffer,
/// kept together so that a pooled connection keeps its allocation.
#[derive(Debug)]
pub struct Connection<IO> {
    pub io: IO,
    pub(crate) buf: BytesMut,
}

impl<IO> Connection<IO> {
    pub fn new(io: IO) -> Self {
        Connection {
            io,
            buf: BytesMut::new(),
        }
    }

    /// The same buffer around another socket type (to wrap or unwrap the socket).
    pub fn map<T>(self, f: impl FnOnce(IO) -> T) -> Connection<T> {
        Connection {
            io: f(self.io),
            buf: self.buf,
        }
    }
}

/// Sends a request without a body and reads the response head. `extra` fields
/// follow those of `headers` in the head (fields the caller adds to every
/// request, which need no map of their own). The body is read
/// by the returned response's [`ResponseBody`], which hands the connection to
/// `recycle` once the body has been read to its end on a connection that stays
/// open.
pub async fn send<IO, R>(
    mut conn: Connection<IO>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    extra: &[(&HeaderName, &HeaderValue)],
    recycle: R,
) -> Result<Response<ResponseBody<IO, R>>, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    R: Recycle<IO>,
{
    // A connection is only recycled with an empty buffer; the head is written from
    // it so that a request costs no allocation of its own.
    conn.buf.clear();
    head::encode_request(method, target, headers, extra, &mut conn.buf)?;
    if let Err(e) = conn.io.write_all(&conn.buf).await {
        return Err(if is_closed(&e) {
            Error::ClosedBeforeResponse
        } else {
            Error::Io(e)
        });
    }
    conn.buf.clear();

    let head_request = method == Method::HEAD;
    let mut received = false;
    loop {
        if !conn.buf.is_empty() {
            if let Some(head) = head::parse_response(&mut conn.buf, head_request)? {
                let status = head.response.status();
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(Error::UnaskedSwitch);
                }
                if status.is_informational() {
                    // 100 or 103: the final answer follows on the same connection.
                    continue;
                }
                return Ok(ResponseBody::start(conn, head, recycle));
            }
        }
        if conn.buf.capacity() - conn.buf.len() < READ_ROOM / 2 {
            conn.buf.reserve(READ_ROOM);
        }
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(0) if received => return Err(Error::ClosedInHead),
            Ok(0) => return Err(Error::ClosedBeforeResponse),
            Ok(_) => received = true,
            Err(e) if !received && is_closed(&e) => return Err(Error::ClosedBeforeResponse),
            Err(e) => return Err(Error::Io(e)),
        }
    }
}

/// The errors of a socket the peer has closed or reset.
fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}
