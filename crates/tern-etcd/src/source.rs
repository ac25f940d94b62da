//! A node's etcd session: register under a lease, read the fleet, watch it from
//! that revision on, and publish this node's machines; when etcd goes away, keep
//! routing on what was last read, and come back where the watch left off (or, if
//! etcd compacted that history, read the whole fleet again).

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    EventType, LeaseKeepAliveStream, LeaseKeeper, PutOptions, WatchOptions, WatchResponse,
};
use tern_catalog::model::NodeDef;
use tern_catalog::{now_us, Change, Fleet};
use tokio::sync::watch;

use crate::keys::{change, encode, Key, Keys};
use crate::publish::Publisher;
use crate::report::Report;
use crate::store::{EtcdError, Loaded, Store};

/// How to reach etcd, and this node's lease.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub lease_ttl: Duration,
    pub dial_timeout: Duration,
}

/// Keeps a fleet in step with etcd.
pub struct EtcdSource {
    fleet: Arc<Fleet>,
    settings: EtcdSettings,
    me: NodeDef,
    report: Arc<Report>,
    keys: Keys,
    /// The last revision applied: a new session's watch starts after it.
    revision: Option<i64>,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
    #[error("the lease expired")]
    LeaseLost,
    #[error("the watch ended")]
    WatchClosed,
    #[error("etcd compacted the history after revision {0}")]
    Compacted(i64),
    #[error("the watch was cancelled: {0}")]
    Cancelled(String),
    #[error("shutting down")]
    Shutdown,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often this node's machines are looked at for a band to publish.
const PUBLISH_TICK: Duration = Duration::from_millis(100);

impl EtcdSource {
    pub fn new(fleet: Arc<Fleet>, settings: EtcdSettings) -> Self {
        EtcdSource {
            me: fleet.me(),
            keys: Keys::new(&settings.prefix),
            fleet,
            settings,
            report: Arc::new(Report::default()),
            revision: None,
        }
    }

    pub fn report(&self) -> Arc<Report> {
        Arc::clone(&self.report)
    }

    /// Runs sessions until `shutdown` turns true, retrying with backoff while
    /// etcd cannot be reached. On shutdown the lease is revoked, so that this
    /// node's machines leave every other node's rotation at once.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.session(&mut shutdown).await {
                Ended::Shutdown => return,
                ended => {
                    if let Ended::Compacted(_) = ended {
                        self.revision = None;
                        self.report.resynced("compacted");
                        backoff = BACKOFF_MIN;
                    }
                    let why = ended.to_string();
                    if self.report.lost(&why) {
                        tracing::warn!(error = %why, "etcd session lost: routing on the last catalog read while retrying");
                    } else {
                        tracing::debug!(error = %why, "etcd still unreachable");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn session(&mut self, shutdown: &mut watch::Receiver<bool>) -> Ended {
        match self.serve(shutdown).await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    /// One session, until it fails or shutdown.
    async fn serve(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<std::convert::Infallible, Ended> {
        let s = self.settings.clone();
        let mut store = Store::connect(&s.endpoints, &s.prefix, s.dial_timeout).await?;
        let ttl = i64::try_from(s.lease_ttl.as_secs().max(1)).unwrap_or(5);
        let lease = store.client.lease_grant(ttl, None).await?.id();
        let (keeper, acks) = store.client.lease_keep_alive(lease).await?;
        // In a task of its own, so that nothing the session does (a long
        // publish, a burst of events) can starve the lease.
        let (lease_lost, mut lost) = tokio::sync::oneshot::channel();
        let keeping = tokio::spawn(keep_lease(keeper, acks, s.lease_ttl, lease_lost));
        let _keeping = AbortOnDrop(keeping);
        let node_key = self.keys.key(&Key::Node(self.me.id.clone()));
        store
            .client
            .put(
                node_key,
                encode(&self.me),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;

        let from = match self.revision {
            Some(r) => r + 1,
            None => {
                let loaded = store.load().await?;
                let revision = loaded.revision;
                self.apply_loaded(loaded);
                revision + 1
            }
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        let mut watching = store.client.watch(self.keys.all(), Some(options)).await?;
        self.report.connected(from - 1);
        tracing::info!(
            revision = from - 1,
            lease,
            "etcd: registered, watching the catalog"
        );

        let mut publisher = Publisher::new(lease, self.me.id.clone());
        publisher
            .publish(&mut store.client, &self.keys, &self.fleet)
            .await?;
        let changes = self.fleet.local_changes();
        let mut tick = tokio::time::interval(PUBLISH_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    let revoking = store.client.lease_revoke(lease);
                    let _ = tokio::time::timeout(s.dial_timeout, revoking).await;
                    return Err(Ended::Shutdown);
                }
                _ = &mut lost => return Err(Ended::LeaseLost),
                message = watching.message() => match message? {
                    Some(resp) => self.apply_watch(&resp)?,
                    None => return Err(Ended::WatchClosed),
                },
                () = changes.notified() => publisher.publish(&mut store.client, &self.keys, &self.fleet).await?,
                _ = tick.tick() => publisher.publish(&mut store.client, &self.keys, &self.fleet).await?,
            }
        }
    }

    /// The whole fleet as read at one revision replaces what the fleet held.
    fn apply_loaded(&mut self, loaded: Loaded) {
        for bad in &loaded.bad {
            tracing::warn!(error = %bad, "etcd: a catalog key could not be read; left out");
        }
        self.fleet.replace(loaded.definitions);
        self.fleet.replace_statuses(loaded.statuses);
        let rtts = loaded.rtts.into_iter();
        self.fleet
            .apply(rtts.map(|(node, m)| Change::Rtts(node, Some(m))));
        self.revision = Some(loaded.revision);
        self.report.revision(loaded.revision);
    }

    /// Applies one watch response's events, in order, as one catalog change.
    fn apply_watch(&mut self, resp: &WatchResponse) -> Result<(), Ended> {
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return Err(Ended::Compacted(resp.compact_revision()));
            }
            return Err(Ended::Cancelled(resp.cancel_reason().to_owned()));
        }
        let mut changes = Vec::with_capacity(resp.events().len());
        let mut last = None;
        let mut delays = Vec::new();
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            last = last.max(Some(kv.mod_revision()));
            let Some(key) = kv.key_str().ok().and_then(|k| self.keys.parse(k)) else {
                continue;
            };
            // The raw type: `Event::event_type` panics on one it does not know.
            let value = match event.0.r#type {
                t if t == EventType::Put as i32 => Some(kv.value()),
                t if t == EventType::Delete as i32 => None,
                other => {
                    tracing::warn!(kind = other, "etcd: an event of an unknown kind; skipped");
                    continue;
                }
            };
            match change(&key, value) {
                Ok(c) => {
                    if let Change::Status(_, Some(s)) = &c {
                        if s.node != self.me.id {
                            delays.push(now_us().saturating_sub(s.changed_at_us));
                        }
                    }
                    changes.push(c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "etcd: a catalog change could not be read; skipped")
                }
            }
        }
        metrics::counter!("tern_catalog_events_total").increment(changes.len() as u64);
        self.fleet.apply(changes);
        for us in delays {
            self.report.propagated(Duration::from_micros(us));
        }
        // A progress notification (no events) says everything up to its header's
        // revision has been sent. The watch's creation says nothing of the kind:
        // its header is the store's revision, and the events before it may still
        // be on their way.
        let revision = match last {
            Some(r) => Some(r),
            None if resp.created() => None,
            None => resp.header().map(|h| h.revision()),
        };
        if let Some(r) = revision {
            if self.revision.is_none_or(|old| r > old) {
                self.revision = Some(r);
                self.report.revision(r);
            }
        }
        Ok(())
    }
}

/// Keeps the lease alive (a third of its TTL apart) until a keep-alive fails or
/// etcd says the lease has expired; then says so on `lost`.
async fn keep_lease(
    mut keeper: LeaseKeeper,
    mut acks: LeaseKeepAliveStream,
    ttl: Duration,
    lost: tokio::sync::oneshot::Sender<()>,
) {
    let mut every = tokio::time::interval((ttl / 3).max(Duration::from_millis(200)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if keeper.keep_alive().await.is_err() {
            break;
        }
        match acks.message().await {
            Ok(Some(a)) if a.ttl() > 0 => {}
            _ => break,
        }
    }
    let _ = lost.send(());
}

/// Aborts a task when its owner goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
