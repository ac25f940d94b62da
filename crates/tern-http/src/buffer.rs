//! The buffer phase: the start of a request body is read before any machine is
//! chosen, so a client that sends its body slowly holds no machine's capacity
//! while it does (HAProxy's `http-buffer-request`, nginx's request buffering).
//! A body that fits in the buffer reaches its machine whole; a larger one takes
//! its machine once the buffer is full, and streams from there.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use metrics::Gauge;

use crate::body::{Body, BoxError};
use crate::error::ProxyError;

/// Reads `body` until it ends or `limit` bytes have come, and gives back a body
/// that yields what was read, then the rest. A body that breaks meanwhile is the
/// client's error (too large, stalled or malformed), before any machine is asked.
pub(crate) async fn buffer(
    mut body: Body,
    limit: usize,
    gauge: &Gauge,
) -> Result<Body, ProxyError> {
    let _counted = Counted::new(gauge);
    let mut read = VecDeque::new();
    let mut bytes = 0usize;
    let mut ended = false;
    while bytes < limit {
        match body.frame().await {
            None => {
                ended = true;
                break;
            }
            Some(Err(e)) => return Err(crate::send::client_body_error(&*e)),
            Some(Ok(frame)) => {
                bytes += frame.data_ref().map_or(0, Bytes::len);
                read.push_back(frame);
                // A body of known length is done at its last byte: no wait for
                // the end that is already known.
                if body.is_end_stream() {
                    ended = true;
                    break;
                }
            }
        }
    }
    let rest = (!ended).then_some(body);
    Ok(Buffered { read, rest }.boxed_unsync())
}

/// Whether the request is a streaming RPC (gRPC, gRPC-Web, Connect streaming),
/// whose messages are exchanged on an open body and must not wait for a buffer
/// to fill.
pub(crate) fn is_streaming_rpc(headers: &http::HeaderMap) -> bool {
    const STREAMING: [&[u8]; 2] = [b"application/grpc", b"application/connect+"];
    headers.get(http::header::CONTENT_TYPE).is_some_and(|t| {
        let t = t.as_bytes();
        STREAMING
            .iter()
            .any(|p| t.len() >= p.len() && t[..p.len()].eq_ignore_ascii_case(p))
    })
}

/// One on the gauge while it lives: the buffer phase's future may be dropped
/// at any await (the client gone, an HTTP/2 stream reset).
struct Counted<'a>(&'a Gauge);

impl<'a> Counted<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.increment(1.0);
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// What the buffer phase read, then the rest of the body.
struct Buffered {
    read: VecDeque<Frame<Bytes>>,
    rest: Option<Body>,
}

impl HttpBody for Buffered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let held: u64 = self
            .read
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + held);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `n` one-byte frames, one every `gap`, then the end.
    fn trickle(n: usize, gap: Duration) -> Body {
        let frames = futures_util::stream::unfold(0usize, move |i| async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(gap).await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))),
                i + 1,
            ))
        });
        http_body_util::StreamBody::new(frames).boxed_unsync()
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_fits_is_read_whole_and_a_larger_one_streams_on() {
        let whole = buffer(trickle(5, Duration::from_secs(1)), 8, &Gauge::noop())
            .await
            .unwrap();
        let mut whole = std::pin::pin!(whole);
        // Everything is in hand: the rest comes without waiting.
        let started = tokio::time::Instant::now();
        assert_eq!(whole.as_mut().collect().await.unwrap().to_bytes().len(), 5);
        assert_eq!(started.elapsed(), Duration::ZERO);

        let larger = buffer(trickle(5, Duration::from_secs(1)), 3, &Gauge::noop())
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(larger.collect().await.unwrap().to_bytes().len(), 5);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[test]
    fn streaming_rpcs_are_known_by_their_content_type() {
        let with = |t: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(t),
            );
            is_streaming_rpc(&h)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("Application/GRPC-Web+proto"));
        assert!(with("application/connect+json"));
        assert!(!with("application/json"));
        assert!(!with("application/gr"));
        assert!(!is_streaming_rpc(&http::HeaderMap::new()));
    }

    #[tokio::test]
    async fn the_size_hint_counts_what_was_read() {
        let body = crate::body::full(vec![b'x'; 10]);
        let held = buffer(body, 4, &Gauge::noop()).await.unwrap();
        assert_eq!(held.size_hint().exact(), Some(10));
    }
}
