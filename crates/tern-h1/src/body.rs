//! A response body read straight off the machine's socket by whoever polls it, and
//! the hand-back of the connection once the body has been read to its end.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncRead;
use tokio_util::io::poll_read_buf;

use crate::chunked::{Decoded, Decoder};
use crate::exchange::Connection;
use crate::head::{Framing, ResponseHead};
use crate::Error;

/// Where a connection goes when its response has been read to the end and it
/// may carry another request: a pool, usually.
pub trait Recycle<IO> {
    fn recycle(self, conn: Connection<IO>);
}

#[derive(Debug)]
enum State {
    Length(u64),
    Chunked(Decoder),
    UntilClose,
    Done,
}

/// The body of a response from [`send`](crate::send). Dropped before its end, it
/// closes the connection: what is left of the response would have to be read first.
#[derive(Debug)]
pub struct ResponseBody<IO, R> {
    conn: Option<Connection<IO>>,
    state: State,
    keep_alive: bool,
    recycle: Option<R>,
}

impl<IO, R> ResponseBody<IO, R>
where
    IO: AsyncRead + Unpin,
    R: Recycle<IO>,
{
    pub(crate) fn start(conn: Connection<IO>, head: ResponseHead, recycle: R) -> Response<Self> {
        let state = match head.framing {
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Decoder::default()),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = ResponseBody {
            conn: Some(conn),
            state,
            keep_alive: head.keep_alive,
            recycle: Some(recycle),
        };
        if matches!(body.state, State::Length(0)) {
            // HEAD, 204, 304 and empty bodies are done before anyone polls them,
            // and may never be polled.
            body.finish();
        }
        head.response.map(|()| body)
    }

    /// The body's end: the connection goes back if it can carry another request.
    /// Bytes after the body's end mean the machine broke the framing, so such a
    /// connection is closed rather than trusted.
    fn finish(&mut self) {
        self.state = State::Done;
        if let (Some(conn), true) = (self.conn.take(), self.keep_alive) {
            if conn.buf.is_empty() {
                if let Some(r) = self.recycle.take() {
                    r.recycle(conn);
                }
            }
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl<IO, R> Body for ResponseBody<IO, R>
where
    IO: AsyncRead + Unpin,
    R: Recycle<IO> + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) if !conn.buf.is_empty() => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(conn.buf.len());
                    let data = conn.buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        // Done now: whoever reads a body of known length may stop
                        // at its last byte without polling for the end.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(decoder) => match decoder.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return this.fail(e),
                },
                State::UntilClose if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Length(_) | State::UntilClose => {}
            }
            if conn.buf.capacity() - conn.buf.len() < 4 * 1024 {
                conn.buf.reserve(16 * 1024);
            }
            match ready!(poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)) {
                Ok(0) if matches!(this.state, State::UntilClose) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Error::ClosedInBody),
                Ok(_) => {}
                Err(e) => return this.fail(Error::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A body of known length is `Done` at its last byte (see `finish`).
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            State::Chunked(_) | State::UntilClose => SizeHint::default(),
        }
    }
}
