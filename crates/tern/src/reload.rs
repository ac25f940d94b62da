//! Reloading the configuration file in place, on SIGHUP or `POST /reload`: the
//! apps, machines, regions and nodes (inline or in the catalog file), the
//! `[limits]` and the certificates change, and no connection is dropped. A file
//! that does not validate, or that changes what only a restart can change,
//! changes nothing and says why.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use tern_catalog::{Catalog, Definitions, Fleet};
use tern_config::{CatalogSource, Config};
use tern_http::Upstreams;
use tern_listen::Shared;
use tern_tls::CertStore;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this node was started without a configuration file (tern demo): nothing to reload")]
    NoFile,
    /// The diagnostics, each with file:line:column.
    #[error("invalid configuration, nothing changed\n{0}")]
    Invalid(String),
    #[error("nothing changed: {0} can only change with a restart (docs/operations.md)")]
    NeedsRestart(String),
    #[error("nothing changed: a port has the tls handler but [tls] certs_dir is not set")]
    NoCertificates,
    #[error("nothing changed: reloading the certificates failed: {0}")]
    Certificates(String),
}

/// The parts of a running node that a reload changes.
pub struct Reloadable {
    pub shared: Arc<Shared>,
    pub upstreams: Arc<Upstreams>,
    pub certs: Option<Arc<CertStore>>,
    /// How the ACME hostnames are doing; `None` without `[acme]`.
    pub acme: Option<Arc<tern_acme::Status>>,
}

/// Reloads one node's configuration file; one reload at a time.
pub struct Reloader {
    file: Option<PathBuf>,
    current: Mutex<Config>,
    fleet: Arc<Fleet>,
    parts: Reloadable,
    test_hooks: bool,
}

impl Reloader {
    pub fn new(
        file: Option<PathBuf>,
        config: Config,
        fleet: Arc<Fleet>,
        parts: Reloadable,
        test_hooks: bool,
    ) -> Self {
        Reloader {
            file,
            current: Mutex::new(config),
            fleet,
            parts,
            test_hooks,
        }
    }

    /// Reads the file again and applies it whole, or nothing of it. Blocking
    /// (it reads files): run it off the runtime's workers.
    pub fn reload(&self) -> Result<String, ReloadError> {
        let file = self.file.as_ref().ok_or(ReloadError::NoFile)?;
        let new = tern_config::load(file).map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let fixed = needs_restart(&current, &new);
        if !fixed.is_empty() {
            return Err(ReloadError::NeedsRestart(fixed.join(", ")));
        }
        let defs = match &new.catalog {
            CatalogSource::File { .. } => Some(Definitions::from_config(&new)),
            // etcd's catalog follows etcd, not this file.
            CatalogSource::Etcd(_) => None,
        };
        if defs.is_some() && self.parts.certs.is_none() && crate::serve::needs_tls(&new) {
            return Err(ReloadError::NoCertificates);
        }
        let certs = match &self.parts.certs {
            Some(store) => Some(
                store
                    .reload()
                    .map_err(|e| ReloadError::Certificates(e.to_string()))?,
            ),
            None => None,
        };
        self.apply_limits(&new);
        let before = self.fleet.snapshot().version;
        if let Some(defs) = defs {
            self.fleet.replace(defs);
        }
        let catalog_changed = self.fleet.snapshot().version != before;
        let summary = format!(
            "reloaded {}: {} apps, {} machines{}{}",
            file.display(),
            new.apps.len(),
            new.machines.len(),
            if catalog_changed {
                ", catalog changed"
            } else {
                ", catalog unchanged"
            },
            certs.map_or(String::new(), |c| format!(
                ", {} certificates for {} names",
                c.certificates, c.names
            )),
        );
        *current = new;
        Ok(summary)
    }

    fn apply_limits(&self, config: &Config) {
        let limits = &config.limits;
        let parts = &self.parts;
        parts
            .shared
            .proxy
            .reconfigure(&crate::limits::proxy_settings(config, self.test_hooks));
        parts
            .upstreams
            .set_timeouts(limits.connect_timeout, limits.idle_timeout);
        ArcSwap::store(&parts.shared.limits, crate::limits::conn_limits(config));
        self.fleet
            .set_limits(limits.queue_size, limits.max_request_body);
    }
}

/// The sections of `new` that differ from `old` and that a running node cannot
/// take: they shape the process (its identity, its admin socket, its threads and
/// watchdogs, its links to other nodes, where its catalog comes from).
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut fixed = Vec::new();
    let mut check = |changed: bool, what: &'static str| {
        if changed {
            fixed.push(what);
        }
    };
    check(old.node != new.node, "[node]");
    check(old.admin != new.admin, "[admin]");
    check(old.tls != new.tls, "[tls]");
    check(old.log != new.log, "[log]");
    check(old.watchdog != new.watchdog, "[watchdog]");
    check(old.backhaul != new.backhaul, "[backhaul]");
    check(old.catalog != new.catalog, "[catalog]");
    check(old.overload != new.overload, "[overload]");
    check(old.lifecycle != new.lifecycle, "[lifecycle]");
    check(old.acme != new.acme, "[acme]");
    check(
        old.limits.max_connections_per_listener != new.limits.max_connections_per_listener,
        "limits.max_connections_per_listener",
    );
    fixed
}

impl tern_admin::Reload for Reloader {
    fn reload(&self) -> Result<String, String> {
        let result = Reloader::reload(self);
        log(&result);
        result.map_err(|e| e.to_string())
    }
}

/// Logs a reload's outcome, wherever it was asked for.
pub fn log(result: &Result<String, ReloadError>) {
    match result {
        Ok(summary) => tracing::info!("{summary}"),
        Err(e) => tracing::error!("reload refused: {e}"),
    }
}

/// Reloads on every SIGHUP until the process ends.
pub async fn on_sighup(reloader: Arc<Reloader>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP: reload with POST /reload");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        let r = Arc::clone(&reloader);
        match tokio::task::spawn_blocking(move || r.reload()).await {
            Ok(result) => log(&result),
            Err(e) => tracing::error!(error = %e, "reload failed"),
        }
    }
}
