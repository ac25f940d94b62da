//! The task that keeps every ACME hostname of the catalog's apps served by a
//! valid certificate: it orders one where none is kept, renews at two thirds of
//! the lifetime, and after a failure retries with a growing delay, while the old
//! certificate (if any) stays served.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use instant_acme::Account;
use tern_catalog::Catalog;
use tern_challenges::Challenges;
use tern_config::Acme;
use tern_tls::CertStore;

use crate::account;
use crate::error::AcmeError;
use crate::files::{certificate_path, renewal_time, validity, write_private};
use crate::limiter::OrderLimiter;
use crate::order::{challenge_name, order};

/// The first wait after a failure, doubled after each further one up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// The longest the task sleeps without looking again (a clock jump, a file
/// removed by hand).
const MAX_SLEEP: Duration = Duration::from_secs(600);

/// Starts the task; it runs until the runtime ends. The status tells
/// `/healthz` which hostnames cannot get a certificate.
pub fn spawn(
    acme: Acme,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    catalog: Arc<dyn Catalog>,
) -> Arc<Status> {
    let status = Arc::new(Status::default());
    let mut manager = Manager {
        limiter: OrderLimiter::new(acme.orders_per_hour),
        acme,
        store,
        challenges,
        account: None,
        status: Arc::clone(&status),
    };
    tokio::spawn(async move { manager.run(catalog).await });
    status
}

/// The hostnames whose last order failed: what the task retries, and what
/// `/healthz` reports.
#[derive(Debug, Default)]
pub struct Status {
    failing: Mutex<BTreeMap<String, Failure>>,
}

#[derive(Debug)]
struct Failure {
    /// Failed orders in a row.
    count: u32,
    retry: Instant,
    error: String,
    /// When the certificate in hand expires, if one is.
    expires: Option<SystemTime>,
}

impl Status {
    /// One line per failing hostname, for `/healthz`.
    pub fn health_lines(&self) -> Vec<String> {
        let now = (Instant::now(), SystemTime::now());
        self.lock()
            .iter()
            .map(|(host, f)| {
                let held = match f.expires.and_then(|t| t.duration_since(now.1).ok()) {
                    Some(left) => format!("the certificate in hand expires in {}s", left.as_secs()),
                    None => "no valid certificate is served for it".to_owned(),
                };
                format!(
                    "acme {host}: {} failed order(s) in a row, the last: {}; {held}; next try in {}s",
                    f.count,
                    f.error,
                    f.retry.saturating_duration_since(now.0).as_secs()
                )
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Failure>> {
        self.failing.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Manager {
    acme: Acme,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    account: Option<Account>,
    limiter: OrderLimiter,
    status: Arc<Status>,
}

impl Manager {
    async fn run(&mut self, catalog: Arc<dyn Catalog>) {
        let mut changes = catalog.watch();
        loop {
            let wanted = wanted(&catalog);
            let mut next = Instant::now() + MAX_SLEEP;
            for hostname in &wanted {
                next = next.min(self.tend(hostname).await);
            }
            self.status.lock().retain(|h, _| wanted.contains(h));
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The catalog is gone: so is the node.
                        return;
                    }
                }
            }
        }
    }

    /// Orders or renews `hostname` if it is due; returns when to look again.
    async fn tend(&mut self, hostname: &str) -> Instant {
        let now = Instant::now();
        let path = certificate_path(self.store.dir(), hostname);
        let kept = validity(&path);
        if let Some((_, not_after)) = kept {
            let left = not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            metrics::gauge!("tern_acme_certificate_expiry_timestamp_seconds", "hostname" => hostname.to_owned())
                .set(left.as_secs_f64());
        }
        let due = kept.map_or(now, |(from, to)| after(now, renewal_time(from, to)));
        if due > now {
            return due;
        }
        let failed = self.status.lock().get(hostname).map(|f| (f.count, f.retry));
        if let Some((_, retry)) = failed.filter(|(_, retry)| *retry > now) {
            return retry;
        }
        if let Err(allowed) = self.limiter.try_start(hostname, now) {
            metrics::counter!("tern_acme_orders_total", "result" => "rate_limited").increment(1);
            tracing::warn!(
                hostname,
                orders_per_hour = self.acme.orders_per_hour,
                "ACME: not ordering; this hostname reached its orders per hour"
            );
            return allowed;
        }
        match self.obtain(hostname, &path).await {
            Ok(()) => {
                self.status.lock().remove(hostname);
                metrics::counter!("tern_acme_orders_total", "result" => "issued").increment(1);
                metrics::gauge!("tern_acme_renewal_failing", "hostname" => hostname.to_owned())
                    .set(0.0);
                // Looked at again at once, for its expiry and next renewal.
                Instant::now()
            }
            Err(e) => {
                let count = failed.map_or(0, |(count, _)| count) + 1;
                let wait = FIRST_RETRY
                    .saturating_mul(1 << (count - 1).min(16))
                    .min(MAX_RETRY);
                let expires = kept.map(|(_, to)| to).filter(|to| *to > SystemTime::now());
                metrics::counter!("tern_acme_orders_total", "result" => "failed").increment(1);
                metrics::gauge!("tern_acme_renewal_failing", "hostname" => hostname.to_owned())
                    .set(1.0);
                tracing::warn!(
                    hostname,
                    error = %e,
                    failures = count,
                    retry_in = ?wait,
                    still_served = expires.is_some(),
                    "ACME: could not obtain a certificate"
                );
                let retry = Instant::now() + wait;
                let failure = Failure {
                    count,
                    retry,
                    error: e.to_string(),
                    expires,
                };
                self.status.lock().insert(hostname.to_owned(), failure);
                retry
            }
        }
    }

    async fn obtain(&mut self, hostname: &str, path: &std::path::Path) -> Result<(), AcmeError> {
        let account = match self.account.take() {
            Some(kept) => self.account.insert(kept),
            None => self
                .account
                .insert(account::load_or_create(&self.acme).await?),
        };
        tracing::info!(
            hostname,
            challenge = challenge_name(self.acme.challenge),
            "ACME: ordering a certificate"
        );
        let issued = order(account, hostname, self.acme.challenge, &self.challenges).await?;
        let pem = format!("{}{}", issued.chain_pem, issued.key_pem);
        write_private(path, pem.as_bytes())
            .map_err(|e| AcmeError::local(hostname, format!("writing {}: {e}", path.display())))?;
        self.store
            .reload()
            .map_err(|e| AcmeError::local(hostname, format!("serving the new certificate: {e}")))?;
        tracing::info!(hostname, path = %path.display(), "ACME: certificate issued and served");
        Ok(())
    }
}

/// The hostnames that apps in the catalog want certificates for.
fn wanted(catalog: &Arc<dyn Catalog>) -> BTreeSet<String> {
    let snapshot = catalog.snapshot();
    snapshot
        .apps
        .values()
        .flat_map(|app| app.acme_hostnames.iter().cloned())
        .collect()
}

/// `at` as an instant on the monotonic clock (now, if it has passed).
fn after(now: Instant, at: SystemTime) -> Instant {
    match at.duration_since(SystemTime::now()) {
        Ok(ahead) => now + ahead,
        Err(_) => now,
    }
}
