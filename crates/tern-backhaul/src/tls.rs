//! The backhaul's mutual TLS: every node presents a certificate the fleet CA
//! signed, and accepts only peers that do the same.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::BackhaulError;

/// The ALPN the backhaul speaks: HTTP/2 only.
pub const ALPN: &[u8] = b"h2";

/// A node's backhaul TLS: its certificate and key, and the fleet CA.
#[derive(Clone)]
pub struct FleetTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for FleetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetTls").finish_non_exhaustive()
    }
}

impl FleetTls {
    /// Reads the fleet CA certificate and this node's certificate and key (PEM).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, BackhaulError> {
        let bad = |path: &Path, e: rustls_pki_types::pem::Error| BackhaulError::BadPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(ca, e))? {
            roots.add(c.map_err(|e| bad(ca, e))?)?;
        }
        if roots.is_empty() {
            return Err(BackhaulError::BadPem {
                path: ca.to_path_buf(),
                reason: "no certificate in the file".into(),
            });
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(cert, e))?;
        let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e))?;
        let roots = Arc::new(roots);
        // AES-128-GCM first, as for clients (tern-tls): its key schedule hashes with
        // SHA-256, which has CPU instructions where SHA-384 does not.
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let provider = Arc::new(provider);

        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| BackhaulError::Verifier(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), private.clone_key())?;
        server.alpn_protocols = vec![ALPN.to_vec()];

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        Ok(FleetTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_prefer_aes_128_gcm() {
        let dir = tempfile::tempdir().unwrap();
        crate::identity::generate_ca(dir.path()).unwrap();
        let (cert, key) = crate::identity::generate_node(dir.path(), "n", dir.path()).unwrap();
        let tls = FleetTls::load(&dir.path().join(crate::identity::CA_CERT), &cert, &key).unwrap();
        for provider in [tls.client.crypto_provider(), tls.server.crypto_provider()] {
            assert_eq!(
                provider.cipher_suites[0].suite(),
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            );
        }
        assert!(FleetTls::load(&cert, &cert, &dir.path().join("missing.key")).is_err());
    }
}
