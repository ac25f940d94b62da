//! What every node of an etcd catalog does with ACME's shared state: it answers
//! the validations of orders that any node started, and installs the
//! certificates that any node obtained into its own certificate directory.
//! It reads everything under `acme/` and then watches it; when etcd goes away
//! it keeps what it has and reads everything again once etcd is back.

use std::cell::OnceCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};
use tern_catalog::Catalog;
use tern_challenges::Challenges;
use tern_etcd::keys::Keys;
use tern_etcd::{AcmeKey, Store};
use tern_tls::CertStore;
use tokio::sync::Notify;

/// How long one acknowledgement may take to write.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

use crate::alpn_cert::tls_alpn01_cert;
use crate::claimed::claimed_names;
use crate::files::{certificate_path, validity, validity_of_pem, write_private};
use crate::fleet::note_installed;
use crate::fleet::FleetShare;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Follows the fleet's ACME state until the catalog goes away; `installed` is
/// told each time a certificate from another node is installed.
pub(crate) async fn follow(
    share: FleetShare,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    catalog: Arc<dyn Catalog>,
    installed: Arc<Notify>,
) {
    let mut follower = Follower {
        keys: Keys::new(&share.prefix),
        share,
        store,
        challenges,
        catalog,
        installed,
        answers: HashMap::new(),
        sealed: HashMap::new(),
        acks: Vec::new(),
    };
    let mut backoff = BACKOFF_MIN;
    let mut reported = false;
    loop {
        match follower.session(&mut backoff).await {
            Ok(()) => return,
            Err(e) if !reported => {
                tracing::warn!(error = %e, "ACME: lost the fleet's shared state in etcd; retrying");
                reported = true;
            }
            Err(e) => tracing::debug!(error = %e, "ACME: etcd still unreachable"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

struct Follower {
    share: FleetShare,
    keys: Keys,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    catalog: Arc<dyn Catalog>,
    installed: Arc<Notify>,
    /// The answers set from etcd, by key, so that they can be taken back.
    answers: HashMap<String, AcmeKey>,
    /// The sealed certificates last read, by hostname: installed once an app
    /// claims the name.
    sealed: HashMap<String, Vec<u8>>,
    /// Acknowledgements of answers just set, to send: key and lease.
    acks: Vec<(String, i64)>,
}

#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error(transparent)]
    Connect(#[from] tern_etcd::EtcdError),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the watch ended")]
    WatchEnded,
    #[error("the watch was cancelled (history compacted?)")]
    Cancelled,
}

impl Follower {
    /// Reads everything, then applies the watch's events until it fails;
    /// `Ok` only when the catalog is gone.
    async fn session(&mut self, backoff: &mut Duration) -> Result<(), Lost> {
        let s = &self.share;
        let store = Store::connect_quiet(&s.endpoints, &s.prefix, s.timeout).await?;
        let mut client = store.client();
        let all = self.keys.acme_all();
        let read = client
            .get(all.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = read.header().map_or(0, |h| h.revision());
        self.resync(read.kvs());
        self.send_acks(&mut client).await;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut watching = client.watch(all, Some(options)).await?;
        *backoff = BACKOFF_MIN;
        let mut changes = self.catalog.watch();
        loop {
            tokio::select! {
                message = watching.message() => {
                    let resp = message?.ok_or(Lost::WatchEnded)?;
                    if resp.canceled() {
                        return Err(Lost::Cancelled);
                    }
                    let claimed = OnceCell::new();
                    let mut installed = false;
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        // The raw type: `Event::event_type` panics on one it does not know.
                        match event.0.r#type {
                            t if t == EventType::Put as i32 => installed |= self.put(kv, &claimed),
                            t if t == EventType::Delete as i32 => self.delete(kv),
                            _ => {}
                        }
                    }
                    if installed {
                        self.serve_installed();
                    }
                    self.send_acks(&mut client).await;
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    self.install_claimed();
                }
            }
        }
    }

    /// Says, for each answer just set, that this node holds it: under the
    /// answer's own lease, so the saying goes when the order ends. An ack that
    /// cannot be written (the order already over, its lease gone, or etcd slow)
    /// only delays that order, which validates after its own wait anyway: it
    /// does not end the watch, nor hold it up for more than `ACK_TIMEOUT`.
    async fn send_acks(&mut self, client: &mut etcd_client::Client) {
        for (key, lease) in std::mem::take(&mut self.acks) {
            let options = etcd_client::PutOptions::new().with_lease(lease);
            match tokio::time::timeout(ACK_TIMEOUT, client.put(key.clone(), "", Some(options)))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%key, error = %e, "acknowledging an ACME answer failed")
                }
                Err(_) => tracing::debug!(%key, "acknowledging an ACME answer timed out"),
            }
        }
    }

    /// Makes the answers exactly those in etcd, and installs its certificates.
    fn resync(&mut self, kvs: &[KeyValue]) {
        let stale: Vec<(String, AcmeKey)> = self.answers.drain().collect();
        for (_, key) in stale {
            self.take_back(&key);
        }
        self.sealed.clear();
        let claimed = OnceCell::new();
        let mut installed = false;
        for kv in kvs {
            installed |= self.put(kv, &claimed);
        }
        if installed {
            self.serve_installed();
        }
    }

    /// Applies one key's new value; returns whether a certificate was written
    /// (and needs serving). The names apps claim are read from the catalog
    /// into `claimed` at the first certificate of a batch: most batches (answers
    /// and acknowledgements) hold none.
    fn put(&mut self, kv: &KeyValue, claimed: &OnceCell<BTreeSet<String>>) -> bool {
        let Some(key) = kv.key_str().ok().and_then(|k| self.keys.parse_acme(k)) else {
            return false;
        };
        match &key {
            AcmeKey::Http01(token) => {
                let answer = String::from_utf8_lossy(kv.value());
                self.challenges.set_http01(token, &answer);
            }
            AcmeKey::TlsAlpn01(hostname) => {
                let Some(digest) = from_hex(kv.value()) else {
                    tracing::warn!(
                        hostname,
                        "ACME: a shared TLS-ALPN-01 answer is not a hex digest; skipped"
                    );
                    return false;
                };
                match tls_alpn01_cert(hostname, &digest) {
                    Ok(cert) => self.challenges.set_tls_alpn01(hostname, cert),
                    Err(e) => {
                        tracing::warn!(hostname, error = %e, "ACME: cannot answer a shared TLS-ALPN-01 challenge");
                        return false;
                    }
                }
            }
            AcmeKey::Certificate(hostname) => {
                self.sealed.insert(hostname.clone(), kv.value().to_vec());
                let claimed = claimed.get_or_init(|| claimed_names(&self.catalog));
                return self.install(hostname, claimed);
            }
            AcmeKey::Lock(_) => return false,
        }
        self.acks
            .push((self.keys.acme_ack(&key, &self.share.node), kv.lease()));
        if let Ok(k) = kv.key_str() {
            self.answers.insert(k.to_owned(), key);
        }
        false
    }

    fn delete(&mut self, kv: &KeyValue) {
        let Ok(k) = kv.key_str() else { return };
        if let Some(key) = self.answers.remove(k) {
            self.take_back(&key);
        }
    }

    fn take_back(&self, key: &AcmeKey) {
        match key {
            AcmeKey::Http01(token) => self.challenges.remove_http01(token),
            AcmeKey::TlsAlpn01(hostname) => self.challenges.remove_tls_alpn01(hostname),
            _ => {}
        }
    }

    fn install_claimed(&self) {
        let claimed = claimed_names(&self.catalog);
        let mut installed = false;
        for hostname in self.sealed.keys() {
            installed |= self.install(hostname, &claimed);
        }
        if installed {
            self.serve_installed();
        }
    }

    /// Writes the fleet's certificate for `hostname` into the certificate
    /// directory, if an app claims the name and it outlives the one held;
    /// returns whether it did (the caller then serves it).
    fn install(&self, hostname: &str, claimed: &BTreeSet<String>) -> bool {
        let Some(sealed) = self
            .sealed
            .get(hostname)
            .filter(|_| claimed.contains(hostname))
        else {
            return false;
        };
        let Ok(pem) = self.share.key.open(hostname, sealed) else {
            tracing::warn!(hostname, "ACME: the fleet's certificate does not open with this node's fleet key (is acme.fleet_key the same on every node?); not installed");
            return false;
        };
        let Some((_, until)) = validity_of_pem(&pem) else {
            tracing::warn!(
                hostname,
                "ACME: the fleet's certificate has no readable leaf; not installed"
            );
            return false;
        };
        let path = certificate_path(self.store.dir(), hostname);
        if validity(&path).is_some_and(|(_, held)| held >= until) {
            return false;
        }
        if let Err(e) = write_private(&path, &pem) {
            tracing::warn!(hostname, path = %path.display(), error = %e, "ACME: cannot write the fleet's certificate");
            return false;
        }
        note_installed(hostname);
        true
    }

    /// Serves what was installed: one reload for a batch.
    fn serve_installed(&self) {
        match self.store.reload() {
            Ok(_) => self.installed.notify_one(),
            Err(e) => tracing::warn!(error = %e, "ACME: serving the fleet's certificates failed"),
        }
    }
}

fn from_hex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}
