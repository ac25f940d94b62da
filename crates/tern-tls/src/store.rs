//! The certificate directory: reading `NAME.crt`+`NAME.key` or `NAME.pem` files into servable keys.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tern_config::UnknownSni;
use x509_parser::extensions::GeneralName;

use crate::error::TlsError;
use crate::reload::Fingerprint;
use crate::resolve::{CertInfo, Index, LoadedCert};

/// Certificates from one directory, looked up by SNI without locking and swapped whole on reload.
pub struct CertStore {
    pub(crate) dir: PathBuf,
    pub(crate) unknown: UnknownSni,
    pub(crate) index: ArcSwap<Index>,
    /// Serialises reloads so two of them cannot interleave and store an older snapshot last.
    pub(crate) reload_lock: Mutex<()>,
    /// The directory as it was when last read, so the poller reloads only on change.
    pub(crate) last_seen: Mutex<Option<Fingerprint>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("dir", &self.dir)
            .field("unknown", &self.unknown)
            .field("certificates", &self.index.load().certs.len())
            .finish()
    }
}

impl CertStore {
    /// Reads every pair in `dir`. Fails on any bad file, and if `DefaultCert(name)` names no pair.
    pub fn load(dir: impl Into<PathBuf>, unknown: UnknownSni) -> Result<Arc<CertStore>, TlsError> {
        let dir = dir.into();
        let fingerprint = Fingerprint::of(&dir)?;
        let index = Index::build(read_dir(&dir)?, &unknown, &dir)?;
        tracing::info!(
            dir = %dir.display(),
            certificates = index.certs.len(),
            names = index.name_count(),
            "loaded TLS certificates"
        );
        Ok(Arc::new(CertStore {
            dir,
            unknown,
            index: ArcSwap::from_pointee(index),
            reload_lock: Mutex::new(()),
            last_seen: Mutex::new(Some(fingerprint)),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn unknown_sni(&self) -> &UnknownSni {
        &self.unknown
    }

    /// The certificate a handshake with this SNI would get; `None` means it would be rejected.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.index.load().lookup(sni).cloned()
    }

    /// Whether a certificate names `sni` (the fallback of `unknown_sni` does not count).
    pub fn names(&self, sni: &str) -> bool {
        self.index.load().named(sni).is_some()
    }

    /// What is being served now, sorted by stem.
    pub fn certificates(&self) -> Vec<CertInfo> {
        self.index.load().certs.clone()
    }
}

/// Whether a directory entry is one the store reads; dotfiles are skipped so editors'
/// and tools' temporary files (and Kubernetes' `..data`) never count.
pub(crate) fn cert_file_kind(name: &str) -> Option<(&str, &str)> {
    if name.starts_with('.') {
        return None;
    }
    let (stem, ext) = name.rsplit_once('.')?;
    match ext {
        "crt" | "key" | "pem" if !stem.is_empty() => Some((stem, ext)),
        _ => None,
    }
}

/// Reads all pairs, sorted by stem.
pub(crate) fn read_dir(dir: &Path) -> Result<Vec<LoadedCert>, TlsError> {
    let mut crt = BTreeSet::new();
    let mut key = BTreeSet::new();
    let mut pem = BTreeSet::new();
    for entry in fs::read_dir(dir).map_err(|e| TlsError::io(dir, e))? {
        let entry = entry.map_err(|e| TlsError::io(dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some((stem, ext)) = cert_file_kind(&name) else {
            continue;
        };
        // Follows symlinks, as mounted secrets are usually links to the real files.
        let meta = fs::metadata(entry.path()).map_err(|e| TlsError::io(entry.path(), e))?;
        if !meta.is_file() {
            continue;
        }
        let set = match ext {
            "crt" => &mut crt,
            "key" => &mut key,
            _ => &mut pem,
        };
        set.insert(stem.to_owned());
    }

    let provider = rustls::crypto::ring::default_provider();
    let stems: BTreeSet<&String> = crt.iter().chain(pem.iter()).collect();
    let mut loaded = Vec::with_capacity(stems.len());
    for stem in stems {
        let pem_path = dir.join(format!("{stem}.pem"));
        let crt_path = dir.join(format!("{stem}.crt"));
        let cert = if pem.contains(stem) {
            if crt.contains(stem) {
                return Err(TlsError::DuplicateStem { path: pem_path });
            }
            let bytes = read(&pem_path)?;
            load_pair(stem, &pem_path, &bytes, &pem_path, &bytes, &provider)?
        } else {
            let key_path = dir.join(format!("{stem}.key"));
            if !key.contains(stem) {
                return Err(TlsError::MissingKey {
                    path: crt_path,
                    key: key_path,
                });
            }
            let cert_bytes = read(&crt_path)?;
            let key_bytes = read(&key_path)?;
            load_pair(
                stem,
                &crt_path,
                &cert_bytes,
                &key_path,
                &key_bytes,
                &provider,
            )?
        };
        loaded.push(cert);
    }
    Ok(loaded)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|e| TlsError::io(path, e))
}

fn load_pair(
    stem: &str,
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<LoadedCert, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(cert_path, &e))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::BadPem {
            path: cert_path.to_path_buf(),
            reason: "no CERTIFICATE section".into(),
        });
    };
    let names = leaf_names(cert_path, leaf)?;
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::BadPem {
                path: key_path.to_path_buf(),
                reason: "no PRIVATE KEY section".into(),
            })
        }
        Err(e) => return Err(bad_pem(key_path, &e)),
    };
    // from_der also checks that the key is the certificate's, which catches a pair
    // caught half-replaced on disk.
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::BadKey {
        path: key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(LoadedCert {
        stem: stem.to_owned(),
        path: cert_path.to_path_buf(),
        names,
        key: Arc::new(certified),
    })
}

fn bad_pem(path: &Path, e: &pem::Error) -> TlsError {
    TlsError::BadPem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The DNS SANs of the leaf, or its CN when it has none (as old self-made certificates do).
fn leaf_names(path: &Path, leaf: &CertificateDer<'_>) -> Result<Vec<String>, TlsError> {
    let bad = |reason: String| TlsError::BadCertificate {
        path: path.to_path_buf(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| bad(e.to_string()))?;
    if !cert.validity().is_valid() {
        // Still served: refusing would turn an expired certificate into an outage of
        // every name in the directory, while clients can judge expiry themselves.
        tracing::warn!(path = %path.display(), not_after = %cert.validity().not_after, "certificate is outside its validity period");
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?;
    let mut names: Vec<String> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    if names.is_empty() {
        return Err(TlsError::NoNames {
            path: path.to_path_buf(),
        });
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::cert_file_kind;

    #[test]
    fn file_kinds() {
        assert_eq!(cert_file_kind("a.crt"), Some(("a", "crt")));
        assert_eq!(cert_file_kind("a.b.pem"), Some(("a.b", "pem")));
        assert_eq!(cert_file_kind(".a.crt"), None);
        assert_eq!(cert_file_kind("a.txt"), None);
        assert_eq!(cert_file_kind(".crt"), None);
    }
}
