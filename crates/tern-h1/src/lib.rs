//! HTTP/1.1 for requests without a body, on both sides of a proxy, run inside the
//! task that holds the connection.
//!
//! The client side: hyper's client gives every connection a task of its own and
//! links it to the caller with channels, so a proxied request crosses tasks three
//! times. For the common request with no body, Tern writes the head itself,
//! parses the answer with httparse and reads the body straight off the socket
//! from the task that relays it. Requests with bodies and upgrades still go
//! through hyper.
//!
//! The server side ([`serve`]): a client connection's bodyless requests are
//! parsed and answered without hyper's connection state, dispatcher and buffers;
//! the first request that needs more (a body, an upgrade, a bad head) is handed,
//! with every byte read, to a general server.
#![forbid(unsafe_code)]

mod body;
mod chunked;
mod date;
mod exchange;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod head;
mod header_maps;
mod serve;
mod server_head;

use std::io;

pub use body::{Recycle, ResponseBody};
pub use exchange::{send, Connection};
pub use head::{MAX_HEADERS, MAX_HEAD_BYTES};
pub use header_maps::recycle as recycle_header_map;
pub use serve::{serve, Inbound, Limits, Served};

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the request target does not fit a request line")]
    BadTarget,
    #[error("malformed response head: {0}")]
    BadHead(httparse::Error),
    #[error("the response head has more than {MAX_HEADERS} fields")]
    TooManyHeaders,
    #[error("the response head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("response status {0} is not valid")]
    BadStatus(u16),
    #[error("malformed header name in the response")]
    BadHeaderName,
    #[error("malformed header value in the response")]
    BadHeaderValue,
    #[error("malformed Content-Length in the response")]
    BadContentLength,
    /// RFC 9112 (6.1): no transfer coding in an HTTP/1.0 message, whose
    /// recipients may not know it; its framing cannot be trusted.
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    Http10TransferEncoding,
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
    #[error("the machine switched protocols without being asked to")]
    UnaskedSwitch,
    /// The connection ended before a single byte of response: on a reused
    /// connection, the machine had most likely closed it while it was idle.
    #[error("the connection was closed before any response")]
    ClosedBeforeResponse,
    #[error("the connection was closed in the middle of the response head")]
    ClosedInHead,
    #[error("the connection was closed before the end of the body")]
    ClosedInBody,
    #[error("{0}")]
    Io(#[source] io::Error),
    /// Server side: the response body failed while it was being written.
    #[error("the response body failed: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Server side: the response body's size differs from its Content-Length.
    #[error("the response body does not match its length")]
    BodyLength,
}

impl Error {
    /// The machine sent something that is not a valid HTTP/1.1 response.
    pub fn is_malformed(&self) -> bool {
        !matches!(
            self,
            Error::ClosedBeforeResponse
                | Error::ClosedInHead
                | Error::ClosedInBody
                | Error::Io(_)
                | Error::BadTarget
                | Error::Body(_)
                | Error::BodyLength
        )
    }
}
