//! The one error type of this crate: file problems name the file, handshake failures name their cause.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong loading certificates or accepting a TLS connection.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file is not valid PEM, or holds no item of the expected kind.
    #[error("{path}: {reason}")]
    BadPem { path: PathBuf, reason: String },
    /// A certificate's DER could not be parsed as X.509.
    #[error("{path}: not a valid X.509 certificate: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    /// The private key is of a kind the ring provider cannot sign with, or does not match the certificate.
    #[error("{path}: unusable private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    /// A certificate has neither a DNS subject alternative name nor a common name to serve.
    #[error("{path}: certificate names no host (no DNS SAN and no CN)")]
    NoNames { path: PathBuf },
    /// `NAME.crt` is present without `NAME.key`.
    #[error("{path}: no matching key file {key}")]
    MissingKey { path: PathBuf, key: PathBuf },
    /// Both `NAME.pem` and `NAME.crt` exist, so which one is meant is ambiguous.
    #[error("{path}: both NAME.pem and NAME.crt exist for this name; keep one")]
    DuplicateStem { path: PathBuf },
    /// `unknown_sni = default-cert` names a certificate the directory does not hold.
    #[error("default certificate `{name}` not found in {dir} (expected {name}.crt+{name}.key or {name}.pem)")]
    DefaultCertMissing { dir: PathBuf, name: String },
    /// Generating a self-signed certificate failed.
    #[error("generating a self-signed certificate: {reason}")]
    Generate { reason: String },
    /// The client did not finish the handshake in time.
    #[error("TLS handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// No certificate serves the client's SNI (or it sent none) and unknown names are rejected.
    #[error("TLS handshake refused: no certificate for the requested server name")]
    UnknownSni,
    /// The peer broke the protocol or offered nothing acceptable (old version, no common cipher).
    #[error("TLS handshake failed: {0}")]
    Protocol(#[source] io::Error),
    /// The transport failed during the handshake (reset, early close).
    #[error("TLS handshake I/O: {0}")]
    HandshakeIo(#[source] io::Error),
    /// The handshake was an ACME TLS-ALPN-01 validation, which ends with the
    /// handshake: answered, or refused for a name with no open challenge.
    #[error("{}", if *answered { "an ACME TLS-ALPN-01 validation, answered" } else { "an ACME TLS-ALPN-01 validation for a name with no open challenge, refused" })]
    AcmeChallenge { answered: bool },
}

impl TlsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        TlsError::Io {
            path: path.into(),
            source,
        }
    }

    /// The label used in `tern_tls_handshake_errors_total{reason=...}`; `None` for non-handshake errors.
    pub fn handshake_reason(&self) -> Option<&'static str> {
        match self {
            TlsError::HandshakeTimeout(_) => Some("timeout"),
            TlsError::UnknownSni => Some("unknown_sni"),
            TlsError::Protocol(_) => Some("protocol"),
            TlsError::HandshakeIo(_) => Some("io"),
            TlsError::AcmeChallenge { .. } => Some("acme_no_challenge"),
            _ => None,
        }
    }
}
