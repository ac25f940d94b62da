//! The samples on their way from the signal handler that takes them to the thread
//! that counts them: a fixed ring of slots, written and read with atomics only, so
//! that a signal handler can write without locks or allocation.
//!
//! Writers (handlers on any thread) claim a position with a compare-and-swap on
//! `head`, fill the slot, then publish it through the slot's sequence number. The
//! one reader takes published slots in order and hands each back for reuse. A full
//! ring drops the sample and counts it; it never waits.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Frames kept per sample, innermost first; deeper stacks lose their outermost
/// frames.
pub const MAX_DEPTH: usize = 64;

/// Slots in the ring. The reader drains it every few milliseconds; at 99 Hz a
/// second of CPU fills fewer than 100 slots, so 256 gives room for many busy cores.
pub const SLOTS: usize = 256;

/// A thread's name as the kernel keeps it (`PR_GET_NAME`): up to 15 bytes and a NUL.
pub type ThreadName = [u8; 16];

struct Slot {
    /// Equal to the position when free for the writer of that position, and to
    /// the position + 1 once that writer has published it.
    seq: AtomicUsize,
    thread: [AtomicU64; 2],
    len: AtomicUsize,
    frames: [AtomicUsize; MAX_DEPTH],
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            seq: AtomicUsize::new(0),
            thread: [const { AtomicU64::new(0) }; 2],
            len: AtomicUsize::new(0),
            frames: [const { AtomicUsize::new(0) }; MAX_DEPTH],
        }
    }
}

pub struct Ring {
    head: AtomicUsize,
    tail: AtomicUsize,
    dropped: AtomicU64,
    slots: [Slot; SLOTS],
}

impl Ring {
    pub const fn new() -> Ring {
        Ring {
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            slots: [const { Slot::new() }; SLOTS],
        }
    }

    /// Empties the ring. Only while no writer can run.
    pub fn reset(&self) {
        self.head.store(0, Ordering::Relaxed);
        self.tail.store(0, Ordering::Relaxed);
        self.dropped.store(0, Ordering::Relaxed);
        for (i, slot) in self.slots.iter().enumerate() {
            slot.seq.store(i, Ordering::Release);
        }
    }

    /// Adds one sample, or drops it (and counts it) when the ring is full.
    /// Async-signal-safe: atomics only.
    pub fn push(&self, thread: &ThreadName, frames: &[usize]) {
        let Some((pos, slot)) = self.claim() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let (low, high) = thread.split_at(8);
        slot.thread[0].store(u64::from_ne_bytes(to8(low)), Ordering::Relaxed);
        slot.thread[1].store(u64::from_ne_bytes(to8(high)), Ordering::Relaxed);
        let len = frames.len().min(MAX_DEPTH);
        for (to, from) in slot.frames.iter().zip(&frames[..len]) {
            to.store(*from, Ordering::Relaxed);
        }
        slot.len.store(len, Ordering::Relaxed);
        slot.seq.store(pos.wrapping_add(1), Ordering::Release);
    }

    fn claim(&self) -> Option<(usize, &Slot)> {
        let mut pos = self.head.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos % SLOTS];
            let seq = slot.seq.load(Ordering::Acquire);
            if seq == pos {
                match self.head.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some((pos, slot)),
                    Err(now) => pos = now,
                }
            } else if seq.wrapping_sub(pos) as isize <= 0 {
                // Not yet handed back by the reader: full.
                return None;
            } else {
                pos = self.head.load(Ordering::Relaxed);
            }
        }
    }

    /// Takes every published sample, in order, and hands its slot back. One reader
    /// at a time: the caller holds the profile that owns the ring.
    pub fn drain(&self, mut take: impl FnMut(&ThreadName, &[usize])) {
        let mut frames = [0usize; MAX_DEPTH];
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos % SLOTS];
            if slot.seq.load(Ordering::Acquire) != pos.wrapping_add(1) {
                break;
            }
            let mut thread = [0u8; 16];
            thread[..8].copy_from_slice(&slot.thread[0].load(Ordering::Relaxed).to_ne_bytes());
            thread[8..].copy_from_slice(&slot.thread[1].load(Ordering::Relaxed).to_ne_bytes());
            let len = slot.len.load(Ordering::Relaxed).min(MAX_DEPTH);
            for (to, from) in frames.iter_mut().zip(&slot.frames[..len]) {
                *to = from.load(Ordering::Relaxed);
            }
            slot.seq.store(pos.wrapping_add(SLOTS), Ordering::Release);
            pos = pos.wrapping_add(1);
            take(&thread, &frames[..len]);
        }
        self.tail.store(pos, Ordering::Relaxed);
    }

    /// Samples dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn to8(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ThreadName {
        let mut n = [0u8; 16];
        n[..s.len()].copy_from_slice(s.as_bytes());
        n
    }

    fn drained(ring: &Ring) -> Vec<(ThreadName, Vec<usize>)> {
        let mut out = Vec::new();
        ring.drain(|t, f| out.push((*t, f.to_vec())));
        out
    }

    #[test]
    fn samples_come_out_in_order_and_a_full_ring_drops_and_counts() {
        let ring = Ring::new();
        ring.reset();
        ring.push(&name("a"), &[1, 2, 3]);
        ring.push(&name("worker-b"), &[4]);
        assert_eq!(
            drained(&ring),
            vec![(name("a"), vec![1, 2, 3]), (name("worker-b"), vec![4])]
        );
        assert!(drained(&ring).is_empty());
        for i in 0..SLOTS + 10 {
            ring.push(&name("c"), &[i]);
        }
        assert_eq!(ring.dropped(), 10);
        let out = drained(&ring);
        assert_eq!(out.len(), SLOTS);
        assert_eq!(out[0].1, vec![0]);
        assert_eq!(out[SLOTS - 1].1, vec![SLOTS - 1]);
        // Handed back: the ring takes samples again, many times round.
        for round in 0..3 * SLOTS {
            ring.push(&name("d"), &[round; MAX_DEPTH + 5]);
            let out = drained(&ring);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].1.len(), MAX_DEPTH, "deeper stacks are cut");
        }
    }

    #[test]
    fn writers_on_many_threads_lose_nothing_the_reader_has_room_for() {
        static RING: Ring = Ring::new();
        RING.reset();
        let total = std::sync::atomic::AtomicUsize::new(0);
        let writers = 4;
        let each = 20_000;
        std::thread::scope(|s| {
            for w in 0..writers {
                s.spawn(move || {
                    for i in 0..each {
                        RING.push(&name("w"), &[w, i, w ^ i]);
                    }
                });
            }
            s.spawn(|| {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                let dropped = || usize::try_from(RING.dropped()).unwrap();
                while total.load(Ordering::Relaxed) + dropped() < writers * each {
                    assert!(std::time::Instant::now() < deadline, "reader stuck");
                    RING.drain(|_, f| {
                        assert_eq!(f.len(), 3);
                        assert_eq!(f[2], f[0] ^ f[1], "a torn sample");
                        total.fetch_add(1, Ordering::Relaxed);
                    });
                    std::thread::yield_now();
                }
            });
        });
        assert_eq!(
            total.load(Ordering::Relaxed) + usize::try_from(RING.dropped()).unwrap(),
            writers * each
        );
        assert!(total.load(Ordering::Relaxed) > 0);
    }
}
