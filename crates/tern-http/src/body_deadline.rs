//! A request body that must keep moving: a body that yields no frame for its
//! timeout ends with `BodyTimedOut`, so that a client sending a byte now and then
//! cannot hold a machine's slot for longer (nginx's `client_body_timeout`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;

/// The body's error when it stalled.
#[derive(Debug, thiserror::Error)]
#[error("the request body made no progress for {0:?}")]
pub(crate) struct BodyTimedOut(pub Duration);

pin_project_lite::pin_project! {
    pub(crate) struct BodyDeadline<B> {
        #[pin]
        inner: B,
        timeout: Duration,
        // Made at the first wait, then moved on at each new wait: no allocation
        // per frame.
        sleep: Option<Pin<Box<Sleep>>>,
        // Whether the last poll found no frame. The clock runs only from the
        // poll that starts a wait: time the reader above spent not asking (the
        // machine not reading) is not the client's.
        waiting: bool,
    }
}

impl<B> BodyDeadline<B> {
    pub(crate) fn new(inner: B, timeout: Duration) -> Self {
        BodyDeadline {
            inner,
            timeout,
            sleep: None,
            waiting: false,
        }
    }
}

impl<B> HttpBody for BodyDeadline<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = *this.timeout;
                let sleep = match this.sleep {
                    Some(sleep) => {
                        if !*this.waiting {
                            sleep.as_mut().reset(Instant::now() + timeout);
                        }
                        sleep
                    }
                    None => this.sleep.insert(Box::pin(tokio::time::sleep(timeout))),
                };
                *this.waiting = true;
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(timeout))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that yields a byte every `gap`, `n` times.
    fn trickle(
        n: usize,
        gap: Duration,
    ) -> impl HttpBody<Data = Bytes, Error = std::convert::Infallible> {
        let frames = futures_util::stream::unfold(0usize, move |i| async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(gap).await;
            Some((Ok(Frame::data(Bytes::from_static(b"x"))), i + 1))
        });
        http_body_util::StreamBody::new(frames)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_moving_is_read_whole_and_a_stalled_one_ends() {
        let steady = BodyDeadline::new(trickle(20, Duration::from_secs(3)), Duration::from_secs(5));
        let got = steady.collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), 20, "each gap is under the timeout");

        let stalled = BodyDeadline::new(trickle(3, Duration::from_secs(9)), Duration::from_secs(5));
        let started = Instant::now();
        let err = stalled.collect().await.unwrap_err();
        assert!(err.downcast_ref::<BodyTimedOut>().is_some(), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_reader_spends_not_asking_does_not_count() {
        let body = BodyDeadline::new(trickle(3, Duration::from_secs(1)), Duration::from_secs(5));
        let mut body = std::pin::pin!(body);
        body.frame().await.unwrap().unwrap();
        // The machine stops reading for longer than the timeout, then reads on.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest.len(), 2);
    }
}
