//! The ACME account: created once per directory, its credentials (the account's
//! private key among them) kept in `state_dir` with owner-only permissions.

use std::fs;
use std::path::PathBuf;

use instant_acme::{Account, AccountBuilder, AccountCredentials, NewAccount};
use tern_config::Acme;

use crate::error::AcmeError;
use crate::files::write_private;

/// The account for `acme.directory`: the one kept on disk, or a new one.
pub(crate) async fn load_or_create(acme: &Acme) -> Result<Account, AcmeError> {
    let path = account_path(acme);
    let file_err = |reason: String| AcmeError::AccountFile {
        path: path.clone(),
        reason,
    };
    match fs::read(&path) {
        Ok(bytes) => {
            let creds: AccountCredentials = serde_json::from_slice(&bytes)
                .map_err(|e| file_err(format!("not valid account credentials: {e}")))?;
            builder(acme)?
                .from_credentials(creds)
                .await
                .map_err(|e| AcmeError::server("the account", "loading the account", e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let contact: Vec<&str> = acme.contact.iter().map(String::as_str).collect();
            let new = NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            };
            let (account, creds) = builder(acme)?
                .create(&new, acme.directory.clone(), None)
                .await
                .map_err(|e| AcmeError::server("the account", "creating the account", e))?;
            let json = serde_json::to_vec(&creds).map_err(|e| file_err(e.to_string()))?;
            write_private(&path, &json).map_err(|e| file_err(e.to_string()))?;
            tracing::info!(directory = %acme.directory, path = %path.display(), "created an ACME account");
            Ok(account)
        }
        Err(e) => Err(file_err(e.to_string())),
    }
}

fn builder(acme: &Acme) -> Result<AccountBuilder, AcmeError> {
    // instant-acme's client builds its rustls config from the process's default
    // provider: make it ring's, as everywhere else in Tern.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let built = match &acme.ca_root {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    };
    built.map_err(|e| AcmeError::AccountFile {
        path: acme.ca_root.clone().unwrap_or_default(),
        reason: format!("cannot set up the HTTPS client for the ACME directory: {e}"),
    })
}

/// One file per directory URL, so that staging and production accounts differ.
fn account_path(acme: &Acme) -> PathBuf {
    let slug: String = acme
        .directory
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    acme.state_dir.join(format!("account-{slug}.json"))
}
