//! Tern's HTTP path: serving clients over HTTP/1.1 and HTTP/2, routing each request
//! to a machine through the phases in LIFECYCLE.md, and relaying the answer.
#![forbid(unsafe_code)]

mod acme;
mod activity;
mod binding;
mod body;
mod body_deadline;
mod buffer;
mod conn_event;
mod connect;
mod context;
mod error;
mod header_deadline;
mod headers;
mod idle_pool;
mod in_task;
mod live_settings;
mod noted;
mod prefixed;
mod proxy;
mod request_metrics;
mod respond;
mod rewrite;
mod route;
mod send;
mod server;
mod stream_send;
mod tunnel;
mod upstream;
mod wake;
mod ws_frames;
mod ws_goodbye;

pub use activity::{Activity, ActivityIo};
pub use binding::ConnBindings;
pub use body::{full, Body, BoxError};
pub use context::{ConnInfo, Proxy};
pub use error::{ErrorCode, ProxyError};
pub use live_settings::ProxySettings;
pub use server::{serve_connection, ServerSettings};
pub use upstream::Upstreams;
