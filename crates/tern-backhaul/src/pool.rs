//! Every peer's link, following the catalog: a link for each node that has a
//! backhaul address, replaced when the address changes, evicted when the node
//! leaves; and the two ways a request crosses one (a stream, a CONNECT tunnel).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tern_catalog::{Catalog, NodeEntry, Snapshot};
use tokio::task::JoinHandle;

use crate::body::{pump, RecvBody};
use crate::error::BackhaulError;
use crate::link::PeerLink;
use crate::tunnel::H2Stream;
use crate::Settings;

/// The backhaul's client side: one link per peer.
pub struct Backhaul {
    settings: Arc<Settings>,
    links: Mutex<HashMap<String, Kept>>,
}

/// A link and the task keeping it up; the task ends with the entry.
struct Kept {
    link: Arc<PeerLink>,
    keeper: JoinHandle<()>,
}

impl Kept {
    /// Whether it is the link to `node` as the catalog has it now: the same
    /// address, and the same live state (a node removed and added again gets
    /// new live state, which a new link must feed).
    fn serves(&self, node: &NodeEntry) -> bool {
        node.def.backhaul == Some(self.link.addr) && Arc::ptr_eq(&node.live, &self.link.live)
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// What a CONNECT over the backhaul came back with.
pub enum Tunnel {
    /// The peer accepted it: its answer's head, and the stream to copy through.
    Open(Response<()>, H2Stream),
    /// The peer refused it, with this answer.
    Refused(Response<RecvBody>),
}

impl Backhaul {
    pub fn new(settings: Settings) -> Arc<Self> {
        Arc::new(Backhaul {
            settings: Arc::new(settings),
            links: Mutex::new(HashMap::new()),
        })
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<String, Kept>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Brings the links in line with the snapshot's nodes.
    pub fn reconcile(&self, snap: &Snapshot) {
        let mut links = self.links();
        links.retain(|id, kept| {
            let keep = snap.nodes.get(id).is_some_and(|n| kept.serves(n));
            if !keep {
                tracing::info!(peer = %id, "backhaul link evicted: the node left the catalog or moved");
            }
            keep
        });
        for node in snap.nodes.values() {
            if !links.contains_key(&node.def.id) {
                if let Some(kept) = self.start(node) {
                    links.insert(node.def.id.clone(), kept);
                }
            }
        }
    }

    fn start(&self, node: &NodeEntry) -> Option<Kept> {
        let addr = node.def.backhaul?;
        let link = Arc::new(PeerLink::new(
            node.def.id.clone(),
            addr,
            Arc::clone(&node.live),
            Arc::clone(&self.settings),
        ));
        let keeper = tokio::spawn(Arc::clone(&link).keep());
        Some(Kept { link, keeper })
    }

    /// Follows the catalog until the returned task is aborted.
    pub fn follow(self: &Arc<Self>, catalog: Arc<dyn Catalog>) -> JoinHandle<()> {
        let me = Arc::downgrade(self);
        let mut updates = catalog.watch();
        tokio::spawn(async move {
            loop {
                let snap = Arc::clone(&updates.borrow_and_update());
                match me.upgrade() {
                    Some(b) => b.reconcile(&snap),
                    None => return,
                }
                if updates.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    /// The link to `node`, made now if the catalog's has not been seen yet. A
    /// request's snapshot may be older than the links: one that names a node
    /// whose link has since changed gets an error (nothing was sent, so the
    /// request moves on), never a link that would replace the current one.
    fn link(&self, node: &NodeEntry) -> Result<Arc<PeerLink>, BackhaulError> {
        let mut links = self.links();
        let unusable = |reason: &str| BackhaulError::Connect {
            node: node.def.id.clone(),
            addr: node
                .def
                .backhaul
                .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
            reason: reason.to_owned(),
        };
        if let Some(k) = links.get(&node.def.id) {
            if k.serves(node) {
                return Ok(Arc::clone(&k.link));
            }
            return Err(unusable("the node changed since this request was routed"));
        }
        let kept = self
            .start(node)
            .ok_or_else(|| unusable("the node has no backhaul address"))?;
        let link = Arc::clone(&kept.link);
        links.insert(node.def.id.clone(), kept);
        Ok(link)
    }

    /// A ready handle on `node`'s connection: the "connect" of a request that
    /// crosses the backhaul. Fails, and nothing was sent, when the node cannot be
    /// reached.
    pub async fn ready(&self, node: &NodeEntry) -> Result<Ready, BackhaulError> {
        let link = self.link(node)?;
        let (sender, generation) = link.sender().await?;
        match sender.ready().await {
            Ok(sender) => Ok(Ready {
                link,
                sender,
                generation,
                settings: Arc::clone(&self.settings),
            }),
            Err(e) => {
                link.drop_connection(generation);
                Err(BackhaulError::Connect {
                    node: link.node.clone(),
                    addr: link.addr,
                    reason: format!("connection unusable: {e}"),
                })
            }
        }
    }
}

/// A peer's connection, ready for one stream.
pub struct Ready {
    link: Arc<PeerLink>,
    sender: h2::client::SendRequest<Bytes>,
    /// Which of the link's connections the sender is on.
    generation: u64,
    settings: Arc<Settings>,
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready")
            .field("node", &self.link.node)
            .finish_non_exhaustive()
    }
}

impl Ready {
    /// The node it reaches.
    pub fn node(&self) -> &str {
        &self.link.node
    }

    fn refused(&self, e: h2::Error) -> BackhaulError {
        self.link.drop_connection(self.generation);
        BackhaulError::Connect {
            node: self.link.node.clone(),
            addr: self.link.addr,
            reason: format!("stream refused: {e}"),
        }
    }

    /// Sends a request as one stream and waits for the response head. The body,
    /// if any, streams from a task of its own, under the watchdog.
    pub async fn send<B>(mut self, req: Request<B>) -> Result<Response<RecvBody>, BackhaulError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::BodyError> + Send,
    {
        let (parts, body) = req.into_parts();
        let end = body.is_end_stream();
        let (response, stream) = self
            .sender
            .send_request(Request::from_parts(parts, ()), end)
            .map_err(|e| self.refused(e))?;
        let (broke, mut body_broke) = tokio::sync::oneshot::channel();
        if !end {
            let probe = self.settings.watchdog.as_ref().map(|d| {
                let p = d.register();
                p.set("state", "backhaul-request-body");
                p.set("node", self.link.node.clone());
                p
            });
            let pumping = pump(body, stream, probe.clone(), broke);
            tokio::spawn(async move {
                match probe {
                    Some(p) => {
                        let _ = p.watch(pumping).await;
                    }
                    None => pumping.await,
                }
            });
        }
        match response.await {
            Ok(response) => Ok(response.map(RecvBody::new)),
            // The pump reports a broken body before it resets the stream, so a
            // reset of our own making finds its cause here.
            Err(reset) => Err(match body_broke.try_recv() {
                Ok(cause) => BackhaulError::RequestBody(cause),
                Err(_) => BackhaulError::Stream(reset),
            }),
        }
    }

    /// Opens a CONNECT stream: raw TCP or an upgraded connection.
    pub async fn tunnel(mut self, req: Request<()>) -> Result<Tunnel, BackhaulError> {
        let (response, send) = self
            .sender
            .send_request(req, false)
            .map_err(|e| self.refused(e))?;
        let response = response.await?;
        if !response.status().is_success() {
            return Ok(Tunnel::Refused(response.map(RecvBody::new)));
        }
        let (parts, recv) = response.into_parts();
        Ok(Tunnel::Open(
            Response::from_parts(parts, ()),
            H2Stream::new(send, recv),
        ))
    }
}
