//! The process driver: a machine is a child process of its node, in a process
//! group of its own, with its output in the node's log.
//!
//! No machine outlives its node. Each child asks the kernel for SIGKILL when its
//! parent dies (`PR_SET_PDEATHSIG`). The kernel sends that signal when the
//! *thread* that forked the child ends, not the process, so every child is forked
//! by one thread that lives as long as the process.

#![allow(unsafe_code)]

use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;

use rustix::process::{Pid, Signal};
use tern_catalog::model::{Driver as DriverDef, MachineDef};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::driver::{Control, Driver, DriverError, Running, StartFuture};

/// Longest line of a machine's output that goes to the log as one line; longer
/// ones are cut into pieces of this size, so a machine that never writes a
/// newline cannot grow the node's memory.
const MAX_LINE: usize = 16 * 1024;

type SpawnRequest = (Command, oneshot::Sender<io::Result<Child>>);

/// Runs machines as child processes.
pub struct ProcessDriver {
    spawner: mpsc::Sender<SpawnRequest>,
}

impl ProcessDriver {
    /// Starts the forking thread. Call within the runtime that will wait on the
    /// children.
    pub fn new() -> io::Result<ProcessDriver> {
        let runtime = tokio::runtime::Handle::current();
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("tern-machines".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })?;
        Ok(ProcessDriver { spawner: tx })
    }

    fn command(machine: &MachineDef, ports: &[u16]) -> Result<Command, DriverError> {
        let DriverDef::Process(spec) = &machine.driver else {
            return Err(DriverError::External(machine.id.clone()));
        };
        let Some((program, args)) = spec.command.split_first() else {
            return Err(DriverError::Spawn {
                command: String::new(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "empty command"),
            });
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .env("TERN_MACHINE_ID", &machine.id)
            .env("TERN_APP", &machine.app)
            .env("TERN_REGION", &machine.region)
            .env("TERN_NODE", &machine.node)
            .env("TERN_BIND_ADDR", machine.ip.to_string())
            .env(
                "TERN_PORTS",
                ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so that a stop or a suspend reaches what it forks.
            .process_group(0)
            .kill_on_drop(false);
        if let Some(port) = ports.first() {
            command.env("TERN_PORT", port.to_string());
        }
        if let Some(dir) = &spec.dir {
            command.current_dir(dir);
        }
        let parent = rustix::process::getpid();
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed. It makes two system calls (prctl,
        // getppid) and builds an error from a raw errno; it allocates nothing and
        // takes no lock.
        unsafe {
            command.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                // The parent may have died before the call above: then nothing
                // would ever send the signal.
                if rustix::process::getppid() != Some(parent) {
                    return Err(rustix::io::Errno::SRCH.into());
                }
                Ok(())
            });
        }
        Ok(command)
    }
}

impl Driver for ProcessDriver {
    fn start<'a>(&'a self, machine: &'a MachineDef, ports: &'a [u16]) -> StartFuture<'a> {
        Box::pin(async move {
            let command = Self::command(machine, ports)?;
            let shown = match &machine.driver {
                DriverDef::Process(spec) => spec.command.join(" "),
                DriverDef::External => String::new(),
            };
            let spawn_error = |source| DriverError::Spawn {
                command: shown.clone(),
                source,
            };
            let gone = || io::Error::other("the forking thread has ended");
            let (reply, child) = oneshot::channel();
            self.spawner
                .send((command, reply))
                .map_err(|_| spawn_error(gone()))?;
            let mut child = child
                .await
                .unwrap_or_else(|_| Err(gone()))
                .map_err(spawn_error)?;
            let pid = child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(Pid::from_raw)
                .ok_or_else(|| spawn_error(io::Error::other("the child has no process id")))?;
            for (stream, pipe) in [
                (
                    "stdout",
                    child.stdout.take().map(|p| Box::new(p) as BoxRead),
                ),
                (
                    "stderr",
                    child.stderr.take().map(|p| Box::new(p) as BoxRead),
                ),
            ] {
                if let Some(pipe) = pipe {
                    tokio::spawn(log_lines(machine.id.clone(), stream, pipe));
                }
            }
            let exit = Box::pin(async move {
                match child.wait().await {
                    Ok(status) => describe(status),
                    Err(e) => format!("waiting for it failed: {e}"),
                }
            });
            Ok(Running {
                control: Box::new(Group(pid)),
                exit,
            })
        })
    }
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;

/// How a process ended, in words.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("ended by signal {signal}"),
        _ => format!("ended ({status})"),
    }
}

/// Each line of a machine's output as a log line, tagged with the machine.
async fn log_lines(machine: String, stream: &'static str, mut pipe: BoxRead) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            emit(&machine, stream, &buf[..end]);
            buf.drain(..=end);
        }
        while buf.len() >= MAX_LINE {
            emit(&machine, stream, &buf[..MAX_LINE]);
            buf.drain(..MAX_LINE);
        }
    }
    if !buf.is_empty() {
        emit(&machine, stream, &buf);
    }
}

fn emit(machine: &str, stream: &str, line: &[u8]) {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end_matches('\r');
    tracing::info!(target: "tern::machine_output", machine, stream, "{line}");
}

/// A process group, signalled as one.
struct Group(Pid);

impl Group {
    /// A group that is gone already (its process exited, not yet seen by the
    /// exit watcher) is not an error: the exit is on its way.
    fn send(&self, signal: Signal) -> Result<(), DriverError> {
        match rustix::process::kill_process_group(self.0, signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(DriverError::Signal(e.into())),
        }
    }
}

impl Control for Group {
    fn terminate(&self) -> Result<(), DriverError> {
        self.send(Signal::TERM)
    }

    fn kill(&self) -> Result<(), DriverError> {
        self.send(Signal::KILL)
    }

    fn suspend(&self) -> Result<(), DriverError> {
        self.send(Signal::STOP)
    }

    fn resume(&self) -> Result<(), DriverError> {
        self.send(Signal::CONT)
    }
}
