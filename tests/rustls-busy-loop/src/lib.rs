//! Reproduces the busy loop of February 2025 with the versions of the incident
//! (rustls 0.23.5, tokio-rustls 0.26.0) and shows `pollwatch` catching it: see
//! [`scenario`]. The same scenario runs against the workspace's rustls in
//! `crates/tern-tls/tests/busy_loop.rs`, where the server reaches EOF.
//!
//! Not a member of the parent workspace; run with
//! `cargo test --manifest-path tests/rustls-busy-loop/Cargo.toml --locked`.
#![forbid(unsafe_code)]

pub mod scenario;

/// tern-tls's TLS stuck check, the very same file, compiled against rustls 0.23.5.
#[path = "../../../crates/tern-tls/src/stuck.rs"]
pub mod stuck;
