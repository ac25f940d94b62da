//! Reading and writing the fleet as a whole: what `tern catalog push` writes and
//! `tern catalog get` prints, and the full read a node resynchronises from.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp};
use tern_catalog::model::{MachineStatus, MeasuredRtts};
use tern_catalog::{Change, Definitions};

use crate::keys::{change, encode, DecodeError, Key, Keys};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd at {endpoints}: no answer within {after:?}")]
    Timeout { endpoints: String, after: Duration },
    #[error("etcd response had no header")]
    NoHeader,
}

/// The most operations in one transaction: etcd refuses more than 128 by default.
const TXN_OPS: usize = 100;

/// The fleet's keys in one etcd cluster.
pub struct Store {
    pub(crate) client: Client,
    pub(crate) keys: Keys,
    timeout: Duration,
}

/// Everything read at one revision.
#[derive(Debug, Default)]
pub struct Loaded {
    pub revision: i64,
    pub definitions: Definitions,
    pub statuses: HashMap<String, MachineStatus>,
    /// What each node measured to its peers.
    pub rtts: Vec<(String, MeasuredRtts)>,
    /// Keys whose value could not be read; left out, and reported.
    pub bad: Vec<DecodeError>,
}

/// What a push changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PushSummary {
    pub written: usize,
    pub unchanged: usize,
    pub deleted: usize,
}

impl Store {
    /// Connects, giving up after `timeout` (per attempt; every request is bounded
    /// by it too).
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
    ) -> Result<Store, EtcdError> {
        Store::connect_pinging(endpoints, prefix, timeout, Duration::from_secs(2)).await
    }

    /// Connects like [`Store::connect`], for a connection that may carry
    /// nothing for long (a watch of keys that rarely change): it pings every
    /// 10 s. etcd closes a connection that pings more often than every 5 s
    /// (`--grpc-keepalive-min-time`) while it has nothing else to send.
    pub async fn connect_quiet(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
    ) -> Result<Store, EtcdError> {
        Store::connect_pinging(endpoints, prefix, timeout, Duration::from_secs(10)).await
    }

    async fn connect_pinging(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
        ping_every: Duration,
    ) -> Result<Store, EtcdError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(ping_every, timeout);
        let connecting = Client::connect(endpoints, Some(options));
        let client = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| EtcdError::Timeout {
                endpoints: endpoints.join(","),
                after: timeout,
            })??;
        Ok(Store {
            client,
            keys: Keys::new(prefix),
            timeout,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The connection, for what keeps keys of its own under the prefix (ACME).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Reads every key under the prefix, at one revision.
    pub async fn load(&mut self) -> Result<Loaded, EtcdError> {
        let resp = self
            .client
            .get(self.keys.all(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp.header().ok_or(EtcdError::NoHeader)?.revision();
        let mut loaded = Loaded {
            revision,
            ..Loaded::default()
        };
        for kv in resp.kvs() {
            let Some(key) = kv.key_str().ok().and_then(|k| self.keys.parse(k)) else {
                continue;
            };
            match change(&key, Some(kv.value())) {
                Ok(Change::App(_, Some(a))) => loaded.definitions.apps.push(a),
                Ok(Change::Machine(_, Some(m))) => loaded.definitions.machines.push(m),
                Ok(Change::Node(_, Some(n))) => loaded.definitions.nodes.push(n),
                Ok(Change::Regions(r)) => loaded.definitions.regions = r,
                Ok(Change::Status(id, Some(s))) => {
                    loaded.statuses.insert(id, s);
                }
                Ok(Change::Rtts(node, Some(m))) => loaded.rtts.push((node, m)),
                Ok(_) => {}
                Err(e) => loaded.bad.push(e),
            }
        }
        Ok(loaded)
    }

    /// Makes the definitions under the prefix exactly `defs` (apps, machines and
    /// region seeds; nodes register themselves): new and changed values are
    /// written, and definitions no longer there are deleted.
    pub async fn push(&mut self, defs: &Definitions) -> Result<PushSummary, EtcdError> {
        let mut wanted: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for a in &defs.apps {
            wanted.insert(self.keys.key(&Key::App(a.name.clone())), encode(a));
        }
        for m in &defs.machines {
            wanted.insert(self.keys.key(&Key::Machine(m.id.clone())), encode(m));
        }
        wanted.insert(self.keys.key(&Key::Regions), encode(&defs.regions));

        let mut have: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for kind in ["apps", "machines"] {
            let resp = self
                .client
                .get(self.keys.kind(kind), Some(GetOptions::new().with_prefix()))
                .await?;
            for kv in resp.kvs() {
                if let Ok(k) = kv.key_str() {
                    have.insert(k.to_owned(), kv.value().to_vec());
                }
            }
        }
        let regions = self.client.get(self.keys.key(&Key::Regions), None).await?;
        for kv in regions.kvs() {
            if let Ok(k) = kv.key_str() {
                have.insert(k.to_owned(), kv.value().to_vec());
            }
        }

        let mut summary = PushSummary::default();
        let mut ops = Vec::new();
        for (key, value) in &wanted {
            if have.get(key) == Some(value) {
                summary.unchanged += 1;
            } else {
                summary.written += 1;
                ops.push(TxnOp::put(key.clone(), value.clone(), None));
            }
        }
        for key in have.keys().filter(|k| !wanted.contains_key(*k)) {
            summary.deleted += 1;
            ops.push(TxnOp::delete(key.clone(), None));
        }
        // Writes and deletions in bounded transactions, writes first: a machine
        // moving from one app to another never has both definitions missing.
        for chunk in ops.chunks(TXN_OPS) {
            self.client.txn(Txn::new().and_then(chunk.to_vec())).await?;
        }
        Ok(summary)
    }

    /// Everything under the prefix as one JSON document, for `tern catalog get`.
    pub async fn dump(&mut self) -> Result<serde_json::Value, EtcdError> {
        let resp = self
            .client
            .get(self.keys.all(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp.header().ok_or(EtcdError::NoHeader)?.revision();
        let mut out = serde_json::json!({
            "revision": revision,
            "apps": {}, "machines": {}, "regions": null, "nodes": {}, "status": {},
            "rtts": {}, "unreadable": {},
        });
        for kv in resp.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            let value: serde_json::Value = match serde_json::from_slice(kv.value()) {
                Ok(v) => v,
                Err(e) => {
                    out["unreadable"][key] = serde_json::Value::String(e.to_string());
                    continue;
                }
            };
            match self.keys.parse(key) {
                Some(Key::App(n)) => out["apps"][n] = value,
                Some(Key::Machine(n)) => out["machines"][n] = value,
                Some(Key::Regions) => out["regions"] = value,
                Some(Key::Node(n)) => out["nodes"][n] = value,
                Some(Key::Status(n)) => out["status"][n] = value,
                Some(Key::Rtts(n)) => out["rtts"][n] = value,
                None => {}
            }
        }
        Ok(out)
    }

    /// Deletes every key under the prefix (tests and teardown).
    pub async fn clear(&mut self) -> Result<(), EtcdError> {
        self.client
            .delete(self.keys.all(), Some(DeleteOptions::new().with_prefix()))
            .await?;
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}
