//! A socket with bytes already read from it put back in front: what a connection
//! read while no HTTP state was attached (sniffing the protocol, or waking from
//! park) is handed to the HTTP server that takes over.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads `prefix` first, then `io`. Writes go straight to `io`.
#[derive(Debug)]
pub(crate) struct Prefixed<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Prefixed<IO> {
    pub(crate) fn new(io: IO) -> Self {
        Prefixed {
            prefix: Bytes::new(),
            io,
        }
    }

    /// Adds `bytes` behind what is still unread.
    pub(crate) fn append(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            // Dropped, not kept: an empty `Bytes` may still hold its buffer (hyper's
            // 16 KiB read buffer, handed back when a connection parks).
            return;
        }
        if self.prefix.is_empty() {
            self.prefix = bytes;
        } else {
            let mut joined = Vec::with_capacity(self.prefix.len() + bytes.len());
            joined.extend_from_slice(&self.prefix);
            joined.extend_from_slice(&bytes);
            self.prefix = Bytes::from(joined);
        }
    }

    pub(crate) fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    pub(crate) fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        if this.prefix.is_empty() {
            // Frees the allocation behind it, rather than keeping it for the
            // connection's life.
            this.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_the_prefix_then_the_socket() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut p = Prefixed::new(a);
        p.append(Bytes::from_static(b"hello "));
        p.append(Bytes::new());
        p.append(Bytes::from_static(b"worldly"));
        assert_eq!(p.prefix(), b"hello worldly");
        b.write_all(b"!").await.unwrap();
        drop(b);
        let mut small = [0u8; 4];
        assert_eq!(p.read(&mut small).await.unwrap(), 4);
        assert_eq!(&small, b"hell");
        let mut rest = Vec::new();
        p.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"o worldly!");
        assert!(p.prefix().is_empty());
    }

    #[test]
    fn an_empty_append_releases_its_buffer() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        /// A buffer that tells when it is freed.
        struct Owner(Vec<u8>, Arc<AtomicBool>);
        impl AsRef<[u8]> for Owner {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
        impl Drop for Owner {
            fn drop(&mut self) {
                self.1.store(true, Ordering::SeqCst);
            }
        }

        let freed = Arc::new(AtomicBool::new(false));
        // What hyper hands back when a connection parks: everything consumed, the
        // buffer still behind it.
        let mut consumed = Bytes::from_owner(Owner(vec![0; 16 * 1024], Arc::clone(&freed)));
        consumed.advance(16 * 1024);
        let (a, _b) = tokio::io::duplex(64);
        let mut p = Prefixed::new(a);
        p.append(consumed);
        assert!(p.prefix().is_empty());
        assert!(freed.load(Ordering::SeqCst), "the buffer is kept alive");
    }
}
