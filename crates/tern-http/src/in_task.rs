//! Runs an HTTP/2 connection's streams inside the connection's own task.
//!
//! hyper hands each HTTP/2 stream to an executor. With tokio's, every stream is a
//! task of its own: it escapes the spin watchdog that wraps the connection's task,
//! and each request pays for a task and for the wakeups that pass between it and
//! the connection. [`InTask`] queues the streams instead, and [`WithStreams`]
//! polls them beside the connection, so a busy loop in a stream is found and cut
//! with its connection, and a request costs no task of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};

type Spawned = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the executor and the connection's driver share.
#[derive(Default)]
struct Shared {
    /// Futures handed over since the driver last looked.
    inbox: Mutex<Vec<Spawned>>,
    /// Set when a stream has been polled: it may have queued frames that the
    /// connection has yet to write.
    stream_ran: AtomicBool,
}

/// The executor to give hyper's HTTP/2 server: it queues what hyper spawns for
/// the connection's [`WithStreams`] to poll.
#[derive(Clone, Default)]
pub(crate) struct InTask(Arc<Shared>);

impl<F> hyper::rt::Executor<F> for InTask
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // hyper spawns only from inside the connection's poll (a new stream) or a
        // stream's (an upgraded stream's pump), and the driver empties the inbox
        // after both, so nothing waits here for a wakeup.
        let shared = Arc::clone(&self.0);
        let stream = Flagged { fut, shared };
        self.0
            .inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(stream));
    }
}

pin_project_lite::pin_project! {
    /// A spawned future that notes each poll in `Shared::stream_ran`.
    struct Flagged<F> {
        #[pin]
        fut: F,
        shared: Arc<Shared>,
    }
}

impl<F: Future<Output = ()>> Future for Flagged<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        this.shared.stream_ran.store(true, Ordering::Relaxed);
        this.fut.poll(cx)
    }
}

/// A connection and the streams its [`InTask`] executor was handed, polled as one
/// future. It ends when the connection does; a stream still running then is
/// dropped, as it could no longer send anything.
pub(crate) struct WithStreams<C> {
    conn: C,
    streams: FuturesUnordered<Spawned>,
    shared: Arc<Shared>,
}

impl<C> WithStreams<C> {
    /// `conn` must have been built with `exec` as its executor.
    pub(crate) fn new(conn: C, exec: &InTask) -> Self {
        WithStreams {
            conn,
            streams: FuturesUnordered::new(),
            shared: Arc::clone(&exec.0),
        }
    }

    pub(crate) fn conn_mut(&mut self) -> &mut C {
        &mut self.conn
    }

    /// Moves newly spawned futures into `streams`; whether there were any.
    fn take_inbox(&mut self) -> bool {
        let mut inbox = self
            .shared
            .inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if inbox.is_empty() {
            return false;
        }
        self.streams.extend(inbox.drain(..));
        true
    }

    /// Polls every stream that was woken (and every new one) until none is ready;
    /// whether any ran.
    fn poll_streams(&mut self, cx: &mut Context<'_>) -> bool {
        self.shared.stream_ran.store(false, Ordering::Relaxed);
        self.take_inbox();
        loop {
            // Finished streams are simply dropped; `Ready(None)` means none is left.
            while let Poll::Ready(Some(())) = self.streams.poll_next_unpin(cx) {}
            // A stream may have spawned (an upgraded stream's pump): poll that too,
            // or it would wait for a wakeup that nothing has registered.
            if !self.take_inbox() {
                break;
            }
        }
        self.shared.stream_ran.load(Ordering::Relaxed)
    }
}

impl<C: Future + Unpin> Future for WithStreams<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        if let Poll::Ready(out) = Pin::new(&mut this.conn).poll(cx) {
            return Poll::Ready(out);
        }
        if !this.poll_streams(cx) {
            return Poll::Pending;
        }
        // A stream ran: it may have queued a response for the connection to write.
        // Writing it now saves the wakeup (and the poll) that h2 would ask for.
        if let Poll::Ready(out) = Pin::new(&mut this.conn).poll(cx) {
            return Poll::Ready(out);
        }
        // That poll may have accepted new streams; everything polled last has
        // registered its wakeup, so Pending is safe after this.
        this.poll_streams(cx);
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::AtomicUsize;

    /// A stand-in connection that spawns through the executor when told to and
    /// ends when told to.
    struct FakeConn {
        exec: InTask,
        spawn: Vec<Spawned>,
        end: Arc<AtomicBool>,
        polls: Arc<AtomicUsize>,
    }

    impl Future for FakeConn {
        type Output = &'static str;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<&'static str> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            for f in std::mem::take(&mut self.spawn) {
                self.exec.execute(f);
            }
            if self.end.load(Ordering::Relaxed) {
                return Poll::Ready("ended");
            }
            // A real connection would register with its socket; the tests wake
            // it by hand through `wake`.
            let _ = cx;
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn streams_run_in_the_connections_task_and_end_with_it() {
        let exec = InTask::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let got = Arc::new(AtomicUsize::new(0));
        let got2 = Arc::clone(&got);
        let stream: Spawned = Box::pin(async move {
            let v = rx.await.unwrap();
            got2.store(v as usize, Ordering::Relaxed);
        });
        let never: Spawned = Box::pin(std::future::pending());
        let end = Arc::new(AtomicBool::new(false));
        let polls = Arc::new(AtomicUsize::new(0));
        let conn = FakeConn {
            exec: exec.clone(),
            spawn: vec![stream, never],
            end: Arc::clone(&end),
            polls: Arc::clone(&polls),
        };
        let mut driven = WithStreams::new(conn, &exec);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut driven).poll(&mut cx).is_pending());
        // Both streams were taken in and polled within that one poll, and the
        // connection was polled again after them.
        assert_eq!(driven.streams.len(), 2);
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        // The stream finishes when its answer comes, without a task of its own.
        tx.send(7).unwrap();
        assert!(Pin::new(&mut driven).poll(&mut cx).is_pending());
        assert_eq!(got.load(Ordering::Relaxed), 7);
        assert_eq!(driven.streams.len(), 1);
        // The connection's end ends the driver; the pending stream is dropped.
        end.store(true, Ordering::Relaxed);
        assert_eq!(Pin::new(&mut driven).poll(&mut cx), Poll::Ready("ended"));
    }

    #[tokio::test]
    async fn a_stream_spawned_by_a_stream_is_polled_at_once() {
        let exec = InTask::default();
        let ran = Arc::new(AtomicBool::new(false));
        let (ran2, exec2) = (Arc::clone(&ran), exec.clone());
        let parent: Spawned = Box::pin(async move {
            exec2.execute(async move {
                ran2.store(true, Ordering::Relaxed);
            });
        });
        let conn = FakeConn {
            exec: exec.clone(),
            spawn: vec![parent],
            end: Arc::new(AtomicBool::new(false)),
            polls: Arc::new(AtomicUsize::new(0)),
        };
        let mut driven = WithStreams::new(conn, &exec);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut driven).poll(&mut cx).is_pending());
        assert!(ran.load(Ordering::Relaxed));
        assert!(driven.streams.is_empty());
    }

    #[tokio::test]
    async fn a_quiet_poll_does_not_poll_the_connection_twice() {
        let exec = InTask::default();
        let polls = Arc::new(AtomicUsize::new(0));
        let conn = FakeConn {
            exec: exec.clone(),
            spawn: Vec::new(),
            end: Arc::new(AtomicBool::new(false)),
            polls: Arc::clone(&polls),
        };
        let mut driven = WithStreams::new(conn, &exec);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut driven).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1);
    }
}
