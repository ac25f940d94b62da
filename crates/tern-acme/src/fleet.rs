//! ACME shared by the nodes of an etcd catalog. A node orders a hostname only
//! while it holds the name's lock: a key under a lease of the order's own, so
//! that the lock goes with the node if it dies. The answers to the order's
//! challenges go to etcd under the same lease, because the ACME server may
//! validate against any node, and the order waits until the other nodes say
//! they hold them. The certificate goes there sealed with the fleet key, and
//! every node installs it ([`crate::follow`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use tern_catalog::Catalog;
use tern_etcd::keys::Keys;
use tern_etcd::{AcmeKey, Store};
use tokio::sync::watch;

use crate::error::AcmeError;
use crate::files::{renewal_time, validity_of_pem};
use crate::seal::FleetKey;

/// How long an order's lock outlives a node that stops renewing it.
const ORDER_LEASE: Duration = Duration::from_secs(15);
/// How long an order waits for the other nodes to hold its answers before it
/// asks the server to validate anyway (a node without `[acme]` never says so).
const ACKS_WAIT: Duration = Duration::from_secs(5);
/// What a lock's value starts with while its name waits out a failed order.
const FAILED_MARK: &str = "failed: ";

/// Where the fleet shares ACME, and as whom.
#[derive(Debug, Clone)]
pub struct FleetShare {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// Bounds each attempt to reach etcd.
    pub timeout: Duration,
    /// This node's id, written into the locks it takes.
    pub node: String,
    pub key: Arc<FleetKey>,
}

/// The fleet's side of one node's orders: a connection made when first needed
/// and again after a failure.
pub(crate) struct Share {
    settings: FleetShare,
    keys: Keys,
    catalog: Arc<dyn Catalog>,
    client: Option<Client>,
}

/// Who orders a hostname now.
pub(crate) enum Turn {
    /// This node: it holds the lock until the order ends.
    Ours(Box<OrderLock>),
    /// Another node holds the lock: `failed` while it waits out a failed order.
    Theirs { holder: String, failed: bool },
}

/// A hostname's lock, held under an order's lease that a task keeps alive.
pub(crate) struct OrderLock {
    client: Client,
    keys: Keys,
    hostname: String,
    node: String,
    lease: i64,
    /// The other nodes when the lock was taken: the order waits for them to
    /// hold its answers.
    others: BTreeSet<String>,
    /// Turns true if the lease is lost; then another node may order the name.
    lost: watch::Receiver<bool>,
    keeping: tokio::task::JoinHandle<()>,
}

impl Share {
    pub(crate) fn new(settings: FleetShare, catalog: Arc<dyn Catalog>) -> Share {
        Share {
            keys: Keys::new(&settings.prefix),
            settings,
            catalog,
            client: None,
        }
    }

    pub(crate) fn key(&self) -> &FleetKey {
        &self.settings.key
    }

    async fn client(&mut self, hostname: &str) -> Result<Client, AcmeError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let s = &self.settings;
        let store = Store::connect_quiet(&s.endpoints, &s.prefix, s.timeout)
            .await
            .map_err(|e| AcmeError::fleet(hostname, e))?;
        Ok(self.client.insert(store.client()).clone())
    }

    /// Runs `step` on the connection, bounded by the etcd timeout; a failure
    /// drops the connection, so the next step makes a new one.
    async fn with_client<T, F, Fut>(&mut self, hostname: &str, step: F) -> Result<T, AcmeError>
    where
        F: FnOnce(Client, Keys) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client(hostname).await?;
        let step = step(client, self.keys.clone());
        let result = within(self.settings.timeout, hostname, step).await;
        if result.is_err() {
            self.client = None;
        }
        result
    }

    /// Takes `hostname`'s lock, unless another node holds it.
    pub(crate) async fn take_turn(&mut self, hostname: &str) -> Result<Turn, AcmeError> {
        let node = self.settings.node.clone();
        let name = hostname.to_owned();
        let taken = self
            .with_client(hostname, |mut client, keys| async move {
                let key = keys.acme(&AcmeKey::Lock(name));
                let ttl = i64::try_from(ORDER_LEASE.as_secs()).unwrap_or(15);
                let lease = client.lease_grant(ttl, None).await?.id();
                let free = Compare::create_revision(key.clone(), CompareOp::Equal, 0);
                let put = TxnOp::put(key.clone(), node, Some(PutOptions::new().with_lease(lease)));
                let txn = client.txn(Txn::new().when([free]).and_then([put])).await?;
                if txn.succeeded() {
                    return Ok((client, Ok(lease)));
                }
                let _ = client.lease_revoke(lease).await;
                let held = client.get(key, None).await?;
                let holder = held
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                    .unwrap_or_default();
                Ok((client, Err(holder)))
            })
            .await?;
        Ok(match taken {
            (_, Err(holder)) => Turn::Theirs {
                failed: holder.starts_with(FAILED_MARK),
                holder,
            },
            (client, Ok(lease)) => {
                let others = self
                    .catalog
                    .snapshot()
                    .nodes
                    .keys()
                    .map(|id| id.to_string())
                    .collect();
                Turn::Ours(Box::new(OrderLock::keep(
                    client,
                    self.keys.clone(),
                    hostname,
                    &self.settings.node,
                    lease,
                    others,
                )))
            }
        })
    }

    /// The fleet's certificate for `hostname` (PEM, chain then key), if one
    /// opens with the fleet key, outlives `held_until` (the one this node
    /// holds) and is not yet due for renewal.
    pub(crate) async fn newer(
        &mut self,
        hostname: &str,
        held_until: Option<SystemTime>,
    ) -> Result<Option<String>, AcmeError> {
        let name = hostname.to_owned();
        let sealed = self
            .with_client(hostname, |mut client, keys| async move {
                let got = client
                    .get(keys.acme(&AcmeKey::Certificate(name)), None)
                    .await?;
                Ok(got.kvs().first().map(|kv| kv.value().to_vec()))
            })
            .await?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let Ok(pem) = self.settings.key.open(hostname, &sealed) else {
            tracing::warn!(hostname, "ACME: the fleet's certificate does not open with this node's fleet key; ordering anew");
            return Ok(None);
        };
        let pem = String::from_utf8(pem).unwrap_or_default();
        let Some((from, until)) = validity_of_pem(pem.as_bytes()) else {
            return Ok(None);
        };
        let newer = held_until.is_none_or(|held| until > held);
        let current = renewal_time(from, until) > SystemTime::now();
        Ok((newer && current).then_some(pem))
    }
}

impl OrderLock {
    fn keep(
        client: Client,
        keys: Keys,
        hostname: &str,
        node: &str,
        lease: i64,
        others: BTreeSet<String>,
    ) -> OrderLock {
        let (lost_tx, lost) = watch::channel(false);
        let keeping = tokio::spawn(keep_alive(client.clone(), lease, lost_tx));
        OrderLock {
            client,
            keys,
            hostname: hostname.to_owned(),
            node: node.to_owned(),
            lease,
            others,
            lost,
            keeping,
        }
    }

    /// Resolves if the lease is lost while the order runs.
    pub(crate) async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the keeper is gone, which only `release` does.
        let _ = lost.wait_for(|l| *l).await;
    }

    /// Shares an HTTP-01 answer with every node, for as long as the order
    /// runs, and waits until they hold it.
    pub(crate) async fn share_http01(
        &self,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), AcmeError> {
        let key = AcmeKey::Http01(token.to_owned());
        self.share(key, key_authorization.to_owned()).await
    }

    /// Shares a TLS-ALPN-01 answer (the key authorization's digest) likewise.
    pub(crate) async fn share_tls_alpn01(&self, digest: &[u8]) -> Result<(), AcmeError> {
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.share(AcmeKey::TlsAlpn01(self.hostname.clone()), hex)
            .await
    }

    async fn share(&self, key: AcmeKey, value: String) -> Result<(), AcmeError> {
        let mut client = self.client.clone();
        let options = PutOptions::new().with_lease(self.lease);
        let put = client.put(self.keys.acme(&key), value, Some(options));
        within(ORDER_LEASE, &self.hostname, put).await?;
        self.wait_for_acks(&key).await;
        Ok(())
    }

    /// Waits (at most `ACKS_WAIT`) until every other node says it holds the
    /// answer at `key` (`Keys::acme_ack`).
    async fn wait_for_acks(&self, key: &AcmeKey) {
        if self.others.is_empty() {
            return;
        }
        let prefix = self.keys.acme_ack_prefix(key);
        let mut acked = BTreeSet::new();
        let why = match tokio::time::timeout(ACKS_WAIT, self.follow_acks(&prefix, &mut acked)).await
        {
            Ok(Ok(true)) => return,
            Ok(Ok(false)) => "the watch ended".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("not within {ACKS_WAIT:?}"),
        };
        let missing: Vec<&String> = self.others.difference(&acked).collect();
        tracing::warn!(hostname = %self.hostname, ?missing, why, "ACME: not every node says it holds the challenge's answer; validating anyway");
    }

    /// Reads which nodes hold the answer below `prefix` into `acked`, then
    /// follows the changes from that revision on; true once every other node
    /// does.
    async fn follow_acks(
        &self,
        prefix: &str,
        acked: &mut BTreeSet<String>,
    ) -> Result<bool, etcd_client::Error> {
        let node_of = |key: &[u8]| {
            let key = std::str::from_utf8(key).ok()?;
            key.strip_prefix(prefix).map(str::to_owned)
        };
        let mut client = self.client.clone();
        let options = GetOptions::new().with_prefix().with_keys_only();
        let got = client.get(prefix, Some(options)).await?;
        acked.extend(got.kvs().iter().filter_map(|kv| node_of(kv.key())));
        if self.others.is_subset(acked) {
            return Ok(true);
        }
        let revision = got.header().map_or(0, |h| h.revision());
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut watching = client.watch(prefix, Some(options)).await?;
        while let Some(resp) = watching.message().await? {
            for event in resp.events() {
                let Some(node) = event.kv().and_then(|kv| node_of(kv.key())) else {
                    continue;
                };
                // The raw type: `Event::event_type` panics on one it does not know.
                if event.0.r#type == EventType::Delete as i32 {
                    acked.remove(&node);
                } else {
                    acked.insert(node);
                }
            }
            if self.others.is_subset(acked) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Gives the fleet the new certificate, sealed, if this node still holds
    /// the lock (else another node may be ordering the name already).
    pub(crate) async fn put_certificate(&self, key: &FleetKey, pem: &str) -> Result<(), AcmeError> {
        let sealed = key.seal(&self.hostname, pem.as_bytes())?;
        let cert = self.keys.acme(&AcmeKey::Certificate(self.hostname.clone()));
        let ours = self.still_ours();
        let txn = Txn::new()
            .when([ours])
            .and_then([TxnOp::put(cert, sealed, None)]);
        let mut client = self.client.clone();
        if within(ORDER_LEASE, &self.hostname, client.txn(txn))
            .await?
            .succeeded()
        {
            Ok(())
        } else {
            Err(AcmeError::fleet(
                &self.hostname,
                "the order's lock was lost",
            ))
        }
    }

    fn still_ours(&self) -> Compare {
        let lock = self.keys.acme(&AcmeKey::Lock(self.hostname.clone()));
        Compare::lease(lock, CompareOp::Equal, self.lease)
    }

    /// Ends the order: the lock and the shared answers go with the lease.
    pub(crate) async fn release(mut self) {
        self.keeping.abort();
        let revoke = self.client.lease_revoke(self.lease);
        let _ = tokio::time::timeout(ORDER_LEASE, revoke).await;
    }

    /// Ends a failed order, but keeps the name locked for `retry_in` (if the
    /// lock is still this node's), so that no other node orders it before
    /// this node's retry.
    pub(crate) async fn release_after_failure(mut self, retry_in: Duration, error: &AcmeError) {
        let key = self.keys.acme(&AcmeKey::Lock(self.hostname.clone()));
        let note = format!("{FAILED_MARK}{} ({error})", self.node);
        let ttl = i64::try_from(retry_in.as_secs().max(1)).unwrap_or(i64::MAX);
        let ours = self.still_ours();
        let mut client = self.client.clone();
        let keep_locked = async move {
            let lease = client.lease_grant(ttl, None).await?.id();
            let put = TxnOp::put(key, note, Some(PutOptions::new().with_lease(lease)));
            let txn = client.txn(Txn::new().when([ours]).and_then([put])).await?;
            if !txn.succeeded() {
                let _ = client.lease_revoke(lease).await;
            }
            Ok::<_, etcd_client::Error>(())
        };
        if let Err(e) = within(ORDER_LEASE, &self.hostname, keep_locked).await {
            tracing::warn!(error = %e, "ACME: could not keep the failed name locked");
        }
        self.keeping.abort();
        let revoke = self.client.lease_revoke(self.lease);
        let _ = tokio::time::timeout(ORDER_LEASE, revoke).await;
    }
}

impl Drop for OrderLock {
    fn drop(&mut self) {
        // Released or not, the lease then runs out on its own.
        self.keeping.abort();
    }
}

/// Keeps an order's lease alive, a third of its TTL apart, retrying failed
/// keep-alives; says `lost` once etcd reports the lease gone or it has gone
/// unrenewed for its whole TTL.
async fn keep_alive(mut client: Client, lease: i64, lost: watch::Sender<bool>) {
    let every = ORDER_LEASE / 3;
    let mut renewed = Instant::now();
    let mut stream = None;
    loop {
        tokio::time::sleep(every).await;
        if stream.is_none() {
            stream = client.lease_keep_alive(lease).await.ok();
        }
        let answer = match stream.as_mut() {
            Some((keeper, acks)) => {
                let ask = async {
                    keeper.keep_alive().await?;
                    acks.message().await
                };
                tokio::time::timeout(every, ask).await
            }
            None => Ok(Ok(None)),
        };
        match answer {
            Ok(Ok(Some(ack))) if ack.ttl() > 0 => renewed = Instant::now(),
            Ok(Ok(Some(_))) => break,
            _ => stream = None,
        }
        if renewed.elapsed() >= ORDER_LEASE {
            break;
        }
    }
    let _ = lost.send(true);
}

/// Says that the certificate another node obtained for `hostname` is now in the
/// certificate directory: one log line and `tern_acme_fleet_installs_total`,
/// whichever way it came (the follower's watch, or a turn that found it).
pub(crate) fn note_installed(hostname: &str) {
    tracing::info!(
        hostname,
        "ACME: installed the certificate another node obtained"
    );
    metrics::counter!("tern_acme_fleet_installs_total").increment(1);
}

/// An etcd request on behalf of `hostname`'s order, bounded by `limit`; either
/// failure is the order's.
async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    hostname: &str,
    request: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, AcmeError> {
    match tokio::time::timeout(limit, request).await {
        Ok(r) => r.map_err(|e| AcmeError::fleet(hostname, e)),
        Err(_) => Err(AcmeError::fleet(
            hostname,
            format!("etcd did not answer within {limit:?}"),
        )),
    }
}
