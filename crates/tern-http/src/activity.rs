//! What a client connection is doing, as seen from its socket: bytes each way, when
//! it last moved, whether a request is in flight and whether a request head has
//! begun. The server's idle and header timers read it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stream_send::StreamClocks;

/// Shared between a connection's socket wrapper, its requests and its timers.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Milliseconds after `opened` of the last byte read or written.
    last_io_ms: AtomicU64,
    /// Milliseconds after `opened` (plus one, so zero means none) of the first byte
    /// of a request head not yet dispatched.
    head_started_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// HTTP/2 multiplexes: no request head ever "hangs" the connection, so the
    /// header timer does not apply; the idle timer does.
    multiplexed: AtomicBool,
    /// The last read found nothing to read: the reader waits on the socket.
    read_waiting: AtomicBool,
    /// Milliseconds after `opened` (plus one, so zero means none) since which
    /// writes and flushes could not finish: bytes wait for the client to read.
    write_blocked_ms: AtomicU64,
    /// The last request came with a body not yet read to its end.
    body_unread: AtomicBool,
    /// HTTP/2: each stream's response, and how long it has waited for the client.
    pub(crate) streams: StreamClocks,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            opened: Instant::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            last_io_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            multiplexed: AtomicBool::new(false),
            read_waiting: AtomicBool::new(false),
            write_blocked_ms: AtomicU64::new(0),
            body_unread: AtomicBool::new(false),
            streams: StreamClocks::default(),
        }
    }
}

impl Activity {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    pub fn age(&self) -> Duration {
        self.opened.elapsed()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A request was dispatched: its head is complete.
    pub fn request_started(&self, with_body: bool) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started_ms.store(0, Ordering::Release);
        self.body_unread.store(with_body, Ordering::Release);
    }

    /// The last request's body was read to its end.
    pub(crate) fn request_body_read(&self) {
        self.body_unread.store(false, Ordering::Release);
    }

    /// A response was written to its end (or abandoned).
    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.last_io_ms.store(self.now_ms(), Ordering::Release);
    }

    /// Time since the connection last moved a byte, if nothing is in flight.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight() > 0 {
            return None;
        }
        let last = self.last_io_ms.load(Ordering::Acquire);
        Some(Duration::from_millis(self.now_ms().saturating_sub(last)))
    }

    /// Whether the connection is HTTP/2.
    pub fn is_multiplexed(&self) -> bool {
        self.multiplexed.load(Ordering::Acquire)
    }

    /// Marks the connection as HTTP/2 (the server does, from ALPN or its preface).
    pub fn set_multiplexed(&self) {
        self.multiplexed.store(true, Ordering::Release);
    }

    /// Time since a request head began arriving without being completed.
    pub fn head_pending_for(&self) -> Option<Duration> {
        if self.multiplexed.load(Ordering::Acquire) {
            return None;
        }
        let started = self.head_started_ms.load(Ordering::Acquire);
        if started == 0 || self.in_flight() > 0 {
            return None;
        }
        Some(Duration::from_millis(
            self.now_ms().saturating_sub(started - 1),
        ))
    }

    /// Whether an HTTP/1.1 connection may drop its HTTP state until the client
    /// sends again: nothing in flight or half-read, nothing waiting to be
    /// written, the server waiting for a new request, for at least `after`.
    pub(crate) fn parkable(&self, after: Duration) -> bool {
        self.read_waiting.load(Ordering::Acquire)
            && self.write_blocked_ms.load(Ordering::Acquire) == 0
            && !self.body_unread.load(Ordering::Acquire)
            && self.head_started_ms.load(Ordering::Acquire) == 0
            && self.idle_for().is_some_and(|t| t >= after)
    }

    /// A request head has begun (its first bytes are in hand): the header timer
    /// starts now, unless it already runs.
    pub(crate) fn head_begun(&self) {
        self.head_begun_at(self.now_ms());
    }

    fn head_begun_at(&self, now_ms: u64) {
        let _ = self.head_started_ms.compare_exchange(
            0,
            now_ms + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    // The time of the last byte matters only while nothing is in flight (see
    // `idle_for`; `request_finished` stamps it too), so the clock is read only then.
    fn on_read(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        if self.in_flight() == 0 {
            let now = self.now_ms();
            self.last_io_ms.store(now, Ordering::Release);
            self.head_begun_at(now);
        }
    }

    /// Time the connection's writes have been stuck (the client reads nothing).
    pub(crate) fn write_blocked_for(&self) -> Option<Duration> {
        let since = self.write_blocked_ms.load(Ordering::Acquire);
        (since != 0).then(|| Duration::from_millis(self.now_ms().saturating_sub(since - 1)))
    }

    // The clock is read only when a write first blocks, not on every write.
    fn on_write_ready(&self, blocked: bool) {
        if blocked {
            if self.write_blocked_ms.load(Ordering::Relaxed) == 0 {
                self.write_blocked_ms
                    .store(self.now_ms() + 1, Ordering::Relaxed);
            }
        } else if self.write_blocked_ms.load(Ordering::Relaxed) != 0 {
            self.write_blocked_ms.store(0, Ordering::Relaxed);
        }
    }

    fn on_write_polled(&self, polled: &Poll<io::Result<usize>>) {
        self.on_write_ready(polled.is_pending());
        if let Poll::Ready(Ok(n)) = polled {
            self.on_write(*n);
        }
    }

    fn on_write(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        if self.in_flight() == 0 {
            self.last_io_ms.store(self.now_ms(), Ordering::Release);
        }
    }
}

pin_project_lite::pin_project! {
    /// A socket that reports its reads and writes to an `Activity`.
    pub struct ActivityIo<IO> {
        #[pin]
        io: IO,
        activity: std::sync::Arc<Activity>,
    }
}

impl<IO> ActivityIo<IO> {
    pub fn new(io: IO, activity: std::sync::Arc<Activity>) -> Self {
        ActivityIo { io, activity }
    }
}

// Always inlined, as pollwatch's `WatchedIo` beneath it is: with that layer under
// it LLVM kept this read out of line, in the watched build only, so the
// watchdog's measured cost included a call of its own (bench/NOTES.md).
impl<IO: AsyncRead> AsyncRead for ActivityIo<IO> {
    #[inline(always)]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        this.activity
            .read_waiting
            .store(polled.is_pending(), Ordering::Relaxed);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.activity.on_read(n);
        }
        polled
    }
}

impl<IO: AsyncWrite> AsyncWrite for ActivityIo<IO> {
    #[inline(always)]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write(cx, buf);
        this.activity.on_write_polled(&polled);
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
        this.activity.on_write_polled(&polled);
        polled
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline(always)]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let polled = this.io.poll_flush(cx);
        // Only a write that moves bytes ends a stall: a flush that finds nothing
        // to push (a plain socket's always does) says nothing of the client.
        if polled.is_pending() {
            this.activity.on_write_ready(true);
        }
        polled
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
