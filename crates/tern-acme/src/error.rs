//! The one error type of this crate: each names the hostname or file it is about
//! and, for the ACME server's refusals, its problem document.

use std::path::PathBuf;

/// What can go wrong obtaining a certificate.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The account's credentials could not be read or written.
    #[error("ACME account file {path}: {reason}")]
    AccountFile { path: PathBuf, reason: String },
    /// The ACME server (or the way to it) failed a request; `problem` is its
    /// problem document when it sent one.
    #[error("ACME {step} for {hostname}: {problem}")]
    Server {
        hostname: String,
        step: &'static str,
        problem: String,
    },
    /// The server offered no challenge of the configured type.
    #[error("ACME server offers no {challenge} challenge for {hostname}")]
    NoChallenge {
        hostname: String,
        challenge: &'static str,
    },
    /// Validation failed: the order became invalid.
    #[error("ACME validation of {hostname} failed: {problem}")]
    Invalid { hostname: String, problem: String },
    /// The fleet key file is missing or malformed.
    #[error("acme.fleet_key {path}: {reason}")]
    FleetKey { path: PathBuf, reason: String },
    /// etcd, where the fleet shares orders, failed a request or was unreachable.
    #[error("{hostname}: sharing with the fleet in etcd: {reason}")]
    Fleet { hostname: String, reason: String },
    /// Making the TLS-ALPN-01 certificate, or writing the issued one, failed.
    #[error("{hostname}: {reason}")]
    Local { hostname: String, reason: String },
}

impl AcmeError {
    pub(crate) fn server(hostname: &str, step: &'static str, e: instant_acme::Error) -> Self {
        AcmeError::Server {
            hostname: hostname.to_owned(),
            step,
            problem: e.to_string(),
        }
    }

    pub(crate) fn fleet(hostname: &str, reason: impl std::fmt::Display) -> Self {
        AcmeError::Fleet {
            hostname: hostname.to_owned(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn local(hostname: &str, reason: impl std::fmt::Display) -> Self {
        AcmeError::Local {
            hostname: hostname.to_owned(),
            reason: reason.to_string(),
        }
    }
}
