//! HTTP/2 streams whose client stopped reading them. A client that gives one
//! stream no flow-control window leaves its response body unasked-for while the
//! connection around it moves, so the connection's send timer never fires. Each
//! response body on an HTTP/2 connection is watched: one that hyper has not asked
//! for more of within `send_timeout`, while it had data to give, is taken from
//! its stream and dropped, which frees the machine's connection and load unit
//! (nginx's `send_timeout`, per stream).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{Body, BoxError};

/// `Clock::since` while the body waits on its machine, or has ended: the client
/// is not holding it up.
const NOT_WAITING: u64 = u64::MAX;

/// A connection's watched response bodies.
#[derive(Debug)]
pub(crate) struct StreamClocks {
    epoch: Instant,
    clocks: Mutex<Vec<Weak<Clock>>>,
}

impl Default for StreamClocks {
    fn default() -> Self {
        StreamClocks {
            epoch: Instant::now(),
            clocks: Mutex::default(),
        }
    }
}

struct Clock {
    /// Taken out when the stream is cut.
    body: Mutex<Option<Body>>,
    /// Milliseconds after the epoch since which the body has been waiting to be
    /// asked for more, or `NOT_WAITING`.
    since: AtomicU64,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock").finish_non_exhaustive()
    }
}

/// The error a cut stream's body gives if hyper ever asks it again.
#[derive(Debug, thiserror::Error)]
#[error("the client read nothing of this stream for the send timeout")]
pub(crate) struct StreamStalled;

impl StreamClocks {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NOT_WAITING - 1)
    }

    /// Watches `body`, a response about to go out on one of the connection's
    /// streams. An empty body is sent with its head and needs no watching.
    pub(crate) fn watch(&self, body: Body) -> Body {
        if body.is_end_stream() {
            return body;
        }
        let clock = Arc::new(Clock {
            body: Mutex::new(Some(body)),
            since: AtomicU64::new(self.now_ms()),
        });
        {
            let mut clocks = self.clocks.lock().unwrap_or_else(PoisonError::into_inner);
            // Finished streams' entries go when the list would grow: a busy
            // connection's list stays about as long as its open streams.
            if clocks.len() == clocks.capacity() {
                clocks.retain(|c| c.strong_count() > 0);
            }
            clocks.push(Arc::downgrade(&clock));
        }
        Watched {
            clock,
            epoch: self.epoch,
        }
        .boxed_unsync()
    }

    /// Cuts the streams whose body has waited `after` or longer to be asked for
    /// more; returns how many.
    pub(crate) fn cut_stalled(&self, after: Duration) -> usize {
        let now = self.now_ms();
        let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        let mut stalled = Vec::new();
        self.clocks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|weak| {
                let Some(clock) = weak.upgrade() else {
                    return false;
                };
                let since = clock.since.load(Ordering::Acquire);
                if since != NOT_WAITING && now.saturating_sub(since) >= after {
                    stalled.push(clock);
                    return false;
                }
                true
            });
        let cut = stalled.len();
        for clock in stalled {
            // Dropped outside the list's lock: a body's end hooks release the
            // machine's unit and tell the connection the request is over.
            let body = clock
                .body
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            drop(body);
        }
        cut
    }
}

/// A response body whose clock says how long it has waited for hyper to ask.
struct Watched {
    clock: Arc<Clock>,
    epoch: Instant,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut slot = self
            .clock
            .body
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(body) = slot.as_mut() else {
            return Poll::Ready(Some(Err(Box::new(StreamStalled))));
        };
        let polled = Pin::new(body).poll_frame(cx);
        let since = match &polled {
            // hyper holds a frame and will ask for the next when the client's
            // window allows: from now, any wait is the client's.
            Poll::Ready(Some(Ok(_))) => {
                u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NOT_WAITING - 1)
            }
            _ => NOT_WAITING,
        };
        self.clock.since.store(since, Ordering::Release);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.clock
            .body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.clock
            .body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or_else(SizeHint::default, HttpBody::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct Dropped(Arc<AtomicBool>);

    impl crate::body::OnEnd for Dropped {
        fn on_end(self, _complete: bool) {
            self.0.store(true, Ordering::Release);
        }
    }

    fn body(dropped: &Arc<AtomicBool>) -> Body {
        crate::body::Guarded::new(
            crate::body::full(vec![b'x'; 10]),
            Dropped(Arc::clone(dropped)),
        )
        .boxed_unsync()
    }

    #[test]
    fn a_body_never_asked_for_is_cut_and_one_being_read_is_not() {
        let clocks = StreamClocks::default();
        let dropped = Arc::new(AtomicBool::new(false));
        let unread = clocks.watch(body(&dropped));
        assert_eq!(clocks.cut_stalled(Duration::from_secs(60)), 0);
        assert_eq!(clocks.cut_stalled(Duration::ZERO), 1);
        assert!(dropped.load(Ordering::Acquire), "its hooks ran");
        let mut unread = std::pin::pin!(unread);
        let waker = std::task::Waker::noop();
        let polled = unread.as_mut().poll_frame(&mut Context::from_waker(waker));
        assert!(matches!(polled, Poll::Ready(Some(Err(_)))));

        // Read to its end: nothing is left to wait for.
        let read = clocks.watch(body(&Arc::new(AtomicBool::new(false))));
        let mut read = std::pin::pin!(read);
        let mut cx = Context::from_waker(waker);
        while let Poll::Ready(Some(_)) = read.as_mut().poll_frame(&mut cx) {}
        assert_eq!(clocks.cut_stalled(Duration::ZERO), 0);
    }

    #[test]
    fn finished_streams_leave_the_list() {
        let clocks = StreamClocks::default();
        for _ in 0..1000 {
            drop(clocks.watch(body(&Arc::new(AtomicBool::new(false)))));
        }
        assert!(clocks.clocks.lock().unwrap().len() <= 4);
        assert_eq!(clocks.cut_stalled(Duration::ZERO), 0);
        assert!(clocks.clocks.lock().unwrap().is_empty());
    }
}
