//! Serving one client connection: HTTP/1.1 or HTTP/2 (by ALPN or preface), with the
//! header and idle timers, size limits, upgrades and a graceful end on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::activity::{Activity, ActivityIo};
use crate::body::{Guarded, OnEnd};
use crate::proxy::{ConnInfo, Proxy};
use http_body_util::BodyExt;

/// Limits and timers of the HTTP server side.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// A request head must arrive in full within this time of its first byte.
    pub header_read_timeout: Duration,
    /// A connection with nothing in flight and no bytes moving is closed after this.
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// How long a connection may take to finish its in-flight requests once shutdown
    /// begins, before it is dropped.
    pub drain_timeout: Duration,
}

/// Serves HTTP on `io` until the client leaves, a timer fires, or `shutdown` turns true.
pub async fn serve_connection<IO>(
    io: IO,
    info: ConnInfo,
    h2_by_alpn: bool,
    proxy: Arc<Proxy>,
    settings: &ServerSettings,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    if h2_by_alpn {
        activity.set_multiplexed();
    }
    let io = TokioIo::new(ActivityIo::new(io, Arc::clone(&activity)));

    let svc_activity = Arc::clone(&activity);
    let info = Arc::new(info);
    let service = service_fn(move |req: Request<Incoming>| {
        let proxy = Arc::clone(&proxy);
        let info = Arc::clone(&info);
        let activity = Arc::clone(&svc_activity);
        // Boxed per request: hyper keeps room for one in-flight service future per
        // connection for the connection's whole life, and Tern's (over 4 KiB) would
        // otherwise weigh on every idle keep-alive connection.
        Box::pin(async move {
            activity.request_started();
            let resp = proxy.handle(req, &info).await;
            let (parts, body) = resp.into_parts();
            let body = Guarded::new(body, Box::new(Finished(activity))).boxed_unsync();
            Ok::<_, Infallible>(http::Response::from_parts(parts, body))
        })
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Tern's own header timer (below) starts at a head's first byte, so that an
        // idle keep-alive connection is governed by the idle timeout alone.
        .header_read_timeout(None)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .max_headers(settings.max_headers)
        // A client that ends its side right after a request (a POST followed by
        // close_notify or FIN) still gets its answer, as nginx and HAProxy give it.
        .half_close(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);

    let mut draining = false;
    loop {
        let wait = next_check(&activity, settings);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(age = ?activity.age(), error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep(wait), if !draining => {
                if activity
                    .head_pending_for()
                    .is_some_and(|t| t >= settings.header_read_timeout)
                {
                    metrics::counter!("tern_client_timeouts_total", "kind" => "header_read").increment(1);
                    return;
                }
                if activity.idle_for().is_some_and(|t| t >= settings.idle_timeout) {
                    metrics::counter!("tern_client_timeouts_total", "kind" => "idle").increment(1);
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(settings.drain_timeout), if draining => {
                return;
            }
        }
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
    // A request that starts or ends changes the deadlines; re-checking at least every
    // second keeps the timers accurate to about a second without per-byte wakeups.
    idle.min(head)
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(10))
}

/// Marks a request finished when its response body is done.
struct Finished(Arc<Activity>);

impl OnEnd for Finished {
    fn on_end(self: Box<Self>, _complete: bool) {
        self.0.request_finished();
    }
}
