//! Self-signed certificates for demos and local use, written where the store will find them.

use std::fs;
use std::io::Write;
use std::path::Path;

use rcgen::{CertificateParams, DnType, KeyPair};

use crate::error::TlsError;

/// Writes `STEM.crt` and `STEM.key` (mode 0600) in `dir` for `names` (DNS names,
/// wildcards like `*.localhost`, or IP addresses). Existing files are replaced.
pub fn generate_self_signed(dir: &Path, stem: &str, names: &[String]) -> Result<(), TlsError> {
    let Some(first) = names.first() else {
        return Err(TlsError::Generate {
            reason: "no names given".into(),
        });
    };
    let gen_err = |e: rcgen::Error| TlsError::Generate {
        reason: e.to_string(),
    };
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(gen_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, first.as_str());
    let cert = params.self_signed(&key).map_err(gen_err)?;

    fs::create_dir_all(dir).map_err(|e| TlsError::io(dir, e))?;
    // Key first: a reloader seeing the new certificate with the old key would only
    // report a mismatch, but this order makes even that window shorter.
    write_atomic(
        dir,
        &format!("{stem}.key"),
        key.serialize_pem().as_bytes(),
        true,
    )?;
    write_atomic(dir, &format!("{stem}.crt"), cert.pem().as_bytes(), false)?;
    Ok(())
}

/// Writes via a dotfile (which the store ignores) and a rename, so a poller never reads half a file.
fn write_atomic(dir: &Path, name: &str, contents: &[u8], secret: bool) -> Result<(), TlsError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let write = || -> std::io::Result<()> {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()
    };
    write().map_err(|e| TlsError::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| TlsError::io(&path, e))
}
