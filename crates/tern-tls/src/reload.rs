//! Re-reading the certificate directory: on demand, or by polling it for changed names, sizes and mtimes.

use std::fs;
use std::path::Path;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::error::TlsError;
use crate::resolve::Index;
use crate::store::{cert_file_kind, read_dir, CertStore};

/// What a successful reload now serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadSummary {
    pub certificates: usize,
    pub names: usize,
}

/// Names, sizes and mtimes of the files the store reads: cheap to take, and any
/// ordinary replacement of a file changes at least one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint(Vec<(String, u64, Option<SystemTime>)>);

impl Fingerprint {
    pub(crate) fn of(dir: &Path) -> Result<Fingerprint, TlsError> {
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| TlsError::io(dir, e))? {
            let entry = entry.map_err(|e| TlsError::io(dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if cert_file_kind(&name).is_none() {
                continue;
            }
            // A file vanishing between listing and stat is a change in progress; record
            // it as absent-looking so the next poll sees a difference again.
            let (len, mtime) = match fs::metadata(entry.path()) {
                Ok(meta) => (meta.len(), meta.modified().ok()),
                Err(_) => (u64::MAX, None),
            };
            files.push((name, len, mtime));
        }
        files.sort();
        Ok(Fingerprint(files))
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent even if a holder panicked, so poisoning is moot.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CertStore {
    /// Re-reads the directory. On any bad file the previous index stays in service and
    /// the error (naming the file) is returned and logged.
    pub fn reload(&self) -> Result<ReloadSummary, TlsError> {
        let _serial = lock(&self.reload_lock);
        // Taken before reading, so a change made while reading triggers another reload.
        let fingerprint = Fingerprint::of(&self.dir);
        *lock(&self.last_seen) = fingerprint.as_ref().ok().cloned();
        let result = fingerprint
            .and_then(|_| read_dir(&self.dir))
            .and_then(|loaded| Index::build(loaded, &self.unknown, &self.dir));
        match result {
            Ok(index) => {
                let summary = ReloadSummary {
                    certificates: index.certs.len(),
                    names: index.name_count(),
                };
                self.index.store(Arc::new(index));
                metrics::counter!("tern_tls_cert_reloads_total", "result" => "ok").increment(1);
                tracing::info!(
                    dir = %self.dir.display(),
                    certificates = summary.certificates,
                    names = summary.names,
                    "reloaded TLS certificates"
                );
                Ok(summary)
            }
            Err(e) => {
                metrics::counter!("tern_tls_cert_reloads_total", "result" => "error").increment(1);
                tracing::warn!(error = %e, "TLS certificate reload failed; keeping the previous certificates");
                Err(e)
            }
        }
    }

    /// Reloads only if the directory changed since it was last read; `None` if it did not.
    pub fn reload_if_changed(&self) -> Option<Result<ReloadSummary, TlsError>> {
        let now = Fingerprint::of(&self.dir).ok();
        if now.is_some() && *lock(&self.last_seen) == now {
            return None;
        }
        // An unreadable directory compares unequal every time; reload() records `None`
        // for it, so it is retried (and warned about) only once until it changes back.
        if now.is_none() && lock(&self.last_seen).is_none() {
            return None;
        }
        Some(self.reload())
    }
}

/// Polls the store's directory every `interval` and reloads when it changed. Must be
/// called inside a tokio runtime; abort the handle to stop it. Connections already
/// established keep the certificate they were handshaken with.
pub fn spawn_reloader(store: Arc<CertStore>, interval: Duration) -> JoinHandle<()> {
    // tokio's interval panics on zero.
    let interval = interval.max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once; the store was just loaded.
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let store = Arc::clone(&store);
            // Directory reads block, and a proxy's runtime threads must not.
            if let Err(e) = tokio::task::spawn_blocking(move || store.reload_if_changed()).await {
                tracing::warn!(error = %e, "TLS certificate reload task failed");
            }
        }
    })
}
