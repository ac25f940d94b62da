//! Scenario 6: the close_notify storm.
//!
//! Each storm request is a new TLS 1.3 connection that sends a small POST, then
//! close_notify followed by the first four bytes of another record (`17 03 03 01`),
//! all in one TCP write, reads the response and keeps TCP open. `--mode ordinary`
//! makes the same requests the ordinary way (POST, response, close_notify, FIN), so
//! the proxy's CPU per request can be compared.
//!
//! Prints `sent ...` when every request has been made, holds the storm's sockets
//! for `--hold-ms` (the harness measures the proxy's CPU in that window: no core
//! should stay busy), then prints a JSON summary and exits.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Storm,
    Ordinary,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StormArgs {
    /// Proxy address.
    #[arg(long)]
    connect: SocketAddr,
    /// TLS server name.
    #[arg(long, default_value = "localhost")]
    sni: String,
    /// CA certificate (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// Requests (one connection each).
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Client threads.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, value_enum, default_value_t = Mode::Storm)]
    mode: Mode,
    /// How long to hold the storm's sockets open after the last request.
    #[arg(long, default_value_t = 2000)]
    hold_ms: u64,
    /// Per-socket read timeout.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

const POST: &[u8] = b"POST /storm HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello";

/// Returns the length of a complete HTTP/1.1 response at the start of `buf`, if any.
pub fn response_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let cl = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= end + cl).then_some(end + cl)
}

fn read_response(conn: &mut rustls::ClientConnection, sock: &mut TcpStream) -> anyhow::Result<()> {
    let mut stream = rustls::Stream::new(conn, sock);
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if response_len(&buf).is_some() {
            return Ok(());
        }
        match stream.read(&mut chunk) {
            Ok(0) => anyhow::bail!("connection closed before the response was complete"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && response_len(&buf).is_some() => {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Makes one request; in storm mode returns the socket (kept open) and whether the
/// proxy answered the POST.
fn one(
    args: &StormArgs,
    cfg: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<Option<(TcpStream, bool)>> {
    let mut sock = TcpStream::connect(args.connect)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(Duration::from_millis(args.timeout_ms)))?;
    let name = rustls_pki_types::ServerName::try_from(args.sni.clone())?;
    let mut conn = rustls::ClientConnection::new(Arc::clone(cfg), name)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    conn.writer().write_all(POST)?;
    match args.mode {
        Mode::Storm => {
            conn.send_close_notify();
            let mut wire = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut wire)?;
            }
            wire.extend_from_slice(&[0x17, 0x03, 0x03, 0x01]);
            sock.write_all(&wire)?;
            // The proxy may answer the POST, or end the connection at once because the
            // client has said it is done; both are fine, a hang is not.
            let answered = read_response(&mut conn, &mut sock).is_ok();
            Ok(Some((sock, answered)))
        }
        Mode::Ordinary => {
            while conn.wants_write() {
                conn.write_tls(&mut sock)?;
            }
            read_response(&mut conn, &mut sock)?;
            conn.send_close_notify();
            while conn.wants_write() {
                conn.write_tls(&mut sock)?;
            }
            let _ = sock.shutdown(std::net::Shutdown::Write);
            Ok(None)
        }
    }
}

pub fn run(args: &StormArgs) -> anyhow::Result<()> {
    let cfg = crate::client::client_config(&args.ca, &[b"http/1.1"])?;
    let args = Arc::new(args.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let responses = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (args, cfg, next, errors, responses) = (
                Arc::clone(&args),
                Arc::clone(&cfg),
                Arc::clone(&next),
                Arc::clone(&errors),
                Arc::clone(&responses),
            );
            std::thread::spawn(move || {
                let mut held = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < args.count {
                    match one(&args, &cfg) {
                        Ok(Some((sock, answered))) => {
                            if answered {
                                responses.fetch_add(1, Ordering::Relaxed);
                            }
                            held.push(sock);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("first error: {e:#}");
                            }
                        }
                    }
                }
                held
            })
        })
        .collect();
    let mut held: Vec<TcpStream> = Vec::new();
    for t in threads {
        held.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))?,
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    let errors = errors.load(Ordering::Relaxed);
    let responses = match args.mode {
        Mode::Storm => responses.load(Ordering::Relaxed),
        Mode::Ordinary => args.count - errors,
    };
    println!(
        "sent count={} errors={errors} elapsed_s={elapsed:.3}",
        args.count
    );
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_millis(args.hold_ms));
    // How many of the storm's connections did the proxy close by itself?
    let mut closed = 0usize;
    for sock in &mut held {
        sock.set_nonblocking(true)?;
        let mut buf = [0u8; 1024];
        loop {
            match sock.read(&mut buf) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    closed += 1;
                    break;
                }
            }
        }
    }
    println!(
        "{{\"mode\":\"{:?}\",\"count\":{},\"errors\":{errors},\"elapsed_s\":{elapsed:.3},\"responses\":{responses},\"held\":{},\"closed_by_proxy\":{closed}}}",
        args.mode,
        args.count,
        held.len()
    );
    Ok(())
}
