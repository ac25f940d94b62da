//! The process's resident memory, as the kernel counts it.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot read /proc/self/status, needed for a memory budget: {0}")]
    Read(#[from] io::Error),
    #[error("/proc/self/status has no VmRSS line in kB, needed for a memory budget")]
    NoRss,
}

/// Bytes resident now (`VmRSS`). Reading the file costs a few microseconds,
/// which is why it is sampled, not read per request.
pub fn resident_bytes() -> Result<u64, MemoryError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_vm_rss(&status).ok_or(MemoryError::NoRss)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\ttern\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_has_a_resident_set() {
        assert!(resident_bytes().unwrap() > 0);
    }
}
