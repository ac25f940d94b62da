//! The watched future: counts polls, tells self-wakes apart, finds spins, and acts.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use crate::conn::{bump, Conn};
use crate::recent::{rate, SpinRecord};
use crate::SpinAction;

/// Why a watched future was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spun {
    /// Polls in the streak that tripped the threshold (0 for a stuck state).
    pub polls: u64,
    /// How long the streak lasted.
    pub within: Duration,
    /// Set when an I/O layer reported a state it can never wake from.
    pub stuck: Option<String>,
}

impl fmt::Display for Spun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.stuck {
            Some(reason) => write!(f, "stuck: {reason}"),
            None => write!(
                f,
                "{} polls without progress within {:?}",
                self.polls, self.within
            ),
        }
    }
}

impl std::error::Error for Spun {}

pin_project_lite::pin_project! {
    /// A future under watch. Resolves to `Ok(output)`, or `Err(Spun)` when the
    /// action is `Close` and it was found spinning.
    pub struct Watched<F> {
        #[pin]
        future: F,
        conn: Arc<Conn>,
        waker: Waker,
        last_mark: u64,
        streak: u64,
        // When the current streak's second poll ran (see `Streak::no_progress`).
        streak_start: Option<Instant>,
        backoff: Option<Duration>,
        #[pin]
        pause: Option<tokio::time::Sleep>,
        logged: bool,
    }
}

/// Polls without progress after which a connection is polled through the counting
/// waker. Until then the task's own waker is passed straight through: a wrapped
/// waker costs an atomic registration on every poll and an extra hop on every wake,
/// which a healthy connection need not pay (docs/spin-watchdog.md, "Cost").
pub const INSPECT_AFTER: u64 = 32;

impl<F> Watched<F> {
    pub(crate) fn new(future: F, conn: Arc<Conn>) -> Self {
        let waker = Waker::from(Arc::clone(&conn));
        let last_mark = conn.progress_mark();
        Watched {
            future,
            conn,
            waker,
            last_mark,
            streak: 0,
            streak_start: None,
            backoff: None,
            pause: None,
            logged: false,
        }
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = Result<F::Output, Spun>;

    // Inlined so the wrapper adds no frame of its own around the connection's
    // future: on a keep-alive request the prologue and epilogue of a large poll
    // function cost more than the counting does (bench/NOTES.md, scenario 7).
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let conn: &Conn = this.conn;

        if let Some(pause) = this.pause.as_mut().as_pin_mut() {
            if pause.poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.pause.set(None);
        }

        // Polled through `waker` (counting wakeups and self-wakes) from the first
        // streak of `INSPECT_AFTER` polls without progress on; never switched back,
        // since wakers registered inside may be ours.
        let polled = if conn.inspecting.load(Ordering::Relaxed) {
            conn.task_waker.register(cx.waker());
            conn.woken_in_poll.store(false, Ordering::Relaxed);
            conn.in_poll.store(true, Ordering::Release);
            let polled = this.future.poll(&mut Context::from_waker(this.waker));
            conn.in_poll.store(false, Ordering::Release);
            if polled.is_pending() && conn.woken_in_poll.load(Ordering::Acquire) {
                bump(&conn.self_wakes, 1);
            }
            polled
        } else {
            this.future.poll(cx)
        };
        bump(&conn.polls, 1);

        if let Poll::Ready(out) = polled {
            return Poll::Ready(Ok(out));
        }

        let mark = conn.progress_mark();
        if mark != *this.last_mark && !conn.stuck_flag.load(Ordering::Acquire) {
            *this.last_mark = mark;
            *this.streak = 0;
            *this.backoff = None;
            conn.mark_progress();
            return Poll::Pending;
        }
        let streak = Streak {
            conn,
            streak: this.streak,
            streak_start: this.streak_start,
        };
        match streak.no_progress() {
            None => Poll::Pending,
            Some(spun) => act(conn, spun, this.logged, this.backoff, this.pause, cx),
        }
    }
}

/// The streak state of a `Watched`, borrowed for a poll that made no progress.
struct Streak<'a> {
    conn: &'a Conn,
    streak: &'a mut u64,
    streak_start: &'a mut Option<Instant>,
}

impl Streak<'_> {
    /// Counts a poll without progress; returns the spin it completes, if any.
    #[inline(never)]
    fn no_progress(self) -> Option<Spun> {
        let conn = self.conn;
        if let Some(reason) = conn.take_stuck() {
            *self.streak = 0;
            return Some(Spun {
                polls: 0,
                within: Duration::ZERO,
                stuck: Some(reason),
            });
        }
        *self.streak += 1;
        if *self.streak == 2 {
            // Timed from the second poll: a healthy connection often has one poll
            // without progress between two that move bytes, and should not pay
            // for a clock read each time. The streak's first interval goes
            // untimed, so a spin is, if anything, judged faster than it was.
            *self.streak_start = Some(Instant::now());
        }
        if *self.streak >= INSPECT_AFTER && !conn.inspecting.load(Ordering::Relaxed) {
            conn.start_inspecting();
        }
        if *self.streak < conn.config.polls {
            return None;
        }
        let within = self.streak_start.map_or(Duration::ZERO, |t| t.elapsed());
        if within > conn.config.window {
            // Too slow to be a spin: start a new window from here.
            *self.streak = 1;
            *self.streak_start = None;
            return None;
        }
        let polls = std::mem::take(self.streak);
        Some(Spun {
            polls,
            within,
            stuck: None,
        })
    }
}

/// Counts, logs (once per connection) and acts on a spin.
#[cold]
#[inline(never)]
fn act<T>(
    conn: &Conn,
    spun: Spun,
    logged: &mut bool,
    backoff: &mut Option<Duration>,
    mut pause: Pin<&mut Option<tokio::time::Sleep>>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, Spun>> {
    let count = conn.count_spin();
    let action = conn.config.action;
    let kind = if spun.stuck.is_some() {
        "stuck"
    } else {
        "polls"
    };
    metrics::counter!("pollwatch_spins_total", "action" => action.as_str(), "kind" => kind)
        .increment(1);
    if !*logged {
        *logged = true;
        let snap = conn.snapshot();
        conn.remember_spin(SpinRecord {
            at: SystemTime::now(),
            conn: conn.id,
            cause: spun.to_string(),
            polls_per_sec: rate(spun.polls, spun.within),
            action: action.as_str(),
            context: snap.context.clone(),
        });
        tracing::warn!(
            conn = conn.id,
            action = action.as_str(),
            cause = %spun,
            polls = snap.polls,
            self_wakes = snap.self_wakes,
            bytes_in = snap.bytes_in,
            bytes_out = snap.bytes_out,
            age = ?snap.age,
            context = %conn.context_string(),
            "spinning connection"
        );
    } else {
        tracing::debug!(conn = conn.id, spins = count, cause = %spun, "spinning again");
    }

    match action {
        SpinAction::Close => Poll::Ready(Err(spun)),
        SpinAction::Log => Poll::Pending,
        SpinAction::Backoff { initial, max } => {
            let next = backoff.map_or(initial, |d| (d * 2).min(max));
            *backoff = Some(next);
            pause.set(Some(tokio::time::sleep(next)));
            if let Some(pause) = pause.as_mut().as_pin_mut() {
                // Registers the timer; it cannot be due yet.
                let _ = pause.poll(cx);
            }
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SpinConfig, Watchdog};
    use std::sync::atomic::AtomicU64;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The shape of the incident: wake yourself, return Pending, forever.
    fn self_waking(polls: Arc<AtomicU64>) -> impl Future<Output = ()> {
        std::future::poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            cx.waker().wake_by_ref();
            Poll::Pending
        })
    }

    fn dog(action: SpinAction) -> Watchdog {
        Watchdog::new(SpinConfig {
            action,
            ..SpinConfig::default()
        })
    }

    #[tokio::test]
    async fn a_self_waking_future_is_cut_within_the_window() {
        let dog = dog(SpinAction::Close);
        let probe = dog.register();
        probe.set("peer", "192.0.2.1:1");
        let started = Instant::now();
        let polls = Arc::new(AtomicU64::new(0));
        let out = probe.watch(self_waking(Arc::clone(&polls))).await;
        let spun = out.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(spun.polls, 1000);
        assert!(spun.stuck.is_none());
        let snap = probe.snapshot();
        assert_eq!(snap.polls, 1000);
        // Self-wakes are told apart once the connection is under inspection.
        assert_eq!(snap.self_wakes, 1000 - INSPECT_AFTER);
        // Every poll woke the task, the last one included (then it was cut).
        assert_eq!(snap.wakeups, 1000);
        assert_eq!(snap.spins, 1);
        assert_eq!(dog.spins(), 1);
        assert_eq!(
            snap.context,
            vec![("peer".to_owned(), "192.0.2.1:1".to_owned())]
        );
        // The spin is kept in the recent list, with what was seen and done.
        let recent = dog.recent_spins();
        assert_eq!(recent.len(), 1, "{recent:?}");
        assert_eq!(recent[0].conn, probe.id());
        assert_eq!(recent[0].action, "close");
        assert!(recent[0].cause.starts_with("1000 polls"), "{recent:?}");
        assert!(recent[0].polls_per_sec > 10_000.0, "{recent:?}");
        assert_eq!(recent[0].context, snap.context);
    }

    #[tokio::test]
    async fn backoff_parks_the_spinner_on_a_growing_timer() {
        let dog = Watchdog::new(SpinConfig {
            polls: 100,
            // Generous, so a loaded machine cannot stretch a streak past it.
            window: Duration::from_secs(1),
            action: SpinAction::Backoff {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(80),
            },
        });
        let probe = dog.register();
        let polls = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(probe.watch(self_waking(Arc::clone(&polls))));
        tokio::time::sleep(Duration::from_millis(500)).await;
        task.abort();
        let n = polls.load(Ordering::Relaxed);
        let spins = probe.snapshot().spins;
        // Unchecked, this loop runs millions of polls in 500 ms. Parked, it is
        // polled only for the streak that finds each spin, then sleeps: 10, 20,
        // 40, 80, 80... ms, so at most 9 spins fit in 500 ms.
        assert!((2..=9).contains(&spins), "{spins} spins");
        assert!(n <= (spins + 1) * 100, "{n} polls for {spins} spins");
    }

    #[tokio::test]
    async fn log_only_counts_and_lets_the_future_finish() {
        let dog = dog(SpinAction::Log);
        let probe = dog.register();
        let mut left = 2500u32;
        let out = probe
            .watch(std::future::poll_fn(move |cx| {
                if left == 0 {
                    return Poll::Ready(7);
                }
                left -= 1;
                cx.waker().wake_by_ref();
                Poll::Pending
            }))
            .await;
        assert_eq!(out, Ok(7));
        assert_eq!(probe.snapshot().spins, 2);
    }

    #[tokio::test]
    async fn a_stuck_report_is_a_spin_at_once() {
        let dog = dog(SpinAction::Close);
        let probe = dog.register();
        let p2 = probe.clone();
        let out = probe
            .watch(std::future::poll_fn(move |cx| {
                p2.stuck("wants neither read nor write");
                cx.waker().wake_by_ref();
                Poll::<()>::Pending
            }))
            .await;
        let spun = out.unwrap_err();
        assert_eq!(spun.stuck.as_deref(), Some("wants neither read nor write"));
        assert_eq!(probe.snapshot().polls, 1);
    }

    #[tokio::test]
    async fn busy_but_moving_bytes_is_not_a_spin() {
        // A copy loop that yields after every chunk: many polls, each moving bytes.
        let dog = dog(SpinAction::Close);
        let probe = dog.register();
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = probe.io(a);
        let writer = tokio::spawn(async move {
            for _ in 0..20_000 {
                b.write_all(&[1u8; 64]).await.unwrap();
            }
        });
        let out = probe
            .watch(async move {
                let mut total = 0usize;
                let mut buf = [0u8; 64];
                loop {
                    let n = a.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return total;
                    }
                    total += n;
                    tokio::task::yield_now().await;
                }
            })
            .await;
        writer.await.unwrap();
        assert_eq!(out, Ok(20_000 * 64));
        assert_eq!(probe.snapshot().spins, 0);
    }

    #[tokio::test]
    async fn slow_wakeups_are_not_a_spin() {
        // Woken by a timer every millisecond without I/O: ~100 polls per 100 ms.
        let dog = dog(SpinAction::Close);
        let probe = dog.register();
        let out = probe
            .watch(async {
                for _ in 0..300 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await;
        assert!(out.is_ok());
        let snap = probe.snapshot();
        assert_eq!(snap.spins, 0);
        assert_eq!(snap.self_wakes, 0);
        // Every poll after the first was a wakeup, before and after inspection
        // began (300 polls without progress reach `INSPECT_AFTER`).
        assert_eq!(snap.polls, 301, "{snap:?}");
        assert_eq!(snap.wakeups, 300, "{snap:?}");
    }

    #[tokio::test]
    async fn the_registry_lists_live_connections_only() {
        let dog = dog(SpinAction::Close);
        let a = dog.register();
        let b = dog.register();
        a.set("app", "web");
        let mut ids: Vec<u64> = dog.connections().iter().map(|c| c.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![a.id(), b.id()]);
        drop(a);
        assert_eq!(dog.connections().len(), 1);
        assert_eq!(dog.connections()[0].id, b.id());
    }
}
