//! The bounded queue a request waits in while every machine is at its hard limit.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("the wait queue is full ({0} waiting)")]
    Full(usize),
    #[error("no machine freed up within {0:?}")]
    TimedOut(Duration),
}

/// A service's wait queue: a bound on waiters and the notifier that load releases ring.
#[derive(Debug)]
pub struct WaitQueue {
    /// Changed in place by a reload: the loads that ring this queue stay.
    capacity: AtomicUsize,
    waiting: AtomicUsize,
    released: Arc<Notify>,
}

impl WaitQueue {
    pub fn new(capacity: usize) -> Self {
        WaitQueue {
            capacity: AtomicUsize::new(capacity),
            waiting: AtomicUsize::new(0),
            released: Arc::new(Notify::new()),
        }
    }

    /// A new size for requests that join from now on; those waiting stay.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    /// The notifier to hand to every `Load` of this service.
    pub fn notifier(&self) -> Arc<Notify> {
        Arc::clone(&self.released)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Runs `attempt` now and again after every release, until it yields a value,
    /// the queue is full, or `wait` passes.
    pub async fn wait_for<T, F, Fut>(&self, wait: Duration, mut attempt: F) -> Result<T, QueueError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        if let Some(v) = attempt().await {
            return Ok(v);
        }
        // Boxed: the queue's timer and notification are rarely needed, and inline
        // they would add their size to every request's future.
        Box::pin(self.wait_queued(wait, attempt)).await
    }

    async fn wait_queued<T, F, Fut>(&self, wait: Duration, mut attempt: F) -> Result<T, QueueError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let prev = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _slot = Slot(&self.waiting);
        if prev >= self.capacity.load(Ordering::Relaxed) {
            return Err(QueueError::Full(prev));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = attempt().await {
                return Ok(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(QueueError::TimedOut(wait));
            }
        }
    }
}

struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Load;

    #[tokio::test(start_paused = true)]
    async fn waits_then_times_out() {
        let q = WaitQueue::new(4);
        let load = Arc::new(Load::with_notify(q.notifier()));
        let _held = load.try_acquire(1).unwrap();
        let r = q
            .wait_for(Duration::from_millis(300), || async { load.try_acquire(1) })
            .await;
        assert_eq!(
            r.unwrap_err(),
            QueueError::TimedOut(Duration::from_millis(300))
        );
        assert_eq!(q.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_lets_a_waiter_in() {
        let q = Arc::new(WaitQueue::new(4));
        let load = Arc::new(Load::with_notify(q.notifier()));
        let held = load.try_acquire(1).unwrap();
        let (q2, l2) = (Arc::clone(&q), Arc::clone(&load));
        let waiter = tokio::spawn(async move {
            q2.wait_for(Duration::from_secs(5), || async { l2.try_acquire(1) })
                .await
                .map(|_| ())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(q.waiting(), 1);
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_at_once() {
        let q = WaitQueue::new(0);
        let load = Arc::new(Load::with_notify(q.notifier()));
        let _held = load.try_acquire(1).unwrap();
        let r = q
            .wait_for(Duration::from_secs(5), || async { load.try_acquire(1) })
            .await;
        assert_eq!(r.unwrap_err(), QueueError::Full(0));
    }
}
