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

    /// Adds `bytes` behind what is still unread: bytes just read from the socket.
    pub(crate) fn append(&mut self, bytes: Bytes) {
        self.join(bytes, false);
    }

    /// Puts `bytes` in front of what is still unread: bytes a server read from
    /// this prefix (and the socket) and gave back unanswered, which came first.
    pub(crate) fn put_back(&mut self, bytes: Bytes) {
        self.join(bytes, true);
    }

    fn join(&mut self, bytes: Bytes, in_front: bool) {
        if bytes.is_empty() {
            // Dropped, not kept: an empty `Bytes` may still hold its buffer (hyper's
            // 16 KiB read buffer, handed back when a connection parks).
            return;
        }
        if self.prefix.is_empty() {
            self.prefix = bytes;
        } else {
            let (first, second) = if in_front {
                (&bytes, &self.prefix)
            } else {
                (&self.prefix, &bytes)
            };
            let mut joined = Vec::with_capacity(first.len() + second.len());
            joined.extend_from_slice(first);
            joined.extend_from_slice(second);
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

    /// A server that read part of the prefix gives its bytes back: they go in
    /// front of the part it did not read.
    #[tokio::test]
    async fn bytes_put_back_come_before_the_unread_rest() {
        let (a, _b) = tokio::io::duplex(64);
        let mut p = Prefixed::new(a);
        p.append(Bytes::from_static(b"GET / HTTP/1.1\r\nX: 1\r\n"));
        let mut taken = [0u8; 9];
        p.read_exact(&mut taken).await.unwrap();
        p.put_back(Bytes::copy_from_slice(&taken));
        assert_eq!(p.prefix(), b"GET / HTTP/1.1\r\nX: 1\r\n");
        p.put_back(Bytes::new());
        let mut empty = Prefixed::new(tokio::io::duplex(1).0);
        empty.put_back(Bytes::from_static(b"abc"));
        assert_eq!(empty.prefix(), b"abc");
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
