//! The runtime watchdog: an OS thread outside the runtime pings a task inside it.
//! An unanswered ping means the runtime has stalled (a deadlock, a blocking call,
//! or a poll that never returns), which no in-runtime check can see.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// When to call a runtime stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallConfig {
    /// Time between pings.
    pub interval: Duration,
    /// A ping unanswered this long is a stall.
    pub deadline: Duration,
}

/// What was seen when a stall was found.
#[derive(Debug, Clone)]
pub struct StallReport {
    /// How long the unanswered ping has waited.
    pub waited: Duration,
    /// Runtime counters at that moment.
    pub runtime: String,
    /// The process's threads: name, state and kernel wait channel. For their
    /// stacks, call [`debugger_stacks`] (slow: seconds).
    pub threads: String,
}

/// How a watched runtime is doing, as the watchdog last saw it. Cheap to clone;
/// read it while the watchdog runs.
#[derive(Debug, Clone, Default)]
pub struct StallState(Arc<StallCounters>);

#[derive(Debug, Default)]
struct StallCounters {
    pings: AtomicU64,
    /// Microseconds the last answered ping took.
    last_round_trip_us: AtomicU64,
    stalls: AtomicU64,
    stalled: AtomicBool,
}

/// A reading of a [`StallState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallStatus {
    /// Pings answered so far.
    pub pings: u64,
    /// How long the last answered ping took to be answered.
    pub last_round_trip: Duration,
    /// Stalls found so far.
    pub stalls: u64,
    /// Whether the latest ping is unanswered past the deadline.
    pub stalled: bool,
}

impl StallState {
    pub fn status(&self) -> StallStatus {
        let c = &self.0;
        StallStatus {
            pings: c.pings.load(Ordering::Relaxed),
            last_round_trip: Duration::from_micros(c.last_round_trip_us.load(Ordering::Relaxed)),
            stalls: c.stalls.load(Ordering::Relaxed),
            stalled: c.stalled.load(Ordering::Relaxed),
        }
    }

    fn answered(&self, took: Duration) {
        let c = &self.0;
        c.pings.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        c.last_round_trip_us.store(us, Ordering::Relaxed);
        c.stalled.store(false, Ordering::Relaxed);
    }

    fn stalled(&self) {
        self.0.stalls.fetch_add(1, Ordering::Relaxed);
        self.0.stalled.store(true, Ordering::Relaxed);
    }
}

/// Stops the watchdog thread when dropped.
#[derive(Debug)]
pub struct StallWatchdog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    state: StallState,
}

impl Drop for StallWatchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl StallWatchdog {
    /// Starts watching the runtime behind `handle`. `on_stall` runs on the watchdog
    /// thread, once per stall (again only after the runtime has answered since).
    pub fn spawn(
        handle: tokio::runtime::Handle,
        config: StallConfig,
        on_stall: impl Fn(StallReport) + Send + 'static,
    ) -> std::io::Result<StallWatchdog> {
        let (ping_tx, mut ping_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let (pong_tx, pong_rx) = mpsc::channel::<u64>();
        handle.spawn(async move {
            while let Some(seq) = ping_rx.recv().await {
                if pong_tx.send(seq).is_err() {
                    return;
                }
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let state = StallState::default();
        let seen = state.clone();
        let thread = std::thread::Builder::new()
            .name("pollwatch-stall".into())
            .spawn(move || {
                let mut seq = 0u64;
                let mut reported = false;
                while !stop2.load(Ordering::Acquire) {
                    seq += 1;
                    let sent = Instant::now();
                    if ping_tx.send(seq).is_err() {
                        return;
                    }
                    // Wait for this ping's pong; older ones may still trickle in.
                    let answered = loop {
                        let left = config.deadline.saturating_sub(sent.elapsed());
                        match pong_rx.recv_timeout(left) {
                            Ok(s) if s == seq => break true,
                            Ok(_) => continue,
                            Err(mpsc::RecvTimeoutError::Timeout) => break false,
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                    };
                    if answered {
                        seen.answered(sent.elapsed());
                        reported = false;
                    } else if !reported {
                        reported = true;
                        seen.stalled();
                        on_stall(StallReport {
                            waited: sent.elapsed(),
                            runtime: runtime_snapshot(&handle),
                            threads: thread_dump(),
                        });
                    }
                    std::thread::park_timeout(config.interval);
                }
            })?;
        Ok(StallWatchdog {
            stop,
            thread: Some(thread),
            state,
        })
    }

    /// How the runtime is doing, for as long as the watchdog runs.
    pub fn state(&self) -> StallState {
        self.state.clone()
    }
}

/// The runtime's counters, as far as this build of tokio exposes them.
pub fn runtime_snapshot(handle: &tokio::runtime::Handle) -> String {
    let m = handle.metrics();
    let mut out = format!(
        "workers={} alive_tasks={} global_queue_depth={}",
        m.num_workers(),
        m.num_alive_tasks(),
        m.global_queue_depth()
    );
    for w in 0..m.num_workers() {
        let _ = write!(
            out,
            "; worker {w}: busy={:?} parks={}",
            m.worker_total_busy_duration(w),
            m.worker_park_count(w)
        );
    }
    out
}

/// Every thread of this process as the kernel sees it. Linux only; elsewhere it
/// says so. Fast, so a stall is reported at once.
pub fn thread_dump() -> String {
    let mut out = String::new();
    match std::fs::read_dir("/proc/self/task") {
        Ok(tasks) => {
            for t in tasks.flatten() {
                let tid = t.file_name().to_string_lossy().into_owned();
                let read = |f: &str| {
                    std::fs::read_to_string(t.path().join(f))
                        .unwrap_or_default()
                        .trim()
                        .to_owned()
                };
                let state = read("stat")
                    .rsplit_once(')')
                    .map(|(_, rest)| rest.trim().chars().next().unwrap_or('?'))
                    .unwrap_or('?');
                let _ = writeln!(
                    out,
                    "thread {tid} {:?} state={state} wchan={} syscall={}",
                    read("comm"),
                    read("wchan"),
                    read("syscall").split(' ').next().unwrap_or("")
                );
            }
        }
        Err(e) => {
            let _ = writeln!(out, "no /proc/self/task: {e}");
        }
    }
    out
}

/// Every thread's stack from gdb, when it is installed (bounded to 20 s).
pub fn debugger_stacks() -> String {
    debugger_stacks_of(std::process::id())
}

/// Every thread's stack of process `pid` from gdb (bounded to 20 s): this
/// process's, or (in tests) a child's.
pub fn debugger_stacks_of(pid: u32) -> String {
    let pid = pid.to_string();
    let child = std::process::Command::new("gdb")
        .args(["-p", &pid, "-batch", "-nx", "-ex", "thread apply all bt 30"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return "(no gdb: install it for full stacks)\n".to_owned();
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return "(gdb did not finish in 20 s)\n".to_owned();
            }
        }
    }
    let mut text = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn config() -> StallConfig {
        StallConfig {
            interval: Duration::from_millis(20),
            deadline: Duration::from_millis(200),
        }
    }

    #[test]
    fn a_blocked_runtime_is_reported_once_per_stall() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let reports = Arc::new(Mutex::new(Vec::<StallReport>::new()));
        let r2 = Arc::clone(&reports);
        let dog = StallWatchdog::spawn(rt.handle().clone(), config(), move |r| {
            r2.lock().unwrap().push(r);
        })
        .unwrap();
        let state = dog.state();
        rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // A blocking call on the runtime's only thread.
            std::thread::sleep(Duration::from_millis(800));
            assert!(state.status().stalled, "{:?}", state.status());
            // Then a runtime that answers again: no second report.
            tokio::time::sleep(Duration::from_millis(600)).await;
        });
        let status = state.status();
        assert_eq!(status.stalls, 1, "{status:?}");
        assert!(!status.stalled && status.pings > 0, "{status:?}");
        let reports = reports.lock().unwrap();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(reports[0].waited >= Duration::from_millis(200));
        assert!(
            reports[0].runtime.contains("workers=1"),
            "{}",
            reports[0].runtime
        );
        assert!(
            reports[0].threads.contains("pollwatch-stall"),
            "{}",
            reports[0].threads
        );
    }

    #[test]
    fn a_busy_runtime_is_not_a_stall() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let reports = Arc::new(Mutex::new(0usize));
        let r2 = Arc::clone(&reports);
        // The deadline has room for a loaded 2-core machine, where other tests'
        // threads can keep both workers off the CPU for a few hundred
        // milliseconds; the busy spell lasts twice as long, so that a runtime
        // that stopped answering would still be reported within it.
        let roomy = StallConfig {
            deadline: Duration::from_secs(1),
            ..config()
        };
        let _dog = StallWatchdog::spawn(rt.handle().clone(), roomy, move |_| {
            *r2.lock().unwrap() += 1;
        })
        .unwrap();
        rt.block_on(async {
            let started = Instant::now();
            let mut tasks = Vec::new();
            // Many short tasks, each yielding often, for about two seconds.
            for _ in 0..64 {
                tasks.push(tokio::spawn(async move {
                    let mut x = 0u64;
                    while started.elapsed() < Duration::from_secs(2) {
                        for i in 0..1000u64 {
                            x = x.wrapping_mul(31).wrapping_add(i);
                        }
                        tokio::task::yield_now().await;
                    }
                    x
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
        assert_eq!(*reports.lock().unwrap(), 0);
    }
}
