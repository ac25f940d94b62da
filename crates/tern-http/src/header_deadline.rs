//! The response-header timeout of a request on an HTTP/1.1 client connection,
//! without a timer per request while the deadline is far.
//!
//! `tokio::time::timeout` registers a timer with the runtime on its first poll
//! and removes it when dropped: about 450 instructions and a visit to the timer
//! wheel for every proxied request, though a machine almost always answers long
//! before the deadline. An HTTP/1.1 connection's driver wakes its task at least
//! every `server::MAX_WAIT` (a second) whatever happens, draining included, and
//! that wake polls the request in flight. So until the deadline is within `ARM_WITHIN`,
//! each poll only compares the coarse clock with it; then a real timer is armed
//! for the rest.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

use crate::server::MAX_WAIT;

/// How near the deadline must be for a real timer: longer than the driver's
/// longest wait between wakes plus the coarse clock's lag (100 ms).
const ARM_WITHIN: Duration = MAX_WAIT.saturating_add(Duration::from_millis(500));

/// The deadline passed before the inner future finished.
#[derive(Debug)]
pub(crate) struct Elapsed;

pin_project_lite::pin_project! {
    /// Runs `inner` until `timeout` has passed. Must be polled at least once a
    /// second while pending (see the module's note).
    pub(crate) struct HeaderDeadline<F> {
        #[pin]
        inner: F,
        // The coarse clock's reading at the deadline.
        due_ms: u64,
        #[pin]
        timer: Option<Sleep>,
    }
}

impl<F> HeaderDeadline<F> {
    pub(crate) fn new(inner: F, timeout: Duration) -> Self {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        HeaderDeadline {
            inner,
            due_ms: pollwatch::coarse_millis().saturating_add(timeout_ms),
            timer: None,
        }
    }
}

impl<F: Future> Future for HeaderDeadline<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if this.timer.is_none() {
            let left =
                Duration::from_millis(this.due_ms.saturating_sub(pollwatch::coarse_millis()));
            if left <= ARM_WITHIN {
                this.timer.set(Some(tokio::time::sleep(left)));
            }
        }
        if let Some(timer) = this.timer.as_pin_mut() {
            if timer.poll(cx).is_ready() {
                return Poll::Ready(Err(Elapsed));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn a_finished_future_wins_and_a_short_deadline_fires_on_time() {
        let done = HeaderDeadline::new(async { 7 }, Duration::from_millis(10)).await;
        assert_eq!(done.unwrap(), 7);
        let started = Instant::now();
        let never = HeaderDeadline::new(std::future::pending::<()>(), Duration::from_millis(300));
        assert!(never.await.is_err());
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(190), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[tokio::test]
    async fn a_far_deadline_is_armed_by_a_later_poll() {
        // A future polled every 200 ms, as a connection's driver would (at most
        // every second): the timer is armed once the deadline is near, and fires.
        let started = Instant::now();
        let waiting =
            HeaderDeadline::new(std::future::pending::<()>(), Duration::from_millis(2500));
        let mut waiting = std::pin::pin!(waiting);
        let ticks = async {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let out = tokio::select! {
            out = &mut waiting => out,
            _ = ticks => unreachable!(),
        };
        assert!(out.is_err());
        assert!(waiting.timer.is_some(), "fired by its armed timer");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(2300), "{took:?}");
        assert!(took < Duration::from_millis(4000), "{took:?}");
    }
}
