//! Handing a running Tern's listening sockets to its successor, so that a new
//! binary takes over without refusing a connection: the sockets themselves
//! change hands (SCM_RIGHTS over a Unix socket, as Pingora's and Sōzu's upgrades
//! do), so their kernel queues, and the connections waiting in them, are never
//! closed.
//!
//! The exchange, on the old process's upgrade socket:
//!
//! ```text
//! new -> old   tern-upgrade 1\n
//! old -> new   one line per socket ("public 8080", "admin", "backhaul"), end\n,
//!              the sockets themselves attached, in the same order
//! new -> old   ready\n        (the new process serves on them)
//! old -> new   released\n     (the old one has stopped accepting and drains)
//! ```
//!
//! If the new process fails before `ready`, the old one keeps serving as if
//! nothing happened. Blocking calls, each bounded by a timeout.

use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

const HELLO: &str = "tern-upgrade 1\n";
const READY: &str = "ready\n";
const RELEASED: &str = "released\n";
const END: &str = "end";
/// The most descriptors one message carries (the kernel's `SCM_MAX_FD`); the
/// exchange refuses more.
pub const MAX_SOCKETS: usize = 253;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade socket {path}: {source}")]
    Socket { path: String, source: io::Error },
    #[error("the upgrade exchange failed: {0}")]
    Io(#[from] io::Error),
    #[error("the upgrade exchange failed: {0}")]
    Sys(#[from] rustix::io::Errno),
    #[error("the other process broke the upgrade exchange: {0}")]
    Protocol(String),
    #[error("{0} sockets to hand over; at most {MAX_SOCKETS}")]
    TooMany(usize),
}

/// What a handed-over socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A public port.
    Public(u16),
    Admin,
    Backhaul,
}

impl Role {
    fn line(self) -> String {
        match self {
            Role::Public(port) => format!("public {port}"),
            Role::Admin => "admin".into(),
            Role::Backhaul => "backhaul".into(),
        }
    }

    fn parse(line: &str) -> Option<Role> {
        match line.split_once(' ') {
            Some(("public", port)) => port.parse().ok().map(Role::Public),
            None if line == "admin" => Some(Role::Admin),
            None if line == "backhaul" => Some(Role::Backhaul),
            _ => None,
        }
    }
}

/// The old process's upgrade socket: bound at `path`, replacing a file left
/// there by a process that is gone. Non-blocking, for the caller's runtime.
pub fn listen(path: &Path) -> Result<UnixListener, UpgradeError> {
    let err = |source| UpgradeError::Socket {
        path: path.display().to_string(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// The old process's side of one exchange, on a connection to its upgrade socket.
pub struct Handover {
    stream: BufReader<UnixStream>,
}

impl Handover {
    /// Reads the successor's greeting.
    pub fn accept(stream: UnixStream, within: Duration) -> Result<Handover, UpgradeError> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(within))?;
        stream.set_write_timeout(Some(within))?;
        let mut stream = BufReader::new(stream);
        expect_line(&mut stream, HELLO)?;
        Ok(Handover { stream })
    }

    /// Sends the sockets, then waits (bounded) for the successor to serve on
    /// them. An error means it will not: keep serving.
    pub fn send(&mut self, sockets: &[(Role, BorrowedFd<'_>)]) -> Result<(), UpgradeError> {
        if sockets.len() > MAX_SOCKETS {
            return Err(UpgradeError::TooMany(sockets.len()));
        }
        let mut text = String::new();
        for (role, _) in sockets {
            text.push_str(&role.line());
            text.push('\n');
        }
        text.push_str(END);
        text.push('\n');
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| *fd).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(UpgradeError::TooMany(fds.len()));
        }
        let bytes = text.as_bytes();
        let sent = sendmsg(
            self.stream.get_ref(),
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::empty(),
        )?;
        // The sockets went with the first byte; the rest of the text is plain.
        self.stream.get_mut().write_all(&bytes[sent..])?;
        Ok(())
    }

    /// Waits for the successor to say it serves on the sockets.
    pub fn wait_ready(&mut self, within: Duration) -> Result<(), UpgradeError> {
        self.stream.get_ref().set_read_timeout(Some(within))?;
        expect_line(&mut self.stream, READY)
    }

    /// Tells the successor that this process has stopped accepting.
    pub fn release(mut self) -> Result<(), UpgradeError> {
        self.stream.get_mut().write_all(RELEASED.as_bytes())?;
        Ok(())
    }
}

/// The new process's side: the sockets it was handed, until it says it serves.
pub struct Takeover {
    stream: BufReader<UnixStream>,
    sockets: Vec<(Role, OwnedFd)>,
}

impl Takeover {
    /// Connects to the running process's upgrade socket and takes its sockets.
    pub fn connect(path: &Path, within: Duration) -> Result<Takeover, UpgradeError> {
        let stream = UnixStream::connect(path).map_err(|source| UpgradeError::Socket {
            path: path.display().to_string(),
            source,
        })?;
        stream.set_read_timeout(Some(within))?;
        stream.set_write_timeout(Some(within))?;
        (&stream).write_all(HELLO.as_bytes())?;
        let (fds, mut text) = receive(&stream)?;
        let mut stream = BufReader::new(stream);
        while !text.ends_with(&format!("{END}\n")) {
            let mut line = String::new();
            if stream.read_line(&mut line)? == 0 {
                return Err(UpgradeError::Protocol(
                    "closed before the socket list ended".into(),
                ));
            }
            text.push_str(&line);
        }
        let roles: Vec<Role> = text
            .lines()
            .take_while(|l| *l != END)
            .map(|l| {
                Role::parse(l)
                    .ok_or_else(|| UpgradeError::Protocol(format!("unknown socket {l:?}")))
            })
            .collect::<Result<_, _>>()?;
        if roles.len() != fds.len() {
            return Err(UpgradeError::Protocol(format!(
                "{} sockets named, {} received",
                roles.len(),
                fds.len()
            )));
        }
        Ok(Takeover {
            stream,
            sockets: roles.into_iter().zip(fds).collect(),
        })
    }

    /// Takes the socket handed over for `role`, if there was one.
    pub fn take(&mut self, role: Role) -> Option<OwnedFd> {
        let i = self.sockets.iter().position(|(r, _)| *r == role)?;
        Some(self.sockets.swap_remove(i).1)
    }

    /// The public ports handed over and not taken yet.
    pub fn take_public(&mut self) -> Vec<(u16, OwnedFd)> {
        let (public, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sockets)
            .into_iter()
            .partition(|(r, _)| matches!(r, Role::Public(_)));
        self.sockets = rest;
        public
            .into_iter()
            .filter_map(|(r, fd)| match r {
                Role::Public(port) => Some((port, fd)),
                _ => None,
            })
            .collect()
    }

    /// Says this process serves, and waits (bounded) for the old one to stop
    /// accepting.
    pub fn ready(mut self, within: Duration) -> Result<(), UpgradeError> {
        self.stream.get_mut().write_all(READY.as_bytes())?;
        self.stream.get_ref().set_read_timeout(Some(within))?;
        expect_line(&mut self.stream, RELEASED)
    }
}

/// The first read of the exchange: the sockets, and the text that came with them.
fn receive(stream: &UnixStream) -> Result<(Vec<OwnedFd>, String), UpgradeError> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buf = [0u8; 4096];
    let got = recvmsg(
        stream.as_fd(),
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if got.bytes == 0 {
        return Err(UpgradeError::Protocol(
            "closed before sending the sockets".into(),
        ));
    }
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
        return Err(UpgradeError::TooMany(fds.len()));
    }
    let text = String::from_utf8_lossy(&buf[..got.bytes]).into_owned();
    Ok((fds, text))
}

fn expect_line(stream: &mut BufReader<UnixStream>, want: &str) -> Result<(), UpgradeError> {
    let mut line = String::new();
    // A line is short; a peer that sends an endless one is cut at 256 bytes.
    let n = stream.by_ref().take(256).read_line(&mut line)?;
    if n == 0 {
        return Err(UpgradeError::Protocol(format!(
            "closed while {:?} was expected",
            want.trim_end()
        )));
    }
    if line != want {
        return Err(UpgradeError::Protocol(format!(
            "{:?} where {:?} was expected",
            line.trim_end(),
            want.trim_end()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsFd;

    #[test]
    fn sockets_change_hands_and_keep_their_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let upgrade = listen(&path).unwrap();
        let public = TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").unwrap();
        let (public_addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
        // A connection waiting in the queue before the hand-over.
        let mut waiting = std::net::TcpStream::connect(public_addr).unwrap();
        let within = Duration::from_secs(10);

        let old = std::thread::spawn(move || {
            let stream = loop {
                match upgrade.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            let mut h = Handover::accept(stream, within).unwrap();
            h.send(&[
                (Role::Public(public_addr.port()), public.as_fd()),
                (Role::Admin, admin.as_fd()),
            ])
            .unwrap();
            h.wait_ready(within).unwrap();
            // The old process stops accepting: its copies close.
            drop((public, admin));
            h.release().unwrap();
        });

        let mut t = Takeover::connect(&path, within).unwrap();
        let admin = TcpListener::from(t.take(Role::Admin).unwrap());
        assert_eq!(admin.local_addr().unwrap(), admin_addr);
        let public = t.take_public();
        assert_eq!(public.len(), 1);
        assert_eq!(public[0].0, public_addr.port());
        let public = TcpListener::from(public.into_iter().next().unwrap().1);
        assert!(t.take(Role::Backhaul).is_none());
        t.ready(within).unwrap();
        old.join().unwrap();

        let (mut accepted, _) = public.accept().unwrap();
        waiting.write_all(b"queued").unwrap();
        let mut buf = [0u8; 6];
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(
            &buf, b"queued",
            "the connection queued before the hand-over"
        );
    }

    #[test]
    fn a_successor_that_breaks_the_exchange_leaves_the_old_process_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let upgrade = listen(&path).unwrap();
        upgrade.set_nonblocking(false).unwrap();
        let mut bad = UnixStream::connect(&path).unwrap();
        bad.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let (stream, _) = upgrade.accept().unwrap();
        assert!(matches!(
            Handover::accept(stream, Duration::from_secs(5)),
            Err(UpgradeError::Protocol(_))
        ));
        // One that greets, takes the sockets and dies before `ready`.
        let public = TcpListener::bind("127.0.0.1:0").unwrap();
        let taker = std::thread::spawn({
            let path = path.clone();
            move || {
                let t = Takeover::connect(&path, Duration::from_secs(5)).unwrap();
                drop(t);
            }
        });
        let (stream, _) = upgrade.accept().unwrap();
        let mut h = Handover::accept(stream, Duration::from_secs(5)).unwrap();
        h.send(&[(Role::Public(1), public.as_fd())]).unwrap();
        taker.join().unwrap();
        assert!(h.wait_ready(Duration::from_secs(5)).is_err());
        // The old process's socket is untouched.
        assert!(public.local_addr().is_ok());
    }

    #[test]
    fn a_stale_socket_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        drop(listen(&path).unwrap());
        assert!(path.exists());
        assert!(listen(&path).is_ok());
    }

    #[test]
    fn roles_round_trip() {
        for r in [Role::Public(443), Role::Admin, Role::Backhaul] {
            assert_eq!(Role::parse(&r.line()), Some(r));
        }
        assert_eq!(Role::parse("public x"), None);
        assert_eq!(Role::parse("shell"), None);
    }
}
