//! Errors Tern answers itself, each with a stable code sent in the `Tern-Error`
//! header and the body, so users can tell one failure from another. docs/errors.md
//! lists them; keep the two in step.

use http::{HeaderValue, Response, StatusCode};

use crate::body::{full, Body};

/// The stable codes. Their text never changes once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    NoAppForHost,
    NoServiceForPort,
    NoHealthyMachine,
    QueueTimeout,
    QueueFull,
    UpstreamConnectFailed,
    UpstreamConnectTimeout,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamBadResponse,
    RequestBodyTooLarge,
    MachineUnavailable,
    BackhaulConnectFailed,
    BackhaulReset,
    UnknownPeer,
    BadRequestBody,
    RequestBodyTimeout,
    Overloaded,
    MachineStartTimeout,
    MachineStartFailed,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 21] = [
        ErrorCode::BadRequest,
        ErrorCode::NoAppForHost,
        ErrorCode::NoServiceForPort,
        ErrorCode::NoHealthyMachine,
        ErrorCode::QueueTimeout,
        ErrorCode::QueueFull,
        ErrorCode::UpstreamConnectFailed,
        ErrorCode::UpstreamConnectTimeout,
        ErrorCode::UpstreamReset,
        ErrorCode::UpstreamTimeout,
        ErrorCode::UpstreamBadResponse,
        ErrorCode::RequestBodyTooLarge,
        ErrorCode::MachineUnavailable,
        ErrorCode::BackhaulConnectFailed,
        ErrorCode::BackhaulReset,
        ErrorCode::UnknownPeer,
        ErrorCode::BadRequestBody,
        ErrorCode::RequestBodyTimeout,
        ErrorCode::Overloaded,
        ErrorCode::MachineStartTimeout,
        ErrorCode::MachineStartFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NoAppForHost => "no_app_for_host",
            ErrorCode::NoServiceForPort => "no_service_for_port",
            ErrorCode::NoHealthyMachine => "no_healthy_machine",
            ErrorCode::QueueTimeout => "queue_timeout",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::UpstreamConnectFailed => "upstream_connect_failed",
            ErrorCode::UpstreamConnectTimeout => "upstream_connect_timeout",
            ErrorCode::UpstreamReset => "upstream_reset",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamBadResponse => "upstream_bad_response",
            ErrorCode::RequestBodyTooLarge => "request_body_too_large",
            ErrorCode::MachineUnavailable => "machine_unavailable",
            ErrorCode::BackhaulConnectFailed => "backhaul_connect_failed",
            ErrorCode::BackhaulReset => "backhaul_reset",
            ErrorCode::UnknownPeer => "unknown_peer",
            ErrorCode::BadRequestBody => "bad_request_body",
            ErrorCode::RequestBodyTimeout => "request_body_timeout",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::MachineStartTimeout => "machine_start_timeout",
            ErrorCode::MachineStartFailed => "machine_start_failed",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::NoAppForHost => StatusCode::NOT_FOUND,
            ErrorCode::NoServiceForPort => StatusCode::NOT_FOUND,
            ErrorCode::NoHealthyMachine => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::QueueTimeout => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::UpstreamConnectFailed => StatusCode::BAD_GATEWAY,
            ErrorCode::UpstreamConnectTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::UpstreamReset => StatusCode::BAD_GATEWAY,
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::UpstreamBadResponse => StatusCode::BAD_GATEWAY,
            ErrorCode::RequestBodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::MachineUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::BackhaulConnectFailed => StatusCode::BAD_GATEWAY,
            ErrorCode::BackhaulReset => StatusCode::BAD_GATEWAY,
            ErrorCode::UnknownPeer => StatusCode::FORBIDDEN,
            ErrorCode::BadRequestBody => StatusCode::BAD_REQUEST,
            ErrorCode::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::MachineStartTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::MachineStartFailed => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A failure of one request, turned into Tern's own error response.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {detail}", code = .code.as_str())]
pub struct ProxyError {
    pub code: ErrorCode,
    pub detail: String,
}

impl ProxyError {
    /// Cold, like every error path: LLVM then lays the branches that make one
    /// out of the way of a request's hot code (the proxy's phases are large,
    /// and their instruction-cache misses cost more than their instructions).
    #[cold]
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ProxyError {
            code,
            detail: detail.into(),
        }
    }

    /// The response: status from the code, `Tern-Error: CODE`, a one-line text body.
    #[cold]
    pub fn into_response(self) -> Response<Body> {
        let body = format!("tern error {}: {}\n", self.code.as_str(), self.detail);
        let mut resp = Response::new(full(body));
        *resp.status_mut() = self.code.status();
        let h = resp.headers_mut();
        h.insert("tern-error", HeaderValue::from_static(self.code.as_str()));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_documented() {
        let docs = include_str!("../../../docs/errors.md");
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {}", code.as_str());
            assert!(
                docs.contains(&format!("`{}`", code.as_str())),
                "docs/errors.md does not document {}",
                code.as_str()
            );
        }
    }
}
