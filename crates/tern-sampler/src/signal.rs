//! The sampling itself: an interval timer on the process's CPU time raises SIGPROF
//! on whichever thread is running, and the handler records that thread's stack in
//! the ring. This module holds all of the crate's unsafe code.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::blocklist::Blocklist;
use crate::ring::{Ring, ThreadName, MAX_DEPTH};

pub static RING: Ring = Ring::new();
pub static BLOCKLIST: Blocklist = Blocklist::new();
/// Samples that landed in code unwinding must not start from (see `blocklist`),
/// kept with the interrupted instruction alone.
pub static SHALLOW: AtomicU64 = AtomicU64::new(0);
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Handlers running now, so that a stop can wait for the last one to leave.
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Whether this target can read the interrupted instruction from a signal context.
pub const SUPPORTED: bool = cfg!(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
));

/// Installs the handler, then starts the timer: `period` of process CPU time
/// between samples.
pub fn start(period: Duration) -> std::io::Result<()> {
    wait_for_handlers();
    let mut action = empty_sigaction();
    action.sa_sigaction = on_sigprof as extern "C" fn(_, _, _) as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    set_action(&action)?;
    ENABLED.store(true, Ordering::Release);
    if let Err(e) = set_timer(period) {
        stop();
        return Err(e);
    }
    Ok(())
}

/// Stops the timer and waits until no handler runs. The handler stays ignored, not
/// defaulted: SIGPROF's default action ends the process, and one may still be
/// pending.
pub fn stop() {
    let _ = set_timer(Duration::ZERO);
    ENABLED.store(false, Ordering::Release);
    let mut ignore = empty_sigaction();
    ignore.sa_sigaction = libc::SIG_IGN;
    let _ = set_action(&ignore);
    wait_for_handlers();
}

fn wait_for_handlers() {
    while IN_HANDLER.load(Ordering::Acquire) != 0 {
        std::thread::yield_now();
    }
}

fn empty_sigaction() -> libc::sigaction {
    // SAFETY: `sigaction` is a plain C struct for which all zeroes is a valid
    // value (no handler, no flags, an empty mask once `sigemptyset` runs below).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `sa_mask` is a valid, owned `sigset_t`.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    action
}

fn set_action(action: &libc::sigaction) -> std::io::Result<()> {
    // SAFETY: `action` is a valid sigaction whose handler, if any, is
    // `on_sigprof`, which is async-signal-safe; the old action is not wanted.
    let rc = unsafe { libc::sigaction(libc::SIGPROF, action, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn set_timer(period: Duration) -> std::io::Result<()> {
    let interval = libc::timeval {
        tv_sec: period.as_secs() as libc::time_t,
        tv_usec: period.subsec_micros() as libc::suseconds_t,
    };
    let timer = libc::itimerval {
        it_interval: interval,
        it_value: interval,
    };
    // SAFETY: `timer` is a valid itimerval; the old value is not wanted.
    let rc = unsafe { libc::setitimer(libc::ITIMER_PROF, &timer, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

extern "C" fn on_sigprof(_signal: libc::c_int, _info: *mut libc::siginfo_t, context: *mut c_void) {
    IN_HANDLER.fetch_add(1, Ordering::AcqRel);
    if ENABLED.load(Ordering::Acquire) {
        let errno = Errno::save();
        // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler.
        let pc = unsafe { interrupted_pc(context) };
        if BLOCKLIST.contains(pc) {
            SHALLOW.fetch_add(1, Ordering::Relaxed);
            RING.push(&thread_name(), &[pc]);
        } else {
            record(pc);
        }
        errno.restore();
    }
    IN_HANDLER.fetch_sub(1, Ordering::AcqRel);
}

/// Walks the stack from inside the handler and keeps the frames from the
/// interrupted one outwards.
fn record(pc: usize) {
    let mut frames = [0usize; MAX_DEPTH];
    let mut len = 0;
    let mut reached = false;
    // SAFETY: `trace_unsynchronized` is unsafe because it takes no lock; nothing
    // else unwinds this thread while its signal handler runs, and the callback
    // only writes to a local array. Unwinding from a handler is what pprof-rs and
    // others do; the blocklist keeps it out of code where the unwinder's own
    // state could be mid-change.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            let ip = frame.ip() as usize;
            if ip == 0 {
                // The end of the stack, as some unwinders report it.
                return false;
            }
            if !reached {
                // The handler's own frames and the signal trampoline come first.
                reached = ip == pc;
                if !reached {
                    return true;
                }
            }
            frames[len] = ip;
            len += 1;
            len < MAX_DEPTH
        });
    }
    if len == 0 {
        // The unwinder could not cross the signal frame: keep what is certain.
        frames[0] = pc;
        len = 1;
    }
    RING.push(&thread_name(), &frames[..len]);
}

fn thread_name() -> ThreadName {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes to the buffer, which has 16.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    name
}

/// The instruction the thread was running when the signal came.
///
/// # Safety
/// `context` must be the `ucontext_t` the kernel passed to an SA_SIGINFO handler.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
unsafe fn interrupted_pc(context: *mut c_void) -> usize {
    // SAFETY: the caller passes the handler's ucontext.
    let context = unsafe { &*(context as *const libc::ucontext_t) };
    context.uc_mcontext.gregs[libc::REG_RIP as usize] as usize
}

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
unsafe fn interrupted_pc(context: *mut c_void) -> usize {
    // SAFETY: the caller passes the handler's ucontext.
    let context = unsafe { &*(context as *const libc::ucontext_t) };
    context.uc_mcontext.pc as usize
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
unsafe fn interrupted_pc(_context: *mut c_void) -> usize {
    0
}

/// The interrupted code's errno, which the handler's system calls could change.
struct Errno(libc::c_int);

impl Errno {
    fn save() -> Errno {
        // SAFETY: `__errno_location` returns this thread's errno, always valid.
        Errno(unsafe { *libc::__errno_location() })
    }

    fn restore(self) {
        // SAFETY: as in `save`.
        unsafe { *libc::__errno_location() = self.0 };
    }
}
