//! Publishing this node's machines: each one's live status under the node's
//! lease, written when its state or health changes, and when its load crosses a
//! band, no more often than `BAND_EVERY`, so a flapping load cannot flood etcd.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tern_balance::Band;
use tern_catalog::model::{MachineState, MachineStatus, SlotStatus};
use tern_catalog::{now_us, Fleet, MachineEntry};

use crate::keys::{encode, Key, Keys};

/// A band change of one machine is published at most this often.
pub const BAND_EVERY: Duration = Duration::from_millis(250);

/// Writes in one transaction: etcd refuses more than 128 by default.
const TXN_OPS: usize = 100;

/// What other nodes route on, of one machine: a change to it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    state: MachineState,
    slots: Vec<(u16, bool, Band)>,
}

impl Seen {
    fn of(m: &MachineEntry) -> Seen {
        Seen {
            state: m.live.state(),
            slots: m
                .live
                .slots()
                .map(|(port, s)| (port, s.healthy(), s.band()))
                .collect(),
        }
    }

    /// Whether only a band moved (and not state or health), which waits its turn.
    fn only_band(&self, before: &Seen) -> bool {
        self.state == before.state
            && self.slots.len() == before.slots.len()
            && self
                .slots
                .iter()
                .zip(&before.slots)
                .all(|(a, b)| a.0 == b.0 && a.1 == b.1)
    }
}

/// This node's machines as last published, under one lease.
pub(crate) struct Publisher {
    lease: i64,
    node: String,
    published: HashMap<String, (Seen, Instant)>,
}

impl Publisher {
    pub(crate) fn new(lease: i64, node: String) -> Self {
        Publisher {
            lease,
            node,
            published: HashMap::new(),
        }
    }

    /// Writes what changed since the last call, in transactions of at most
    /// `TXN_OPS` writes (a fleet-wide change is a few round trips, not one per
    /// machine); deletes the statuses of machines this node no longer runs, but
    /// only while they are still its own (under its lease): the machine's new
    /// node may have written its own already.
    pub(crate) async fn publish(
        &mut self,
        client: &mut Client,
        keys: &Keys,
        fleet: &Fleet,
    ) -> Result<(), etcd_client::Error> {
        let snap = tern_catalog::Catalog::snapshot(fleet);
        let mut seen_ids = Vec::new();
        let mut puts = Vec::new();
        let mut written = Vec::new();
        for m in snap.machines.values().filter(|m| m.is_local()) {
            seen_ids.push(m.def.id.clone());
            let now = Seen::of(m);
            if let Some((before, at)) = self.published.get(&m.def.id) {
                if *before == now || (now.only_band(before) && at.elapsed() < BAND_EVERY) {
                    continue;
                }
            }
            let status = MachineStatus {
                node: self.node.clone(),
                state: now.state,
                services: m
                    .live
                    .slots()
                    .map(|(port, s)| {
                        let slot = SlotStatus {
                            healthy: s.healthy(),
                            load: s.load.active(),
                        };
                        (port, slot)
                    })
                    .collect(),
                changed_at_us: now_us(),
            };
            let key = keys.key(&Key::Status(m.def.id.clone()));
            let options = PutOptions::new().with_lease(self.lease);
            puts.push(TxnOp::put(key, encode(&status), Some(options)));
            written.push((m.def.id.clone(), now));
        }
        for chunk in puts.chunks(TXN_OPS) {
            client.txn(Txn::new().and_then(chunk.to_vec())).await?;
        }
        metrics::counter!("tern_catalog_status_puts_total").increment(written.len() as u64);
        let at = Instant::now();
        for (id, now) in written {
            self.published.insert(id, (now, at));
        }
        let gone: Vec<String> = self
            .published
            .keys()
            .filter(|id| !seen_ids.contains(id))
            .cloned()
            .collect();
        for id in gone {
            let key = keys.key(&Key::Status(id.clone()));
            let ours = Compare::lease(key.clone(), CompareOp::Equal, self.lease);
            let delete = Txn::new().when([ours]).and_then([TxnOp::delete(key, None)]);
            client.txn(delete).await?;
            self.published.remove(&id);
        }
        Ok(())
    }
}
