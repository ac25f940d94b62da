//! An I/O wrapper that counts bytes each way: the progress `pollwatch` looks for.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::{bump, Conn};

pin_project_lite::pin_project! {
    /// Counts the bytes read and written through `io` for its connection.
    pub struct WatchedIo<IO> {
        #[pin]
        io: IO,
        conn: Arc<Conn>,
    }
}

impl<IO> WatchedIo<IO> {
    pub(crate) fn new(io: IO, conn: Arc<Conn>) -> Self {
        WatchedIo { io, conn }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    pub fn into_inner(self) -> IO {
        self.io
    }
}

impl<IO: AsyncRead> AsyncRead for WatchedIo<IO> {
    #[inline(always)]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if let Poll::Ready(Ok(())) = polled {
            if n > 0 {
                bump(&this.conn.bytes_in, n as u64);
            } else if buf.remaining() > 0 {
                // End of stream: progress too, since the future has news to act on.
                bump(&this.conn.eofs, 1);
            }
        }
        polled
    }
}

impl<IO: AsyncWrite> AsyncWrite for WatchedIo<IO> {
    #[inline(always)]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            bump(&this.conn.bytes_out, n as u64);
        }
        polled
    }

    #[inline(always)]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            bump(&this.conn.bytes_out, n as u64);
        }
        polled
    }

    #[inline(always)]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline(always)]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    #[inline(always)]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
