//! A configuration's `[limits]` as each part of Tern takes them: built once at
//! start and again at each reload, so the two cannot drift apart.

use std::sync::Arc;

use tern_config::Config;
use tern_http::{ProxySettings, ServerSettings};
use tern_listen::ConnLimits;

/// The proxy's settings; `test_hooks` belongs to the process.
pub fn proxy_settings(config: &Config, test_hooks: bool) -> ProxySettings {
    let limits = &config.limits;
    ProxySettings {
        region: config.node.region.clone(),
        connect_attempts: limits.connect_attempts,
        response_header_timeout: limits.response_header_timeout,
        queue_timeout: limits.queue_timeout,
        connect_timeout: limits.connect_timeout,
        body_read_timeout: limits.body_read_timeout,
        request_buffer: limits.request_buffer,
        test_hooks,
    }
}

/// What a client connection reads as it starts.
pub fn conn_limits(config: &Config) -> Arc<ConnLimits> {
    let limits = &config.limits;
    Arc::new(ConnLimits {
        server: ServerSettings {
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            send_timeout: limits.send_timeout,
            max_header_bytes: limits.max_header_bytes,
            max_headers: limits.max_headers,
            drain_timeout: limits.drain_timeout,
        },
        connect_timeout: limits.connect_timeout,
        connect_attempts: limits.connect_attempts,
        queue_timeout: limits.queue_timeout,
    })
}
