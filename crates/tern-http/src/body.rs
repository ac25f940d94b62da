//! The body types that flow through the proxy, and a body that runs a release hook
//! when it has been read to the end or dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every request and response body Tern handles.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete, in-memory body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What happens when a relayed body ends.
pub(crate) trait OnEnd: Send + 'static {
    /// `complete` is true when the body was read to its end without error.
    fn on_end(self, complete: bool);
}

/// Two hooks, run in order.
impl<A: OnEnd, B: OnEnd> OnEnd for (A, B) {
    fn on_end(self, complete: bool) {
        self.0.on_end(complete);
        self.1.on_end(complete);
    }
}

pin_project_lite::pin_project! {
    /// Relays `inner` and calls the hook once: at the end of the stream, on error,
    /// or on drop, whichever comes first. The hook is held by value: a boxed one
    /// would be one more allocation per request.
    pub(crate) struct Guarded<B: HttpBody, H: OnEnd> {
        #[pin]
        inner: B,
        hook: Option<H>,
    }

    impl<B: HttpBody, H: OnEnd> PinnedDrop for Guarded<B, H> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // An empty body (HEAD, 204) may never be polled, yet it is complete.
            let complete = this.inner.is_end_stream();
            if let Some(hook) = this.hook.take() {
                hook.on_end(complete);
            }
        }
    }
}

impl<B: HttpBody, H: OnEnd> Guarded<B, H> {
    pub(crate) fn new(inner: B, hook: H) -> Self {
        Guarded {
            inner,
            hook: Some(hook),
        }
    }
}

impl<B, H> HttpBody for Guarded<B, H>
where
    B: HttpBody<Data = Bytes>,
    H: OnEnd,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(hook) = this.hook.take() {
                    hook.on_end(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(hook) = this.hook.take() {
                    hook.on_end(false);
                }
            }
            _ => {}
        }
        polled.map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client's request body: hyper's, or none at all for a request that Tern's
/// in-task server parsed (it takes only requests without a body).
#[derive(Debug)]
pub(crate) enum RequestBody {
    Empty,
    Streaming(hyper::body::Incoming),
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Streaming(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streaming(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records its name and the completeness it was told.
    struct Note(&'static str, Arc<Mutex<Vec<(&'static str, bool)>>>);

    impl OnEnd for Note {
        fn on_end(self, complete: bool) {
            self.1.lock().unwrap().push((self.0, complete));
        }
    }

    #[tokio::test]
    async fn paired_hooks_run_once_in_order_at_the_end() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let hooks = (Note("first", log.clone()), Note("second", log.clone()));
        let mut body = Guarded::new(Full::new(Bytes::from_static(b"x")), hooks);
        while body.frame().await.is_some() {}
        drop(body);
        assert_eq!(*log.lock().unwrap(), [("first", true), ("second", true)]);
    }

    #[test]
    fn an_abandoned_body_runs_its_hooks_as_incomplete() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let hooks = (Note("first", log.clone()), Note("second", log.clone()));
        drop(Guarded::new(Full::new(Bytes::from_static(b"x")), hooks));
        assert_eq!(*log.lock().unwrap(), [("first", false), ("second", false)]);
    }
}
