//! Who a node is on the backhaul: the fleet CA that signs every node's certificate,
//! the name a node's certificate carries, and reading it back from a peer's.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::BackhaulError;

/// The DNS name in node `id`'s certificate, which peers check when they dial it.
pub fn node_dns_name(id: &str) -> String {
    format!("{id}.{NODE_SUFFIX}")
}

/// Node names live under this suffix, so a node certificate is never mistaken for a
/// public site's.
const NODE_SUFFIX: &str = "node.tern";

/// The files `tern fleet ca` writes.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";

/// Writes a new fleet CA (`ca.crt`, and `ca.key` with owner-only permissions) in
/// `dir`. Refuses to replace an existing key: every node certificate it signed
/// would stop being trusted.
pub fn generate_ca(dir: &Path) -> Result<PathBuf, BackhaulError> {
    let key_path = dir.join(CA_KEY);
    if key_path.exists() {
        return Err(BackhaulError::Exists(key_path));
    }
    let key = KeyPair::generate().map_err(BackhaulError::generate)?;
    let cert = ca_params()?
        .self_signed(&key)
        .map_err(BackhaulError::generate)?;
    fs::create_dir_all(dir).map_err(|e| BackhaulError::io(dir, e))?;
    write(&key_path, key.serialize_pem().as_bytes(), true)?;
    let cert_path = dir.join(CA_CERT);
    write(&cert_path, cert.pem().as_bytes(), false)?;
    Ok(cert_path)
}

fn ca_params() -> Result<CertificateParams, BackhaulError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(BackhaulError::generate)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "Tern fleet CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Writes `ID.crt` and `ID.key` in `out` for node `id`, signed by the CA in
/// `ca_dir`. The certificate serves both ways: as a server to peers that dial the
/// node, and as a client when it dials them.
pub fn generate_node(
    ca_dir: &Path,
    id: &str,
    out: &Path,
) -> Result<(PathBuf, PathBuf), BackhaulError> {
    let read = |name: &str| {
        let path = ca_dir.join(name);
        fs::read_to_string(&path).map_err(|e| BackhaulError::io(&path, e))
    };
    let ca_key = KeyPair::from_pem(&read(CA_KEY)?).map_err(BackhaulError::generate)?;
    // The CA's name is fixed, so its parameters and key make the same issuer as
    // the certificate `generate_ca` wrote; that certificate must be there too.
    read(CA_CERT)?;
    let ca = ca_params()?;
    let issuer = Issuer::from_params(&ca, &ca_key);
    let key = KeyPair::generate().map_err(BackhaulError::generate)?;
    let mut params =
        CertificateParams::new(vec![node_dns_name(id)]).map_err(BackhaulError::generate)?;
    params.distinguished_name.push(DnType::CommonName, id);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(BackhaulError::generate)?;
    fs::create_dir_all(out).map_err(|e| BackhaulError::io(out, e))?;
    let key_path = out.join(format!("{id}.key"));
    let cert_path = out.join(format!("{id}.crt"));
    write(&key_path, key.serialize_pem().as_bytes(), true)?;
    write(&cert_path, cert.pem().as_bytes(), false)?;
    Ok((cert_path, key_path))
}

/// The node id a peer's certificate names (its `ID.node.tern` DNS name).
pub fn peer_node_id(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => dns
            .strip_suffix(NODE_SUFFIX)
            .and_then(|id| id.strip_suffix('.'))
            .filter(|id| !id.is_empty())
            .map(str::to_owned),
        _ => None,
    })
}

fn write(path: &Path, contents: &[u8], secret: bool) -> Result<(), BackhaulError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(|e| BackhaulError::io(path, e))?;
    file.write_all(contents)
        .map_err(|e| BackhaulError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    #[test]
    fn a_node_certificate_names_its_node_and_the_ca_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ca = generate_ca(dir.path()).unwrap();
        assert!(ca.exists());
        assert!(matches!(
            generate_ca(dir.path()),
            Err(BackhaulError::Exists(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(CA_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (cert, _) = generate_node(dir.path(), "ams-1", dir.path()).unwrap();
        let der = CertificateDer::from_pem_file(&cert).unwrap();
        assert_eq!(peer_node_id(&der).as_deref(), Some("ams-1"));
        assert_eq!(peer_node_id(b"not a certificate"), None);
    }
}
