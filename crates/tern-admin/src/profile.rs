//! CPU profiles of the live process, for `/debug/pprof/*`: a sampling profiler runs
//! for the requested seconds, then the samples become a flamegraph (SVG) or a pprof
//! protobuf. One profile at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tern_sampler::{Sampler, SamplerError};

/// Longest profile one request may ask for.
pub const MAX_SECONDS: u64 = 60;
const FREQUENCY_HZ: u32 = 99;

static RUNNING: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("a profile is already being taken; try again when it is done")]
    Busy,
    #[error("profiler: {0}")]
    Sampler(#[from] SamplerError),
    #[error("the profiling thread: {0}")]
    Thread(String),
}

/// What to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileFormat {
    FlamegraphSvg,
    PprofProtobuf,
}

/// Samples every thread's stack for `seconds`, on a thread of its own so the
/// runtime keeps serving. Reading symbols fills tens of MiB of tables; the thread
/// frees them and hands the pages back to the system before it ends. If the caller
/// goes away (the client gave up), the sampling stops within `COLLECT_EVERY` and
/// the next profile may start.
pub async fn profile(seconds: u64, format: ProfileFormat) -> Result<Vec<u8>, ProfileError> {
    if RUNNING.swap(true, Ordering::AcqRel) {
        return Err(ProfileError::Busy);
    }
    let running = Running;
    let seconds = seconds.clamp(1, MAX_SECONDS);
    let wanted = Wanted(Arc::new(AtomicBool::new(true)));
    let still_wanted = Arc::clone(&wanted.0);
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tern-profiler".into())
        .spawn(move || {
            let profile = sample(seconds, format, &still_wanted);
            // The symbol tables are freed by now; without this the allocator
            // would keep their pages until this (ended) thread allocated again.
            tern_alloc::give_back_free_memory();
            drop(running);
            let _ = done.send(profile);
        })
        .map_err(|e| ProfileError::Thread(e.to_string()))?;
    result
        .await
        .map_err(|_| ProfileError::Thread("it ended without a profile".into()))?
}

/// How often a sampling thread counts the samples so far and checks whether its
/// profile is still wanted. The sampler's ring holds a few hundred samples.
const COLLECT_EVERY: Duration = Duration::from_millis(50);

/// Marks the profiler free when dropped, however the profile ended (including a
/// thread that could not start).
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
    let started_unix_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let mut sampler = Sampler::start(FREQUENCY_HZ)?;
    let until = Instant::now() + Duration::from_secs(seconds);
    while wanted.load(Ordering::Acquire) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(COLLECT_EVERY));
        sampler.collect();
    }
    let profile = sampler.finish();
    let symbols = profile.symbolize();
    let out = match format {
        ProfileFormat::FlamegraphSvg => {
            let stacks = profile.stacks.iter().map(|stack| {
                let mut path = vec![stack.thread.clone()];
                for &address in stack.frames.iter().rev() {
                    for function in symbols.at(address).iter().rev() {
                        path.push(function.name.clone());
                    }
                }
                (path, stack.count)
            });
            let title = format!("tern CPU, {seconds} s at {FREQUENCY_HZ} Hz");
            crate::flamegraph::render(stacks, &title).into_bytes()
        }
        ProfileFormat::PprofProtobuf => {
            crate::pprof_format::encode(&profile, &symbols, started_unix_nanos)
        }
    };
    Ok(out)
}
