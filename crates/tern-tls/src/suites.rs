//! Which cipher suite a handshake settles on: AES-128-GCM first, unless the client
//! puts ChaCha20-Poly1305 first.
//!
//! Left to the client, OpenSSL and most others pick AES-256-GCM with SHA-384 for TLS
//! 1.3. On a server with AES instructions, AES-128-GCM with SHA-256 is as safe for
//! this use and cheaper: SHA-256 runs on the CPU's SHA extensions where SHA-384 has
//! none, and the key schedule hashes dozens of blocks per handshake (a resumed TLS 1.3
//! handshake took 10% less CPU in Tern; bench/NOTES.md). A client that lists
//! ChaCha20-Poly1305 first is saying it has no AES hardware, so it keeps its choice,
//! as Go's crypto/tls and BoringSSL decide.

use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, SupportedCipherSuite};

/// Puts the AES-128-GCM suites of `provider` first, keeping the order of the rest.
pub(crate) fn aes128_first(provider: &mut CryptoProvider) {
    provider
        .cipher_suites
        .sort_by_key(|suite| !is_aes128_gcm(suite.suite()));
}

/// Whether the handshake should follow the client's order: its first suite that the
/// server also supports is a ChaCha20-Poly1305 one. GREASE values and suites the
/// server lacks are skipped, as the negotiation itself would skip them.
pub(crate) fn follows_client(offered: &[CipherSuite], supported: &[SupportedCipherSuite]) -> bool {
    offered
        .iter()
        .find(|c| supported.iter().any(|s| s.suite() == **c))
        .is_some_and(|c| is_chacha20(*c))
}

fn is_aes128_gcm(suite: CipherSuite) -> bool {
    matches!(
        suite,
        CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

fn is_chacha20(suite: CipherSuite) -> bool {
    matches!(
        suite,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite as C;

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    #[test]
    fn aes128_gcm_moves_to_the_front_and_the_rest_keep_their_order() {
        let before: Vec<C> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        let mut p = provider();
        aes128_first(&mut p);
        let after: Vec<C> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(after[0], C::TLS13_AES_128_GCM_SHA256);
        let (front, rest) = after.split_at(after.iter().filter(|c| is_aes128_gcm(**c)).count());
        assert!(front.iter().all(|c| is_aes128_gcm(*c)), "{front:?}");
        let others: Vec<C> = before.into_iter().filter(|c| !is_aes128_gcm(*c)).collect();
        assert_eq!(rest, others.as_slice());
    }

    #[test]
    fn only_a_client_leading_with_chacha20_keeps_its_order() {
        let supported = provider().cipher_suites;
        let grease = C::Unknown(0x0a0a);
        let unsupported = C::TLS_RSA_WITH_AES_128_CBC_SHA;
        for (offered, follows) in [
            (
                vec![
                    C::TLS13_AES_256_GCM_SHA384,
                    C::TLS13_CHACHA20_POLY1305_SHA256,
                ],
                false,
            ),
            (
                vec![
                    C::TLS13_CHACHA20_POLY1305_SHA256,
                    C::TLS13_AES_128_GCM_SHA256,
                ],
                true,
            ),
            (
                vec![grease, unsupported, C::TLS13_CHACHA20_POLY1305_SHA256],
                true,
            ),
            (
                vec![
                    grease,
                    C::TLS13_AES_128_GCM_SHA256,
                    C::TLS13_CHACHA20_POLY1305_SHA256,
                ],
                false,
            ),
            (vec![C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256], true),
            (vec![], false),
            (vec![grease, unsupported], false),
        ] {
            assert_eq!(follows_client(&offered, &supported), follows, "{offered:?}");
        }
    }
}
