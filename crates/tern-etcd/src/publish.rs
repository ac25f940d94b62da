//! Publishing this node's machines: each one's live status under the node's
//! lease, written when its state or health changes, and when its load crosses a
//! band, no more often than `BAND_EVERY`, so a flapping load cannot flood etcd.
//! Also the round trips this node measured to its peers, for the other nodes'
//! dashboards: when a peer comes or goes at once, and when one moved by more
//! than `RTT_MOVE`, no more often than `RTT_EVERY`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tern_balance::Band;
use tern_catalog::model::{MachineState, MachineStatus, MeasuredRtts, SlotStatus};
use tern_catalog::{now_us, Fleet, MachineEntry};

use crate::keys::{encode, Key, Keys};

/// A band change of one machine is published at most this often.
pub const BAND_EVERY: Duration = Duration::from_millis(250);

/// The measured round trips are published at most this often, but for a peer
/// measured for the first time or no longer there.
pub const RTT_EVERY: Duration = Duration::from_secs(5);

/// A round trip that moved by less than this fraction is not published again.
const RTT_MOVE: f64 = 0.2;

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
    rtts: Option<(BTreeMap<String, u64>, Instant)>,
}

impl Publisher {
    pub(crate) fn new(lease: i64, node: String) -> Self {
        Publisher {
            lease,
            node,
            published: HashMap::new(),
            rtts: None,
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
        self.publish_rtts(client, keys, &snap).await
    }

    /// This node's measured round trips, when they moved enough (see
    /// `worth_publishing`).
    async fn publish_rtts(
        &mut self,
        client: &mut Client,
        keys: &Keys,
        snap: &tern_catalog::Snapshot,
    ) -> Result<(), etcd_client::Error> {
        let now: BTreeMap<String, u64> = snap
            .nodes
            .iter()
            .filter_map(|(id, n)| {
                let us = u64::try_from(n.live.rtt()?.as_micros()).unwrap_or(u64::MAX);
                Some((id.clone(), us))
            })
            .collect();
        let due = match &self.rtts {
            None => !now.is_empty(),
            Some((before, at)) => worth_publishing(before, &now, at.elapsed()),
        };
        if !due {
            return Ok(());
        }
        let key = keys.key(&Key::Rtts(self.node.clone()));
        let value = encode(&MeasuredRtts {
            rtt_us: now.clone(),
        });
        let options = PutOptions::new().with_lease(self.lease);
        client.put(key, value, Some(options)).await?;
        self.rtts = Some((now, Instant::now()));
        Ok(())
    }
}

/// Whether round trips measured now differ enough from those published `since`
/// ago: a peer measured for the first time or gone at once; one that moved by
/// more than `RTT_MOVE`, once `RTT_EVERY` has passed.
fn worth_publishing(
    before: &BTreeMap<String, u64>,
    now: &BTreeMap<String, u64>,
    since: Duration,
) -> bool {
    if !before.keys().eq(now.keys()) {
        return true;
    }
    since >= RTT_EVERY
        && before.values().zip(now.values()).any(|(&b, &n)| {
            let moved = b.abs_diff(n) as f64;
            moved > RTT_MOVE * b.max(1) as f64
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(p, us)| (p.to_string(), *us)).collect()
    }

    #[test]
    fn round_trips_are_published_again_when_a_peer_changes_or_one_moved_enough() {
        let before = table(&[("ord-1", 90_000), ("sin-1", 200_000)]);
        let soon = Duration::from_millis(100);
        let later = RTT_EVERY;
        // A peer measured for the first time, or gone: at once.
        let more = table(&[("ord-1", 90_000), ("sin-1", 200_000), ("syd-1", 1)]);
        assert!(worth_publishing(&before, &more, soon));
        assert!(worth_publishing(
            &before,
            &table(&[("ord-1", 90_000)]),
            soon
        ));
        // A move of more than a fifth: only once RTT_EVERY has passed.
        let moved = table(&[("ord-1", 90_000), ("sin-1", 250_000)]);
        assert!(!worth_publishing(&before, &moved, soon));
        assert!(worth_publishing(&before, &moved, later));
        // Jitter: never.
        let jitter = table(&[("ord-1", 99_000), ("sin-1", 180_000)]);
        assert!(!worth_publishing(&before, &jitter, later));
    }
}
