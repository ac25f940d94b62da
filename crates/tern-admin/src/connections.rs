//! `/debug/connections`: live connections with their poll rate, bytes and age,
//! busiest first, so a spinning connection is at the top.

use std::collections::HashMap;
use std::time::Duration;

use pollwatch::{ConnSnapshot, Watchdog};
use serde::Serialize;

#[derive(Serialize)]
struct ConnView {
    id: u64,
    polls_per_sec: f64,
    polls: u64,
    wakeups: u64,
    self_wakes: u64,
    bytes_in: u64,
    bytes_out: u64,
    age_ms: u128,
    since_progress_ms: u128,
    spins: u64,
    context: HashMap<String, String>,
}

/// Samples every live connection twice, `over` apart, to measure poll rates.
pub async fn connections_json(dog: &Watchdog, over: Duration) -> String {
    let first: HashMap<u64, u64> = dog
        .connections()
        .into_iter()
        .map(|c| (c.id, c.polls))
        .collect();
    tokio::time::sleep(over).await;
    let secs = over.as_secs_f64().max(1e-3);
    let mut views: Vec<ConnView> = dog
        .connections()
        .into_iter()
        .map(|c: ConnSnapshot| {
            let before = first.get(&c.id).copied().unwrap_or(0);
            ConnView {
                id: c.id,
                polls_per_sec: (c.polls.saturating_sub(before)) as f64 / secs,
                polls: c.polls,
                wakeups: c.wakeups,
                self_wakes: c.self_wakes,
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
                age_ms: c.age.as_millis(),
                since_progress_ms: c.since_progress.as_millis(),
                spins: c.spins,
                context: c.context.into_iter().collect(),
            }
        })
        .collect();
    views.sort_by(|a, b| {
        b.polls_per_sec
            .total_cmp(&a.polls_per_sec)
            .then(a.id.cmp(&b.id))
    });
    serde_json::to_string_pretty(&serde_json::json!({
        "sampled_ms": over.as_millis(),
        "count": views.len(),
        "spins_total": dog.spins(),
        "connections": views,
    }))
    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
