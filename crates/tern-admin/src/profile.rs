//! CPU profiles of the live process, for `/debug/pprof/*`: a sampling profiler runs
//! for the requested seconds, then the samples become a flamegraph (SVG) or a pprof
//! protobuf. One profile at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
/// runtime keeps serving.
pub async fn profile(seconds: u64, format: ProfileFormat) -> Result<Vec<u8>, ProfileError> {
    if RUNNING.swap(true, Ordering::AcqRel) {
        return Err(ProfileError::Busy);
    }
    let seconds = seconds.clamp(1, MAX_SECONDS);
    let result = tokio::task::spawn_blocking(move || sample(seconds, format)).await;
    RUNNING.store(false, Ordering::Release);
    result.map_err(|e| ProfileError::Join(e.to_string()))?
}

fn sample(seconds: u64, format: ProfileFormat) -> Result<Vec<u8>, ProfileError> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY_HZ)
        // Unwinding through these while a signal lands can deadlock.
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()?;
    std::thread::sleep(Duration::from_secs(seconds));
    let report = guard.report().build()?;
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
