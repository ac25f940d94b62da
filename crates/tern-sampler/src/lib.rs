//! A CPU sampling profiler for the running process. SIGPROF arrives at a set rate
//! of the process's CPU time on whichever thread is running, and its handler puts
//! that thread's stack in a small fixed ring; the profiling thread drains the ring
//! into a count per distinct stack as it goes.
//!
//! What a profile holds grows with the distinct stacks it saw, and all of it is
//! freed with the profile. Names are read only when the profile is rendered, and
//! the symbolizer's cache is emptied afterwards. The one fixed cost is the ring, a
//! static of about 140 KiB that is resident after the first profile.
//!
//! ```no_run
//! let mut sampler = tern_sampler::Sampler::start(99)?;
//! for _ in 0..10 {
//!     std::thread::sleep(std::time::Duration::from_millis(100));
//!     sampler.collect();
//! }
//! let profile = sampler.finish();
//! let names = profile.symbolize();
//! for stack in &profile.stacks {
//!     let leaf = &names.at(stack.frames[0])[0].name;
//!     println!("{} {leaf} {}", stack.thread, stack.count);
//! }
//! # Ok::<(), tern_sampler::SamplerError>(())
//! ```

mod blocklist;
mod ring;
mod signal;
mod symbols;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use ring::MAX_DEPTH;
pub use symbols::{FunctionAt, Symbols};

use ring::ThreadName;

/// Highest sampling rate accepted: the kernel's timer tick bounds what is real.
pub const MAX_FREQUENCY_HZ: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("a profile is already being taken in this process")]
    Busy,
    #[error("sampling frequency {0} Hz is outside 1..={MAX_FREQUENCY_HZ}")]
    Frequency(u32),
    #[error("CPU sampling is supported on Linux on x86_64 and aarch64 only")]
    Unsupported,
    #[error("reading the memory map to block unsafe frames: {0}")]
    Maps(std::io::Error),
    #[error("installing the SIGPROF handler and timer: {0}")]
    Signal(std::io::Error),
}

/// Only one sampler per process: the handler and the timer are process-wide.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// A profile being taken. Call [`Sampler::collect`] every few hundred milliseconds
/// at most, or samples past the ring's room are dropped (and counted).
pub struct Sampler {
    counts: HashMap<(ThreadName, Box<[usize]>), u64>,
    started: Instant,
    frequency_hz: u32,
    running: bool,
}

impl Sampler {
    pub fn start(frequency_hz: u32) -> Result<Sampler, SamplerError> {
        if !signal::SUPPORTED {
            return Err(SamplerError::Unsupported);
        }
        if !(1..=MAX_FREQUENCY_HZ).contains(&frequency_hz) {
            return Err(SamplerError::Frequency(frequency_hz));
        }
        if RUNNING.swap(true, Ordering::AcqRel) {
            return Err(SamplerError::Busy);
        }
        let released = Released;
        signal::BLOCKLIST.load().map_err(SamplerError::Maps)?;
        signal::RING.reset();
        signal::SHALLOW.store(0, Ordering::Relaxed);
        let period = Duration::from_secs(1) / frequency_hz;
        signal::start(period).map_err(SamplerError::Signal)?;
        std::mem::forget(released);
        Ok(Sampler {
            counts: HashMap::new(),
            started: Instant::now(),
            frequency_hz,
            running: true,
        })
    }

    /// Counts the samples taken since the last call.
    pub fn collect(&mut self) {
        let counts = &mut self.counts;
        signal::RING.drain(|thread, frames| {
            *counts.entry((*thread, frames.into())).or_insert(0) += 1;
        });
    }

    /// Stops sampling and returns what was seen.
    pub fn finish(mut self) -> Profile {
        self.stop();
        let stacks = std::mem::take(&mut self.counts)
            .into_iter()
            .map(|((thread, frames), count)| Stack {
                thread: thread_name(&thread),
                frames: frames.into_vec(),
                count,
            })
            .collect();
        Profile {
            stacks,
            dropped: signal::RING.dropped(),
            shallow: signal::SHALLOW.load(Ordering::Relaxed),
            duration: self.started.elapsed(),
            frequency_hz: self.frequency_hz,
        }
    }

    fn stop(&mut self) {
        if self.running {
            signal::stop();
            self.collect();
            self.running = false;
            RUNNING.store(false, Ordering::Release);
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Frees the sampler if its start fails half-way.
struct Released;

impl Drop for Released {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

fn thread_name(raw: &ThreadName) -> String {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..len]).into_owned()
}

/// A finished profile: each distinct stack with the samples that saw it.
#[derive(Debug)]
pub struct Profile {
    pub stacks: Vec<Stack>,
    /// Samples lost because the ring was full between two collections.
    pub dropped: u64,
    /// Samples that landed in code that must not be unwound from (the C library,
    /// the loader, the unwinder, the vDSO): their stack is the interrupted
    /// function alone, a system call's wrapper most often.
    pub shallow: u64,
    pub duration: Duration,
    pub frequency_hz: u32,
}

#[derive(Debug)]
pub struct Stack {
    pub thread: String,
    /// Code addresses, the interrupted instruction first, then return addresses
    /// outwards.
    pub frames: Vec<usize>,
    pub count: u64,
}

impl Profile {
    pub fn samples(&self) -> u64 {
        self.stacks.iter().map(|s| s.count).sum()
    }

    /// Names for every address in the profile.
    pub fn symbolize(&self) -> Symbols {
        Symbols::resolve(self.stacks.iter().flat_map(|s| s.frames.iter().copied()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn spin_in_a_named_function(until: Instant) -> u64 {
        let mut x = 1u64;
        while Instant::now() < until {
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        x
    }

    #[test]
    fn a_spinning_thread_shows_in_the_profile_by_name_and_function() {
        let mut sampler = Sampler::start(250).unwrap();
        assert!(matches!(Sampler::start(99), Err(SamplerError::Busy)));
        let spinner = std::thread::Builder::new()
            .name("spinner".into())
            .spawn(|| spin_in_a_named_function(Instant::now() + Duration::from_millis(800)))
            .unwrap();
        while !spinner.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
            sampler.collect();
        }
        spinner.join().unwrap();
        let profile = sampler.finish();
        let names = profile.symbolize();
        let spinning: u64 = profile
            .stacks
            .iter()
            .filter(|s| s.thread == "spinner")
            .filter(|s| {
                s.frames.iter().any(|&a| {
                    names
                        .at(a)
                        .iter()
                        .any(|f| f.name.ends_with("spin_in_a_named_function"))
                })
            })
            .map(|s| s.count)
            .sum();
        eprintln!(
            "{} samples, {spinning} in the spin, {} shallow, {} dropped",
            profile.samples(),
            profile.shallow,
            profile.dropped
        );
        // 800 ms of one core at 250 Hz is about 200 samples; a loaded machine
        // gives the spinner less CPU.
        assert!(spinning >= 20, "{profile:?}");
        // Stopped: a new profile may start, and the old one's samples are gone.
        let again = Sampler::start(99).unwrap();
        assert_eq!(again.finish().dropped, 0);
        assert!(matches!(Sampler::start(0), Err(SamplerError::Frequency(0))));
    }
}
