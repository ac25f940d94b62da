//! Tern's overload manager: past a budget of open client connections or of
//! resident memory, new work is shed at once and cheaply (a new connection is
//! closed as soon as it is accepted, a new request gets 503 `overloaded`) rather
//! than letting the process grow until the kernel kills it, in the manner of
//! Envoy's overload manager. Work already admitted goes on.
//!
//! The checks are one atomic load each; the memory budget is enforced from a
//! sample of the resident set taken every [`SAMPLE_EVERY`] by [`Overload::watch_memory`].

mod memory;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use memory::{resident_bytes, MemoryError};

/// How often the resident set is sampled when a memory budget is set.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The memory pressure ends when the resident set falls below this share of the
/// budget (in tenths): without the gap, a process hovering at its budget would
/// flap between shedding and not at every sample.
const RELEASE_TENTHS: u64 = 9;

/// The budgets; `None` is no budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budgets {
    /// Open client connections, over every listener of the process.
    pub max_connections: Option<usize>,
    /// Resident memory of the process, in bytes.
    pub max_memory: Option<u64>,
}

/// Why new work was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    #[error("the connection budget ({0} open connections) is spent")]
    Connections(usize),
    #[error("the memory budget ({0} bytes resident) is spent")]
    Memory(u64),
}

impl Shed {
    /// The resource, as metrics label it.
    pub fn resource(self) -> &'static str {
        match self {
            Shed::Connections(_) => "connections",
            Shed::Memory(_) => "memory",
        }
    }
}

/// The budgets and where the process stands against them; shared by every
/// listener and the proxy.
#[derive(Debug, Default)]
pub struct Overload {
    budgets: Budgets,
    open: AtomicUsize,
    memory_over: AtomicBool,
}

impl Overload {
    /// Budgets that shed nothing.
    pub fn unlimited() -> Arc<Overload> {
        Arc::new(Overload::default())
    }

    /// Checks that the memory budget can be enforced here (the resident set is
    /// readable) before anything is served.
    pub fn new(budgets: Budgets) -> Result<Arc<Overload>, MemoryError> {
        if budgets.max_memory.is_some() {
            resident_bytes()?;
        }
        Ok(Arc::new(Overload {
            budgets,
            ..Overload::default()
        }))
    }

    pub fn budgets(&self) -> Budgets {
        self.budgets
    }

    /// Admits a new client connection, or says why not. The permit counts it as
    /// open until dropped.
    pub fn admit_connection(self: &Arc<Self>) -> Result<ConnectionPermit, Shed> {
        self.admit_request()?;
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        let permit = ConnectionPermit(Arc::clone(self));
        match self.budgets.max_connections {
            Some(max) if open >= max => Err(Shed::Connections(max)),
            _ => Ok(permit),
        }
    }

    /// Whether a new request may start: refused only under memory pressure.
    #[inline]
    pub fn admit_request(&self) -> Result<(), Shed> {
        if self.memory_over.load(Ordering::Relaxed) {
            return Err(Shed::Memory(self.budgets.max_memory.unwrap_or(0)));
        }
        Ok(())
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Whether new work is being shed for memory.
    pub fn memory_pressure(&self) -> bool {
        self.memory_over.load(Ordering::Acquire)
    }

    /// Samples the resident set every [`SAMPLE_EVERY`] until `stop` completes,
    /// turning memory pressure on at the budget and off below nine tenths of
    /// it. Returns at once when there is no memory budget.
    pub async fn watch_memory(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let Some(max) = self.budgets.max_memory else {
            return;
        };
        let mut stop = std::pin::pin!(stop);
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => return,
            }
            match resident_bytes() {
                Ok(rss) => self.observe_memory(rss, max),
                Err(e) => tracing::warn!(error = %e, "cannot sample resident memory"),
            }
        }
    }

    fn observe_memory(&self, rss: u64, max: u64) {
        metrics::gauge!("tern_resident_memory_bytes").set(rss as f64);
        let was = self.memory_over.load(Ordering::Relaxed);
        let now = if was {
            rss >= max / 10 * RELEASE_TENTHS
        } else {
            rss >= max
        };
        if now != was {
            self.memory_over.store(now, Ordering::Release);
            metrics::gauge!("tern_overload_active", "resource" => "memory").set(if now {
                1.0
            } else {
                0.0
            });
            if now {
                tracing::warn!(
                    resident = rss,
                    budget = max,
                    "memory budget spent: shedding new connections and requests"
                );
            } else {
                tracing::info!(
                    resident = rss,
                    budget = max,
                    "memory back under budget: admitting new work"
                );
            }
        }
    }
}

/// Counts one client connection as open while it lives.
#[derive(Debug)]
pub struct ConnectionPermit(Arc<Overload>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts work shed, by resource and by what was refused (`connection` or
/// `request`), in `tern_overload_shed_total`.
pub fn count_shed(shed: Shed, what: &'static str) {
    metrics::counter!("tern_overload_shed_total", "resource" => shed.resource(), "what" => what)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_budget_admits_up_to_its_size_and_frees_on_drop() {
        let o = Overload::new(Budgets {
            max_connections: Some(2),
            max_memory: None,
        })
        .unwrap();
        let a = o.admit_connection().unwrap();
        let _b = o.admit_connection().unwrap();
        assert_eq!(o.admit_connection().unwrap_err(), Shed::Connections(2));
        assert_eq!(
            o.open_connections(),
            2,
            "a refused connection is not counted"
        );
        drop(a);
        assert!(o.admit_connection().is_ok());
        assert!(
            o.admit_request().is_ok(),
            "requests are not shed for connections"
        );
    }

    #[test]
    fn memory_pressure_starts_at_the_budget_and_ends_below_nine_tenths() {
        let o = Overload::new(Budgets {
            max_connections: None,
            max_memory: Some(1000),
        })
        .unwrap();
        o.observe_memory(999, 1000);
        assert!(o.admit_request().is_ok());
        o.observe_memory(1000, 1000);
        assert_eq!(o.admit_request(), Err(Shed::Memory(1000)));
        assert!(
            o.admit_connection().is_err(),
            "new connections are shed too"
        );
        o.observe_memory(950, 1000);
        assert!(o.memory_pressure(), "still within the release gap");
        o.observe_memory(899, 1000);
        assert!(o.admit_request().is_ok());
        assert!(o.admit_connection().is_ok());
    }

    #[test]
    fn unlimited_sheds_nothing() {
        let o = Overload::unlimited();
        let permits: Vec<_> = (0..1000).map(|_| o.admit_connection().unwrap()).collect();
        assert_eq!(o.open_connections(), 1000);
        drop(permits);
        assert_eq!(o.open_connections(), 0);
    }

    #[tokio::test]
    async fn the_sampler_reads_this_process_and_stops() {
        let o = Overload::new(Budgets {
            max_connections: None,
            // Any process is over one byte.
            max_memory: Some(1),
        })
        .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(Arc::clone(&o).watch_memory(async move {
            let _ = rx.await;
        }));
        let sampled = tokio::time::timeout(Duration::from_secs(10), async {
            while !o.memory_pressure() {
                tokio::time::sleep(SAMPLE_EVERY / 2).await;
            }
        });
        sampled.await.expect("a sample within 10 s");
        tx.send(()).unwrap();
        run.await.unwrap();
    }
}
