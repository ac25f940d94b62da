//! Code a sample must not unwind from: the C library, the dynamic loader, the
//! unwinder itself and the vDSO. A signal that lands while a thread is inside them
//! may find the unwinder's or the loader's state half-changed, and unwinding from
//! there can deadlock or crash; such samples keep the interrupted instruction
//! alone.

use std::sync::atomic::{AtomicUsize, Ordering};

const MAX_RANGES: usize = 32;

/// Library files (by the start of their name) whose code is blocked.
const BLOCKED: &[&str] = &[
    "libc.",
    "libc-",
    "libgcc_s",
    "libpthread",
    "ld-linux",
    "ld-musl",
    "[vdso]",
];

pub struct Blocklist {
    len: AtomicUsize,
    ranges: [(AtomicUsize, AtomicUsize); MAX_RANGES],
}

impl Blocklist {
    pub const fn new() -> Blocklist {
        Blocklist {
            len: AtomicUsize::new(0),
            ranges: [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; MAX_RANGES],
        }
    }

    /// Reads the executable mappings of the blocked libraries from
    /// `/proc/self/maps`. Only while no handler runs.
    pub fn load(&self) -> std::io::Result<()> {
        let maps = std::fs::read_to_string("/proc/self/maps")?;
        let ranges = blocked_ranges(&maps);
        let len = ranges.len().min(MAX_RANGES);
        for (slot, (start, end)) in self.ranges.iter().zip(ranges) {
            slot.0.store(start, Ordering::Relaxed);
            slot.1.store(end, Ordering::Relaxed);
        }
        self.len.store(len, Ordering::Release);
        Ok(())
    }

    /// Async-signal-safe: atomics only.
    pub fn contains(&self, pc: usize) -> bool {
        let len = self.len.load(Ordering::Acquire);
        self.ranges[..len].iter().any(|(start, end)| {
            (start.load(Ordering::Relaxed)..end.load(Ordering::Relaxed)).contains(&pc)
        })
    }
}

/// The executable ranges of blocked files in a `/proc/PID/maps` text.
fn blocked_ranges(maps: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let path = fields.nth(3)?;
            let file = path.rsplit('/').next()?;
            if !perms.contains('x') || !BLOCKED.iter().any(|b| file.starts_with(b)) {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_executable_mappings_of_blocked_files_count() {
        let maps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1 /usr/bin/tern
7f0000000000-7f0000020000 r--p 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000020000-7f0000180000 r-xp 00020000 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000210000 r-xp 00003000 08:01 3 /usr/lib/x86_64-linux-gnu/libgcc_s.so.1
7f0000300000-7f0000301000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
7f0000400000-7f0000401000 r-xp 00000000 08:01 4 /opt/mylibc.so
";
        assert_eq!(
            blocked_ranges(maps),
            vec![
                (0x7f0000020000, 0x7f0000180000),
                (0x7f0000200000, 0x7f0000210000),
                (0x7ffd00000000, 0x7ffd00002000),
            ]
        );
    }

    #[test]
    fn this_process_blocks_its_c_library() {
        let list = Blocklist::new();
        list.load().unwrap();
        let getpid = libc::getpid as *const () as usize;
        assert!(list.contains(getpid), "getpid is in libc");
        assert!(!list.contains(blocked_ranges as *const () as usize));
    }
}
