//! Tern's memory allocator, and the call that makes it give freed memory back to
//! the system at once.
//!
//! mimalloc rather than glibc's malloc: a proxy allocates and frees small buffers
//! and header maps on every request, and mimalloc makes that cheaper. It is built
//! without transparent huge pages (the `no_thp` feature): with them a request
//! costs about 4% less CPU, but an idle TLS connection holds about 15 KiB more
//! resident memory (bench/NOTES.md has the measurements).

pub use mimalloc::MiMalloc as Allocator;

/// Returns the memory that this thread and the process have freed to the system
/// now, rather than after mimalloc's purge delay, which only runs when a thread
/// allocates again. For a thread that freed much and is about to idle or end (a
/// profile's symbol tables); too costly for a hot path.
pub fn give_back_free_memory() {
    #[allow(unsafe_code)]
    // SAFETY: `mi_collect` has no preconditions; it only walks mimalloc's own
    // structures, under its own synchronisation.
    unsafe {
        libmimalloc_sys::mi_collect(true)
    };
}

#[cfg(test)]
mod tests {
    #[global_allocator]
    static ALLOCATOR: super::Allocator = super::Allocator;

    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn memory_freed_on_an_ending_thread_goes_back_to_the_system() {
        let before = resident_kib();
        std::thread::spawn(move || {
            // Many mid-sized blocks, as a symbolizer's tables are.
            let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 4000]).collect();
            assert!(resident_kib() > before + 60_000);
            drop(blocks);
            super::give_back_free_memory();
        })
        .join()
        .unwrap();
        let after = resident_kib();
        eprintln!("RssAnon {before} KiB before, {after} KiB after");
        assert!(
            after < before + 16_000,
            "{before} KiB before, {after} KiB after"
        );
    }
}
