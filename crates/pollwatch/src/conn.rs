//! One watched connection: its counters, its context, and the waker that tells a
//! self-wake from a wake by someone else.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::Wake;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;

use crate::clock::clock;
use crate::io::WatchedIo;
use crate::recent::SpinRecord;
use crate::registry::Registry;
use crate::watched::Watched;
use crate::SpinConfig;

/// Counters and context of one connection. Shared by its futures, its I/O objects
/// and the waker handed to the runtime.
///
/// `repr(C)` with the counters touched on every poll and every read or write
/// first, so that they share a cache line with the reference counts; the rest is
/// read when something goes wrong or someone looks.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Conn {
    pub(crate) polls: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) eofs: AtomicU64,
    /// Coarse-clock milliseconds of the last poll that made progress.
    last_progress_ms: AtomicU64,
    pub(crate) stuck_flag: AtomicBool,
    // Inspection only (see `Watched`).
    /// Set once polls go through the counting waker (see `Watched::poll`). Before
    /// that every poll but the first was a wakeup, so `wakeups` is derived rather
    /// than counted.
    pub(crate) inspecting: AtomicBool,
    pub(crate) in_poll: AtomicBool,
    pub(crate) woken_in_poll: AtomicBool,
    pub(crate) wakeups: AtomicU64,
    pub(crate) self_wakes: AtomicU64,
    pub(crate) spins: AtomicU64,
    pub(crate) id: u64,
    pub(crate) config: SpinConfig,
    opened: Instant,
    /// Set by an I/O layer that knows it can never be woken (see `Probe::stuck`).
    stuck: Mutex<Option<String>>,
    /// The task's own waker, woken through ours.
    pub(crate) task_waker: AtomicWaker,
    context: Mutex<Vec<(&'static str, String)>>,
    registry: Weak<Registry>,
}

impl Conn {
    pub(crate) fn new(id: u64, config: SpinConfig, registry: Weak<Registry>) -> Self {
        Conn {
            polls: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            eofs: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(clock().now_ms()),
            stuck_flag: AtomicBool::new(false),
            inspecting: AtomicBool::new(false),
            in_poll: AtomicBool::new(false),
            woken_in_poll: AtomicBool::new(false),
            wakeups: AtomicU64::new(0),
            self_wakes: AtomicU64::new(0),
            spins: AtomicU64::new(0),
            id,
            config,
            opened: Instant::now(),
            stuck: Mutex::new(None),
            task_waker: AtomicWaker::new(),
            context: Mutex::new(Vec::new()),
            registry,
        }
    }

    /// Grows whenever the connection's I/O moves a byte or sees end-of-stream.
    #[inline]
    pub(crate) fn progress_mark(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
            + self.bytes_out.load(Ordering::Relaxed)
            + self.eofs.load(Ordering::Relaxed)
    }

    /// Stamps progress with the coarse clock (to `clock::TICK`).
    #[inline]
    pub(crate) fn mark_progress(&self) {
        self.last_progress_ms
            .store(clock().coarse_ms(), Ordering::Relaxed);
    }

    /// Starts counting wakeups through the counting waker. The runtime polls a
    /// task again only when it was woken, so the wakeups so far are the polls
    /// after the first, plus the one that will end the current wait: it was
    /// registered with the task's own waker, which is not counted.
    pub(crate) fn start_inspecting(&self) {
        let polls = self.polls.load(Ordering::Relaxed);
        self.wakeups.store(polls, Ordering::Relaxed);
        self.inspecting.store(true, Ordering::Release);
    }

    fn wakeups(&self) -> u64 {
        if self.inspecting.load(Ordering::Acquire) {
            self.wakeups.load(Ordering::Relaxed)
        } else {
            self.polls.load(Ordering::Relaxed).saturating_sub(1)
        }
    }

    pub(crate) fn count_spin(&self) -> u64 {
        if let Some(registry) = self.registry.upgrade() {
            registry.spins.fetch_add(1, Ordering::Relaxed);
        }
        self.spins.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Keeps a spin in the watchdog's recent list.
    pub(crate) fn remember_spin(&self, record: SpinRecord) {
        if let Some(registry) = self.registry.upgrade() {
            registry.recent.push(record);
        }
    }

    #[inline]
    pub(crate) fn take_stuck(&self) -> Option<String> {
        // A plain load first: this runs on every poll, and a swap is a locked
        // instruction even when the flag is clear.
        if !self.stuck_flag.load(Ordering::Acquire)
            || !self.stuck_flag.swap(false, Ordering::AcqRel)
        {
            return None;
        }
        self.stuck
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    pub(crate) fn context_string(&self) -> String {
        let ctx = self.context.lock().unwrap_or_else(PoisonError::into_inner);
        ctx.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub(crate) fn snapshot(&self) -> ConnSnapshot {
        let last = self.last_progress_ms.load(Ordering::Relaxed);
        ConnSnapshot {
            id: self.id,
            age: self.opened.elapsed(),
            polls: self.polls.load(Ordering::Relaxed),
            wakeups: self.wakeups(),
            self_wakes: self.self_wakes.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            since_progress: Duration::from_millis(clock().now_ms().saturating_sub(last)),
            spins: self.spins.load(Ordering::Relaxed),
            context: self
                .context
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }
}

/// Adds to a counter that one task writes: a relaxed load and store rather than a
/// locked read-modify-write, since this runs on every poll and every read or
/// write. Were two threads to race on one counter, a count would be lost, never
/// invented, so progress still shows as a change of the mark.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

impl Wake for Conn {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakeups.fetch_add(1, Ordering::Relaxed);
        if self.in_poll.load(Ordering::Acquire) {
            self.woken_in_poll.store(true, Ordering::Release);
        }
        self.task_waker.wake();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.remove(self.id);
        }
    }
}

/// A point-in-time copy of one connection's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSnapshot {
    pub id: u64,
    pub age: Duration,
    pub polls: u64,
    pub wakeups: u64,
    /// Wakes that came from inside the connection's own poll.
    pub self_wakes: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Time since the last poll that moved a byte (or since opening), to 100 ms.
    pub since_progress: Duration,
    pub spins: u64,
    pub context: Vec<(String, String)>,
}

/// The handle of one watched connection: wrap its I/O objects with [`Probe::io`]
/// and its future with [`Probe::watch`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Probe(pub(crate) Arc<Conn>);

impl Probe {
    /// A connection id, unique within its `Watchdog`.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// Adds or replaces a piece of context (peer, SNI, app, machine, state, ...)
    /// that is logged with a spin and shown in snapshots.
    pub fn set(&self, key: &'static str, value: impl Into<String>) {
        let value = value.into();
        let mut ctx = self
            .0
            .context
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match ctx.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => ctx.push((key, value)),
        }
    }

    /// Like `set`, but allocates only when the value changes: for per-request
    /// context (the app, the machine) on a long-lived connection.
    pub fn note(&self, key: &'static str, value: &str) {
        let mut ctx = self
            .0
            .context
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match ctx.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) if entry.1 == value => {}
            Some(entry) => entry.1 = value.to_owned(),
            None => ctx.push((key, value.to_owned())),
        }
    }

    /// Wraps an I/O object so the bytes it moves count as progress.
    pub fn io<IO>(&self, io: IO) -> WatchedIo<IO> {
        WatchedIo::new(io, Arc::clone(&self.0))
    }

    /// Counts bytes moved by something that is not one of the connection's sockets
    /// (a body copied from one stream of a multiplexed connection to another) as
    /// progress, as [`Probe::io`] counts a socket's.
    pub fn moved(&self, bytes: u64) {
        self.0.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Wraps the connection's future. It resolves to `Err(Spun)` if it is cut.
    pub fn watch<F: std::future::Future>(&self, future: F) -> Watched<F> {
        Watched::new(future, Arc::clone(&self.0))
    }

    /// Reports a state in which the connection cannot be woken by its sockets (for
    /// example a TLS stream returning `Pending` while it wants neither to read nor
    /// to write). The next poll of the watched future treats it as a spin.
    pub fn stuck(&self, reason: impl Into<String>) {
        let mut s = self.0.stuck.lock().unwrap_or_else(PoisonError::into_inner);
        if s.is_none() {
            *s = Some(reason.into());
        }
        self.0.stuck_flag.store(true, Ordering::Release);
    }

    pub fn snapshot(&self) -> ConnSnapshot {
        self.0.snapshot()
    }
}
