//! Bodies across the backhaul: a request body streamed to the peer by a task of
//! its own, and the peer's response body as an `http_body::Body`.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body, Frame};

/// A response body arriving over the backhaul. Each chunk read gives its room
/// back to the peer's flow-control window; dropping it unread resets the stream.
#[derive(Debug)]
pub struct RecvBody {
    stream: RecvStream,
    data_done: bool,
}

impl RecvBody {
    pub fn new(stream: RecvStream) -> Self {
        RecvBody {
            stream,
            data_done: false,
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The room goes back at once: the reader above has the bytes.
                    let _ = this.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
}

/// Streams `body` into `stream`, within the peer's flow-control window, until it
/// ends (then ends the stream), fails (then resets it), or the peer resets it.
/// Each piece sent counts as progress on `probe`. Why the body broke goes to
/// `broke` before the reset, so the sender can tell the client's fault from the
/// peer's.
pub(crate) async fn pump<B>(
    body: B,
    mut stream: SendStream<Bytes>,
    probe: Option<pollwatch::Probe>,
    broke: tokio::sync::oneshot::Sender<crate::BodyError>,
) where
    B: Body<Data = Bytes>,
    B::Error: Into<crate::BodyError>,
{
    let mut body = std::pin::pin!(body);
    loop {
        let frame = poll_fn(|cx| {
            if let Poll::Ready(reset) = stream.poll_reset(cx) {
                return Poll::Ready(Err(
                    reset.map_or_else(|e| e.to_string(), |r| format!("{r:?}"))
                ));
            }
            body.as_mut().poll_frame(cx).map(Ok)
        })
        .await;
        let frame = match frame {
            Err(why) => {
                tracing::debug!(reset = %why, "the peer stopped the request body");
                return;
            }
            Ok(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Ok(Some(Err(e))) => {
                // The client's body broke (cut short, over the limit, stalled):
                // the peer must not take what came as the whole request.
                let _ = broke.send(e.into());
                stream.send_reset(Reason::CANCEL);
                return;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let sent = match frame.into_data() {
            Ok(data) => {
                let n = data.len() as u64;
                let sent = send_all(&mut stream, data).await;
                if let Some(p) = &probe {
                    p.moved(n);
                }
                sent
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    let _ = stream.send_trailers(trailers);
                    return;
                }
                Err(_) => Ok(()),
            },
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Sends `data` in pieces as the peer's window allows.
pub(crate) async fn send_all(
    stream: &mut SendStream<Bytes>,
    mut data: Bytes,
) -> Result<(), h2::Error> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let room = poll_fn(|cx| stream.poll_capacity(cx)).await;
        let room = match room {
            Some(r) => r?,
            None => return Err(h2::Error::from(Reason::STREAM_CLOSED)),
        };
        if room == 0 {
            continue;
        }
        let piece = data.split_to(room.min(data.len()));
        stream.send_data(piece, false)?;
    }
    Ok(())
}
