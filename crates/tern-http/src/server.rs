//! Serving one client connection: HTTP/1.1 or HTTP/2 (by ALPN or preface), with the
//! header and idle timers, size limits, upgrades and a graceful end on shutdown.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::activity::{Activity, ActivityIo};
use crate::body::{Body, OnEnd, RequestBody};
use crate::conn_event::{next_conn_event, ConnEvent};
use crate::context::{ConnInfo, Proxy};
use crate::in_task::{InTask, WithStreams};
use crate::prefixed::Prefixed;

/// Limits and timers of the HTTP server side.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// A request head must arrive in full within this time of its first byte.
    pub header_read_timeout: Duration,
    /// A connection with nothing in flight and no bytes moving is closed after this.
    pub idle_timeout: Duration,
    /// A connection whose writes have made no progress for this long (the client
    /// stopped reading) is dropped, as nginx's `send_timeout` does.
    pub send_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// How long a connection may take to finish its in-flight requests once shutdown
    /// begins, before it is dropped.
    pub drain_timeout: Duration,
}

/// An HTTP/1.1 keep-alive connection idle this long gives up its HTTP state
/// (hyper's read and write buffers, 24 KiB) until the client sends again. Short
/// enough that idle connections cost little memory soon after their last request,
/// long enough that a busy connection never pays for rebuilding it.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(250);

/// The longest a connection's driver waits before it wakes the task again,
/// whatever its timers say (while draining too). A wake polls the request in
/// flight, which `HeaderDeadline` counts on to see its deadline coming.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(1);

/// Serves HTTP on `io` until the client leaves, a timer fires, or `shutdown` turns true.
pub async fn serve_connection<IO>(
    io: IO,
    mut info: ConnInfo,
    h2_by_alpn: bool,
    proxy: Arc<Proxy>,
    settings: &ServerSettings,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let mut io = Prefixed::new(ActivityIo::new(io, Arc::clone(&activity)));

    info.activity = Some(Arc::clone(&activity));
    let info = Arc::new(info);
    let service = {
        let proxy = Arc::clone(&proxy);
        let info = Arc::clone(&info);
        let activity = Arc::clone(&activity);
        service_fn(move |req: Request<Incoming>| {
            let proxy = Arc::clone(&proxy);
            let info = Arc::clone(&info);
            let activity = Arc::clone(&activity);
            // Not boxed: hyper keeps room for one in-flight service future (about
            // 3.5 KiB) in its HTTP/1.1 connection state, which a keep-alive
            // connection gives up when it parks (PARK_AFTER), so idle connections
            // do not carry it; a box per request cost an allocation over 1 KiB and
            // a copy of the future.
            async move {
                activity.request_started(!http_body::Body::is_end_stream(req.body()));
                let req = req.map(RequestBody::Streaming);
                let finished = Finished(Arc::clone(&activity));
                let mut resp = proxy.handle(req, &info, finished).await;
                if activity.is_multiplexed() {
                    let body = std::mem::take(resp.body_mut());
                    *resp.body_mut() = activity.streams.watch(body);
                }
                Ok::<_, Infallible>(resp)
            }
        })
    };

    let mut timers = ConnTimers {
        activity: &activity,
        settings,
        shutdown: &mut shutdown,
        drain_until: None,
        handover: &proxy.handover_drain,
    };
    let mut first = true;
    loop {
        if !h2_by_alpn {
            // No HTTP state is attached while waiting: a new connection before its
            // first byte, or a parked keep-alive connection.
            if !wait_for_bytes(&mut io, &mut timers).await {
                return;
            }
        }
        // Every server is boxed: the future of a parked connection then keeps no
        // room for a server's state.
        if h2_by_alpn || (first && H2_PREFACE.starts_with(io.prefix())) {
            // A peer multiplexes every request it has for this node's machines
            // onto one connection: room for many more streams than a client gets.
            let streams = if info.from_node.is_some() {
                BACKHAUL_STREAMS
            } else {
                CLIENT_STREAMS
            };
            return Box::pin(serve_h2(io, service, streams, &mut timers)).await;
        }
        first = false;
        // Requests without a body are answered in this task (tern-h1); the first
        // that needs more goes to hyper, with the bytes already read.
        let handed = match Box::pin(serve_in_task(io, &proxy, &info, &mut timers)).await {
            InTaskEnd::Closed => return,
            InTaskEnd::Parked(parked) => {
                io = parked;
                continue;
            }
            InTaskEnd::HandOver(handed) => handed,
        };
        match Box::pin(serve_h1(handed, service.clone(), &mut timers)).await {
            Some(parked) => io = parked,
            None => return,
        }
    }
}

/// What a connection's timers read, and the drain they keep: shared by the
/// servers that take the connection in turn, so that a request handed from one
/// to the next is answered under the same drain deadline.
struct ConnTimers<'a> {
    activity: &'a Arc<Activity>,
    settings: &'a ServerSettings,
    shutdown: &'a mut watch::Receiver<bool>,
    /// Set once the connection drains: when it is dropped, whatever it is doing.
    drain_until: Option<Instant>,
    /// Read when the drain begins: true in an upgrade's hand-over drain (see
    /// `Proxy::begin_handover_drain`), when an HTTP/1.1 connection waits for its
    /// client's next request and answers it with `Connection: close`, rather
    /// than closing while the client may be sending one.
    handover: &'a AtomicBool,
}

impl ConnTimers<'_> {
    /// Whether this HTTP/1.1 connection (`may_park`) drains by answering its
    /// next request with `Connection: close` instead of closing now.
    fn drains_softly(&self, may_park: bool) -> bool {
        may_park && self.handover.load(Ordering::Acquire)
    }
}

/// How the in-task server let go of a connection.
enum InTaskEnd<IO> {
    Closed,
    Parked(Prefixed<ActivityIo<IO>>),
    /// A request for hyper is at the front of the socket's prefix.
    HandOver(Prefixed<ActivityIo<IO>>),
}

/// Serves HTTP/1.1 requests without a body in this task, under the same timers
/// as hyper's server, until the connection ends, parks, or meets a request that
/// hyper must answer.
async fn serve_in_task<IO>(
    io: Prefixed<ActivityIo<IO>>,
    proxy: &Proxy,
    info: &ConnInfo,
    timers: &mut ConnTimers<'_>,
) -> InTaskEnd<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (activity, settings) = (timers.activity, timers.settings);
    let mut inbound = tern_h1::Inbound::new(io);
    let closing = AtomicBool::new(false);
    let limits = tern_h1::Limits {
        max_head_bytes: settings.max_header_bytes,
        max_headers: settings.max_headers,
    };
    let driven = {
        let serving = tern_h1::serve(&mut inbound, limits, &closing, |req| {
            activity.request_started(false);
            let req = req.map(|()| RequestBody::Empty);
            proxy.handle(req, info, Finished(Arc::clone(activity)))
        });
        let mut serving = std::pin::pin!(serving);
        let graceful = |_: &mut _| closing.store(true, Ordering::Release);
        drive(&mut serving, graceful, timers, true).await
    };
    match driven {
        Driven::Ended(Some(tern_h1::Served::Closed)) => {
            close_quietly(inbound.io_mut()).await;
            InTaskEnd::Closed
        }
        Driven::Ended(None) => InTaskEnd::Closed,
        // The bytes read and not answered go back in front of the socket: a
        // request for hyper, or (parked) the start of a head read behind a
        // request that was in flight, if any.
        handed @ (Driven::Ended(Some(tern_h1::Served::HandOver)) | Driven::Park) => {
            let (mut io, unread) = inbound.into_parts();
            io.put_back(unread);
            if matches!(handed, Driven::Park) {
                metrics::counter!("tern_client_parked_total").increment(1);
                InTaskEnd::Parked(io)
            } else {
                InTaskEnd::HandOver(io)
            }
        }
    }
}

/// The preface an HTTP/2 client with prior knowledge opens with (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the first bytes the client sends, with no HTTP state attached; enough to
/// tell an HTTP/2 preface from HTTP/1.1 on a new connection. Returns false when
/// the connection is done: the client left, the idle timer fired or shutdown began.
async fn wait_for_bytes<IO>(io: &mut Prefixed<IO>, timers: &mut ConnTimers<'_>) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    if !io.prefix().is_empty() {
        // Bytes given back when the connection parked: the start of a head read
        // behind a request in flight, when reads do not start the header timer.
        // It starts now, so that the head is not waited for forever (nor the
        // connection parked again and again).
        timers.activity.head_begun();
    }
    loop {
        let have = io.prefix().len();
        if have > 0 && (have >= H2_PREFACE.len() || !H2_PREFACE.starts_with(io.prefix())) {
            return true;
        }
        let mut buf = [0u8; H2_PREFACE.len()];
        let want = H2_PREFACE.len() - have;
        let mut wait = next_check(timers.activity, timers.settings);
        if let Some(until) = timers.drain_until {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                close_quietly(io).await;
                return false;
            }
            wait = wait.min(left);
        }
        let draining = timers.drain_until.is_some();
        tokio::select! {
            read = io.get_mut().read(&mut buf[..want]) => match read {
                Ok(0) if have == 0 => {
                    // The client left a connection with nothing in flight.
                    close_quietly(io).await;
                    return false;
                }
                // Bytes that began like a preface and then ended: the HTTP/1.1
                // parser answers them.
                Ok(0) | Err(_) => return have > 0,
                Ok(n) => io.append(Bytes::copy_from_slice(&buf[..n])),
            },
            _ = tokio::time::sleep(wait) => match expired(timers.activity, timers.settings) {
                Some(Expired::HeaderRead | Expired::Send) => return false,
                Some(Expired::Idle) => {
                    close_quietly(io).await;
                    return false;
                }
                None => {}
            },
            _ = timers.shutdown.changed(), if !draining => {
                if timers.drains_softly(true) {
                    // The client's next request is answered, with
                    // `Connection: close`; the drain deadline bounds the wait.
                    timers.drain_until = Some(Instant::now() + timers.settings.drain_timeout);
                    continue;
                }
                close_quietly(io).await;
                return false;
            }
        }
    }
}

/// Closes an idle connection the way hyper would: TLS close_notify, then FIN.
async fn close_quietly<IO: AsyncWrite + Unpin>(io: &mut IO) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
}

/// Serves HTTP/1.1 until the connection ends (`None`) or parks: idle for
/// `PARK_AFTER` with nothing in flight, when hyper's state is dropped and the
/// socket handed back (`Some`).
async fn serve_h1<IO, S>(
    io: Prefixed<ActivityIo<IO>>,
    service: S,
    timers: &mut ConnTimers<'_>,
) -> Option<Prefixed<ActivityIo<IO>>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Unpin + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Tern's own header timer starts at a head's first byte, so that an idle
        // keep-alive connection is governed by the idle timeout alone.
        .header_read_timeout(None)
        .max_buf_size(timers.settings.max_header_bytes.max(8192))
        .max_headers(timers.settings.max_headers)
        // A client that ends its side right after a request (a POST followed by
        // close_notify or FIN) still gets its answer, as nginx and HAProxy give it.
        .half_close(true)
        // One flattened buffer per write: a plain send() instead of writev() with a
        // head and a body slice costs less for the small responses that dominate
        // (-4.9% CPU per proxied HTTP/1.1 request, paired runs), and hyper's
        // queue of buffers goes unused.
        .writev(false);
    let mut conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let graceful = |c: &mut http1::UpgradeableConnection<_, _>| Pin::new(c).graceful_shutdown();
    match drive(&mut conn, graceful, timers, true).await {
        Driven::Ended(_) => None,
        Driven::Park => {
            let parts = conn.into_parts()?;
            metrics::counter!("tern_client_parked_total").increment(1);
            let mut io = parts.io.into_inner();
            io.put_back(parts.read_buf);
            Some(io)
        }
    }
}

/// Concurrent streams a client's HTTP/2 connection may open (hyper's default).
const CLIENT_STREAMS: u32 = 200;
/// Concurrent streams a peer's backhaul connection may open.
const BACKHAUL_STREAMS: u32 = 10_000;

/// Serves HTTP/2 until the connection ends.
async fn serve_h2<IO, S>(
    io: Prefixed<ActivityIo<IO>>,
    service: S,
    max_streams: u32,
    timers: &mut ConnTimers<'_>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Unpin + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    timers.activity.set_multiplexed();
    // Streams run in this task, under its spin watchdog (see in_task.rs).
    let exec = InTask::default();
    let mut builder = http2::Builder::new(exec.clone());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_streams)
        .max_header_list_size(u32::try_from(timers.settings.max_header_bytes).unwrap_or(u32::MAX));
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = WithStreams::new(conn, &exec);
    let graceful = |c: &mut WithStreams<http2::Connection<_, _, _>>| {
        Pin::new(c.conn_mut()).graceful_shutdown()
    };
    drive(&mut conn, graceful, timers, false).await;
}

enum Driven<T> {
    /// With what the connection's future returned, or `None` when it failed or
    /// a timer ended it.
    Ended(Option<T>),
    Park,
}

/// Polls `conn` under the header, idle and drain timers and the shutdown signal;
/// `graceful` starts its graceful shutdown. With `may_park`, returns `Park` once
/// the connection is parkable (see `Activity::parkable`); the caller then takes
/// the socket back from hyper.
async fn drive<C, T, E>(
    conn: &mut C,
    graceful: impl Fn(&mut C),
    timers: &mut ConnTimers<'_>,
    may_park: bool,
) -> Driven<T>
where
    C: Future<Output = Result<T, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    let (activity, settings) = (timers.activity, timers.settings);
    if timers.drain_until.is_some() {
        // The drain began under the server this one took the connection from
        // (a request handed from the in-task server to hyper's), and the shutdown
        // signal, already seen, will not fire again. One poll first: hyper closes
        // at once a connection it has read nothing from, and the request is
        // waiting in the prefix.
        let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut *conn).poll(cx))).await;
        if let Poll::Ready(res) = polled {
            return ended(res, activity);
        }
        if !timers.drains_softly(may_park) {
            graceful(conn);
        }
    }
    loop {
        let draining = timers.drain_until.is_some();
        let mut wait = next_check(activity, settings);
        if may_park {
            if let Some(idle) = activity.idle_for() {
                // Past the park delay and still not parkable (a head begun, a body
                // unread), the ordinary timers' wait: not a re-check every 10 ms.
                let until_park = PARK_AFTER.saturating_sub(idle);
                if !until_park.is_zero() {
                    wait = wait.min(until_park.max(Duration::from_millis(10)));
                }
            }
        }
        let after = match timers.drain_until {
            Some(until) => until
                .saturating_duration_since(Instant::now())
                .min(MAX_WAIT),
            None => wait,
        };
        let signal = (!draining).then_some(&mut *timers.shutdown);
        match next_conn_event(conn, after, signal).await {
            ConnEvent::Done(res) => return ended(res, activity),
            ConnEvent::Timer if timers.drain_until.is_some_and(|u| Instant::now() >= u) => {
                return Driven::Ended(None)
            }
            ConnEvent::Timer if draining => cut_stalled_streams(activity, settings),
            ConnEvent::Timer => {
                cut_stalled_streams(activity, settings);
                match expired(activity, settings) {
                    Some(Expired::HeaderRead | Expired::Send) => return Driven::Ended(None),
                    Some(Expired::Idle) => {
                        timers.drain_until = Some(Instant::now() + settings.drain_timeout);
                        graceful(conn);
                    }
                    None if may_park && activity.parkable(PARK_AFTER) => return Driven::Park,
                    None => {}
                }
            }
            ConnEvent::Shutdown => {
                timers.drain_until = Some(Instant::now() + settings.drain_timeout);
                if !timers.drains_softly(may_park) {
                    graceful(conn);
                }
            }
        }
    }
}

/// What a connection's future returned, as `drive` reports it.
fn ended<T, E: std::fmt::Display>(res: Result<T, E>, activity: &Activity) -> Driven<T> {
    Driven::Ended(match res {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::debug!(age = ?activity.age(), error = %e, "client connection ended with an error");
            None
        }
    })
}

/// A client timer that has run out.
enum Expired {
    /// A request head began arriving and was not complete in time: drop.
    HeaderRead,
    /// Nothing in flight and no byte moving for the idle timeout: close.
    Idle,
    /// A response stuck for the send timeout, the client reading nothing: drop.
    Send,
}

/// Which timer, if any, has run out; counted in `tern_client_timeouts_total`.
fn expired(activity: &Activity, settings: &ServerSettings) -> Option<Expired> {
    let (expired, kind) = if activity
        .head_pending_for()
        .is_some_and(|t| t >= settings.header_read_timeout)
    {
        (Expired::HeaderRead, "header_read")
    } else if activity
        .write_blocked_for()
        .is_some_and(|t| t >= settings.send_timeout)
    {
        (Expired::Send, "send")
    } else if activity
        .idle_for()
        .is_some_and(|t| t >= settings.idle_timeout)
    {
        (Expired::Idle, "idle")
    } else {
        return None;
    };
    metrics::counter!("tern_client_timeouts_total", "kind" => kind).increment(1);
    Some(expired)
}

/// HTTP/2: drops the responses of streams the client has read nothing of for
/// the send timeout (see stream_send.rs); counted in `tern_client_timeouts_total`.
fn cut_stalled_streams(activity: &Activity, settings: &ServerSettings) {
    if !activity.is_multiplexed() {
        return;
    }
    let cut = activity.streams.cut_stalled(settings.send_timeout);
    if cut > 0 {
        tracing::debug!(
            streams = cut,
            "cut HTTP/2 streams the client stopped reading"
        );
        metrics::counter!("tern_client_timeouts_total", "kind" => "stream_send")
            .increment(cut as u64);
    }
}

/// When the earliest timer could fire, given what the connection is doing now.
fn next_check(activity: &Activity, settings: &ServerSettings) -> Duration {
    let idle = activity.idle_for().map_or(settings.idle_timeout, |t| {
        settings.idle_timeout.saturating_sub(t)
    });
    let head = activity
        .head_pending_for()
        .map_or(settings.header_read_timeout, |t| {
            settings.header_read_timeout.saturating_sub(t)
        });
    let send = activity
        .write_blocked_for()
        .map_or(settings.send_timeout, |t| {
            settings.send_timeout.saturating_sub(t)
        });
    // A request that starts or ends changes the deadlines; re-checking at least every
    // MAX_WAIT keeps the timers accurate to about a second without per-byte wakeups.
    idle.min(head)
        .min(send)
        .min(MAX_WAIT)
        .max(Duration::from_millis(10))
}

/// Marks a request finished when its response body is done.
struct Finished(Arc<Activity>);

impl OnEnd for Finished {
    fn on_end(self, _complete: bool) {
        self.0.request_finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Poll;

    fn settings(drain_timeout: Duration) -> ServerSettings {
        ServerSettings {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            send_timeout: Duration::from_secs(600),
            max_header_bytes: 8192,
            max_headers: 100,
            drain_timeout,
        }
    }

    /// A connection's future keeps being polled at least every MAX_WAIT, while
    /// it serves and while it drains: a request in flight counts on those polls
    /// to see its response-header deadline coming (`HeaderDeadline`).
    #[tokio::test(start_paused = true)]
    async fn the_driver_polls_a_busy_connection_every_max_wait_draining_too() {
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&polls);
        // Never done, with a request in flight (so no idle timer, no parking).
        let mut conn = std::future::poll_fn(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
            Poll::<Result<(), std::io::Error>>::Pending
        });
        let activity = Arc::new(Activity::default());
        activity.request_started(false);
        let (tx, mut rx) = watch::channel(false);
        let settings = settings(Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        let mut timers = ConnTimers {
            activity: &activity,
            settings: &settings,
            shutdown: &mut rx,
            drain_until: None,
            handover: &AtomicBool::new(false),
        };
        let driving = drive(&mut conn, |_| {}, &mut timers, true);
        let mut driving = std::pin::pin!(driving);
        // Five seconds of serving, then the drain begins.
        let serving = tokio::time::timeout(Duration::from_secs(5), driving.as_mut()).await;
        assert!(serving.is_err(), "still serving");
        let before_drain = polls.load(Ordering::Relaxed);
        assert!(before_drain >= 5, "{before_drain} polls in 5 s of serving");
        tx.send(true).unwrap();
        let ended = driving.await;
        assert!(matches!(ended, Driven::Ended(None)));
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(15),
            "dropped at the drain's end"
        );
        let while_draining = polls.load(Ordering::Relaxed) - before_drain;
        assert!(
            while_draining >= 10,
            "{while_draining} polls in 10 s of draining"
        );
    }
}
