//! Picking a certificate for a server name: the immutable index built at each (re)load and its lookup rules.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tern_config::UnknownSni;

use crate::error::TlsError;
use crate::store::CertStore;

/// One certificate as read from the directory, before indexing.
pub(crate) struct LoadedCert {
    pub(crate) stem: String,
    pub(crate) path: PathBuf,
    pub(crate) names: Vec<String>,
    pub(crate) key: Arc<CertifiedKey>,
}

/// What the store serves: a certificate's stem, the file it came from and the names it answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub stem: String,
    pub path: PathBuf,
    pub names: Vec<String>,
}

/// An immutable snapshot of the directory; replaced whole on reload so readers never see half of one.
#[derive(Default)]
pub(crate) struct Index {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the parent domain: `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// Served for no SNI or an unknown one; `None` means reject.
    fallback: Option<Arc<CertifiedKey>>,
    pub(crate) certs: Vec<CertInfo>,
}

impl Index {
    /// Certificates must come sorted by stem, so that when two claim one name the choice is stable.
    pub(crate) fn build(
        loaded: Vec<LoadedCert>,
        unknown: &UnknownSni,
        dir: &std::path::Path,
    ) -> Result<Index, TlsError> {
        let mut index = Index::default();
        let mut owner: HashMap<String, String> = HashMap::new();
        for cert in loaded {
            for name in &cert.names {
                let name = normalize(name);
                let (table, key) = match name.strip_prefix("*.") {
                    Some(parent) if !parent.is_empty() && !parent.contains('*') => {
                        (&mut index.wildcard, parent.to_owned())
                    }
                    _ if name.contains('*') || name.is_empty() => {
                        // Partial wildcards (`f*.example.com`) are deprecated by RFC 6125 and
                        // clients mostly refuse them, so serving them would only mislead.
                        tracing::warn!(path = %cert.path.display(), name = %name, "ignoring unsupported certificate name");
                        continue;
                    }
                    _ => (&mut index.exact, name.clone().into_owned()),
                };
                if let Some(first) = owner.get(name.as_ref()) {
                    tracing::warn!(
                        name = %name, kept = %first, ignored = %cert.stem,
                        "two certificates claim one name; keeping the first by file name"
                    );
                    continue;
                }
                owner.insert(name.clone().into_owned(), cert.stem.clone());
                table.insert(key, Arc::clone(&cert.key));
            }
            if let UnknownSni::DefaultCert(stem) = unknown {
                if *stem == cert.stem {
                    index.fallback = Some(Arc::clone(&cert.key));
                }
            }
            index.certs.push(CertInfo {
                stem: cert.stem,
                path: cert.path,
                names: cert.names,
            });
        }
        if let UnknownSni::DefaultCert(stem) = unknown {
            if index.fallback.is_none() {
                return Err(TlsError::DefaultCertMissing {
                    dir: dir.to_path_buf(),
                    name: stem.clone(),
                });
            }
        }
        Ok(index)
    }

    /// Exact name first, then a wildcard covering exactly the leftmost label, then the fallback.
    pub(crate) fn lookup(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        match sni {
            Some(sni) => self.named(sni).or(self.fallback.as_ref()),
            None => self.fallback.as_ref(),
        }
    }

    /// The certificate that names `sni`, exactly or by a wildcard (never the fallback).
    pub(crate) fn named(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let name = normalize(sni);
        if let Some(found) = self.exact.get(name.as_ref()) {
            return Some(found);
        }
        let (label, parent) = name.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(parent)
    }

    pub(crate) fn name_count(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }
}

/// DNS names compare case-insensitively and a trailing dot names the same host.
fn normalize(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = client_hello.server_name();
        let found = self.lookup(sni);
        if found.is_none() {
            // Returning None makes rustls abort the handshake with an alert, which is the
            // configured `reject`; the acceptor counts it.
            tracing::debug!(sni = ?sni, "no certificate for server name; rejecting");
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalize_lowercases_and_drops_trailing_dot() {
        assert_eq!(normalize("Foo.Example.COM."), "foo.example.com");
        assert_eq!(normalize("a.b"), "a.b");
    }
}
