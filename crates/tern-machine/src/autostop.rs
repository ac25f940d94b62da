//! Autostop: a pass every `autostop_interval` stops (or suspends) what the load no
//! longer needs, at most one machine per app per region per pass, as fly-proxy
//! does. A region keeps one more started machine than it has machines over their
//! soft limit, and never fewer than `min_machines_running`. A lone machine is
//! stopped once it has had no load for `idle_timeout`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use tern_balance::Band;
use tern_catalog::model::{AutoStop, MachineState};
use tern_catalog::{AppEntry, Snapshot};

/// When autostop runs and how long a lone machine may idle.
#[derive(Debug, Clone, Copy)]
pub struct AutostopSettings {
    pub interval: Duration,
    pub idle_timeout: Duration,
}

/// One started machine of a region, as a pass sees it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub id: String,
    /// Units in flight, over the app's services.
    pub load: u32,
    /// Over its soft limit on any service.
    pub over_soft: bool,
    /// How long it has had no load.
    pub idle_for: Duration,
}

/// What a pass does to one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Action {
    pub machine: String,
    pub suspend: bool,
    /// For the log: started machines in the region, and how many it needs.
    pub started: usize,
    pub needed: usize,
}

/// Which started machine of one region to stop, if any: the least loaded (the
/// longest idle among equals) while there are more than needed; a lone machine
/// only after `idle_timeout` without load.
pub(crate) fn choose(started: &[Seen], min_running: u32, idle_timeout: Duration) -> Option<usize> {
    if started.len() > needed(started, min_running) {
        return started
            .iter()
            .enumerate()
            .min_by_key(|(_, m)| (m.load, Reverse(m.idle_for)))
            .map(|(i, _)| i);
    }
    let lone = started.len() == 1 && min_running == 0;
    if lone && started[0].load == 0 && started[0].idle_for >= idle_timeout {
        return Some(0);
    }
    None
}

/// Started machines a region needs: one more than those over their soft limit,
/// and never fewer than `min_running`.
fn needed(started: &[Seen], min_running: u32) -> usize {
    let over = started.iter().filter(|m| m.over_soft).count();
    (over + 1).max(min_running as usize)
}

/// Each machine's use at the last pass: units taken, and since when it idles.
#[derive(Default)]
pub(crate) struct Usage {
    seen: HashMap<String, (u64, Instant)>,
}

impl Usage {
    /// How long `id` has been idle, given its units taken so far, load now and
    /// when it last started.
    fn idle_for(
        &mut self,
        id: &str,
        taken: u64,
        load: u32,
        started_at: Instant,
        now: Instant,
    ) -> Duration {
        let entry = self
            .seen
            .entry(id.to_owned())
            .or_insert((taken, started_at));
        if entry.0 != taken || load > 0 {
            *entry = (taken, now);
        }
        if started_at > entry.1 {
            entry.1 = started_at;
        }
        now.saturating_duration_since(entry.1)
    }

    fn forget_others(&mut self, keep: &HashSet<String>) {
        self.seen.retain(|id, _| keep.contains(id));
    }
}

/// The actions of one pass over `snapshot`. `state` gives the lifecycle state
/// and when it began for the machines this node runs (`None` for the others).
pub(crate) fn pass(
    snapshot: &Snapshot,
    state: impl Fn(&str) -> Option<(MachineState, Instant)>,
    usage: &mut Usage,
    idle_timeout: Duration,
    now: Instant,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut tracked = HashSet::new();
    for app in snapshot.apps.values().filter(|a| a.startable) {
        let Some((suspend, min_running)) = policy(app) else {
            continue;
        };
        let mut regions: BTreeMap<&str, Vec<Seen>> = BTreeMap::new();
        for m in &app.machines {
            let Some((MachineState::Started, started_at)) = state(&m.def.id) else {
                continue;
            };
            let (mut load, mut taken, mut over_soft) = (0u32, 0u64, false);
            for (_, slot) in m.live.slots() {
                load = load.saturating_add(slot.load.active());
                taken = taken.wrapping_add(slot.load.taken());
                over_soft |= slot.band() != Band::UnderSoft;
            }
            let idle_for = usage.idle_for(&m.def.id, taken, load, started_at, now);
            tracked.insert(m.def.id.clone());
            regions.entry(&m.def.region).or_default().push(Seen {
                id: m.def.id.clone(),
                load,
                over_soft,
                idle_for,
            });
        }
        for started in regions.values() {
            if let Some(i) = choose(started, min_running, idle_timeout) {
                actions.push(Action {
                    machine: started[i].id.clone(),
                    suspend,
                    started: started.len(),
                    needed: needed(started, min_running),
                });
            }
        }
    }
    usage.forget_others(&tracked);
    actions
}

/// Whether an app's machines are autostopped, and how: only when every service
/// asks for it (a machine serves them all); suspended when all say suspend. The
/// largest `min_machines_running` holds.
fn policy(app: &AppEntry) -> Option<(bool, u32)> {
    let modes: Vec<AutoStop> = app.services.iter().map(|s| s.def.autostop).collect();
    if modes.is_empty() || modes.contains(&AutoStop::Off) {
        return None;
    }
    let suspend = modes.iter().all(|m| *m == AutoStop::Suspend);
    let min_running = app
        .services
        .iter()
        .map(|s| s.def.min_machines_running)
        .max()
        .unwrap_or(0);
    Some((suspend, min_running))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: &str, load: u32, over_soft: bool, idle_s: u64) -> Seen {
        Seen {
            id: id.into(),
            load,
            over_soft,
            idle_for: Duration::from_secs(idle_s),
        }
    }

    const IDLE: Duration = Duration::from_secs(60);

    #[test]
    fn a_region_keeps_one_more_than_its_busy_machines() {
        // Three idle: one is needed, the longest idle of the least loaded goes.
        let three = [
            seen("a", 0, false, 5),
            seen("b", 0, false, 50),
            seen("c", 1, false, 0),
        ];
        assert_eq!(choose(&three, 0, IDLE), Some(1));
        // Two over their soft limit: three are needed, none goes.
        let busy = [
            seen("a", 9, true, 0),
            seen("b", 9, true, 0),
            seen("c", 0, false, 9),
        ];
        assert_eq!(choose(&busy, 0, IDLE), None);
        // One over: two needed, the idle third goes.
        let one_busy = [
            seen("a", 9, true, 0),
            seen("b", 1, false, 0),
            seen("c", 0, false, 9),
        ];
        assert_eq!(choose(&one_busy, 0, IDLE), Some(2));
    }

    #[test]
    fn never_below_min_machines_running_and_a_lone_machine_waits_for_its_idle_timeout() {
        let two = [seen("a", 0, false, 500), seen("b", 0, false, 500)];
        assert_eq!(choose(&two, 2, IDLE), None);
        assert_eq!(choose(&two, 1, IDLE), Some(0));
        assert_eq!(choose(&[seen("a", 0, false, 59)], 0, IDLE), None);
        assert_eq!(choose(&[seen("a", 0, false, 60)], 0, IDLE), Some(0));
        assert_eq!(choose(&[seen("a", 1, false, 600)], 0, IDLE), None, "busy");
        assert_eq!(
            choose(&[seen("a", 0, false, 600)], 1, IDLE),
            None,
            "the minimum"
        );
        assert_eq!(choose(&[], 0, IDLE), None);
    }

    #[test]
    fn use_between_passes_resets_the_idle_clock() {
        let mut usage = Usage::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            usage.idle_for("m", 0, 0, t0, at(10)),
            Duration::from_secs(10)
        );
        // A request came and went between passes: taken moved.
        assert_eq!(usage.idle_for("m", 1, 0, t0, at(20)), Duration::ZERO);
        assert_eq!(
            usage.idle_for("m", 1, 0, t0, at(50)),
            Duration::from_secs(30)
        );
        // Load now.
        assert_eq!(usage.idle_for("m", 1, 2, t0, at(60)), Duration::ZERO);
        // Restarted since: idle from its start.
        assert_eq!(
            usage.idle_for("m", 1, 0, at(70), at(75)),
            Duration::from_secs(5)
        );
    }
}
