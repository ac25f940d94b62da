//! The answers this node gives an ACME server's validations while an order is
//! open: HTTP-01 key authorizations by token, TLS-ALPN-01 certificates by
//! hostname. The ACME client sets them; the HTTP and TLS listeners read them.
//! Also the orders that handshakes ask for, in the on-demand mode ([`OnDemand`]).
#![forbid(unsafe_code)]

mod on_demand;

pub use on_demand::{Asked, OnDemand, Outcome};

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::sign::CertifiedKey;

/// Where an HTTP-01 validation asks for its token (RFC 8555, 8.3).
pub const HTTP01_PATH_PREFIX: &str = "/.well-known/acme-challenge/";

/// The ALPN protocol of a TLS-ALPN-01 validation (RFC 8737).
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// The open challenges' answers. Cheap to read when there are none.
#[derive(Default)]
pub struct Challenges {
    http01: RwLock<HashMap<String, String>>,
    tls_alpn01: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges")
            .field("http01", &read(&self.http01).len())
            .field("tls_alpn01", &read(&self.tls_alpn01).len())
            .finish()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // The maps hold plain values that no panic leaves half-written.
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl Challenges {
    pub fn new() -> Arc<Challenges> {
        Arc::new(Challenges::default())
    }

    /// Answer `GET /.well-known/acme-challenge/{token}` with `key_authorization`.
    pub fn set_http01(&self, token: &str, key_authorization: &str) {
        write(&self.http01).insert(token.to_owned(), key_authorization.to_owned());
    }

    pub fn remove_http01(&self, token: &str) {
        write(&self.http01).remove(token);
    }

    /// The key authorization for a request path, if it asks for an open token.
    pub fn http01_answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PATH_PREFIX)?;
        read(&self.http01).get(token).cloned()
    }

    /// Serve `cert` to a handshake for `hostname` that offers only `acme-tls/1`.
    pub fn set_tls_alpn01(&self, hostname: &str, cert: Arc<CertifiedKey>) {
        write(&self.tls_alpn01).insert(hostname.to_ascii_lowercase(), cert);
    }

    pub fn remove_tls_alpn01(&self, hostname: &str) {
        write(&self.tls_alpn01).remove(&hostname.to_ascii_lowercase());
    }

    pub fn tls_alpn01_cert(&self, hostname: &str) -> Option<Arc<CertifiedKey>> {
        read(&self.tls_alpn01)
            .get(&hostname.to_ascii_lowercase())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http01_answers_only_open_tokens_under_the_well_known_path() {
        let c = Challenges::new();
        c.set_http01("tok1", "tok1.thumb");
        assert_eq!(
            c.http01_answer("/.well-known/acme-challenge/tok1")
                .as_deref(),
            Some("tok1.thumb")
        );
        assert_eq!(c.http01_answer("/tok1"), None);
        assert_eq!(c.http01_answer("/.well-known/acme-challenge/tok2"), None);
        c.remove_http01("tok1");
        assert_eq!(c.http01_answer("/.well-known/acme-challenge/tok1"), None);
    }
}
