//! The dashboard: the page at `/` (one embedded file, no outside assets) and
//! `/dashboard.json`, what the page reads beside `/catalog` and
//! `/debug/connections`.

use std::collections::BTreeMap;
use std::time::{Instant, UNIX_EPOCH};

use serde::Serialize;

use crate::traffic::{read_traffic, Traffic};

/// The page: HTML, its style and its script in one file.
pub const PAGE: &str = include_str!("../assets/dashboard.html");

/// What `/dashboard.json` shows beside the catalog.
#[derive(Serialize)]
pub struct DashboardView {
    pub node: String,
    pub region: String,
    pub uptime_secs: u64,
    /// Where the catalog comes from and how it is doing (`/debug/catalog`).
    pub catalog: serde_json::Value,
    pub traffic: Traffic,
    pub watchdog: WatchdogView,
}

#[derive(Serialize)]
pub struct WatchdogView {
    /// Whether the spin watchdog runs (`[watchdog] enabled`).
    pub enabled: bool,
    pub spins_total: u64,
    pub recent_spins: Vec<SpinView>,
    /// The runtime watchdog of each runtime (one, or one per core).
    pub runtimes: Vec<RuntimeView>,
}

#[derive(Serialize)]
pub struct SpinView {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub conn: u64,
    pub cause: String,
    pub polls_per_sec: f64,
    pub action: &'static str,
    pub context: BTreeMap<String, String>,
}

#[derive(Serialize)]
pub struct RuntimeView {
    pub stalled: bool,
    pub stalls: u64,
    pub pings: u64,
    pub last_round_trip_ms: f64,
}

/// Gathers the view from the parts of the admin state it reads.
pub struct DashboardParts<'a> {
    pub node: &'a str,
    pub region: &'a str,
    pub started: Instant,
    pub catalog: serde_json::Value,
    pub metrics_text: &'a str,
    pub watchdog: Option<&'a pollwatch::Watchdog>,
    pub runtimes: &'a [pollwatch::StallState],
}

impl DashboardParts<'_> {
    pub fn view(self) -> DashboardView {
        let recent_spins = self
            .watchdog
            .map(|d| d.recent_spins())
            .unwrap_or_default()
            .into_iter()
            .map(|s| SpinView {
                at_ms: s
                    .at
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                conn: s.conn,
                cause: s.cause,
                polls_per_sec: s.polls_per_sec,
                action: s.action,
                context: s.context.into_iter().collect(),
            })
            .collect();
        let runtimes = self
            .runtimes
            .iter()
            .map(|r| {
                let s = r.status();
                RuntimeView {
                    stalled: s.stalled,
                    stalls: s.stalls,
                    pings: s.pings,
                    last_round_trip_ms: s.last_round_trip.as_secs_f64() * 1000.0,
                }
            })
            .collect();
        DashboardView {
            node: self.node.to_owned(),
            region: self.region.to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            catalog: self.catalog,
            traffic: read_traffic(self.metrics_text),
            watchdog: WatchdogView {
                enabled: self.watchdog.is_some(),
                spins_total: self.watchdog.map_or(0, pollwatch::Watchdog::spins),
                recent_spins,
                runtimes,
            },
        }
    }
}
