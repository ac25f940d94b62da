//! Idle upstream connections by machine address, in shards: each thread that
//! pools a connection puts it in its own shard and looks there first, so that
//! workers do not take one lock in turn on every request, and a per-core
//! worker mostly gets back sockets its own runtime watches. A thread whose
//! shard has none for the machine takes one from another shard before a new
//! connection is made.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use foldhash::HashMap;

pub(crate) struct Idle<T> {
    pub conn: T,
    pub since: Instant,
}

/// One shard: idle connections by machine address, the most recent last.
type Shard<T> = HashMap<SocketAddr, Vec<Idle<T>>>;

pub(crate) struct IdlePool<T> {
    shards: Box<[Mutex<Shard<T>>]>,
    /// At most this many idle connections per machine in one shard: the
    /// pool's limit divided among the shards.
    max_per_machine: usize,
}

/// Enough shards for every worker thread of a node on any machine it runs on;
/// threads beyond that share shards.
const SHARDS: usize = 64;

thread_local! {
    /// This thread's shard, given out in turn on first use.
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

fn this_threads_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    SHARD.with(|s| match s.get() {
        Some(i) => i,
        None => {
            let i = NEXT.fetch_add(1, Ordering::Relaxed);
            s.set(Some(i));
            i
        }
    })
}

impl<T> IdlePool<T> {
    /// A pool holding at most `max_per_machine` idle connections per machine
    /// in all, over `shards` shards: one per thread that pools connections
    /// gives each its own.
    pub fn new(max_per_machine: usize, shards: usize) -> Self {
        let shards = shards.clamp(1, SHARDS);
        IdlePool {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            max_per_machine: max_per_machine.div_ceil(shards),
        }
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard<T>> {
        self.shards[i % self.shards.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently pooled connection to `addr`: this thread's shard
    /// first, then the others'.
    pub fn pop(&self, addr: SocketAddr) -> Option<Idle<T>> {
        let own = this_threads_shard();
        (0..self.shards.len()).find_map(|k| self.shard(own + k).get_mut(&addr)?.pop())
    }

    /// Pools `conn` in this thread's shard, unless that holds the most it may
    /// for `addr` already (then `conn` is dropped, which closes it).
    pub fn push(&self, addr: SocketAddr, conn: T) {
        let mut shard = self.shard(this_threads_shard());
        let list = shard.entry(addr).or_default();
        if list.len() < self.max_per_machine {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Keeps only the connections `keep` approves of, in every shard; returns
    /// how many were dropped.
    pub fn retain(&self, mut keep: impl FnMut(&Idle<T>) -> bool) -> usize {
        let mut dropped = 0;
        for i in 0..self.shards.len() {
            self.shard(i).retain(|_, list| {
                list.retain(|idle| {
                    let k = keep(idle);
                    dropped += usize::from(!k);
                    k
                });
                !list.is_empty()
            });
        }
        dropped
    }

    /// How many connections to `addr` are pooled, in all shards.
    #[cfg(test)]
    pub fn len(&self, addr: SocketAddr) -> usize {
        (0..self.shards.len())
            .map(|i| self.shard(i).get(&addr).map_or(0, Vec::len))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_connection_pooled_by_one_thread_is_found_by_another() {
        let pool = std::sync::Arc::new(IdlePool::<u32>::new(8, 2));
        let p = std::sync::Arc::clone(&pool);
        std::thread::spawn(move || p.push(addr(1), 7))
            .join()
            .unwrap();
        assert_eq!(pool.pop(addr(2)).map(|i| i.conn), None);
        assert_eq!(pool.pop(addr(1)).map(|i| i.conn), Some(7));
        assert_eq!(pool.len(addr(1)), 0);
    }

    #[test]
    fn a_thread_gets_back_its_own_connections_first() {
        let pool = std::sync::Arc::new(IdlePool::<u32>::new(8, SHARDS));
        pool.push(addr(1), 2);
        let p = std::sync::Arc::clone(&pool);
        let theirs = std::thread::spawn(move || {
            p.push(addr(1), 1);
            this_threads_shard()
        })
        .join()
        .unwrap();
        // Shards are given to threads in turn, and there are 64 of them: two
        // threads share one only after 64 others have taken theirs.
        let shards = pool.shards.len();
        assert_ne!(theirs % shards, this_threads_shard() % shards);
        // The other thread's is the more recent, but this thread's comes first.
        assert_eq!(pool.pop(addr(1)).map(|i| i.conn), Some(2));
        assert_eq!(pool.len(addr(1)), 1);
    }

    #[test]
    fn each_shard_holds_its_part_of_the_limit_per_machine() {
        let pool = IdlePool::<u32>::new(4, 2);
        for n in 0..5 {
            pool.push(addr(1), n);
        }
        assert_eq!(pool.len(addr(1)), 2);
        assert_eq!(pool.retain(|i| i.conn != 0), 1);
        assert_eq!(pool.len(addr(1)), 1);
    }
}
