//! Header maps kept on each thread for the next message: a proxied request
//! builds two (the client's request and the machine's response), and reusing
//! them saves four allocations and their frees per request, and reuses memory
//! that is still in the cache.

use std::cell::RefCell;

use http::HeaderMap;

/// Maps kept per thread: a thread takes and gives back two per request, so a
/// few suffice; the bound caps what a burst leaves behind.
const KEEP: usize = 32;
/// A map grown past this many fields (a rare, large message) is freed rather
/// than kept.
const MAX_KEPT_CAPACITY: usize = 48;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for at least `capacity` fields.
pub(crate) fn take(capacity: usize) -> HeaderMap {
    match SPARE.with_borrow_mut(Vec::pop) {
        Some(mut map) => {
            if map.capacity() < capacity {
                map.reserve(capacity);
            }
            map
        }
        None => HeaderMap::with_capacity(capacity),
    }
}

/// Gives a map back for reuse on this thread. Its fields are dropped now.
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    map.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < KEEP {
            spare.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_recycled_map_comes_back_empty_with_its_room() {
        let mut map = take(4);
        map.insert("x-a", HeaderValue::from_static("1"));
        let room = map.capacity();
        recycle(map);
        let again = take(2);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
        // Asked for more room than it has: it grows.
        recycle(again);
        assert!(take(room + 10).capacity() >= room + 10);
    }

    #[test]
    fn large_maps_and_a_full_spare_list_are_not_kept() {
        let big = HeaderMap::with_capacity(MAX_KEPT_CAPACITY * 2);
        recycle(big);
        assert!(SPARE.with_borrow(|s| s.iter().all(|m| m.capacity() <= MAX_KEPT_CAPACITY)));
        for _ in 0..KEEP * 2 {
            recycle(HeaderMap::with_capacity(1));
        }
        assert!(SPARE.with_borrow(Vec::len) <= KEEP);
    }
}
