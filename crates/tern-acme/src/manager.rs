//! The task that keeps every ACME hostname of the catalog's apps served by a
//! valid certificate: it orders one where none is kept, renews at two thirds of
//! the lifetime, and after a failure retries with a growing delay, while the old
//! certificate (if any) stays served. On demand, it orders a hostname only
//! once a handshake asks for it, and renews what it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use instant_acme::Account;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tern_catalog::Catalog;
use tern_challenges::{Challenges, OnDemand};
use tern_config::Acme;
use tern_tls::CertStore;
use tokio::sync::Notify;

use crate::account;
use crate::ari::RenewalInfo;
use crate::claimed::claimed_names;
use crate::error::AcmeError;
use crate::files::{certificate_path, renewal_time, validity, write_private};
use crate::fleet::{note_installed, FleetShare, OrderLock, Share, Turn};
use crate::follow::follow;
use crate::limiter::OrderLimiter;
use crate::order::{challenge_name, order, Answers};

/// The first wait after a failure, doubled after each further one up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// The longest the task sleeps without looking again (a clock jump, a file
/// removed by hand).
const MAX_SLEEP: Duration = Duration::from_secs(600);
/// How soon a name that another node is ordering is looked at again, unless
/// that node's certificate arrives first.
const ELSEWHERE_RECHECK: Duration = Duration::from_secs(30);

/// What the ACME task answers through: validations, and (on demand) the
/// handshakes that ask for a certificate.
#[derive(Debug, Clone)]
pub struct Answering {
    pub challenges: Arc<Challenges>,
    pub on_demand: Option<Arc<OnDemand>>,
}

/// Starts the task; it runs until the runtime ends. The status tells
/// `/healthz` which hostnames cannot get a certificate. With `fleet`, orders
/// are shared with the other nodes through etcd, and a second task answers
/// and installs what they share.
pub fn spawn(
    acme: Acme,
    store: Arc<CertStore>,
    answering: Answering,
    catalog: Arc<dyn Catalog>,
    fleet: Option<FleetShare>,
) -> Arc<Status> {
    let status = Arc::new(Status::default());
    let installed = Arc::new(Notify::new());
    if let Some(share) = &fleet {
        tokio::spawn(follow(
            share.clone(),
            Arc::clone(&store),
            Arc::clone(&answering.challenges),
            Arc::clone(&catalog),
            Arc::clone(&installed),
        ));
    }
    let mut manager = Manager {
        limiter: OrderLimiter::new(acme.orders_per_hour),
        acme,
        store,
        challenges: answering.challenges,
        on_demand: answering.on_demand,
        fleet: fleet.map(|f| Share::new(f, Arc::clone(&catalog))),
        installed,
        account: None,
        renewal: RenewalInfo::default(),
        elsewhere: BTreeMap::new(),
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
    on_demand: Option<Arc<OnDemand>>,
    fleet: Option<Share>,
    /// Told when a certificate from another node was installed.
    installed: Arc<Notify>,
    account: Option<Account>,
    renewal: RenewalInfo,
    /// The names whose lock another node held when last looked at: when to
    /// look again, and whether that node is waiting out a failed order.
    elsewhere: BTreeMap<String, (Instant, bool)>,
    limiter: OrderLimiter,
    status: Arc<Status>,
}

impl Manager {
    async fn run(&mut self, catalog: Arc<dyn Catalog>) {
        let mut changes = catalog.watch();
        loop {
            let wanted = claimed_names(&catalog);
            let next = match self.on_demand.clone() {
                None => self.tend_all(&wanted).await,
                Some(on_demand) => self.tend_on_demand(&wanted, &on_demand).await,
            };
            self.status.lock().retain(|h, _| wanted.contains(h));
            self.renewal.retain(|h| wanted.contains(h));
            self.elsewhere.retain(|h, _| wanted.contains(h));
            let asked = async {
                match &self.on_demand {
                    Some(on_demand) => on_demand.asked_again().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                () = asked => {}
                () = self.installed.notified() => {}
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The catalog is gone: so is the node.
                        return;
                    }
                }
            }
        }
    }

    /// Tends every wanted hostname; returns when to look again.
    async fn tend_all(&mut self, wanted: &BTreeSet<String>) -> Instant {
        let mut next = Instant::now() + MAX_SLEEP;
        for hostname in wanted {
            next = next.min(self.tend(hostname).await);
        }
        next
    }

    /// Orders the hostnames that handshakes asked for (first: they are
    /// waiting), then renews those already held; others wait to be asked.
    async fn tend_on_demand(&mut self, wanted: &BTreeSet<String>, on_demand: &OnDemand) -> Instant {
        on_demand.set_claimed(wanted.iter().cloned());
        let mut next = Instant::now() + MAX_SLEEP;
        for hostname in on_demand.asked() {
            if !wanted.contains(&hostname) {
                on_demand.answer(&hostname, false);
                continue;
            }
            next = next.min(self.tend(&hostname).await);
            let served = self.store.names(&hostname);
            // While another node orders it, the handshakes wait for its
            // certificate to arrive (or for their own wait to run out).
            if !served {
                // Until its retry, further handshakes for it fail at once.
                if let Some(retry) = self.retry_time(&hostname) {
                    on_demand.hold_off(&hostname, retry);
                }
            }
            let ordered_elsewhere = matches!(self.elsewhere.get(&hostname), Some((_, false)));
            if served || !ordered_elsewhere {
                on_demand.answer(&hostname, served);
            }
        }
        for hostname in wanted {
            if validity(&certificate_path(self.store.dir(), hostname)).is_some() {
                next = next.min(self.tend(hostname).await);
            }
        }
        next
    }

    /// When a name that failed, or that another node is waiting out a failed
    /// order for, may be tried again.
    fn retry_time(&self, hostname: &str) -> Option<Instant> {
        let failed = self.status.lock().get(hostname).map(|f| f.retry);
        let elsewhere = self
            .elsewhere
            .get(hostname)
            .filter(|(_, f)| *f)
            .map(|(t, _)| *t);
        failed.or(elsewhere).filter(|t| *t > Instant::now())
    }

    /// Orders or renews `hostname` if it is due; returns when to look again.
    async fn tend(&mut self, hostname: &str) -> Instant {
        let now = Instant::now();
        let path = certificate_path(self.store.dir(), hostname);
        let kept = validity(&path);
        if let Some(later) = self.not_due(hostname, &path, kept).await {
            return later;
        }
        let failed = self.status.lock().get(hostname).map(|f| (f.count, f.retry));
        if let Some(later) = self.waiting_out(hostname, failed, now) {
            return later;
        }
        let lock = match self.turn(hostname, &path, kept, now).await {
            Ok(lock) => lock,
            Err(later) => return later,
        };
        if let Err(allowed) = self.limiter.try_start(hostname, now) {
            metrics::counter!("tern_acme_orders_total", "result" => "rate_limited").increment(1);
            tracing::warn!(
                hostname,
                orders_per_hour = self.acme.orders_per_hour,
                "ACME: not ordering; this hostname reached its orders per hour"
            );
            if let Some(lock) = lock {
                lock.release().await;
            }
            return allowed;
        }
        let count = failed.map_or(0, |(count, _)| count) + 1;
        self.order(hostname, &path, lock, count, kept).await
    }

    /// `Some(when to look again)` while `hostname` waits out a failure, its own
    /// (`failed`: count and retry time) or another node's order.
    fn waiting_out(
        &mut self,
        hostname: &str,
        failed: Option<(u32, Instant)>,
        now: Instant,
    ) -> Option<Instant> {
        if let Some((_, retry)) = failed.filter(|(_, retry)| *retry > now) {
            return Some(retry);
        }
        if let Some((again, _)) = self.elsewhere.get(hostname).filter(|(t, _)| *t > now) {
            return Some(*again);
        }
        self.elsewhere.remove(hostname);
        None
    }

    /// This node's turn to order `hostname` (with the fleet's lock, if any), or
    /// `Err(when to look again)`: another node orders it, the fleet's newer
    /// certificate is now installed, or etcd could not be asked.
    async fn turn(
        &mut self,
        hostname: &str,
        path: &Path,
        kept: Option<(SystemTime, SystemTime)>,
        now: Instant,
    ) -> Result<Option<Box<OrderLock>>, Instant> {
        match self.take_turn(hostname, path, kept.map(|(_, to)| to)).await {
            Ok(Taken::Ours(lock)) => Ok(lock),
            Ok(Taken::Done) => Err(Instant::now()),
            Ok(Taken::Theirs { holder, failed }) => {
                tracing::debug!(
                    hostname,
                    holder,
                    "ACME: another node holds this name's order lock"
                );
                let again = now + ELSEWHERE_RECHECK;
                self.elsewhere.insert(hostname.to_owned(), (again, failed));
                Err(again)
            }
            Err(e) => {
                tracing::warn!(hostname, error = %e, "ACME: cannot take this name's order lock in etcd; not ordering");
                Err(now + FIRST_RETRY)
            }
        }
    }

    /// Orders `hostname`, its `count`-th attempt in a row, and records how it
    /// went; returns when to look again.
    async fn order(
        &mut self,
        hostname: &str,
        path: &Path,
        lock: Option<Box<OrderLock>>,
        count: u32,
        kept: Option<(SystemTime, SystemTime)>,
    ) -> Instant {
        let result = self.obtain(hostname, path, lock.as_deref()).await;
        let wait = FIRST_RETRY
            .saturating_mul(1 << (count - 1).min(16))
            .min(MAX_RETRY);
        self.settle(hostname, lock, &result, wait).await;
        match result {
            Ok(_) => {
                metrics::counter!("tern_acme_orders_total", "result" => "issued").increment(1);
                self.succeeded(hostname);
                // Looked at again at once, for its expiry and next renewal.
                Instant::now()
            }
            Err(e) => self.failed(hostname, e, count, wait, kept.map(|(_, to)| to)),
        }
    }

    /// `Some(when to look again)` if the certificate held for `hostname` is
    /// not yet due: two thirds into its lifetime, or earlier where the CA's
    /// renewal information says so. A certificate that is not due clears any
    /// failure (it may have come from another node).
    async fn not_due(
        &mut self,
        hostname: &str,
        path: &Path,
        kept: Option<(SystemTime, SystemTime)>,
    ) -> Option<Instant> {
        let now = Instant::now();
        let (from, to) = kept?;
        let left = to
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        metrics::gauge!("tern_acme_certificate_expiry_timestamp_seconds", "hostname" => hostname.to_owned())
            .set(left.as_secs_f64());
        let mut at = renewal_time(from, to);
        if let Some(asked) = self.renewal_info(hostname, path).await {
            at = at.min(asked);
        }
        let due = after(now, at);
        if due <= now {
            return None;
        }
        if self.status.lock().contains_key(hostname) {
            self.succeeded(hostname);
        }
        Some(due)
    }

    fn succeeded(&mut self, hostname: &str) {
        self.status.lock().remove(hostname);
        metrics::gauge!("tern_acme_renewal_failing", "hostname" => hostname.to_owned()).set(0.0);
    }

    /// Ends an order's turn in the fleet: the certificate shared, or the name
    /// held for this node's retry.
    async fn settle(
        &mut self,
        hostname: &str,
        lock: Option<Box<OrderLock>>,
        result: &Result<String, AcmeError>,
        wait: Duration,
    ) {
        let (Some(lock), Some(share)) = (lock, &self.fleet) else {
            return;
        };
        match result {
            Ok(pem) => {
                if let Err(e) = lock.put_certificate(share.key(), pem).await {
                    tracing::warn!(hostname, error = %e, "ACME: the other nodes will not get this certificate; they will order their own");
                }
                lock.release().await;
            }
            Err(e) => lock.release_after_failure(wait, e).await,
        }
    }

    /// Whose turn it is to order `hostname`: this node's alone without a fleet;
    /// in a fleet, the lock's holder's, and nobody's if the fleet has a newer
    /// certificate than `held_until`, which is now installed here.
    async fn take_turn(
        &mut self,
        hostname: &str,
        path: &Path,
        held_until: Option<SystemTime>,
    ) -> Result<Taken, AcmeError> {
        let Some(share) = &mut self.fleet else {
            return Ok(Taken::Ours(None));
        };
        let lock = match share.take_turn(hostname).await? {
            Turn::Theirs { holder, failed } => return Ok(Taken::Theirs { holder, failed }),
            Turn::Ours(lock) => lock,
        };
        // Another node may have finished just before the lock was free.
        match share.newer(hostname, held_until).await {
            Ok(Some(pem)) => {
                lock.release().await;
                self.serve(hostname, path, &pem)?;
                note_installed(hostname);
                Ok(Taken::Done)
            }
            Ok(None) => Ok(Taken::Ours(Some(lock))),
            Err(e) => {
                lock.release().await;
                Err(e)
            }
        }
    }

    /// Records a failed order; returns when to try again.
    fn failed(
        &mut self,
        hostname: &str,
        e: AcmeError,
        count: u32,
        wait: Duration,
        held_until: Option<SystemTime>,
    ) -> Instant {
        let expires = held_until.filter(|to| *to > SystemTime::now());
        metrics::counter!("tern_acme_orders_total", "result" => "failed").increment(1);
        metrics::gauge!("tern_acme_renewal_failing", "hostname" => hostname.to_owned()).set(1.0);
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

    /// Orders `hostname` and serves the certificate; returns it (PEM, chain
    /// then key). With `lock`, the answers are shared with the fleet too, and
    /// the order is given up if the lock is lost.
    async fn obtain(
        &mut self,
        hostname: &str,
        path: &Path,
        lock: Option<&OrderLock>,
    ) -> Result<String, AcmeError> {
        // Cheap to clone, and a clone leaves `self` free for the rest.
        let account = self.account().await?.clone();
        tracing::info!(
            hostname,
            challenge = challenge_name(self.acme.challenge),
            "ACME: ordering a certificate"
        );
        let answering = Answers::new(&self.challenges, lock);
        let ordering = order(&account, hostname, self.acme.challenge, answering);
        let lost = async {
            match lock {
                Some(lock) => lock.lost().await,
                None => std::future::pending().await,
            }
        };
        let issued = tokio::select! {
            issued = ordering => issued?,
            () = lost => return Err(AcmeError::fleet(hostname, "the order's lock in etcd was lost (etcd unreachable for its lease's 15 s); given up, since another node may order the name now")),
        };
        let pem = format!("{}{}", issued.chain_pem, issued.key_pem);
        self.serve(hostname, path, &pem)?;
        tracing::info!(hostname, path = %path.display(), "ACME: certificate issued and served");
        Ok(pem)
    }

    async fn account(&mut self) -> Result<&Account, AcmeError> {
        Ok(match self.account.take() {
            Some(kept) => self.account.insert(kept),
            None => self
                .account
                .insert(account::load_or_create(&self.acme).await?),
        })
    }

    /// When the CA wants the certificate held for `hostname` renewed, if its
    /// directory offers renewal information (never later than two thirds of
    /// the lifetime: the earlier of the two is kept).
    async fn renewal_info(&mut self, hostname: &str, path: &Path) -> Option<SystemTime> {
        if !self.renewal.worth_asking() {
            return None;
        }
        let leaf = CertificateDer::pem_file_iter(path).ok()?.next()?.ok()?;
        let account = match self.account().await {
            Ok(a) => a.clone(),
            Err(e) => {
                tracing::debug!(hostname, error = %e, "ACME: no account to ask for renewal information");
                self.renewal.pause();
                return None;
            }
        };
        self.renewal.renew_at(&account, hostname, &leaf).await
    }

    /// Writes a certificate where SNI reads it, and serves it at once.
    fn serve(&self, hostname: &str, path: &Path, pem: &str) -> Result<(), AcmeError> {
        write_private(path, pem.as_bytes())
            .map_err(|e| AcmeError::local(hostname, format!("writing {}: {e}", path.display())))?;
        self.store
            .reload()
            .map_err(|e| AcmeError::local(hostname, format!("serving the new certificate: {e}")))?;
        Ok(())
    }
}

/// Whose turn it is to order a name.
enum Taken {
    /// This node's, holding the fleet's lock if there is a fleet.
    Ours(Option<Box<OrderLock>>),
    /// Another node's (the lock's holder; `failed` while it waits out a failure).
    Theirs { holder: String, failed: bool },
    /// Nobody's: the fleet's newer certificate is now served here.
    Done,
}

/// `at` as an instant on the monotonic clock (now, if it has passed).
fn after(now: Instant, at: SystemTime) -> Instant {
    match at.duration_since(SystemTime::now()) {
        Ok(ahead) => now + ahead,
        Err(_) => now,
    }
}
