//! ACME shared by the nodes of an etcd catalog. A node orders a hostname only
//! while it holds the name's lock: a key under a lease of the order's own, so
//! that the lock goes with the node if it dies. The answers to the order's
//! challenges go to etcd under the same lease, because the ACME server may
//! validate against any node; the certificate goes there sealed with the fleet
//! key, and every node installs it ([`crate::follow`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tern_etcd::keys::Keys;
use tern_etcd::{AcmeKey, Store};

use crate::error::AcmeError;
use crate::files::{renewal_time, validity_of_pem};
use crate::seal::FleetKey;

/// How long an order's lock outlives a node that stops renewing it.
const ORDER_LEASE: Duration = Duration::from_secs(15);

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
    client: Option<Client>,
}

/// Who orders a hostname now.
pub(crate) enum Turn {
    /// This node: it holds the lock until the order ends.
    Ours(OrderLock),
    /// Another node holds the lock (its id and what it says).
    Theirs(String),
}

/// A hostname's lock, held under an order's lease that a task keeps alive.
pub(crate) struct OrderLock {
    /// Boxed: a client is a few kilobytes, and a lock is passed around by value.
    client: Box<Client>,
    keys: Keys,
    hostname: String,
    node: String,
    lease: i64,
    keeping: tokio::task::JoinHandle<()>,
}

impl Share {
    pub(crate) fn new(settings: FleetShare) -> Share {
        Share {
            keys: Keys::new(&settings.prefix),
            settings,
            client: None,
        }
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

    /// Runs `step` on the connection; a failure drops the connection, so the
    /// next step makes a new one.
    async fn with_client<T, F, Fut>(&mut self, hostname: &str, step: F) -> Result<T, AcmeError>
    where
        F: FnOnce(Client, Keys) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client(hostname).await?;
        let bounded = tokio::time::timeout(self.settings.timeout, step(client, self.keys.clone()));
        let result = match bounded.await {
            Ok(r) => r.map_err(|e| AcmeError::fleet(hostname, e)),
            Err(_) => Err(AcmeError::fleet(
                hostname,
                format!("etcd did not answer within {:?}", self.settings.timeout),
            )),
        };
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
            (_, Err(holder)) => Turn::Theirs(holder),
            (client, Ok(lease)) => Turn::Ours(OrderLock::keep(
                client,
                self.keys.clone(),
                hostname,
                &self.settings.node,
                lease,
            )),
        })
    }

    /// The fleet's certificate for `hostname` (PEM, chain then key), if one
    /// opens with the fleet key and is not yet due for renewal.
    pub(crate) async fn current(&mut self, hostname: &str) -> Result<Option<String>, AcmeError> {
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
        let due = validity_of_pem(pem.as_bytes()).map(|(from, to)| renewal_time(from, to));
        Ok(due.filter(|d| *d > SystemTime::now()).map(|_| pem))
    }

    /// Gives the fleet a new certificate for `hostname`, sealed.
    pub(crate) async fn put_certificate(
        &mut self,
        hostname: &str,
        pem: &str,
    ) -> Result<(), AcmeError> {
        let sealed = self.settings.key.seal(hostname, pem.as_bytes())?;
        let name = hostname.to_owned();
        self.with_client(hostname, |mut client, keys| async move {
            client
                .put(keys.acme(&AcmeKey::Certificate(name)), sealed, None)
                .await
                .map(drop)
        })
        .await
    }
}

impl OrderLock {
    fn keep(client: Client, keys: Keys, hostname: &str, node: &str, lease: i64) -> OrderLock {
        let mut keeper_client = client.clone();
        let keeping = tokio::spawn(async move {
            let Ok((mut keeper, mut acks)) = keeper_client.lease_keep_alive(lease).await else {
                return;
            };
            let mut every = tokio::time::interval(ORDER_LEASE / 3);
            loop {
                every.tick().await;
                if keeper.keep_alive().await.is_err()
                    || !matches!(acks.message().await, Ok(Some(_)))
                {
                    return;
                }
            }
        });
        OrderLock {
            client: Box::new(client),
            keys,
            hostname: hostname.to_owned(),
            node: node.to_owned(),
            lease,
            keeping,
        }
    }

    /// Shares an HTTP-01 answer with every node, for as long as the order runs.
    pub(crate) async fn share_http01(
        &self,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), AcmeError> {
        self.put(
            AcmeKey::Http01(token.to_owned()),
            key_authorization.to_owned(),
        )
        .await
    }

    /// Shares a TLS-ALPN-01 answer (the key authorization's digest) likewise.
    pub(crate) async fn share_tls_alpn01(&self, digest: &[u8]) -> Result<(), AcmeError> {
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.put(AcmeKey::TlsAlpn01(self.hostname.clone()), hex)
            .await
    }

    async fn put(&self, key: AcmeKey, value: String) -> Result<(), AcmeError> {
        let mut client = (*self.client).clone();
        let options = PutOptions::new().with_lease(self.lease);
        let put = client.put(self.keys.acme(&key), value, Some(options));
        match tokio::time::timeout(ORDER_LEASE, put).await {
            Ok(r) => r.map(drop).map_err(|e| AcmeError::fleet(&self.hostname, e)),
            Err(_) => Err(AcmeError::fleet(&self.hostname, "etcd did not answer")),
        }
    }

    /// Ends the order: the lock and the shared answers go with the lease.
    pub(crate) async fn release(mut self) {
        self.keeping.abort();
        let revoke = self.client.lease_revoke(self.lease);
        let _ = tokio::time::timeout(ORDER_LEASE, revoke).await;
    }

    /// Ends a failed order, but keeps the name locked for `retry_in`, so that
    /// no other node orders it before this node's retry.
    pub(crate) async fn release_after_failure(mut self, retry_in: Duration, error: &AcmeError) {
        let key = self.keys.acme(&AcmeKey::Lock(self.hostname.clone()));
        let note = format!("{} (its order failed: {error})", self.node);
        let ttl = i64::try_from(retry_in.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut client = (*self.client).clone();
        let keep_locked = async move {
            let lease = client.lease_grant(ttl, None).await?.id();
            let options = PutOptions::new().with_lease(lease);
            client.put(key, note, Some(options)).await.map(drop)
        };
        if let Err(e) = tokio::time::timeout(ORDER_LEASE, keep_locked)
            .await
            .unwrap_or(Ok(()))
        {
            tracing::debug!(hostname = %self.hostname, error = %e, "ACME: could not keep the failed name locked");
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
