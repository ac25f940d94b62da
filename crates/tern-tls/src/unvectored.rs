//! The socket as rustls sees it: a vectored write of one record becomes a plain
//! `send()` instead of a `writev()`.
//!
//! tokio-rustls hands rustls' queued records to the socket as a vectored write,
//! whatever the socket says it prefers. For the small responses that dominate a
//! proxy's traffic that is one record, and a `writev()` of one slice costs the
//! kernel more than a `send()` (an iovec import and the file-position path):
//! HTTPS keep-alive took 3.2% less CPU per request without it (bench/NOTES.md).
//! Several records at once (a handshake flight, a large body) still go out in
//! one `writev()`, so nothing is split into more packets than before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `io`, with a vectored write of a single non-empty slice sent as a plain write.
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

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        match (filled.next(), filled.next()) {
            (Some(only), None) => Pin::new(&mut self.0).poll_write(cx, only),
            _ => Pin::new(&mut self.0).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Counts the plain and the vectored writes that reach it.
    #[derive(Default)]
    struct Recorder {
        plain: usize,
        vectored: usize,
        data: Vec<u8>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.plain += 1;
            self.data.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.vectored += 1;
            let mut n = 0;
            for b in bufs {
                self.data.extend_from_slice(b);
                n += b.len();
            }
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn one_record_is_a_plain_write_several_stay_vectored() {
        let mut w = Unvectored::new(Recorder::default());
        let one = [io::IoSlice::new(b""), io::IoSlice::new(b"record")];
        assert_eq!(w.write_vectored(&one).await.unwrap(), 6);
        assert_eq!((w.0.plain, w.0.vectored), (1, 0));

        let two = [
            io::IoSlice::new(b"one"),
            io::IoSlice::new(b""),
            io::IoSlice::new(b"two"),
        ];
        assert_eq!(w.write_vectored(&two).await.unwrap(), 6);
        assert_eq!((w.0.plain, w.0.vectored), (1, 1));
        assert_eq!(w.0.data, b"recordonetwo");
    }
}
