//! The socket as rustls sees it: without vectored writes, so that each TLS flush
//! is one `send()` per record rather than a `writev()`.
//!
//! rustls hands its queued records to the socket as a vectored write. For the
//! small responses that dominate a proxy's traffic that is one record, and a
//! `writev()` of one slice costs the kernel more than a `send()` (an iovec import
//! and the file-position path): HTTPS keep-alive took 3.2% less CPU per request
//! without it (bench/NOTES.md). A large body is several records, written one
//! `send()` each, as nginx's `SSL_write` per 16 KiB does.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `io`, with `is_write_vectored` false: tokio's default vectored write then
/// writes the first non-empty slice with a plain write.
#[derive(Debug)]
pub struct Unvectored<IO>(IO);

impl<IO> Unvectored<IO> {
    pub fn new(io: IO) -> Self {
        Unvectored(io)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Unvectored<IO> {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Unvectored<IO> {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_vectored_write_sends_the_first_slice_only() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Unvectored::new(a);
        assert!(!a.is_write_vectored());
        let bufs = [
            io::IoSlice::new(b""),
            io::IoSlice::new(b"one"),
            io::IoSlice::new(b"two"),
        ];
        let n = a.write_vectored(&bufs).await.unwrap();
        assert_eq!(n, 3);
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"one");
    }
}
