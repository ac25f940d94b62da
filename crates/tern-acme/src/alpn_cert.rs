//! The self-signed certificate of a TLS-ALPN-01 answer (RFC 8737, 3): the one
//! hostname as its only name, and the key authorization's SHA-256 digest in the
//! critical acmeIdentifier extension.

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::AcmeError;

pub(crate) fn tls_alpn01_cert(
    hostname: &str,
    digest: &[u8],
) -> Result<Arc<CertifiedKey>, AcmeError> {
    let fail = |e: &dyn std::fmt::Display| {
        AcmeError::local(hostname, format!("making the TLS-ALPN-01 certificate: {e}"))
    };
    let mut params =
        rcgen::CertificateParams::new(vec![hostname.to_owned()]).map_err(|e| fail(&e))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
    let cert = params.self_signed(&key).map_err(|e| fail(&e))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| fail(&e))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn names_the_host_alone_and_carries_the_digest_in_a_critical_extension() {
        let digest = [7u8; 32];
        let cert = tls_alpn01_cert("a.test", &digest).unwrap();
        let (_, x509) = X509Certificate::from_der(cert.cert[0].as_ref()).unwrap();
        let sans: Vec<String> = x509
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(sans, vec!["DNSName(a.test)".to_string()]);
        let oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 5, 5, 7, 1, 31]).unwrap();
        let ext = x509
            .extensions()
            .iter()
            .find(|e| e.oid == oid)
            .expect("the acmeIdentifier extension");
        assert!(ext.critical);
        // DER OCTET STRING of 32 bytes: tag 0x04, length 0x20, the digest.
        assert_eq!(&ext.value[..2], &[0x04, 0x20]);
        assert_eq!(&ext.value[2..], &digest);
    }
}
