//! What goes to disk, owner-only and written whole: issued certificates
//! (`acme-HOSTNAME.pem` in the certificate directory, chain then key) and the
//! account; and when a certificate is due for renewal.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The file an ACME certificate for `hostname` is kept in, in `tls.certs_dir`.
pub(crate) fn certificate_path(dir: &Path, hostname: &str) -> PathBuf {
    dir.join(format!("acme-{hostname}.pem"))
}

/// The leaf's validity, from a PEM file; `None` if there is no readable one.
pub(crate) fn validity(path: &Path) -> Option<(SystemTime, SystemTime)> {
    let leaf = CertificateDer::pem_file_iter(path).ok()?.next()?.ok()?;
    leaf_validity(&leaf)
}

/// The leaf's validity, from PEM text.
pub(crate) fn validity_of_pem(pem: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let leaf = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    leaf_validity(&leaf)
}

fn leaf_validity(leaf: &CertificateDer<'_>) -> Option<(SystemTime, SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Some((
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    ))
}

/// Writes `bytes` readable by the owner only, in a directory only the owner can enter.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    // A name of its own per write: the ACME task and the fleet's follower may
    // write the same certificate at once, and must not share a half-written file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!("tmp{}", WRITES.fetch_add(1, Ordering::Relaxed)));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// When a certificate valid from `not_before` to `not_after` is renewed: at two
/// thirds of its lifetime, as Let's Encrypt advises for 90-day certificates.
pub(crate) fn renewal_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_before + life * 2 / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_two_thirds_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let end = start + Duration::from_secs(90 * 86_400);
        assert_eq!(
            renewal_time(start, end),
            start + Duration::from_secs(60 * 86_400)
        );
        assert_eq!(
            renewal_time(end, start),
            end,
            "a backwards validity is due at once"
        );
    }
}
