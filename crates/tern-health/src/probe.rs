//! One run of one check against one machine: a TCP connect or an HTTP/1.1 request.

use std::io;

use pollwatch::Watchdog;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Method, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// Sent with every HTTP check, so apps can tell checks from users in their logs.
pub const USER_AGENT_VALUE: &str = "tern-health";

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    #[error("cut by the spin watchdog: {0}")]
    Spun(String),
    #[error("connection refused")]
    ConnectRefused,
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("no response within {0:?}")]
    ResponseTimeout(Duration),
    #[error("bad status {0}")]
    BadStatus(u16),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("http error: {0}")]
    Http(#[from] hyper::Error),
    /// The check's method, path or Host cannot form a request; it fails every time.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// What to check, and where; `run` performs one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Passes when a TCP connection to `addr` is accepted.
    Tcp { addr: SocketAddr, timeout: Duration },
    /// Passes when `method path` over a fresh HTTP/1.1 connection answers 2xx or 3xx.
    Http {
        addr: SocketAddr,
        timeout: Duration,
        method: String,
        path: String,
        /// The Host header to send.
        host: String,
    },
}

impl Probe {
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Tcp { .. } => "tcp",
            Probe::Http { .. } => "http",
        }
    }

    /// One attempt, bounded as a whole by the probe's timeout.
    pub async fn run(&self) -> Result<(), ProbeError> {
        self.run_watched(None).await
    }

    /// One attempt, with the HTTP exchange under the spin watchdog when given.
    pub async fn run_watched(&self, watchdog: Option<&Watchdog>) -> Result<(), ProbeError> {
        match self {
            Probe::Tcp { addr, timeout } => {
                let deadline = Instant::now() + *timeout;
                // Dropped at once: being accepted is all a TCP check asks.
                connect(*addr, deadline, *timeout).await.map(drop)
            }
            Probe::Http {
                addr,
                timeout,
                method,
                path,
                host,
            } => {
                let deadline = Instant::now() + *timeout;
                let request = build_request(method, path, host)?;
                let stream = connect(*addr, deadline, *timeout).await?;
                let exchanged = match watchdog.map(Watchdog::register) {
                    Some(p) => {
                        p.set("state", "health-check");
                        p.set("upstream", addr.to_string());
                        let watched = p.watch(exchange(p.io(stream), request));
                        match timeout_at(deadline, watched).await {
                            Ok(Ok(r)) => Ok(r),
                            Ok(Err(spun)) => Ok(Err(ProbeError::Spun(spun.to_string()))),
                            Err(e) => Err(e),
                        }
                    }
                    None => timeout_at(deadline, exchange(stream, request)).await,
                };
                exchanged.map_err(|_| ProbeError::ResponseTimeout(*timeout))?
            }
        }
    }
}

async fn connect(
    addr: SocketAddr,
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream, ProbeError> {
    match timeout_at(deadline, TcpStream::connect(addr)).await {
        Err(_) => Err(ProbeError::ConnectTimeout(timeout)),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(ProbeError::ConnectRefused)
        }
        Ok(Err(e)) => Err(ProbeError::Io(e)),
        Ok(Ok(stream)) => Ok(stream),
    }
}

fn build_request(
    method: &str,
    path: &str,
    host: &str,
) -> Result<Request<Empty<Bytes>>, ProbeError> {
    let invalid =
        |what: &str, e: &dyn std::fmt::Display| ProbeError::InvalidRequest(format!("{what}: {e}"));
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| invalid("method", &e))?;
    let host = HeaderValue::from_str(host).map_err(|e| invalid("host", &e))?;
    Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host)
        .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
        .body(Empty::new())
        .map_err(|e| invalid("path", &e))
}

async fn exchange<IO>(stream: IO, request: Request<Empty<Bytes>>) -> Result<(), ProbeError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection is driven here rather than spawned, so it cannot outlive the
    // probe: when the response head arrives (or the timeout fires) it is dropped.
    let mut conn = pin!(conn);
    let mut response = pin!(sender.send_request(request));
    let response = tokio::select! {
        response = &mut response => response?,
        // A backend that answers and closes at once ends the connection in the same
        // poll that delivers the response, so the response is still awaited.
        closed = &mut conn => match (response.await, closed) {
            (Ok(response), _) => response,
            // The connection's own error says more than "canceled".
            (Err(_), Err(e)) | (Err(e), Ok(())) => return Err(e.into()),
        },
    };
    let status = response.status();
    // HAProxy's default: anything below 400 means the app is serving.
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(ProbeError::BadStatus(status.as_u16()))
    }
}
