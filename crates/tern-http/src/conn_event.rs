//! Waiting on a connection's future, its timer and the shutdown signal together,
//! as `tokio::select!` would, but polling the timer and the signal only when they
//! may have fired: a connection's task wakes twice per proxied request, and
//! polling both each time (a timer check, and a mutex for the signal's waiter)
//! cost more than the rest of the wait.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::coop::unconstrained;

/// What ended the wait.
pub(crate) enum ConnEvent<T> {
    /// The connection's future finished, with this.
    Done(T),
    /// `after` has passed.
    Timer,
    /// The shutdown signal changed (or its sender is gone).
    Shutdown,
}

/// Polls `conn` until it finishes, `after` passes, or `shutdown` (if given)
/// changes. Both the timer and the signal keep the task's waker from their first
/// poll, so later wakes check them with an atomic load each and poll them only
/// when that says they fired.
///
/// `conn` is a trait object: with a generic connection type, rustc could not
/// prove the task's future `Send` for hyper's connections (their bounds on the
/// service's error type are higher-ranked), and the indirect call costs nothing
/// next to a poll.
pub(crate) async fn next_conn_event<T>(
    conn: &mut (dyn Future<Output = T> + Unpin + Send),
    after: Duration,
    shutdown: Option<&mut watch::Receiver<bool>>,
) -> ConnEvent<T> {
    // A second receiver, at the same version, to look at without the first's
    // `changed` future (which borrows it).
    let probe = shutdown.as_deref().cloned();
    let mut changed = pin!(async move {
        match shutdown {
            Some(rx) => {
                let _ = rx.changed().await;
            }
            None => std::future::pending().await,
        }
    });
    let mut sleep = pin!(tokio::time::sleep(after));
    let mut first = true;
    poll_fn(|cx| {
        if let Poll::Ready(out) = Pin::new(&mut *conn).poll(cx) {
            return Poll::Ready(ConnEvent::Done(out));
        }
        let first_poll = std::mem::replace(&mut first, false);
        // Both are polled outside the task's coop budget. The connection's poll
        // may have spent it (moving many buffers at once); tokio's timer and watch
        // would then return Pending without keeping the waker, and, polled again
        // only once they have fired, they would never fire.
        if (first_poll || sleep.is_elapsed())
            && pin!(unconstrained(sleep.as_mut())).poll(cx).is_ready()
        {
            return Poll::Ready(ConnEvent::Timer);
        }
        let signalled = || {
            probe
                .as_ref()
                .is_some_and(|p| p.has_changed().unwrap_or(true))
        };
        if (first_poll || signalled()) && pin!(unconstrained(changed.as_mut())).poll(cx).is_ready()
        {
            return Poll::Ready(ConnEvent::Shutdown);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that never finishes on its own.
    fn never() -> std::future::Pending<()> {
        std::future::pending()
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_fires_when_nothing_else_happens() {
        let (_tx, mut rx) = watch::channel(false);
        let mut conn = never();
        let event = next_conn_event(&mut conn, Duration::from_secs(3), Some(&mut rx)).await;
        assert!(matches!(event, ConnEvent::Timer));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_after_the_first_poll_is_seen() {
        let (tx, mut rx) = watch::channel(false);
        let mut conn = never();
        let waiting = tokio::spawn(async move {
            matches!(
                next_conn_event(&mut conn, Duration::from_secs(60), Some(&mut rx)).await,
                ConnEvent::Shutdown
            )
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(true).unwrap();
        assert!(waiting.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_sender_counts_as_shutdown_and_none_waits_for_the_timer() {
        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        let mut conn = never();
        let event = next_conn_event(&mut conn, Duration::from_secs(60), Some(&mut rx)).await;
        assert!(matches!(event, ConnEvent::Shutdown));
        let event = next_conn_event(&mut conn, Duration::from_secs(60), None).await;
        assert!(matches!(event, ConnEvent::Timer));
    }

    #[tokio::test(start_paused = true)]
    async fn the_connection_wins_whenever_it_is_done() {
        let (tx, mut rx) = watch::channel(false);
        tx.send(true).unwrap();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u8>();
        done_tx.send(7).unwrap();
        let mut conn = done_rx;
        let event = next_conn_event(&mut conn, Duration::ZERO, Some(&mut rx)).await;
        assert!(matches!(event, ConnEvent::Done(Ok(7))));
    }

    /// A connection whose first poll spends the task's whole coop budget, as one
    /// that moves many buffers at once does, and that never finishes.
    fn spends_the_budget_then_waits() -> impl Future<Output = ()> + Unpin {
        use tokio::task::coop;
        let mut spent = false;
        std::future::poll_fn(move |cx| {
            if !std::mem::replace(&mut spent, true) {
                while coop::has_budget_remaining() {
                    let _ = pin!(coop::consume_budget()).poll(cx);
                }
            }
            Poll::Pending
        })
    }

    /// The connection's poll can spend the task's whole coop budget (moving many
    /// buffers at once). The timer is armed in that same poll all the same: armed
    /// later it would never be, since it is polled again only once it has fired.
    #[tokio::test(start_paused = true)]
    async fn the_timer_is_armed_after_a_poll_that_spent_the_coop_budget() {
        let mut conn = spends_the_budget_then_waits();
        let waiting = next_conn_event(&mut conn, Duration::from_secs(1), None);
        let event = tokio::time::timeout(Duration::from_secs(60), waiting).await;
        assert!(
            matches!(event, Ok(ConnEvent::Timer)),
            "the timer never fired"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_signal_is_watched_after_a_poll_that_spent_the_coop_budget() {
        let (tx, mut rx) = watch::channel(false);
        let mut conn = spends_the_budget_then_waits();
        let waiting = tokio::spawn(async move {
            let waiting = next_conn_event(&mut conn, Duration::from_secs(600), Some(&mut rx));
            matches!(waiting.await, ConnEvent::Shutdown)
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(true).unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(60), waiting).await;
        assert!(matches!(seen, Ok(Ok(true))), "the signal was never seen");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_woken_many_times_still_sees_the_timer() {
        // A connection that wakes itself 1000 times, 10 ms apart, then waits.
        let mut ticks = 0u32;
        let mut conn = Box::pin(async move {
            while ticks < 1000 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks += 1;
            }
            std::future::pending::<()>().await;
        });
        let started = tokio::time::Instant::now();
        let waiting = next_conn_event(&mut conn, Duration::from_secs(5), None);
        let event = tokio::time::timeout(Duration::from_secs(60), waiting)
            .await
            .expect("the timer is seen");
        assert!(matches!(event, ConnEvent::Timer));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
