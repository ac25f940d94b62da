//! CPU profiles of the live process, for `/debug/pprof/*`: a sampling profiler runs
//! for the requested seconds, then the samples become a flamegraph (SVG) or a pprof
//! protobuf. One profile at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pprof::protos::Message;

/// Longest profile one request may ask for.
pub const MAX_SECONDS: u64 = 60;
const FREQUENCY_HZ: i32 = 99;

static RUNNING: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("a profile is already being taken; try again when it is done")]
    Busy,
    #[error("profiler: {0}")]
    Profiler(#[from] pprof::Error),
    #[error("encoding the profile: {0}")]
    Encode(String),
    #[error("the profiling thread failed: {0}")]
    Join(String),
}

/// What to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileFormat {
    FlamegraphSvg,
    PprofProtobuf,
}

/// Samples every thread's stack for `seconds`, on a blocking thread so the
/// runtime keeps serving. If the caller goes away (the client gave up), the
/// sampling stops within `CHECK_EVERY` and the next profile may start.
pub async fn profile(seconds: u64, format: ProfileFormat) -> Result<Vec<u8>, ProfileError> {
    if RUNNING.swap(true, Ordering::AcqRel) {
        return Err(ProfileError::Busy);
    }
    // Held by the sampling thread: the profiler is free when that thread is done.
    let running = Running;
    let seconds = seconds.clamp(1, MAX_SECONDS);
    let wanted = Wanted(Arc::new(AtomicBool::new(true)));
    let still_wanted = Arc::clone(&wanted.0);
    let result = tokio::task::spawn_blocking(move || {
        let _running = running;
        sample(seconds, format, &still_wanted)
    })
    .await;
    result.map_err(|e| ProfileError::Join(e.to_string()))?
}

/// How often a sampling thread checks whether its profile is still wanted.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Marks the profiler free when dropped, however the profile ended.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

/// Whether the caller still waits for the profile: cleared when its future is
/// dropped.
struct Wanted(Arc<AtomicBool>);

impl Drop for Wanted {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn sample(
    seconds: u64,
    format: ProfileFormat,
    wanted: &AtomicBool,
) -> Result<Vec<u8>, ProfileError> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY_HZ)
        // Unwinding through these while a signal lands can deadlock.
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()?;
    let until = Instant::now() + Duration::from_secs(seconds);
    while wanted.load(Ordering::Acquire) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(CHECK_EVERY));
    }
    let report = guard.report().build()?;
    drop(guard);
    // Symbolizing parsed the binary's debug info into a cache that would
    // otherwise stay for the life of the process.
    backtrace::clear_symbol_cache();
    let out = match format {
        ProfileFormat::FlamegraphSvg => {
            let stacks = report.data.iter().map(|(frames, count)| {
                let mut path = vec![frames.thread_name_or_id()];
                for frame in frames.frames.iter().rev() {
                    for symbol in frame.iter().rev() {
                        path.push(symbol.to_string());
                    }
                }
                (path, u64::try_from(*count).unwrap_or(0))
            });
            let title = format!("tern CPU, {seconds} s at {FREQUENCY_HZ} Hz");
            crate::flamegraph::render(stacks, &title).into_bytes()
        }
        ProfileFormat::PprofProtobuf => report
            .pprof()?
            .write_to_bytes()
            .map_err(|e| ProfileError::Encode(e.to_string()))?,
    };
    Ok(out)
}
